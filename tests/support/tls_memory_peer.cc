// The in-memory OpenSSL peer and the kernel's view of a record (see tls_memory_peer.hh).
#include "tests/support/tls_memory_peer.hh"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <vector>

namespace derp::test {

memory_peer::~memory_peer() {
    if (_ssl != nullptr) SSL_free(_ssl);
    if (_ctx != nullptr) SSL_CTX_free(_ctx);
    ERR_clear_error();
}

namespace {

// Memory BIOs on both sides: receive() fills _in, take_output() drains _out.
bool attach(SSL_CTX* ctx, SSL** ssl, BIO** in, BIO** out) {
    *ssl = SSL_new(ctx);
    *in = BIO_new(BIO_s_mem());
    *out = BIO_new(BIO_s_mem());
    if (*ssl == nullptr || *in == nullptr || *out == nullptr) return false;
    SSL_set_bio(*ssl, *in, *out);
    return true;
}

}  // namespace

std::unique_ptr<memory_peer> memory_peer::client(int max_version, std::string_view ciphers) {
    std::unique_ptr<memory_peer> p(new memory_peer());
    p->_ctx = SSL_CTX_new(TLS_client_method());
    if (p->_ctx == nullptr) return nullptr;
    SSL_CTX_set_min_proto_version(p->_ctx, TLS1_2_VERSION);
    if (max_version != 0) SSL_CTX_set_max_proto_version(p->_ctx, max_version);
    SSL_CTX_set_verify(p->_ctx, SSL_VERIFY_NONE, nullptr);
    if (!ciphers.empty()) {
        const std::string list(ciphers);
        const bool ok = max_version == TLS1_2_VERSION ? SSL_CTX_set_cipher_list(p->_ctx, list.c_str()) == 1
                                                      : SSL_CTX_set_ciphersuites(p->_ctx, list.c_str()) == 1;
        if (!ok) return nullptr;
    }
    if (!attach(p->_ctx, &p->_ssl, &p->_in, &p->_out)) return nullptr;
    SSL_set_connect_state(p->_ssl);
    return p;
}

std::unique_ptr<memory_peer> memory_peer::server(const std::string& cert_pem, const std::string& key_pem,
                                                 const std::string& chain_pem, int max_version) {
    std::unique_ptr<memory_peer> p(new memory_peer());
    p->_ctx = SSL_CTX_new(TLS_server_method());
    if (p->_ctx == nullptr) return nullptr;
    SSL_CTX_set_min_proto_version(p->_ctx, TLS1_2_VERSION);
    if (max_version != 0) SSL_CTX_set_max_proto_version(p->_ctx, max_version);
    if (SSL_CTX_use_certificate_file(p->_ctx, cert_pem.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(p->_ctx, key_pem.c_str(), SSL_FILETYPE_PEM) != 1)
        return nullptr;
    if (!chain_pem.empty()) {
        FILE* f = std::fopen(chain_pem.c_str(), "r");
        if (f == nullptr) return nullptr;
        int added = 0;
        while (X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr)) {
            // Sent as given, in this order: OpenSSL does not rebuild an explicitly set chain.
            if (SSL_CTX_add0_chain_cert(p->_ctx, cert) != 1) X509_free(cert);
            else ++added;
        }
        std::fclose(f);
        ERR_clear_error();  // the end of the file reads as an error
        if (added == 0) return nullptr;
    }
    if (!attach(p->_ctx, &p->_ssl, &p->_in, &p->_out)) return nullptr;
    SSL_set_accept_state(p->_ssl);
    return p;
}

void memory_peer::receive(std::string_view bytes) {
    if (!bytes.empty()) BIO_write(_in, bytes.data(), static_cast<int>(bytes.size()));
}

std::string memory_peer::take_output() {
    std::string out;
    char buffer[4096];
    int n = 0;
    while ((n = BIO_read(_out, buffer, sizeof buffer)) > 0) out.append(buffer, static_cast<std::size_t>(n));
    return out;
}

bool memory_peer::handshake() {
    const int r = SSL_do_handshake(_ssl);
    ERR_clear_error();
    return r == 1;
}

bool memory_peer::handshake_done() const { return SSL_is_init_finished(_ssl) == 1; }

bool memory_peer::key_update(bool update_requested) {
    if (SSL_key_update(_ssl, update_requested ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1) {
        ERR_clear_error();
        return false;
    }
    // SSL_do_handshake sends a pending KeyUpdate without application data.
    const bool sent = SSL_do_handshake(_ssl) == 1;
    ERR_clear_error();
    return sent;
}

bool memory_peer::renegotiate() {
    if (SSL_renegotiate(_ssl) != 1) {
        ERR_clear_error();
        return false;
    }
    SSL_do_handshake(_ssl);  // writes the hello, then wants the answer
    ERR_clear_error();
    return true;
}

bool memory_peer::write(std::string_view plain) {
    std::size_t written = 0;
    const bool ok = SSL_write_ex(_ssl, plain.data(), plain.size(), &written) == 1 && written == plain.size();
    ERR_clear_error();
    return ok;
}

bool memory_peer::read(std::string& plain) {
    char buffer[16384];
    for (;;) {
        std::size_t n = 0;
        if (SSL_read_ex(_ssl, buffer, sizeof buffer, &n) == 1) {
            plain.append(buffer, n);
            continue;
        }
        const int e = SSL_get_error(_ssl, 0);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_ZERO_RETURN;
    }
}

std::string_view first_record(std::string_view bytes) {
    if (bytes.size() < 5) return {};
    const std::size_t length = static_cast<std::size_t>(static_cast<unsigned char>(bytes[3])) << 8 |
                               static_cast<unsigned char>(bytes[4]);
    if (bytes.size() < 5 + length) return {};
    return bytes.substr(0, 5 + length);
}

std::optional<std::string> open_record(std::string_view record, std::uint16_t version,
                                       std::span<const std::uint8_t> key, std::span<const std::uint8_t> iv,
                                       std::uint64_t seq, bool chacha) {
    if (record.size() < 5 + 16) return std::nullopt;
    const auto* r = reinterpret_cast<const unsigned char*>(record.data());
    const std::size_t length = static_cast<std::size_t>(r[3]) << 8 | r[4];
    if (record.size() != 5 + length) return std::nullopt;
    const EVP_CIPHER* cipher = chacha ? EVP_chacha20_poly1305() : key.size() == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    std::array<unsigned char, 12> nonce{};
    const unsigned char* body = r + 5;
    std::size_t body_bytes = length - 16;
    unsigned char seq_be[8];
    for (int i = 0; i < 8; ++i) seq_be[i] = static_cast<unsigned char>(seq >> (56 - 8 * i));
    if (version == TLS1_2_VERSION && !chacha) {
        if (iv.size() != 4 || body_bytes < 8) return std::nullopt;
        std::memcpy(nonce.data(), iv.data(), 4);
        std::memcpy(nonce.data() + 4, body, 8);  // the explicit nonce
        body += 8;
        body_bytes -= 8;
    } else {
        if (iv.size() != 12) return std::nullopt;
        std::memcpy(nonce.data(), iv.data(), 12);
        for (std::size_t i = 0; i < 8; ++i) nonce[4 + i] ^= seq_be[i];
    }
    std::vector<unsigned char> aad;
    if (version == TLS1_3_VERSION) {
        aad.assign(r, r + 5);
    } else {
        aad.assign(seq_be, seq_be + 8);
        aad.insert(aad.end(), {r[0], r[1], r[2], static_cast<unsigned char>(body_bytes >> 8),
                               static_cast<unsigned char>(body_bytes)});
    }
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    std::string plain(body_bytes, '\0');
    int n = 0, tail = 0;
    const bool ok = ctx != nullptr && EVP_DecryptInit_ex(ctx, cipher, nullptr, key.data(), nonce.data()) == 1 &&
                    EVP_DecryptUpdate(ctx, nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1 &&
                    EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(plain.data()), &n, body,
                                      static_cast<int>(body_bytes)) == 1 &&
                    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, const_cast<unsigned char*>(body + body_bytes)) == 1 &&
                    EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char*>(plain.data()) + n, &tail) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) return std::nullopt;
    if (version == TLS1_3_VERSION) {
        if (plain.empty() || plain.back() != 23) return std::nullopt;  // inner type: application data
        plain.pop_back();
    }
    return plain;
}

}  // namespace derp::test
