// A pure, incremental HTTP/1.1 request-head parser (picohttpparser in spirit) with Go net/http's
// acceptance rules: bytes in, a verdict out, header names and values as views into the input.
// It never reads past the head: pipelined bytes (a fast-start ClientInfo, the next request) are
// left to the caller. Deliberately not here: bodies, responses, routing, WebSocket framing.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace derp {

// Request heads larger than this get 431. Go's net/http allows 1 MiB (+4 KiB slack); derper's
// clients send about 150 bytes and browsers a few KiB, and every byte of this limit is buffer
// memory a slow client can pin per connection, so derpd allows 16 KiB (nginx's default buffer
// for a large header line is 8 KiB; Apache allows 8190 bytes per field).
inline constexpr std::size_t http_head_bytes_max = 16 << 10;
// More header fields than this also gets 431 (picohttpparser-style fixed array, no allocation).
inline constexpr std::size_t http_headers_max = 64;

struct http_header {
    std::string_view name;   // as sent; compare case-insensitively
    std::string_view value;  // leading and trailing spaces and tabs removed
};

struct http_request {
    std::string_view method;   // case-sensitive token, e.g. "GET"
    std::string_view target;   // the request-target exactly as sent
    std::string_view path;     // target without query; for absolute-form the part after the authority
    std::string_view query;    // after '?', without it; empty if none
    int version_minor = 1;     // HTTP/1.x
    std::array<http_header, http_headers_max> headers{};
    std::size_t header_count = 0;
    std::size_t head_bytes = 0;  // bytes consumed, including leading CR/LF and the blank line

    std::span<const http_header> header_list() const noexcept {
        return std::span<const http_header>(headers.data(), header_count);
    }
    // The first value of the named field (case-insensitive name), like Go's Header.Get.
    std::optional<std::string_view> header(std::string_view name) const noexcept;
    // The number of fields with this name.
    std::size_t header_count_of(std::string_view name) const noexcept;
};

enum class http_parse_status : std::uint8_t { complete, need_more, error };

struct http_parse {
    http_parse_status status;
    int error_status = 0;  // 400, 431 or 505 when status == error
    std::string_view error_text;  // Go's message, e.g. "malformed HTTP request" (for logs/bodies)
};

// Parses the request head at the start of in (all bytes received so far) into out. Returns
// need_more until the blank line ending the head has arrived. Like Go, it accepts bare LF as
// well as CRLF line endings (textproto strips one CR before LF), skips up to four leading CR/LF
// bytes (RFC 9112 2.2 tolerance), and rejects obsolete line folding, control bytes in values,
// bad tokens, a missing or repeated Host on HTTP/1.1 (400), versions other than HTTP/1.x (505)
// and heads above head_bytes_max or with too many fields (431). The views in out point into in.
http_parse parse_http_request(std::span<const std::uint8_t> in, http_request& out,
                              std::size_t head_bytes_max = http_head_bytes_max) noexcept;

// How the body that follows a head is delimited, by Go's rules for requests.
enum class http_body_kind : std::uint8_t {
    none,            // no Content-Length and no Transfer-Encoding (or Content-Length: 0)
    content_length,  // exactly content_length bytes follow
    chunked,         // Transfer-Encoding: chunked (Content-Length is then ignored)
    bad_request,     // 400: unparsable or conflicting Content-Length, repeated Transfer-Encoding
    not_implemented, // 501: a Transfer-Encoding other than chunked
};
struct http_body {
    http_body_kind kind;
    std::uint64_t content_length = 0;
};
http_body http_request_body(const http_request& request) noexcept;

// Writes the response Go's net/http server sends for a request head it cannot parse, then
// closes: "HTTP/1.1 400 Bad Request" + Content-Type + "Connection: close" + the status text as
// body, with ": <error_text>" after the status where Go reports a detail (status errors such as
// "missing required Host header"). Returns the bytes written; out needs http_error_response_bytes_max.
inline constexpr std::size_t http_error_response_bytes_max = 256;
std::size_t encode_http_error_response(std::span<std::uint8_t> out, int status,
                                       std::string_view error_text) noexcept;

bool ascii_iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace derp
