// derper's HTTP endpoint rules: the /debug/ access rule at its range edges, the challenge rule,
// Go's header order, and the routing table.
#include <doctest/doctest.h>

#include <string>

#include "core/http_endpoints.hh"

using namespace derp;

namespace {
ip16 v4(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d) { return ipv4_mapped({a, b, c, d}); }
ip16 v6(std::initializer_list<std::uint8_t> prefix) {
    ip16 out{};
    std::size_t i = 0;
    for (auto b : prefix) out[i++] = b;
    return out;
}
// The parsed request points into its text, so both live together.
struct request_text {
    std::string text;
    http_request req;
};
void parse(std::string text, request_text& out) {
    out.text = std::move(text);
    const auto r = parse_http_request({reinterpret_cast<const std::uint8_t*>(out.text.data()), out.text.size()}, out.req);
    REQUIRE(r.status == http_parse_status::complete);
}
}  // namespace

TEST_CASE("debug access: loopback and Tailscale ranges only, never through a proxy") {
    struct access_case {
        ip16 ip;
        bool allowed;
        const char* what;
    };
    const access_case cases[] = {
        {v4(127, 0, 0, 1), true, "127.0.0.1"},
        {v4(127, 255, 1, 2), true, "127/8"},
        {v4(100, 64, 0, 0), true, "100.64.0.0 (first of 100.64/10)"},
        {v4(100, 127, 255, 255), true, "100.127.255.255 (last of 100.64/10)"},
        {v4(100, 63, 255, 255), false, "just below 100.64/10"},
        {v4(100, 128, 0, 0), false, "just above 100.64/10"},
        {v4(100, 115, 92, 1), false, "100.115.92.0/23 is carved out"},
        {v4(100, 115, 93, 255), false, "100.115.93.255, still in the /23"},
        {v4(100, 115, 94, 0), true, "100.115.94.0, after the /23"},
        {v4(10, 0, 0, 1), false, "private LAN"},
        {v4(192, 0, 2, 1), false, "public"},
        {v6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}), true, "::1"},
        {v6({0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 1}), true, "fd7a:115c:a1e0::/48"},
        {v6({0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe1}), false, "fd7a:115c:a1e1:: (outside the /48)"},
        {v6({0x20, 0x01, 0x0d, 0xb8}), false, "2001:db8::"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.what);
        CHECK(debug_access_allowed(c.ip, false) == c.allowed);
        CHECK_FALSE(debug_access_allowed(c.ip, true));  // X-Forwarded-For: never
    }
}

TEST_CASE("X-Tailscale-Challenge: allowed characters and length") {
    CHECK(valid_tailscale_challenge("ts_192.0.2.1"));
    CHECK(valid_tailscale_challenge("abc-DEF:09._"));
    CHECK(valid_tailscale_challenge(std::string(64, 'x')));
    CHECK_FALSE(valid_tailscale_challenge(std::string(65, 'x')));
    CHECK_FALSE(valid_tailscale_challenge(""));
    CHECK_FALSE(valid_tailscale_challenge("foo bar"));
    CHECK_FALSE(valid_tailscale_challenge("bad/char"));
    CHECK_FALSE(valid_tailscale_challenge(std::string("nul\0x", 5)));
}

TEST_CASE("Go's response layout: sorted headers, Date, Content-Length, sniffed type, body") {
    const http_header_field headers[] = {{"X-B", "2"}, {"Access-Control-Allow-Origin", "*"}};
    const std::string r = go_http_response(200, headers, "hi", 0, false, true);
    CHECK(r == "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nX-B: 2\r\n"
               "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\nhi");
    // 204 has no length or body; HEAD with an empty body has no length.
    CHECK(go_http_response(204, {}, "", 0, false).find("Content-Length") == std::string::npos);
    CHECK(go_http_response(200, {}, "", 0, true).find("Content-Length") == std::string::npos);
    CHECK(go_http_error(405, "bogus probe method", 0).find("Content-Length: 19\r\n\r\nbogus probe method\n") !=
          std::string::npos);
}

TEST_CASE("routing: probes, generate_204, debug, derp, home page for the rest") {
    http_route_context ctx;
    ctx.hostname = "derp.example.net";
    request_text rt;
    const http_request& req = rt.req;
    parse("GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n", rt);
    auto r = route_http_request(req, ctx);
    CHECK(r.route == http_route::respond);
    CHECK(r.response.rfind("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\n", 0) == 0);

    parse("PUT /derp/latency-check HTTP/1.1\r\nHost: x\r\n\r\n", rt);
    CHECK(route_http_request(req, ctx).response.rfind("HTTP/1.1 405", 0) == 0);

    parse("GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: ts_1.2.3.4\r\n\r\n", rt);
    r = route_http_request(req, ctx);
    CHECK(r.response.find("\r\nCache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n"
                          "X-Tailscale-Response: response ts_1.2.3.4\r\n") != std::string::npos);

    parse("GET /derp HTTP/1.1\r\nHost: x\r\n\r\n", rt);
    CHECK(route_http_request(req, ctx).route == http_route::derp);
    ctx.serve_derp = false;
    r = route_http_request(req, ctx);
    CHECK(r.route == http_route::respond);
    CHECK(r.response.find("404 Not Found") != std::string::npos);
    CHECK(r.response.find("derp server disabled\n") != std::string::npos);

    parse("GET /debug/varz HTTP/1.1\r\nHost: x\r\n\r\n", rt);
    CHECK(route_http_request(req, ctx).response.rfind("HTTP/1.1 403", 0) == 0);
    ctx.debug_allowed = true;
    CHECK(route_http_request(req, ctx).route == http_route::debug);

    parse("GET /no/such/page HTTP/1.1\r\nHost: x\r\n\r\n", rt);
    r = route_http_request(req, ctx);
    CHECK(r.response.rfind("HTTP/1.1 200 OK\r\nContent-Security-Policy: ", 0) == 0);
    CHECK(r.response.find("Status: disabled") != std::string::npos);
    CHECK(r.response.find("security@tailscale.com") == std::string::npos);  // not Tailscale's host
    CHECK(home_page_html("derp12.tailscale.com", true, false).find("security@tailscale.com") != std::string::npos);
    CHECK(home_page_html("derp1.foo.tailscale.com", true, false).find("security@tailscale.com") == std::string::npos);
}

