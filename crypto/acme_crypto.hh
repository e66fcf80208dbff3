// The cryptography of derpd's ACME client (RFC 8555, RFC 8737) with OpenSSL 3: the account key
// (ECDSA P-256) as a JWK and its thumbprint (RFC 7638), JWS ES256 signatures in flattened JSON
// (RFC 7515), the CSR for -hostname, the TLS-ALPN-01 challenge certificate, a look at an issued
// chain, and the registry of challenge answers that the shards serve. No I/O apart from what
// the caller hands in as text.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"
#include "crypto/tls.hh"

struct evp_pkey_st;

namespace derp::tls {

// RFC 4648 section 5, no padding.
std::string base64url(std::span<const std::uint8_t> bytes);
std::string base64url(std::string_view bytes);

// An ECDSA P-256 private key: the ACME account key, or a certificate key.
class ec_key {
public:
    ec_key() = default;
    ~ec_key();
    ec_key(ec_key&& other) noexcept : _key(other._key) { other._key = nullptr; }
    ec_key& operator=(ec_key&& other) noexcept;
    ec_key(const ec_key&) = delete;
    ec_key& operator=(const ec_key&) = delete;

    static result<ec_key, std::string> generate();
    // PEM ("EC PRIVATE KEY" or PKCS#8); an encrypted key or another curve is refused.
    static result<ec_key, std::string> from_pem(std::string_view pem);
    std::string to_pem() const;  // "EC PRIVATE KEY", as derper's autocert cache

    // {"crv":"P-256","kty":"EC","x":"..","y":".."}: members in RFC 7638's order, no spaces, so
    // that the same text is the JWK and the thumbprint's input.
    std::string jwk_json() const;
    std::string thumbprint_b64url() const;  // base64url(SHA-256(jwk_json()))
    // ES256 (RFC 7518 3.4): r || s, 32 bytes each, over SHA-256 of `data`.
    result<std::array<std::uint8_t, 64>, std::string> sign_es256(std::string_view data) const;
    evp_pkey_st* native() const noexcept { return _key; }

private:
    explicit ec_key(evp_pkey_st* key) noexcept : _key(key) {}
    evp_pkey_st* _key = nullptr;
};

// The flattened JWS JSON serialization (RFC 7515 7.2.2) of `payload` under `protected_json`;
// an empty payload is ACME's POST-as-GET.
result<std::string, std::string> jws_flattened(const ec_key& key, std::string_view protected_json,
                                               std::string_view payload);

// A PKCS#10 CSR (DER) for one DNS name: subject CN and subjectAltName = hostname.
result<std::vector<std::uint8_t>, std::string> make_csr_der(const ec_key& key, const std::string& hostname);

// RFC 8737 3: a self-signed certificate for hostname whose critical id-pe-acmeIdentifier
// extension (1.3.6.1.5.5.7.1.31) holds the OCTET STRING SHA-256(key authorization), as a
// server context that selects ALPN "acme-tls/1" and nothing else.
result<std::shared_ptr<context>, std::string> make_tls_alpn_challenge_context(const std::string& hostname,
                                                                              std::string_view key_authorization);

// What derpd checks of an issued chain before using it: PEM certificates, the leaf first,
// whose key is `key`, valid for hostname.
struct chain_info {
    std::int64_t not_before_unix = 0;
    std::int64_t not_after_unix = 0;
    std::size_t certificates = 0;
};
result<chain_info, std::string> check_issued_chain(std::string_view pem, const ec_key& key, const std::string& hostname);

// The answers to the ACME challenges in flight: the ACME client's thread sets them, the
// shards read them for a ClientHello offering "acme-tls/1" (TLS-ALPN-01, in the server
// contexts' ClientHello callback) and for GET /.well-known/acme-challenge/<token> on the
// port-80 listener (HTTP-01). Both are rare (a validation is a handful of connections), so a
// mutex is cheaper to reason about than anything lock-free.
class acme_challenges {
public:
    void set_tls_alpn(const std::string& hostname, std::shared_ptr<context> ctx);
    void clear_tls_alpn(const std::string& hostname);
    std::shared_ptr<context> tls_alpn(std::string_view hostname) const;
    void set_http01(const std::string& token, std::string key_authorization);
    void clear_http01(const std::string& token);
    std::optional<std::string> http01(std::string_view token) const;

private:
    mutable std::mutex _mutex;
    std::map<std::string, std::shared_ptr<context>, std::less<>> _tls_alpn;
    std::map<std::string, std::string, std::less<>> _http01;
};

}  // namespace derp::tls
