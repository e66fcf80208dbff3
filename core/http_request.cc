// The HTTP/1.1 request-head parser and Go's error responses; see http_request.hh.
#include "core/http_request.hh"

#include <algorithm>
#include <cstring>

#include "core/assert.hh"

namespace derp {

namespace {

char lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }

// RFC 9110 tchar: "!#$%&'*+-.^_`|~" DIGIT ALPHA.
bool is_token_char(char c) noexcept {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool is_token(std::string_view s) noexcept {
    return !s.empty() && std::all_of(s.begin(), s.end(), is_token_char);
}

// Go textproto validHeaderValueByte: VCHAR, obs-text (0x80-0xff), SP, HTAB.
bool is_value_byte(char c) noexcept {
    const auto u = static_cast<unsigned char>(c);
    return u == '\t' || (u >= 0x20 && u != 0x7f);
}

bool is_ctl(char c) noexcept {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
}

bool is_hex(char c) noexcept {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Go httpguts.ValidHostHeader: the bytes of a URI host[:port] and IPv6 zone characters.
bool is_host_char(char c) noexcept {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != '\0' && std::strchr("!$%&'()*+,-.:;=[]_~", c) != nullptr;
}

std::string_view trim_ows(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// "HTTP/1.1" -> minor 1, Go's ParseHTTPVersion: "HTTP/" + digit + "." + digit exactly.
struct http_version {
    int major;
    int minor;
};
std::optional<http_version> parse_version(std::string_view v) noexcept {
    if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || v[6] != '.') return std::nullopt;
    if (v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9') return std::nullopt;
    return http_version{v[5] - '0', v[7] - '0'};
}

// Go url.ParseRequestURI acceptance, with path and query split out. CONNECT takes the
// authority form ("host:port").
bool parse_target(std::string_view method, std::string_view target, http_request& out) noexcept {
    if (target.empty()) return false;
    if (std::any_of(target.begin(), target.end(), is_ctl)) return false;
    std::string_view rest = target;
    if (method == "CONNECT" && target.front() != '/') {
        out.path = {};
        out.query = {};
        return true;
    }
    if (target == "*") {
        out.path = target;
        out.query = {};
        return true;
    }
    if (target.front() != '/') {
        // Absolute form: a scheme (ALPHA *(ALPHA / DIGIT / "+" / "-" / ".")) and a colon.
        const auto colon = target.find(':');
        if (colon == std::string_view::npos || colon == 0) return false;
        const char first = target[0];
        if (!((first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z'))) return false;
        for (char c : target.substr(0, colon)) {
            const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                            (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
            if (!ok) return false;
        }
        rest = target.substr(colon + 1);
        if (rest.substr(0, 2) == "//") {
            rest.remove_prefix(2);
            const auto path_start = rest.find_first_of("/?");
            rest = path_start == std::string_view::npos ? std::string_view{} : rest.substr(path_start);
        }
    }
    const auto q = rest.find('?');
    out.path = rest.substr(0, q);
    out.query = q == std::string_view::npos ? std::string_view{} : rest.substr(q + 1);
    // Go unescapes the path and rejects a '%' that is not followed by two hex digits.
    for (std::size_t i = 0; i < out.path.size(); ++i) {
        if (out.path[i] != '%') continue;
        if (i + 2 >= out.path.size() || !is_hex(out.path[i + 1]) || !is_hex(out.path[i + 2])) {
            return false;
        }
    }
    return true;
}

http_parse fail(int status, std::string_view text = {}) noexcept {
    return {http_parse_status::error, status, text};
}

std::string_view status_text(int status) noexcept {
    switch (status) {
        case 400: return "Bad Request";
        case 431: return "Request Header Fields Too Large";
        case 501: return "Not Implemented";
        case 505: return "HTTP Version Not Supported";
        default: return "Error";
    }
}

}  // namespace

bool ascii_iequals(std::string_view a, std::string_view b) noexcept {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (lower(a[i]) != lower(b[i])) return false;
    }
    return true;
}

std::optional<std::string_view> http_request::header(std::string_view name) const noexcept {
    for (const auto& h : header_list()) {
        if (ascii_iequals(h.name, name)) return h.value;
    }
    return std::nullopt;
}

std::size_t http_request::header_count_of(std::string_view name) const noexcept {
    std::size_t n = 0;
    for (const auto& h : header_list()) {
        if (ascii_iequals(h.name, name)) ++n;
    }
    return n;
}

http_parse parse_http_request(std::span<const std::uint8_t> in, http_request& out,
                              std::size_t head_bytes_max) noexcept {
    const std::string_view text(reinterpret_cast<const char*>(in.data()), in.size());
    out.header_count = 0;
    out.head_bytes = 0;

    // Go's server discards up to four leading CR/LF bytes before a request line.
    std::size_t pos = 0;
    while (pos < text.size() && pos < 4 && (text[pos] == '\r' || text[pos] == '\n')) ++pos;

    // Lines end at LF; one CR before it is stripped (textproto.Reader.ReadLine).
    auto next_line = [&](std::string_view& line) noexcept -> bool {
        const std::size_t nl = text.find('\n', pos);
        if (nl == std::string_view::npos) return false;
        line = text.substr(pos, nl - pos);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        pos = nl + 1;
        return true;
    };
    auto incomplete = [&]() noexcept -> http_parse {
        if (text.size() > head_bytes_max) return fail(431);
        return {http_parse_status::need_more, 0, {}};
    };

    std::string_view request_line;
    if (!next_line(request_line)) return incomplete();
    if (pos > head_bytes_max) return fail(431);

    // Request line: method SP request-target SP HTTP-version (Go splits on the first two spaces).
    // It is checked as soon as it is complete, like Go does.
    const auto sp1 = request_line.find(' ');
    if (sp1 == std::string_view::npos) return fail(400);
    const auto sp2 = request_line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos) return fail(400);
    out.method = request_line.substr(0, sp1);
    out.target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
    if (!is_token(out.method)) return fail(400);
    const auto version = parse_version(request_line.substr(sp2 + 1));
    if (!version) return fail(400);
    if (!parse_target(out.method, out.target, out)) return fail(400);

    // Collect the header lines before judging them, so that a head that is still arriving is
    // need_more (or 431) rather than an error about a line that is cut short.
    const std::size_t headers_start = pos;
    std::size_t header_lines = 0;
    for (;;) {
        std::string_view line;
        if (!next_line(line)) return incomplete();
        if (pos > head_bytes_max) return fail(431);
        if (line.empty()) break;
        if (++header_lines > http_headers_max) return fail(431);
    }
    const std::size_t head_bytes = pos;
    if (head_bytes > head_bytes_max) return fail(431);

    pos = headers_start;
    for (std::size_t i = 0; i < header_lines; ++i) {
        std::string_view line;
        const bool ok = next_line(line);
        DERP_ASSERT(ok);
        // A line starting with whitespace is obsolete line folding (or a malformed first
        // header). Go joins folded lines; RFC 9112 5.2 lets a server reject them instead, which
        // keeps every value a view into the input.
        if (line.front() == ' ' || line.front() == '\t') return fail(400);
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) return fail(400);
        const std::string_view name = line.substr(0, colon);
        if (!is_token(name)) return fail(400);
        const std::string_view value = trim_ows(line.substr(colon + 1));
        if (!std::all_of(value.begin(), value.end(), is_value_byte)) return fail(400);
        out.headers[out.header_count++] = http_header{name, value};
    }
    std::string_view blank;
    const bool found_blank = next_line(blank);
    DERP_ASSERT(found_blank && blank.empty() && pos == head_bytes);

    // Go's server answers anything but HTTP/1.x with 505 (h2 prior knowledge is not served).
    if (version->major != 1) return fail(505, "unsupported protocol version");
    out.version_minor = version->minor;

    const std::size_t hosts = out.header_count_of("Host");
    if (out.version_minor >= 1 && hosts == 0 && out.method != "CONNECT") {
        return fail(400, "missing required Host header");
    }
    if (hosts > 1) return fail(400, "too many Host headers");
    if (hosts == 1) {
        const std::string_view host = *out.header("Host");
        if (!std::all_of(host.begin(), host.end(), is_host_char)) {
            return fail(400, "malformed Host header");
        }
    }
    out.head_bytes = head_bytes;
    return {http_parse_status::complete, 0, {}};
}

http_body http_request_body(const http_request& request) noexcept {
    // Transfer-Encoding counts only from HTTP/1.1 on; a single "chunked" is all Go supports.
    if (request.version_minor >= 1) {
        const std::size_t te = request.header_count_of("Transfer-Encoding");
        if (te > 1) return {http_body_kind::bad_request};
        if (te == 1) {
            if (!ascii_iequals(*request.header("Transfer-Encoding"), "chunked")) {
                return {http_body_kind::not_implemented};
            }
            return {http_body_kind::chunked};
        }
    }
    std::optional<std::uint64_t> length;
    for (const auto& h : request.header_list()) {
        if (!ascii_iequals(h.name, "Content-Length")) continue;
        // Go: digits only, no sign, fits in int64; repeated fields must agree.
        if (h.value.empty() || h.value.size() > 18) return {http_body_kind::bad_request};
        std::uint64_t n = 0;
        for (char c : h.value) {
            if (c < '0' || c > '9') return {http_body_kind::bad_request};
            n = n * 10 + static_cast<std::uint64_t>(c - '0');
        }
        if (length && *length != n) return {http_body_kind::bad_request};
        length = n;
    }
    if (!length || *length == 0) return {http_body_kind::none};
    return {http_body_kind::content_length, *length};
}

std::size_t encode_http_error_response(std::span<std::uint8_t> out, int status,
                                       std::string_view error_text) noexcept {
    DERP_ASSERT(status >= 100 && status <= 999);
    DERP_ASSERT(error_text.size() <= 64);
    const std::array<char, 3> code = {static_cast<char>('0' + status / 100),
                                      static_cast<char>('0' + status / 10 % 10),
                                      static_cast<char>('0' + status % 10)};
    const std::string_view code_text(code.data(), code.size());
    std::size_t at = 0;
    auto put = [&](std::string_view s) noexcept {
        DERP_ASSERT(at + s.size() <= out.size());
        std::memcpy(out.data() + at, s.data(), s.size());
        at += s.size();
    };
    auto put_status = [&] {
        put(code_text);
        put(" ");
        put(status_text(status));
        if (!error_text.empty()) {
            put(": ");
            put(error_text);
        }
    };
    put("HTTP/1.1 ");
    put_status();
    put("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n");
    if (status == 501) {
        put("Unsupported transfer encoding");  // Go does not echo the encoding back
    } else {
        put_status();
    }
    return at;
}

}  // namespace derp
