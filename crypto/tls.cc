// OpenSSL 3 behind crypto/tls.hh: contexts with derper's rules (TLS >= 1.2, no tickets, SNI
// check, http/1.1 ALPN, the meta certificate at the end of the chain), sessions over an
// in-memory BIO that reads the bytes io_uring received and writes records straight into the
// registered send buffer, and the traffic keys the kernel needs for kTLS.
#include "crypto/tls.hh"
#include "crypto/tls_internal.hh"

#include <arpa/inet.h>
#include <linux/tls.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>

#include <fmt/format.h>

#include "crypto/acme_crypto.hh"
#if DERP_TLS_WOLFSSL
#include "crypto/tls_wolfssl.hh"
#endif

namespace derp::tls {
namespace {

int window_write(BIO* bio, const char* data, int length) {
    auto* w = static_cast<io_window*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    if (length <= 0) return 0;
    auto bytes = static_cast<std::size_t>(length);
    const std::size_t direct = std::min(bytes, w->out_capacity - w->out_length);
    if (direct > 0) {
        std::memcpy(w->out + w->out_length, data, direct);
        w->out_length += direct;
    }
    if (direct < bytes) {
        if (w->spill == nullptr) {  // nowhere to put it: ask OpenSSL to retry (never expected)
            if (direct > 0) return static_cast<int>(direct);
            BIO_set_retry_write(bio);
            return -1;
        }
        w->spill->append(data + direct, bytes - direct);
    }
    return length;
}

int window_read(BIO* bio, char* data, int length) {
    auto* w = static_cast<io_window*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    const std::size_t available = w->in_length - w->in_position;
    if (available == 0 || length <= 0) {
        BIO_set_retry_read(bio);
        return -1;
    }
    const std::size_t n = std::min(available, static_cast<std::size_t>(length));
    std::memcpy(data, w->in + w->in_position, n);
    w->in_position += n;
    return static_cast<int>(n);
}

long window_ctrl(BIO* bio, int command, long, void*) {
    (void)bio;
    switch (command) {
        case BIO_CTRL_FLUSH: return 1;  // records are already where they go
        case BIO_CTRL_PUSH:
        case BIO_CTRL_POP: return 0;
        default: return 0;
    }
}

int window_create(BIO* bio) {
    BIO_set_init(bio, 1);
    return 1;
}

BIO_METHOD* window_method() {
    static BIO_METHOD* method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "derpd window");
        BIO_meth_set_write(m, window_write);
        BIO_meth_set_read(m, window_read);
        BIO_meth_set_ctrl(m, window_ctrl);
        BIO_meth_set_create(m, window_create);
        return m;
    }();
    return method;
}

bool is_ip_literal(std::string_view host) {
    std::string text(host);
    in6_addr v6{};
    in_addr v4{};
    return inet_pton(AF_INET, text.c_str(), &v4) == 1 || inet_pton(AF_INET6, text.c_str(), &v6) == 1;
}

std::int64_t not_after_unix(const X509* cert) {
    std::tm when{};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &when) != 1) return 0;
    return static_cast<std::int64_t>(timegm(&when));
}

std::string file_problem(const std::string& path, const char* what) {
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) return fmt::format("{} {}: {}", what, path, std::strerror(errno));
    if (::access(path.c_str(), R_OK) != 0) return fmt::format("{} {}: {}", what, path, std::strerror(errno));
    return {};
}

// Which session a callback is about (SSL app data) and the index of our ex_data slot.
int session_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

}  // namespace


