// The certificates derpd makes itself with OpenSSL: the meta certificate that carries the
// server key for fast start (spec 2.15), and the self-signed certificate of an IP-address
// -hostname in -certmode manual (spec 4.2), written so that nobody who can write the
// certificate directory decides where the private key lands.
#include "crypto/tls.hh"

#include <fcntl.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

namespace derp::tls {

result<std::vector<std::uint8_t>, std::string> make_meta_certificate(const node_key& server_key) {
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    if (key == nullptr) return unexpected("Ed25519 key: " + openssl_errors());
    X509* cert = X509_new();
    std::vector<std::uint8_t> der;
    std::string problem;
    do {
        X509_set_version(cert, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(cert), 2);  // the protocol version
        X509_gmtime_adj(X509_getm_notBefore(cert), -30L * 24 * 3600);
        X509_gmtime_adj(X509_getm_notAfter(cert), 30L * 24 * 3600);
        const std::string cn = "derpkey" + server_key.to_string();
        X509_NAME* name = X509_get_subject_name(cert);
        // 71 characters: over X.509's 64-character bound for a CN, which OpenSSL enforces for
        // MBSTRING input. Go does not, and derper's clients expect the whole key: a
        // PrintableString set directly (as Go encodes it) is not checked against the bound.
        if (X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_PRINTABLESTRING,
                                       reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) != 1) {
            problem = "meta certificate name: " + openssl_errors();
            break;
        }
        X509_set_issuer_name(cert, name);
        X509_set_pubkey(cert, key);
        X509_EXTENSION* basic = X509V3_EXT_conf_nid(nullptr, nullptr, NID_basic_constraints, "critical,CA:FALSE");
        if (basic != nullptr) {
            X509_add_ext(cert, basic, -1);
            X509_EXTENSION_free(basic);
        }
        if (X509_sign(cert, key, nullptr) <= 0) {
            problem = "signing the meta certificate: " + openssl_errors();
            break;
        }
        unsigned char* p = nullptr;
        const int length = i2d_X509(cert, &p);
        if (length > 0) der.assign(p, p + length);
        OPENSSL_free(p);
    } while (false);
    X509_free(cert);
    EVP_PKEY_free(key);
    if (!problem.empty()) return unexpected(problem);
    return der;
}

namespace {

// A new file that did not exist: O_EXCL fails on anything already there, a dangling symlink
// included, and O_NOFOLLOW on a symlink in the last component, so nobody who could write the
// directory before us decides where (or with which mode) the bytes land.
int create_new_file(const std::string& path, mode_t mode) {
    return ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
}

std::string creation_problem(const char* what, const std::string& path, int error) {
    return fmt::format("{} {}: {}{}", what, path, std::strerror(error),
                       error == EEXIST || error == ELOOP ? " (something is already there, a symlink perhaps; not replaced)" : "");
}

}  // namespace

result<void, std::string> write_self_signed(const std::string& ip_text, const std::string& cert_path,
                                            const std::string& key_path) {
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    if (key == nullptr) return unexpected("P-256 key: " + openssl_errors());
    X509* cert = X509_new();
    std::string problem;
    bool key_created = false, cert_created = false;
    do {
        X509_set_version(cert, 2);
        std::array<unsigned char, 16> serial{};
        RAND_bytes(serial.data(), serial.size());
        serial[0] &= 0x7f;  // a positive 128-bit serial
        BIGNUM* bn = BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr);
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
        BN_free(bn);
        X509_gmtime_adj(X509_getm_notBefore(cert), 0);
        X509_gmtime_adj(X509_getm_notAfter(cert), 365L * 24 * 3600);
        X509_NAME* name = X509_get_subject_name(cert);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(ip_text.c_str()), -1, -1, 0);
        X509_set_issuer_name(cert, name);
        X509_set_pubkey(cert, key);
        X509V3_CTX v3{};
        X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
        const std::string san = "IP:" + ip_text;
        for (auto [nid, value] : {std::pair{NID_key_usage, "critical,digitalSignature,keyEncipherment"},
                                  std::pair{NID_ext_key_usage, "serverAuth"},
                                  std::pair{NID_basic_constraints, "critical,CA:FALSE"},
                                  std::pair{NID_subject_alt_name, san.c_str()}}) {
            X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
            if (ext == nullptr) {
                problem = fmt::format("certificate extension {}: {}", value, openssl_errors());
                break;
            }
            X509_add_ext(cert, ext, -1);
            X509_EXTENSION_free(ext);
        }
        if (!problem.empty()) break;
        if (X509_sign(cert, key, EVP_sha256()) <= 0) {
            problem = "signing the certificate: " + openssl_errors();
            break;
        }
        // The key first, 0600 from the start (never a moment world-readable), as "EC PRIVATE KEY".
        const int key_fd = create_new_file(key_path, 0600);
        if (key_fd < 0) {
            problem = creation_problem("key", key_path, errno);
            break;
        }
        key_created = true;
        BIO* key_file = BIO_new_fd(key_fd, BIO_CLOSE);
        if (key_file == nullptr) {
            ::close(key_fd);
            problem = fmt::format("writing key {}: {}", key_path, openssl_errors());
            break;
        }
        const bool key_ok = PEM_write_bio_PrivateKey_traditional(key_file, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
        if (BIO_free(key_file) != 1 || !key_ok) {
            problem = fmt::format("writing key {}: {}", key_path, openssl_errors());
            break;
        }
        const int cert_fd = create_new_file(cert_path, 0644);
        if (cert_fd < 0) {
            problem = creation_problem("certificate", cert_path, errno);
            break;
        }
        cert_created = true;
        FILE* cert_file = fdopen(cert_fd, "w");
        if (cert_file == nullptr) {
            problem = fmt::format("writing certificate {}: {}", cert_path, std::strerror(errno));
            ::close(cert_fd);
            break;
        }
        const bool cert_ok = PEM_write_X509(cert_file, cert) == 1;
        if (std::fclose(cert_file) != 0 || !cert_ok) problem = fmt::format("writing certificate {}", cert_path);
    } while (false);
    X509_free(cert);
    EVP_PKEY_free(key);
    if (!problem.empty()) {
        // Half a pair would make the next start fail on files it did not write.
        if (cert_created) ::unlink(cert_path.c_str());
        if (key_created) ::unlink(key_path.c_str());
        return unexpected(problem);
    }
    return {};
}

}  // namespace derp::tls
