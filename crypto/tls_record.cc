// The userspace TLS record layer (crypto/tls_record.hh). Wire formats:
//   TLS 1.3 (RFC 8446 5.2): header {23, 03 03, length} then AEAD(content || type || zeros),
//     nonce = iv XOR seq (left-padded), additional data = the 5-byte header.
//   TLS 1.2 AES-GCM (RFC 5288): header {type, 03 03, length} then an 8-byte explicit nonce
//     (we send the sequence number, as OpenSSL and the kernel do), ciphertext and tag;
//     nonce = salt(4) || explicit(8), additional data = seq(8) || type || 03 03 || plain length.
//   TLS 1.2 ChaCha20-Poly1305 (RFC 7905): no explicit nonce, nonce = iv XOR seq as in 1.3,
//     additional data as in 1.2 GCM.
#include "crypto/tls_record.hh"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

namespace derp::tls {

namespace {

constexpr std::size_t tag_bytes = 16;
constexpr std::size_t explicit_nonce_bytes = 8;
constexpr std::uint8_t type_change_cipher_spec = 20;
constexpr std::uint8_t type_alert = 21;
constexpr std::uint8_t type_handshake = 22;
constexpr std::uint8_t type_application_data = 23;
constexpr std::uint8_t handshake_key_update = 24;
constexpr std::uint16_t tls12 = 0x0303, tls13 = 0x0304;
// Room kept in front of a sealed batch for a KeyUpdate of our own (header, inner type, tag and
// the 5-byte message).
constexpr std::size_t key_update_reserve = record_header_bytes + 5 + 1 + tag_bytes;
// How far either side of the expected sequence number a failed record is tried again, to tell
// a replayed or dropped record from a forged one (only ever on the way to closing).
constexpr std::uint64_t sequence_probe_window = 4;

void put_be64(std::uint8_t* out, std::uint64_t value) {
    for (int i = 7; i >= 0; --i) {
        out[i] = static_cast<std::uint8_t>(value);
        value >>= 8;
    }
}

const EVP_CIPHER* evp_of(aead_cipher c) {
    // Fetched once: an implicit fetch on every init costs microseconds.
    static EVP_CIPHER* aes128 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
    static EVP_CIPHER* aes256 = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    static EVP_CIPHER* chacha = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
    switch (c) {
        case aead_cipher::aes_128_gcm: return aes128;
        case aead_cipher::aes_256_gcm: return aes256;
        case aead_cipher::chacha20_poly1305: return chacha;
    }
    return nullptr;
}

// Keyed AEAD contexts per thread, direct-mapped by key id. An entry is re-keyed when another
// key takes its place; ids are never reused, so a stale entry can never be taken for a new
// key that happens to sit at the same address. 64 entries cover the connections that are
// busy at once on a shard; a miss costs one key schedule (bench/aead_bench "record" keying:
// 150-400 ns).
std::atomic<std::uint64_t> next_key_id{1};
constexpr std::size_t context_cache_entries = 64;
struct context_cache {
    struct entry {
        std::uint64_t id = 0;
        EVP_CIPHER_CTX* ctx = nullptr;
        const EVP_CIPHER* cipher = nullptr;
    };
    std::array<entry, context_cache_entries> entries;
    ~context_cache() {
        for (auto& e : entries) EVP_CIPHER_CTX_free(e.ctx);
    }
    entry& slot(std::uint64_t id) { return entries[(id * 0x9e3779b97f4a7c15ull) >> 58]; }
};
thread_local context_cache contexts;

}  // namespace

std::string_view to_string(aead_cipher cipher) noexcept {
    switch (cipher) {
        case aead_cipher::aes_128_gcm: return "AES-128-GCM";
        case aead_cipher::aes_256_gcm: return "AES-256-GCM";
        case aead_cipher::chacha20_poly1305: return "ChaCha20-Poly1305";
    }
    return "?";
}

std::string_view to_string(record_close reason) noexcept {
    switch (reason) {
        case record_close::none: return "none";
        case record_close::close_notify: return "close_notify";
        case record_close::bad_tag: return "bad_tag";
        case record_close::wrong_sequence: return "wrong_sequence";
        case record_close::oversized: return "oversized";
        case record_close::truncated: return "truncated";
        case record_close::bad_header: return "bad_header";
        case record_close::unknown_content_type: return "unknown_content_type";
        case record_close::alert: return "alert";
        case record_close::renegotiation: return "renegotiation";
        case record_close::unexpected_handshake: return "unexpected_handshake";
        case record_close::bad_key_update: return "bad_key_update";
        case record_close::malformed_control: return "malformed_control";
        case record_close::internal: return "internal";
    }
    return "?";
}

std::uint8_t alert_for(record_close reason) noexcept {
    switch (reason) {
        case record_close::bad_tag:
        case record_close::wrong_sequence: return 20;  // bad_record_mac
        case record_close::oversized: return 22;       // record_overflow
        case record_close::truncated:
        case record_close::malformed_control: return 50;  // decode_error
        case record_close::bad_header:
        case record_close::unknown_content_type:
        case record_close::unexpected_handshake: return 10;  // unexpected_message
        case record_close::bad_key_update: return 47;        // illegal_parameter
        case record_close::renegotiation: return 100;        // no_renegotiation
        case record_close::internal: return 80;              // internal_error
        case record_close::none:
        case record_close::close_notify:
        case record_close::alert: return 0;  // nothing, or the peer is closing already
    }
    return 0;
}

bool hkdf_expand_label(const char* digest, std::span<const std::uint8_t> secret, std::string_view label,
                       std::span<std::uint8_t> out) noexcept {
    // HkdfLabel: uint16 length, opaque label<7..255> = "tls13 " + label, opaque context<0..255>.
    std::array<std::uint8_t, 2 + 1 + 255 + 1> info{};
    const std::string_view prefix = "tls13 ";
    if (prefix.size() + label.size() > 255) return false;
    std::size_t n = 0;
    info[n++] = static_cast<std::uint8_t>(out.size() >> 8);
    info[n++] = static_cast<std::uint8_t>(out.size());
    info[n++] = static_cast<std::uint8_t>(prefix.size() + label.size());
    std::memcpy(info.data() + n, prefix.data(), prefix.size());
    n += prefix.size();
    std::memcpy(info.data() + n, label.data(), label.size());
    n += label.size();
    info[n++] = 0;
    static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    EVP_KDF_CTX* kctx = kdf == nullptr ? nullptr : EVP_KDF_CTX_new(kdf);
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::uint8_t*>(secret.data()), secret.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), n),
        OSSL_PARAM_construct_end(),
    };
    const bool ok = kctx != nullptr && EVP_KDF_derive(kctx, out.data(), out.size(), params) == 1;
    EVP_KDF_CTX_free(kctx);
    return ok;
}

