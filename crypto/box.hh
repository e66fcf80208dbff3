// libsodium for DERP: initialisation, X25519 key generation, the NaCl box with DERP's wire
// layout nonce(24) || tag(16) || ciphertext (spec 1.5), the handshake_box the server handshake
// uses, and derper's key-file text format (spec 4.1; reading and writing the file is the
// caller's). Not here: TLS (later crypto/ files) and anything that does I/O.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/handshake.hh"
#include "core/key.hh"
#include "core/result.hh"

namespace derp {

enum class crypto_error : std::uint8_t {
    init_failed,  // sodium_init() failed (no usable randomness source)
};

// Calls sodium_init(); call once at start-up, before any other function here. Idempotent.
result<void, crypto_error> crypto_init() noexcept;

using box_nonce = std::array<std::uint8_t, nonce_bytes>;
box_nonce random_nonce() noexcept;

// Clamps like Go's key.NewNode: byte0 &= 248; byte31 &= 127; byte31 |= 64.
private_key clamp_private_key(const private_key& raw) noexcept;
private_key generate_private_key() noexcept;  // random, clamped
node_key public_key_of(const private_key& key) noexcept;  // X25519 base-point multiplication

// Seals plaintext from mine to peer into sealed (plaintext.size() + 40 bytes) as
// nonce || tag || ciphertext, returning the bytes written, or nullopt when peer is a low-order
// key (libsodium refuses an all-zero shared secret).
std::optional<std::size_t> box_seal(std::span<std::uint8_t> sealed, std::span<const std::uint8_t> plaintext,
                                    const private_key& mine, const node_key& peer,
                                    const box_nonce& nonce) noexcept;
// Opens nonce || tag || ciphertext from peer into plaintext (sealed.size() - 40 bytes) and
// returns the plaintext size, or nullopt (too short, forged, wrong keys, low-order peer).
std::optional<std::size_t> box_open(std::span<std::uint8_t> plaintext, std::span<const std::uint8_t> sealed,
                                    const private_key& mine, const node_key& peer) noexcept;

// The libsodium handshake_box for a server key. Fresh random nonces, unless a test fixes one.
class sodium_handshake_box final : public handshake_box {
public:
    explicit sodium_handshake_box(const private_key& server_private) noexcept;
    ~sodium_handshake_box() override;

    bool open_from(const node_key& client, std::span<const std::uint8_t> sealed,
                   std::span<std::uint8_t> plaintext) noexcept override;
    bool seal_to(const node_key& client, std::span<const std::uint8_t> plaintext,
                 std::span<std::uint8_t> sealed) noexcept override;

    // Tests only: every later seal uses this nonce (spec 11.2 vectors).
    void fix_nonce_for_tests(const box_nonce& nonce) noexcept { _fixed_nonce = nonce; }

private:
    private_key _server_private;
    std::optional<box_nonce> _fixed_nonce;
};

// The derper config file (spec 4.1):
// {
// \t"PrivateKey": "privkey:<64 lowercase hex digits>"
// }
// (Go's json.MarshalIndent with a tab, no trailing newline.)
std::string format_key_file(const private_key& key);

enum class key_file_error : std::uint8_t {
    bad_json,         // not a JSON object (Go: a decode error)
    bad_private_key,  // PrivateKey is not "privkey:" + 64 hex digits (Go: UnmarshalText error)
    missing_key,      // no PrivateKey (or null, or all zero): derpd refuses to run keyless
};
// Go json.Unmarshal rules: key name case-insensitive, unknown keys ignored.
result<private_key, key_file_error> parse_key_file(std::string_view contents) noexcept;

}  // namespace derp
