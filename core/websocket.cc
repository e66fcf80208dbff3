// RFC 6455 handshake answer and frame codec for DERP over WebSocket; see websocket.hh.
#include "core/websocket.hh"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/assert.hh"
#include "core/http_endpoints.hh"

namespace derp {

namespace {

// SHA-1 (FIPS 180-4), only for Sec-WebSocket-Accept: the handshake needs it and core/ links no
// OpenSSL. Not for anything that wants collision resistance.
std::array<std::uint8_t, 20> sha1(std::string_view a, std::string_view b) noexcept {
    std::uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const std::uint64_t total = a.size() + b.size();
    const auto byte_at = [&](std::uint64_t i) -> std::uint8_t {
        if (i < a.size()) return static_cast<std::uint8_t>(a[i]);
        if (i < total) return static_cast<std::uint8_t>(b[i - a.size()]);
        if (i == total) return 0x80;
        const std::uint64_t padded = (total + 8 + 64) / 64 * 64;
        if (i >= padded - 8) return static_cast<std::uint8_t>((total * 8) >> (8 * (padded - 1 - i)));
        return 0;
    };
    const std::uint64_t blocks = (total + 8 + 64) / 64;
    const auto rotl = [](std::uint32_t x, int n) { return (x << n) | (x >> (32 - n)); };
    for (std::uint64_t blk = 0; blk < blocks; ++blk) {
        std::uint32_t w[80];
        for (int t = 0; t < 16; ++t) {
            w[t] = 0;
            for (int k = 0; k < 4; ++k) w[t] = (w[t] << 8) | byte_at(blk * 64 + static_cast<std::uint64_t>(t * 4 + k));
        }
        for (int t = 16; t < 80; ++t) w[t] = rotl(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
        std::uint32_t va = h[0], vb = h[1], vc = h[2], vd = h[3], ve = h[4];
        for (int t = 0; t < 80; ++t) {
            std::uint32_t f, k;
            if (t < 20) f = (vb & vc) | (~vb & vd), k = 0x5A827999;
            else if (t < 40) f = vb ^ vc ^ vd, k = 0x6ED9EBA1;
            else if (t < 60) f = (vb & vc) | (vb & vd) | (vc & vd), k = 0x8F1BBCDC;
            else f = vb ^ vc ^ vd, k = 0xCA62C1D6;
            const std::uint32_t tmp = rotl(va, 5) + f + ve + k + w[t];
            ve = vd, vd = vc, vc = rotl(vb, 30), vb = va, va = tmp;
        }
        h[0] += va, h[1] += vb, h[2] += vc, h[3] += vd, h[4] += ve;
    }
    std::array<std::uint8_t, 20> out{};
    for (int i = 0; i < 20; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(h[i / 4] >> (24 - 8 * (i % 4)));
    return out;
}

constexpr std::string_view base64_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// The decoded length of standard base64 with padding (Go's StdEncoding), or -1 when invalid.
int base64_decoded_bytes(std::string_view s) noexcept {
    if (s.size() % 4 != 0) return -1;
    std::size_t pad = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '=') {
            if (i < s.size() - 2) return -1;
            ++pad;
            continue;
        }
        if (pad > 0 || base64_alphabet.find(s[i]) == std::string_view::npos) return -1;
    }
    return static_cast<int>(s.size() / 4 * 3 - pad);
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Every comma-separated token of every field named `name`, trimmed (coder's headerTokens).
template <typename Fn>
void for_each_token(const http_request& request, std::string_view name, Fn&& fn) {
    for (const http_header& h : request.header_list()) {
        if (!ascii_iequals(h.name, name)) continue;
        std::string_view v = h.value;
        for (;;) {
            const auto comma = v.find(',');
            fn(trim(v.substr(0, comma)));
            if (comma == std::string_view::npos) break;
            v.remove_prefix(comma + 1);
        }
    }
}

bool has_token(const http_request& request, std::string_view name, std::string_view token) {
    bool found = false;
    for_each_token(request, name, [&](std::string_view t) { found = found || ascii_iequals(t, token); });
    return found;
}

// Go's %q for the strings these errors quote (printable ASCII; others as \xNN).
std::string go_quote(std::string_view s) {
    std::string out = "\"";
    for (const char ch : s) {
        const auto u = static_cast<unsigned char>(ch);
        if (ch == '"' || ch == '\\') out += '\\', out += ch;
        else if (u < 0x20 || u >= 0x7f) out += fmt::format("\\x{:02x}", u);
        else out += ch;
    }
    return out + "\"";
}

std::string refuse(int status, std::span<const http_header_field> extra, std::string_view message,
                   std::int64_t unix_seconds) {
    std::vector<http_header_field> headers(extra.begin(), extra.end());
    headers.push_back({"Content-Type", "text/plain; charset=utf-8"});
    headers.push_back({"X-Content-Type-Options", "nosniff"});
    return go_http_response(status, headers, fmt::format("{}\n", message), unix_seconds, false);
}

// The whole header's size as its second byte announces it (extended length, mask).
std::size_t header_bytes_announced(std::uint8_t second) noexcept {
    const std::uint8_t len7 = second & 0x7f;
    return std::size_t{2} + (len7 == 126 ? 2u : len7 == 127 ? 8u : 0u) + ((second & 0x80) != 0 ? 4u : 0u);
}

// dst = src XOR mask, eight bytes at a time (one pass over the payload, not a copy and then
// an XOR).
void copy_unmasked(std::uint8_t* dst, const std::uint8_t* src, std::size_t n, std::array<std::uint8_t, 4> mask,
                   std::uint64_t at) noexcept {
    std::array<std::uint8_t, 8> wide{};
    for (std::size_t k = 0; k < 8; ++k) wide[k] = mask[(at + k) & 3];
    std::uint64_t word_mask = 0;
    std::memcpy(&word_mask, wide.data(), 8);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t w = 0;
        std::memcpy(&w, src + i, 8);
        w ^= word_mask;
        std::memcpy(dst + i, &w, 8);
    }
    for (; i < n; ++i) dst[i] = src[i] ^ mask[(at + i) & 3];
}

bool valid_close_status(std::uint16_t s) noexcept {
    return (s >= 1000 && s <= 1003) || (s >= 1007 && s <= 1014) || (s >= 3000 && s <= 4999);
}

}  // namespace

std::array<char, 28> websocket_accept_value(std::string_view key) noexcept {
    const auto digest = sha1(key, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    std::array<char, 28> out{};
    std::size_t o = 0;
    for (std::size_t i = 0; i < 21; i += 3) {
        const std::uint32_t v = (std::uint32_t{digest[i]} << 16) | (i + 1 < 20 ? std::uint32_t{digest[i + 1]} << 8 : 0u) |
                                (i + 2 < 20 ? std::uint32_t{digest[i + 2]} : 0u);
        out[o++] = base64_alphabet[(v >> 18) & 63];
        out[o++] = base64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < 20 ? base64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < 20 ? base64_alphabet[v & 63] : '=';
    }
    DERP_ASSERT(o == out.size());
    return out;
}

ws_handshake_answer answer_websocket_handshake(const http_request& request, std::int64_t unix_seconds) {
    ws_handshake_answer a;
    if (request.version_minor < 1) {
        a.response = refuse(426, {},
                            fmt::format("WebSocket protocol violation: handshake request must be at least HTTP/1.1: {}",
                                        go_quote("HTTP/1.0")),
                            unix_seconds);
        return a;
    }
    if (!has_token(request, "Connection", "upgrade")) {
        const std::array<http_header_field, 2> extra = {{{"Connection", "Upgrade"}, {"Upgrade", "websocket"}}};
        a.response = refuse(426, extra,
                            fmt::format("WebSocket protocol violation: Connection header {} does not contain Upgrade",
                                        go_quote(request.header("Connection").value_or(""))),
                            unix_seconds);
        return a;
    }
    if (request.method != "GET") {
        a.response = refuse(405, {},
                            fmt::format("WebSocket protocol violation: handshake request method is not GET but {}",
                                        go_quote(request.method)),
                            unix_seconds);
        return a;
    }
    const std::string_view version = request.header("Sec-WebSocket-Version").value_or("");
    if (version != "13") {
        const std::array<http_header_field, 1> extra = {{{"Sec-Websocket-Version", "13"}}};
        a.response = refuse(400, extra,
                            fmt::format("unsupported WebSocket protocol version (only 13 is supported): {}", go_quote(version)),
                            unix_seconds);
        return a;
    }
    const std::size_t keys = request.header_count_of("Sec-WebSocket-Key");
    if (keys != 1) {
        a.response = refuse(400, {},
                            keys == 0 ? "WebSocket protocol violation: missing Sec-WebSocket-Key"
                                      : "WebSocket protocol violation: multiple Sec-WebSocket-Key headers",
                            unix_seconds);
        return a;
    }
    const std::string_view key = trim(request.header("Sec-WebSocket-Key").value_or(""));
    if (base64_decoded_bytes(key) != 16) {
        a.response = refuse(400, {},
                            fmt::format("WebSocket protocol violation: invalid Sec-WebSocket-Key {}, must be a 16 byte "
                                        "base64 encoded string",
                                        go_quote(key)),
                            unix_seconds);
        return a;
    }
    std::string_view selected;
    for_each_token(request, "Sec-WebSocket-Protocol", [&](std::string_view t) {
        if (selected.empty() && ascii_iequals(t, "derp")) selected = t;
    });
    const auto accept = websocket_accept_value(key);
    std::vector<http_header_field> headers = {{"Connection", "Upgrade"},
                                              {"Sec-Websocket-Accept", std::string_view(accept.data(), accept.size())},
                                              {"Upgrade", "websocket"}};
    if (!selected.empty()) headers.push_back({"Sec-Websocket-Protocol", selected});
    a.response = go_http_response(101, headers, "", unix_seconds, false);
    a.upgraded = true;
    a.derp_subprotocol = selected == "derp";
    return a;
}

// ---------------------------------------------------------------------------------------------
// Frames.

std::size_t ws_header_bytes(std::uint64_t payload_bytes, bool masked) noexcept {
    const std::size_t length = payload_bytes < 126 ? 2 : payload_bytes <= 0xffff ? 4 : 10;
    return length + (masked ? 4 : 0);
}

std::size_t encode_ws_header(std::span<std::uint8_t> out, ws_opcode opcode, std::uint64_t payload_bytes, bool masked,
                             std::array<std::uint8_t, 4> mask) noexcept {
    const std::size_t n = ws_header_bytes(payload_bytes, masked);
    DERP_ASSERT(out.size() >= n);
    out[0] = static_cast<std::uint8_t>(0x80 | static_cast<std::uint8_t>(opcode));
    const std::uint8_t mask_bit = masked ? 0x80 : 0;
    std::size_t at = 2;
    if (payload_bytes < 126) {
        out[1] = static_cast<std::uint8_t>(mask_bit | payload_bytes);
    } else if (payload_bytes <= 0xffff) {
        out[1] = mask_bit | 126;
        out[2] = static_cast<std::uint8_t>(payload_bytes >> 8);
        out[3] = static_cast<std::uint8_t>(payload_bytes);
        at = 4;
    } else {
        out[1] = mask_bit | 127;
        for (int i = 0; i < 8; ++i) out[2 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(payload_bytes >> (56 - 8 * i));
        at = 10;
    }
    if (masked) std::memcpy(out.data() + at, mask.data(), 4);
    return n;
}

void apply_ws_mask(std::span<std::uint8_t> data, std::array<std::uint8_t, 4> mask, std::uint64_t at) noexcept {
    // Eight bytes at a time with the mask rotated to this offset: the byte loop costs about
    // as much as the rest of the relay path for full-size packets.
    std::array<std::uint8_t, 8> wide{};
    for (std::size_t k = 0; k < 8; ++k) wide[k] = mask[(at + k) & 3];
    std::uint64_t word_mask = 0;
    std::memcpy(&word_mask, wide.data(), 8);
    std::size_t i = 0;
    for (; i + 8 <= data.size(); i += 8) {
        std::uint64_t w = 0;
        std::memcpy(&w, data.data() + i, 8);
        w ^= word_mask;
        std::memcpy(data.data() + i, &w, 8);
    }
    for (; i < data.size(); ++i) data[i] ^= mask[(at + i) & 3];
}

std::size_t encode_ws_close(std::span<std::uint8_t> out, std::uint16_t status, std::string_view reason, bool masked,
                            std::array<std::uint8_t, 4> mask) noexcept {
    reason = reason.substr(0, ws_control_payload_bytes_max - 2);
    const std::size_t h = encode_ws_header(out, ws_opcode::close, 2 + reason.size(), masked, mask);
    DERP_ASSERT(out.size() >= h + 2 + reason.size());
    out[h] = static_cast<std::uint8_t>(status >> 8);
    out[h + 1] = static_cast<std::uint8_t>(status);
    std::memcpy(out.data() + h + 2, reason.data(), reason.size());
    if (masked) apply_ws_mask(out.subspan(h, 2 + reason.size()), mask, 0);
    return h + 2 + reason.size();
}

ws_step ws_decoder::feed(std::span<const std::uint8_t> in, std::span<std::uint8_t> out) noexcept {
    ws_step step;
    const auto fail = [&](std::uint16_t status, std::string_view text) {
        _finished = true;
        step.event = ws_event::error;
        step.status = status;
        step.error_text = text;
        step.consumed = in.size();
        return step;
    };
    if (_finished) {
        step.consumed = in.size();
        return step;
    }
    for (;;) {
        // Read the header: 2 bytes, then the extended length and the mask they announce.
        std::size_t need = _header_have >= 2 ? header_bytes_announced(_header[1]) : 2;
        if (!_in_frame) {
            while (_header_have < need) {
                if (step.consumed == in.size()) return step;
                _header[_header_have++] = in[step.consumed++];
                if (_header_have == 2) need = header_bytes_announced(_header[1]);
            }
            // A whole header: check it before any payload is read.
            const std::uint8_t b0 = _header[0];
            const std::uint8_t len7 = _header[1] & 0x7f;
            _fin = (b0 & 0x80) != 0;
            _opcode = static_cast<ws_opcode>(b0 & 0x0f);
            _masked = (_header[1] & 0x80) != 0;
            std::uint64_t length = len7;
            std::size_t at = 2;
            if (len7 == 126) {
                length = (std::uint64_t{_header[2]} << 8) | _header[3];
                at = 4;
            } else if (len7 == 127) {
                length = 0;
                for (int i = 0; i < 8; ++i) length = (length << 8) | _header[2 + static_cast<std::size_t>(i)];
                at = 10;
            }
            if (_masked) std::memcpy(_mask.data(), _header.data() + at, 4);
            _header_have = 0;
            if ((b0 & 0x70) != 0) return fail(ws_status_protocol_error, "reserved bits set (no extension was negotiated)");
            if (_masked != _expect_masked)
                return fail(ws_status_protocol_error,
                            _expect_masked ? "client frames must be masked" : "server frames must not be masked");
            if (length >> 63) return fail(ws_status_protocol_error, "frame length with the top bit set");
            switch (_opcode) {
            case ws_opcode::close:
            case ws_opcode::ping:
            case ws_opcode::pong:
                if (!_fin) return fail(ws_status_protocol_error, "fragmented control frame");
                if (length > ws_control_payload_bytes_max) return fail(ws_status_protocol_error, "control frame too large");
                if (_opcode == ws_opcode::close && length == 1) return fail(ws_status_protocol_error, "close frame of one byte");
                break;
            case ws_opcode::text:
                return fail(ws_status_unsupported_data,
                            "unexpected frame type read (expected MessageBinary): MessageText");
            case ws_opcode::binary:
                if (_in_message) return fail(ws_status_protocol_error, "new message before the last one ended");
                _in_message = true;
                _message_bytes = 0;
                break;
            case ws_opcode::continuation:
                if (!_in_message) return fail(ws_status_protocol_error, "continuation frame outside a message");
                break;
            default:
                return fail(ws_status_protocol_error, "unknown opcode");
            }
            const bool control = (static_cast<std::uint8_t>(_opcode) & 0x8) != 0;
            if (!control) {
                if (length > _message_bytes_max - _message_bytes) return fail(ws_status_message_too_big, "message too big");
                _message_bytes += length;
            }
            _payload_left = length;
            _mask_at = 0;
            _control_have = 0;
            _in_frame = true;
        }
        const bool control = (static_cast<std::uint8_t>(_opcode) & 0x8) != 0;
        // The payload.
        const std::size_t available = in.size() - step.consumed;
        if (control) {
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(_payload_left, available));
            std::memcpy(_control.data() + _control_have, in.data() + step.consumed, n);
            if (_masked) apply_ws_mask({_control.data() + _control_have, n}, _mask, _mask_at);
            _control_have += n;
            _mask_at += n;
            _payload_left -= n;
            step.consumed += n;
            if (_payload_left > 0) return step;
            _in_frame = false;
            std::memcpy(step.control.data(), _control.data(), _control_have);
            step.control_bytes = _control_have;
            if (_opcode == ws_opcode::ping) {
                step.event = ws_event::ping;
            } else if (_opcode == ws_opcode::pong) {
                step.event = ws_event::pong;
            } else {
                step.status = _control_have >= 2
                                  ? static_cast<std::uint16_t>((std::uint16_t{_control[0]} << 8) | _control[1])
                                  : ws_status_no_status;
                if (_control_have >= 2 && !valid_close_status(step.status)) {
                    const std::size_t used = step.consumed;
                    fail(ws_status_protocol_error, "invalid close status");
                    step.consumed = used;
                    return step;
                }
                _finished = true;
                step.event = ws_event::close;
            }
            return step;
        }
        const std::size_t room = out.size() - step.produced;
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(_payload_left, std::min(available, room)));
        if (n > 0) {
            if (_masked) copy_unmasked(out.data() + step.produced, in.data() + step.consumed, n, _mask, _mask_at);
            else std::memcpy(out.data() + step.produced, in.data() + step.consumed, n);
            step.produced += n;
            step.consumed += n;
            _mask_at += n;
            _payload_left -= n;
        }
        if (_payload_left > 0) return step;  // `in` used up or `out` full
        _in_frame = false;
        if (_fin) _in_message = false;
    }
}

}  // namespace derp