namespace {

// TLS 1.3 traffic secrets reach us only through the key log (OpenSSL has no getter).
void keylog_line(const SSL* ssl, const char* line) {
    auto* s = static_cast<session::secrets*>(SSL_get_ex_data(ssl, session_index()));
    if (s == nullptr || !s->want_ktls) return;
    std::string_view text(line);
    secret_bytes* target = nullptr;
    if (text.starts_with("CLIENT_TRAFFIC_SECRET_0 ")) target = &s->client_traffic;
    else if (text.starts_with("SERVER_TRAFFIC_SECRET_0 ")) target = &s->server_traffic;
    if (target == nullptr) return;
    const auto last_space = text.rfind(' ');
    std::string_view hex = text.substr(last_space + 1);
    // Decoded in place: no temporary string holds a copy of the secret.
    auto nibble = [](char c) -> unsigned {
        if (c >= '0' && c <= '9') return static_cast<unsigned>(c - '0');
        if (c >= 'a' && c <= 'f') return static_cast<unsigned>(c - 'a' + 10);
        if (c >= 'A' && c <= 'F') return static_cast<unsigned>(c - 'A' + 10);
        return 0;
    };
    target->clear();
    target->reserve(hex.size() / 2);
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        target->push_back(static_cast<std::uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
}

// Every record OpenSSL writes and every handshake message either way pass through here
// (SSL_CTX_set_msg_callback): the TX sequence number for kTLS and any KeyUpdate. OpenSSL
// reports a record's header when it makes the record, before a handshake message's own
// report, and before it switches keys after that message.
void record_seen(int write_p, int, int content_type, const void* buf, std::size_t length, SSL* ssl, void*) {
    auto* s = static_cast<session::secrets*>(SSL_get_ex_data(ssl, session_index()));
    if (s == nullptr) return;
    const auto* bytes = static_cast<const unsigned char*>(buf);
    if (content_type == SSL3_RT_HEADER) {
        if (write_p != 0) ++s->records_written;
        return;
    }
    const bool handshake = content_type == SSL3_RT_HANDSHAKE && length >= 1;
    if (handshake && bytes[0] == SSL3_MT_KEY_UPDATE) {
        s->key_update = true;
        // type (1), length (3), request_update (1): 1 = update_requested.
        if (write_p == 0 && length >= 5 && bytes[4] == SSL_KEY_UPDATE_REQUESTED) s->key_update_owed = true;
    }
    if (write_p == 0) return;
    // The server's application keys begin after its Finished in TLS 1.3 (which is still under
    // the handshake keys) and after its ChangeCipherSpec in TLS 1.2 (its Finished is then
    // record 0). A 1.3 server may send a ChangeCipherSpec too (middlebox compatibility): that
    // one changes nothing.
    const int version = SSL_version(ssl);
    if ((version == TLS1_3_VERSION && handshake && bytes[0] == SSL3_MT_FINISHED) ||
        (version == TLS1_2_VERSION && content_type == SSL3_RT_CHANGE_CIPHER_SPEC)) {
        s->tx_epoch_start = s->records_written;
        s->tx_epoch_known = true;
    }
}

// OpenSSL's default for an encrypted PEM key is to prompt on the terminal, which would block
// the thread doing a reload (SIGHUP, the file poller) until someone types. derpd has no
// passphrase to give: refuse, and remember that one was asked for, to say so.
int refuse_passphrase(char*, int, int, void* asked) {
    if (asked != nullptr) *static_cast<bool*>(asked) = true;
    return -1;
}

int servername_check(SSL* ssl, int* alert, void* arg) {
    auto* st = static_cast<context::state*>(arg);
    if (!st->require_sni) return SSL_TLSEXT_ERR_OK;
    const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    // derper's manual mode: "cert mismatch with hostname", which Go answers with internal_error.
    if (name == nullptr || st->hostname != name) {
        *alert = SSL_AD_INTERNAL_ERROR;
        if (auto* s = static_cast<session::secrets*>(SSL_get_ex_data(ssl, session_index())))
            s->refusal = name == nullptr ? fmt::format("no SNI; this server only answers to {}", st->hostname)
                                         : fmt::format("SNI \"{}\" is not the hostname {}", name, st->hostname);
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

// Only HTTP/1.1: DERP's upgrade needs it, and derpd speaks no HTTP/2.
int alpn_select(SSL*, const unsigned char** out, unsigned char* out_length, const unsigned char* in,
                unsigned int in_length, void*) {
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, out_length, http11, sizeof http11, in, in_length) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

// The values of a ClientHello extension as a list of 1-byte-length-prefixed names (ALPN, RFC
// 7301) after its 2-byte list length: whether `name` is among them.
bool alpn_offers(const unsigned char* ext, std::size_t length, std::string_view name) {
    if (length < 2 || (std::size_t{ext[0]} << 8 | ext[1]) != length - 2) return false;
    for (std::size_t i = 2; i < length;) {
        const std::size_t n = ext[i];
        if (i + 1 + n > length) return false;
        if (std::string_view(reinterpret_cast<const char*>(ext + i + 1), n) == name) return true;
        i += 1 + n;
    }
    return false;
}

// The host_name of a server_name extension (RFC 6066 3): list length (2), then entries of
// type (1), length (2), name. Empty when there is none.
std::string_view sni_of(const unsigned char* ext, std::size_t length) {
    if (length < 2 || (std::size_t{ext[0]} << 8 | ext[1]) != length - 2) return {};
    for (std::size_t i = 2; i + 3 <= length;) {
        const std::size_t n = std::size_t{ext[i + 1]} << 8 | ext[i + 2];
        if (i + 3 + n > length) return {};
        if (ext[i] == TLSEXT_NAMETYPE_host_name) return {reinterpret_cast<const char*>(ext + i + 3), n};
        i += 3 + n;
    }
    return {};
}

// Runs before anything else of a ClientHello is acted on, which is the only point where a
// different SSL_CTX (the TLS-ALPN-01 challenge's certificate and ALPN) can still take over.
int client_hello_check(SSL* ssl, int* alert, void* arg) {
    auto* st = static_cast<context::state*>(arg);
    auto refuse = [&](int alert_code, std::string why) {
        *alert = alert_code;
        if (auto* s = static_cast<session::secrets*>(SSL_get_ex_data(ssl, session_index()))) s->refusal = std::move(why);
        return SSL_CLIENT_HELLO_ERROR;
    };
    const unsigned char* ext = nullptr;
    std::size_t length = 0;
    if (st->acme != nullptr &&
        SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext, &length) == 1 &&
        alpn_offers(ext, length, "acme-tls/1")) {
        std::string_view sni;
        if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &length) == 1) sni = sni_of(ext, length);
        auto challenge = st->acme->tls_alpn(sni);
        // RFC 8737 4: acme-tls/1 is answered with the challenge certificate or not at all.
        if (challenge == nullptr)
            return refuse(SSL_AD_NO_APPLICATION_PROTOCOL,
                          fmt::format("ALPN acme-tls/1 for \"{}\", which has no TLS-ALPN-01 challenge in flight", sni));
        if (SSL_set_SSL_CTX(ssl, challenge->native()) == nullptr)
            return refuse(SSL_AD_INTERNAL_ERROR, "switching to the TLS-ALPN-01 challenge certificate: " + openssl_errors());
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    if (!st->has_certificate)
        return refuse(SSL_AD_INTERNAL_ERROR, fmt::format("no certificate for {} yet (the ACME order is in progress)",
                                                         st->hostname));
    return SSL_CLIENT_HELLO_SUCCESS;
}

int accept_any_chain(int, X509_STORE_CTX*) { return 1; }

}  // namespace

void wipe_secret(void* data, std::size_t bytes) noexcept {
    if (data != nullptr && bytes > 0) OPENSSL_cleanse(data, bytes);
}

std::array<std::uint8_t, 32> certificate_sha256(X509* cert) noexcept {
    std::array<std::uint8_t, 32> digest{};
    unsigned char* der = nullptr;
    const int length = i2d_X509(cert, &der);
    if (length > 0) {
        unsigned int digest_length = 0;
        EVP_Digest(der, static_cast<std::size_t>(length), digest.data(), &digest_length, EVP_sha256(), nullptr);
    }
    OPENSSL_free(der);
    return digest;
}

context::~context() {
    if (_ctx != nullptr) SSL_CTX_free(_ctx);
#if DERP_TLS_WOLFSSL
    wolf_server_free(_wolf);
#endif
}

std::string handshake_library() {
#if DERP_TLS_WOLFSSL
    return wolf_library_version();
#else
    return OpenSSL_version(OPENSSL_VERSION);
#endif
}



result<std::shared_ptr<context>, std::string> context::make_server(const server_identity& identity) {
    if (auto problem = file_problem(identity.cert_path, "certificate"); !problem.empty())
        return unexpected(problem);
    if (auto problem = file_problem(identity.key_path, "key"); !problem.empty()) return unexpected(problem);
    std::shared_ptr<context> c(new context());
    c->_server = true;
    c->_hostname = identity.hostname;
    c->_state = std::make_unique<state>();
    c->_state->hostname = identity.hostname;
    c->_state->require_sni = !is_ip_literal(identity.hostname);
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) return unexpected("SSL_CTX_new: " + openssl_errors());
    c->_ctx = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_set_cipher_list(ctx, tls12_ciphers_default) != 1)
        return unexpected("TLS 1.2 ciphers: " + openssl_errors());
    SSL_CTX_set_default_passwd_cb(ctx, refuse_passphrase);
    // No tickets and no session cache: nothing to resume, nothing after the handshake that
    // kTLS would have to count, and no per-connection memory for them.
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    // Idle connections give their 16 KiB read and write buffers back.
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, identity.cert_path.c_str()) != 1)
        return unexpected(fmt::format("certificate {}: {}", identity.cert_path, openssl_errors()));
    {
        FILE* key_file = std::fopen(identity.key_path.c_str(), "re");
        if (key_file == nullptr) return unexpected(fmt::format("key {}: {}", identity.key_path, std::strerror(errno)));
        bool passphrase_asked = false;
        EVP_PKEY* key = PEM_read_PrivateKey(key_file, nullptr, refuse_passphrase, &passphrase_asked);
        std::fclose(key_file);
        if (key == nullptr && passphrase_asked) {
            ERR_clear_error();
            return unexpected(fmt::format("key {} is encrypted; derpd cannot ask for a passphrase (store it decrypted, "
                                          "mode 0600: openssl pkey -in {} -out <new file>)",
                                          identity.key_path, identity.key_path));
        }
        if (key == nullptr)
            return unexpected(fmt::format("key {}: not a PEM private key ({})", identity.key_path, openssl_errors()));
        const bool matches_leaf = X509_check_private_key(SSL_CTX_get0_certificate(ctx), key) == 1;
        const bool used = matches_leaf && SSL_CTX_use_PrivateKey(ctx, key) == 1;
        EVP_PKEY_free(key);
        ERR_clear_error();
        if (!matches_leaf)
            return unexpected(fmt::format("key {} does not match certificate {}", identity.key_path, identity.cert_path));
        if (!used) return unexpected(fmt::format("key {}: {}", identity.key_path, openssl_errors()));
    }
    X509* leaf = SSL_CTX_get0_certificate(ctx);
    const bool matches = is_ip_literal(identity.hostname)
                             ? X509_check_ip_asc(leaf, identity.hostname.c_str(), 0) == 1
                             : X509_check_host(leaf, identity.hostname.data(), identity.hostname.size(), 0, nullptr) == 1;
    if (!matches)
        return unexpected(fmt::format("certificate {} is not valid for hostname {}", identity.cert_path,
                                      identity.hostname));
    c->_leaf_sha256 = certificate_sha256(leaf);
    c->_leaf_not_after = not_after_unix(leaf);
    if (!identity.meta_cert_der.empty()) {
        const unsigned char* p = identity.meta_cert_der.data();
        X509* meta = d2i_X509(nullptr, &p, static_cast<long>(identity.meta_cert_der.size()));
        if (meta == nullptr) return unexpected("meta certificate: " + openssl_errors());
        // Appended as-is after the leaf and intermediates (spec 2.15); OpenSSL sends an
        // explicitly set chain without rebuilding it.
        if (SSL_CTX_add0_chain_cert(ctx, meta) != 1) {
            X509_free(meta);
            return unexpected("meta certificate: " + openssl_errors());
        }
    }
    // OpenSSL's macros cast in C style.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_check);
    SSL_CTX_set_tlsext_servername_arg(ctx, c->_state.get());
