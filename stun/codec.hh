// The STUN Binding codec (RFC 5389/8489, spec 6): classifies a datagram the way derper does,
// builds the Binding Success Response byte for byte as Tailscale's stun.Response, and offers the
// client side (requests, response parsing) for stunc and the tests. Pure: bytes in, verdict out;
// no sockets, no allocation, no logging. Deliberately not here: the UDP socket, counters and
// address conversion from sockaddr (stun/server.cc), and every STUN feature a plain Binding
// server does not need (MESSAGE-INTEGRITY, authentication, TURN, error responses).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "core/result.hh"

namespace derp::stun {

// ---- Wire format --------------------------------------------------------------------------

// Message header, 20 bytes, big-endian:
//   type(2, top two bits 0) | length(2, bytes after the header, a multiple of 4) |
//   magic cookie(4) 21 12 a4 42 | transaction id(12)
inline constexpr std::size_t header_bytes = 20;
inline constexpr std::uint32_t magic_cookie = 0x2112a442;
inline constexpr std::size_t transaction_id_bytes = 12;

inline constexpr std::uint16_t binding_request_type = 0x0001;           // method Binding, class request
inline constexpr std::uint16_t binding_success_response_type = 0x0101;  // method Binding, class success

// Attribute: type(2) | length(2, value bytes without padding) | value, padded to a multiple of 4.
inline constexpr std::size_t attribute_header_bytes = 4;

enum class attribute : std::uint16_t {
    mapped_address = 0x0001,      // 0 | family(1) | port(2) | address(4 or 16), plain
    username = 0x0006,            // ICE/auth; a Binding server ignores it
    message_integrity = 0x0008,   // HMAC-SHA1(20); a Binding server ignores it
    xor_mapped_address = 0x0020,  // 0 | family(1) | port ^ 0x2112 | address ^ (cookie || txid)
    xor_mapped_address_alt = 0x8020,  // the same, mistyped by some servers; Go's client accepts it
    software = 0x8022,                // UTF-8 text; Tailscale clients send "tailnode"
    fingerprint = 0x8028,  // CRC-32 of the message before it (length field counting it) ^ "STUN"
};

inline constexpr std::uint8_t family_ipv4 = 0x01;  // address field of 4 bytes
inline constexpr std::uint8_t family_ipv6 = 0x02;  // address field of 16 bytes
inline constexpr std::uint32_t fingerprint_xor = 0x5354554e;  // ASCII "STUN"
inline constexpr std::size_t fingerprint_attribute_bytes = 8;  // type + length + CRC-32
inline constexpr std::string_view tailscale_software = "tailnode";  // 8 bytes: no padding

using transaction_id = std::array<std::uint8_t, transaction_id_bytes>;

// CRC-32 (IEEE 802.3, reflected, polynomial 0xedb88320), as Go's crc32.ChecksumIEEE.
std::uint32_t crc32_ieee(std::span<const std::uint8_t> bytes) noexcept;
// The FINGERPRINT value for a message whose first bytes are these (everything before the
// FINGERPRINT attribute, with the header length already counting the attribute).
std::uint32_t fingerprint_of(std::span<const std::uint8_t> message_before_fingerprint) noexcept;

// An IP address and UDP port. The address is always in 16-byte IPv6 form with IPv4 written
// IPv4-mapped (::ffff:a.b.c.d), the same form as the registry and PeerPresent, so that an IPv4
// client reads the same whether it arrived on an IPv4 or a dual-stack socket.
struct endpoint {
    std::array<std::uint8_t, 16> ip{};
    std::uint16_t port = 0;

