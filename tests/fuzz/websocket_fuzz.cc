// libFuzzer target for the WebSocket frame decoder and handshake answer: whatever the bytes and
// however they are split, the decoder never reads or writes past its spans, always makes
// progress, never yields more payload than it was given, and stays finished after a close or
// an error. The first byte picks the role, the chunk size and the output room.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/assert.hh"
#include "core/http_request.hh"
#include "core/websocket.hh"

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t knob = data[0];
    const std::span<const std::uint8_t> in(data + 1, size - 1);
    const bool server = (knob & 1) == 0;
    const std::size_t chunk = 1 + std::size_t{(knob >> 1) & 7u} * 37;
    std::vector<std::uint8_t> out(1 + std::size_t{(knob >> 4) & 15u} * 300);
    derp::ws_decoder d(server, 4096);
    std::size_t at = 0;
    std::size_t produced = 0;
    while (at < in.size()) {
        const auto piece = in.subspan(at, std::min(chunk, in.size() - at));
        const bool was_finished = d.finished();
        const derp::ws_step s = d.feed(piece, out);
        DERP_ASSERT(s.consumed <= piece.size());
        DERP_ASSERT(s.produced <= out.size());
        DERP_ASSERT(s.control_bytes <= derp::ws_control_payload_bytes_max);
        if (was_finished) DERP_ASSERT(s.produced == 0 && s.event == derp::ws_event::none && s.consumed == piece.size());
        if (s.event == derp::ws_event::error) DERP_ASSERT(s.status >= 1000 && !s.error_text.empty() && d.finished());
        if (s.event == derp::ws_event::close) DERP_ASSERT(d.finished());
        // Progress: bytes consumed, payload produced or an event reported.
        DERP_ASSERT(s.consumed > 0 || s.produced > 0 || s.event != derp::ws_event::none);
        produced += s.produced;
        at += s.consumed;
    }
    DERP_ASSERT(produced <= in.size());
    // The same bytes as an HTTP request head: a WebSocket answer is always a whole response.
    derp::http_request request;
    if (derp::parse_http_request(in, request).status == derp::http_parse_status::complete) {
        const auto a = derp::answer_websocket_handshake(request, 0);
        DERP_ASSERT(a.response.starts_with("HTTP/1.1 "));
        DERP_ASSERT(a.upgraded == a.response.starts_with("HTTP/1.1 101 "));
    }
    return 0;
}
