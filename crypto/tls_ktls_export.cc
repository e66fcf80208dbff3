// kTLS key export (crypto/tls.hh session::ktls_export): the traffic keys, IVs and record
// sequence numbers of an established session, derived the way the kernel's TLS module wants
// them (RFC 8446 7.3 for TLS 1.3, RFC 5246 6.3 for TLS 1.2), from the secrets the key-log and
// message callbacks captured (crypto/tls_internal.hh); for a wolfSSL session, from the keys it
// ended its handshake with (crypto/tls_wolfssl.cc).
#include "crypto/ktls.hh"
#include "crypto/tls.hh"
#include "crypto/tls_internal.hh"
#include "crypto/tls_record.hh"

#include <linux/tls.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>

#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace derp::tls {

namespace {

// HKDF-Expand-Label with an empty context (crypto/tls_record.cc).
bool expand_label(const EVP_MD* md, std::span<const std::uint8_t> secret, std::string_view label,
                  std::span<std::uint8_t> out) {
    return hkdf_expand_label(EVP_MD_get0_name(md), secret, label, out);
}

// The TLS 1.2 key block (RFC 5246 6.3): PRF(master, "key expansion", server_random || client_random).
bool key_block(const EVP_MD* md, std::span<const std::uint8_t> master, std::span<const std::uint8_t> seed,
               std::span<std::uint8_t> out) {
    EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr);
    EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(EVP_MD_get0_name(md)), 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, const_cast<std::uint8_t*>(master.data()), master.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, const_cast<std::uint8_t*>(seed.data()), seed.size()),
        OSSL_PARAM_construct_end(),
    };
    const bool ok = kctx != nullptr && EVP_KDF_derive(kctx, out.data(), out.size(), params) == 1;
    EVP_KDF_CTX_free(kctx);
    return ok;
}

void put_be64(unsigned char* out, std::uint64_t value) {
    for (int i = 7; i >= 0; --i) {
        out[i] = static_cast<unsigned char>(value);
        value >>= 8;
    }
}

// Fills the kernel's crypto_info for one direction.
void fill_direction(ktls_direction& d, std::uint16_t version, aead_cipher cipher, std::span<const std::uint8_t> key,
                    std::span<const std::uint8_t> iv, std::uint64_t seq) {
    auto put = [&d](auto& info) {
        static_assert(sizeof info <= sizeof d.crypto_info);
        std::memcpy(d.crypto_info.data(), &info, sizeof info);
        d.crypto_info_bytes = sizeof info;
        wipe_secret(&info, sizeof info);  // the stack copy of the key
    };
    if (cipher == aead_cipher::chacha20_poly1305) {
        tls12_crypto_info_chacha20_poly1305 info{};
        info.info.version = version;
        info.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
        std::memcpy(info.iv, iv.data(), sizeof info.iv);
        std::memcpy(info.key, key.data(), sizeof info.key);
        put_be64(info.rec_seq, seq);
        put(info);
        return;
    }
    // AES-GCM: the kernel wants the 4-byte salt and an 8-byte IV. In TLS 1.3 that is the
    // 12-byte static IV split in two; in TLS 1.2 the salt is the implicit IV and the 8 bytes
    // are the first explicit nonce the kernel writes (then increments): we use the sequence
    // number, as the explicit nonce only has to be unique.
    auto fill_gcm = [&](auto& info, std::uint16_t cipher_type) {
        info.info.version = version;
        info.info.cipher_type = cipher_type;
        std::memcpy(info.key, key.data(), sizeof info.key);
        std::memcpy(info.salt, iv.data(), sizeof info.salt);
        if (version == TLS_1_3_VERSION) {
            std::memcpy(info.iv, iv.data() + sizeof info.salt, sizeof info.iv);
        } else {
            put_be64(info.iv, seq);
        }
        put_be64(info.rec_seq, seq);
        put(info);
    };
    if (cipher == aead_cipher::aes_128_gcm) {
        tls12_crypto_info_aes_gcm_128 info{};
        fill_gcm(info, TLS_CIPHER_AES_GCM_128);
    } else {
        tls12_crypto_info_aes_gcm_256 info{};
        fill_gcm(info, TLS_CIPHER_AES_GCM_256);
    }
}

