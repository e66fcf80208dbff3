// The TLS engine: a handshake library driven over a byte interface (ciphertext in, plaintext and
// handshake bytes out, then the traffic keys for kTLS or the userspace record layer), so that
// io_uring keeps the socket. OpenSSL 3 by default; with -Dtls_library=wolfssl, server
// handshakes of a certificate from files go through wolfSSL instead (crypto/tls_wolfssl.cc),
// behind the same calls. No I/O happens here; certificate files are read only by the context
// builders.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/key.hh"
#include "core/result.hh"

// OpenSSL's types, kept out of every includer's namespace.
struct ssl_ctx_st;
struct ssl_st;
struct x509_st;

namespace derp::tls {

class acme_challenges;  // crypto/acme_crypto.hh
struct record_keys;     // crypto/tls_record.hh
struct wolf_server;     // crypto/tls_wolfssl.cc

// The library that does server handshakes for certificates from files in this build, with its
// version, for the log: "OpenSSL 3.0.x ..." or "wolfSSL 5.5.4". Clients, ACME challenges and
// -certmode letsencrypt handshakes use OpenSSL in either build.
std::string handshake_library();

// Overwrites key material before its memory is given back (OPENSSL_cleanse: a plain memset
// before free may be optimised away).
void wipe_secret(void* data, std::size_t bytes) noexcept;

// An allocator that wipes what it frees, so that a vector of key bytes leaves nothing behind,
// not even the buffers it outgrew.
template <typename T>
struct wiping_allocator {
    using value_type = T;
    wiping_allocator() = default;
    template <typename U>
    wiping_allocator(const wiping_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return std::allocator<T>{}.allocate(n); }
    void deallocate(T* p, std::size_t n) noexcept {
        wipe_secret(p, n * sizeof(T));
        std::allocator<T>{}.deallocate(p, n);
    }
    template <typename U>
    bool operator==(const wiping_allocator<U>&) const noexcept { return true; }
};
using secret_bytes = std::vector<std::uint8_t, wiping_allocator<std::uint8_t>>;

// The server's certificate material (spec 4.2, manual mode).
struct server_identity {
    std::string hostname;        // -hostname: a DNS name (SNI must equal it) or an IP (any SNI)
    std::string cert_path;       // PEM chain, leaf first
    std::string key_path;        // PEM private key
    std::vector<std::uint8_t> meta_cert_der;  // the derpkey certificate appended to the chain
    // -certmode letsencrypt: a ClientHello offering ALPN "acme-tls/1" for a name with a
    // TLS-ALPN-01 challenge in flight gets that challenge's context instead (RFC 8737).
    std::shared_ptr<const acme_challenges> acme = nullptr;
};

// A configured SSL_CTX, shared by every connection made from it; replaced, not mutated, on a
// certificate reload (connections keep the context they started with).
class context {
public:
    ~context();
    context(const context&) = delete;
    context& operator=(const context&) = delete;

    // Loads and checks the chain and key: the key must match the leaf, and the leaf must be
    // valid for the hostname (derper refuses to start otherwise). Errors name the file.
    static result<std::shared_ptr<context>, std::string> make_server(const server_identity& identity);
    // -certmode letsencrypt before the first certificate: no certificate, so every handshake
    // is refused with an internal_error alert and a log line saying why, except those that
    // answer a TLS-ALPN-01 challenge of `acme`.
    static result<std::shared_ptr<context>, std::string> make_server_pending(const std::string& hostname,
                                                                            std::shared_ptr<const acme_challenges> acme);
    // A server context around an SSL_CTX configured elsewhere (the TLS-ALPN-01 challenge's,
    // crypto/acme_crypto.cc), which it now owns.
    static std::shared_ptr<context> adopt_server(ssl_ctx_st* ctx, const std::string& hostname);

