// ACME's keys, signatures, CSR and challenge certificate with OpenSSL 3 (see acme_crypto.hh).
#include "crypto/acme_crypto.hh"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>

#include <fmt/format.h>

namespace derp::tls {
namespace {

int refuse_passphrase(char*, int, int, void* asked) {
    if (asked != nullptr) *static_cast<bool*>(asked) = true;
    return -1;
}

std::int64_t asn1_time_unix(const ASN1_TIME* t) {
    std::tm when{};
    if (t == nullptr || ASN1_TIME_to_tm(t, &when) != 1) return 0;
    return static_cast<std::int64_t>(timegm(&when));
}

bool is_p256(EVP_PKEY* key) {
    if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) return false;
    char group[64] = {};
    std::size_t length = 0;
    return EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &length) == 1 &&
           std::string_view(group, length) == "prime256v1";
}

// One X.509v3 extension from OpenSSL's configuration syntax onto a certificate or request.
bool add_extension(STACK_OF(X509_EXTENSION) * list, X509* cert, int nid, const std::string& value) {
    X509V3_CTX v3{};
    X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, cert != nullptr ? &v3 : nullptr, nid, value.c_str());
    if (ext == nullptr) return false;
    bool ok = false;
    if (list != nullptr) ok = sk_X509_EXTENSION_push(list, ext) > 0;
    else ok = X509_add_ext(cert, ext, -1) == 1;
    if (list == nullptr || !ok) X509_EXTENSION_free(ext);
    return ok;
}

int alpn_acme_only(SSL*, const unsigned char** out, unsigned char* out_length, const unsigned char* in,
                   unsigned int in_length, void*) {
    static const unsigned char acme[] = {10, 'a', 'c', 'm', 'e', '-', 't', 'l', 's', '/', '1'};
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, out_length, acme, sizeof acme, in, in_length) == OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
    }
    // RFC 8737 4: this certificate is only for acme-tls/1.
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

std::string base64url(std::span<const std::uint8_t> bytes) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const std::uint32_t v = std::uint32_t{bytes[i]} << 16 | std::uint32_t{bytes[i + 1]} << 8 | bytes[i + 2];
        for (int shift : {18, 12, 6, 0}) out += alphabet[(v >> shift) & 63];
    }
    if (bytes.size() - i == 1) {
        const std::uint32_t v = std::uint32_t{bytes[i]} << 16;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
    } else if (bytes.size() - i == 2) {
        const std::uint32_t v = std::uint32_t{bytes[i]} << 16 | std::uint32_t{bytes[i + 1]} << 8;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
    }
    return out;
}

std::string base64url(std::string_view bytes) {
    return base64url(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
}

ec_key::~ec_key() { EVP_PKEY_free(_key); }

ec_key& ec_key::operator=(ec_key&& other) noexcept {
    if (this != &other) {
        EVP_PKEY_free(_key);
        _key = other._key;
        other._key = nullptr;
    }
    return *this;
}

result<ec_key, std::string> ec_key::generate() {
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    if (key == nullptr) return unexpected("P-256 key: " + openssl_errors());
    return ec_key(key);
}

result<ec_key, std::string> ec_key::from_pem(std::string_view pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (bio == nullptr) return unexpected("BIO: " + openssl_errors());
    bool asked = false;
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, refuse_passphrase, &asked);
    BIO_free(bio);
    if (key == nullptr) {
        ERR_clear_error();
        return unexpected(std::string(asked ? "the key is encrypted" : "not a PEM private key"));
    }
    if (!is_p256(key)) {
        EVP_PKEY_free(key);
        return unexpected(std::string("not an ECDSA P-256 key"));
    }
    return ec_key(key);
}

std::string ec_key::to_pem() const {
    BIO* bio = BIO_new(BIO_s_mem());
    std::string out;
    if (bio != nullptr && PEM_write_bio_PrivateKey_traditional(bio, _key, nullptr, nullptr, 0, nullptr, nullptr) == 1) {
        char* data = nullptr;
        const long length = BIO_get_mem_data(bio, &data);
        if (length > 0) out.assign(data, static_cast<std::size_t>(length));
    }
    BIO_free(bio);
    return out;
}

