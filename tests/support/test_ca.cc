// The in-process test CA (see test_ca.hh): OpenSSL 3's EVP and X509 calls, no openssl tool.
#include "tests/support/test_ca.hh"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace derp::test {
namespace {

[[noreturn]] void fail(const std::string& what) {
    std::string detail;
    for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        detail += std::string(detail.empty() ? "" : "; ") + buf;
    }
    throw std::runtime_error("test CA: " + what + (detail.empty() ? "" : ": " + detail));
}

EVP_PKEY* new_p256_key() {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    if (key == nullptr) fail("EVP_EC_gen(P-256)");
    return key;
}

// A certificate with a random 127-bit serial, validity from an hour ago for `days`, subject CN.
X509* new_certificate(EVP_PKEY* subject_key, std::string_view common_name, long days) {
    X509* cert = X509_new();
    if (cert == nullptr) fail("X509_new");
    X509_set_version(cert, 2);
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof serial) != 1) fail("RAND_bytes");
    serial[0] &= 0x7f;  // positive
    BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), days * 24 * 3600);
    X509_NAME* name = X509_get_subject_name(cert);
    const std::string cn(common_name);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                               -1, 0);
    X509_set_pubkey(cert, subject_key);
    return cert;
}

// One extension in openssl.cnf syntax, with issuer and subject set in v3 (for the key ids).
void add_extension(X509* cert, X509V3_CTX* v3, int nid, const std::string& value) {
    X509_EXTENSION* ext = X509V3_EXT_nconf_nid(nullptr, v3, nid, value.c_str());
    if (ext == nullptr) fail("extension " + std::string(OBJ_nid2sn(nid)) + " = " + value);
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

std::string bio_text(BIO* bio) {
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    return std::string(data, static_cast<std::size_t>(n));
}

std::string cert_to_pem(X509* cert) {
    BIO* bio = BIO_new(BIO_s_mem());
    if (PEM_write_bio_X509(bio, cert) != 1) {
        BIO_free(bio);
        fail("PEM_write_bio_X509");
    }
    std::string out = bio_text(bio);
    BIO_free(bio);
    return out;
}

// Writes contents to path with the given mode (replacing a file that is there).
void write_file(const std::filesystem::path& path, const std::string& contents, mode_t mode) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) fail("open " + path.string() + ": " + std::strerror(errno));
    ::fchmod(fd, mode);
    std::size_t done = 0;
    while (done < contents.size()) {
        const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ::close(fd);
            fail("write " + path.string() + ": " + std::strerror(errno));
        }
        done += static_cast<std::size_t>(n);
    }
    ::close(fd);
}

}  // namespace

test_ca::test_ca(std::string_view common_name) {
    _key = new_p256_key();
    _cert = new_certificate(_key, common_name, 30);
    X509_set_issuer_name(_cert, X509_get_subject_name(_cert));
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, _cert, _cert, nullptr, nullptr, 0);
    add_extension(_cert, &v3, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(_cert, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_extension(_cert, &v3, NID_subject_key_identifier, "hash");
    if (X509_sign(_cert, _key, EVP_sha256()) <= 0) fail("signing the CA certificate");
}

test_ca::~test_ca() {
    X509_free(_cert);
    EVP_PKEY_free(_key);
}

std::string test_ca::cert_pem() const {
    return cert_to_pem(_cert);
}

void test_ca::write_cert(const std::filesystem::path& path) const {
    write_file(path, cert_pem(), 0644);
}

void test_ca::issue(const std::filesystem::path& dir, std::string_view stem, const std::vector<std::string>& ip_sans,
                    const std::vector<std::string>& dns_sans) const {
    if (ip_sans.empty() && dns_sans.empty()) fail("a server certificate needs a name");
    EVP_PKEY* key = new_p256_key();
    X509* cert = new_certificate(key, ip_sans.empty() ? dns_sans.front() : ip_sans.front(), 7);
    try {
        X509_set_issuer_name(cert, X509_get_subject_name(_cert));
        X509V3_CTX v3;
        X509V3_set_ctx(&v3, _cert, cert, nullptr, nullptr, 0);
        std::string san;
        for (const auto& ip : ip_sans) san += (san.empty() ? "" : ",") + std::string("IP:") + ip;
        for (const auto& dns : dns_sans) san += (san.empty() ? "" : ",") + std::string("DNS:") + dns;
        add_extension(cert, &v3, NID_basic_constraints, "critical,CA:FALSE");
        add_extension(cert, &v3, NID_key_usage, "critical,digitalSignature");
        add_extension(cert, &v3, NID_ext_key_usage, "serverAuth");
        add_extension(cert, &v3, NID_subject_key_identifier, "hash");
        add_extension(cert, &v3, NID_authority_key_identifier, "keyid:always");
        add_extension(cert, &v3, NID_subject_alt_name, san);
        if (X509_sign(cert, _key, EVP_sha256()) <= 0) fail("signing the certificate for " + std::string(stem));

        BIO* bio = BIO_new(BIO_s_mem());
        if (PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
            BIO_free(bio);
            fail("PEM_write_bio_PrivateKey");
        }
        const std::string key_pem = bio_text(bio);
        BIO_free(bio);
        write_file(dir / (std::string(stem) + ".key"), key_pem, 0600);
        write_file(dir / (std::string(stem) + ".crt"), cert_to_pem(cert), 0644);
    } catch (...) {
        X509_free(cert);
        EVP_PKEY_free(key);
        throw;
    }
    X509_free(cert);
    EVP_PKEY_free(key);
}

}  // namespace derp::test
