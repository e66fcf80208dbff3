// wolfSSL behind crypto/tls.hh for server handshakes (-Dtls_library=wolfssl; see
// crypto/tls_wolfssl.hh). What Debian 12's build (5.5.4) offers decides how the keys come out:
// it has no HAVE_SECRET_CALLBACK, so neither wolfSSL_set_tls13_secret_cb nor the key log
// exists; it has HAVE_PK_CALLBACKS, whose HKDF-Expand-Label callback sees every TLS 1.3
// derivation, the application traffic secrets ("c ap traffic", "s ap traffic") included, and
// ATOMIC_USER, whose getters hand out the TLS 1.2 write keys and IVs. Sequence numbers come
// from wolfSSL_GetSequenceNumber / wolfSSL_GetPeerSequenceNumber. Only this file includes
// wolfSSL's headers: its OpenSSL compatibility layer (OPENSSL_EXTRA) clashes with OpenSSL's.
#include "crypto/tls_wolfssl.hh"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/kdf.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

namespace derp::tls {

struct wolf_server {
    WOLFSSL_CTX* ctx = nullptr;
};

struct wolf_handshake {
    WOLFSSL* ssl = nullptr;
    session::secrets* secrets = nullptr;
    // The record wolfSSL is reading: it is handed bytes up to that record's end and no
    // further, so that the handshake ends exactly behind the client's Finished.
    std::array<std::uint8_t, 5> header{};
    std::uint8_t header_bytes = 0;
    std::uint32_t body_left = 0;
};

namespace {

constexpr std::uint8_t alert_internal_error = 80;  // RFC 8446 6.2
constexpr std::uint16_t tls12 = 0x0303, tls13 = 0x0304;

// The session whose wolfSSL call is running on this thread: the HKDF callback is set per
// context and is told nothing about the connection it derives for.
thread_local session::secrets* current = nullptr;

struct current_scope {
    explicit current_scope(session::secrets* s) { current = s; }
    ~current_scope() { current = nullptr; }
    current_scope(const current_scope&) = delete;
    current_scope& operator=(const current_scope&) = delete;
};

int window_recv(WOLFSSL*, char* data, int length, void* arg) {
    auto* h = static_cast<wolf_handshake*>(arg);
    io_window& w = h->secrets->window;
    const std::size_t available = w.in_length - w.in_position;
    if (available == 0 || length <= 0) return WOLFSSL_CBIO_ERR_WANT_READ;
    std::size_t n = std::min(available, static_cast<std::size_t>(length));
    const std::uint8_t* in = w.in + w.in_position;
    if (h->header_bytes < h->header.size()) {
        n = std::min(n, h->header.size() - h->header_bytes);
        std::memcpy(h->header.data() + h->header_bytes, in, n);
        h->header_bytes = static_cast<std::uint8_t>(h->header_bytes + n);
        if (h->header_bytes == h->header.size()) {
            h->body_left = static_cast<std::uint32_t>(h->header[3]) << 8 | h->header[4];
            if (h->body_left == 0) h->header_bytes = 0;
        }
    } else {
        n = std::min<std::size_t>(n, h->body_left);
        h->body_left -= static_cast<std::uint32_t>(n);
        if (h->body_left == 0) h->header_bytes = 0;
    }
    std::memcpy(data, in, n);
    w.in_position += n;
    return static_cast<int>(n);
}

int window_send(WOLFSSL*, char* data, int length, void* arg) {
    auto* h = static_cast<wolf_handshake*>(arg);
    io_window& w = h->secrets->window;
    if (length <= 0) return 0;
    const auto bytes = static_cast<std::size_t>(length);
    const std::size_t direct = std::min(bytes, w.out_capacity - w.out_length);
    if (direct > 0) {
        std::memcpy(w.out + w.out_length, data, direct);
        w.out_length += direct;
    }
    if (direct < bytes) {
        if (w.spill == nullptr) return direct > 0 ? static_cast<int>(direct) : WOLFSSL_CBIO_ERR_WANT_WRITE;
        w.spill->append(data + direct, bytes - direct);
    }
    return length;
}

// Every TLS 1.3 HKDF-Expand-Label of the handshake passes through here (HAVE_PK_CALLBACKS):
// derived with wolfCrypt's own function, and the two application traffic secrets kept.
int expand_label(byte* okm, word32 okm_length, const byte* prk, word32 prk_length, const byte* protocol,
                 word32 protocol_length, const byte* label, word32 label_length, const byte* info,
                 word32 info_length, int digest, int) {
    const int r = wc_Tls13_HKDF_Expand_Label(okm, okm_length, prk, prk_length, protocol, protocol_length, label,
                                             label_length, info, info_length, digest);
    if (r != 0 || current == nullptr) return r;
    const std::string_view name(reinterpret_cast<const char*>(label), label_length);
    secret_bytes* target = name == "c ap traffic" ? &current->client_traffic
                           : name == "s ap traffic" ? &current->server_traffic
                                                    : nullptr;
    if (target != nullptr) target->assign(okm, okm + okm_length);
    return r;
}

int servername_check(WOLFSSL* ssl, int* alert, void* arg) {
    const auto* st = static_cast<const context::state*>(arg);
    if (!st->require_sni) return 0;
    const char* name = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME);
    // derper's manual mode: "cert mismatch with hostname", which Go answers with internal_error.
    if (name == nullptr || st->hostname != name) {
        *alert = alert_internal_error;
        if (current != nullptr)
            current->refusal = name == nullptr ? fmt::format("no SNI; this server only answers to {}", st->hostname)
                                               : fmt::format("SNI \"{}\" is not the hostname {}", name, st->hostname);
        return fatal_return;
    }
    return 0;
}

std::string error_text(WOLFSSL* ssl, int r) {
    const int code = wolfSSL_get_error(ssl, r);
    char line[WOLFSSL_MAX_ERROR_SZ] = {};
    wolfSSL_ERR_error_string_n(static_cast<unsigned long>(code), line, sizeof line);
    return fmt::format("wolfSSL {}: {}", code, line);
}

// What wolfSSL negotiated, and the keys at the boundary behind the client's Finished.
void export_keys(wolf_handshake* h, session::secrets& s) {
    WOLFSSL* ssl = h->ssl;
    s.wolf_version = static_cast<std::uint16_t>(wolfSSL_version(ssl));
    const int suite = wolfSSL_get_current_cipher_suite(ssl);
    const char* iana = wolfSSL_get_cipher_name_iana_from_suite(static_cast<byte>(suite >> 8), static_cast<byte>(suite));
    const char* own = wolfSSL_get_cipher_name(ssl);
    // OpenSSL's names, as the log and metrics show them: the RFC names for TLS 1.3, and for 1.2
    // wolfSSL's own names, which are OpenSSL's.
    const char* name = s.wolf_version == tls13 ? iana : own;
    s.wolf_cipher = name != nullptr ? name : "";
    if (const char* sni = wolfSSL_get_servername(ssl, WOLFSSL_SNI_HOST_NAME)) s.wolf_sni = sni;
    char* protocol = nullptr;
    word16 protocol_bytes = 0;
    if (wolfSSL_ALPN_GetProtocol(ssl, &protocol, &protocol_bytes) == WOLFSSL_SUCCESS && protocol != nullptr)
        s.wolf_alpn.assign(protocol, protocol_bytes);

    record_keys k;
    k.version = s.wolf_version;
    const int bulk = wolfSSL_GetBulkCipher(ssl);
    const int key_bytes = wolfSSL_GetKeySize(ssl);
    if (bulk == wolfssl_aes_gcm && key_bytes == 16) k.cipher = aead_cipher::aes_128_gcm;
    else if (bulk == wolfssl_aes_gcm && key_bytes == 32) k.cipher = aead_cipher::aes_256_gcm;
    else if (bulk == wolfssl_chacha && key_bytes == 32) k.cipher = aead_cipher::chacha20_poly1305;
    else return;
    k.sha384 = s.wolf_cipher.find("SHA384") != std::string::npos;
    word64 tx_seq = 0, rx_seq = 0;
    wolfSSL_GetSequenceNumber(ssl, &tx_seq);
    wolfSSL_GetPeerSequenceNumber(ssl, &rx_seq);
    k.tx_seq = tx_seq;
    k.rx_seq = rx_seq;
    const auto bytes = static_cast<std::size_t>(key_bytes);
    if (k.version == tls13) {
        if (s.client_traffic.empty() || s.server_traffic.empty()) return;
        const char* digest = k.sha384 ? "SHA384" : "SHA256";
        k.tx_key.resize(bytes);
        k.rx_key.resize(bytes);
        k.tx_iv.resize(12);
        k.rx_iv.resize(12);
        if (!hkdf_expand_label(digest, s.server_traffic, "key", k.tx_key) ||
            !hkdf_expand_label(digest, s.server_traffic, "iv", k.tx_iv) ||
            !hkdf_expand_label(digest, s.client_traffic, "key", k.rx_key) ||
            !hkdf_expand_label(digest, s.client_traffic, "iv", k.rx_iv))
            return;
        // The secrets were caught by label: the keys wolfSSL itself derived from them must agree.
        const unsigned char* server_key = wolfSSL_GetServerWriteKey(ssl);
        const unsigned char* client_key = wolfSSL_GetClientWriteKey(ssl);
        if (server_key == nullptr || client_key == nullptr || std::memcmp(server_key, k.tx_key.data(), bytes) != 0 ||
            std::memcmp(client_key, k.rx_key.data(), bytes) != 0)
            return;
        k.tx_secret = s.server_traffic;
        k.rx_secret = s.client_traffic;
    } else if (k.version == tls12) {
        // The salt (implicit IV) of AES-GCM, the whole nonce base of ChaCha20-Poly1305 (RFC 7905).
        const std::size_t iv_bytes = k.cipher == aead_cipher::chacha20_poly1305 ? 12 : 4;
        const unsigned char* ck = wolfSSL_GetClientWriteKey(ssl);
        const unsigned char* civ = wolfSSL_GetClientWriteIV(ssl);
        const unsigned char* sk = wolfSSL_GetServerWriteKey(ssl);
        const unsigned char* siv = wolfSSL_GetServerWriteIV(ssl);
        if (ck == nullptr || civ == nullptr || sk == nullptr || siv == nullptr) return;
        k.rx_key.assign(ck, ck + bytes);
        k.rx_iv.assign(civ, civ + iv_bytes);
        k.tx_key.assign(sk, sk + bytes);
        k.tx_iv.assign(siv, siv + iv_bytes);
    } else {
        return;
    }
    s.wolf_keys = std::move(k);
}

}  // namespace

