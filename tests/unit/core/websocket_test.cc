// Unit tests of the RFC 6455 handshake answer (as derper's coder/websocket Accept) and the
// streaming frame decoder and encoder: masking rules, fragmentation with interleaved control
// frames, size limits, and byte-at-a-time feeding.
#include "core/websocket.hh"

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

namespace derp {
namespace {

http_request parse(const std::string& text) {
    http_request r;
    const auto parsed = parse_http_request({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}, r);
    REQUIRE(parsed.status == http_parse_status::complete);
    return r;
}

const std::string good_head =
    "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

TEST_CASE("Sec-WebSocket-Accept matches RFC 6455 1.3") {
    const auto v = websocket_accept_value("dGhlIHNhbXBsZSBub25jZQ==");
    CHECK(std::string_view(v.data(), v.size()) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST_CASE("the handshake answer is derper's") {
    std::string text = good_head + "Sec-WebSocket-Protocol: chat, derp\r\n\r\n";
    http_request r = parse(text);
    auto a = answer_websocket_handshake(r, 0);
    CHECK(a.upgraded);
    CHECK(a.derp_subprotocol);
    CHECK(a.response ==
          "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
          "Sec-Websocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-Websocket-Protocol: derp\r\n"
          "Upgrade: websocket\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n");
    // "DERP" is selected as spelled, which derper then refuses with 1008.
    text = good_head + "Sec-WebSocket-Protocol: DERP\r\n\r\n";
    r = parse(text);
    a = answer_websocket_handshake(r, 0);
    CHECK(a.upgraded);
    CHECK_FALSE(a.derp_subprotocol);
    CHECK(a.response.find("Sec-Websocket-Protocol: DERP\r\n") != std::string::npos);
    text = good_head + "Sec-WebSocket-Protocol: derpy\r\n\r\n";
    r = parse(text);
    a = answer_websocket_handshake(r, 0);
    CHECK(a.upgraded);
    CHECK_FALSE(a.derp_subprotocol);
    CHECK(a.response.find("Sec-Websocket-Protocol") == std::string::npos);
}

TEST_CASE("refused handshakes get coder/websocket's errors") {
    struct row {
        std::string text;
        std::string_view status_line;
        std::string_view body;
    };
    const std::vector<row> rows = {
        {"POST /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Protocol: derp\r\n\r\n",
         "HTTP/1.1 405 ", "handshake request method is not GET but \"POST\"\n"},
        {"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Protocol: derp\r\n\r\n",
         "HTTP/1.1 426 ", "Connection header \"keep-alive\" does not contain Upgrade\n"},
        {"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
         "HTTP/1.1 400 ", "(only 13 is supported): \"8\"\n"},
        {"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 ", "missing Sec-WebSocket-Key\n"},
        {"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
         "Sec-WebSocket-Key: AAAA\r\n\r\n",
         "HTTP/1.1 400 ", "must be a 16 byte base64 encoded string\n"},
    };
    for (const row& r : rows) {
        CAPTURE(r.text);
        const http_request req = parse(r.text);
        const auto a = answer_websocket_handshake(req, 0);
        CHECK_FALSE(a.upgraded);
        CHECK(a.response.starts_with(r.status_line));
        CHECK(a.response.ends_with(r.body));
    }
}

std::vector<std::uint8_t> client_frame(ws_opcode op, std::string_view payload, bool fin = true, bool masked = true) {
    std::vector<std::uint8_t> f(ws_header_bytes(payload.size(), masked) + payload.size());
    const std::array<std::uint8_t, 4> mask = {0x11, 0x22, 0x33, 0x44};
    const std::size_t h = encode_ws_header(f, op, payload.size(), masked, mask);
    if (!fin) f[0] &= 0x7f;
    std::memcpy(f.data() + h, payload.data(), payload.size());
    if (masked) apply_ws_mask(std::span(f).subspan(h), mask, 0);
    return f;
}

void append(std::vector<std::uint8_t>& to, const std::vector<std::uint8_t>& f) { to.insert(to.end(), f.begin(), f.end()); }

// Feeds `in` in chunks of `chunk` bytes and collects the data and the events.
struct decoded {
    std::string data;
    std::vector<ws_event> events;
    std::uint16_t status = 0;
};
decoded run(ws_decoder& d, const std::vector<std::uint8_t>& in, std::size_t chunk) {
    decoded out;
    std::array<std::uint8_t, 7> buf{};  // small on purpose: `out` fills often
    std::size_t at = 0;
    while (at < in.size() && !d.finished()) {
        std::span<const std::uint8_t> piece(in.data() + at, std::min(chunk, in.size() - at));
        std::size_t used = 0;
        while (used < piece.size() && !d.finished()) {
            const ws_step s = d.feed(piece.subspan(used), buf);
            used += s.consumed;
            out.data.append(reinterpret_cast<const char*>(buf.data()), s.produced);
            if (s.event != ws_event::none) out.events.push_back(s.event), out.status = s.status;
            if (s.consumed == 0 && s.produced == 0 && s.event == ws_event::none) break;
        }
        at += used;
        if (used < piece.size() && !d.finished()) FAIL("the decoder stalled");
    }
    return out;
}

TEST_CASE("fragmented messages with interleaved control frames, any chunking") {
    std::vector<std::uint8_t> in;
    append(in, client_frame(ws_opcode::binary, "hello ", false));
    append(in, client_frame(ws_opcode::ping, "p1"));
    append(in, client_frame(ws_opcode::continuation, "", false));
    append(in, client_frame(ws_opcode::pong, ""));
    append(in, client_frame(ws_opcode::continuation, "world"));
    append(in, client_frame(ws_opcode::binary, std::string(300, 'x')));
    append(in, client_frame(ws_opcode::binary, std::string(70000, 'y')));
    append(in, client_frame(ws_opcode::close, std::string("\x03\xe8", 2)));
    for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{1000}, in.size()}) {
        CAPTURE(chunk);
        ws_decoder d(true, 1 << 20);
        const decoded got = run(d, in, chunk);
        CHECK(got.data == "hello world" + std::string(300, 'x') + std::string(70000, 'y'));
        CHECK(got.events == std::vector<ws_event>{ws_event::ping, ws_event::pong, ws_event::close});
        CHECK(got.status == ws_status_normal);
    }
}

TEST_CASE("protocol errors close with the right status") {
    struct row {
        std::vector<std::uint8_t> in;
        std::uint16_t status;
    };
    std::vector<std::uint8_t> two_starts = client_frame(ws_opcode::binary, "a", false);
    append(two_starts, client_frame(ws_opcode::binary, "b"));
    std::vector<std::uint8_t> rsv = client_frame(ws_opcode::binary, "a");
    rsv[0] |= 0x40;
    const std::vector<row> rows = {
        {client_frame(ws_opcode::binary, "a", true, false), ws_status_protocol_error},  // unmasked
        {client_frame(ws_opcode::text, "a"), ws_status_unsupported_data},
        {client_frame(ws_opcode::continuation, "a"), ws_status_protocol_error},
        {client_frame(ws_opcode::ping, "a", false), ws_status_protocol_error},
        {client_frame(ws_opcode::ping, std::string(126, 'p')), ws_status_protocol_error},
        {client_frame(ws_opcode::close, "x"), ws_status_protocol_error},
        {client_frame(ws_opcode::close, std::string("\x03\xed", 2)), ws_status_protocol_error},  // 1005 on the wire
        {client_frame(static_cast<ws_opcode>(3), "a"), ws_status_protocol_error},
        {client_frame(ws_opcode::binary, std::string(1025, 'z')), ws_status_message_too_big},
        {two_starts, ws_status_protocol_error},
        {rsv, ws_status_protocol_error},
        {{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, ws_status_protocol_error},  // top length bit
    };
    for (const row& r : rows) {
        ws_decoder d(true, 1024);
        const decoded got = run(d, r.in, 1);
        REQUIRE(!got.events.empty());
        CHECK(got.events.back() == ws_event::error);
        CHECK(got.status == r.status);
    }
    // Fragments count toward the message limit together.
    std::vector<std::uint8_t> in = client_frame(ws_opcode::binary, std::string(600, 'a'), false);
    append(in, client_frame(ws_opcode::continuation, std::string(600, 'a')));
    ws_decoder d(true, 1024);
    CHECK(run(d, in, in.size()).status == ws_status_message_too_big);
}

TEST_CASE("the client side reads unmasked server frames and refuses masked ones") {
    ws_decoder d(false, 1 << 20);
    CHECK(run(d, client_frame(ws_opcode::binary, "abc", true, false), 2).data == "abc");
    ws_decoder e(false, 1 << 20);
    CHECK(run(e, client_frame(ws_opcode::binary, "abc"), 2).status == ws_status_protocol_error);
}

TEST_CASE("encoded headers use the minimal length form") {
    std::array<std::uint8_t, ws_header_bytes_max> h{};
    CHECK(encode_ws_header(h, ws_opcode::binary, 125, false) == 2);
    CHECK(encode_ws_header(h, ws_opcode::binary, 126, false) == 4);
    CHECK(encode_ws_header(h, ws_opcode::binary, 65535, false) == 4);
    CHECK(encode_ws_header(h, ws_opcode::binary, 65536, true) == 14);
    std::array<std::uint8_t, ws_close_frame_bytes_max> c{};
    const std::size_t n = encode_ws_close(c, ws_status_internal_error, "closing", false);
    CHECK(std::string(reinterpret_cast<const char*>(c.data()), n) == std::string("\x88\x09\x03\xf3" "closing", 11));
}

}  // namespace
}  // namespace derp