std::string ec_key::jwk_json() const {
    BIGNUM* x = nullptr;
    BIGNUM* y = nullptr;
    std::array<std::uint8_t, 32> xb{}, yb{};
    if (EVP_PKEY_get_bn_param(_key, OSSL_PKEY_PARAM_EC_PUB_X, &x) == 1 &&
        EVP_PKEY_get_bn_param(_key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) == 1) {
        BN_bn2binpad(x, xb.data(), static_cast<int>(xb.size()));
        BN_bn2binpad(y, yb.data(), static_cast<int>(yb.size()));
    }
    BN_free(x);
    BN_free(y);
    return fmt::format(R"({{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}})", base64url(xb), base64url(yb));
}

std::string ec_key::thumbprint_b64url() const {
    const std::string jwk = jwk_json();
    std::array<std::uint8_t, 32> digest{};
    unsigned int length = 0;
    EVP_Digest(jwk.data(), jwk.size(), digest.data(), &length, EVP_sha256(), nullptr);
    return base64url(digest);
}

result<std::array<std::uint8_t, 64>, std::string> ec_key::sign_es256(std::string_view data) const {
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    std::vector<unsigned char> der(80);
    std::size_t der_length = der.size();
    const bool ok = md != nullptr && EVP_DigestSignInit(md, nullptr, EVP_sha256(), nullptr, _key) == 1 &&
                    EVP_DigestSign(md, der.data(), &der_length, reinterpret_cast<const unsigned char*>(data.data()),
                                   data.size()) == 1;
    EVP_MD_CTX_free(md);
    if (!ok) return unexpected("ES256 signature: " + openssl_errors());
    // OpenSSL signs in DER (SEQUENCE of two INTEGERs); JWS wants the fixed-width pair.
    const unsigned char* p = der.data();
    ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_length));
    if (sig == nullptr) return unexpected("ES256 signature: " + openssl_errors());
    std::array<std::uint8_t, 64> raw{};
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw.data(), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw.data() + 32, 32);
    ECDSA_SIG_free(sig);
    return raw;
}

result<std::string, std::string> jws_flattened(const ec_key& key, std::string_view protected_json,
                                               std::string_view payload) {
    const std::string protected_b64 = base64url(protected_json);
    const std::string payload_b64 = base64url(payload);
    auto sig = key.sign_es256(protected_b64 + "." + payload_b64);
    if (!sig) return unexpected(sig.error());
    return fmt::format(R"({{"protected":"{}","payload":"{}","signature":"{}"}})", protected_b64, payload_b64,
                       base64url(sig.value()));
}

result<std::vector<std::uint8_t>, std::string> make_csr_der(const ec_key& key, const std::string& hostname) {
    X509_REQ* req = X509_REQ_new();
    STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
    std::vector<std::uint8_t> der;
    std::string problem;
    do {
        X509_NAME* name = X509_REQ_get_subject_name(req);
        if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(hostname.c_str()),
                                       -1, -1, 0) != 1 ||
            X509_REQ_set_pubkey(req, key.native()) != 1 ||
            !add_extension(exts, nullptr, NID_subject_alt_name, "DNS:" + hostname) ||
            X509_REQ_add_extensions(req, exts) != 1) {
            problem = "CSR for " + hostname + ": " + openssl_errors();
            break;
        }
        if (X509_REQ_sign(req, key.native(), EVP_sha256()) <= 0) {
            problem = "signing the CSR: " + openssl_errors();
            break;
        }
        unsigned char* p = nullptr;
        const int length = i2d_X509_REQ(req, &p);
        if (length > 0) der.assign(p, p + length);
        OPENSSL_free(p);
    } while (false);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    if (!problem.empty()) return unexpected(problem);
    if (der.empty()) return unexpected("CSR: " + openssl_errors());
    return der;
}