result<std::unique_ptr<record_layer>, std::string> record_layer::make(const record_keys& keys) {
    std::unique_ptr<record_layer> r(new record_layer());
    if (keys.version != tls12 && keys.version != tls13) return unexpected(std::string("not TLS 1.2 or 1.3"));
    r->_version = keys.version;
    r->_cipher = keys.cipher;
    r->_sha384 = keys.sha384;
    r->_key_bytes = keys.cipher == aead_cipher::aes_128_gcm ? 16 : 32;
    const bool salt_only = keys.version == tls12 && keys.cipher != aead_cipher::chacha20_poly1305;
    const std::size_t iv_bytes = salt_only ? 4 : 12;
    if (keys.tx_key.size() != r->_key_bytes || keys.rx_key.size() != r->_key_bytes)
        return unexpected(std::string("key length does not match the cipher"));
    if (keys.tx_iv.size() != iv_bytes || keys.rx_iv.size() != iv_bytes)
        return unexpected(std::string("IV length does not match the cipher and version"));
    if (keys.version == tls13) {
        r->_secret_bytes = keys.sha384 ? 48 : 32;
        if (keys.tx_secret.size() != r->_secret_bytes || keys.rx_secret.size() != r->_secret_bytes)
            return unexpected(std::string("TLS 1.3 needs both traffic secrets (for KeyUpdate)"));
        std::copy(keys.tx_secret.begin(), keys.tx_secret.end(), r->_tx.secret.begin());
        std::copy(keys.rx_secret.begin(), keys.rx_secret.end(), r->_rx.secret.begin());
    }
    std::copy(keys.tx_iv.begin(), keys.tx_iv.end(), r->_tx.iv.begin());
    std::copy(keys.rx_iv.begin(), keys.rx_iv.end(), r->_rx.iv.begin());
    std::copy(keys.tx_key.begin(), keys.tx_key.end(), r->_tx.key.begin());
    std::copy(keys.rx_key.begin(), keys.rx_key.end(), r->_rx.key.begin());
    r->_tx.id = next_key_id.fetch_add(1, std::memory_order_relaxed);
    r->_rx.id = next_key_id.fetch_add(1, std::memory_order_relaxed);
    r->_tx.seq = keys.tx_seq;
    r->_rx.seq = keys.rx_seq;
    if (r->context(r->_tx) == nullptr || r->context(r->_rx) == nullptr)
        return unexpected(std::string("the AEAD context could not be made"));
    return r;
}

