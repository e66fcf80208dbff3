// Unit tests of the libsodium layer: spec 11.1 keys, the 11.2 ClientInfo/ServerInfo boxes with
// fixed nonces, opening the recorded fixture boxes, failure cases, and the key-file format.
#include "crypto/box.hh"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/frame.hh"
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

box_nonce counting_nonce(std::uint8_t first) {
    box_nonce n{};
    for (std::size_t i = 0; i < n.size(); ++i) n[i] = static_cast<std::uint8_t>(first + i);
    return n;
}

std::span<const std::uint8_t> text_bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TEST_CASE("crypto_init is idempotent") {
    CHECK(crypto_init().has_value());
    CHECK(crypto_init().has_value());
}

TEST_CASE("spec 11.1 keys") {
    REQUIRE(crypto_init().has_value());
    CHECK(public_key_of(server_private) == server_public);
    CHECK(public_key_of(client_private) == client_public);
    CHECK(public_key_of(*private_key::from_hex("30fc7ded8f3d3a63ce61f1089fd23c8a43263709a51416456b9da5bec09db644")) ==
          *node_key::from_hex("249035a08e5aa885caa1d3e45e51c717e63e88c504f22bac9629c5fd4a33865a"));
    // Fixture keys (fixtures/README.md).
    CHECK(public_key_of(*private_key::from_hex("88dcafdacb0e38f7300bb3c101f20e2b2d6a9efed83ce74918914efd560ee05e")) ==
          *node_key::from_hex("286071d6e94ae5b18f2f0c047acb3d01d0c64848cd3164e60c797c8a6cbcd548"));
}

TEST_CASE("clamping and generation") {
    REQUIRE(crypto_init().has_value());
    std::array<std::uint8_t, key_bytes> ones{};
    ones.fill(0xff);
    const private_key clamped = clamp_private_key(private_key(key_span(ones)));
    CHECK(clamped.bytes()[0] == 0xf8);
    CHECK(clamped.bytes()[31] == 0x7f);
    CHECK(clamped.bytes()[15] == 0xff);
    const private_key zero_clamped = clamp_private_key(private_key{});
    CHECK(zero_clamped.bytes()[31] == 0x40);
    CHECK(clamp_private_key(server_private) == server_private);  // spec keys are clamped already
    const private_key a = generate_private_key();
    const private_key b = generate_private_key();
    CHECK_FALSE(a == b);
    CHECK((a.bytes()[0] & 7) == 0);
    CHECK((a.bytes()[31] & 0xc0) == 0x40);
    CHECK_FALSE(public_key_of(a).is_zero());
}

TEST_CASE("spec 11.2 ClientInfo and ServerInfo boxes, byte for byte") {
    REQUIRE(crypto_init().has_value());
    constexpr std::string_view client_json = R"({"version":2,"CanAckPings":true})";
    bytes sealed(client_json.size() + box_overhead_bytes);
    REQUIRE(box_seal(sealed, text_bytes(client_json), client_private, server_public, counting_nonce(0x00)) ==
            sealed.size());
    bytes frame(client_info_frame_bytes(sealed.size()));
    REQUIRE(encode_client_info(frame, client_public, sealed) == frame.size());
    CHECK(to_hex(frame) ==
          "0200000068"
          "b33471873f4a323644123df2f01bbab228629aad41038a3b7cf9623afaf21a13"
          "000102030405060708090a0b0c0d0e0f1011121314151617"
          "fa309c238271f0a6b9bf349fd1bfd12e"
          "5fa424c034ff83c5f6de884030141db7a39baa772714fbcc82399f3405f7f7fe");

    bytes plain(client_json.size());
    REQUIRE(box_open(plain, sealed, server_private, client_public) == client_json.size());
    CHECK(test::as_text(plain) == client_json);

    bytes server_sealed(13 + box_overhead_bytes);
    REQUIRE(box_seal(server_sealed, text_bytes(R"({"version":2})"), server_private, client_public,
                     counting_nonce(0x20))
                .has_value());
    bytes server_frame(server_info_frame_bytes(server_sealed.size()));
    REQUIRE(encode_server_info(server_frame, server_sealed) == server_frame.size());
    CHECK(to_hex(server_frame) ==
          "0300000035"
          "202122232425262728292a2b2c2d2e2f3031323334353637"
          "57cdd387883f0acea0b047ec426b6675"
          "ac54be154b631327d2214d5b25");
}