#pragma GCC diagnostic pop
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, nullptr);
    SSL_CTX_set_keylog_callback(ctx, keylog_line);
    SSL_CTX_set_msg_callback(ctx, record_seen);
    if (identity.acme != nullptr) {
        c->_state->acme = identity.acme;
        SSL_CTX_set_client_hello_cb(ctx, client_hello_check, c->_state.get());
    }
#if DERP_TLS_WOLFSSL
    // wolfSSL takes the handshakes; OpenSSL only checked the files. With ACME the context
    // stays OpenSSL's: a TLS-ALPN-01 ClientHello must switch to the challenge's certificate
    // before anything of it is acted on, which OpenSSL's ClientHello callback does and Debian's
    // wolfSSL 5.5.4 has no hook for.
    if (identity.acme == nullptr) {
        if (auto handed = wolf_server_from(ctx, c->_wolf, c->_state.get()); !handed) return unexpected(handed.error());
        SSL_CTX_free(ctx);
        c->_ctx = nullptr;
    }
#endif
    return c;
}

result<std::shared_ptr<context>, std::string> context::make_server_pending(const std::string& hostname,
                                                                          std::shared_ptr<const acme_challenges> acme) {
    std::shared_ptr<context> c(new context());
    c->_server = true;
    c->_hostname = hostname;
    c->_state = std::make_unique<state>();
    c->_state->hostname = hostname;
    c->_state->has_certificate = false;
    c->_state->acme = std::move(acme);
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) return unexpected("SSL_CTX_new: " + openssl_errors());
    c->_ctx = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_msg_callback(ctx, record_seen);
    SSL_CTX_set_client_hello_cb(ctx, client_hello_check, c->_state.get());
    return c;
}

