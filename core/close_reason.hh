// Why the server closes a DERP connection because of what the peer sent: one enum value per
// derper error path, each meant to have its own varz counter. Runtime causes (I/O errors,
// timeouts, shutdown) are added by the layers that detect them, not decided here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace derp {

enum class close_reason : std::uint8_t {
    // Handshake (spec 1.4 steps 4-7).
    bad_frame_type,          // first client frame is not ClientInfo: "bad frame type"
    client_info_too_short,   // ClientInfo payload < 56: "short client info"
    client_info_too_long,    // ClientInfo payload > 256 KiB: "long client info"
    client_key_zero,         // all-zero client key (Go panics; we reject)
    client_info_box_open,    // the NaCl box does not open
    client_info_bad_json,    // ClientInfo JSON invalid, including a malformed meshKey
    // Read loop (spec 2.3).
    note_preferred_length,   // NotePreferred payload != 1: "frameNotePreferred wrong size"
    packet_frame_too_short,  // SendPacket < 32 or ForwardPacket < 64: "short send packet frame"
    frame_too_large,         // packet part > 65536: "data packet longer than max"
    watch_conns_length,      // WatchConns payload != 0: "handleFrameWatchConns wrong size"
    close_peer_length,       // ClosePeer payload != 32: "handleFrameClosePeer wrong size"
    ping_too_short,          // Ping payload < 8: "short ping"
    ping_too_large,          // Ping payload > 1000: "ping too large"
    not_mesh,                // mesh-only frame from a non-mesh client: "insufficient permissions"
};

inline constexpr std::size_t close_reason_count = 14;
static_assert(static_cast<std::size_t>(close_reason::not_mesh) + 1 == close_reason_count);

// A stable snake_case name for logs and metric labels.
constexpr std::string_view to_string(close_reason reason) noexcept {
    switch (reason) {
        case close_reason::bad_frame_type: return "bad_frame_type";
        case close_reason::client_info_too_short: return "client_info_too_short";
        case close_reason::client_info_too_long: return "client_info_too_long";
        case close_reason::client_key_zero: return "client_key_zero";
        case close_reason::client_info_box_open: return "client_info_box_open";
        case close_reason::client_info_bad_json: return "client_info_bad_json";
        case close_reason::note_preferred_length: return "note_preferred_length";
        case close_reason::packet_frame_too_short: return "packet_frame_too_short";
        case close_reason::frame_too_large: return "frame_too_large";
        case close_reason::watch_conns_length: return "watch_conns_length";
        case close_reason::close_peer_length: return "close_peer_length";
        case close_reason::ping_too_short: return "ping_too_short";
        case close_reason::ping_too_large: return "ping_too_large";
        case close_reason::not_mesh: return "not_mesh";
    }
    return "unknown";
}

}  // namespace derp