record_layer::~record_layer() {
    for (direction* d : {&_tx, &_rx}) {
        // This thread's cached key schedule goes with the key (EVP_CIPHER_CTX_reset cleanses).
        auto& e = contexts.slot(d->id);
        if (e.id == d->id) {
            EVP_CIPHER_CTX_reset(e.ctx);
            e.id = 0;
            e.cipher = nullptr;
        }
        wipe_secret(d->key.data(), d->key.size());
        wipe_secret(d->secret.data(), d->secret.size());
        wipe_secret(d->iv.data(), d->iv.size());
    }
}

EVP_CIPHER_CTX* record_layer::context(const direction& d) noexcept {
    auto& e = contexts.slot(d.id);
    if (e.id == d.id) return e.ctx;
    if (e.ctx == nullptr && (e.ctx = EVP_CIPHER_CTX_new()) == nullptr) return nullptr;
    const EVP_CIPHER* cipher = evp_of(_cipher);
    // Same cipher: only the key schedule changes; the provider's context is kept.
    const bool ok = cipher != nullptr &&
                    EVP_CipherInit_ex(e.ctx, e.cipher == cipher ? nullptr : cipher, nullptr, d.key.data(), nullptr, 1) == 1;
    e.id = ok ? d.id : 0;
    e.cipher = ok ? cipher : nullptr;
    return ok ? e.ctx : nullptr;
}

std::size_t record_layer::overhead() const noexcept {
    if (_version == tls13) return record_header_bytes + 1 + tag_bytes;
    if (_cipher == aead_cipher::chacha20_poly1305) return record_header_bytes + tag_bytes;
    return record_header_bytes + explicit_nonce_bytes + tag_bytes;
}

std::size_t record_layer::body_offset() const noexcept {
    const bool explicit_nonce = _version == tls12 && _cipher != aead_cipher::chacha20_poly1305;
    return record_header_bytes + (explicit_nonce ? explicit_nonce_bytes : 0);
}

std::size_t record_layer::sealed_bytes(std::size_t plain_bytes) const noexcept {
    if (plain_bytes == 0) return 0;
    const std::size_t records = (plain_bytes + record_plaintext_max - 1) / record_plaintext_max;
    return plain_bytes + records * overhead() + (_version == tls13 ? key_update_reserve : 0);
}

std::size_t record_layer::plain_fitting(std::size_t out_bytes) const noexcept {
    const std::size_t reserve = _version == tls13 ? key_update_reserve : 0;
    if (out_bytes <= reserve) return 0;
    const std::size_t room = out_bytes - reserve;
    const std::size_t full = room / (record_plaintext_max + overhead());
    const std::size_t rest = room - full * (record_plaintext_max + overhead());
    return full * record_plaintext_max + (rest > overhead() ? rest - overhead() : 0);
}