TEST_CASE("box_open failures") {
    REQUIRE(crypto_init().has_value());
    const bytes sealed = from_hex("000102030405060708090a0b0c0d0e0f1011121314151617"
                                  "fa309c238271f0a6b9bf349fd1bfd12e"
                                  "5fa424c034ff83c5f6de884030141db7a39baa772714fbcc82399f3405f7f7fe");
    bytes plain(sealed.size() - box_overhead_bytes);
    REQUIRE(box_open(plain, sealed, server_private, client_public).has_value());
    for (std::size_t i = 0; i < sealed.size(); ++i) {  // any flipped bit: nonce, tag or ciphertext
        CAPTURE(i);
        bytes bad = sealed;
        bad[i] ^= 0x01;
        CHECK_FALSE(box_open(plain, bad, server_private, client_public).has_value());
    }
    CHECK_FALSE(box_open(plain, sealed, client_private, client_public).has_value());  // wrong key
    for (std::size_t n = 0; n < box_overhead_bytes; ++n) {
        CHECK_FALSE(box_open(std::span<std::uint8_t>(), std::span(sealed.data(), n), server_private,
                             client_public).has_value());
    }
    // Exactly 40 bytes is an empty plaintext.
    bytes empty_sealed(box_overhead_bytes);
    REQUIRE(box_seal(empty_sealed, {}, client_private, server_public, counting_nonce(9)).has_value());
    CHECK(box_open(std::span<std::uint8_t>(), empty_sealed, server_private, client_public) == 0u);
    // Low-order peer keys (all zero, u = 1) give an all-zero shared secret: libsodium refuses.
    node_key one;
    std::array<std::uint8_t, key_bytes> one_bytes{};
    one_bytes[0] = 1;
    one = node_key(key_span(one_bytes));
    for (const node_key& weak : {node_key{}, one}) {
        bytes s(5 + box_overhead_bytes);
        CHECK_FALSE(box_seal(s, text_bytes("hello"), server_private, weak, counting_nonce(0)).has_value());
        CHECK_FALSE(box_open(plain, sealed, server_private, weak).has_value());
    }
}

TEST_CASE("recorded ClientInfo and ServerInfo boxes open") {
    REQUIRE(crypto_init().has_value());
    const private_key fixture_server = *private_key::from_hex("88dcafdacb0e38f7300bb3c101f20e2b2d6a9efed83ce74918914efd560ee05e");
    const node_key fixture_server_public = public_key_of(fixture_server);
    struct row {
        const char* conn;
        const char* client_private_hex;
        std::string_view json;
    };
    const std::vector<row> rows = {
        {"01-handshake-two-clients/A", "286f39cb2544e65b085402155141c43f110bbcff4c5ea601ea87c297e112fd54",
         R"({"version":2,"CanAckPings":false})"},
        {"02-ping-pong-keepalive/P", "408ac4f9f4dd0c802196e5cc3a395adbdd509b3dfc1c8615423abbc380c0067b",
         R"({"version":2,"CanAckPings":true})"},
        {"03-mesh-watcher/W", "d0570e1d65fc4b861409dfcd64cec9183ea5f3cba56615f94e69868f507b434e",
         R"({"version":2,"meshKey":"fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9","CanAckPings":false})"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.conn);
        const private_key mine = *private_key::from_hex(r.client_private_hex);
        const bytes c2s = test::read_hex_stream(std::string(r.conn) + "/c2s.hex");
        const std::size_t head = test::as_text(c2s).find("\r\n\r\n") + 4;
        const auto frame = parse_frame(std::span(c2s).subspan(head), client_info_payload_bytes_max);
        REQUIRE(frame.status == frame_parse_status::complete);
        const auto ci = decode_client_info(frame.payload);
        REQUIRE(ci.has_value());
        CHECK(ci->key == public_key_of(mine));
        bytes plain(ci->sealed.size() - box_overhead_bytes);
        REQUIRE(box_open(plain, ci->sealed, fixture_server, ci->key).has_value());
        CHECK(test::as_text(plain) == r.json);

        const bytes s2c = test::read_hex_stream(std::string(r.conn) + "/s2c.hex");
        const std::size_t after_key = test::as_text(s2c).find("\r\n\r\n") + 4 + server_key_frame_bytes;
        const auto info = parse_frame(std::span(s2c).subspan(after_key), client_frame_payload_bytes_max);
        REQUIRE(info.status == frame_parse_status::complete);
        REQUIRE(info.header.type == frame_type::server_info);
        bytes server_plain(info.payload.size() - box_overhead_bytes);
        REQUIRE(box_open(server_plain, info.payload, mine, fixture_server_public).has_value());
        CHECK(test::as_text(server_plain) == R"({"version":2})");
    }
}