std::shared_ptr<context> context::adopt_server(ssl_ctx_st* ctx, const std::string& hostname) {
    std::shared_ptr<context> c(new context());
    c->_ctx = ctx;
    c->_server = true;
    c->_hostname = hostname;
    c->_state = std::make_unique<state>();
    c->_state->hostname = hostname;
    if (X509* leaf = SSL_CTX_get0_certificate(ctx)) {
        c->_leaf_sha256 = certificate_sha256(leaf);
        c->_leaf_not_after = not_after_unix(leaf);
    }
    return c;
}

result<std::shared_ptr<context>, std::string> context::make_client(const client_options& options) {
    // OpenSSL checks a name only when one is set: verification without one accepts any
    // certificate a public CA signed, for any host.
    if (options.verify == verify_mode::system && options.server_name.empty())
        return unexpected(std::string("a verified TLS client needs the server name to verify the certificate for"));
    std::shared_ptr<context> c(new context());
    c->_hostname = options.server_name;
    c->_sni = options.sni.empty() ? options.server_name : options.sni;
    c->_state = std::make_unique<state>();
    c->_state->hostname = options.server_name;
    c->_state->verify = options.verify;
    c->_state->pinned = options.pinned_sha256;
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) return unexpected("SSL_CTX_new: " + openssl_errors());
    c->_ctx = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (options.max_version != 0) SSL_CTX_set_max_proto_version(ctx, options.max_version);
    if (!options.tls13_ciphersuites.empty() && SSL_CTX_set_ciphersuites(ctx, options.tls13_ciphersuites.c_str()) != 1)
        return unexpected("TLS 1.3 cipher suites: " + openssl_errors());
    const std::string& ciphers = options.tls12_ciphers.empty() ? std::string(tls12_ciphers_default) : options.tls12_ciphers;
    if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) return unexpected("TLS 1.2 ciphers: " + openssl_errors());
    SSL_CTX_set_default_passwd_cb(ctx, refuse_passphrase);
    // A server's HelloRequest is refused: a second handshake mid-connection is attack surface
    // that DERP never needs.
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx, http11, sizeof http11);
    switch (options.verify) {
        case verify_mode::system:
            if (!options.ca_file.empty()) {
                if (auto problem = file_problem(options.ca_file, "CA file"); !problem.empty())
                    return unexpected(problem);
                if (SSL_CTX_load_verify_locations(ctx, options.ca_file.c_str(), nullptr) != 1)
                    return unexpected(fmt::format("CA file {}: {}", options.ca_file, openssl_errors()));
            } else {
                SSL_CTX_set_default_verify_paths(ctx);
            }
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
            break;
        case verify_mode::insecure: SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr); break;
        case verify_mode::pinned:
            // The chain is not verified; the pin is checked after the handshake (session::feed).
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_any_chain);
            break;
    }
    return c;
}

