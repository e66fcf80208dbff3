// Unit tests of the STUN codec: the recorded 05-stun fixtures byte for byte, the spec 11.3 and
// RFC 5769 vectors, a table of malformed requests and responses with their verdicts in both
// modes, encode/parse round trips, and zero allocations on the server path.
#include "stun/codec.hh"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support/counting_new.hh"
#include "tests/unit/fixture_util.hh"


namespace derp::stun {
namespace {

using test::bytes;
using test::from_hex;
using test::to_hex;

transaction_id txid_from_hex(std::string_view hex) {
    const bytes b = from_hex(hex);  // also runs at static initialisation: no doctest macros
    if (b.size() != transaction_id_bytes) throw std::invalid_argument("transaction id is 12 bytes");
    transaction_id t{};
    std::copy(b.begin(), b.end(), t.begin());
    return t;
}

endpoint ipv6(std::string_view hex, std::uint16_t port) {
    const bytes b = from_hex(hex);
    if (b.size() != 16) throw std::invalid_argument("IPv6 address is 16 bytes");
    endpoint e;
    std::copy(b.begin(), b.end(), e.ip.begin());
    e.port = port;
    return e;
}

// "a.b.c.d:port" for IPv4(-mapped), "[32 hex digits]:port" otherwise: readable CHECK failures.
std::string text(const endpoint& e) {
    char buf[64];
    if (e.is_ipv4()) {
        std::snprintf(buf, sizeof buf, "%u.%u.%u.%u:%u", e.ip[12], e.ip[13], e.ip[14], e.ip[15], e.port);
        return buf;
    }
    return "[" + to_hex(e.ip) + "]:" + std::to_string(e.port);
}

std::string response_hex(const transaction_id& txid, const endpoint& client, ipv4_form form) {
    bytes out(binding_response_bytes_max + 8, 0xee);
    const std::size_t n = encode_binding_response(out, txid, client, form);
    CHECK(n == binding_response_bytes(client, form));
    CHECK(out[n] == 0xee);  // nothing written past the response
    out.resize(n);
    return to_hex(out);
}

bytes request(const transaction_id& txid, request_style style) {
    bytes out(binding_request_bytes_max + 8, 0xee);
    const std::size_t n = encode_binding_request(out, txid, style);
    CHECK(n == binding_request_bytes(style));
    CHECK(out[n] == 0xee);
    out.resize(n);
    return out;
}

// "ok/<kind>" or the reject reason: one string per verdict, for table comparisons.
std::string verdict(const bytes& datagram, bool accept_standard_requests) {
    const auto r = parse_binding_request(datagram, accept_standard_requests);
    if (!r) return std::string(to_string(r.error()));
    return "ok/" + std::string(to_string(r->kind));
}

std::string response_verdict(const bytes& datagram, const transaction_id& txid) {
    const auto r = parse_binding_response(datagram, txid);
    if (!r) return std::string(to_string(r.error()));
    return text(*r);
}

bytes be32(std::uint32_t v) {
    return {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
            static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
}

// b with its header length set to cover everything after the header.
bytes length_fixed(bytes b) {
    const std::size_t body = b.size() - header_bytes;
    b[2] = static_cast<std::uint8_t>(body >> 8);
    b[3] = static_cast<std::uint8_t>(body);
    return b;
}

bytes cat(bytes a, const bytes& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// A message of the given type whose body is attrs (already padded); when with_fingerprint, a
// correct FINGERPRINT is appended. The header length always matches.
bytes message(std::uint16_t type, const transaction_id& txid, const bytes& attrs, bool with_fingerprint) {
    bytes m(header_bytes);
    const std::size_t body = attrs.size() + (with_fingerprint ? fingerprint_attribute_bytes : 0);
    m[0] = static_cast<std::uint8_t>(type >> 8);
    m[1] = static_cast<std::uint8_t>(type);
    m[2] = static_cast<std::uint8_t>(body >> 8);
    m[3] = static_cast<std::uint8_t>(body);
    m[4] = 0x21, m[5] = 0x12, m[6] = 0xa4, m[7] = 0x42;
    std::copy(txid.begin(), txid.end(), m.begin() + 8);
    m.insert(m.end(), attrs.begin(), attrs.end());
    if (with_fingerprint) {
        const std::uint32_t fp = fingerprint_of(m);
        const bytes tail = cat(from_hex("80280004"), be32(fp));
        m.insert(m.end(), tail.begin(), tail.end());
    }
    return m;
}

// A message whose FINGERPRINT (correct for its position) is followed by more attributes.
bytes fingerprint_then(std::uint16_t type, const transaction_id& txid, const bytes& before, const bytes& after) {
    const std::size_t body = before.size() + fingerprint_attribute_bytes + after.size();
    bytes m = message(type, txid, before, false);
    m[2] = static_cast<std::uint8_t>(body >> 8);
    m[3] = static_cast<std::uint8_t>(body);
    const std::uint32_t fp = fingerprint_of(m);
    return cat(cat(cat(m, from_hex("80280004")), be32(fp)), after);
}

const transaction_id spec_txid = txid_from_hex("0a0b0c0d0e0f101112131415");
const bytes software_tailnode = from_hex("80220008 7461696c6e6f6465");

// RFC 5769 section 2: transaction id, and the three sample messages.
const transaction_id rfc5769_txid = txid_from_hex("b7e7a701bc34d686fa87dfae");
const bytes rfc5769_request = from_hex(
    "00010058 2112a442 b7e7a701bc34d686fa87dfae"
    "80220010 5354554e20746573742063 6c69656e74"  // SOFTWARE "STUN test client"
    "00240004 6e0001ff"                            // PRIORITY
    "80290008 932ff9b151263b36"                    // ICE-CONTROLLED
    "00060009 6576746a3a683676 59202020"           // USERNAME "evtj:h6vY" + padding
    "00080014 9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  // MESSAGE-INTEGRITY
    "80280004 e57a3bcf");                          // FINGERPRINT
const bytes rfc5769_ipv4_response = from_hex(
    "0101003c 2112a442 b7e7a701bc34d686fa87dfae"
    "8022000b 7465737420766563746f7220"  // SOFTWARE "test vector" + padding
    "00200008 0001a147e112a643"          // XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "00080014 2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004 c07d4c96");
const bytes rfc5769_ipv6_response = from_hex(
    "01010048 2112a442 b7e7a701bc34d686fa87dfae"
    "8022000b 7465737420766563746f7220"
    "00200014 0002a147 0113a9faa5d3f179bc25f4b5bed2b9d9"  // [2001:db8:1234:5678:11:2233:4455:6677]:32853
    "00080014 a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004 c8fb0b4c");

TEST_CASE("crc32_ieee matches Go's crc32.ChecksumIEEE") {
    CHECK(crc32_ieee({}) == 0);
    const bytes check = test::to_bytes("123456789");
    CHECK(crc32_ieee(check) == 0xcbf43926);  // the CRC-32 check value
    const bytes fox = test::to_bytes("The quick brown fox jumps over the lazy dog");
    CHECK(crc32_ieee(fox) == 0x414fa339);
}

TEST_CASE("05-stun fixtures byte for byte") {
    struct fixture {
        const char* family;
        const char* txid_hex;
        endpoint client;
    };
    const fixture fixtures[] = {
        {"ipv4", "0102030405060708090a0b0c", endpoint_from_ipv4({127, 0, 0, 1}, 47804)},
        {"ipv6", "a0a1a2a3a4a5a6a7a8a9aaab", ipv6("00000000000000000000000000000001", 47806)},
    };
    for (const fixture& f : fixtures) {
        const std::string family = f.family;
        CAPTURE(family);
        const transaction_id txid = txid_from_hex(f.txid_hex);
        const bytes req = test::read_binary(std::string("05-stun/") + f.family + "-request.bin");
        const bytes res = test::read_binary(std::string("05-stun/") + f.family + "-response.bin");

        // Our client builds exactly what stun.Request built.
        CHECK(to_hex(request(txid, request_style::tailscale)) == to_hex(req));

        for (bool accept_standard : {false, true}) {
            const auto parsed = parse_binding_request(req, accept_standard);
            REQUIRE(parsed);
            CHECK(parsed->txid == txid);
            CHECK(parsed->kind == request_kind::tailscale);
        }

        // derper's listener here was IPv4-only or IPv6 (loopback), so IPv4 is family 1.
        CHECK(response_hex(txid, f.client, ipv4_form::ipv4) == to_hex(res));
        CHECK(response_verdict(res, txid) == text(f.client));
        CHECK(family_label(f.client) == f.family);
    }
}

TEST_CASE("spec 11.3 vectors") {
    const bytes req = request(spec_txid, request_style::tailscale);
    CHECK(to_hex(req) ==
          "000100142112a4420a0b0c0d0e0f101112131415"
          "802200087461696c6e6f6465"
          "802800041c446d11");
    CHECK(fingerprint_of(std::span(req).first(32)) == 0x1c446d11);
    const auto parsed = parse_binding_request(req, false);
    REQUIRE(parsed);
    CHECK(parsed->txid == spec_txid);
    CHECK(parsed->kind == request_kind::tailscale);

    const endpoint v4 = endpoint_from_ipv4({192, 0, 2, 1}, 41641);
    const endpoint v6 = ipv6("20010db8000000000000000000000001", 41641);
    const std::string v4_family1 = "0101000c2112a4420a0b0c0d0e0f101112131415 00200008 0001 83bb e112a643";
    const std::string v6_family2 =
        "010100182112a4420a0b0c0d0e0f101112131415 00200014 0002 83bb 0113a9fa0a0b0c0d0e0f101112131414";
    const std::string v4_mapped =
        "010100182112a4420a0b0c0d0e0f101112131415 00200014 0002 83bb 2112a4420a0b0c0d0e0fefeed2131614";

    CHECK(response_hex(spec_txid, v4, ipv4_form::ipv4) == to_hex(from_hex(v4_family1)));
    CHECK(response_hex(spec_txid, v6, ipv4_form::ipv4) == to_hex(from_hex(v6_family2)));
    CHECK(response_hex(spec_txid, v6, ipv4_form::ipv4_mapped) == to_hex(from_hex(v6_family2)));
    CHECK(response_hex(spec_txid, v4, ipv4_form::ipv4_mapped) == to_hex(from_hex(v4_mapped)));

    // All three parse back as Go's client parses them: the mapped form unmapped to IPv4.
    CHECK(response_verdict(from_hex(v4_family1), spec_txid) == "192.0.2.1:41641");
    CHECK(response_verdict(from_hex(v6_family2), spec_txid) == text(v6));
    CHECK(response_verdict(from_hex(v4_mapped), spec_txid) == "192.0.2.1:41641");
    CHECK(family_label(v4) == "ipv4");
    CHECK(family_label(v6) == "ipv6");
}

TEST_CASE("RFC 5769 sample request: ignored attributes, verified FINGERPRINT") {
    REQUIRE(rfc5769_request.size() == 108);
    CHECK(fingerprint_of(std::span(rfc5769_request).first(100)) == 0xe57a3bcf);

    // derper answers only Tailscale clients; derpd in standard mode answers this one.
    CHECK(verdict(rfc5769_request, false) == "wrong_software");
    const auto parsed = parse_binding_request(rfc5769_request, true);
    REQUIRE(parsed);
    CHECK(parsed->txid == rfc5769_txid);
    CHECK(parsed->kind == request_kind::standard);

    // The FINGERPRINT really is checked: any flipped bit before it, or in it, is refused.
    for (std::size_t at : {std::size_t{0x1c}, std::size_t{0x40}, std::size_t{0x50}, std::size_t{0x6b}}) {
        CAPTURE(at);
        bytes corrupt = rfc5769_request;
        corrupt[at] ^= 0x01;
        CHECK(verdict(corrupt, true) == "bad_fingerprint");
    }
}

TEST_CASE("RFC 5769 sample responses") {
    REQUIRE(rfc5769_ipv4_response.size() == 80);
    REQUIRE(rfc5769_ipv6_response.size() == 92);
    CHECK(fingerprint_of(std::span(rfc5769_ipv4_response).first(72)) == 0xc07d4c96);
    CHECK(fingerprint_of(std::span(rfc5769_ipv6_response).first(84)) == 0xc8fb0b4c);

    CHECK(response_verdict(rfc5769_ipv4_response, rfc5769_txid) == "192.0.2.1:32853");
    CHECK(response_verdict(rfc5769_ipv6_response, rfc5769_txid) ==
          text(ipv6("20010db8123456780011223344556677", 32853)));

    for (const bytes* response : {&rfc5769_ipv4_response, &rfc5769_ipv6_response}) {
        bytes corrupt = *response;
        corrupt[0x18] ^= 0x20;  // inside SOFTWARE: only the FINGERPRINT can tell
        CHECK(response_verdict(corrupt, rfc5769_txid) == "bad_fingerprint");
        corrupt = *response;
        corrupt.back() ^= 0x01;
        CHECK(response_verdict(corrupt, rfc5769_txid) == "bad_fingerprint");
        CHECK(response_verdict(*response, spec_txid) == "wrong_transaction");
        // A response is not a request, in either mode.
        CHECK(verdict(*response, true) == "not_binding_request");
        CHECK(verdict(*response, false) == "not_binding_request");
    }
}

TEST_CASE("malformed and non-Tailscale requests: verdict in strict and standard mode") {
    const transaction_id txid = spec_txid;
    const bytes good = request(txid, request_style::tailscale);
    auto with = [&](std::size_t at, std::initializer_list<std::uint8_t> patch) {
        bytes b = good;
        REQUIRE(at + patch.size() <= b.size());
        // Byte by byte through at(): g++ 12 -O2 misreads a std::copy into the vector's middle
        // as an overflow (-Wstringop-overflow false positive).
        std::size_t i = at;
        for (std::uint8_t v : patch) b.at(i++) = v;
        return b;
    };
    bytes fp_len8 = message(binding_request_type, txid,
                            cat(software_tailnode, from_hex("80280008 0000000000000000")), false);
    bytes trailing = cat(good, from_hex("00000000"));

    struct row {
        const char* name;
        bytes datagram;
        const char* strict;    // accept_standard_requests = false (derper)
        const char* standard;  // accept_standard_requests = true
    };
    const row rows[] = {
        {"tailscale request", good, "ok/tailscale", "ok/tailscale"},
        {"0-byte datagram", {}, "too_short", "too_short"},
        {"19-byte datagram (truncated header)", bytes(good.begin(), good.begin() + 19), "too_short", "too_short"},
        {"wrong magic cookie", with(4, {0x21, 0x12, 0xa4, 0x43}), "not_stun", "not_stun"},
        {"top two type bits set", with(0, {0xc0, 0x01}), "not_stun", "not_stun"},
        {"Binding success response", with(0, {0x01, 0x01}), "not_binding_request", "not_binding_request"},
        {"Binding error response", with(0, {0x01, 0x11}), "not_binding_request", "not_binding_request"},
        {"Binding indication", with(0, {0x00, 0x11}), "not_binding_request", "not_binding_request"},
        {"Allocate request (TURN)", with(0, {0x00, 0x03}), "not_binding_request", "not_binding_request"},
        {"length not a multiple of 4", with(2, {0x00, 0x13}), "length_not_aligned", "length_not_aligned"},
        {"length longer than the datagram", with(2, {0x00, 0x18}), "length_mismatch", "length_mismatch"},
        {"length shorter than the datagram", with(2, {0x00, 0x10}), "length_mismatch", "length_mismatch"},
        {"trailing bytes after the message", trailing, "length_mismatch", "length_mismatch"},
        {"attribute overruns the message",
         message(binding_request_type, txid, from_hex("80220008 74616966"), false), "malformed_attributes",
         "malformed_attributes"},
        {"attribute value overruns the message by 1",
         message(binding_request_type, txid, from_hex("80220005 74616966"), false), "malformed_attributes",
         "malformed_attributes"},
        {"bad fingerprint value", with(39, {0x10}), "bad_fingerprint", "bad_fingerprint"},
        {"fingerprint of the wrong length", fp_len8, "bad_fingerprint", "bad_fingerprint"},
        {"plain RFC 5389 request", request(txid, request_style::plain), "wrong_software", "ok/standard"},
        {"plain request with fingerprint", request(txid, request_style::plain_fingerprint), "wrong_software",
         "ok/standard"},
        {"other SOFTWARE", message(binding_request_type, txid, from_hex("80220008 7461696c6e6f6466"), true),
         "wrong_software", "ok/standard"},
        {"SOFTWARE tailnode, no fingerprint", message(binding_request_type, txid, software_tailnode, false),
         "no_fingerprint", "ok/standard"},
        {"fingerprint not last",
         fingerprint_then(binding_request_type, txid, {}, software_tailnode),
         "no_fingerprint", "no_fingerprint"},
        {"unknown attributes before the fingerprint",
         message(binding_request_type, txid, cat(from_hex("00240004 6e0001ff"), software_tailnode), true),
         "ok/tailscale", "ok/tailscale"},
        {"two SOFTWARE attributes, one tailnode",
         message(binding_request_type, txid,
                 cat(from_hex("80220003 61626300"), software_tailnode), true),
         "ok/tailscale", "ok/tailscale"},
        {"RFC 5769 request", rfc5769_request, "wrong_software", "ok/standard"},
    };
    for (const row& r : rows) {
        const std::string name = r.name;
        CAPTURE(name);
        const bytes& datagram = r.datagram;
        CHECK(verdict(datagram, false) == r.strict);
        CHECK(verdict(datagram, true) == r.standard);
        // Every rejection counts as derper's not_stun.
        if (const auto p = parse_binding_request(datagram, true); !p) {
            CHECK(disposition_of(p.error()) == disposition::not_stun);
        }
    }
}

TEST_CASE("client requests parse back with their kind") {
    const transaction_id txid = txid_from_hex("ffeeddccbbaa998877665544");
    CHECK(binding_request_bytes(request_style::tailscale) == 40);
    CHECK(binding_request_bytes(request_style::plain) == 20);
    CHECK(binding_request_bytes(request_style::plain_fingerprint) == 28);
    CHECK(to_hex(request(txid, request_style::plain)) == "000100002112a442ffeeddccbbaa998877665544");
    const bytes with_fp = request(txid, request_style::plain_fingerprint);
    CHECK(to_hex(std::span(with_fp).first(24)) == "000100082112a442ffeeddccbbaa99887766554480280004");
    CHECK(to_hex(std::span(with_fp).last(4)) == to_hex(be32(fingerprint_of(std::span(with_fp).first(20)))));
    for (request_style style : {request_style::tailscale, request_style::plain, request_style::plain_fingerprint}) {
        const auto p = parse_binding_request(request(txid, style), true);
        REQUIRE(p);
        CHECK(p->txid == txid);
        CHECK(p->kind == (style == request_style::tailscale ? request_kind::tailscale : request_kind::standard));
    }
}

TEST_CASE("responses: malformed and unusual ones") {
    const transaction_id txid = spec_txid;
    const endpoint v4 = endpoint_from_ipv4({192, 0, 2, 1}, 41641);
    const bytes xor_v4 = from_hex("00200008 000183bbe112a643");   // 192.0.2.1:41641
    const bytes alt_v4 = from_hex("80200008 000183bbe112a643");   // the same, type 0x8020
    const bytes plain_v4 = from_hex("00010008 0001a2a9c6336407");  // 198.51.100.7:41641
    const std::uint16_t success = binding_success_response_type;
    bytes good = message(success, txid, xor_v4, false);
    bytes long_length = good;
    long_length[3] = 0x10;

    struct row {
        const char* name;
        bytes datagram;
        const char* want;
    };
    const row rows[] = {
        {"XOR-MAPPED-ADDRESS", good, "192.0.2.1:41641"},
        {"with trailing bytes after the length", cat(good, from_hex("deadbeef")), "192.0.2.1:41641"},
        {"with a correct fingerprint", message(success, txid, xor_v4, true), "192.0.2.1:41641"},
        {"XOR-MAPPED-ADDRESS 0x8020", message(success, txid, alt_v4, false), "192.0.2.1:41641"},
        {"MAPPED-ADDRESS only", message(success, txid, plain_v4, false), "198.51.100.7:41641"},
        {"XOR wins over MAPPED after it", message(success, txid, cat(xor_v4, plain_v4), false),
         "192.0.2.1:41641"},
        {"XOR wins over MAPPED before it", message(success, txid, cat(plain_v4, xor_v4), false),
         "192.0.2.1:41641"},
        {"0 bytes", {}, "too_short"},
        {"19 bytes", bytes(good.begin(), good.begin() + 19), "too_short"},
        {"wrong cookie", [&] { bytes b = good; b[7] ^= 1; return b; }(), "not_stun"},
        {"error response", message(0x0111, txid, xor_v4, false), "not_success_response"},
        {"a request", request(txid, request_style::tailscale), "not_success_response"},
        {"other transaction", message(success, rfc5769_txid, xor_v4, false), "wrong_transaction"},
        {"length past the datagram", long_length, "length_mismatch"},
        {"attribute overruns", message(success, txid, from_hex("00200010 000183bbe112a643"), false),
         "malformed_attributes"},
        // The response length need not be aligned (as in Go), so padding alone can overrun it.
        {"padding past the length", length_fixed(message(success, txid, from_hex("80290002 abcd"), false)),
         "malformed_attributes"},
        {"unknown family", message(success, txid, from_hex("00200008 000383bbe112a643"), false),
         "malformed_attributes"},
        {"IPv6 family, IPv4-sized address", message(success, txid, from_hex("00200008 000283bbe112a643"), false),
         "malformed_attributes"},
        {"address attribute under 4 bytes", message(success, txid, from_hex("00200002 00010000"), false),
         "malformed_attributes"},
        {"bad fingerprint", [&] { bytes b = message(success, txid, xor_v4, true); b.back() ^= 1; return b; }(),
         "bad_fingerprint"},
        {"attribute after the fingerprint", fingerprint_then(success, txid, xor_v4, plain_v4),
         "bad_fingerprint"},
        {"no address", message(success, txid, software_tailnode, true), "no_address"},
        {"no attributes", message(success, txid, {}, false), "no_address"},
    };
    for (const row& r : rows) {
        const std::string name = r.name;
        CAPTURE(name);
        CHECK(response_verdict(r.datagram, txid) == r.want);
    }
    CHECK(text(v4) == "192.0.2.1:41641");
}

TEST_CASE("response round trip over addresses, ports and both IPv4 forms") {
    const endpoint clients[] = {
        endpoint_from_ipv4({0, 0, 0, 0}, 0),
        endpoint_from_ipv4({255, 255, 255, 255}, 65535),
        endpoint_from_ipv4({10, 1, 2, 3}, 0x2112),  // port that XORs to zero
        ipv6("00000000000000000000000000000000", 1),
        ipv6("ffffffffffffffffffffffffffffffff", 65535),
        ipv6("fe800000000000000000000000000001", 41641),
        ipv6("0000000000000000000000000a010203", 3478),  // IPv4-compatible, not mapped: stays IPv6
    };
    const transaction_id txids[] = {transaction_id{}, spec_txid, txid_from_hex("ffffffffffffffffffffffff")};
    for (const endpoint& client : clients) {
        for (const transaction_id& txid : txids) {
            for (ipv4_form form : {ipv4_form::ipv4, ipv4_form::ipv4_mapped}) {
                const std::string client_text = text(client);
                CAPTURE(client_text);
                std::array<std::uint8_t, binding_response_bytes_max> out{};
                const std::size_t n = encode_binding_response(out, txid, client, form);
                const bool short_form = client.is_ipv4() && form == ipv4_form::ipv4;
                CHECK(n == (short_form ? binding_response_ipv4_bytes : binding_response_ipv6_bytes));
                CHECK(out[25] == (short_form ? family_ipv4 : family_ipv6));
                const auto parsed = parse_binding_response(std::span(out).first(n), txid);
                REQUIRE(parsed);
                CHECK(text(*parsed) == text(client));
                CHECK(verdict(bytes(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n)), true) ==
                      "not_binding_request");
            }
        }
    }
}

TEST_CASE("derper's metric labels") {
    CHECK(to_string(disposition::success) == "success");
    CHECK(to_string(disposition::not_stun) == "not_stun");
    CHECK(to_string(disposition::read_error) == "read_error");
    CHECK(to_string(disposition::write_error) == "write_error");
    CHECK(all_dispositions.size() == 4);
    for (int r = 0; r <= static_cast<int>(reject_reason::bad_fingerprint); ++r) {
        const auto reason = static_cast<reject_reason>(r);
        CHECK(to_string(reason) != "unknown");
        CHECK(disposition_of(reason) == disposition::not_stun);
    }
}

TEST_CASE("the server path does not allocate") {
    const bytes req = request(spec_txid, request_style::tailscale);
    const endpoint client = endpoint_from_ipv4({192, 0, 2, 1}, 41641);
    std::array<std::uint8_t, binding_response_bytes_max> out{};
    std::size_t written = 0;
    const long before = derp::test::allocation_count();
    for (int i = 0; i < 100; ++i) {
        const auto parsed = parse_binding_request(req, i % 2 == 0);
        if (parsed) written += encode_binding_response(out, parsed->txid, client, ipv4_form::ipv4);
        (void)parse_binding_request(rfc5769_request, true);
        (void)parse_binding_response(std::span(out).first(binding_response_ipv4_bytes), spec_txid);
    }
    CHECK(derp::test::allocation_count() - before == 0);
    CHECK(written == 100 * binding_response_ipv4_bytes);
}

}  // namespace
}  // namespace derp::stun
