// libFuzzer target for the STUN codec: classifies the input as a request in both modes, checks
// the two modes agree, answers accepted requests and parses each answer back as a client would
// (the round trip must give the same address), and parses the input as a response too.
#include <algorithm>
#include <array>
#include <cstdint>
#include <span>

#include "core/assert.hh"
#include "stun/codec.hh"

namespace {

using namespace derp::stun;

// A client address taken from the input's last 18 bytes (16 address, 2 port), so that the
// fuzzer explores addresses too; IPv4-mapped when the input says so.
endpoint client_from(std::span<const std::uint8_t> in) noexcept {
    endpoint e = endpoint_from_ipv4({192, 0, 2, 1}, 41641);
    if (in.size() >= 18) {
        const auto tail = in.last(18);
        std::copy_n(tail.begin(), 16, e.ip.begin());
        e.port = static_cast<std::uint16_t>((tail[16] << 8) | tail[17]);
        if ((tail[0] & 1) != 0) e = endpoint_from_ipv4({tail[12], tail[13], tail[14], tail[15]}, e.port);
    }
    return e;
}

// Answers txid for client in both IPv4 forms and parses each answer back.
void check_response_round_trip(const transaction_id& txid, const endpoint& client) noexcept {
    for (ipv4_form form : {ipv4_form::ipv4, ipv4_form::ipv4_mapped}) {
        std::array<std::uint8_t, binding_response_bytes_max> out{};
        const std::size_t n = encode_binding_response(out, txid, client, form);
        DERP_ASSERT(n == binding_response_bytes(client, form));
        const auto response = std::span<const std::uint8_t>(out).first(n);
        const auto parsed = parse_binding_response(response, txid);
        DERP_ASSERT(parsed.has_value());
        DERP_ASSERT(*parsed == client);
        // Our own answer is never mistaken for a request.
        const auto as_request = parse_binding_request(response, true);
        DERP_ASSERT(!as_request && as_request.error() == reject_reason::not_binding_request);
    }
}

}  // namespace

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> in(data, size);
    const endpoint client = client_from(in);

    const auto strict = parse_binding_request(in, false);
    const auto standard = parse_binding_request(in, true);
    // derper's rules are a subset of the standard ones, and "tailscale" means derper would answer.
    if (strict) {
        DERP_ASSERT(standard.has_value());
        DERP_ASSERT(strict->kind == request_kind::tailscale && standard->kind == request_kind::tailscale);
        DERP_ASSERT(strict->txid == standard->txid);
    }
    if (standard && standard->kind == request_kind::tailscale) DERP_ASSERT(strict.has_value());
    if (!standard) {
        DERP_ASSERT(!strict);
        DERP_ASSERT(disposition_of(standard.error()) == disposition::not_stun);
    }
    if (standard) {
        DERP_ASSERT(size >= header_bytes && (size - header_bytes) % 4 == 0);
        DERP_ASSERT(std::equal(standard->txid.begin(), standard->txid.end(), in.begin() + 8));
        check_response_round_trip(standard->txid, client);
    }

    // The input as an answer to the transaction it names; an accepted answer re-encodes to one
    // that gives the same address.
    if (size >= header_bytes) {
        transaction_id txid{};
        std::copy_n(in.begin() + 8, transaction_id_bytes, txid.begin());
        if (const auto mapped = parse_binding_response(in, txid)) {
            DERP_ASSERT(in[0] == 0x01 && in[1] == 0x01);
            check_response_round_trip(txid, *mapped);
        }
        // Every client request style we build for that transaction is accepted.
        for (request_style style : {request_style::tailscale, request_style::plain, request_style::plain_fingerprint}) {
            std::array<std::uint8_t, binding_request_bytes_max> out{};
            const std::size_t n = encode_binding_request(out, txid, style);
            const auto parsed = parse_binding_request(std::span<const std::uint8_t>(out).first(n), true);
            DERP_ASSERT(parsed.has_value() && parsed->txid == txid);
            DERP_ASSERT((parsed->kind == request_kind::tailscale) == (style == request_style::tailscale));
        }
    }
    return 0;
}