std::string openssl_errors() {
    std::string text;
    unsigned long code = 0;
    while ((code = ERR_get_error()) != 0) {
        char line[256];
        ERR_error_string_n(code, line, sizeof line);
        if (!text.empty()) text += "; ";
        text += line;
    }
    return text.empty() ? "no detail from OpenSSL" : text;
}

std::size_t version_index(std::uint16_t version) noexcept {
    switch (version) {
        case TLS1_VERSION: return 0;
        case TLS1_1_VERSION: return 1;
        case TLS1_2_VERSION: return 2;
        case TLS1_3_VERSION: return 3;
        default: return 4;
    }
}

std::string_view version_label(std::uint16_t version) noexcept { return version_labels[version_index(version)]; }

session::session(std::shared_ptr<context> ctx, bool want_ktls)
    : _ctx(std::move(ctx)), _secrets(std::make_unique<secrets>()) {
#if DERP_TLS_WOLFSSL
    if (_ctx->wolf_native() != nullptr) {
        _secrets->wolf_engine = true;
        _secrets->want_ktls = want_ktls;
        _secrets->wolf = wolf_handshake_new(_ctx->wolf_native(), *_secrets, _error);
        if (_secrets->wolf == nullptr) _status = status::failed;
        return;
    }
#endif
    _ssl = SSL_new(_ctx->native());
    if (_ssl == nullptr) {
        _status = status::failed;
        _error = "SSL_new: " + openssl_errors();
        return;
    }
    BIO* bio = BIO_new(window_method());
    BIO_set_data(bio, &_secrets->window);
    SSL_set_bio(_ssl, bio, bio);
    _secrets->want_ktls = want_ktls;
    SSL_set_ex_data(_ssl, session_index(), _secrets.get());
    if (_ctx->is_server()) {
        SSL_set_accept_state(_ssl);
    } else {
        SSL_set_connect_state(_ssl);
        const std::string& host = _ctx->hostname();
        if (!host.empty()) {
            // Go sends no SNI for an IP literal; verification is against the name either way.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wold-style-cast"
            const std::string& sni = _ctx->sni();
            if (!sni.empty() && !is_ip_literal(sni)) SSL_set_tlsext_host_name(_ssl, sni.c_str());
#pragma GCC diagnostic pop
            if (_ctx->settings().verify == context::verify_mode::system) {
                if (is_ip_literal(host)) {
                    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(_ssl), host.c_str());
                } else {
                    SSL_set1_host(_ssl, host.c_str());
                }
            }
        }
    }
}