aead_cipher cipher_of(int nid) {
    return nid == NID_aes_128_gcm   ? aead_cipher::aes_128_gcm
           : nid == NID_aes_256_gcm ? aead_cipher::aes_256_gcm
                                    : aead_cipher::chacha20_poly1305;
}

}  // namespace

result<ktls_direction, std::string> ktls_direction_of(const record_keys& keys, bool transmit) noexcept {
    const std::size_t key_bytes = keys.cipher == aead_cipher::aes_128_gcm ? 16 : 32;
    const bool salt_only = keys.version == TLS1_2_VERSION && keys.cipher != aead_cipher::chacha20_poly1305;
    const secret_bytes& key = transmit ? keys.tx_key : keys.rx_key;
    const secret_bytes& iv = transmit ? keys.tx_iv : keys.rx_iv;
    if (keys.version != TLS1_2_VERSION && keys.version != TLS1_3_VERSION)
        return unexpected(std::string("not TLS 1.2 or 1.3"));
    if (key.size() != key_bytes) return unexpected(std::string("key length does not match the cipher"));
    if (iv.size() != (salt_only ? 4U : 12U))
        return unexpected(std::string("IV length does not match the cipher and version"));
    ktls_direction d;
    fill_direction(d, keys.version, keys.cipher, key, iv, transmit ? keys.tx_seq : keys.rx_seq);
    return d;
}

std::optional<ktls_keys> session::wolf_ktls_export() const noexcept {
    // The keys wolfSSL ended the handshake with, at the sequence numbers the record layer has
    // reached since (if this session kept one); after a KeyUpdate either way they are stale.
    if (_status != status::open || !_secrets->wolf_keys) return std::nullopt;
    const record_keys& k = *_secrets->wolf_keys;
    const record_layer* records = _secrets->records.get();
    if (records != nullptr && (records->rx_key_updates() != 0 || records->tx_key_updates() != 0)) return std::nullopt;
    ktls_keys keys;
    keys.version = k.version;
    keys.cipher_name = _secrets->wolf_cipher;
    keys.tx_key = k.tx_key;
    keys.tx_iv = k.tx_iv;
    keys.rx_key = k.rx_key;
    keys.rx_iv = k.rx_iv;
    keys.tx_seq = records != nullptr ? records->tx_seq() : k.tx_seq;
    keys.rx_seq = records != nullptr ? records->rx_seq() : k.rx_seq;
    fill_direction(keys.tx, keys.version, k.cipher, keys.tx_key, keys.tx_iv, keys.tx_seq);
    fill_direction(keys.rx, keys.version, k.cipher, keys.rx_key, keys.rx_iv, keys.rx_seq);
    return keys;
}

