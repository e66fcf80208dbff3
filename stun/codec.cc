// The STUN Binding codec: request classification, the success response, and the client side.
// See codec.hh for the rules; this file only carries them out.
#include "stun/codec.hh"

#include <algorithm>

#include "core/assert.hh"

namespace derp::stun {
namespace {

constexpr std::array<std::uint32_t, 256> make_crc32_table() noexcept {
    std::array<std::uint32_t, 256> table{};
    for (std::uint32_t i = 0; i < 256; ++i) {
        std::uint32_t c = i;
        for (int bit = 0; bit < 8; ++bit) c = (c & 1) != 0 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    return table;
}
constexpr std::array<std::uint32_t, 256> crc32_table = make_crc32_table();
static_assert(crc32_table[1] == 0x77073096 && crc32_table[255] == 0x2d02ef8d);

constexpr std::array<std::uint8_t, 4> cookie_bytes = {0x21, 0x12, 0xa4, 0x42};
constexpr std::array<std::uint8_t, 12> ipv4_mapped_prefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

std::uint16_t load_u16(const std::uint8_t* p) noexcept {
    return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}
std::uint32_t load_u32(const std::uint8_t* p) noexcept {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}
void store_u16(std::uint8_t* p, std::uint16_t v) noexcept {
    p[0] = static_cast<std::uint8_t>(v >> 8);
    p[1] = static_cast<std::uint8_t>(v);
}
void store_u32(std::uint8_t* p, std::uint32_t v) noexcept {
    p[0] = static_cast<std::uint8_t>(v >> 24);
    p[1] = static_cast<std::uint8_t>(v >> 16);
    p[2] = static_cast<std::uint8_t>(v >> 8);
    p[3] = static_cast<std::uint8_t>(v);
}

// stun.Is: at least a header, top two type bits zero, the magic cookie in place.
bool looks_like_stun(std::span<const std::uint8_t> in) noexcept {
    return in.size() >= header_bytes && (in[0] & 0xc0) == 0 && load_u32(&in[4]) == magic_cookie;
}

void write_header(std::uint8_t* p, std::uint16_t type, std::size_t body_bytes,
                  const transaction_id& txid) noexcept {
    DERP_ASSERT(body_bytes % 4 == 0 && body_bytes <= 0xffff);
    store_u16(p, type);
    store_u16(p + 2, static_cast<std::uint16_t>(body_bytes));
    store_u32(p + 4, magic_cookie);
    std::copy(txid.begin(), txid.end(), p + 8);
}

// One attribute as seen by walk_attributes: where it starts and its unpadded value.
struct attribute_view {
    std::uint16_t type;
    std::size_t offset;  // of the attribute header within the message
    std::span<const std::uint8_t> value;
};

// Calls visit for each attribute of body (the bytes after the header), as stun.go foreachAttr:
// fewer than 4 bytes left, or a padded value longer than what remains, is malformed. Returns
// false then, true once every byte has been walked.
template <typename Visit>
bool walk_attributes(std::span<const std::uint8_t> body, Visit&& visit) noexcept {
    std::size_t at = 0;
    while (at < body.size()) {
        if (body.size() - at < attribute_header_bytes) return false;
        const std::uint16_t type = load_u16(&body[at]);
        const std::size_t value_bytes = load_u16(&body[at + 2]);
        const std::size_t padded_bytes = (value_bytes + 3) & ~std::size_t{3};
        const std::size_t value_at = at + attribute_header_bytes;
        if (padded_bytes > body.size() - value_at) return false;
        visit(attribute_view{type, header_bytes + at, body.subspan(value_at, value_bytes)});
        at = value_at + padded_bytes;
    }
    return true;
}

constexpr std::uint16_t type_of(attribute a) noexcept { return static_cast<std::uint16_t>(a); }

// The address of a MAPPED-ADDRESS or XOR-MAPPED-ADDRESS value; false when malformed (shorter
// than 4 bytes, an unknown family, or an address shorter than its family needs), as stun.go.
bool decode_address(std::span<const std::uint8_t> value, bool xored, const transaction_id& txid,
                    endpoint& out) noexcept {
    if (value.size() < 4) return false;
    const std::size_t address_bytes = value[1] == family_ipv4 ? 4 : value[1] == family_ipv6 ? 16 : 0;
    if (address_bytes == 0 || value.size() - 4 < address_bytes) return false;
    std::uint16_t port = load_u16(&value[2]);
    std::array<std::uint8_t, 16> address{};
    for (std::size_t i = 0; i < address_bytes; ++i) {
        std::uint8_t b = value[4 + i];
        if (xored) b ^= i < 4 ? cookie_bytes[i] : txid[i - 4];
        address[i] = b;
    }
    if (xored) port ^= static_cast<std::uint16_t>(magic_cookie >> 16);
    if (address_bytes == 4) {
        out = endpoint_from_ipv4({address[0], address[1], address[2], address[3]}, port);
    } else {
        out = endpoint{address, port};  // an IPv4-mapped address is already "unmapped" here
    }
    return true;
}

}  // namespace

std::uint32_t crc32_ieee(std::span<const std::uint8_t> bytes) noexcept {
    std::uint32_t c = 0xffffffffu;
    for (std::uint8_t b : bytes) c = crc32_table[(c ^ b) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

std::uint32_t fingerprint_of(std::span<const std::uint8_t> message_before_fingerprint) noexcept {
    return crc32_ieee(message_before_fingerprint) ^ fingerprint_xor;
}

bool endpoint::is_ipv4() const noexcept {
    return std::equal(ipv4_mapped_prefix.begin(), ipv4_mapped_prefix.end(), ip.begin());
}

endpoint endpoint_from_ipv4(std::array<std::uint8_t, 4> ipv4, std::uint16_t port) noexcept {
    endpoint e;
    std::copy(ipv4_mapped_prefix.begin(), ipv4_mapped_prefix.end(), e.ip.begin());
    std::copy(ipv4.begin(), ipv4.end(), e.ip.begin() + 12);
    e.port = port;
    return e;
}

std::string_view family_label(const endpoint& client) noexcept {
    return client.is_ipv4() ? "ipv4" : "ipv6";
}

std::string_view to_string(reject_reason reason) noexcept {
    switch (reason) {
        case reject_reason::too_short: return "too_short";
        case reject_reason::not_stun: return "not_stun";
        case reject_reason::not_binding_request: return "not_binding_request";
        case reject_reason::length_not_aligned: return "length_not_aligned";
        case reject_reason::length_mismatch: return "length_mismatch";
        case reject_reason::malformed_attributes: return "malformed_attributes";
        case reject_reason::wrong_software: return "wrong_software";
        case reject_reason::no_fingerprint: return "no_fingerprint";
        case reject_reason::bad_fingerprint: return "bad_fingerprint";
    }
    return "unknown";
}

std::string_view to_string(request_kind kind) noexcept {
    switch (kind) {
        case request_kind::tailscale: return "tailscale";
        case request_kind::standard: return "standard";
    }
    return "unknown";
}

std::string_view to_string(disposition d) noexcept {
    switch (d) {
        case disposition::success: return "success";
        case disposition::not_stun: return "not_stun";
        case disposition::read_error: return "read_error";
        case disposition::write_error: return "write_error";
    }
    return "unknown";
}

disposition disposition_of(reject_reason) noexcept { return disposition::not_stun; }

std::string_view to_string(response_error error) noexcept {
    switch (error) {
        case response_error::too_short: return "too_short";
        case response_error::not_stun: return "not_stun";
        case response_error::not_success_response: return "not_success_response";
        case response_error::wrong_transaction: return "wrong_transaction";
        case response_error::length_mismatch: return "length_mismatch";
        case response_error::malformed_attributes: return "malformed_attributes";
        case response_error::bad_fingerprint: return "bad_fingerprint";
        case response_error::no_address: return "no_address";
    }
    return "unknown";
}

result<binding_request, reject_reason> parse_binding_request(std::span<const std::uint8_t> datagram,
                                                             bool accept_standard_requests) noexcept {
    using fail = unexpected<reject_reason>;
    if (datagram.size() < header_bytes) return fail(reject_reason::too_short);
    if (!looks_like_stun(datagram)) return fail(reject_reason::not_stun);
    if (load_u16(&datagram[0]) != binding_request_type) return fail(reject_reason::not_binding_request);
    const std::size_t body_bytes = load_u16(&datagram[2]);
    if (body_bytes % 4 != 0) return fail(reject_reason::length_not_aligned);
    if (body_bytes != datagram.size() - header_bytes) return fail(reject_reason::length_mismatch);

    bool software_ok = false;  // some SOFTWARE attribute is exactly "tailnode"
    bool has_fingerprint = false;
    std::uint16_t last_type = 0;
    attribute_view last{};
    const bool walked = walk_attributes(datagram.subspan(header_bytes), [&](const attribute_view& a) {
        if (a.type == type_of(attribute::software) &&
            std::equal(a.value.begin(), a.value.end(), tailscale_software.begin(), tailscale_software.end())) {
            software_ok = true;
        }
        if (a.type == type_of(attribute::fingerprint)) has_fingerprint = true;
        last_type = a.type;
        last = a;
    });
    if (!walked) return fail(reject_reason::malformed_attributes);

    // stun.go's order: software, then "ends in FINGERPRINT", then its value.
    if (!accept_standard_requests && !software_ok) return fail(reject_reason::wrong_software);
    const bool ends_in_fingerprint = last_type == type_of(attribute::fingerprint);
    if (has_fingerprint && !ends_in_fingerprint) return fail(reject_reason::no_fingerprint);
    if (!accept_standard_requests && !ends_in_fingerprint) return fail(reject_reason::no_fingerprint);
    if (ends_in_fingerprint) {
        // With the length checked, the final 8 bytes are this attribute: the CRC covers exactly
        // what stun.go's b[:len(b)-8] covers.
        if (last.value.size() != 4) return fail(reject_reason::bad_fingerprint);
        DERP_ASSERT(last.offset + fingerprint_attribute_bytes == datagram.size());
        if (load_u32(last.value.data()) != fingerprint_of(datagram.first(last.offset))) {
            return fail(reject_reason::bad_fingerprint);
        }
    }

    binding_request request{};
    std::copy_n(&datagram[8], transaction_id_bytes, request.txid.begin());
    request.kind = software_ok && ends_in_fingerprint ? request_kind::tailscale : request_kind::standard;
    return request;
}

std::size_t binding_response_bytes(const endpoint& client, ipv4_form form) noexcept {
    return client.is_ipv4() && form == ipv4_form::ipv4 ? binding_response_ipv4_bytes
                                                              : binding_response_ipv6_bytes;
}

std::size_t encode_binding_response(std::span<std::uint8_t> out, const transaction_id& txid,
                                    const endpoint& client, ipv4_form form) noexcept {
    const bool short_form = client.is_ipv4() && form == ipv4_form::ipv4;
    const std::size_t address_bytes = short_form ? 4 : 16;
    const std::size_t value_bytes = 4 + address_bytes;  // 0 | family | port | address
    const std::size_t total_bytes = header_bytes + attribute_header_bytes + value_bytes;
    DERP_ASSERT(total_bytes == binding_response_bytes(client, form));
    DERP_ASSERT(out.size() >= total_bytes);

    std::uint8_t* p = out.data();
    write_header(p, binding_success_response_type, attribute_header_bytes + value_bytes, txid);
    p += header_bytes;
    store_u16(p, type_of(attribute::xor_mapped_address));
    store_u16(p + 2, static_cast<std::uint16_t>(value_bytes));
    p[4] = 0;
    p[5] = short_form ? family_ipv4 : family_ipv6;
    store_u16(p + 6, static_cast<std::uint16_t>(client.port ^ (magic_cookie >> 16)));
    const std::uint8_t* address = client.ip.data() + (16 - address_bytes);
    for (std::size_t i = 0; i < address_bytes; ++i) {
        p[8 + i] = static_cast<std::uint8_t>(address[i] ^ (i < 4 ? cookie_bytes[i] : txid[i - 4]));
    }
    return total_bytes;
}

std::size_t binding_request_bytes(request_style style) noexcept {
    switch (style) {
        case request_style::tailscale: return tailscale_request_bytes;
        case request_style::plain: return header_bytes;
        case request_style::plain_fingerprint: return header_bytes + fingerprint_attribute_bytes;
    }
    DERP_ASSERT(false && "unknown request_style");
    return 0;
}

std::size_t encode_binding_request(std::span<std::uint8_t> out, const transaction_id& txid,
                                   request_style style) noexcept {
    const std::size_t total_bytes = binding_request_bytes(style);
    DERP_ASSERT(out.size() >= total_bytes);
    std::uint8_t* p = out.data();
    write_header(p, binding_request_type, total_bytes - header_bytes, txid);
    std::size_t at = header_bytes;
    if (style == request_style::tailscale) {
        store_u16(p + at, type_of(attribute::software));
        store_u16(p + at + 2, static_cast<std::uint16_t>(tailscale_software.size()));
        std::copy(tailscale_software.begin(), tailscale_software.end(), p + at + attribute_header_bytes);
        at += attribute_header_bytes + tailscale_software.size();
    }
    if (style != request_style::plain) {
        const std::uint32_t fp = fingerprint_of(out.first(at));
        store_u16(p + at, type_of(attribute::fingerprint));
        store_u16(p + at + 2, 4);
        store_u32(p + at + 4, fp);
        at += fingerprint_attribute_bytes;
    }
    DERP_ASSERT(at == total_bytes);
    return total_bytes;
}

result<endpoint, response_error> parse_binding_response(std::span<const std::uint8_t> datagram,
                                                        const transaction_id& expected) noexcept {
    using fail = unexpected<response_error>;
    if (datagram.size() < header_bytes) return fail(response_error::too_short);
    if (!looks_like_stun(datagram)) return fail(response_error::not_stun);
    if (load_u16(&datagram[0]) != binding_success_response_type) {
        return fail(response_error::not_success_response);
    }
    if (!std::equal(expected.begin(), expected.end(), &datagram[8])) {
        return fail(response_error::wrong_transaction);
    }
    const std::size_t body_bytes = load_u16(&datagram[2]);
    if (body_bytes > datagram.size() - header_bytes) return fail(response_error::length_mismatch);
    const auto message = datagram.first(header_bytes + body_bytes);  // trailing bytes ignored

    endpoint xor_mapped, mapped;
    bool has_xor_mapped = false, has_mapped = false, address_ok = true;
    std::size_t fingerprint_at = 0;  // offset of the first FINGERPRINT; 0 = none
    bool fingerprint_ok = true;
    const bool walked = walk_attributes(message.subspan(header_bytes), [&](const attribute_view& a) {
        if (fingerprint_at != 0) fingerprint_ok = false;  // something follows FINGERPRINT
        switch (static_cast<attribute>(a.type)) {
            case attribute::xor_mapped_address:
            case attribute::xor_mapped_address_alt:
                address_ok = address_ok && decode_address(a.value, true, expected, xor_mapped);
                has_xor_mapped = true;
                break;
            case attribute::mapped_address:
                address_ok = address_ok && decode_address(a.value, false, expected, mapped);
                has_mapped = true;
                break;
            case attribute::fingerprint:
                fingerprint_at = a.offset;
                fingerprint_ok = fingerprint_ok && a.value.size() == 4 &&
                                 load_u32(a.value.data()) == fingerprint_of(message.first(a.offset));
                break;
            default:
                break;
        }
    });
    if (!walked || !address_ok) return fail(response_error::malformed_attributes);
    if (!fingerprint_ok) return fail(response_error::bad_fingerprint);
    if (has_xor_mapped) return xor_mapped;
    if (has_mapped) return mapped;
    return fail(response_error::no_address);
}

}  // namespace derp::stun
