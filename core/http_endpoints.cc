// derper's HTTP endpoints as Go writes them (see http_endpoints.hh).
#include "core/http_endpoints.hh"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <array>
#include <vector>

#include <fmt/format.h>

#include "core/http_date.hh"

namespace derp {
namespace {

std::string_view reason_phrase(int status) noexcept {
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

// tsweb's AddBrowserHeaders (spec 3.2), already in Go's sorted order with Content-Type
// merged in by the caller's sort.
constexpr std::string_view csp =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
    "block-all-mixed-content; object-src 'none'";
constexpr std::array<http_header_field, 4> browser_headers = {{
    {"Content-Security-Policy", csp},
    {"Strict-Transport-Security", "max-age=63072000; includeSubDomains"},
    {"X-Content-Type-Options", "nosniff"},
    {"X-Frame-Options", "DENY"},
}};

bool is_probe_method(std::string_view method) noexcept { return method == "GET" || method == "HEAD"; }

bool tailscale_hostname(std::string_view host) noexcept {
    // ^derp([^.]*)\.tailscale\.com\.?$
    if (!host.empty() && host.back() == '.') host.remove_suffix(1);
    constexpr std::string_view suffix = ".tailscale.com";
    if (host.size() < 4 + suffix.size() || host.substr(0, 4) != "derp") return false;
    if (host.substr(host.size() - suffix.size()) != suffix) return false;
    const std::string_view middle = host.substr(4, host.size() - 4 - suffix.size());
    return middle.find('.') == std::string_view::npos;
}

}  // namespace

std::string go_http_response(int status, std::span<const http_header_field> headers,
                             std::string_view body, std::int64_t unix_seconds, bool head_request,
                             bool sniffed_text_plain) {
    std::vector<http_header_field> sorted(headers.begin(), headers.end());
    std::sort(sorted.begin(), sorted.end(),
              [](const http_header_field& a, const http_header_field& b) { return a.name < b.name; });
    std::string out = fmt::format("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    for (const auto& h : sorted) out += fmt::format("{}: {}\r\n", h.name, h.value);
    out += fmt::format("Date: {}\r\n", format_http_date(unix_seconds).view());
    const bool bodyless_status = status < 200 || status == 204 || status == 304;
    if (!bodyless_status && !(head_request && body.empty()))
        out += fmt::format("Content-Length: {}\r\n", body.size());
    if (sniffed_text_plain && !body.empty()) out += "Content-Type: text/plain; charset=utf-8\r\n";
    out += "\r\n";
    if (!head_request && !bodyless_status) out += body;
    return out;
}

std::string go_http_error(int status, std::string_view message, std::int64_t unix_seconds, bool head_request) {
    const std::array<http_header_field, 2> headers = {{
        {"Content-Type", "text/plain; charset=utf-8"},
        {"X-Content-Type-Options", "nosniff"},
    }};
    return go_http_response(status, headers, fmt::format("{}\n", message), unix_seconds, head_request);
}

std::string bootstrap_dns_response(std::string_view json, std::int64_t unix_seconds, bool head_request) {
    std::vector<http_header_field> headers(browser_headers.begin(), browser_headers.end());
    headers.push_back({"Content-Type", "application/json"});
    headers.push_back({"Connection", "close"});
    return go_http_response(200, headers, json, unix_seconds, head_request);
}

bool valid_tailscale_challenge(std::string_view challenge) noexcept {
    if (challenge.empty() || challenge.size() > 64) return false;
    return std::all_of(challenge.begin(), challenge.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '.' || ch == '_' || ch == ':' || ch == '-';
    });
}

bool debug_access_allowed(const ip16& peer, bool has_forwarded_for) noexcept {
    if (has_forwarded_for) return false;
    static constexpr std::uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::equal(peer.begin(), peer.begin() + 12, std::begin(v4_prefix))) {
        const std::uint8_t a = peer[12], b = peer[13], c = peer[14];
        if (a == 127) return true;
        // 100.64.0.0/10 (CGNAT range Tailscale uses), minus 100.115.92.0/23 (ChromeOS VM range).
        if (a == 100 && (b & 0xc0) == 64) return !(b == 115 && (c & 0xfe) == 92);
        return false;
    }
    static constexpr ip16 loopback6 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (peer == loopback6) return true;
    // fd7a:115c:a1e0::/48, Tailscale's IPv6 range.
    static constexpr std::uint8_t ts6[6] = {0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0};
    return std::equal(peer.begin(), peer.begin() + 6, std::begin(ts6));
}

std::optional<ip16> parse_ip(std::string_view text) noexcept {
    // Pure parsing of dotted quads and RFC 4291 text, without inet_pton (core includes no
    // network headers).
    ip16 out{};
    if (text.find(':') == std::string_view::npos) {
        std::array<std::uint8_t, 4> v4{};
        int part = 0;
        unsigned value = 0;
        int digits = 0;
        for (std::size_t i = 0; i <= text.size(); ++i) {
            if (i == text.size() || text[i] == '.') {
                if (digits == 0 || value > 255 || part > 3) return std::nullopt;
                v4[static_cast<std::size_t>(part++)] = static_cast<std::uint8_t>(value);
                value = 0;
                digits = 0;
            } else if (text[i] >= '0' && text[i] <= '9' && digits < 3) {
                value = value * 10 + static_cast<unsigned>(text[i] - '0');
                ++digits;
            } else {
                return std::nullopt;
            }
        }
        if (part != 4) return std::nullopt;
        return ipv4_mapped(v4);
    }
    // IPv6: up to 8 groups, one "::" gap.
    std::array<std::uint16_t, 8> groups{};
    int before = 0, after = 0;
    bool gap = false;
    std::array<std::uint16_t, 8> tail{};
    std::size_t i = 0;
    if (text.substr(0, 2) == "::") {
        gap = true;
        i = 2;
    }
    while (i < text.size()) {
        std::size_t j = i;
        unsigned value = 0;
        while (j < text.size() && j - i < 4 && std::isxdigit(static_cast<unsigned char>(text[j]))) {
            const char ch = text[j];
            value = value * 16 + static_cast<unsigned>(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
            ++j;
        }
        if (j == i) return std::nullopt;
        if (gap) {
            if (after >= 8) return std::nullopt;
            tail[static_cast<std::size_t>(after++)] = static_cast<std::uint16_t>(value);
        } else {
            if (before >= 8) return std::nullopt;
            groups[static_cast<std::size_t>(before++)] = static_cast<std::uint16_t>(value);
        }
        i = j;
        if (i == text.size()) break;
        if (text[i] != ':') return std::nullopt;
        if (i + 1 < text.size() && text[i + 1] == ':') {
            if (gap) return std::nullopt;
            gap = true;
            i += 2;
        } else {
            ++i;
            if (i == text.size()) return std::nullopt;
        }
    }
    if (!gap && before != 8) return std::nullopt;
    if (before + after > (gap ? 7 : 8)) return std::nullopt;
    for (int k = 0; k < after; ++k) groups[static_cast<std::size_t>(8 - after + k)] = tail[static_cast<std::size_t>(k)];
    for (std::size_t k = 0; k < 8; ++k) {
        out[2 * k] = static_cast<std::uint8_t>(groups[k] >> 8);
        out[2 * k + 1] = static_cast<std::uint8_t>(groups[k]);
    }
    return out;
}

std::optional<ip_prefix> parse_ip_prefix(std::string_view text) noexcept {
    const auto slash = text.find('/');
    const auto ip = parse_ip(text.substr(0, slash));
    if (!ip) return std::nullopt;
    const bool v4 = text.substr(0, slash).find(':') == std::string_view::npos;
    int bits = v4 ? 32 : 128;
    if (slash != std::string_view::npos) {
        const std::string_view n = text.substr(slash + 1);
        const auto [ptr, ec] = std::from_chars(n.data(), n.data() + n.size(), bits);
        if (n.empty() || ec != std::errc() || ptr != n.data() + n.size() || bits < 0 || bits > (v4 ? 32 : 128))
            return std::nullopt;
    }
    return ip_prefix{*ip, v4 ? bits + 96 : bits};
}

bool prefix_contains(const ip_prefix& prefix, const ip16& ip) noexcept {
    for (int bit = 0; bit < prefix.bits; ++bit) {
        const auto byte = static_cast<std::size_t>(bit / 8);
        const auto mask = static_cast<std::uint8_t>(0x80u >> (bit % 8));
        if ((prefix.address[byte] & mask) != (ip[byte] & mask)) return false;
    }
    return true;
}

bool debug_access_allowed(const ip16& peer, bool has_forwarded_for, const debug_access_policy& policy,
                          std::string_view method, std::optional<std::string_view> debugkey_param) noexcept {
    // 1. A GET with the operator's debug key, from anywhere.
    if (method == "GET" && debugkey_param && !debugkey_param->empty() && !policy.debug_key.empty() &&
        *debugkey_param == policy.debug_key)
        return true;
    // 2. No proxy in between, and a trusted peer.
    if (has_forwarded_for) return false;
    if (debug_access_allowed(peer, false)) return true;
    if (policy.allow_ip && *policy.allow_ip == peer) return true;
    for (const auto& prefix : policy.trusted_prefixes)
        if (prefix_contains(prefix, peer)) return true;
    return false;
}

std::string home_page_html(std::string_view hostname, bool serve_derp, bool debug_allowed) {
    std::string page =
        "<html><body>\n"
        "<h1>DERP</h1>\n"
        "<p>\n"
        "  This is a <a href=\"https://tailscale.com/\">Tailscale</a> DERP server.\n"
        "</p>\n"
        "<p>\n"
        "  It provides STUN, interactive connectivity establishment, and relaying of end-to-end\n"
        "  encrypted traffic for Tailscale clients.\n"
        "</p>\n";
    if (tailscale_hostname(hostname))
        page +=
            "<p>\n"
            "  To report abuse, contact <a href=\"mailto:security@tailscale.com\">security@tailscale.com</a>.\n"
            "  See the <a href=\"https://tailscale.com/security-policies\">security policies</a> and the\n"
            "  <a href=\"https://tailscale.com/tailscale-aup\">acceptable use policy</a>.\n"
            "</p>\n";
    page +=
        "<p>\n"
        "  Documentation:\n"
        "</p>\n"
        "<ul>\n"
        "<li><a href=\"https://tailscale.com/kb/1232/derp-servers\">About DERP</a></li>\n"
        "<li><a href=\"https://pkg.go.dev/tailscale.com/derp\">Protocol &amp; Go docs</a></li>\n"
        "<li><a href=\"https://github.com/tailscale/tailscale/tree/main/cmd/derper#derp\">How to run a DERP server</a></li>\n"
        "</ul>\n";
    if (!serve_derp) page += "<p>Status: disabled</p>\n";
    if (debug_allowed) page += "<p>Debug info at <a href='/debug/'>/debug/</a>.</p>\n";
    page += "</body></html>\n";
    return page;
}

http_route_result route_http_request(const http_request& request, const http_route_context& context) {
    http_route_result out;
    const bool head = request.method == "HEAD";
    const std::string_view path = request.path;
    if (path == "/derp") {
        if (!context.serve_derp) {
            out.response = go_http_error(404, "derp server disabled", context.unix_seconds, head);
            return out;
        }
        out.route = http_route::derp;
        return out;
    }
    if (path == "/derp/probe" || path == "/derp/latency-check") {
        if (!is_probe_method(request.method)) {
            out.response = go_http_error(405, "bogus probe method", context.unix_seconds, head);
            return out;
        }
        const std::array<http_header_field, 1> headers = {{{"Access-Control-Allow-Origin", "*"}}};
        out.response = go_http_response(200, headers, "", context.unix_seconds, head);
        return out;
    }
    if (path == "/generate_204") {
        std::string echo;
        std::vector<http_header_field> headers = {
            {"Cache-Control", "no-cache, no-store, must-revalidate, no-transform, max-age=0"}};
        if (const auto challenge = request.header("X-Tailscale-Challenge");
            challenge && valid_tailscale_challenge(*challenge)) {
            echo = fmt::format("response {}", *challenge);
            headers.push_back({"X-Tailscale-Response", echo});
        }
        out.response = go_http_response(204, headers, "", context.unix_seconds, head);
        return out;
    }
    if (path == "/debug" || path.substr(0, 7) == "/debug/") {
        if (!context.debug_allowed) {
            out.response = go_http_error(403, "debug access denied", context.unix_seconds, head);
            return out;
        }
        out.route = http_route::debug;
        return out;
    }
    if (path == "/bootstrap-dns") {
        out.route = http_route::bootstrap_dns;
        return out;
    }
    if (path == "/robots.txt") {
        out.response = go_http_response(200, browser_headers, "User-agent: *\nDisallow: /\n",
                                        context.unix_seconds, head, /*sniffed_text_plain=*/true);
        return out;
    }
    // "/" and every unmatched path: the home page (Go's ServeMux "/" catch-all).
    std::vector<http_header_field> headers(browser_headers.begin(), browser_headers.end());
    headers.push_back({"Content-Type", "text/html; charset=utf-8"});
    out.response = go_http_response(200, headers,
                                    home_page_html(context.hostname, context.serve_derp, context.debug_allowed),
                                    context.unix_seconds, head);
    return out;
}

std::optional<std::string> route_port80(const http_request& request, bool debug_allowed, std::int64_t unix_seconds) {
    if (request.path == "/generate_204" || request.path.starts_with("/debug")) return std::nullopt;
    const bool head = request.method == "HEAD";
    if (request.method != "GET" && !head) return go_http_error(400, "Use HTTPS", unix_seconds);
    const std::string_view host = request.header("Host").value_or("");
    const std::string location = request.path == "/" && debug_allowed
                                     ? fmt::format("https://{}/debug/", host)
                                     : fmt::format("https://{}{}", host, request.target);
    // Go's http.Redirect: an HTML body for GET and HEAD naming the escaped URL.
    const std::string escaped = html_escape(location);
    const std::array<http_header_field, 2> headers = {{{"Content-Type", "text/html; charset=utf-8"},
                                                       {"Location", location}}};
    // Go writes the body only for GET: a HEAD answer has neither body nor Content-Length.
    return go_http_response(302, headers, head ? std::string() : fmt::format("<a href=\"{}\">Found</a>.\n\n", escaped),
                            unix_seconds, head);
}

std::string html_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (const char ch : text) {
        switch (ch) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out += ch;
        }
    }
    return out;
}

}  // namespace derp
