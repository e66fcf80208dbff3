// Unit tests of the DERP frame codec: spec 11.2 vectors, derper's length rules at their edges,
// incremental parsing, the recorded fixture streams, and zero allocations on the hot path.
#include "core/frame.hh"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "core/http_request.hh"
#include "tests/support/counting_new.hh"
#include "tests/unit/fixture_util.hh"


namespace derp {
namespace {

using test::bytes;
using test::from_hex;
using test::to_hex;

const node_key& client = test::spec_keys::client_public;
const node_key& client2 = test::spec_keys::client2_public;
const node_key& server = test::spec_keys::server_public;
const bytes hello = test::to_bytes("hello");

std::string encoded(std::size_t (*fn)(std::span<std::uint8_t>)) {
    bytes out(64);
    out.resize(fn(out));
    return to_hex(out);
}

template <typename F>
std::string encoded_with(std::size_t capacity, F&& fn) {
    bytes out(capacity);
    out.resize(fn(std::span<std::uint8_t>(out)));
    return to_hex(out);
}

std::string strip(std::string s) {
    std::erase(s, ' ');
    return s;
}

TEST_CASE("spec 11.2 frames encode byte for byte") {
    CHECK(encoded_with(64, [](auto out) { return encode_server_key(out, server); }) ==
          strip("01 00000028 44455250f09f9491 d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526"));
    CHECK(encoded_with(64, [](auto out) { return encode_send_packet(out, client2, hello); }) ==
          strip("04 00000025 249035a08e5aa885caa1d3e45e51c717e63e88c504f22bac9629c5fd4a33865a 68656c6c6f"));
    CHECK(encoded_with(64, [](auto out) { return encode_recv_packet(out, client, hello); }) ==
          strip("05 00000025 b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13 68656c6c6f"));
    CHECK(encoded_with(128, [](auto out) { return encode_forward_packet(out, client, client2, hello); }) ==
          strip("0a 00000045 b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13 "
                "249035a08e5aa885caa1d3e45e51c717e63e88c504f22bac9629c5fd4a33865a 68656c6c6f"));
    CHECK(encoded(encode_keep_alive) == "0600000000");
    CHECK(encoded_with(8, [](auto out) { return encode_note_preferred(out, true); }) == "070000000101");
    CHECK(encoded_with(64, [](auto out) { return encode_peer_gone(out, client, peer_gone_reason::not_here); }) ==
          strip("08 00000021 b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13 01"));
    CHECK(encoded_with(64, [](auto out) {
              return encode_peer_present(out, client, ipv4_mapped({192, 0, 2, 10}), 41641,
                                         peer_present_flags(false, false, false));
          }) == strip("09 00000033 b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13 "
                      "00000000000000000000ffffc000020a a2a9 01"));
    CHECK(encoded(encode_watch_conns) == "1000000000");
    CHECK(encoded_with(64, [](auto out) { return encode_close_peer(out, client); }) ==
          strip("11 00000020 b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13"));
    const ping_data data = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK(encoded_with(16, [&](auto out) { return encode_ping(out, data); }) == "12000000080102030405060708");
    CHECK(encoded_with(16, [&](auto out) { return encode_pong(out, data); }) == "13000000080102030405060708");
    CHECK(encoded_with(16, [](auto out) { return encode_health(out, ""); }) == "1400000000");
    CHECK(encoded_with(16, [](auto out) { return encode_restarting(out, 5000, 10000); }) ==
          "15000000080000138800002710");
    // Generic header example: SendPacket with a 100-byte packet.
    CHECK(encoded_with(8, [](auto out) { return encode_frame_header(std::span(out.data(), 5 + 132), frame_type::send_packet, 132); }) ==
          "0400000084");
}

TEST_CASE("spec 11.2 frames decode") {
    const bytes send = from_hex("249035a08e5aa885caa1d3e45e51c717e63e88c504f22bac9629c5fd4a33865a68656c6c6f");
    const auto sp = decode_send_packet(send);
    REQUIRE(sp.has_value());
    CHECK(sp->dst == client2);
    CHECK(bytes(sp->packet.begin(), sp->packet.end()) == hello);

    const bytes fwd = from_hex("b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13"
                               "249035a08e5aa885caa1d3e45e51c717e63e88c504f22bac9629c5fd4a33865a68656c6c6f");
    const auto fp = decode_forward_packet(fwd);
    REQUIRE(fp.has_value());
    CHECK(fp->src == client);
    CHECK(fp->dst == client2);
    CHECK(bytes(fp->packet.begin(), fp->packet.end()) == hello);

    const bytes present = from_hex("b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13"
                                   "00000000000000000000ffffc000020aa2a901");
    const auto pp = decode_peer_present(present);
    REQUIRE(pp.has_value());
    CHECK(pp->key == client);
    CHECK(pp->ip == ipv4_mapped({192, 0, 2, 10}));
    CHECK(pp->port == 41641);
    CHECK(pp->flags == peer_present_regular);

    const auto restart = decode_restarting(from_hex("0000138800002710"));
    REQUIRE(restart.has_value());
    CHECK(restart->reconnect_in_ms == 5000);
    CHECK(restart->try_for_ms == 10000);

    const auto server_key = decode_server_key(
        from_hex("44455250f09f9491d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526"));
    REQUIRE(server_key.has_value());
    CHECK(*server_key == server);
}

TEST_CASE("check_client_frame applies derper's read-loop rules") {
    struct row {
        frame_type type;
        std::uint32_t length;
        bool mesh;
        std::optional<close_reason> expected;  // nullopt = accepted
    };
    const std::vector<row> rows = {
        {frame_type::note_preferred, 1, false, std::nullopt},
        {frame_type::note_preferred, 0, false, close_reason::note_preferred_length},
        {frame_type::note_preferred, 2, true, close_reason::note_preferred_length},
        {frame_type::send_packet, 31, false, close_reason::packet_frame_too_short},
        {frame_type::send_packet, 32, false, std::nullopt},            // empty packet
        {frame_type::send_packet, 32 + 65536, false, std::nullopt},    // 64 KiB packet
        {frame_type::send_packet, 32 + 65537, false, close_reason::frame_too_large},
        {frame_type::send_packet, 0xffffffff, false, close_reason::frame_too_large},
        {frame_type::forward_packet, 64, false, close_reason::not_mesh},  // permission first
        {frame_type::forward_packet, 10, false, close_reason::not_mesh},
        {frame_type::forward_packet, 63, true, close_reason::packet_frame_too_short},
        {frame_type::forward_packet, 64, true, std::nullopt},
        {frame_type::forward_packet, 64 + 65536, true, std::nullopt},
        {frame_type::forward_packet, 64 + 65537, true, close_reason::frame_too_large},
        {frame_type::watch_conns, 0, true, std::nullopt},
        {frame_type::watch_conns, 0, false, close_reason::not_mesh},
        {frame_type::watch_conns, 1, false, close_reason::watch_conns_length},  // length first
        {frame_type::close_peer, 32, true, std::nullopt},
        {frame_type::close_peer, 32, false, close_reason::not_mesh},
        {frame_type::close_peer, 31, false, close_reason::close_peer_length},
        {frame_type::close_peer, 33, true, close_reason::close_peer_length},
        {frame_type::ping, 7, false, close_reason::ping_too_short},
        {frame_type::ping, 8, false, std::nullopt},
        {frame_type::ping, 1000, false, std::nullopt},
        {frame_type::ping, 1001, false, close_reason::ping_too_large},
        {frame_type::pong, 0, false, std::nullopt},        // skipped, any length
        {frame_type::keep_alive, 12345, false, std::nullopt},
        {frame_type::client_info, 0xffffffff, false, std::nullopt},  // late ClientInfo: skipped
        {static_cast<frame_type>(0x0b), 0xffffffff, false, std::nullopt},  // unknown: skipped
        {static_cast<frame_type>(0xff), 0, false, std::nullopt},
    };
    for (const auto& r : rows) {
        CAPTURE(static_cast<int>(r.type));
        CAPTURE(r.length);
        CAPTURE(r.mesh);
        const auto verdict = check_client_frame(frame_header{r.type, r.length}, r.mesh);
        if (r.expected) {
            REQUIRE_FALSE(verdict.has_value());
            CHECK(verdict.error() == *r.expected);
        } else {
            CHECK(verdict.has_value());
        }
    }
}

TEST_CASE("payload decoders check the same rules again") {
    const bytes key(32, 0xab);
    auto with = [&](std::size_t n) {
        bytes b(n, 0x5a);
        std::copy(key.begin(), key.begin() + static_cast<long>(std::min<std::size_t>(n, 32)), b.begin());
        return b;
    };
    CHECK(decode_send_packet(with(31)).error() == close_reason::packet_frame_too_short);
    CHECK(decode_send_packet(with(32))->packet.empty());
    CHECK(decode_send_packet(with(32 + 65536))->packet.size() == 65536);
    CHECK(decode_send_packet(with(32 + 65537)).error() == close_reason::frame_too_large);
    CHECK(decode_forward_packet(with(63)).error() == close_reason::packet_frame_too_short);
    CHECK(decode_forward_packet(with(64))->packet.empty());
    CHECK(decode_forward_packet(with(64 + 65536))->packet.size() == 65536);
    CHECK(decode_forward_packet(with(64 + 65537)).error() == close_reason::frame_too_large);
    CHECK(decode_note_preferred(bytes{}).error() == close_reason::note_preferred_length);
    CHECK(*decode_note_preferred(bytes{1}) == true);
    CHECK(*decode_note_preferred(bytes{0}) == false);
    CHECK(*decode_note_preferred(bytes{7}) == true);  // any non-zero byte
    CHECK(decode_note_preferred(bytes{1, 1}).error() == close_reason::note_preferred_length);
    CHECK(decode_close_peer(with(32))->bytes()[0] == 0xab);
    CHECK(decode_close_peer(with(31)).error() == close_reason::close_peer_length);
    CHECK(decode_watch_conns(bytes{}).has_value());
    CHECK(decode_watch_conns(bytes{0}).error() == close_reason::watch_conns_length);
    CHECK(decode_ping(bytes(7)).error() == close_reason::ping_too_short);
    bytes long_ping(1000);
    for (std::size_t i = 0; i < long_ping.size(); ++i) long_ping[i] = static_cast<std::uint8_t>(i);
    CHECK(*decode_ping(long_ping) == ping_data{0, 1, 2, 3, 4, 5, 6, 7});  // echo the first 8
    CHECK(decode_ping(bytes(1001)).error() == close_reason::ping_too_large);
}

TEST_CASE("client-side decoders accept old and new forms") {
    const bytes key = from_hex("a63697bb45b591d76eb64b9d921c6f4e53183e91cd25da9e1ba6eb001cf21a0b");
    // v1.36.2 PeerGone: key only, reason defaults to Disconnected.
    auto gone = decode_peer_gone(key);
    REQUIRE(gone.has_value());
    CHECK(gone->reason == peer_gone_reason::disconnected);
    bytes gone33 = key;
    gone33.push_back(0x01);
    CHECK(decode_peer_gone(gone33)->reason == peer_gone_reason::not_here);
    CHECK_FALSE(decode_peer_gone(bytes(31)).has_value());
    // PeerPresent: 32 (key only), 50 (key + ip + port), 51 (with flags), longer (ignored tail).
    auto p32 = decode_peer_present(key);
    REQUIRE(p32.has_value());
    CHECK(p32->ip == ip16{});
    CHECK(p32->port == 0);
    CHECK(p32->flags == 0);
    bytes p50 = key;
    const auto ip = ipv4_mapped({127, 0, 0, 1});
    p50.insert(p50.end(), ip.begin(), ip.end());
    p50.push_back(0x12);
    p50.push_back(0x34);
    CHECK(decode_peer_present(p50)->port == 0x1234);
    CHECK(decode_peer_present(p50)->flags == 0);
    bytes p52 = p50;
    p52.push_back(peer_present_mesh_peer);
    p52.push_back(0xee);
    CHECK(decode_peer_present(p52)->flags == peer_present_mesh_peer);
    CHECK_FALSE(decode_peer_present(bytes(31)).has_value());
    CHECK_FALSE(decode_recv_packet(bytes(31)).has_value());
    CHECK(decode_recv_packet(bytes(32))->packet.empty());
    CHECK_FALSE(decode_pong(bytes(7)).has_value());
    CHECK_FALSE(decode_restarting(bytes(7)).has_value());
    CHECK(decode_health(test::to_bytes("dup key")) == "dup key");
    // ServerKey: magic required, 40..1024 bytes.
    bytes sk = from_hex("44455250f09f9491");
    sk.insert(sk.end(), key.begin(), key.end());
    CHECK(decode_server_key(sk).has_value());
    bytes sk_long = sk;
    sk_long.resize(1024);
    CHECK(decode_server_key(sk_long).has_value());
    sk_long.resize(1025);
    CHECK_FALSE(decode_server_key(sk_long).has_value());
    CHECK_FALSE(decode_server_key(bytes(sk.begin(), sk.end() - 1)).has_value());
    sk[0] = 'X';
    CHECK_FALSE(decode_server_key(sk).has_value());
    CHECK_FALSE(decode_server_info(bytes(23)).has_value());
    CHECK(decode_server_info(bytes(24)).has_value());
    CHECK_FALSE(decode_client_info(bytes(55)).has_value());
    CHECK(decode_client_info(bytes(56)).has_value());
}

TEST_CASE("parse_frame is incremental and consumes nothing until complete") {
    bytes stream(64);
    stream.resize(encode_send_packet(stream, client2, hello));
    stream.push_back(0x06);  // the start of the next frame
    for (std::size_t n = 0; n < frame_header_bytes; ++n) {
        CAPTURE(n);
        CHECK_FALSE(parse_frame_header(std::span(stream.data(), n)).has_value());
        const auto p = parse_frame(std::span(stream.data(), n), packet_bytes_max + 32);
        CHECK(p.status == frame_parse_status::need_more);
        CHECK(p.frame_bytes == frame_header_bytes);
    }
    for (std::size_t n = frame_header_bytes; n < 42; ++n) {
        const auto p = parse_frame(std::span(stream.data(), n), packet_bytes_max + 32);
        CHECK(p.status == frame_parse_status::need_more);
        CHECK(p.frame_bytes == 42);
        CHECK(p.header == frame_header{frame_type::send_packet, 37});
    }
    const auto p = parse_frame(stream, packet_bytes_max + 32);
    REQUIRE(p.status == frame_parse_status::complete);
    CHECK(p.frame_bytes == 42);
    CHECK(p.payload.size() == 37);
    CHECK(p.payload.data() == stream.data() + 5);
    const auto small = parse_frame(stream, 36);
    CHECK(small.status == frame_parse_status::too_large);
    CHECK(small.header.payload_bytes == 37);
    const bytes empty_frame = from_hex("0600000000");
    const auto ka = parse_frame(empty_frame, 0);
    CHECK(ka.status == frame_parse_status::complete);
    CHECK(ka.payload.empty());
}

TEST_CASE("64 KiB packets round-trip; encoders write exactly the frame") {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, packet_bytes_max - 1, packet_bytes_max}) {
        CAPTURE(n);
        bytes packet(n);
        for (std::size_t i = 0; i < n; ++i) packet[i] = static_cast<std::uint8_t>(i * 7);
        bytes out(forward_packet_frame_bytes(n) + 3, 0xcc);
        const std::size_t w = encode_send_packet(out, client2, packet);
        CHECK(w == send_packet_frame_bytes(n));
        CHECK(out[w] == 0xcc);
        const auto p = parse_frame(std::span(out.data(), w), packet_bytes_max + 32);
        REQUIRE(p.status == frame_parse_status::complete);
        REQUIRE(check_client_frame(p.header, false).has_value());
        const auto sp = decode_send_packet(p.payload);
        CHECK(sp->dst == client2);
        CHECK(bytes(sp->packet.begin(), sp->packet.end()) == packet);

        const std::size_t wr = encode_recv_packet(out, client, packet);
        CHECK(wr == recv_packet_frame_bytes(n));
        bytes header_only(recv_packet_header_bytes);
        CHECK(encode_recv_packet_header(header_only, client, n) == recv_packet_header_bytes);
        CHECK(std::equal(header_only.begin(), header_only.end(), out.begin()));
        const auto rp = decode_recv_packet(std::span(out.data() + 5, wr - 5));
        CHECK(rp->src == client);
        CHECK(rp->packet.size() == n);

        const std::size_t wf = encode_forward_packet(out, client, client2, packet);
        CHECK(wf == forward_packet_frame_bytes(n));
        const auto fp = decode_forward_packet(std::span(out.data() + 5, wf - 5));
        CHECK(fp->src == client);
        CHECK(fp->dst == client2);
        CHECK(fp->packet.size() == n);
    }
}