session::~session() {
    if (_ssl != nullptr) SSL_free(_ssl);
#if DERP_TLS_WOLFSSL
    wolf_handshake_free(_secrets->wolf);
#endif
}

status session::fail(std::string message) noexcept {
    _status = status::failed;
    _error = std::move(message);
    return _status;
}

status session::start(std::string& cipher_out) noexcept {
    if (_status != status::handshaking) return _status;
    io_window& w = _secrets->window;
    w = io_window{};
    w.spill = &cipher_out;
    ERR_clear_error();
    const int r = SSL_do_handshake(_ssl);
    if (r != 1 && SSL_get_error(_ssl, r) != SSL_ERROR_WANT_READ) return fail("handshake: " + openssl_errors());
    return _status;
}

void session::scan_records(std::span<const std::uint8_t> cipher) noexcept {
    std::size_t i = 0;
    while (i < cipher.size()) {
        if (_scan_partial > 0) {
            const std::size_t n = std::min<std::size_t>(_scan_partial, cipher.size() - i);
            _scan_partial -= static_cast<std::uint32_t>(n);
            i += n;
            if (_scan_partial == 0) ++_records_after_handshake;
            continue;
        }
        _scan_header[_scan_header_bytes++] = cipher[i++];
        if (_scan_header_bytes == _scan_header.size()) {
            _scan_header_bytes = 0;
            _scan_partial = static_cast<std::uint32_t>(_scan_header[3]) << 8 | _scan_header[4];
            if (_scan_partial == 0) ++_records_after_handshake;
        }
    }
}

