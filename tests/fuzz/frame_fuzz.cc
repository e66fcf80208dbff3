// libFuzzer target for the DERP frame codec: parses the input as a frame stream and checks that
// the header rules and payload decoders agree and that decoded frames re-encode to the input.
#include <cstdint>
#include <cstring>
#include <span>

#include "core/assert.hh"
#include "core/frame.hh"

namespace {

// Re-encodes a frame decoded from payload and checks the bytes equal the original frame.
void check_round_trip(std::span<const std::uint8_t> frame, const derp::frame_parse& p) {
    using namespace derp;
    std::array<std::uint8_t, forward_packet_frame_bytes(packet_bytes_max)> out;
    std::size_t w = 0;
    switch (p.header.type) {
        case frame_type::send_packet:
            if (auto v = decode_send_packet(p.payload)) w = encode_send_packet(out, v->dst, v->packet);
            break;
        case frame_type::forward_packet:
            if (auto v = decode_forward_packet(p.payload)) w = encode_forward_packet(out, v->src, v->dst, v->packet);
            break;
        case frame_type::recv_packet:
            if (auto v = decode_recv_packet(p.payload); v && v->packet.size() <= packet_bytes_max) {
                w = encode_recv_packet(out, v->src, v->packet);
            }
            break;
        case frame_type::note_preferred:
            if (auto v = decode_note_preferred(p.payload); v && p.payload[0] <= 1) w = encode_note_preferred(out, *v);
            break;
        case frame_type::close_peer:
            if (auto v = decode_close_peer(p.payload)) w = encode_close_peer(out, *v);
            break;
        case frame_type::watch_conns:
            if (decode_watch_conns(p.payload)) w = encode_watch_conns(out);
            break;
        case frame_type::ping:
            if (auto v = decode_ping(p.payload); v && p.payload.size() == ping_data_bytes) w = encode_ping(out, *v);
            break;
        case frame_type::pong:
            if (auto v = decode_pong(p.payload); v && p.payload.size() == ping_data_bytes) w = encode_pong(out, *v);
            break;
        case frame_type::peer_gone:
            if (auto v = decode_peer_gone(p.payload); v && p.payload.size() == key_bytes + 1 &&
                                                      v->reason != peer_gone_reason::mesh_conn_broke) {
                w = encode_peer_gone(out, v->key, v->reason);
            }
            break;
        case frame_type::peer_present:
            if (auto v = decode_peer_present(p.payload); v && p.payload.size() == peer_present_payload_bytes) {
                w = encode_peer_present(out, v->key, v->ip, v->port, v->flags);
            }
            break;
        case frame_type::server_key:
            if (auto v = decode_server_key(p.payload); v && p.payload.size() == 40) w = encode_server_key(out, *v);
            break;
        case frame_type::restarting:
            if (auto v = decode_restarting(p.payload); v && p.payload.size() == 8) {
                w = encode_restarting(out, v->reconnect_in_ms, v->try_for_ms);
            }
            break;
        case frame_type::keep_alive:
            if (p.payload.empty()) w = encode_keep_alive(out);
            break;
        default:
            break;
    }
    if (w != 0) {
        DERP_ASSERT(w == frame.size());
        DERP_ASSERT(std::memcmp(out.data(), frame.data(), w) == 0);
    }
}

// The header-only rules and the payload decoders must reach the same verdict.
void check_rules_agree(const derp::frame_parse& p) {
    using namespace derp;
    const auto rule = check_client_frame(p.header, true);
    switch (p.header.type) {
        case frame_type::send_packet: {
            const auto d = decode_send_packet(p.payload);
            DERP_ASSERT(rule.has_value() == d.has_value());
            if (!d) DERP_ASSERT(rule.error() == d.error());
            break;
        }
        case frame_type::forward_packet: {
            const auto d = decode_forward_packet(p.payload);
            DERP_ASSERT(rule.has_value() == d.has_value());
            if (!d) DERP_ASSERT(rule.error() == d.error());
            break;
        }
        case frame_type::note_preferred:
            DERP_ASSERT(rule.has_value() == decode_note_preferred(p.payload).has_value());
            break;
        case frame_type::close_peer:
            DERP_ASSERT(rule.has_value() == decode_close_peer(p.payload).has_value());
            break;
        case frame_type::watch_conns:
            DERP_ASSERT(rule.has_value() == decode_watch_conns(p.payload).has_value());
            break;
        case frame_type::ping: {
            const auto d = decode_ping(p.payload);
            DERP_ASSERT(rule.has_value() == d.has_value());
            if (!d) DERP_ASSERT(rule.error() == d.error());
            break;
        }
        default:
            DERP_ASSERT(rule.has_value());
            break;
    }
    // Without mesh rights nothing that was refused becomes allowed.
    if (!rule) DERP_ASSERT(!check_client_frame(p.header, false));
}

}  // namespace

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp;
    std::span<const std::uint8_t> in(data, size);
    while (!in.empty()) {
        const frame_parse p = parse_frame(in, client_frame_payload_bytes_max);
        if (p.status == frame_parse_status::need_more) {
            DERP_ASSERT(p.frame_bytes > in.size());
            break;
        }
        if (p.status == frame_parse_status::too_large) {
            DERP_ASSERT(p.header.payload_bytes > client_frame_payload_bytes_max);
            (void)check_client_frame(p.header, false);
            break;
        }
        DERP_ASSERT(p.frame_bytes == frame_header_bytes + p.payload.size());
        DERP_ASSERT(p.frame_bytes <= in.size());
        check_rules_agree(p);
        check_round_trip(in.first(p.frame_bytes), p);
        (void)decode_client_info(p.payload);
        (void)decode_server_info(p.payload);
        (void)decode_health(p.payload);
        (void)looks_like_disco(p.payload);
        in = in.subspan(p.frame_bytes);
    }
    return 0;
}