result<std::shared_ptr<context>, std::string> make_tls_alpn_challenge_context(const std::string& hostname,
                                                                              std::string_view key_authorization) {
    auto key = ec_key::generate();
    if (!key) return unexpected(key.error());
    X509* cert = X509_new();
    std::shared_ptr<context> c;
    std::string problem;
    do {
        X509_set_version(cert, 2);
        std::array<unsigned char, 16> serial{};
        RAND_bytes(serial.data(), serial.size());
        serial[0] &= 0x7f;
        BIGNUM* bn = BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr);
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
        BN_free(bn);
        X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
        X509_gmtime_adj(X509_getm_notAfter(cert), 7L * 24 * 3600);
        X509_NAME* name = X509_get_subject_name(cert);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(hostname.c_str()),
                                   -1, -1, 0);
        X509_set_issuer_name(cert, name);
        X509_set_pubkey(cert, key->native());
        if (!add_extension(nullptr, cert, NID_subject_alt_name, "DNS:" + hostname)) {
            problem = "challenge certificate SAN: " + openssl_errors();
            break;
        }
        // extnValue is the DER of acmeIdentifier ::= OCTET STRING (SIZE (32)): 04 20 <digest>.
        std::array<std::uint8_t, 34> value{0x04, 0x20};
        unsigned int digest_length = 0;
        EVP_Digest(key_authorization.data(), key_authorization.size(), value.data() + 2, &digest_length, EVP_sha256(),
                   nullptr);
        ASN1_OBJECT* oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
        ASN1_OCTET_STRING* octets = ASN1_OCTET_STRING_new();
        ASN1_OCTET_STRING_set(octets, value.data(), static_cast<int>(value.size()));
        X509_EXTENSION* ext = oid != nullptr ? X509_EXTENSION_create_by_OBJ(nullptr, oid, 1, octets) : nullptr;
        const bool added = ext != nullptr && X509_add_ext(cert, ext, -1) == 1;
        X509_EXTENSION_free(ext);
        ASN1_OCTET_STRING_free(octets);
        ASN1_OBJECT_free(oid);
        if (!added) {
            problem = "acmeIdentifier extension: " + openssl_errors();
            break;
        }
        if (X509_sign(cert, key->native(), EVP_sha256()) <= 0) {
            problem = "signing the challenge certificate: " + openssl_errors();
            break;
        }
        SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
        if (ctx == nullptr) {
            problem = "SSL_CTX_new: " + openssl_errors();
            break;
        }
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_cipher_list(ctx, tls12_ciphers_default);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_alpn_select_cb(ctx, alpn_acme_only, nullptr);
        if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key->native()) != 1) {
            problem = "challenge context: " + openssl_errors();
            SSL_CTX_free(ctx);
            break;
        }
        c = context::adopt_server(ctx, hostname);
    } while (false);
    X509_free(cert);
    if (!problem.empty()) return unexpected(problem);
    return c;
}

result<chain_info, std::string> check_issued_chain(std::string_view pem, const ec_key& key, const std::string& hostname) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (bio == nullptr) return unexpected("BIO: " + openssl_errors());
    chain_info info;
    std::string problem;
    X509* cert = nullptr;
    while ((cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) != nullptr) {
        if (info.certificates == 0) {
            info.not_before_unix = asn1_time_unix(X509_get0_notBefore(cert));
            info.not_after_unix = asn1_time_unix(X509_get0_notAfter(cert));
            if (X509_check_private_key(cert, key.native()) != 1) problem = "the leaf is not for derpd's certificate key";
            else if (X509_check_host(cert, hostname.data(), hostname.size(), 0, nullptr) != 1)
                problem = "the leaf is not valid for " + hostname;
        }
        ++info.certificates;
        X509_free(cert);
    }
    BIO_free(bio);
    ERR_clear_error();  // the loop ends on "no start line"
    if (info.certificates == 0) return unexpected(std::string("no PEM certificate in the chain"));
    if (!problem.empty()) return unexpected(problem);
    if (info.not_after_unix <= info.not_before_unix) return unexpected(std::string("the leaf's validity is empty"));
    return info;
}

void acme_challenges::set_tls_alpn(const std::string& hostname, std::shared_ptr<context> ctx) {
    std::lock_guard lock(_mutex);
    _tls_alpn[hostname] = std::move(ctx);
}

void acme_challenges::clear_tls_alpn(const std::string& hostname) {
    std::lock_guard lock(_mutex);
    _tls_alpn.erase(hostname);
}

std::shared_ptr<context> acme_challenges::tls_alpn(std::string_view hostname) const {
    std::lock_guard lock(_mutex);
    auto it = _tls_alpn.find(hostname);
    return it == _tls_alpn.end() ? nullptr : it->second;
}

void acme_challenges::set_http01(const std::string& token, std::string key_authorization) {
    std::lock_guard lock(_mutex);
    _http01[token] = std::move(key_authorization);
}

void acme_challenges::clear_http01(const std::string& token) {
    std::lock_guard lock(_mutex);
    _http01.erase(token);
}

std::optional<std::string> acme_challenges::http01(std::string_view token) const {
    std::lock_guard lock(_mutex);
    auto it = _http01.find(token);
    if (it == _http01.end()) return std::nullopt;
    return it->second;
}

}  // namespace derp::tls