    enum class verify_mode : std::uint8_t {
        system,     // the system trust store (or ca_file), for server_name
        insecure,   // no verification (tests, --insecure)
        pinned,     // sha256-raw: the peer's own certificate has this SHA-256 (check_pinned_chain)
    };
    struct client_options {
        // SNI (not sent for IP literals, as Go) and verification name; required with
        // verify_mode::system, where an empty name would verify the chain for any host.
        std::string server_name;
        // SNI to send instead of server_name (not sent for IP literals either): derper's mesh
        // clients send a -mesh-with entry as written, port included.
        std::string sni;
        verify_mode verify = verify_mode::system;
        std::string ca_file;      // with verify_mode::system: trust only this PEM bundle
        std::array<std::uint8_t, 32> pinned_sha256{};
        int max_version = 0;      // 0 = TLS 1.3; TLS1_2_VERSION to cap
        std::string tls13_ciphersuites;  // OpenSSL syntax; empty = OpenSSL's default
        std::string tls12_ciphers;       // empty = tls12_ciphers_default
    };
    static result<std::shared_ptr<context>, std::string> make_client(const client_options& options);

    // The OpenSSL context; null for a server context whose handshakes wolfSSL does.
    ssl_ctx_st* native() const noexcept { return _ctx; }
    // -Dtls_library=wolfssl: the wolfSSL context server handshakes use; null otherwise.
    wolf_server* wolf_native() const noexcept { return _wolf; }
    bool is_server() const noexcept { return _server; }
    const std::string& hostname() const noexcept { return _hostname; }
    const std::string& sni() const noexcept { return _sni; }  // client: the name sent as SNI
    // SHA-256 of the leaf certificate's DER: derper's `sha256-raw:` CertName.
    const std::array<std::uint8_t, 32>& leaf_sha256() const noexcept { return _leaf_sha256; }
    // Seconds since the epoch when the leaf expires (0 when unknown or when there is none).
    std::int64_t leaf_not_after_unix() const noexcept { return _leaf_not_after; }

