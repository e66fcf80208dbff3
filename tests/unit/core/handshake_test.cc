// Unit tests of the server handshake state machine: spec 11.2 bytes with fixed nonces, every
// close reason, incremental and pipelined input, and the recorded fixture connections driven
// through the HTTP parser, the upgrade decision and the handshake.
#include "core/handshake.hh"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/http_request.hh"
#include "crypto/box.hh"
#include "tests/unit/fixture_util.hh"

namespace derp {
namespace {

using test::bytes;
using test::from_hex;
using test::to_hex;

const private_key& server_private = test::spec_keys::server_private;
const node_key& server_public = test::spec_keys::server_public;
const private_key& client_private = test::spec_keys::client_private;
const node_key& client_public = test::spec_keys::client_public;

const std::string spec_client_info =
    "0200000068"
    "b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13"
    "000102030405060708090a0b0c0d0e0f1011121314151617"
    "fa309c238271f0a6b9bf349fd1bfd12e"
    "5fa424c034ff83c5f6de884030141db7a39baa772714fbcc82399f3405f7f7fe";
const std::string spec_server_info =
    "0300000035"
    "202122232425262728292a2b2c2d2e2f3031323334353637"
    "57cdd387883f0acea0b047ec426b6675"
    "ac54be154b631327d2214d5b25";

box_nonce counting_nonce(std::uint8_t first) {
    box_nonce n{};
    for (std::size_t i = 0; i < n.size(); ++i) n[i] = static_cast<std::uint8_t>(first + i);
    return n;
}

// A ClientInfo frame sealed by `from` to the spec server key.
bytes client_info_frame(std::string_view json, const private_key& from = client_private) {
    bytes sealed(json.size() + box_overhead_bytes);
    const auto* p = reinterpret_cast<const std::uint8_t*>(json.data());
    REQUIRE(box_seal(sealed, std::span(p, json.size()), from, server_public, random_nonce()).has_value());
    bytes frame(client_info_frame_bytes(sealed.size()));
    encode_client_info(frame, public_key_of(from), sealed);
    return frame;
}

struct spec_server {
    sodium_handshake_box box{server_private};
    server_handshake hs;
    explicit spec_server(std::optional<key_mesh> mesh = std::nullopt) : hs(server_public, mesh, box) {
        box.fix_nonce_for_tests(counting_nonce(0x20));
        bytes first(handshake_start_bytes_max);
        hs.start(first, false);
    }
};

TEST_CASE("start writes the 101 and ServerKey, or ServerKey alone for fast start") {
    REQUIRE(crypto_init().has_value());
    sodium_handshake_box box(server_private);
    const std::string server_key_hex =
        "010000002844455250f09f9491d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526";
    {
        server_handshake hs(server_public, std::nullopt, box);
        bytes out(handshake_start_bytes_max);
        out.resize(hs.start(out, false));
        REQUIRE(out.size() == derp_101_response_bytes + server_key_frame_bytes);
        CHECK(test::as_text(out).starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        CHECK(to_hex(std::span(out).subspan(derp_101_response_bytes)) == server_key_hex);
        CHECK_FALSE(hs.finished());
    }
    {
        server_handshake hs(server_public, std::nullopt, box);
        bytes out(handshake_start_bytes_max);
        out.resize(hs.start(out, true));
        CHECK(to_hex(out) == server_key_hex);
    }
}

TEST_CASE("spec 11.2 ClientInfo is accepted and answered with the spec ServerInfo") {
    REQUIRE(crypto_init().has_value());
    spec_server s;
    const bytes in = from_hex(spec_client_info);
    const auto step = s.hs.feed(in);
    const auto* accepted = std::get_if<handshake_accepted>(&step);
    REQUIRE(accepted != nullptr);
    CHECK(accepted->client_key == client_public);
    CHECK(accepted->info.version == 2);
    CHECK(accepted->info.can_ack_pings);
    CHECK_FALSE(accepted->can_mesh);
    CHECK(accepted->bytes_consumed == in.size());
    CHECK(to_hex(accepted->server_info_frame) == spec_server_info);
    CHECK(s.hs.finished());
}

TEST_CASE("feed is incremental and leaves pipelined frames alone") {
    REQUIRE(crypto_init().has_value());
    bytes in = from_hex(spec_client_info);
    const std::size_t frame_bytes = in.size();
    const bytes pipelined = from_hex("0700000001011000000000");  // NotePreferred, WatchConns
    in.insert(in.end(), pipelined.begin(), pipelined.end());
    spec_server s;
    for (std::size_t n = 0; n < frame_bytes; ++n) {
        CAPTURE(n);
        const auto step = s.hs.feed(std::span(in.data(), n));
        const auto* more = std::get_if<handshake_need_more>(&step);
        REQUIRE(more != nullptr);
        CHECK(more->bytes_total == (n < frame_header_bytes ? frame_header_bytes : frame_bytes));
    }
    const auto step = s.hs.feed(in);
    REQUIRE(std::holds_alternative<handshake_accepted>(step));
    CHECK(std::get<handshake_accepted>(step).bytes_consumed == frame_bytes);
}

TEST_CASE("every handshake close reason") {
    REQUIRE(crypto_init().has_value());
    auto close_of = [](const bytes& in) -> std::optional<close_reason> {
        spec_server s;
        const auto step = s.hs.feed(in);
        if (const auto* c = std::get_if<handshake_close>(&step)) {
            CHECK(s.hs.finished());
            return c->reason;
        }
        return std::nullopt;
    };
    bytes zero_key = from_hex(spec_client_info);
    std::fill(zero_key.begin() + 5, zero_key.begin() + 37, std::uint8_t{0});
    bytes tampered = from_hex(spec_client_info);
    tampered.back() ^= 0x80;
    bytes other_key = from_hex(spec_client_info);
    other_key[6] ^= 0x01;
    bytes short_box(5 + 32 + 39, 0x11);  // payload 71: a 39-byte sealed part cannot open
    encode_frame_header(short_box, frame_type::client_info, 71);
    bytes min_payload(5 + 56, 0x11);
    encode_frame_header(min_payload, frame_type::client_info, 56);

    struct row {
        const char* name;
        bytes in;
        close_reason expected;
    };
    const std::vector<row> rows = {
        {"SendPacket first", from_hex("0400000025"), close_reason::bad_frame_type},
        {"ServerKey echoed", from_hex("0100000028"), close_reason::bad_frame_type},
        {"unknown type", from_hex("ff00000000"), close_reason::bad_frame_type},
        {"55-byte ClientInfo", from_hex("0200000037"), close_reason::client_info_too_short},
        {"empty ClientInfo", from_hex("0200000000"), close_reason::client_info_too_short},
        {"256 KiB + 1", from_hex("0200040001"), close_reason::client_info_too_long},
        {"4 GiB", from_hex("02ffffffff"), close_reason::client_info_too_long},
        {"all-zero key", zero_key, close_reason::client_key_zero},
        {"tampered box", tampered, close_reason::client_info_box_open},
        {"other client key", other_key, close_reason::client_info_box_open},
        {"39-byte box", short_box, close_reason::client_info_box_open},
        {"56-byte payload", min_payload, close_reason::client_info_box_open},
        {"not JSON", client_info_frame("hello"), close_reason::client_info_bad_json},
        {"empty plaintext", client_info_frame(""), close_reason::client_info_bad_json},
        {"version string", client_info_frame(R"({"version":"2"})"), close_reason::client_info_bad_json},
        {"empty meshKey", client_info_frame(R"({"meshKey":"","version":2})"), close_reason::client_info_bad_json},
        {"trailing data", client_info_frame(R"({"version":2}x)"), close_reason::client_info_bad_json},
    };
    for (const auto& r : rows) {
        CAPTURE(r.name);
        CHECK(close_of(r.in) == r.expected);
    }
    // A ClientInfo of exactly 256 KiB is legal: the handshake waits for all of it.
    spec_server s;
    const auto step = s.hs.feed(from_hex("0200040000"));
    REQUIRE(std::holds_alternative<handshake_need_more>(step));
    CHECK(std::get<handshake_need_more>(step).bytes_total == 5 + (256u << 10));
}

TEST_CASE("mesh keys grant mesh rights only when equal and configured") {
    REQUIRE(crypto_init().has_value());
    const std::string psk = "fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9";
    const auto configured = key_mesh::from_hex(psk);
    const bytes with_key = client_info_frame(R"({"meshKey":")" + psk + R"(","version":2,"CanAckPings":false})");
    const bytes zero_key = client_info_frame(R"({"meshKey":")" + std::string(64, '0') + R"("})");
    const bytes without = client_info_frame(R"({"version":2,"CanAckPings":false,"IsProber":true})");
    struct row {
        const char* name;
        std::optional<key_mesh> server_key;
        const bytes* in;
        bool can_mesh;
    };
    const std::vector<row> rows = {
        {"equal", configured, &with_key, true},
        {"server has none", std::nullopt, &with_key, false},
        {"different", key_mesh::from_hex("fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd8"), &with_key, false},
        {"client has none", configured, &without, false},
        {"both zero", key_mesh{}, &zero_key, false},
    };
    for (const auto& r : rows) {
        CAPTURE(r.name);
        spec_server s(r.server_key);
        const auto step = s.hs.feed(*r.in);
        REQUIRE(std::holds_alternative<handshake_accepted>(step));
        CHECK(std::get<handshake_accepted>(step).can_mesh == r.can_mesh);
    }
    spec_server s;
    const auto prober = s.hs.feed(without);
    CHECK(std::get<handshake_accepted>(prober).info.is_prober);
}

// The recorded connections: request head -> upgrade decision -> start() bytes equal to the
// recorded server bytes -> ClientInfo accepted -> the rest of the c2s stream left over.
TEST_CASE("fixture connections through HTTP parser, upgrade and handshake") {
    REQUIRE(crypto_init().has_value());
    const private_key fixture_server = *private_key::from_hex("88dcafdacb0e38f7300bb3c101f20e2b2d6a9efed83ce74918914efd560ee05e");
    const node_key fixture_public = public_key_of(fixture_server);
    const auto psk = key_mesh::from_hex("fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9");
    struct row {
        const char* conn;
        const char* client_private_hex;
        bool fast_start;
        bool can_mesh;
        bool can_ack_pings;
        std::string_view rest_hex_prefix;  // the first pipelined frame header after ClientInfo
    };
    const std::vector<row> rows = {
        {"01-handshake-two-clients/A", "286f39cb2544e65b085402155141c43f110bbcff4c5ea601ea87c297e112fd54", false, false, false, "0700000001"},
        {"01-handshake-two-clients/B", "b80dcfdf01498f0b0b1c088a3ac20c172eccbe48424e81c92b20ee494e79c25c", false, false, false, "040000002c"},
        {"02-ping-pong-keepalive/P", "408ac4f9f4dd0c802196e5cc3a395adbdd509b3dfc1c8615423abbc380c0067b", false, false, true, "1200000008"},
        {"03-mesh-watcher/W", "d0570e1d65fc4b861409dfcd64cec9183ea5f3cba56615f94e69868f507b434e", false, true, false, "1000000000"},
        {"03b-watchconns-without-meshkey/A", "286f39cb2544e65b085402155141c43f110bbcff4c5ea601ea87c297e112fd54", false, false, false, "1000000000"},
        {"04-fast-start/F", "c8e53912d7df31008b5fc27406f10dd812e393943694977734203e153cc23e66", true, false, false, "1200000008"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.conn);
        const private_key client = *private_key::from_hex(r.client_private_hex);
        const bytes c2s = test::read_hex_stream(std::string(r.conn) + "/c2s.hex");
        const bytes s2c = test::read_hex_stream(std::string(r.conn) + "/s2c.hex");

        http_request req;
        REQUIRE(parse_http_request(c2s, req).status == http_parse_status::complete);
        CHECK(req.path == "/derp");
        const derp_upgrade up = classify_derp_upgrade(req);
        CHECK(up.kind == upgrade_kind::derp);
        CHECK(up.fast_start == r.fast_start);
        CHECK_FALSE(up.not_ideal);

        sodium_handshake_box box(fixture_server);
        server_handshake hs(fixture_public, psk, box);
        bytes first(handshake_start_bytes_max);
        first.resize(hs.start(first, up.fast_start));
        REQUIRE(first.size() <= s2c.size());
        CHECK(to_hex(first) == to_hex(std::span(s2c.data(), first.size())));

        const std::span<const std::uint8_t> after_head = std::span(c2s).subspan(req.head_bytes);
        const auto step = hs.feed(after_head);
        const auto* accepted = std::get_if<handshake_accepted>(&step);
        REQUIRE(accepted != nullptr);
        CHECK(accepted->client_key == public_key_of(client));
        CHECK(accepted->info.version == 2);
        CHECK(accepted->info.can_ack_pings == r.can_ack_pings);
        CHECK(accepted->can_mesh == r.can_mesh);
        const auto rest = after_head.subspan(accepted->bytes_consumed);
        REQUIRE(rest.size() >= frame_header_bytes);
        CHECK(to_hex(rest.first(frame_header_bytes)) == r.rest_hex_prefix);

        // The ServerInfo we would send opens for the client like the recorded one does.
        const auto info = parse_frame(accepted->server_info_frame, client_frame_payload_bytes_max);
        REQUIRE(info.status == frame_parse_status::complete);
        bytes plain(info.payload.size() - box_overhead_bytes);
        REQUIRE(box_open(plain, info.payload, client, fixture_public).has_value());
        CHECK(test::as_text(plain) == server_info_json);
        // Same type and length as the recorded ServerInfo that follows the first flush.
        CHECK(to_hex(std::span(s2c.data() + first.size(), 5)) ==
              to_hex(std::span(accepted->server_info_frame.data(), 5)));
    }
}

}  // namespace
}  // namespace derp
