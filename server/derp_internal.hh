// What the DERP service's files share and nothing else includes: the message kinds on the rings
// between shards, the registry message itself, size limits, and small helpers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/frame.hh"
#include "ring/log.hh"
#include "server/derp_service.hh"

namespace derp::server {

using ring::conn_id;
using ring::log_level;
using ring::message;

// Message kinds on the rings between shards.
inline constexpr std::uint16_t kind_packet = ring::message_kind_service_base + 0;
//   ptr = frame bytes in the sender's transfer buffer; u32 = destination slot;
//   u64 = destination gen | frame_bytes << 32 | disco << 63; u64b = buffer index | class << 32
inline constexpr std::uint16_t kind_buffer_return = ring::message_kind_service_base + 1;
//   ptr = frame bytes; u64b = buffer index | class << 32
inline constexpr std::uint16_t kind_control = ring::message_kind_service_base + 2;
//   ptr = derp_service::control*, freed by the receiver
inline constexpr std::uint16_t kind_forward = ring::message_kind_service_base + 3;
//   to the shard hosting mesh link u32: ptr = a ForwardPacket frame in the sender's transfer
//   buffer; u64 = frame_bytes | disco << 63; u64b = buffer index | class << 32

inline constexpr std::size_t small_frame_bytes_max = 2048;
// The largest frame a transfer buffer holds: a ForwardPacket (two keys) of a full packet.
inline constexpr std::size_t large_frame_bytes_max = forward_packet_frame_bytes(packet_bytes_max);
// Packets waiting for space in a full ring, over all destinations, before new ones are dropped.
inline constexpr std::uint64_t backlog_packets_max = 8192;
// Payload accepted for frames the server reads (SendPacket/ForwardPacket are the largest).
inline constexpr std::size_t read_payload_bytes_max = 2 * key_bytes + packet_bytes_max;

inline std::uint64_t splitmix64(std::uint64_t& state) noexcept {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The value of query parameter `name` (no percent-decoding: DNS names need none).
std::optional<std::string_view> query_value(std::string_view query, std::string_view name);
// A client's address as derper logs it: 1.2.3.4:5 or [::1]:5.
std::string format_addr(const ip16& ip, std::uint16_t port);

struct derp_service::control {
    enum class type : std::uint8_t {
        reg,        // conn shard -> owner: a handshake finished
        reg_ack,    // owner -> conn shard: routes are published; send ServerInfo
        unreg,      // conn shard -> owner: the connection ended
        activity,   // conn shard -> owner: a duplicate spoke
        route,      // owner -> every shard: the key's route changed
        dup_flag,   // owner -> conn shard: the connection is (no longer) a duplicate
        watch,      // watcher shard -> every shard: send me your keys, then changes
        unwatch,    // watcher shard -> every shard: the watcher is gone
        presence,   // owner -> watcher shard: PeerPresent / PeerGone for one watcher
        close_key,  // mesh shard -> every shard: ClosePeer
        traffic_request,  // streamer's shard -> every shard: send me your clients' counters
        traffic_reply,    // every shard -> streamer's shard: rows (in `rows`)
        mesh_present,     // mesh link's shard -> owner: mesh peer `peer` announced `key`
        mesh_gone,        // mesh link's shard -> owner: peer withdrew `key`
        mesh_down,        // mesh link's shard -> every shard: the link to `peer` broke
    };
    type kind;
    node_key key;
    conn_ref conn;     // the subject connection (or the watcher for watch/unwatch/presence)
    conn_ref active;   // route: the active connection
    route_state state = route_state::gone;
    presence_info info;
    bool flag = false;  // dup_flag: is duplicate; presence: present (else gone)
    std::uint32_t peer = 0;  // route (forward) and mesh_*: the -mesh-with entry
    std::vector<traffic_row> rows;  // traffic_reply
};

}  // namespace derp::server
