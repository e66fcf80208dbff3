// Key value types of the DERP protocol: node (public) keys, private keys and the mesh pre-shared
// key, with hex text forms. Pure data; the X25519 and NaCl box operations on them live in crypto/.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace derp {

inline constexpr std::size_t key_bytes = 32;      // Curve25519 keys and the mesh key
inline constexpr std::size_t key_hex_chars = 64;  // two lowercase hex digits per byte

using key_span = std::span<const std::uint8_t, key_bytes>;

// Writes 2 * in.size() lowercase hex digits to out.
void format_hex(std::span<const std::uint8_t> in, std::span<char> out) noexcept;

// Decodes exactly out.size() bytes from 2 * out.size() hex digits of either case, like Go's
// hex.Decode of a string of that length. False on a wrong length or a non-hex character.
[[nodiscard]] bool parse_hex(std::string_view text, std::span<std::uint8_t> out) noexcept;

// A Curve25519 public key identifying a DERP client or server ("node key").
class node_key {
public:
    constexpr node_key() noexcept = default;
    explicit node_key(key_span bytes) noexcept;

    // 64 hex digits of either case; no "nodekey:" prefix.
    static std::optional<node_key> from_hex(std::string_view hex) noexcept;

    const std::array<std::uint8_t, key_bytes>& bytes() const noexcept { return _bytes; }
    key_span span() const noexcept { return key_span(_bytes); }
    bool is_zero() const noexcept;
    std::array<char, key_hex_chars> hex() const noexcept;
    std::string to_string() const;  // the 64 lowercase hex digits

    friend bool operator==(const node_key&, const node_key&) noexcept = default;

private:
    std::array<std::uint8_t, key_bytes> _bytes{};
};

// Hash for unordered containers. Node keys are X25519 public keys that a client has proven to
// own (its ClientInfo box must open), so finding colliding keys costs one scalar multiplication
// per attempt; eight key bytes mixed by a multiply are enough and cost no hashing of 32 bytes.
struct node_key_hash {
    std::size_t operator()(const node_key& key) const noexcept;
};

// A Curve25519 private key. Deliberately has no text conversion except through the key-file
// format in crypto/, so that it does not end up in logs by accident.
class private_key {
public:
    constexpr private_key() noexcept = default;
    explicit private_key(key_span bytes) noexcept;

    static std::optional<private_key> from_hex(std::string_view hex) noexcept;

    const std::array<std::uint8_t, key_bytes>& bytes() const noexcept { return _bytes; }
    key_span span() const noexcept { return key_span(_bytes); }
    bool is_zero() const noexcept;

    friend bool operator==(const private_key&, const private_key&) noexcept = default;

private:
    std::array<std::uint8_t, key_bytes> _bytes{};
};

// The region's mesh pre-shared key (derper --mesh-psk-file, ClientInfo "meshKey"). Compared in
// constant time only; an all-zero key is never a valid mesh key.
class key_mesh {
public:
    constexpr key_mesh() noexcept = default;
    explicit key_mesh(key_span bytes) noexcept;

    // Exactly 64 hex digits of either case (the ClientInfo JSON rule).
    static std::optional<key_mesh> from_hex(std::string_view hex) noexcept;
    // The --mesh-psk-file rule: surrounding ASCII whitespace trimmed, then 64 hex digits.
    static std::optional<key_mesh> from_psk_file(std::string_view contents) noexcept;

    const std::array<std::uint8_t, key_bytes>& bytes() const noexcept { return _bytes; }
    bool is_zero() const noexcept;
    std::array<char, key_hex_chars> hex() const noexcept;

    // Constant-time comparison (libsodium sodium_memcmp).
    bool equals(const key_mesh& other) const noexcept;

private:
    std::array<std::uint8_t, key_bytes> _bytes{};
};

}  // namespace derp

template <>
struct std::hash<derp::node_key> : derp::node_key_hash {};
