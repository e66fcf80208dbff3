// derper's small HTTP endpoints (spec 3.2, 3.8): the response bytes Go's net/http would write
// for /derp/probe, /derp/latency-check, /generate_204, /robots.txt, the home page, the errors,
// and the /debug/ access rule. Pure: a parsed request and the facts the server knows (time,
// flags, whether the peer may see /debug/) in, the whole response out. The DERP upgrade and
// the /debug/ pages themselves are the server's; this module only says when they apply.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <optional>
#include <vector>

#include "core/frame.hh"
#include "core/http_request.hh"

namespace derp {

struct http_header_field {
    std::string_view name;  // canonical form, as Go writes it ("Content-Type")
    std::string_view value;
};

// A response as Go's net/http writes it: the status line, the handler's headers sorted by
// name, Date, Content-Length (not for 1xx/204/304, nor for a HEAD whose handler wrote
// nothing), a sniffed "Content-Type: text/plain; charset=utf-8" after it when asked, the body
// (not for HEAD).
std::string go_http_response(int status, std::span<const http_header_field> headers,
                             std::string_view body, std::int64_t unix_seconds, bool head_request,
                             bool sniffed_text_plain = false);

// http.Error(w, message, status): text/plain, nosniff, message + "\n".
std::string go_http_error(int status, std::string_view message, std::int64_t unix_seconds,
                          bool head_request = false);

// What the server should do with a request on its main listener.
enum class http_route : std::uint8_t {
    derp,          // /derp: the upgrade (core/derp_upgrade.hh decides DERP, or derper's 426)
    debug,         // /debug/...: the peer may see it; the server renders the page
    bootstrap_dns, // /bootstrap-dns: the server answers from its resolver (bootstrap_dns_response)
    respond,       // `response` holds the whole answer
};

struct http_route_context {
    std::int64_t unix_seconds = 0;
    bool serve_derp = true;           // -derp
    bool debug_allowed = false;       // debug_access_allowed() for this peer and request
    std::string_view hostname;        // -hostname (the home page names Tailscale's policies
                                      // only for Tailscale's own DERP hostnames)
};

struct http_route_result {
    http_route route = http_route::respond;
    std::string response;
};

http_route_result route_http_request(const http_request& request, const http_route_context& context);

// The /bootstrap-dns answer around a JSON body (spec 3.5): browser headers, application/json,
// Connection: close.
std::string bootstrap_dns_response(std::string_view json, std::int64_t unix_seconds, bool head_request);

// X-Tailscale-Challenge rule of /generate_204: non-empty, at most 64 bytes, [A-Za-z0-9._:-].
bool valid_tailscale_challenge(std::string_view challenge) noexcept;

// tsweb's debug access rule, spec 3.8 item 2 without the environment: no X-Forwarded-For
// header, and the peer is loopback or a Tailscale address (100.64.0.0/10 except
// 100.115.92.0/23, or fd7a:115c:a1e0::/48; IPv4-mapped addresses unmapped first).
bool debug_access_allowed(const ip16& peer, bool has_forwarded_for) noexcept;

// An IP prefix, IPv4 ones held IPv4-mapped (bits counted in the 128-bit form).
struct ip_prefix {
    ip16 address{};
    int bits = 0;
};
// "a.b.c.d/n", "v6/n", or a bare address (a /32 or /128). Nothing when malformed.
std::optional<ip_prefix> parse_ip_prefix(std::string_view text) noexcept;
std::optional<ip16> parse_ip(std::string_view text) noexcept;
bool prefix_contains(const ip_prefix& prefix, const ip16& ip) noexcept;

// The operator's knobs of spec 3.8: TS_DEBUG_KEY_PATH's key (GET ?debugkey=), TS_ALLOW_DEBUG_IP,
// TS_DEBUG_TRUSTED_CIDRS. The server reads the environment at start; this stays pure.
struct debug_access_policy {
    std::string debug_key;                  // empty: no key grants access
    std::optional<ip16> allow_ip;
    std::vector<ip_prefix> trusted_prefixes;
};
bool debug_access_allowed(const ip16& peer, bool has_forwarded_for, const debug_access_policy& policy,
                          std::string_view method, std::optional<std::string_view> debugkey_param) noexcept;

// The home page body (spec 3.2) for the default -home.
std::string home_page_html(std::string_view hostname, bool serve_derp, bool debug_allowed);

// The port-80 listener of a TLS server (spec 3.7): nothing when the main mux serves the request
// (/generate_204, /debug...), else the answer: 400 "Use HTTPS" for methods other than GET and
// HEAD, and a 302 to https://<Host><URI> (to /debug/ for "/" when debug access is allowed),
// with Go's http.Redirect body.
std::optional<std::string> route_port80(const http_request& request, bool debug_allowed, std::int64_t unix_seconds);

// Text for HTML as Go's html.EscapeString makes it: & < > " ' as &amp; &lt; &gt; &#34; &#39;.
std::string html_escape(std::string_view text);

}  // namespace derp