void record_layer::nonce_of(const direction& d, std::uint64_t seq, const std::uint8_t* explicit_nonce,
                            std::uint8_t* nonce) const noexcept {
    if (explicit_nonce != nullptr) {
        std::memcpy(nonce, d.iv.data(), 4);
        std::memcpy(nonce + 4, explicit_nonce, explicit_nonce_bytes);
        return;
    }
    std::memcpy(nonce, d.iv.data(), 12);
    std::uint8_t be[8];
    put_be64(be, seq);
    for (int i = 0; i < 8; ++i) nonce[4 + i] ^= be[i];
}

std::size_t record_layer::seal_typed(std::uint8_t type, std::span<const std::uint8_t> plain, std::uint8_t* out,
                                     std::size_t padding_bytes) noexcept {
    return seal_record(type, plain, out, _version == tls13 ? padding_bytes : 0);
}

std::size_t record_layer::seal_record(std::uint8_t type, std::span<const std::uint8_t> plain, std::uint8_t* out,
                                      std::size_t padding_bytes) noexcept {
    const bool tls13_record = _version == tls13;
    const std::size_t offset = body_offset();
    const std::size_t length =
        offset - record_header_bytes + plain.size() + (tls13_record ? 1 + padding_bytes : 0) + tag_bytes;
    out[0] = tls13_record ? type_application_data : type;
    out[1] = 3;
    out[2] = 3;
    out[3] = static_cast<std::uint8_t>(length >> 8);
    out[4] = static_cast<std::uint8_t>(length);
    std::uint8_t nonce[12];
    std::uint8_t aad[13];
    std::size_t aad_bytes = record_header_bytes;
    if (tls13_record) {
        std::memcpy(aad, out, record_header_bytes);
        nonce_of(_tx, _tx.seq, nullptr, nonce);
    } else {
        put_be64(aad, _tx.seq);
        aad[8] = type;
        aad[9] = 3;
        aad[10] = 3;
        aad[11] = static_cast<std::uint8_t>(plain.size() >> 8);
        aad[12] = static_cast<std::uint8_t>(plain.size());
        aad_bytes = 13;
        if (offset > record_header_bytes) {
            put_be64(out + record_header_bytes, _tx.seq);
            nonce_of(_tx, _tx.seq, out + record_header_bytes, nonce);
        } else {
            nonce_of(_tx, _tx.seq, nullptr, nonce);
        }
    }
    int n = 0;
    std::uint8_t* body = out + offset;
    EVP_CIPHER_CTX* ctx = context(_tx);
    bool ok = ctx != nullptr && EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) == 1 &&
              EVP_EncryptUpdate(ctx, nullptr, &n, aad, static_cast<int>(aad_bytes)) == 1;
    std::size_t written = 0;
    if (ok && !plain.empty()) {
        ok = EVP_EncryptUpdate(ctx, body, &n, plain.data(), static_cast<int>(plain.size())) == 1;
        written += static_cast<std::size_t>(n);
    }
    if (ok && tls13_record) {
        ok = EVP_EncryptUpdate(ctx, body + written, &n, &type, 1) == 1;
        written += static_cast<std::size_t>(n);
        static constexpr std::array<std::uint8_t, 256> zeros{};
        for (std::size_t left = padding_bytes; ok && left > 0;) {
            const std::size_t chunk = std::min(left, zeros.size());
            ok = EVP_EncryptUpdate(ctx, body + written, &n, zeros.data(), static_cast<int>(chunk)) == 1;
            written += static_cast<std::size_t>(n);
            left -= chunk;
        }
    }
    ok = ok && EVP_EncryptFinal_ex(ctx, body + written, &n) == 1;
    written += static_cast<std::size_t>(n);
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, static_cast<int>(tag_bytes), body + written) == 1;
    if (!ok) {
        _closed = record_close::internal;
        return 0;
    }
    ++_tx.seq;
    return record_header_bytes + length;
}

