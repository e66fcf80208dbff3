// The DERP frame codec (spec 1.2-1.3, 2.3): frame headers, per-type payload decoders with
// derper's length rules, and encoders that write whole frames into caller memory. Pure: no I/O,
// no allocation, no logging. Deliberately not here: the handshake (core/handshake.hh), the NaCl
// boxes inside ClientInfo/ServerInfo (crypto/box.hh), and what the server does with a frame.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "core/close_reason.hh"
#include "core/key.hh"
#include "core/result.hh"

namespace derp {

// Frame layout: type(1) | payload length (uint32 big-endian) | payload. The length excludes
// the 5 header bytes.
inline constexpr std::size_t frame_header_bytes = 5;

inline constexpr std::array<std::uint8_t, 8> derp_magic = {  // "DERP" + UTF-8 of U+1F511
    0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91};
inline constexpr std::uint32_t protocol_version = 2;  // v2: RecvPacket carries the source key
inline constexpr std::size_t nonce_bytes = 24;         // NaCl box nonce
inline constexpr std::size_t packet_bytes_max = 64 << 10;  // packet part of Send/Recv/ForwardPacket
inline constexpr std::size_t client_info_payload_bytes_min = key_bytes + nonce_bytes;  // 56
inline constexpr std::size_t client_info_payload_bytes_max = 256 << 10;  // server rejects longer
inline constexpr std::size_t ping_payload_bytes_max = 1000;  // server closes on longer Pings
inline constexpr std::size_t ping_data_bytes = 8;
// The Go client treats frames above 1 MiB as fatal and caps ServerInfo boxes at 1 MiB.
inline constexpr std::size_t client_frame_payload_bytes_max = 1 << 20;
// The Go client reads ServerKey with a 1024-byte cap.
inline constexpr std::size_t server_key_payload_bytes_max = 1024;

enum class frame_type : std::uint8_t {
    server_key = 0x01,      // S->C: 8B magic + 32B server public key [+ future bytes]
    client_info = 0x02,     // C->S: 32B client key + 24B nonce + box(JSON ClientInfo)
    server_info = 0x03,     // S->C: 24B nonce + box(JSON ServerInfo)
    send_packet = 0x04,     // C->S: 32B destination key + packet (0..65536B)
    recv_packet = 0x05,     // S->C: 32B source key + packet (v2)
    keep_alive = 0x06,      // S->C: empty
    note_preferred = 0x07,  // C->S: 1B, 0x01 = this is my home DERP
    peer_gone = 0x08,       // S->C: 32B key + 1B reason (oldest servers: key only)
    peer_present = 0x09,    // S->C: 32B key + 16B IPv6-form IP + 2B port (BE) + 1B flags = 51B
    forward_packet = 0x0a,  // mesh C->S: 32B source key + 32B destination key + packet
    watch_conns = 0x10,     // mesh C->S: empty
    close_peer = 0x11,      // mesh C->S: 32B key
    ping = 0x12,            // either way: 8 opaque bytes (server accepts 8..1000, echoes 8)
    pong = 0x13,            // either way: the 8 bytes of the Ping
    health = 0x14,          // S->C: UTF-8 problem text; empty = healthy again
    restarting = 0x15,      // S->C: reconnect-in ms (u32 BE) + try-for ms (u32 BE)
};

// True for the sixteen types above; any other byte is an "unknown" frame that is skipped.
bool is_known_frame_type(std::uint8_t type) noexcept;
std::string_view to_string(frame_type type) noexcept;  // "SendPacket", ..., "unknown"

enum class peer_gone_reason : std::uint8_t {
    disconnected = 0x00,     // the peer left the region (also the watcher presence stream)
    not_here = 0x01,         // disco packet to a key the server does not know
    mesh_conn_broke = 0xf0,  // synthesised by Go mesh clients; never on the wire
};

// PeerPresent flags bit field.
inline constexpr std::uint8_t peer_present_regular = 0x01;    // none of the others apply
inline constexpr std::uint8_t peer_present_mesh_peer = 0x02;  // presented the mesh key
inline constexpr std::uint8_t peer_present_prober = 0x04;     // ClientInfo IsProber
inline constexpr std::uint8_t peer_present_not_ideal = 0x08;  // non-empty Ideal-Node header

// The flags a modern server sends: the specific bits, or Regular when none applies.
std::uint8_t peer_present_flags(bool mesh_peer, bool prober, bool not_ideal) noexcept;

// An IP address in the 16-byte IPv6 form of PeerPresent; IPv4 is written IPv4-mapped.
using ip16 = std::array<std::uint8_t, 16>;
ip16 ipv4_mapped(std::array<std::uint8_t, 4> ipv4) noexcept;

// "Looks like disco" (spec 2.5): at least 62 bytes starting with "TS" + U+1F4AC.
inline constexpr std::array<std::uint8_t, 6> disco_magic = {0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac};
inline constexpr std::size_t disco_packet_bytes_min = 62;  // magic(6) + key(32) + nonce(24)
bool looks_like_disco(std::span<const std::uint8_t> packet) noexcept;

// ---- Parsing ------------------------------------------------------------------------------

struct frame_header {
    frame_type type;  // may hold a value outside the enum: an unknown frame
    std::uint32_t payload_bytes;
    friend bool operator==(const frame_header&, const frame_header&) noexcept = default;
};

// The header at the start of in, or nullopt when fewer than 5 bytes are available.
std::optional<frame_header> parse_frame_header(std::span<const std::uint8_t> in) noexcept;

enum class frame_parse_status : std::uint8_t {
    complete,   // header and whole payload present
    need_more,  // frame_bytes is how many bytes the frame needs in total (at least 5)
    too_large,  // the header announces more than payload_bytes_max; header is valid
};

struct frame_parse {
    frame_parse_status status;
    frame_header header;                    // valid unless need_more with fewer than 5 bytes
    std::span<const std::uint8_t> payload;  // complete only; points into the input
    std::size_t frame_bytes;                // complete: bytes consumed; need_more: bytes needed
};

// One whole frame from the start of in. Consumes nothing unless it returns complete.
frame_parse parse_frame(std::span<const std::uint8_t> in, std::size_t payload_bytes_max) noexcept;

// derper's read-loop rules (spec 2.3) decided from the header alone, in derper's order, so that
// a server can reject a frame before buffering its payload. Frames it does not name (Pong,
// KeepAlive, a late ClientInfo, unknown types) pass: the server skips them, at any length.
result<void, close_reason> check_client_frame(const frame_header& header,
                                              bool sender_can_mesh) noexcept;

// Payload decoders for frames a server receives; each checks the length rule again.
struct send_packet_view {
    node_key dst;
    std::span<const std::uint8_t> packet;
};
struct forward_packet_view {
    node_key src;
    node_key dst;
    std::span<const std::uint8_t> packet;
};
using ping_data = std::array<std::uint8_t, ping_data_bytes>;

result<send_packet_view, close_reason> decode_send_packet(
    std::span<const std::uint8_t> payload) noexcept;
result<forward_packet_view, close_reason> decode_forward_packet(
    std::span<const std::uint8_t> payload) noexcept;
result<bool, close_reason> decode_note_preferred(std::span<const std::uint8_t> payload) noexcept;
result<node_key, close_reason> decode_close_peer(std::span<const std::uint8_t> payload) noexcept;
result<ping_data, close_reason> decode_ping(std::span<const std::uint8_t> payload) noexcept;
result<void, close_reason> decode_watch_conns(std::span<const std::uint8_t> payload) noexcept;

// Payload decoders for frames a client receives, with the Go client's tolerance: nullopt
// where the Go client drops or rejects the frame.
struct recv_packet_view {
    node_key src;
    std::span<const std::uint8_t> packet;
};
struct peer_gone_view {
    node_key key;
    peer_gone_reason reason;  // disconnected when the reason byte is absent (32-byte form)
};
struct peer_present_view {
    node_key key;
    ip16 ip{};              // all zero when absent (32-byte form of v1.36.2 and older)
    std::uint16_t port = 0;
    std::uint8_t flags = 0;  // 0 = the server does not send flags
};
struct restarting_view {
    std::uint32_t reconnect_in_ms;
    std::uint32_t try_for_ms;
};
struct client_info_view {
    node_key key;
    std::span<const std::uint8_t> sealed;  // nonce(24) + tag(16) + ciphertext
};

std::optional<node_key> decode_server_key(std::span<const std::uint8_t> payload) noexcept;
std::optional<client_info_view> decode_client_info(std::span<const std::uint8_t> payload) noexcept;
// The sealed ServerInfo (nonce + tag + ciphertext): 24 bytes to 24 + 1 MiB.
std::optional<std::span<const std::uint8_t>> decode_server_info(
    std::span<const std::uint8_t> payload) noexcept;
std::optional<recv_packet_view> decode_recv_packet(std::span<const std::uint8_t> payload) noexcept;
std::optional<peer_gone_view> decode_peer_gone(std::span<const std::uint8_t> payload) noexcept;
std::optional<peer_present_view> decode_peer_present(
    std::span<const std::uint8_t> payload) noexcept;
std::optional<ping_data> decode_pong(std::span<const std::uint8_t> payload) noexcept;
std::optional<restarting_view> decode_restarting(std::span<const std::uint8_t> payload) noexcept;
std::string_view decode_health(std::span<const std::uint8_t> payload) noexcept;

// ---- Encoding -----------------------------------------------------------------------------
// Each encoder asserts that out is large enough and the lengths are legal, writes one whole
// frame at the start of out and returns its size.

inline constexpr std::size_t keep_alive_frame_bytes = frame_header_bytes;
inline constexpr std::size_t watch_conns_frame_bytes = frame_header_bytes;
inline constexpr std::size_t server_key_frame_bytes = frame_header_bytes + 8 + key_bytes;  // 45
inline constexpr std::size_t note_preferred_frame_bytes = frame_header_bytes + 1;
inline constexpr std::size_t peer_gone_frame_bytes = frame_header_bytes + key_bytes + 1;  // 38
inline constexpr std::size_t peer_present_payload_bytes = key_bytes + 16 + 2 + 1;         // 51
inline constexpr std::size_t peer_present_frame_bytes = frame_header_bytes + peer_present_payload_bytes;
inline constexpr std::size_t close_peer_frame_bytes = frame_header_bytes + key_bytes;
inline constexpr std::size_t ping_frame_bytes = frame_header_bytes + ping_data_bytes;
inline constexpr std::size_t pong_frame_bytes = ping_frame_bytes;
inline constexpr std::size_t restarting_frame_bytes = frame_header_bytes + 8;
inline constexpr std::size_t recv_packet_header_bytes = frame_header_bytes + key_bytes;  // 37

constexpr std::size_t send_packet_frame_bytes(std::size_t packet_bytes) noexcept {
    return frame_header_bytes + key_bytes + packet_bytes;
}
constexpr std::size_t recv_packet_frame_bytes(std::size_t packet_bytes) noexcept {
    return recv_packet_header_bytes + packet_bytes;
}
constexpr std::size_t forward_packet_frame_bytes(std::size_t packet_bytes) noexcept {
    return frame_header_bytes + 2 * key_bytes + packet_bytes;
}
constexpr std::size_t client_info_frame_bytes(std::size_t sealed_bytes) noexcept {
    return frame_header_bytes + key_bytes + sealed_bytes;
}
constexpr std::size_t server_info_frame_bytes(std::size_t sealed_bytes) noexcept {
    return frame_header_bytes + sealed_bytes;
}
constexpr std::size_t health_frame_bytes(std::size_t text_bytes) noexcept {
    return frame_header_bytes + text_bytes;
}

std::size_t encode_frame_header(std::span<std::uint8_t> out, frame_type type,
                                std::size_t payload_bytes) noexcept;
std::size_t encode_server_key(std::span<std::uint8_t> out, const node_key& server) noexcept;
// sealed = nonce(24) + tag(16) + ciphertext, as produced by crypto/box.hh.
std::size_t encode_client_info(std::span<std::uint8_t> out, const node_key& client,
                               std::span<const std::uint8_t> sealed) noexcept;
std::size_t encode_server_info(std::span<std::uint8_t> out,
                               std::span<const std::uint8_t> sealed) noexcept;
std::size_t encode_send_packet(std::span<std::uint8_t> out, const node_key& dst,
                               std::span<const std::uint8_t> packet) noexcept;
std::size_t encode_recv_packet(std::span<std::uint8_t> out, const node_key& src,
                               std::span<const std::uint8_t> packet) noexcept;
// Only the header and source key of a RecvPacket (37 bytes), for a caller that places the
// packet bytes behind it itself (or sends them from another buffer).
std::size_t encode_recv_packet_header(std::span<std::uint8_t> out, const node_key& src,
                                      std::size_t packet_bytes) noexcept;
std::size_t encode_forward_packet(std::span<std::uint8_t> out, const node_key& src,
                                  const node_key& dst, std::span<const std::uint8_t> packet) noexcept;
std::size_t encode_keep_alive(std::span<std::uint8_t> out) noexcept;
std::size_t encode_note_preferred(std::span<std::uint8_t> out, bool preferred) noexcept;
std::size_t encode_peer_gone(std::span<std::uint8_t> out, const node_key& peer,
                             peer_gone_reason reason) noexcept;
std::size_t encode_peer_present(std::span<std::uint8_t> out, const node_key& peer, const ip16& ip,
                                std::uint16_t port, std::uint8_t flags) noexcept;
std::size_t encode_watch_conns(std::span<std::uint8_t> out) noexcept;
std::size_t encode_close_peer(std::span<std::uint8_t> out, const node_key& peer) noexcept;
std::size_t encode_ping(std::span<std::uint8_t> out, const ping_data& data) noexcept;
std::size_t encode_pong(std::span<std::uint8_t> out, const ping_data& data) noexcept;
std::size_t encode_health(std::span<std::uint8_t> out, std::string_view problem) noexcept;
std::size_t encode_restarting(std::span<std::uint8_t> out, std::uint32_t reconnect_in_ms,
                              std::uint32_t try_for_ms) noexcept;

}  // namespace derp