result<wolf_server*, std::string> wolf_server_make(const std::string& chain_pem, const secret_bytes& key_pem,
                                                   const context::state* settings) {
    static std::once_flag initialised;
    std::call_once(initialised, [] { wolfSSL_Init(); });
    WOLFSSL_CTX* ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
    if (ctx == nullptr) return unexpected(std::string("wolfSSL_CTX_new failed"));
    auto fail = [ctx](std::string what) {
        wolfSSL_CTX_free(ctx);
        return unexpected(std::move(what));
    };
    if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS) return fail("wolfSSL: minimum version TLS 1.2");
    // The TLS 1.3 suites in OpenSSL's default order, then derpd's TLS 1.2 list (crypto/tls.hh),
    // whose names wolfSSL shares; the server's order decides.
    const std::string suites = std::string("TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:") +
                               tls12_ciphers_default;
    if (wolfSSL_CTX_set_cipher_list(ctx, suites.c_str()) != WOLFSSL_SUCCESS) return fail("wolfSSL: cipher list " + suites);
    // No tickets and no session cache: nothing to resume, nothing written after the handshake
    // (a TLS 1.3 NewSessionTicket would be a record behind the boundary the keys are taken at).
    wolfSSL_CTX_NoTicketTLSv12(ctx);
    wolfSSL_CTX_no_ticket_TLSv13(ctx);
    wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
    if (wolfSSL_CTX_use_certificate_chain_buffer(ctx, reinterpret_cast<const unsigned char*>(chain_pem.data()),
                                                 static_cast<long>(chain_pem.size())) != WOLFSSL_SUCCESS)
        return fail("wolfSSL refuses the certificate chain");
    if (wolfSSL_CTX_use_PrivateKey_buffer(ctx, key_pem.data(), static_cast<long>(key_pem.size()), WOLFSSL_FILETYPE_PEM) !=
        WOLFSSL_SUCCESS)
        return fail("wolfSSL refuses the private key");
    if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) return fail("wolfSSL: the key does not match the certificate");
    wolfSSL_CTX_SetIORecv(ctx, window_recv);
    wolfSSL_CTX_SetIOSend(ctx, window_send);
    wolfSSL_CTX_set_servername_callback(ctx, servername_check);
    wolfSSL_CTX_set_servername_arg(ctx, const_cast<context::state*>(settings));
    wolfSSL_CTX_SetHKDFExpandLabelCb(ctx, expand_label);
    return new wolf_server{ctx};
}