std::size_t record_layer::seal(std::span<const std::uint8_t> plain, std::span<std::uint8_t> out) noexcept {
    if (_closed != record_close::none && _closed != record_close::close_notify) return 0;
    if (plain.empty() || out.size() < sealed_bytes(plain.size())) return 0;
    std::size_t written = 0;
    const std::size_t records = (plain.size() + record_plaintext_max - 1) / record_plaintext_max;
    if (_version == tls13 && _cipher != aead_cipher::chacha20_poly1305 && _tx.seq + records > tx_records_per_key) {
        // Our own KeyUpdate, in front of the records it protects (RFC 8446 5.5).
        std::string update;
        if (!update_tx_keys(false, update)) return 0;
        std::memcpy(out.data(), update.data(), update.size());
        written = update.size();
    }
    for (std::size_t done = 0; done < plain.size();) {
        const std::size_t n = std::min(record_plaintext_max, plain.size() - done);
        const std::size_t sealed = seal_record(type_application_data, plain.subspan(done, n), out.data() + written);
        if (sealed == 0) return 0;
        written += sealed;
        done += n;
    }
    return written;
}

void record_layer::seal_alert(std::uint8_t level, std::uint8_t description, std::string& to_send) noexcept {
    const std::uint8_t body[2] = {level, description};
    const std::size_t before = to_send.size();
    to_send.resize(before + overhead() + sizeof body);
    const std::size_t n = seal_record(type_alert, body, reinterpret_cast<std::uint8_t*>(to_send.data()) + before);
    to_send.resize(before + n);
}

bool record_layer::rekey(direction& d) noexcept {
    // The next traffic secret (RFC 8446 7.2), then its key and IV (7.3); the sequence restarts.
    const char* digest = _sha384 ? "SHA384" : "SHA256";
    std::array<std::uint8_t, 48> next{};
    std::array<std::uint8_t, 32> key{};
    const std::span<const std::uint8_t> current(d.secret.data(), _secret_bytes);
    const bool ok =
        hkdf_expand_label(digest, current, "traffic upd", std::span(next.data(), _secret_bytes)) &&
        hkdf_expand_label(digest, std::span(next.data(), _secret_bytes), "key", std::span(key.data(), _key_bytes)) &&
        hkdf_expand_label(digest, std::span(next.data(), _secret_bytes), "iv", d.iv);
    d.secret = next;
    d.key = key;
    d.id = next_key_id.fetch_add(1, std::memory_order_relaxed);  // the cached schedule is the old key's
    d.seq = 0;
    wipe_secret(next.data(), next.size());
    wipe_secret(key.data(), key.size());
    return ok;
}

bool record_layer::update_tx_keys(bool request_peer_update, std::string& to_send) noexcept {
    if (_version != tls13 || (_closed != record_close::none && _closed != record_close::close_notify)) return false;
    // KeyUpdate: msg_type 24, uint24 length 1, request_update.
    const std::uint8_t message[5] = {handshake_key_update, 0, 0, 1, request_peer_update ? std::uint8_t{1} : std::uint8_t{0}};
    const std::size_t before = to_send.size();
    to_send.resize(before + overhead() + sizeof message);
    const std::size_t n = seal_record(type_handshake, message, reinterpret_cast<std::uint8_t*>(to_send.data()) + before);
    to_send.resize(before + n);
    if (n == 0 || !rekey(_tx)) {
        _closed = record_close::internal;
        return false;
    }
    ++_tx_updates;
    return true;
}

opened record_layer::fail(record_close reason, std::string& to_send) noexcept {
    _closed = reason;
    // no_renegotiation is a warning by definition (RFC 5246 7.2.2); the rest are fatal.
    if (const std::uint8_t alert = alert_for(reason); alert != 0)
        seal_alert(reason == record_close::renegotiation ? 1 : 2, alert, to_send);
    return opened{reason, 0, 0, 0};
}

