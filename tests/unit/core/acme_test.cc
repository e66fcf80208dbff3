// ACME documents, payloads, URLs, Retry-After and the renewal schedule (core/acme.hh), and the
// HTTP/1.1 response parser the ACME client reads with (core/http_response.hh).
#include <doctest/doctest.h>

#include <string>

#include "core/acme.hh"
#include "core/http_response.hh"

using namespace derp;

namespace {
constexpr std::string_view token = "DGyRejmCefe7v4NfDGDKfA0123456789";
}

TEST_CASE("acme directory: the three URLs, https only, limits") {
    auto d = acme::parse_directory(
        R"({"newNonce":"https://a.example/nonce","newAccount":"https://a.example/acct","newOrder":"https://a.example/order",)"
        R"("revokeCert":"https://a.example/revoke","meta":{"termsOfService":"https://a.example/tos"}})");
    REQUIRE(d.has_value());
    CHECK(d->new_order == "https://a.example/order");
    CHECK(d->terms_of_service == "https://a.example/tos");
    CHECK_FALSE(acme::parse_directory("not json"));
    CHECK(acme::parse_directory("[]").error() == "directory: not a JSON object");
    CHECK(acme::parse_directory(R"({"newNonce":"https://a/n","newAccount":"https://a/a"})").error() ==
          "directory: no \"newOrder\"");
    CHECK_FALSE(acme::parse_directory(R"({"newNonce":"http://a/n","newAccount":"https://a/a","newOrder":"https://a/o"})"));
    CHECK_FALSE(acme::parse_directory(R"({"newNonce":7,"newAccount":"https://a/a","newOrder":"https://a/o"})"));
    const std::string huge = R"({"x":")" + std::string(acme::document_bytes_max, 'a') + R"("})";
    CHECK(acme::parse_directory(huge).error().find("over the limit") != std::string::npos);
}

TEST_CASE("acme order and authorization") {
    auto o = acme::parse_order(R"({"status":"valid","authorizations":["https://a/authz/1"],"finalize":"https://a/fin",)"
                               R"("certificate":"https://a/cert/1"})");
    REQUIRE(o.has_value());
    CHECK(o->state == acme::status::valid);
    CHECK(o->certificate == "https://a/cert/1");
    CHECK_FALSE(acme::parse_order(R"({"status":"valid","authorizations":[],"finalize":"https://a/fin"})"));  // no certificate
    CHECK_FALSE(acme::parse_order(R"({"status":"bogus","authorizations":[],"finalize":"https://a/fin"})"));
    CHECK_FALSE(acme::parse_order(R"({"status":"pending","authorizations":[1],"finalize":"https://a/fin"})"));
    auto invalid = acme::parse_order(R"({"status":"invalid","authorizations":[],"finalize":"https://a/f",)"
                                     R"("error":{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no"}})");
    REQUIRE(invalid.has_value());
    REQUIRE(invalid->error.has_value());
    CHECK(invalid->error->to_string() == "urn:ietf:params:acme:error:rejectedIdentifier: no");

    const std::string authz = std::string(R"({"status":"pending","identifier":{"type":"dns","value":"derp.example.com"},)") +
                              R"("challenges":[{"type":"tls-alpn-01","url":"https://a/c/1","status":"pending","token":")" +
                              std::string(token) + R"("},{"type":"dns-01","url":"https://a/c/2","status":"pending","token":"x"}]})";
    auto a = acme::parse_authorization(authz);
    REQUIRE(a.has_value());
    CHECK(a->identifier_value == "derp.example.com");
    REQUIRE(a->challenges.size() == 2);
    CHECK(a->challenges[0].token == token);
    // A token derpd would put in a path or a certificate must be base64url.
    CHECK(acme::parse_authorization(R"({"status":"pending","identifier":{"type":"dns","value":"d"},"challenges":[)"
                                    R"({"type":"http-01","url":"https://a/c","status":"pending","token":"../../../etc/passwd"}]})")
              .error()
              .find("token") != std::string::npos);
    CHECK(acme::token_is_valid(token));
    CHECK_FALSE(acme::token_is_valid("short"));
    CHECK_FALSE(acme::token_is_valid(std::string(257, 'a')));
    CHECK(acme::key_authorization("tok", "thumb") == "tok.thumb");
}

TEST_CASE("acme problem documents and account status") {
    auto p = acme::parse_problem(R"({"type":"urn:ietf:params:acme:error:badNonce","detail":"stale","status":400})");
    REQUIRE(p.has_value());
    CHECK(p->http_status == 400);
    CHECK(p->to_string() == "urn:ietf:params:acme:error:badNonce: stale");
    CHECK_FALSE(acme::parse_problem("{}"));
    auto longer = acme::parse_problem(R"({"detail":")" + std::string(5000, 'x') + R"("})");
    REQUIRE(longer.has_value());
    CHECK(longer->detail.size() == acme::detail_chars_max + 3);
    CHECK(acme::parse_account_status(R"({"status":"deactivated"})").value() == acme::status::deactivated);
}

TEST_CASE("acme payloads and the protected header") {
    CHECK(acme::new_account_payload("") == R"({"termsOfServiceAgreed":true})");
    CHECK(acme::new_account_payload("ops@example.com") ==
          R"({"contact":["mailto:ops@example.com"],"termsOfServiceAgreed":true})");
    CHECK(acme::new_order_payload("derp.example.com") ==
          R"({"identifiers":[{"type":"dns","value":"derp.example.com"}]})");
    CHECK(acme::finalize_payload("Q1NS") == R"({"csr":"Q1NS"})");
    CHECK(acme::protected_header("n1", "https://a/acct", R"({"crv":"P-256","kty":"EC","x":"X","y":"Y"})", "") ==
          R"({"alg":"ES256","jwk":{"crv":"P-256","kty":"EC","x":"X","y":"Y"},"nonce":"n1","url":"https://a/acct"})");
    CHECK(acme::protected_header("n2", "https://a/order", "", "https://a/acct/7") ==
          R"({"alg":"ES256","kid":"https://a/acct/7","nonce":"n2","url":"https://a/order"})");
    CHECK(acme::email_is_valid("a@b.c"));
    CHECK_FALSE(acme::email_is_valid("a@b.c,evil@x"));
    CHECK_FALSE(acme::email_is_valid("no-at-sign"));
    CHECK_FALSE(acme::email_is_valid("a b@c"));
}

TEST_CASE("https URLs") {
    auto u = acme::parse_https_url("https://acme-v02.api.letsencrypt.org/directory");
    REQUIRE(u.has_value());
    CHECK(u->host == "acme-v02.api.letsencrypt.org");
    CHECK(u->port == 443);
    CHECK(u->target == "/directory");
    auto v6 = acme::parse_https_url("HTTPS://[::1]:14000?x#y");
    REQUIRE(v6.has_value());
    CHECK(v6->host == "::1");
    CHECK(v6->port == 14000);
    CHECK(v6->target == "/?x");
    CHECK(v6->host_header == "[::1]:14000");
    CHECK_FALSE(acme::parse_https_url("http://a/"));
    CHECK_FALSE(acme::parse_https_url("https://user@a/"));
    CHECK_FALSE(acme::parse_https_url("https://a:0/"));
    CHECK_FALSE(acme::parse_https_url("https://a:65536/"));
    CHECK_FALSE(acme::parse_https_url("https:///x"));
    CHECK_FALSE(acme::parse_https_url("https://a/b c"));
}

TEST_CASE("Retry-After, renewal time, backoff") {
    CHECK(acme::parse_retry_after("120", 0) == 120);
    CHECK(acme::parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 - 60) == 60);
    CHECK(acme::parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777 + 60) == 0);
    CHECK_FALSE(acme::parse_retry_after("soon", 0));
    CHECK_FALSE(acme::parse_retry_after("12x", 0));
    // 90 days: renewal with 30 days left; full jitter moves it 9 days earlier.
    constexpr std::int64_t day = 86400;
    CHECK(acme::renewal_time_unix(0, 90 * day, 0) == 60 * day);
    CHECK(acme::renewal_time_unix(0, 90 * day, 1) == 51 * day);
    CHECK(acme::backoff_ns(1, 1000, 10'000) == 1000);
    CHECK(acme::backoff_ns(3, 1000, 10'000) == 4000);
    CHECK(acme::backoff_ns(40, 1000, 10'000) == 10'000);
}

TEST_CASE("HTTP/1.1 response heads and chunked bodies") {
    http_response_head head;
    const std::string text = "HTTP/1.1 201 Created\r\nReplay-Nonce:  abc \r\nlocation: https://a/1\r\n\r\nbody";
    for (std::size_t n = 0; n < text.size() - 4; ++n)
        CHECK(parse_http_response_head(std::string_view(text).substr(0, n), head).state != http_response_parse::complete);
    REQUIRE(parse_http_response_head(text, head).state == http_response_parse::complete);
    CHECK(head.status == 201);
    CHECK(head.head_bytes == text.size() - 4);
    CHECK(head.field("replay-nonce") == "abc");
    CHECK(head.field("Location") == "https://a/1");
    CHECK(parse_http_response_head("SSH-2.0-OpenSSH\r\n", head).state == http_response_parse::error);
    CHECK(parse_http_response_head("HTTP/1.1 2000 X\r\n\r\n", head).state == http_response_parse::error);
    CHECK(parse_http_response_head("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", head).state == http_response_parse::error);
    CHECK(parse_http_response_head(std::string(http_response_head_bytes_max + 1, 'H'), head).state ==
          http_response_parse::error);

    std::string body;
    CHECK(decode_chunked("5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: v\r\n\r\n", 100, body).state ==
          http_response_parse::complete);
    CHECK(body == "hello world");
    CHECK(decode_chunked("5\r\nhel", 100, body).state == http_response_parse::need_more);
    CHECK(decode_chunked("5\r\nhello\r\n0\r\n", 100, body).state == http_response_parse::need_more);
    CHECK(decode_chunked("zz\r\n", 100, body).state == http_response_parse::error);
    CHECK(decode_chunked("65\r\n", 100, body).state == http_response_parse::error);  // 101 bytes > 100
    CHECK(decode_chunked("5\r\nhelloXX0\r\n\r\n", 100, body).state == http_response_parse::error);
}