TEST_CASE("helpers: flags, disco, frame type names") {
    CHECK(peer_present_flags(false, false, false) == 0x01);
    CHECK(peer_present_flags(true, false, false) == 0x02);
    CHECK(peer_present_flags(false, true, true) == 0x0c);
    CHECK(peer_present_flags(true, true, true) == 0x0e);
    bytes disco = from_hex("5453f09f92ac");
    disco.resize(61);
    CHECK_FALSE(looks_like_disco(disco));
    disco.resize(62);
    CHECK(looks_like_disco(disco));
    disco[0] = 0;
    CHECK_FALSE(looks_like_disco(disco));
    int known = 0;
    for (int t = 0; t < 256; ++t) {
        if (is_known_frame_type(static_cast<std::uint8_t>(t))) {
            ++known;
            CHECK(to_string(static_cast<frame_type>(t)) != "unknown");
        } else {
            CHECK(to_string(static_cast<frame_type>(t)) == "unknown");
        }
    }
    CHECK(known == 16);
}

TEST_CASE("parsing and encoding do not allocate") {
    bytes packet(1200, 0x42);
    bytes out(forward_packet_frame_bytes(packet.size()));
    const long before = derp::test::allocation_count();
    std::size_t total = 0;
    for (int i = 0; i < 100; ++i) {
        const std::size_t w = encode_send_packet(out, client2, packet);
        const auto p = parse_frame(std::span(out.data(), w), packet_bytes_max + 32);
        const auto ok = check_client_frame(p.header, false);
        const auto sp = decode_send_packet(p.payload);
        total += ok.has_value() && sp.has_value() ? sp->packet.size() : 0;
        total += encode_recv_packet(out, sp->dst, packet);
        total += encode_peer_present(out, client, ip16{}, 1, 1);
        total += encode_peer_gone(out, client, peer_gone_reason::disconnected);
        if (decode_ping(std::span(packet.data(), 8)).has_value()) ++total;
    }
    CHECK(derp::test::allocation_count() == before);
    CHECK(total > 0);
}