bool record_layer::decrypt(std::uint64_t seq, std::span<const std::uint8_t> header, std::span<const std::uint8_t> body,
                           std::uint8_t* out, std::size_t plain_bytes) noexcept {
    std::uint8_t nonce[12];
    std::uint8_t aad[13];
    std::size_t aad_bytes = record_header_bytes;
    const std::size_t explicit_bytes = body_offset() - record_header_bytes;
    if (_version == tls13) {
        std::memcpy(aad, header.data(), record_header_bytes);
        nonce_of(_rx, seq, nullptr, nonce);
    } else {
        put_be64(aad, seq);
        aad[8] = header[0];
        aad[9] = header[1];
        aad[10] = header[2];
        aad[11] = static_cast<std::uint8_t>(plain_bytes >> 8);
        aad[12] = static_cast<std::uint8_t>(plain_bytes);
        aad_bytes = 13;
        nonce_of(_rx, seq, explicit_bytes > 0 ? body.data() : nullptr, nonce);
    }
    const std::uint8_t* cipher = body.data() + explicit_bytes;
    int n = 0;
    EVP_CIPHER_CTX* ctx = context(_rx);
    bool ok = ctx != nullptr && EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) == 1 &&
              EVP_DecryptUpdate(ctx, nullptr, &n, aad, static_cast<int>(aad_bytes)) == 1;
    if (ok && plain_bytes > 0) ok = EVP_DecryptUpdate(ctx, out, &n, cipher, static_cast<int>(plain_bytes)) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, static_cast<int>(tag_bytes),
                                   const_cast<std::uint8_t*>(cipher + plain_bytes)) == 1;
    return ok && EVP_DecryptFinal_ex(ctx, out + plain_bytes, &n) == 1;
}

opened record_layer::open(std::span<const std::uint8_t> in, std::uint8_t* out, std::string& to_send) noexcept {
    return open_impl(in, out, false, to_send);
}

opened record_layer::open_in_place(std::span<std::uint8_t> in, std::string& to_send) noexcept {
    return open_impl(in, in.data() + body_offset(), true, to_send);
}

opened record_layer::open_impl(std::span<const std::uint8_t> in, std::uint8_t* out, bool in_place,
                               std::string& to_send) noexcept {
    if (_closed != record_close::none) return opened{_closed, 0, 0, 0};
    if (in.size() < record_header_bytes) return {};
    const std::uint8_t type = in[0];
    const std::size_t length = std::size_t{in[3]} << 8 | in[4];
    // Everything the header tells is judged before the body arrives.
    if (in[1] != 3 || in[2] != 3) return fail(record_close::bad_header, to_send);
    const bool tls13_record = _version == tls13;
    if (tls13_record ? type != type_application_data
                     : type != type_application_data && type != type_alert && type != type_handshake)
        return fail(record_close::unknown_content_type, to_send);
    const std::size_t explicit_bytes = body_offset() - record_header_bytes;
    // RFC 8446 5.2: at most 2^14 + 256 bytes of ciphertext, and the inner plaintext (content,
    // type, padding) at most 2^14 + 1. RFC 5246 6.2.3: at most 2^14 + 2048, the plaintext 2^14.
    const std::size_t length_max = tls13_record ? record_plaintext_max + 256 : record_plaintext_max + 2048;
    if (length > length_max) return fail(record_close::oversized, to_send);
    if (length < explicit_bytes + tag_bytes + (tls13_record ? 1 : 0)) return fail(record_close::truncated, to_send);
    const std::size_t plain_bytes = length - explicit_bytes - tag_bytes;
    if (plain_bytes > record_plaintext_max + (tls13_record ? 1 : 0)) return fail(record_close::oversized, to_send);
    if (in.size() < record_header_bytes + length) return {};
    const auto header = in.first(record_header_bytes);
    const auto body = in.subspan(record_header_bytes, length);
    if (!decrypt(_rx.seq, header, body, out, plain_bytes)) {
        // Closing anyway: find out whether the record is genuine under a nearby sequence
        // number (replayed, reordered, dropped) or not at all. In place, the failed attempt
        // overwrote the ciphertext with its XOR against the keystream: the same keystream
        // gives it back.
        auto* mutable_cipher = const_cast<std::uint8_t*>(body.data() + explicit_bytes);
        std::vector<std::uint8_t> scratch;
        std::uint8_t* trial = out;
        if (in_place) {
            std::uint8_t nonce[12];
            int n = 0;
            nonce_of(_rx, _rx.seq, explicit_bytes > 0 ? body.data() : nullptr, nonce);
            EVP_CIPHER_CTX* ctx = context(_rx);
            if (ctx == nullptr || EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce) != 1 ||
                (plain_bytes > 0 &&
                 EVP_EncryptUpdate(ctx, mutable_cipher, &n, mutable_cipher, static_cast<int>(plain_bytes)) != 1))
                return fail(record_close::bad_tag, to_send);
            scratch.resize(plain_bytes + 1);
            trial = scratch.data();
        }
        const std::uint64_t low = _rx.seq > sequence_probe_window ? _rx.seq - sequence_probe_window : 0;
        for (std::uint64_t seq = low; seq <= _rx.seq + sequence_probe_window; ++seq)
            if (seq != _rx.seq && decrypt(seq, header, body, trial, plain_bytes))
                return fail(record_close::wrong_sequence, to_send);
        return fail(record_close::bad_tag, to_send);
    }
    ++_rx.seq;
    const std::size_t consumed = record_header_bytes + length;
    std::size_t content_bytes = plain_bytes;
    std::uint8_t inner_type = type;
    if (tls13_record) {
        // The inner content type is the last non-zero byte; zeros after it are padding.
        while (content_bytes > 0 && out[content_bytes - 1] == 0) --content_bytes;
        if (content_bytes == 0) return fail(record_close::unknown_content_type, to_send);
        inner_type = out[--content_bytes];
        if (content_bytes > record_plaintext_max) return fail(record_close::oversized, to_send);
    }
    if (inner_type == type_application_data) return opened{record_close::none, consumed, content_bytes, 0};
    opened result = control(inner_type, std::span<const std::uint8_t>(out, content_bytes), to_send);
    result.consumed = consumed;
    return result;
}

