// libsodium key handling, NaCl boxes in DERP's layout, and the key-file format; see box.hh.
#include "crypto/box.hh"

#include <sodium.h>

#include <algorithm>

#include "core/assert.hh"
#include "core/go_json.hh"

namespace derp {

static_assert(crypto_box_NONCEBYTES == nonce_bytes);
static_assert(crypto_box_MACBYTES == box_tag_bytes);
static_assert(crypto_box_PUBLICKEYBYTES == key_bytes && crypto_box_SECRETKEYBYTES == key_bytes);

namespace {

constexpr std::string_view private_key_prefix = "privkey:";

}  // namespace

result<void, crypto_error> crypto_init() noexcept {
    // 0 = initialised now, 1 = already initialised, -1 = failure.
    if (sodium_init() < 0) return unexpected(crypto_error::init_failed);
    return {};
}

box_nonce random_nonce() noexcept {
    box_nonce nonce{};
    randombytes_buf(nonce.data(), nonce.size());
    return nonce;
}

private_key clamp_private_key(const private_key& raw) noexcept {
    auto bytes = raw.bytes();
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    return private_key(key_span(bytes));
}

private_key generate_private_key() noexcept {
    std::array<std::uint8_t, key_bytes> bytes{};
    randombytes_buf(bytes.data(), bytes.size());
    const private_key key = clamp_private_key(private_key(key_span(bytes)));
    sodium_memzero(bytes.data(), bytes.size());
    return key;
}

node_key public_key_of(const private_key& key) noexcept {
    std::array<std::uint8_t, key_bytes> pub{};
    const int rc = crypto_scalarmult_base(pub.data(), key.bytes().data());
    DERP_ASSERT(rc == 0);
    return node_key(key_span(pub));
}

std::optional<std::size_t> box_seal(std::span<std::uint8_t> sealed, std::span<const std::uint8_t> plaintext,
                                    const private_key& mine, const node_key& peer,
                                    const box_nonce& nonce) noexcept {
    DERP_ASSERT(sealed.size() == plaintext.size() + box_overhead_bytes);
    std::copy(nonce.begin(), nonce.end(), sealed.begin());
    // crypto_box_easy writes tag || ciphertext; it fails for a low-order peer key.
    if (crypto_box_easy(sealed.data() + nonce_bytes, plaintext.data(), plaintext.size(),
                        nonce.data(), peer.bytes().data(), mine.bytes().data()) != 0) {
        return std::nullopt;
    }
    return sealed.size();
}

std::optional<std::size_t> box_open(std::span<std::uint8_t> plaintext, std::span<const std::uint8_t> sealed,
                                    const private_key& mine, const node_key& peer) noexcept {
    if (sealed.size() < box_overhead_bytes) return std::nullopt;
    DERP_ASSERT(plaintext.size() == sealed.size() - box_overhead_bytes);
    const std::uint8_t* nonce = sealed.data();
    const std::uint8_t* boxed = sealed.data() + nonce_bytes;
    if (crypto_box_open_easy(plaintext.data(), boxed, sealed.size() - nonce_bytes, nonce,
                             peer.bytes().data(), mine.bytes().data()) != 0) {
        return std::nullopt;
    }
    return plaintext.size();
}

sodium_handshake_box::sodium_handshake_box(const private_key& server_private) noexcept
    : _server_private(server_private) {}

sodium_handshake_box::~sodium_handshake_box() = default;

bool sodium_handshake_box::open_from(const node_key& client, std::span<const std::uint8_t> sealed,
                                     std::span<std::uint8_t> plaintext) noexcept {
    return box_open(plaintext, sealed, _server_private, client).has_value();
}

bool sodium_handshake_box::seal_to(const node_key& client, std::span<const std::uint8_t> plaintext,
                                   std::span<std::uint8_t> sealed) noexcept {
    const box_nonce nonce = _fixed_nonce ? *_fixed_nonce : random_nonce();
    return box_seal(sealed, plaintext, _server_private, client, nonce).has_value();
}

std::string format_key_file(const private_key& key) {
    std::array<char, key_hex_chars> hex{};
    format_hex(key.bytes(), hex);
    std::string out = "{\n\t\"PrivateKey\": \"";
    out += private_key_prefix;
    out.append(hex.data(), hex.size());
    out += "\"\n}";
    sodium_memzero(hex.data(), hex.size());
    return out;
}

result<private_key, key_file_error> parse_key_file(std::string_view contents) noexcept {
    static constexpr std::array<std::string_view, 1> fields = {"PrivateKey"};
    private_key key;
    bool bad_key = false;
    auto on_field = [&](std::size_t, const json_value& v) noexcept -> bool {
        if (v.kind == json_kind::null) return true;  // Go: null leaves the key unset
        if (v.kind != json_kind::string || v.string.substr(0, private_key_prefix.size()) != private_key_prefix) {
            bad_key = true;
            return false;
        }
        auto parsed = private_key::from_hex(v.string.substr(private_key_prefix.size()));
        if (!parsed) {
            bad_key = true;
            return false;
        }
        key = *parsed;
        return true;
    };
    if (!decode_json_object(contents, fields, on_field)) {
        return unexpected(bad_key ? key_file_error::bad_private_key : key_file_error::bad_json);
    }
    if (key.is_zero()) return unexpected(key_file_error::missing_key);
    return key;
}

}  // namespace derp