// Every frame of every recorded stream parses, passes (or fails) derper's rules as recorded,
// and re-encodes to the recorded bytes (PeerPresent/PeerGone: v1.36.2 sent the 32-byte forms).
TEST_CASE("fixture streams parse frame by frame and re-encode") {
    struct stream_file {
        const char* path;
        bool client_to_server;
        bool mesh;
    };
    const std::vector<stream_file> files = {
        {"01-handshake-two-clients/A/c2s.hex", true, false}, {"01-handshake-two-clients/A/s2c.hex", false, false},
        {"01-handshake-two-clients/B/c2s.hex", true, false}, {"01-handshake-two-clients/B/s2c.hex", false, false},
        {"02-ping-pong-keepalive/P/c2s.hex", true, false},   {"02-ping-pong-keepalive/P/s2c.hex", false, false},
        {"03-mesh-watcher/A/c2s.hex", true, false},          {"03-mesh-watcher/A/s2c.hex", false, false},
        {"03-mesh-watcher/B/c2s.hex", true, false},          {"03-mesh-watcher/B/s2c.hex", false, false},
        {"03-mesh-watcher/C/c2s.hex", true, false},          {"03-mesh-watcher/C/s2c.hex", false, false},
        {"03-mesh-watcher/W/c2s.hex", true, true},           {"03-mesh-watcher/W/s2c.hex", false, false},
        {"03b-watchconns-without-meshkey/A/c2s.hex", true, false},
        {"03b-watchconns-without-meshkey/A/s2c.hex", false, false},
        {"04-fast-start/F/c2s.hex", true, false},            {"04-fast-start/F/s2c.hex", false, false},
    };
    int frames_total = 0;
    int peer_present_seen = 0;
    int not_mesh_seen = 0;
    for (const auto& f : files) {
        CAPTURE(f.path);
        const bytes stream = test::read_hex_stream(f.path);
        std::size_t at = 0;
        if (f.client_to_server) {
            http_request req;
            const auto hp = parse_http_request(stream, req);
            REQUIRE(hp.status == http_parse_status::complete);
            at = req.head_bytes;
        } else if (test::as_text(stream).starts_with("HTTP/1.1 101")) {
            at = test::as_text(stream).find("\r\n\r\n") + 4;
        }
        bool first_client_frame = f.client_to_server;
        while (at < stream.size()) {
            const auto p = parse_frame(std::span(stream).subspan(at), client_frame_payload_bytes_max);
            REQUIRE(p.status == frame_parse_status::complete);
            ++frames_total;
            const std::span<const std::uint8_t> recorded(stream.data() + at, p.frame_bytes);
            bytes out(p.frame_bytes + 64);
            std::size_t w = 0;
            if (f.client_to_server && !first_client_frame) {
                const auto verdict = check_client_frame(p.header, f.mesh);
                if (!verdict) {
                    // Only 03b's WatchConns from a non-mesh client is recorded as a violation.
                    CHECK(verdict.error() == close_reason::not_mesh);
                    CHECK(p.header.type == frame_type::watch_conns);
                    ++not_mesh_seen;
                }
            }
            first_client_frame = false;
            switch (p.header.type) {
                case frame_type::server_key: w = encode_server_key(out, *decode_server_key(p.payload)); break;
                case frame_type::client_info: {
                    const auto ci = decode_client_info(p.payload);
                    REQUIRE(ci.has_value());
                    w = encode_client_info(out, ci->key, ci->sealed);
                    break;
                }
                case frame_type::server_info: w = encode_server_info(out, *decode_server_info(p.payload)); break;
                case frame_type::send_packet: {
                    const auto sp = decode_send_packet(p.payload);
                    w = encode_send_packet(out, sp->dst, sp->packet);
                    break;
                }
                case frame_type::recv_packet: {
                    const auto rp = decode_recv_packet(p.payload);
                    w = encode_recv_packet(out, rp->src, rp->packet);
                    break;
                }
                case frame_type::forward_packet: {
                    const auto fp = decode_forward_packet(p.payload);
                    w = encode_forward_packet(out, fp->src, fp->dst, fp->packet);
                    break;
                }
                case frame_type::keep_alive: w = encode_keep_alive(out); break;
                case frame_type::note_preferred: w = encode_note_preferred(out, *decode_note_preferred(p.payload)); break;
                case frame_type::watch_conns: w = encode_watch_conns(out); break;
                case frame_type::close_peer: w = encode_close_peer(out, *decode_close_peer(p.payload)); break;
                case frame_type::ping: w = encode_ping(out, *decode_ping(p.payload)); break;
                case frame_type::pong: w = encode_pong(out, *decode_pong(p.payload)); break;
                case frame_type::peer_present: {
                    ++peer_present_seen;
                    CHECK(p.header.payload_bytes == 32);  // v1.36.2 form
                    const auto pp = decode_peer_present(p.payload);
                    REQUIRE(pp.has_value());
                    CHECK(pp->flags == 0);
                    w = encode_peer_present(out, pp->key, pp->ip, pp->port, peer_present_regular);
                    CHECK(w == peer_present_frame_bytes);
                    // The modern form starts with the same key.
                    CHECK(std::equal(recorded.begin() + 5, recorded.end(), out.begin() + 5));
                    at += p.frame_bytes;
                    continue;
                }
                case frame_type::peer_gone: {
                    CHECK(p.header.payload_bytes == 32);  // v1.36.2 form
                    const auto pg = decode_peer_gone(p.payload);
                    REQUIRE(pg.has_value());
                    CHECK(pg->reason == peer_gone_reason::disconnected);
                    w = encode_peer_gone(out, pg->key, pg->reason);
                    CHECK(w == peer_gone_frame_bytes);
                    CHECK(std::equal(recorded.begin() + 5, recorded.end(), out.begin() + 5));
                    CHECK(out[w - 1] == 0x00);
                    at += p.frame_bytes;
                    continue;
                }
                default: FAIL("unexpected frame type in fixture: " << static_cast<int>(p.header.type));
            }
            CHECK(to_hex(std::span(out.data(), w)) == to_hex(recorded));
            at += p.frame_bytes;
        }
        CHECK(at == stream.size());
    }
    CHECK(frames_total > 40);
    CHECK(peer_present_seen == 4);
    CHECK(not_mesh_seen == 1);
}

}  // namespace
}  // namespace derp