opened record_layer::control(std::uint8_t type, std::span<const std::uint8_t> body, std::string& to_send) noexcept {
    if (type == type_alert) {
        if (body.size() != 2) return fail(record_close::malformed_control, to_send);
        _closed = body[1] == 0 ? record_close::close_notify : record_close::alert;
        return opened{_closed, 0, 0, body[1]};
    }
    if (type == type_handshake && _version == tls12) return fail(record_close::renegotiation, to_send);
    if (type != type_handshake) {
        (void)type_change_cipher_spec;  // a 1.3 record hiding a ChangeCipherSpec is unexpected too
        return fail(record_close::unknown_content_type, to_send);
    }
    // TLS 1.3 post-handshake messages: only KeyUpdate (a server takes no NewSessionTicket and
    // asks for no certificate). Each message whole inside this record.
    if (body.empty()) return fail(record_close::malformed_control, to_send);
    for (std::size_t i = 0; i < body.size();) {
        if (body.size() - i < 4) return fail(record_close::malformed_control, to_send);
        const std::size_t length = std::size_t{body[i + 1]} << 16 | std::size_t{body[i + 2]} << 8 | body[i + 3];
        if (body.size() - i - 4 < length) return fail(record_close::malformed_control, to_send);
        if (body[i] != handshake_key_update) return fail(record_close::unexpected_handshake, to_send);
        // RFC 8446 5.1: a KeyUpdate ends its record (the keys change right after it).
        if (length != 1 || body[i + 4] > 1 || i + 5 != body.size()) return fail(record_close::bad_key_update, to_send);
        if (!rekey(_rx)) return fail(record_close::internal, to_send);
        ++_rx_updates;
        // update_requested: ours goes out before any more application data (RFC 8446 4.6.3).
        if (body[i + 4] == 1 && !update_tx_keys(false, to_send)) return fail(record_close::internal, to_send);
        i += 5;
    }
    return opened{record_close::none, 0, 0, 0};
}

}  // namespace derp::tls
