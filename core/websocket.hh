// RFC 6455 for DERP over WebSocket (spec 3.4): the server's handshake answer exactly as derper
// (coder/websocket Accept with subprotocol "derp", any Origin, no compression) and a streaming
// frame decoder and encoder. Pure: bytes in, verdicts out; nothing here reads a socket or logs.
// Not here: which connection is WebSocket (core/derp_upgrade.hh) and carrying the bytes (the
// layer in server/ws_layer.hh).
//
// Frame wire format (RFC 6455 5.2), all lengths big-endian:
//   byte 0: FIN(0x80) RSV1-3(0x70, must be 0: no extension is negotiated) opcode(0x0f)
//   byte 1: MASK(0x80) len7(0x7f); len7 126 -> 2-byte length follows, 127 -> 8-byte length
//   [4-byte masking key when MASK]  payload (XORed with key[i % 4] when masked)
// Client-to-server frames must be masked and server-to-client frames must not be.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/http_request.hh"

namespace derp {

enum class ws_opcode : std::uint8_t {
    continuation = 0x0,
    text = 0x1,
    binary = 0x2,
    close = 0x8,
    ping = 0x9,
    pong = 0xa,
};

// Close status codes (RFC 6455 7.4.1) derpd sends or reads.
inline constexpr std::uint16_t ws_status_normal = 1000;
inline constexpr std::uint16_t ws_status_going_away = 1001;
inline constexpr std::uint16_t ws_status_protocol_error = 1002;
inline constexpr std::uint16_t ws_status_unsupported_data = 1003;
inline constexpr std::uint16_t ws_status_no_status = 1005;  // a close frame without a payload
inline constexpr std::uint16_t ws_status_policy_violation = 1008;
inline constexpr std::uint16_t ws_status_message_too_big = 1009;
inline constexpr std::uint16_t ws_status_internal_error = 1011;

inline constexpr std::size_t ws_control_payload_bytes_max = 125;
inline constexpr std::size_t ws_header_bytes_max = 14;  // 2 + 8-byte length + 4-byte mask

// ---------------------------------------------------------------------------------------------
// Handshake (RFC 6455 4.2).

// derper's answer to a GET /derp that core/derp_upgrade classified as WebSocket.
struct ws_handshake_answer {
    bool upgraded = false;     // a 101 went out: the connection speaks WebSocket from here on
    bool derp_subprotocol = false;  // the selected subprotocol is exactly "derp"; else close 1008
    std::string response;      // the 101, or Go's http.Error answer when the request is refused
};

// What coder/websocket's Accept checks, in its order: HTTP/1.1, Connection contains the token
// "upgrade", method GET, Sec-WebSocket-Version 13, exactly one Sec-WebSocket-Key that is 16
// bytes in base64. The subprotocol is the first offered token equal to "derp" ignoring case,
// echoed as the client spelled it (derper then wants it to be exactly "derp").
ws_handshake_answer answer_websocket_handshake(const http_request& request, std::int64_t unix_seconds);

// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")): 28 characters.
std::array<char, 28> websocket_accept_value(std::string_view key) noexcept;

// ---------------------------------------------------------------------------------------------
// Frames.

enum class ws_event : std::uint8_t {
    none,   // `in` is used up (or `out` is full): feed more
    ping,   // a ping arrived: answer with a pong carrying `control`
    pong,   // a pong arrived (ignored by derpd; reported so the fuzzer sees it)
    close,  // the peer's close: `status` (1005 when it sent none), reason in `control`
    error,  // the peer broke the protocol: close with `status` and `error_text`
};

struct ws_step {
    std::size_t consumed = 0;  // bytes of `in` used
    std::size_t produced = 0;  // unmasked binary payload bytes written to `out`
    ws_event event = ws_event::none;
    std::uint16_t status = 0;
    std::string_view error_text;  // a constant string
    std::array<std::uint8_t, ws_control_payload_bytes_max> control{};
    std::size_t control_bytes = 0;
};

// Decodes one direction of a WebSocket byte stream into the concatenated payloads of its binary
// messages. A frame's payload streams through: nothing waits for a whole frame or message
// except the 125 bytes of a control frame. Control frames may arrive between the fragments of a
// message (RFC 6455 5.4).
class ws_decoder {
public:
    // `expect_masked`: the decoder runs on the server (client frames are masked). A message
    // whose payload would pass `message_bytes_max` is refused with 1009.
    ws_decoder(bool expect_masked, std::uint64_t message_bytes_max) noexcept
        : _expect_masked(expect_masked), _message_bytes_max(message_bytes_max) {}

    // Consumes from `in` until it is used up, `out` is full or an event other than none
    // occurs. After an error or close event the decoder refuses everything.
    ws_step feed(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) noexcept;

    // The stream stopped inside a frame or a fragmented message (an EOF here is not orderly).
    bool inside_frame() const noexcept { return _header_have > 0 || _in_frame || _in_message; }
    bool finished() const noexcept { return _finished; }

private:
    bool _expect_masked;
    std::uint64_t _message_bytes_max;
    bool _finished = false;
    bool _in_message = false;         // a binary message whose final fragment is still to come
    std::uint64_t _message_bytes = 0; // its payload so far
    // The frame being read.
    std::array<std::uint8_t, ws_header_bytes_max> _header{};
    std::size_t _header_have = 0;
    bool _in_frame = false;  // the header is read; the payload is not yet
    std::uint64_t _payload_left = 0;
    ws_opcode _opcode = ws_opcode::continuation;
    bool _fin = false;
    std::array<std::uint8_t, 4> _mask{};
    bool _masked = false;
    std::uint64_t _mask_at = 0;  // payload bytes of this frame unmasked so far
    std::array<std::uint8_t, ws_control_payload_bytes_max> _control{};
    std::size_t _control_have = 0;
};

// The header bytes a frame of `payload_bytes` takes (minimal length encoding, RFC 6455 5.2).
std::size_t ws_header_bytes(std::uint64_t payload_bytes, bool masked) noexcept;
// Writes a frame header with FIN set; returns its size. `mask` is used when `masked`.
std::size_t encode_ws_header(std::span<std::uint8_t> out, ws_opcode opcode, std::uint64_t payload_bytes,
                             bool masked, std::array<std::uint8_t, 4> mask = {}) noexcept;
// XORs `data` with the mask, starting at payload offset `at`.
void apply_ws_mask(std::span<std::uint8_t> data, std::array<std::uint8_t, 4> mask, std::uint64_t at) noexcept;
// A whole close frame (status, then the reason, cut to fit 125 bytes). Returns its size.
inline constexpr std::size_t ws_close_frame_bytes_max = 2 + 4 + ws_control_payload_bytes_max;
std::size_t encode_ws_close(std::span<std::uint8_t> out, std::uint16_t status, std::string_view reason,
                            bool masked, std::array<std::uint8_t, 4> mask = {}) noexcept;

}  // namespace derp
