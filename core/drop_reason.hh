// Why a relayed packet was dropped (spec 2.5): derper's reasons, in derper's order, and the two
// reasons only derpd has. Pure names: the counters that count them live in admin/derp_counters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace derp {

// derper's drop reasons (spec 2.5), in derper's order.
enum class drop_reason : std::uint8_t {
    unknown_dest,
    unknown_dest_on_fwd,
    gone_disconnected,
    queue_head,
    queue_tail,
    write_error,
    dup_client,
};
inline constexpr std::size_t drop_reason_count = 7;

constexpr std::string_view to_string(drop_reason reason) noexcept {
    switch (reason) {
    case drop_reason::unknown_dest: return "unknown_dest";
    case drop_reason::unknown_dest_on_fwd: return "unknown_dest_on_fwd";
    case drop_reason::gone_disconnected: return "gone_disconnected";
    case drop_reason::queue_head: return "queue_head";
    case drop_reason::queue_tail: return "queue_tail";
    case drop_reason::write_error: return "write_error";
    case drop_reason::dup_client: return "dup_client";
    }
    return "unknown";
}

// derper's packet kinds for drop and receive counters: disco packets and everything else.
enum class packet_kind : std::uint8_t { disco = 0, other = 1 };

// Why derpd dropped a packet where derper never would have to: derpd-only reasons, counted
// apart so derper's series keep derper's meaning.
enum class derpd_drop_reason : std::uint8_t {
    transfer_pool_exhausted,  // no transfer buffer free on the sending shard
    ring_backlog_full,        // the ring to the destination shard and its backlog were full
    mesh_unavailable,         // for a remote key: the mesh link was down or its queue full
};
inline constexpr std::size_t derpd_drop_reason_count = 3;

}  // namespace derp
