// Client admission's wire formats (core/admission.hh): the request derper POSTs, the answers it
// obeys, tailscaled's whois answer, and -verify-client-url's URL.
#include <doctest/doctest.h>

#include <array>
#include <string>

#include "core/admission.hh"

using namespace derp;

TEST_CASE("admission request: derper's JSON, the key with its prefix, the IP as text") {
    std::array<std::uint8_t, key_bytes> raw{};
    for (std::size_t i = 0; i < key_bytes; ++i) raw[i] = static_cast<std::uint8_t>(i);
    const node_key key{key_span(raw)};
    CHECK(admission_request_json(key, "127.0.0.1") ==
          "{\"NodePublic\":\"nodekey:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\","
          "\"Source\":\"127.0.0.1\"}");
    CHECK(admission_request_json(key, "").ends_with("\"Source\":\"\"}"));
    CHECK(admission_request_json(key, "::1\"}x").ends_with("\"Source\":\"::1\"}"));
}

TEST_CASE("admission answer: Allow as Go decodes it") {
    CHECK(parse_admission_answer(R"({"Allow":true})") == admission_answer::allow);
    CHECK(parse_admission_answer(R"({"allow":true})") == admission_answer::allow);
    CHECK(parse_admission_answer(R"( {"ALLOW": true, "Reason": {"x": [1]}} )") == admission_answer::allow);
    CHECK(parse_admission_answer(R"({"Allow":false})") == admission_answer::deny);
    CHECK(parse_admission_answer(R"({})") == admission_answer::deny);
    CHECK(parse_admission_answer("null") == admission_answer::deny);
    CHECK(parse_admission_answer(R"({"Allow":null})") == admission_answer::deny);
    CHECK(parse_admission_answer(R"({"Allow":true,"Allow":false})") == admission_answer::deny);
    CHECK(parse_admission_answer(R"({"Allow":"true"})") == admission_answer::invalid);
    CHECK(parse_admission_answer(R"({"Allow":1})") == admission_answer::invalid);
    CHECK(parse_admission_answer(R"({"Allow":true)") == admission_answer::invalid);
    CHECK(parse_admission_answer(R"({"Allow":true} x)") == admission_answer::invalid);
    CHECK(parse_admission_answer("") == admission_answer::invalid);
    CHECK(parse_admission_answer("<html>") == admission_answer::invalid);
    CHECK(parse_admission_answer("[true]") == admission_answer::invalid);
}

TEST_CASE("whois answer: a WhoIsResponse object") {
    CHECK(whois_answer_valid(R"({"Node":{"ID":1,"Key":"nodekey:ab"},"UserProfile":{"ID":2},"CapMap":{}})"));
    CHECK(whois_answer_valid(R"({"Node":null})"));
    CHECK(whois_answer_valid("null"));
    CHECK(whois_answer_valid("{}"));
    CHECK_FALSE(whois_answer_valid(R"({"Node":"x"})"));
    CHECK_FALSE(whois_answer_valid(R"({"Node":{})"));
    CHECK_FALSE(whois_answer_valid("not json"));
    CHECK_FALSE(whois_answer_valid(""));
}

TEST_CASE("status answer: Self.PublicKey as ipnstate.Status decodes it") {
    const std::string hex(64, 'a');
    const auto key = node_key::from_hex(hex);
    REQUIRE(key);
    auto got = status_self_key(R"({"Version":"1.76.1","BackendState":"Running","Self":{"ID":"n1","PublicKey":"nodekey:)" + hex +
                               R"(","HostName":"relay"},"Peer":null})");
    REQUIRE(got);
    CHECK(*got == *key);
    got = status_self_key(R"({"self":{"publickey":"nodekey:)" + hex + R"("}})");  // Go folds key case
    REQUIRE(got);
    CHECK(*got == *key);
    CHECK_FALSE(status_self_key(R"({"Self":{"PublicKey":")" + hex + R"("}})"));  // no prefix
    CHECK_FALSE(status_self_key(R"({"Self":{"PublicKey":"nodekey:abc"}})"));
    CHECK_FALSE(status_self_key(R"({"Self":{"PublicKey":"nodekey:)" + std::string(64, 'g') + R"("}})"));
    CHECK_FALSE(status_self_key(R"({"Self":null})"));
    CHECK_FALSE(status_self_key(R"({"Self":{}})"));
    CHECK_FALSE(status_self_key(R"({"BackendState":"NeedsLogin"})"));
    CHECK_FALSE(status_self_key("[1]"));
    CHECK_FALSE(status_self_key(R"({"Self":{"PublicKey":"nodekey:)" + hex + R"("})"));  // truncated
    CHECK_FALSE(status_self_key(""));
}

TEST_CASE("http(s) URL: scheme, host, port, target; anything else refused") {
    auto u = parse_http_url("http://127.0.0.1:8080/admit?x=1");
    REQUIRE(u);
    CHECK(u->host == "127.0.0.1");
    CHECK(u->port == 8080);
    CHECK(u->target == "/admit?x=1");
    u = parse_http_url("HTTP://[::1]/");
    REQUIRE(u);
    CHECK(u->host == "::1");
    CHECK(u->port == 80);
    CHECK(u->target == "/");
    u = parse_http_url("http://admit.example");
    REQUIRE(u);
    CHECK(u->target == "/");
    u = parse_http_url("http://h?q");
    REQUIRE(u);
    CHECK(u->target == "/?q");
    CHECK_FALSE(u->tls);
    u = parse_http_url("https://admit.example/v1/admit");
    REQUIRE(u);
    CHECK(u->tls);
    CHECK(u->host == "admit.example");
    CHECK(u->port == 443);
    CHECK(u->target == "/v1/admit");
    u = parse_http_url("HTTPS://[::1]:8443");
    REQUIRE(u);
    CHECK(u->tls);
    CHECK(u->port == 8443);
    for (const char* bad : {"https://", "https:/h/", "httpss://h/", "http://", "http:///x", "http://u@h/", "http://h:0/", "http://h:65536/",
                            "http://h:/", "http://[::1/", "http://[::1]x/", "http://h/a b", "ftp://h/", ""})
        CHECK_MESSAGE(!parse_http_url(bad), bad);
}