TEST_CASE("sodium_handshake_box seals with fresh or fixed nonces") {
    REQUIRE(crypto_init().has_value());
    sodium_handshake_box box(server_private);
    bytes a(13 + box_overhead_bytes), b(13 + box_overhead_bytes);
    REQUIRE(box.seal_to(client_public, text_bytes(R"({"version":2})"), a));
    REQUIRE(box.seal_to(client_public, text_bytes(R"({"version":2})"), b));
    CHECK(a != b);  // random nonces
    bytes plain(13);
    REQUIRE(box_open(plain, a, client_private, server_public).has_value());
    CHECK(test::as_text(plain) == R"({"version":2})");
    box.fix_nonce_for_tests(counting_nonce(0x20));
    REQUIRE(box.seal_to(client_public, text_bytes(R"({"version":2})"), a));
    CHECK(to_hex(a) == "202122232425262728292a2b2c2d2e2f3031323334353637"
                       "57cdd387883f0acea0b047ec426b6675ac54be154b631327d2214d5b25");
}

TEST_CASE("derper key file") {
    const std::string spec_file =
        "{\n\t\"PrivateKey\": \"privkey:d88a51dc98d0f19c002918706f8b825fbe90cf3e1e078195191ed9367d7d5664\"\n}";
    CHECK(format_key_file(server_private) == spec_file);
    const auto parsed = parse_key_file(spec_file);
    REQUIRE(parsed.has_value());
    CHECK(*parsed == server_private);
    CHECK(parse_key_file(R"({"privatekey":"privkey:D88A51DC98D0F19C002918706F8B825FBE90CF3E1E078195191ED9367D7D5664","x":1})")
              .has_value());
    struct row {
        std::string text;
        key_file_error error;
    };
    const std::vector<row> rows = {
        {"", key_file_error::bad_json},
        {"[]", key_file_error::bad_json},
        {"{", key_file_error::bad_json},
        {spec_file + "x", key_file_error::bad_json},
        {"{}", key_file_error::missing_key},
        {"null", key_file_error::missing_key},
        {R"({"PrivateKey":null})", key_file_error::missing_key},
        {R"({"PrivateKey":"privkey:)" + std::string(64, '0') + "\"}", key_file_error::missing_key},
        {R"({"PrivateKey":"d88a51dc98d0f19c002918706f8b825fbe90cf3e1e078195191ed9367d7d5664"})", key_file_error::bad_private_key},
        {R"({"PrivateKey":"nodekey:d88a51dc98d0f19c002918706f8b825fbe90cf3e1e078195191ed9367d7d5664"})", key_file_error::bad_private_key},
        {R"({"PrivateKey":"privkey:d88a51dc98d0f19c002918706f8b825fbe90cf3e1e078195191ed9367d7d566"})", key_file_error::bad_private_key},
        {R"({"PrivateKey":"privkey:z88a51dc98d0f19c002918706f8b825fbe90cf3e1e078195191ed9367d7d5664"})", key_file_error::bad_private_key},
        {R"({"PrivateKey":5})", key_file_error::bad_private_key},
    };
    for (const auto& r : rows) {
        CAPTURE(r.text);
        const auto result = parse_key_file(r.text);
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error() == r.error);
    }
}

TEST_CASE("mesh key text forms") {
    const auto from_file = key_mesh::from_psk_file(" \tfefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9\n");
    REQUIRE(from_file.has_value());
    CHECK(std::string(from_file->hex().data(), 64) == "fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9");
    CHECK_FALSE(key_mesh::from_psk_file("fefe").has_value());
    CHECK_FALSE(key_mesh::from_hex(" fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9").has_value());
    auto other = *from_file;
    CHECK(other.equals(*from_file));
    const auto different = key_mesh::from_hex("fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd8");
    CHECK_FALSE(different->equals(*from_file));
    CHECK(key_mesh{}.is_zero());
    CHECK(node_key{}.is_zero());
    CHECK(server_public.to_string() == "d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526");
    CHECK(std::hash<node_key>{}(server_public) != std::hash<node_key>{}(client_public));
}

}  // namespace
}  // namespace derp