status session::feed(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept {
    if (_status == status::failed || _status == status::closed) return _status;
#if DERP_TLS_WOLFSSL
    if (_secrets->wolf_engine) return feed_wolf(cipher, plain, cipher_out);
#endif
    const std::uint64_t written_before = _secrets->records_written;
    const std::size_t out_before = cipher_out.size();
    const status s = feed_records(cipher, plain, cipher_out);
    if (_secrets->tx_in_kernel && (_secrets->records_written != written_before || _secrets->key_update_owed)) {
        // Encrypted with OpenSSL's TX state, which stopped where the kernel's began: never sent.
        // A KeyUpdate answer OpenSSL holds back until its next write must precede the next
        // record the kernel sends (RFC 8446 4.6.3), which kTLS here cannot do: closing is the
        // honest answer, as it is when kTLS RX meets a KeyUpdate.
        cipher_out.resize(out_before);
        if (s != status::failed)
            return fail("the client wants a record (KeyUpdate answer or alert) that cannot be sent once the "
                        "kernel encrypts: closing");
    }
    return s;
}

status session::feed_records(std::span<const std::uint8_t> cipher, std::string& plain, std::string& cipher_out) noexcept {
    io_window& w = _secrets->window;
    w = io_window{};
    w.in = cipher.data();
    w.in_length = cipher.size();
    w.spill = &cipher_out;
    ERR_clear_error();
    if (_status == status::open) scan_records(cipher);
    if (_status == status::handshaking) {
        const int r = SSL_do_handshake(_ssl);
        if (r != 1) {
            const int e = SSL_get_error(_ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return _status;
            if (!_secrets->refusal.empty()) {
                ERR_clear_error();
                return fail(_secrets->refusal);
            }
            return fail("handshake: " + openssl_errors());
        }
        if (!_ctx->is_server() && _ctx->settings().verify == context::verify_mode::pinned) {
            // Before any application byte is written: the caller may not seal anything (the
            // mesh key in ClientInfo) to a server the pin did not bind.
            const pin_verdict verdict = check_pinned_chain(_ssl, _ctx->settings().pinned, _ctx->hostname());
            if (verdict.problem != pin_problem::none) return fail(verdict.detail);
        }
        _status = status::open;
        _handshake_complete = true;
        if (_hand_off) {
            // Nothing behind the Finished has been read (OpenSSL reads record by record): the
            // record layer takes over from here, at sequence numbers ktls_export() tells.
            _handoff_offset = w.in_position;
            return _status;
        }
        // What follows the peer's Finished in this read is application data under the new
        // keys: from here on records are counted for the kTLS RX sequence number.
        scan_records(cipher.subspan(w.in_position));
    }
    // Decrypt everything available. OpenSSL reads record by record, so what it leaves is at
    // most one partial record, which it keeps. No read is attempted once the input is used up
    // and OpenSSL holds nothing: a read that finds no data allocates the 16 KiB record buffer
    // again (SSL_MODE_RELEASE_BUFFERS frees it only after a record is consumed), and an idle
    // connection would keep it.
    thread_local std::array<char, 16384> chunk;
    while (w.in_position < w.in_length || SSL_has_pending(_ssl) == 1) {
        const int n = SSL_read(_ssl, chunk.data(), static_cast<int>(chunk.size()));
        if (n > 0) {
            plain.append(chunk.data(), static_cast<std::size_t>(n));
            continue;
        }
        const int e = SSL_get_error(_ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            _status = status::closed;
            break;
        }
        return fail("record: " + openssl_errors());
    }
    return _status;
}

std::size_t session::write(std::span<const std::uint8_t> plain, std::span<std::uint8_t> out, std::string& spill) noexcept {
    if (_status != status::open || plain.empty()) return 0;
#if DERP_TLS_WOLFSSL
    if (_secrets->wolf_engine) return seal_records(plain, out, spill);
#endif
    io_window& w = _secrets->window;
    w = io_window{};
    w.out = out.data();
    w.out_capacity = out.size();
    w.spill = &spill;
    ERR_clear_error();
    std::size_t done = 0;
    while (done < plain.size()) {
        std::size_t written = 0;
        if (SSL_write_ex(_ssl, plain.data() + done, plain.size() - done, &written) != 1) {
            fail("write: " + openssl_errors());
            break;
        }
        done += written;
    }
    return w.out_length;
}

void session::shutdown(std::string& cipher_out) noexcept {
    // After the peer's close_notify (closed) ours answers it.
    if (_status != status::open && _status != status::closed) return;
    if (_secrets->wolf_engine) {
        if (_secrets->records != nullptr) _secrets->records->seal_alert(1, 0, cipher_out);
        return;
    }
    io_window& w = _secrets->window;
    w = io_window{};
    w.spill = &cipher_out;
    SSL_shutdown(_ssl);
    ERR_clear_error();
}

std::uint16_t session::version() const noexcept {
    if (_secrets->wolf_engine) return _handshake_complete ? _secrets->wolf_version : 0;
    return _ssl == nullptr || !_handshake_complete ? 0 : static_cast<std::uint16_t>(SSL_version(_ssl));
}

std::string_view session::version_name() const noexcept { return version_label(version()); }

std::string_view session::cipher_name() const noexcept {
    if (_secrets->wolf_engine) return _secrets->wolf_cipher;
    const SSL_CIPHER* c = _ssl == nullptr ? nullptr : SSL_get_current_cipher(_ssl);
    return c == nullptr ? std::string_view{} : std::string_view(SSL_CIPHER_get_name(c));
}

std::string_view session::sni() const noexcept {
    if (_secrets->wolf_engine) return _secrets->wolf_sni;
    const char* name = _ssl == nullptr ? nullptr : SSL_get_servername(_ssl, TLSEXT_NAMETYPE_host_name);
    return name == nullptr ? std::string_view{} : std::string_view(name);
}

std::string_view session::alpn() const noexcept {
    if (_secrets->wolf_engine) return _secrets->wolf_alpn;
    const unsigned char* data = nullptr;
    unsigned int length = 0;
    if (_ssl != nullptr) SSL_get0_alpn_selected(_ssl, &data, &length);
    return data == nullptr ? std::string_view{} : std::string_view(reinterpret_cast<const char*>(data), length);
}

std::int64_t session::peer_leaf_not_after_unix() const noexcept {
    if (_ssl == nullptr) return 0;
    X509* peer = SSL_get0_peer_certificate(_ssl);
    return peer == nullptr ? 0 : not_after_unix(peer);
}

std::optional<node_key> session::peer_meta_key() const noexcept {
    if (_ssl == nullptr || version() != TLS1_3_VERSION) return std::nullopt;
    // The meta certificate follows the leaf (spec 2.15); the peer's own certificate, whose
    // key signed the handshake, is never it.
    X509* peer = SSL_get0_peer_certificate(_ssl);
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(_ssl);
    for (int k = 0; chain != nullptr && k < sk_X509_num(chain); ++k) {
        X509* cert = sk_X509_value(chain, k);
        if (peer != nullptr && X509_cmp(cert, peer) == 0) continue;
        if (auto key = meta_certificate_key(cert)) return *key;
    }
    return std::nullopt;
}

void session::hand_off_records() noexcept {
    _hand_off = true;
    _secrets->want_ktls = true;
}

void session::note_tx_in_kernel() noexcept { _secrets->tx_in_kernel = true; }

void session::forget_traffic_secrets() noexcept {
    // secret_bytes wipes what it frees; clear() alone would keep the bytes in capacity.
    secret_bytes().swap(_secrets->client_traffic);
    secret_bytes().swap(_secrets->server_traffic);
    _secrets->wolf_keys.reset();
}

}  // namespace derp::tls