    struct state;  // verification settings the callbacks read (tls.cc)
    const state& settings() const noexcept { return *_state; }

private:
    context() = default;
    ssl_ctx_st* _ctx = nullptr;
    wolf_server* _wolf = nullptr;
    bool _server = false;
    std::string _hostname;
    std::string _sni;
    std::array<std::uint8_t, 32> _leaf_sha256{};
    std::int64_t _leaf_not_after = 0;
    std::unique_ptr<state> _state;
};

// TLS 1.2 suites for both sides: forward-secret key exchange and AEAD only, as Go's defaults
// (no static-RSA key exchange, no CBC-SHA1). TLS 1.3 suites are all AEAD and forward secret.
inline constexpr const char* tls12_ciphers_default =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// SHA-256 over a certificate's DER bytes: what a `sha256-raw:` CertName pins.
std::array<std::uint8_t, 32> certificate_sha256(x509_st* cert) noexcept;

// The server key a derper meta certificate carries (spec 2.15): subject CN "derpkey" followed by
// exactly 64 hex digits of a key, serial (the protocol version) 1..255. Nothing for any other
// certificate, including one whose CN merely starts with "derpkey".
std::optional<node_key> meta_certificate_key(x509_st* cert) noexcept;

// Spec 4.2, client side of `sha256-raw:`, after a completed handshake. The pin must bind the
// key that signed the handshake, so the certificate hashed is the peer's own (its key signed
// CertificateVerify, or the 1.2 key exchange); every other certificate in the chain must be a
// genuine meta certificate, whose server key the DERP handshake then has to confirm (a server
// without that private key cannot open ClientInfo). A chain check that skipped "derpkey*"
// certificates by name and hashed whatever was left would accept an attacker's certificate
// named derpkey... followed by the real one, and hand the mesh key to the attacker.
enum class pin_problem : std::uint8_t {
    none,
    no_certificate,       // the server presented none
    mismatch,             // the peer certificate's SHA-256 is not the pin
    foreign_certificate,  // the chain holds a certificate that is neither the pinned one nor meta
    wrong_name,           // the pinned certificate is not valid for the dialled name
    outside_validity,     // not yet or no longer valid
};
struct pin_verdict {
    pin_problem problem = pin_problem::none;
    x509_st* peer = nullptr;       // the peer certificate (owned by the SSL object), when there is one
    x509_st* offending = nullptr;  // foreign_certificate: the certificate that is neither
    std::string detail;            // what failed, as a sentence for the log
};
// `name`: the dialled name (IP literal or DNS name); empty skips the name check.
pin_verdict check_pinned_chain(const ssl_st* ssl, const std::array<std::uint8_t, 32>& pin, std::string_view name) noexcept;

// Derper's fast-start meta certificate (spec 2.15): Ed25519, serial 2, CN derpkey<hex key>,
// valid from 30 days ago for 60 days. DER bytes.
result<std::vector<std::uint8_t>, std::string> make_meta_certificate(const node_key& server_key);

// Writes a self-signed certificate for an IP hostname as derper does (ECDSA P-256, CN and IP
// SAN = the address, one year; key 0600, cert 0644). The directory must exist (derpd makes and
// checks it, server/files.hh). Neither file may exist: they are created with O_EXCL|O_NOFOLLOW,
// so that a symlink planted in their place cannot send the private key elsewhere; on failure
// what was created is removed. Errors name the path.
result<void, std::string> write_self_signed(const std::string& ip_text, const std::string& cert_path,
                                            const std::string& key_path);

// What kTLS needs for one direction: the kernel's crypto_info bytes (struct tls12_crypto_info_*
// of linux/tls.h, sequence number included), ready for setsockopt(SOL_TLS, TLS_TX/TLS_RX).
// The key inside is wiped when the struct goes.
struct ktls_direction {
    std::array<std::uint8_t, 64> crypto_info{};
    std::uint32_t crypto_info_bytes = 0;
    ktls_direction() = default;
    ktls_direction(const ktls_direction&) = default;
    ktls_direction& operator=(const ktls_direction&) = default;
    ~ktls_direction() { wipe_secret(crypto_info.data(), crypto_info.size()); }
};
struct ktls_keys {
    ktls_direction tx;
    ktls_direction rx;
    std::uint16_t version = 0;      // TLS1_2_VERSION / TLS1_3_VERSION
    std::string cipher_name;        // OpenSSL's name, for the log
    // The raw material, for tests that decrypt a record with it: key, 12-byte nonce base
    // (salt || implicit iv for GCM 1.2 as the kernel builds it), next sequence numbers. TX
    // counts every record OpenSSL wrote under the current keys (its Finished in 1.2, alerts,
    // application data), RX every record it read after the handshake.
    secret_bytes tx_key, tx_iv, rx_key, rx_iv;
    std::uint64_t tx_seq = 0, rx_seq = 0;
};

enum class status : std::uint8_t {
    handshaking,  // more handshake bytes are needed
    open,         // application data flows
    closed,       // the peer sent close_notify
    failed,       // a fatal error; error() says which
};

// One TLS connection. Feed it what the socket read; it returns plaintext and whatever must be
// written back (handshake messages, alerts). Single-threaded, like the shard that owns it.
class session {
public:
    // want_ktls: capture the traffic secrets (TLS 1.3) so that ktls_export() can succeed.
    session(std::shared_ptr<context> ctx, bool want_ktls);
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    // Consumes all of `cipher` (OpenSSL keeps a partial record), appends decrypted application
    // data to `plain` and bytes to send to `cipher_out`.
    status feed(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept;
    // Client side: starts the handshake (the ClientHello goes to cipher_out).
    status start(std::string& cipher_out) noexcept;
    // Encrypts `plain` as records into `out`; what does not fit goes to `spill`. Returns the
    // bytes written to `out`. Only when status() is open.
    std::size_t write(std::span<const std::uint8_t> plain, std::span<std::uint8_t> out, std::string& spill) noexcept;
    // A close_notify alert, for an orderly close.
    void shutdown(std::string& cipher_out) noexcept;

    status state() const noexcept { return _status; }
    // The handshake finished (even if a record after it then failed).
    bool handshake_complete() const noexcept { return _handshake_complete; }
    const std::string& error() const noexcept { return _error; }
    std::uint16_t version() const noexcept;  // TLS1_2_VERSION, TLS1_3_VERSION (0 before)
    std::string_view version_name() const noexcept;  // "1.2", "1.3", "unknown"
    std::string_view cipher_name() const noexcept;
    std::string_view sni() const noexcept;
    std::string_view alpn() const noexcept;
    // The peer's certificate chain (client side), for derpprobe: leaf's notAfter.
    std::int64_t peer_leaf_not_after_unix() const noexcept;
    // Fast start (spec 2.15): the server key in a derpkey certificate of the peer's chain,
    // TLS 1.3 only, version != 0.
    std::optional<node_key> peer_meta_key() const noexcept;

    // Records after the handshake go to the userspace record layer (crypto/tls_record.hh)
    // instead: the feed() that completes the handshake stops right behind the peer's Finished
    // and handoff_offset() says where in its input the first record after it starts. Call
    // before the handshake completes; the traffic secrets are captured whatever want_ktls says.
    void hand_off_records() noexcept;
    std::size_t handoff_offset() const noexcept { return _handoff_offset; }

    // Whether everything read so far ended on a record boundary: only then may the kernel take
    // over receiving (it cannot be handed half a record).
    bool at_record_boundary() const noexcept { return _scan_partial == 0 && _scan_header_bytes == 0; }
    // The keys and sequence numbers for kTLS (server side); RX is only usable when
    // at_record_boundary(). Nothing when the kernel takes no such cipher, when the secrets were
    // forgotten, or after a TLS 1.3 KeyUpdate either way: the traffic secrets this derives
    // from are then no longer the ones in use, and the kernel would reuse nonces (TX) or fail
    // to decrypt (RX). Such a connection stays on userspace records.
    std::optional<ktls_keys> ktls_export() const noexcept;
    // The same material for the userspace record layer (crypto/tls_record.hh), with the TLS
    // 1.3 traffic secrets a KeyUpdate needs; nothing where ktls_export() gives nothing. Taken
    // right when the handshake completes, before feed() reads a record behind it.
    std::optional<record_keys> record_export() const noexcept;
    // TX is now the kernel's (its sequence numbers continue from the export). A record
    // OpenSSL would still write (the answer to a KeyUpdate, a no_renegotiation or fatal alert)
    // would then be encrypted with OpenSSL's stale state and sent by the kernel as data, so
    // feed() drops it and fails the session instead.
    void note_tx_in_kernel() noexcept;
    // No further ktls_export() will be asked for: the captured traffic secrets are wiped.
    void forget_traffic_secrets() noexcept;

    struct secrets;  // what OpenSSL's callbacks tell: TLS 1.3 traffic secrets, records written (tls.cc)

private:
    status feed_records(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept;
    // -Dtls_library=wolfssl (crypto/tls_session_records.cc): the handshake through wolfSSL,
    // then records through the userspace record layer of this session.
    status feed_wolf(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept;
    status open_records(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept;
    std::size_t seal_records(std::span<const std::uint8_t> plain, std::span<std::uint8_t> out, std::string& spill) noexcept;
    std::optional<ktls_keys> wolf_ktls_export() const noexcept;
    void scan_records(std::span<const std::uint8_t> cipher) noexcept;
    status fail(std::string message) noexcept;

    std::shared_ptr<context> _ctx;
    ssl_st* _ssl = nullptr;
    status _status = status::handshaking;
    bool _handshake_complete = false;
    std::string _error;
    std::unique_ptr<secrets> _secrets;
    // Record scanner over the ciphertext read after the handshake: kTLS RX needs a boundary and
    // the count of records OpenSSL has decrypted (the RX sequence number).
    std::uint64_t _records_after_handshake = 0;
    std::size_t _handoff_offset = 0;
    bool _hand_off = false;
    std::uint32_t _scan_partial = 0;       // body bytes of the current record still to come
    std::uint8_t _scan_header_bytes = 0;   // bytes of a record header seen so far
    std::array<std::uint8_t, 5> _scan_header{};
};

// Everything OpenSSL queued on this thread's error stack, as one line (and the stack cleared).
std::string openssl_errors();

// The TLS version names as derper's metrics spell them, in the order of derpd's per-version
// counters; version_index maps a protocol version to its place here.
inline constexpr std::array<std::string_view, 5> version_labels = {"1.0", "1.1", "1.2", "1.3", "unknown"};
std::size_t version_index(std::uint16_t version) noexcept;
std::string_view version_label(std::uint16_t version) noexcept;

}  // namespace derp::tls
