// HTTP/1.1 response heads and chunked bodies for the ACME client (see http_response.hh).
#include "core/http_response.hh"

#include <charconv>

#include <fmt/format.h>

#include "core/http_request.hh"

namespace derp {
namespace {

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool token_char(char ch) noexcept {
    const auto u = static_cast<unsigned char>(ch);
    return u > 0x20 && u < 0x7f && ch != ':' && ch != '(' && ch != ')' && ch != '"' && ch != ',' && ch != ';' &&
           ch != '/' && ch != '[' && ch != ']' && ch != '{' && ch != '}' && ch != '=' && ch != '\\' && ch != '?' &&
           ch != '@' && ch != '<' && ch != '>';
}

http_response_verdict error(std::string text) { return {http_response_parse::error, std::move(text)}; }

}  // namespace

std::optional<std::string_view> http_response_head::field(std::string_view name) const noexcept {
    for (const auto& [n, v] : fields)
        if (ascii_iequals(n, name)) return std::string_view(v);
    return std::nullopt;
}

http_response_verdict parse_http_response_head(std::string_view in, http_response_head& out) {
    const auto end = in.find("\r\n\r\n");
    if (end == std::string_view::npos) {
        if (in.size() > http_response_head_bytes_max)
            return error(fmt::format("response head over {} bytes", http_response_head_bytes_max));
        // Not HTTP at all is known from the first bytes: no need to wait for more of it.
        constexpr std::string_view prefix = "HTTP/1.";
        if (in.substr(0, prefix.size()) != prefix.substr(0, std::min(prefix.size(), in.size())))
            return error("not an HTTP/1.x response");
        return {};
    }
    if (end + 4 > http_response_head_bytes_max)
        return error(fmt::format("response head over {} bytes", http_response_head_bytes_max));
    out = http_response_head{};
    out.head_bytes = end + 4;
    std::string_view head = in.substr(0, end);
    auto line_end = head.find("\r\n");
    std::string_view status_line = head.substr(0, line_end);
    // "HTTP/1.1 200 OK": the version, a space, three digits, then a space or nothing.
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ' ||
        (status_line.size() > 12 && status_line[12] != ' '))
        return error("bad status line");
    int status = 0;
    auto [p, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, status);
    if (ec != std::errc() || p != status_line.data() + 12 || status < 100) return error("bad status code");
    out.status = status;
    head = line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);
    while (!head.empty()) {
        line_end = head.find("\r\n");
        const std::string_view line = head.substr(0, line_end);
        head = line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);
        const auto colon = line.find(':');
        if (colon == 0 || colon == std::string_view::npos) return error("bad header field");
        const std::string_view name = line.substr(0, colon);
        for (char ch : name)
            if (!token_char(ch)) return error("bad header field name");
        const std::string_view value = trim(line.substr(colon + 1));
        for (char ch : value)
            if (ch == '\r' || ch == '\n' || ch == '\0') return error("bad header field value");
        if (out.fields.size() == http_response_fields_max)
            return error(fmt::format("over {} header fields", http_response_fields_max));
        out.fields.emplace_back(std::string(name), std::string(value));
    }
    return {http_response_parse::complete, {}};
}

http_response_verdict decode_chunked(std::string_view in, std::size_t body_bytes_max, std::string& body) {
    body.clear();
    std::size_t at = 0;
    for (;;) {
        const auto line_end = in.find("\r\n", at);
        if (line_end == std::string_view::npos) {
            if (in.size() - at > 1024) return error("chunk size line too long");
            return {};
        }
        std::string_view size_line = in.substr(at, line_end - at);
        if (const auto semi = size_line.find(';'); semi != std::string_view::npos) size_line = size_line.substr(0, semi);
        size_line = trim(size_line);
        std::uint64_t size = 0;
        auto [p, ec] = std::from_chars(size_line.data(), size_line.data() + size_line.size(), size, 16);
        if (size_line.empty() || ec != std::errc() || p != size_line.data() + size_line.size())
            return error("bad chunk size");
        at = line_end + 2;
        if (size == 0) break;
        if (size > body_bytes_max || body.size() + size > body_bytes_max)
            return error(fmt::format("chunked body over {} bytes", body_bytes_max));
        if (in.size() - at < size + 2) return {};
        body.append(in.substr(at, size));
        at += size;
        if (in.substr(at, 2) != "\r\n") return error("chunk not followed by CRLF");
        at += 2;
    }
    // Trailer fields, then the empty line.
    for (;;) {
        const auto line_end = in.find("\r\n", at);
        if (line_end == std::string_view::npos) {
            if (in.size() - at > http_response_head_bytes_max) return error("trailer too long");
            return {};
        }
        if (line_end == at) return {http_response_parse::complete, {}};
        at = line_end + 2;
    }
}

}  // namespace derp
