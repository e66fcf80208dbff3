// Unit tests of the HTTP/1.1 request-head parser: Go net/http acceptance rules, incremental
// input, pipelined bytes, limits, body framing, Go's error responses, and the recorded requests.
#include "core/http_request.hh"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "tests/unit/fixture_util.hh"

namespace derp {
namespace {

using test::bytes;
using test::to_bytes;
using namespace std::string_view_literals;

struct parsed {
    http_parse verdict;
    http_request request;
};

parsed parse(std::string_view text, std::size_t head_bytes_max = http_head_bytes_max) {
    parsed p{};
    p.verdict = parse_http_request(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()),
                                   p.request, head_bytes_max);
    return p;
}

constexpr std::string_view derp_request =
    "GET /derp HTTP/1.1\r\n"
    "Host: 127.0.0.1:13341\r\n"
    "User-Agent: Go-http-client/1.1\r\n"
    "Connection: Upgrade\r\n"
    "Upgrade: DERP\r\n"
    "\r\n";

TEST_CASE("a derphttp upgrade request parses completely") {
    const auto p = parse(derp_request);
    REQUIRE(p.verdict.status == http_parse_status::complete);
    const auto& r = p.request;
    CHECK(r.method == "GET");
    CHECK(r.target == "/derp");
    CHECK(r.path == "/derp");
    CHECK(r.query.empty());
    CHECK(r.version_minor == 1);
    CHECK(r.head_bytes == derp_request.size());
    REQUIRE(r.header_count == 4);
    CHECK(r.headers[0].name == "Host");
    CHECK(r.headers[0].value == "127.0.0.1:13341");
    CHECK(r.header("upgrade") == "DERP");
    CHECK(r.header("CONNECTION") == "Upgrade");
    CHECK_FALSE(r.header("Derp-Fast-Start").has_value());
}

TEST_CASE("every prefix is need_more; pipelined bytes are left alone") {
    std::string text(derp_request);
    for (std::size_t n = 0; n < text.size(); ++n) {
        CAPTURE(n);
        CHECK(parse(text.substr(0, n)).verdict.status == http_parse_status::need_more);
    }
    const std::string pipelined = text + "\x02\x00\x00\x00\x69" + "GET / HTTP/1.1\r\n\r\n";
    const auto p = parse(pipelined);
    REQUIRE(p.verdict.status == http_parse_status::complete);
    CHECK(p.request.head_bytes == derp_request.size());
}

TEST_CASE("line endings, leading blank lines, whitespace like Go") {
    // Bare LF lines and mixed endings are accepted (textproto strips one CR before LF).
    auto lf = parse("GET /a?b=c HTTP/1.1\nHost: x\n\n");
    REQUIRE(lf.verdict.status == http_parse_status::complete);
    CHECK(lf.request.path == "/a");
    CHECK(lf.request.query == "b=c");
    CHECK(lf.request.head_bytes == 29);
    CHECK(parse("GET / HTTP/1.1\r\nHost: x\n\r\n").verdict.status == http_parse_status::complete);
    // Up to four leading CR/LF bytes are skipped and counted as consumed.
    auto lead = parse("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(lead.verdict.status == http_parse_status::complete);
    CHECK(lead.request.head_bytes == 4 + 27);
    CHECK(parse("\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").verdict.error_status == 400);
    // Values are trimmed of spaces and tabs; empty values are fine; obs-text is allowed.
    auto ws = parse("GET / HTTP/1.1\r\nHost:x\r\nA: \t v w \t\r\nB:\r\nC: caf\xc3\xa9\r\n\r\n");
    REQUIRE(ws.verdict.status == http_parse_status::complete);
    CHECK(ws.request.header("a") == "v w");
    CHECK(ws.request.header("b") == "");
    CHECK(ws.request.header("c") == "caf\xc3\xa9");
    // The first of repeated fields wins for header(); all are counted.
    auto dup = parse("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: one\r\nupgrade: two\r\n\r\n");
    CHECK(dup.request.header("Upgrade") == "one");
    CHECK(dup.request.header_count_of("UPGRADE") == 2);
}

TEST_CASE("request targets") {
    struct row {
        std::string_view request_line;
        std::string_view path;
        std::string_view query;
    };
    const std::vector<row> ok = {
        {"GET /derp/probe HTTP/1.1", "/derp/probe", ""},
        {"GET /generate_204?t=1 HTTP/1.1", "/generate_204", "t=1"},
        {"GET /a%2Fb HTTP/1.1", "/a%2Fb", ""},
        {"GET http://example.com/derp?x HTTP/1.1", "/derp", "x"},
        {"GET http://example.com HTTP/1.1", "", ""},
        {"OPTIONS * HTTP/1.1", "*", ""},
        {"CONNECT example.com:443 HTTP/1.1", "", ""},
        {"GET //x HTTP/1.1", "//x", ""},
        {"GET /derp HTTP/1.0", "/derp", ""},
        {"GET /derp HTTP/1.9", "/derp", ""},  // Go serves any HTTP/1.x
    };
    for (const auto& r : ok) {
        CAPTURE(r.request_line);
        const std::string text = std::string(r.request_line) + "\r\nHost: h\r\n\r\n";
        const auto p = parse(text);
        REQUIRE(p.verdict.status == http_parse_status::complete);
        CHECK(p.request.path == r.path);
        CHECK(p.request.query == r.query);
    }
}

TEST_CASE("malformed heads are rejected with Go's status") {
    struct row {
        std::string_view text;
        int status;
        std::string_view error_text;
    };
    const std::vector<row> rows = {
        {"GET /\r\nHost: h\r\n\r\n", 400, ""},                      // no version
        {"GET\r\nHost: h\r\n\r\n", 400, ""},
        {"\r\n\r\n\r\n", 400, ""},  // empty request line after the skipped CR/LFs
        {"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},             // empty target
        {"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400, ""},             // trailing space in version
        {"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},
        {"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},              // method not a token
        {"GET derp HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},           // neither path nor scheme
        {"GET :x HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},
        {"GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},          // bad escape
        {"GET /a% HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},
        {"GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400, ""},         // control byte
        {"GET / HTTP/1.1\rHost: h\r\n\r\n", 400, ""},                // bare CR inside a line
        {"GET / http/1.1\r\nHost: h\r\n\r\n", 400, ""},
        {"GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400, ""},
        {"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "unsupported protocol version"},
        {"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505, "unsupported protocol version"},
        {"GET / HTTP/1.1\r\nHost h\r\n\r\n", 400, ""},               // no colon
        {"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, ""},             // space before colon
        {"GET / HTTP/1.1\r\n: h\r\nHost: h\r\n\r\n", 400, ""},       // empty name
        {"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400, ""},             // leading whitespace
        {"GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n c\r\n\r\n", 400, ""}, // obs-fold
        {"GET / HTTP/1.1\r\nHost: h\r\nA: b\x7f\r\n\r\n", 400, ""},  // DEL in value
        {"GET / HTTP/1.1\r\nHost: h\r\nA: b\x00z\r\n\r\n"sv, 400, ""},  // NUL in value
        {"GET / HTTP/1.1\r\nUpgrade: DERP\r\n\r\n", 400, "missing required Host header"},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "too many Host headers"},
        {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed Host header"},
        {"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "malformed Host header"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.text);
        const auto p = parse(r.text);
        REQUIRE(p.verdict.status == http_parse_status::error);
        CHECK(p.verdict.error_status == r.status);
        CHECK(p.verdict.error_text == r.error_text);
    }
    // Not errors: HTTP/1.0 without Host, CONNECT without Host, an empty Host, IPv6 hosts.
    CHECK(parse("GET / HTTP/1.0\r\n\r\n").verdict.status == http_parse_status::complete);
    CHECK(parse("CONNECT h:443 HTTP/1.1\r\n\r\n").verdict.status == http_parse_status::complete);
    CHECK(parse("GET / HTTP/1.1\r\nHost:\r\n\r\n").verdict.status == http_parse_status::complete);
    CHECK(parse("GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n").verdict.status == http_parse_status::complete);
}

TEST_CASE("head size and field count limits give 431") {
    std::string head = "GET / HTTP/1.1\r\nHost: h\r\n";
    const std::string end = "\r\n";
    // Exactly at the limit: complete. One byte more: 431.
    const std::size_t limit = 200;
    std::string filler = "X-Fill: ";
    const std::size_t fixed = head.size() + filler.size() + 2 + end.size();
    filler += std::string(limit - fixed, 'a') + "\r\n";
    const std::string at_limit = head + filler + end;
    REQUIRE(at_limit.size() == limit);
    const auto ok = parse(at_limit, limit);
    REQUIRE(ok.verdict.status == http_parse_status::complete);
    CHECK(ok.request.head_bytes == limit);
    const std::string over = head + "a" + filler + end;
    CHECK(parse(over, limit).verdict.error_status == 431);
    // An unfinished head that is already too large is 431 too, not need_more forever.
    CHECK(parse(std::string(limit + 1, 'G'), limit).verdict.error_status == 431);
    CHECK(parse(std::string(limit, 'G'), limit).verdict.status == http_parse_status::need_more);
    CHECK(parse(head + std::string(300, 'a'), limit).verdict.error_status == 431);
    // Default limit.
    CHECK(parse(head + "A: " + std::string(http_head_bytes_max, 'a') + "\r\n\r\n").verdict.error_status == 431);

    std::string many = head;
    for (std::size_t i = 0; i + 1 < http_headers_max; ++i) many += "A: b\r\n";
    const auto at_max = parse(many + end);
    REQUIRE(at_max.verdict.status == http_parse_status::complete);
    CHECK(at_max.request.header_count == http_headers_max);
    CHECK(parse(many + "A: b\r\n" + end).verdict.error_status == 431);
}

TEST_CASE("body framing by Go's request rules") {
    struct row {
        std::string_view headers;
        http_body_kind kind;
        std::uint64_t length;
    };
    const std::vector<row> rows = {
        {"", http_body_kind::none, 0},
        {"Content-Length: 0\r\n", http_body_kind::none, 0},
        {"Content-Length: 12\r\n", http_body_kind::content_length, 12},
        {"Content-Length: 12\r\nContent-Length: 12\r\n", http_body_kind::content_length, 12},
        {"Content-Length: 12\r\nContent-Length: 13\r\n", http_body_kind::bad_request, 0},
        {"Content-Length: +1\r\n", http_body_kind::bad_request, 0},
        {"Content-Length: 1 2\r\n", http_body_kind::bad_request, 0},
        {"Content-Length: \r\n", http_body_kind::bad_request, 0},
        {"Transfer-Encoding: chunked\r\n", http_body_kind::chunked, 0},
        {"Transfer-Encoding: Chunked\r\nContent-Length: 5\r\n", http_body_kind::chunked, 0},
        {"Transfer-Encoding: gzip\r\n", http_body_kind::not_implemented, 0},
        {"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", http_body_kind::bad_request, 0},
    };
    for (const auto& r : rows) {
        CAPTURE(r.headers);
        const std::string text = std::string("POST /x HTTP/1.1\r\nHost: h\r\n") + std::string(r.headers) + "\r\n";
        const auto p = parse(text);
        REQUIRE(p.verdict.status == http_parse_status::complete);
        const auto body = http_request_body(p.request);
        CHECK(body.kind == r.kind);
        CHECK(body.content_length == r.length);
    }
    // HTTP/1.0 has no Transfer-Encoding.
    const auto old = parse("POST /x HTTP/1.0\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n");
    CHECK(http_request_body(old.request).kind == http_body_kind::content_length);
}

TEST_CASE("Go's error responses") {
    auto response = [](int status, std::string_view text) {
        bytes out(http_error_response_bytes_max);
        out.resize(encode_http_error_response(out, status, text));
        return std::string(test::as_text(out));
    };
    CHECK(response(400, "") ==
          "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
          "400 Bad Request");
    CHECK(response(400, "missing required Host header") ==
          "HTTP/1.1 400 Bad Request: missing required Host header\r\nContent-Type: text/plain; "
          "charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header");
    CHECK(response(431, "") ==
          "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
          "Connection: close\r\n\r\n431 Request Header Fields Too Large");
    CHECK(response(505, "unsupported protocol version") ==
          "HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version\r\nContent-Type: "
          "text/plain; charset=utf-8\r\nConnection: close\r\n\r\n505 HTTP Version Not Supported: "
          "unsupported protocol version");
    CHECK(response(501, "") ==
          "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: "
          "close\r\n\r\nUnsupported transfer encoding");
}

TEST_CASE("every recorded request parses") {
    struct row {
        const char* folder;
        std::string_view method;
        std::string_view path;
    };
    const std::vector<row> rows = {
        {"06-http/derp-latency-check", "GET", "/derp/latency-check"},
        {"06-http/derp-no-upgrade", "GET", "/derp"},
        {"06-http/derp-probe", "GET", "/derp/probe"},
        {"06-http/derp-probe-head", "HEAD", "/derp/probe"},
        {"06-http/derp-probe-post", "POST", "/derp/probe"},
        {"06-http/generate_204-bad-challenge", "GET", "/generate_204"},
        {"06-http/generate_204-challenge", "GET", "/generate_204"},
        {"06-http/generate_204-no-challenge", "GET", "/generate_204"},
        {"06-http/robots.txt", "GET", "/robots.txt"},
        {"06-http/root", "GET", "/"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.folder);
        const bytes request = test::read_binary(std::string(r.folder) + "/request.bin");
        CHECK(request == test::read_hex_stream(std::string(r.folder) + "/c2s.hex"));
        http_request req;
        const auto verdict = parse_http_request(request, req);
        REQUIRE(verdict.status == http_parse_status::complete);
        CHECK(req.head_bytes == request.size());
        CHECK(req.method == r.method);
        CHECK(req.path == r.path);
        CHECK(req.header("host") == "127.0.0.1:13341");
    }
    http_request req;
    const bytes challenge = test::read_binary("06-http/generate_204-challenge/request.bin");
    REQUIRE(parse_http_request(challenge, req).status == http_parse_status::complete);
    CHECK(req.header("x-tailscale-challenge") == "abc123");
    const bytes post = test::read_binary("06-http/derp-probe-post/request.bin");
    REQUIRE(parse_http_request(post, req).status == http_parse_status::complete);
    CHECK(http_request_body(req).kind == http_body_kind::none);
}

}  // namespace
}  // namespace derp
