// The userspace TLS record layer: the twin of kTLS for kernels without it. It starts from the
// material the kernel would get (traffic keys, IVs and sequence numbers exported at the record
// boundary after the handshake, crypto/tls_ktls_export.cc) and seals and opens TLS 1.3 and 1.2
// records (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, OpenSSL's EVP: bench/aead_bench
// measured it 1.5-3x faster than libsodium from 1400 bytes up, and libsodium has no
// AES-128-GCM). It handles what kTLS hands to userspace: alerts, close_notify, TLS 1.3 KeyUpdate
// both ways, the TLS 1.3 inner content type and padding, and refuses a TLS 1.2 renegotiation.
// Pure: bytes in, verdict out, no I/O; the SSL object that made the keys is gone by then.
// A layer holds raw keys only (about 250 bytes): the keyed AEAD contexts (about 1 KB each
// for AES-GCM) live in a small cache per thread (tls_record.cc), so that an idle connection
// costs no key schedule and a busy one re-keys only when others pushed it out.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/result.hh"
#include "crypto/tls.hh"

struct evp_cipher_ctx_st;

namespace derp::tls {

enum class aead_cipher : std::uint8_t { aes_128_gcm, aes_256_gcm, chacha20_poly1305 };
std::string_view to_string(aead_cipher cipher) noexcept;

// Both directions at the record boundary where the handshake library stopped.
struct record_keys {
    std::uint16_t version = 0;  // 0x0303 TLS 1.2, 0x0304 TLS 1.3
    aead_cipher cipher = aead_cipher::aes_128_gcm;
    bool sha384 = false;        // TLS 1.3: the suite's hash (TLS_AES_256_GCM_SHA384), for KeyUpdate
    // Keys (16 or 32 bytes); IVs of 12 bytes (TLS 1.3, ChaCha20 in 1.2) or the 4-byte salt
    // (AES-GCM in 1.2, whose other 8 nonce bytes travel in each record).
    secret_bytes tx_key, tx_iv, rx_key, rx_iv;
    // TLS 1.3: the current traffic secrets, from which a KeyUpdate derives the next ones.
    secret_bytes tx_secret, rx_secret;
    std::uint64_t tx_seq = 0, rx_seq = 0;  // the next record's sequence number each way
};

// Why a connection's records end. Each is a distinct, counted close.
enum class record_close : std::uint8_t {
    none,
    close_notify,          // the peer's orderly end
    bad_tag,               // a record did not authenticate (tampered, or the wrong keys)
    wrong_sequence,        // it authenticates under a nearby sequence number: replayed, reordered or dropped
    oversized,             // longer than the version allows (record_overflow)
    truncated,             // too short to hold its tag, or the connection ended mid-record
    bad_header,            // a legacy record version other than 0x0303
    unknown_content_type,  // an outer or inner content type this state does not take
    alert,                 // an alert other than close_notify, mid-stream
    renegotiation,         // TLS 1.2: a handshake record after the handshake
    unexpected_handshake,  // TLS 1.3: a handshake message other than a well-formed KeyUpdate
    bad_key_update,        // a KeyUpdate whose request_update is neither 0 nor 1, or one not at a record's end
    malformed_control,     // an alert that is not 2 bytes, an empty or fragmented handshake message
    internal,              // the AEAD library failed
};
inline constexpr std::size_t record_close_count = 14;
std::string_view to_string(record_close reason) noexcept;

inline constexpr std::size_t record_header_bytes = 5;
inline constexpr std::size_t record_plaintext_max = 16384;  // 2^14 (RFC 8446 5.1, RFC 5246 6.2.1)
// Room an opened record's plaintext may need (a TLS 1.3 inner plaintext is at most 2^14 + 1).
inline constexpr std::size_t record_open_room = record_plaintext_max + 256;

struct opened {
    record_close close = record_close::none;  // not none: the connection ends (after to_send)
    std::size_t consumed = 0;     // bytes of the input this record took; 0 and none = need more bytes
    std::size_t plain_bytes = 0;  // application data written to the output (0 for control records)
    std::uint8_t alert = 0;       // close == alert: the peer's alert description
};

class record_layer {
public:
    static result<std::unique_ptr<record_layer>, std::string> make(const record_keys& keys);
    ~record_layer();
    record_layer(const record_layer&) = delete;
    record_layer& operator=(const record_layer&) = delete;

    // Opens the first record of `in` (a header and as much as has arrived). Application data
    // goes to `out`, which has record_open_room bytes (it may be the record's own body: in
    // place). What must be sent in answer (the KeyUpdate update_requested asks for, a fatal
    // alert on a bad record) is appended to `to_send`.
    opened open(std::span<const std::uint8_t> in, std::uint8_t* out, std::string& to_send) noexcept;
    // The same, decrypting in place: the plaintext starts at in.data() + body_offset().
    opened open_in_place(std::span<std::uint8_t> in, std::string& to_send) noexcept;
    std::size_t body_offset() const noexcept;