    bool is_ipv4() const noexcept;  // ::ffff:0:0/96
    friend bool operator==(const endpoint&, const endpoint&) noexcept = default;
};
endpoint endpoint_from_ipv4(std::array<std::uint8_t, 4> ipv4, std::uint16_t port) noexcept;

// derper's stun_addrfamily{family} label for a client: "ipv4" (IPv4-mapped counts as ipv4) or
// "ipv6".
std::string_view family_label(const endpoint& client) noexcept;

// ---- Server side: classify a request --------------------------------------------------------

// Why a datagram is not answered, in the order the checks run. Tailscale's stun.go has the same
// checks under ErrNotSTUN, ErrNotBindingRequest, ErrMalformedAttrs, ErrWrongSoftware,
// ErrNoFingerprint and ErrWrongFingerprint; derper counts every one of them as not_stun.
enum class reject_reason : std::uint8_t {
    too_short,             // fewer than 20 bytes
    not_stun,              // top two bits of the type set, or no magic cookie
    not_binding_request,   // another method or class (a response, an indication)
    length_not_aligned,    // header length is not a multiple of 4
    length_mismatch,       // header length is not the number of bytes after the header
    malformed_attributes,  // an attribute (with its padding) runs past the end of the message
    wrong_software,        // strict only: no SOFTWARE "tailnode"
    no_fingerprint,        // strict: last attribute is not FINGERPRINT; any: FINGERPRINT not last
    bad_fingerprint,       // FINGERPRINT value wrong, or its length is not 4
};
std::string_view to_string(reject_reason reason) noexcept;  // the enumerator's name

enum class request_kind : std::uint8_t {
    tailscale,  // SOFTWARE "tailnode" and a valid FINGERPRINT last: what derper answers
    standard,   // any other valid RFC 5389 Binding request (answered unless strict)
};
std::string_view to_string(request_kind kind) noexcept;  // "tailscale" or "standard"

struct binding_request {
    transaction_id txid;
    request_kind kind;
};

// Classifies one UDP payload. With accept_standard_requests false it answers exactly what
// derper answers (spec 6): SOFTWARE "tailnode" anywhere and a correct FINGERPRINT as the last
// attribute. With it true any well-formed Binding request is answered; a FINGERPRINT, when
// present, must still be last and correct. Unknown attributes, USERNAME and MESSAGE-INTEGRITY
// are ignored in both modes.
//
// One deliberate difference from derper: derper walks attributes to the end of the datagram
// without reading the header length; we require the length to be aligned and to match the
// datagram (RFC 5389 section 6). stun.Request always sets it so, so no Tailscale client notices.
result<binding_request, reject_reason> parse_binding_request(std::span<const std::uint8_t> datagram,
                                                             bool accept_standard_requests) noexcept;

// derper's stun_requests{disposition} labels (spec 6). The codec decides between answering and
// not_stun; the server adds read_error and write_error, and counts success only once the
// response is written. All four exist from startup, as zero.
enum class disposition : std::uint8_t { success, not_stun, read_error, write_error };
inline constexpr std::array<disposition, 4> all_dispositions = {
    disposition::success, disposition::not_stun, disposition::read_error, disposition::write_error};
std::string_view to_string(disposition d) noexcept;  // "success", "not_stun", ...
disposition disposition_of(reject_reason reason) noexcept;  // always not_stun, as derper counts

// ---- Server side: the response ---------------------------------------------------------------

// Header + one XOR-MAPPED-ADDRESS attribute: 20 + 4 + 8 (IPv4) or 20 + 4 + 20 (IPv6).
inline constexpr std::size_t binding_response_ipv4_bytes = header_bytes + attribute_header_bytes + 8;
inline constexpr std::size_t binding_response_ipv6_bytes = header_bytes + attribute_header_bytes + 20;
inline constexpr std::size_t binding_response_bytes_max = binding_response_ipv6_bytes;  // 44

// How XOR-MAPPED-ADDRESS spells an IPv4 client.
enum class ipv4_form : std::uint8_t {
    // Family 1 with 4 address bytes: RFC 5389, and derper on an IPv4-only socket. Recommended:
    // every client (Go's unmaps either form) reads it as the IPv4 address it is.
    ipv4,
    // Family 2 with ::ffff:a.b.c.d: what derper sends from its default dual-stack socket
    // (spec 6, 10.6, 11.3 third vector). Only for byte identity with that derper; an RFC client
    // that does not unmap sees an IPv6 address.
    ipv4_mapped,
};

std::size_t binding_response_bytes(const endpoint& client, ipv4_form form) noexcept;

// Writes the Binding Success Response for txid telling client its address, exactly as
// stun.Response(txid, addr) does, and returns its size (32 or 44). Asserts out is large enough.
// An IPv6 client is always family 2; form only decides IPv4 clients.
std::size_t encode_binding_response(std::span<std::uint8_t> out, const transaction_id& txid,
                                    const endpoint& client, ipv4_form form) noexcept;

// ---- Client side -------------------------------------------------------------------------------

enum class request_style : std::uint8_t {
    tailscale,          // SOFTWARE "tailnode" + FINGERPRINT, 40 bytes: stun.Request(txid)
    plain,              // header only, 20 bytes: the smallest RFC 5389 Binding request
    plain_fingerprint,  // header + FINGERPRINT, 28 bytes
};
inline constexpr std::size_t tailscale_request_bytes =
    header_bytes + attribute_header_bytes + tailscale_software.size() + fingerprint_attribute_bytes;
inline constexpr std::size_t binding_request_bytes_max = tailscale_request_bytes;  // 40

std::size_t binding_request_bytes(request_style style) noexcept;
// Writes a Binding request and returns its size. Asserts out is large enough.
std::size_t encode_binding_request(std::span<std::uint8_t> out, const transaction_id& txid,
                                   request_style style) noexcept;

enum class response_error : std::uint8_t {
    too_short,             // fewer than 20 bytes
    not_stun,              // top two bits set or no magic cookie
    not_success_response,  // not 0x0101 (an error response, a request, another method)
    wrong_transaction,     // a Binding success, but not for our transaction id
    length_mismatch,       // header length exceeds the datagram
    malformed_attributes,  // attribute overruns, or a malformed (XOR-)MAPPED-ADDRESS
    bad_fingerprint,       // FINGERPRINT present but not last, not 4 bytes, or wrong
    no_address,            // neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS
};
std::string_view to_string(response_error error) noexcept;

// The mapped address in a Binding Success Response to expected, as Go's stun.ParseResponse:
// XOR-MAPPED-ADDRESS (0x0020 or 0x8020) wins over MAPPED-ADDRESS, the last of each kind counts,
// bytes after the header length are ignored, and an IPv4-mapped IPv6 answer comes out as the
// IPv4 address it maps (the endpoint form makes the two the same). Unlike Go, a FINGERPRINT is
// verified when present.
result<endpoint, response_error> parse_binding_response(std::span<const std::uint8_t> datagram,
                                                        const transaction_id& expected) noexcept;

}  // namespace derp::stun