TEST_CASE("IP and prefix parsing without network headers") {
    CHECK(parse_ip("192.0.2.1") == v4(192, 0, 2, 1));
    CHECK(parse_ip("::1") == v6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
    CHECK(parse_ip("fd7a:115c:a1e0::1") == v6({0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
    CHECK(parse_ip("2001:db8:0:0:0:0:0:2") == v6({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}));
    for (const char* bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.x", "::1::", "1:2:3:4:5:6:7:8:9", "12345::", ":"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_ip(bad).has_value());
    }
    const auto p = parse_ip_prefix("192.0.2.0/24");
    REQUIRE(p.has_value());
    CHECK(prefix_contains(*p, v4(192, 0, 2, 200)));
    CHECK_FALSE(prefix_contains(*p, v4(192, 0, 3, 1)));
    CHECK_FALSE(parse_ip_prefix("192.0.2.0/33").has_value());
    CHECK_FALSE(parse_ip_prefix("192.0.2.0/").has_value());
    const auto single = parse_ip_prefix("2001:db8::7");
    REQUIRE(single.has_value());
    CHECK(single->bits == 128);
}

TEST_CASE("debug access knobs: debug key, allowed IP, trusted prefixes") {
    debug_access_policy policy;
    policy.debug_key = "s3cret";
    policy.allow_ip = v4(192, 0, 2, 7);
    policy.trusted_prefixes.push_back(*parse_ip_prefix("198.51.100.0/24"));
    const ip16 outsider = v4(203, 0, 113, 5);
    CHECK_FALSE(debug_access_allowed(outsider, false, policy, "GET", std::nullopt));
    CHECK(debug_access_allowed(outsider, true, policy, "GET", std::string_view("s3cret")));  // key beats a proxy
    CHECK_FALSE(debug_access_allowed(outsider, false, policy, "POST", std::string_view("s3cret")));
    CHECK_FALSE(debug_access_allowed(outsider, false, policy, "GET", std::string_view("wrong")));
    CHECK(debug_access_allowed(v4(192, 0, 2, 7), false, policy, "GET", std::nullopt));
    CHECK_FALSE(debug_access_allowed(v4(192, 0, 2, 7), true, policy, "GET", std::nullopt));
    CHECK(debug_access_allowed(v4(198, 51, 100, 99), false, policy, "GET", std::nullopt));
    CHECK(debug_access_allowed(v4(127, 0, 0, 1), false, policy, "GET", std::nullopt));
    const debug_access_policy none;
    CHECK_FALSE(debug_access_allowed(outsider, false, none, "GET", std::string_view("")));
}

TEST_CASE("port 80 of a TLS server: generate_204 and /debug served, the rest to HTTPS (spec 3.7)") {
    auto route = [](std::string_view text, bool debug_allowed) {
        http_request request;
        REQUIRE(parse_http_request({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}, request).status ==
                http_parse_status::complete);
        return route_port80(request, debug_allowed, 0);
    };
    CHECK(!route("GET /generate_204 HTTP/1.1\r\nHost: d.example\r\n\r\n", false));
    CHECK(!route("GET /debug/varz HTTP/1.1\r\nHost: d.example\r\n\r\n", false));
    const auto post = route("POST /derp HTTP/1.1\r\nHost: d.example\r\nContent-Length: 0\r\n\r\n", false);
    REQUIRE(post);
    CHECK(post->starts_with("HTTP/1.1 400 Bad Request\r\n"));
    CHECK(post->ends_with("\r\n\r\nUse HTTPS\n"));
    const auto derp = route("GET /derp?x=1&y=2 HTTP/1.1\r\nHost: d.example\r\n\r\n", false);
    REQUIRE(derp);
    CHECK(derp->starts_with("HTTP/1.1 302 Found\r\nContent-Type: text/html; charset=utf-8\r\nLocation: https://d.example/derp?x=1&y=2\r\n"));
    CHECK(derp->ends_with("\r\n\r\n<a href=\"https://d.example/derp?x=1&amp;y=2\">Found</a>.\n\n"));
    const auto root = route("GET / HTTP/1.1\r\nHost: d.example\r\n\r\n", true);
    REQUIRE(root);
    CHECK(root->find("Location: https://d.example/debug/\r\n") != std::string::npos);
    const auto root_public = route("GET / HTTP/1.1\r\nHost: d.example\r\n\r\n", false);
    CHECK(root_public->find("Location: https://d.example/\r\n") != std::string::npos);
    const auto head = route("HEAD /x HTTP/1.1\r\nHost: d.example\r\n\r\n", false);
    CHECK(head->ends_with("\r\n\r\n"));
    CHECK(head->find("Content-Length") == std::string::npos);
}