    // Seals `plain` as application data records of up to 16 KiB straight into `out`, which
    // must hold sealed_bytes(plain.size()) (plain_fitting() says how much fits). A TLS 1.3
    // KeyUpdate of our own goes in front when the AES-GCM usage limit is reached. Returns the
    // bytes written.
    std::size_t seal(std::span<const std::uint8_t> plain, std::span<std::uint8_t> out) noexcept;
    std::size_t sealed_bytes(std::size_t plain_bytes) const noexcept;
    std::size_t plain_fitting(std::size_t out_bytes) const noexcept;
    // One record of content type `type` with `plain` as its content and, in TLS 1.3,
    // `padding_bytes` zeros after the inner type; returns its size (overhead() + plain +
    // padding). For tests and fuzz seeds: derpd itself seals through seal() and seal_alert().
    std::size_t seal_typed(std::uint8_t type, std::span<const std::uint8_t> plain, std::uint8_t* out,
                           std::size_t padding_bytes = 0) noexcept;
    std::size_t overhead() const noexcept;  // bytes a record adds to its content (no padding)
    // An alert record (level 1 warning, 2 fatal; close_notify is 1, 0) appended to `to_send`.
    void seal_alert(std::uint8_t level, std::uint8_t description, std::string& to_send) noexcept;
    // TLS 1.3: our KeyUpdate (asking the peer to update too, if so) appended to `to_send`; TX
    // switches to the next traffic secret. False for TLS 1.2 or on failure.
    bool update_tx_keys(bool request_peer_update, std::string& to_send) noexcept;

    std::uint16_t version() const noexcept { return _version; }
    aead_cipher cipher() const noexcept { return _cipher; }
    std::uint64_t tx_seq() const noexcept { return _tx.seq; }
    std::uint64_t rx_seq() const noexcept { return _rx.seq; }
    std::uint32_t rx_key_updates() const noexcept { return _rx_updates; }
    std::uint32_t tx_key_updates() const noexcept { return _tx_updates; }
    record_close closed() const noexcept { return _closed; }

    // TLS 1.3 AES-GCM: records under one key before we update it ourselves (RFC 8446 5.5
    // allows 2^24.5 full-size records). Settable for tests.
    std::uint64_t tx_records_per_key = std::uint64_t{1} << 24;

private:
    struct direction {
        std::uint64_t id = 0;  // unique per key (process-wide, never reused): the cache's tag
        std::array<std::uint8_t, 32> key{};
        std::array<std::uint8_t, 12> iv{};
        std::array<std::uint8_t, 48> secret{};
        std::uint64_t seq = 0;
    };
    record_layer() = default;
    bool rekey(direction& d) noexcept;
    // The thread's AEAD context keyed with d's key (keyed now if the cache lost it), or null.
    evp_cipher_ctx_st* context(const direction& d) noexcept;
    opened open_impl(std::span<const std::uint8_t> in, std::uint8_t* out, bool in_place, std::string& to_send) noexcept;
    opened fail(record_close reason, std::string& to_send) noexcept;
    opened control(std::uint8_t type, std::span<const std::uint8_t> body, std::string& to_send) noexcept;
    std::size_t seal_record(std::uint8_t type, std::span<const std::uint8_t> plain, std::uint8_t* out,
                            std::size_t padding_bytes = 0) noexcept;
    bool decrypt(std::uint64_t seq, std::span<const std::uint8_t> header, std::span<const std::uint8_t> body,
                 std::uint8_t* out, std::size_t plain_bytes) noexcept;
    void nonce_of(const direction& d, std::uint64_t seq, const std::uint8_t* explicit_nonce, std::uint8_t* nonce) const noexcept;

    std::uint16_t _version = 0;
    aead_cipher _cipher = aead_cipher::aes_128_gcm;
    bool _sha384 = false;
    std::uint8_t _secret_bytes = 0;
    std::uint8_t _key_bytes = 0;
    record_close _closed = record_close::none;
    std::uint32_t _rx_updates = 0, _tx_updates = 0;
    direction _tx, _rx;
};

// HKDF-Expand-Label (RFC 8446 7.1) with an empty context; `digest` an OpenSSL digest name.
bool hkdf_expand_label(const char* digest, std::span<const std::uint8_t> secret, std::string_view label,
                       std::span<std::uint8_t> out) noexcept;

// The alert this side sends when it closes for `reason` (RFC 8446 6.2 names), 0 for none.
std::uint8_t alert_for(record_close reason) noexcept;

}  // namespace derp::tls
