// HTTP/1.1 responses as derpd's ACME client reads them (RFC 9112): the status line and header
// fields of a response head, and a chunked body decoded. Pure and bounded: bytes in, verdict
// out; the caller reads from the socket until the answer is complete (crypto/https_client.hh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace derp {

// A response head is refused beyond this (Go's servers send a few hundred bytes).
inline constexpr std::size_t http_response_head_bytes_max = 16 * 1024;
inline constexpr std::size_t http_response_fields_max = 64;

struct http_response_head {
    int status = 0;
    std::size_t head_bytes = 0;  // up to and including the empty line
    std::vector<std::pair<std::string, std::string>> fields;  // names as sent, values trimmed
    // The first field of that name (case-insensitive).
    std::optional<std::string_view> field(std::string_view name) const noexcept;
};

enum class http_response_parse : std::uint8_t { complete, need_more, error };
struct http_response_verdict {
    http_response_parse state = http_response_parse::need_more;
    std::string error;  // for error: what was wrong
};

// Parses a head from the start of `in` ("HTTP/1.x NNN reason\r\n", fields, "\r\n").
http_response_verdict parse_http_response_head(std::string_view in, http_response_head& out);

// Decodes a whole chunked body (RFC 9112 7.1) from `in` into `body`; extensions and trailer
// fields are skipped. need_more until the last chunk and the trailers' end are in `in`;
// error for a bad size line or a body over body_bytes_max.
http_response_verdict decode_chunked(std::string_view in, std::size_t body_bytes_max, std::string& body);

}  // namespace derp
