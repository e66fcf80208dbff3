// A certificate authority made in-process for tests (OpenSSL 3): its own key and certificate,
// and server certificates signed by it for given IP and DNS names, written where derpd's
// -certmode manual looks for them. Test code only: it throws std::runtime_error on failure.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

// OpenSSL's types, kept out of every includer's namespace.
struct evp_pkey_st;
struct x509_st;

namespace derp::test {

class test_ca {
public:
    // A fresh ECDSA P-256 CA named common_name, valid from an hour ago for 30 days.
    explicit test_ca(std::string_view common_name = "derpd test CA");
    ~test_ca();
    test_ca(const test_ca&) = delete;
    test_ca& operator=(const test_ca&) = delete;

    // The CA certificate as PEM, and written to a file (what SSL_CERT_FILE points to).
    std::string cert_pem() const;
    void write_cert(const std::filesystem::path& path) const;

    // A server certificate (ECDSA P-256, serverAuth) for the given names, signed by this CA:
    // dir/<stem>.crt (the leaf) and dir/<stem>.key (PKCS#8, mode 0600). The first name is
    // also the subject CN. Either list may be empty, but not both.
    void issue(const std::filesystem::path& dir, std::string_view stem, const std::vector<std::string>& ip_sans,
               const std::vector<std::string>& dns_sans = {}) const;

private:
    evp_pkey_st* _key = nullptr;
    x509_st* _cert = nullptr;
};

}  // namespace derp::test