void wolf_server_free(wolf_server* server) noexcept {
    if (server == nullptr) return;
    wolfSSL_CTX_free(server->ctx);
    delete server;
}

wolf_handshake* wolf_handshake_new(wolf_server* server, session::secrets& s, std::string& error) noexcept {
    WOLFSSL* ssl = wolfSSL_new(server->ctx);
    if (ssl == nullptr) {
        error = "wolfSSL_new failed";
        return nullptr;
    }
    auto* h = new wolf_handshake{};
    h->ssl = ssl;
    h->secrets = &s;
    wolfSSL_SetIOReadCtx(ssl, h);
    wolfSSL_SetIOWriteCtx(ssl, h);
    // Only HTTP/1.1: DERP's upgrade needs it, and derpd speaks no HTTP/2. A client offering
    // none of it gets no ALPN, as from OpenSSL's select callback.
    char http11[] = "http/1.1";
    if (wolfSSL_UseALPN(ssl, http11, sizeof http11 - 1, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) != WOLFSSL_SUCCESS) {
        error = "wolfSSL_UseALPN failed";
        wolf_handshake_free(h);
        return nullptr;
    }
    return h;
}

void wolf_handshake_free(wolf_handshake* handshake) noexcept {
    if (handshake == nullptr) return;
    wolfSSL_free(handshake->ssl);
    delete handshake;
}

wolf_step wolf_accept(wolf_handshake* h, session::secrets& s, std::string& error) noexcept {
    const current_scope scope(&s);
    const int r = wolfSSL_accept(h->ssl);
    if (r == WOLFSSL_SUCCESS) {
        export_keys(h, s);
        return wolf_step::done;
    }
    const int e = wolfSSL_get_error(h->ssl, r);
    if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE) return wolf_step::more;
    error = s.refusal.empty() ? "handshake: " + error_text(h->ssl, r) : s.refusal;
    return wolf_step::failed;
}

std::string wolf_library_version() { return fmt::format("wolfSSL {}", wolfSSL_lib_version()); }

}  // namespace derp::tls