std::optional<ktls_keys> session::ktls_export() const noexcept {
    if (_secrets->wolf_engine) return wolf_ktls_export();
    if (_ssl == nullptr || _status != status::open || !_ctx->is_server()) return std::nullopt;
    // After a KeyUpdate (either way) the keys below would be the first generation's, and no
    // getter tells the current ones: refuse; the connection keeps userspace records.
    if (_secrets->key_update || !_secrets->tx_epoch_known) return std::nullopt;
    const SSL_CIPHER* cipher = SSL_get_current_cipher(_ssl);
    if (cipher == nullptr) return std::nullopt;
    const int nid = SSL_CIPHER_get_cipher_nid(cipher);
    std::size_t key_bytes = 0;
    if (nid == NID_aes_128_gcm) key_bytes = 16;
    else if (nid == NID_aes_256_gcm || nid == NID_chacha20_poly1305) key_bytes = 32;
    else return std::nullopt;
    const EVP_MD* md = SSL_CIPHER_get_handshake_digest(cipher);
    if (md == nullptr) return std::nullopt;
    ktls_keys keys;
    keys.version = static_cast<std::uint16_t>(SSL_version(_ssl));
    keys.cipher_name = SSL_CIPHER_get_name(cipher);
    secret_bytes client_key(key_bytes), server_key(key_bytes), client_iv, server_iv;
    // Every record OpenSSL wrote under the server's application keys: its Finished in 1.2, and
    // in either version whatever it wrote by itself since (a no_renegotiation alert, say) or
    // as application data. The kernel must go on from there, or it reuses nonces.
    const std::uint64_t tx_records = _secrets->records_written - _secrets->tx_epoch_start;
    if (keys.version == TLS1_3_VERSION) {
        if (_secrets->client_traffic.empty() || _secrets->server_traffic.empty()) return std::nullopt;
        client_iv.resize(12);
        server_iv.resize(12);
        if (!expand_label(md, _secrets->client_traffic, "key", client_key) ||
            !expand_label(md, _secrets->client_traffic, "iv", client_iv) ||
            !expand_label(md, _secrets->server_traffic, "key", server_key) ||
            !expand_label(md, _secrets->server_traffic, "iv", server_iv))
            return std::nullopt;
        // What the client sent behind its Finished has been counted by the scanner.
        keys.tx_seq = tx_records;
        keys.rx_seq = _records_after_handshake;
    } else if (keys.version == TLS1_2_VERSION) {
        const std::size_t iv_bytes = nid == NID_chacha20_poly1305 ? 12 : 4;
        std::array<std::uint8_t, 48> master{};
        const std::size_t master_bytes = SSL_SESSION_get_master_key(SSL_get_session(_ssl), master.data(), master.size());
        std::array<std::uint8_t, 13 + 64> seed{};
        std::memcpy(seed.data(), "key expansion", 13);
        SSL_get_server_random(_ssl, seed.data() + 13, 32);
        SSL_get_client_random(_ssl, seed.data() + 45, 32);
        secret_bytes block(2 * key_bytes + 2 * iv_bytes);
        const bool derived = key_block(md, std::span(master.data(), master_bytes), seed, block);
        wipe_secret(master.data(), master.size());
        if (!derived) return std::nullopt;
        std::copy_n(block.begin(), key_bytes, client_key.begin());
        std::copy_n(block.begin() + static_cast<std::ptrdiff_t>(key_bytes), key_bytes, server_key.begin());
        client_iv.assign(block.begin() + static_cast<std::ptrdiff_t>(2 * key_bytes),
                         block.begin() + static_cast<std::ptrdiff_t>(2 * key_bytes + iv_bytes));
        server_iv.assign(block.begin() + static_cast<std::ptrdiff_t>(2 * key_bytes + iv_bytes), block.end());
        // The client's Finished was record 0 under its new keys.
        keys.tx_seq = tx_records;
        keys.rx_seq = 1 + _records_after_handshake;
    } else {
        return std::nullopt;
    }
    keys.tx_key = server_key;
    keys.tx_iv = server_iv;
    keys.rx_key = client_key;
    keys.rx_iv = client_iv;
    fill_direction(keys.tx, keys.version, cipher_of(nid), server_key, server_iv, keys.tx_seq);
    fill_direction(keys.rx, keys.version, cipher_of(nid), client_key, client_iv, keys.rx_seq);
    return keys;
}

std::optional<record_keys> session::record_export() const noexcept {
    if (_secrets->wolf_engine) {
        // Taken at the handshake's end (hand_off_records), before any record went either way.
        if (_status != status::open || !_secrets->wolf_keys || _secrets->records != nullptr) return std::nullopt;
        return *_secrets->wolf_keys;
    }
    auto k = ktls_export();
    if (!k) return std::nullopt;
    const SSL_CIPHER* cipher = SSL_get_current_cipher(_ssl);
    const int nid = SSL_CIPHER_get_cipher_nid(cipher);
    const EVP_MD* md = SSL_CIPHER_get_handshake_digest(cipher);
    record_keys r;
    r.version = k->version;
    r.cipher = cipher_of(nid);
    r.sha384 = md != nullptr && EVP_MD_get_size(md) == 48;
    r.tx_key = std::move(k->tx_key);
    r.tx_iv = std::move(k->tx_iv);
    r.rx_key = std::move(k->rx_key);
    r.rx_iv = std::move(k->rx_iv);
    r.tx_seq = k->tx_seq;
    r.rx_seq = k->rx_seq;
    if (r.version == TLS1_3_VERSION) {
        r.tx_secret = _secrets->server_traffic;
        r.rx_secret = _secrets->client_traffic;
    }
    return r;
}

}  // namespace derp::tls
