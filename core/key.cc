// Hex conversion, zero checks, hashing and constant-time comparison of DERP keys.
#include "core/key.hh"

#include <sodium.h>

#include <algorithm>
#include <cstring>

#include "core/assert.hh"

namespace derp {

namespace {

constexpr char hex_digits[] = "0123456789abcdef";

int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool all_zero(std::span<const std::uint8_t> bytes) noexcept {
    std::uint8_t acc = 0;
    for (std::uint8_t b : bytes) acc = static_cast<std::uint8_t>(acc | b);
    return acc == 0;
}

bool is_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

void format_hex(std::span<const std::uint8_t> in, std::span<char> out) noexcept {
    DERP_ASSERT(out.size() >= 2 * in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
        out[2 * i] = hex_digits[in[i] >> 4];
        out[2 * i + 1] = hex_digits[in[i] & 0x0f];
    }
}

bool parse_hex(std::string_view text, std::span<std::uint8_t> out) noexcept {
    if (text.size() != 2 * out.size()) return false;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const int hi = hex_value(text[2 * i]);
        const int lo = hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = static_cast<std::uint8_t>((hi << 4) | lo);
    }
    return true;
}

node_key::node_key(key_span bytes) noexcept { std::copy(bytes.begin(), bytes.end(), _bytes.begin()); }

std::optional<node_key> node_key::from_hex(std::string_view hex) noexcept {
    node_key key;
    if (!parse_hex(hex, key._bytes)) return std::nullopt;
    return key;
}

bool node_key::is_zero() const noexcept { return all_zero(_bytes); }

std::array<char, key_hex_chars> node_key::hex() const noexcept {
    std::array<char, key_hex_chars> out{};
    format_hex(_bytes, out);
    return out;
}

std::string node_key::to_string() const {
    const auto text = hex();
    return std::string(text.data(), text.size());
}

std::size_t node_key_hash::operator()(const node_key& key) const noexcept {
    std::uint64_t a = 0;
    std::uint64_t b = 0;
    std::memcpy(&a, key.bytes().data(), sizeof a);
    std::memcpy(&b, key.bytes().data() + 24, sizeof b);
    // Fibonacci hashing spreads the key bytes over all bits, high bits included.
    return static_cast<std::size_t>((a ^ (b >> 1)) * 0x9e3779b97f4a7c15ull);
}

private_key::private_key(key_span bytes) noexcept {
    std::copy(bytes.begin(), bytes.end(), _bytes.begin());
}

std::optional<private_key> private_key::from_hex(std::string_view hex) noexcept {
    private_key key;
    if (!parse_hex(hex, key._bytes)) return std::nullopt;
    return key;
}

bool private_key::is_zero() const noexcept { return all_zero(_bytes); }

key_mesh::key_mesh(key_span bytes) noexcept { std::copy(bytes.begin(), bytes.end(), _bytes.begin()); }

std::optional<key_mesh> key_mesh::from_hex(std::string_view hex) noexcept {
    key_mesh key;
    if (!parse_hex(hex, key._bytes)) return std::nullopt;
    return key;
}

std::optional<key_mesh> key_mesh::from_psk_file(std::string_view contents) noexcept {
    while (!contents.empty() && is_space(contents.front())) contents.remove_prefix(1);
    while (!contents.empty() && is_space(contents.back())) contents.remove_suffix(1);
    return from_hex(contents);
}

bool key_mesh::is_zero() const noexcept { return all_zero(_bytes); }

std::array<char, key_hex_chars> key_mesh::hex() const noexcept {
    std::array<char, key_hex_chars> out{};
    format_hex(_bytes, out);
    return out;
}

bool key_mesh::equals(const key_mesh& other) const noexcept {
    return sodium_memcmp(_bytes.data(), other._bytes.data(), key_bytes) == 0;
}

}  // namespace derp
