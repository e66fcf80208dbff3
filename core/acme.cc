// ACME documents and payloads (see acme.hh). nlohmann::json is used without exceptions: parse
// with allow_exceptions = false, look at a value's type before reading it, and dump with the
// replace error handler (invalid UTF-8 cannot throw).
#include "core/acme.hh"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace derp::acme {
namespace {

using json = nlohmann::json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The document as an object, or why not.
result<json, std::string> parse_object(std::string_view text, const char* what) {
    if (text.size() > document_bytes_max)
        return unexpected(fmt::format("{}: {} bytes, over the limit of {}", what, text.size(), document_bytes_max));
    json doc = json::parse(text.begin(), text.end(), nullptr, false);
    if (doc.is_discarded()) return unexpected(fmt::format("{}: not JSON", what));
    if (!doc.is_object()) return unexpected(fmt::format("{}: not a JSON object", what));
    return doc;
}

// A string member: nothing when absent or null; an error when of another type or too long.
result<std::optional<std::string>, std::string> string_member(const json& doc, const char* name, const char* what,
                                                              std::size_t bytes_max = url_bytes_max) {
    auto it = doc.find(name);
    if (it == doc.end() || it->is_null()) return std::optional<std::string>();
    if (!it->is_string()) return unexpected(fmt::format("{}: \"{}\" is not a string", what, name));
    const auto& s = it->get_ref<const std::string&>();
    if (s.size() > bytes_max) return unexpected(fmt::format("{}: \"{}\" is {} bytes, over {}", what, name, s.size(), bytes_max));
    return std::optional<std::string>(s);
}

result<std::string, std::string> required_url(const json& doc, const char* name, const char* what) {
    auto s = string_member(doc, name, what);
    if (!s) return unexpected(s.error());
    if (!s.value() || s.value()->empty()) return unexpected(fmt::format("{}: no \"{}\"", what, name));
    if (auto url = parse_https_url(*s.value()); !url)
        return unexpected(fmt::format("{}: \"{}\": {}", what, name, url.error()));
    return std::move(*s.value());
}

status status_of(std::string_view s) noexcept {
    static constexpr std::pair<std::string_view, status> names[] = {
        {"pending", status::pending}, {"ready", status::ready},     {"processing", status::processing},
        {"valid", status::valid},     {"invalid", status::invalid}, {"expired", status::expired},
        {"deactivated", status::deactivated}, {"revoked", status::revoked}};
    for (const auto& [name, value] : names)
        if (s == name) return value;
    return status::unknown;
}

result<status, std::string> required_status(const json& doc, const char* what) {
    auto s = string_member(doc, "status", what, 64);
    if (!s) return unexpected(s.error());
    if (!s.value()) return unexpected(fmt::format("{}: no \"status\"", what));
    const status st = status_of(*s.value());
    if (st == status::unknown) return unexpected(fmt::format("{}: unknown status \"{}\"", what, *s.value()));
    return st;
}

result<problem, std::string> problem_of(const json& doc) {
    problem p;
    auto type = string_member(doc, "type", "problem document", url_bytes_max);
    if (!type) return unexpected(type.error());
    p.type = type.value().value_or("");
    auto detail = string_member(doc, "detail", "problem document", document_bytes_max);
    if (!detail) return unexpected(detail.error());
    p.detail = detail.value().value_or("");
    if (p.detail.size() > detail_chars_max) p.detail = p.detail.substr(0, detail_chars_max) + "...";
    if (auto it = doc.find("status"); it != doc.end() && it->is_number_integer()) p.http_status = it->get<std::int64_t>();
    if (p.type.empty() && p.detail.empty()) return unexpected(std::string("problem document: neither type nor detail"));
    return p;
}

// An optional "error" member holding a problem document.
result<std::optional<problem>, std::string> error_member(const json& doc, const char* what) {
    auto it = doc.find("error");
    if (it == doc.end() || it->is_null()) return std::optional<problem>();
    if (!it->is_object()) return unexpected(fmt::format("{}: \"error\" is not an object", what));
    auto p = problem_of(*it);
    if (!p) return unexpected(fmt::format("{}: {}", what, p.error()));
    return std::optional<problem>(std::move(p.value()));
}

result<challenge, std::string> challenge_of(const json& doc) {
    const char* what = "challenge";
    challenge c;
    auto type = string_member(doc, "type", what, 64);
    if (!type) return unexpected(type.error());
    if (!type.value() || type.value()->empty()) return unexpected(std::string("challenge: no \"type\""));
    c.type = std::move(*type.value());
    auto url = required_url(doc, "url", what);
    if (!url) return unexpected(url.error());
    c.url = std::move(url.value());
    auto st = required_status(doc, what);
    if (!st) return unexpected(st.error());
    c.state = st.value();
    auto token = string_member(doc, "token", what, 256);
    if (!token) return unexpected(token.error());
    c.token = token.value().value_or("");
    // Only the types derpd answers need a token it will put in a path or a certificate.
    if ((c.type == "http-01" || c.type == "tls-alpn-01") && !token_is_valid(c.token))
        return unexpected(fmt::format("challenge {}: token is not 16..256 base64url characters", c.type));
    auto error = error_member(doc, what);
    if (!error) return unexpected(error.error());
    c.error = std::move(error.value());
    return c;
}

bool base64url_char(char ch) noexcept {
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
}

std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) noexcept {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

}  // namespace

std::string_view to_string(status s) noexcept {
    switch (s) {
        case status::pending: return "pending";
        case status::ready: return "ready";
        case status::processing: return "processing";
        case status::valid: return "valid";
        case status::invalid: return "invalid";
        case status::expired: return "expired";
        case status::deactivated: return "deactivated";
        case status::revoked: return "revoked";
        case status::unknown: break;
    }
    return "unknown";
}

std::string problem::to_string() const {
    if (detail.empty()) return type;
    if (type.empty()) return detail;
    return type + ": " + detail;
}

result<directory, std::string> parse_directory(std::string_view text) {
    auto doc = parse_object(text, "directory");
    if (!doc) return unexpected(doc.error());
    directory d;
    for (auto [name, field] : {std::pair{"newNonce", &d.new_nonce}, std::pair{"newAccount", &d.new_account},
                               std::pair{"newOrder", &d.new_order}}) {
        auto url = required_url(doc.value(), name, "directory");
        if (!url) return unexpected(url.error());
        *field = std::move(url.value());
    }
    if (auto meta = doc.value().find("meta"); meta != doc.value().end() && meta->is_object()) {
        auto tos = string_member(*meta, "termsOfService", "directory meta");
        if (!tos) return unexpected(tos.error());
        d.terms_of_service = tos.value().value_or("");
    }
    return d;
}

result<order, std::string> parse_order(std::string_view text) {
    const char* what = "order";
    auto doc = parse_object(text, what);
    if (!doc) return unexpected(doc.error());
    order o;
    auto st = required_status(doc.value(), what);
    if (!st) return unexpected(st.error());
    o.state = st.value();
    auto authz = doc.value().find("authorizations");
    if (authz == doc.value().end() || !authz->is_array()) return unexpected(std::string("order: no \"authorizations\" list"));
    if (authz->size() > list_entries_max)
        return unexpected(fmt::format("order: {} authorizations, over {}", authz->size(), list_entries_max));
    for (const auto& entry : *authz) {
        if (!entry.is_string()) return unexpected(std::string("order: an authorization is not a string"));
        const auto& url = entry.get_ref<const std::string&>();
        if (auto parsed = parse_https_url(url); !parsed || url.size() > url_bytes_max)
            return unexpected(std::string("order: an authorization is not an https URL"));
        o.authorizations.push_back(url);
    }
    auto finalize = required_url(doc.value(), "finalize", what);
    if (!finalize) return unexpected(finalize.error());
    o.finalize = std::move(finalize.value());
    if (doc.value().contains("certificate") || o.state == status::valid) {
        auto cert = required_url(doc.value(), "certificate", what);
        if (!cert) return unexpected(cert.error());
        o.certificate = std::move(cert.value());
    }
    auto error = error_member(doc.value(), what);
    if (!error) return unexpected(error.error());
    o.error = std::move(error.value());
    return o;
}

result<authorization, std::string> parse_authorization(std::string_view text) {
    const char* what = "authorization";
    auto doc = parse_object(text, what);
    if (!doc) return unexpected(doc.error());
    authorization a;
    auto st = required_status(doc.value(), what);
    if (!st) return unexpected(st.error());
    a.state = st.value();
    auto id = doc.value().find("identifier");
    if (id == doc.value().end() || !id->is_object()) return unexpected(std::string("authorization: no \"identifier\""));
    auto type = string_member(*id, "type", what, 64);
    auto value = string_member(*id, "value", what, 256);
    if (!type) return unexpected(type.error());
    if (!value) return unexpected(value.error());
    a.identifier_type = type.value().value_or("");
    a.identifier_value = value.value().value_or("");
    auto list = doc.value().find("challenges");
    if (list == doc.value().end() || !list->is_array()) return unexpected(std::string("authorization: no \"challenges\" list"));
    if (list->size() > list_entries_max)
        return unexpected(fmt::format("authorization: {} challenges, over {}", list->size(), list_entries_max));
    for (const auto& entry : *list) {
        if (!entry.is_object()) return unexpected(std::string("authorization: a challenge is not an object"));
        auto c = challenge_of(entry);
        if (!c) return unexpected(c.error());
        a.challenges.push_back(std::move(c.value()));
    }
    return a;
}

result<challenge, std::string> parse_challenge(std::string_view text) {
    auto doc = parse_object(text, "challenge");
    if (!doc) return unexpected(doc.error());
    return challenge_of(doc.value());
}

result<problem, std::string> parse_problem(std::string_view text) {
    auto doc = parse_object(text, "problem document");
    if (!doc) return unexpected(doc.error());
    return problem_of(doc.value());
}

result<status, std::string> parse_account_status(std::string_view text) {
    auto doc = parse_object(text, "account");
    if (!doc) return unexpected(doc.error());
    return required_status(doc.value(), "account");
}

bool token_is_valid(std::string_view token) noexcept {
    return token.size() >= 16 && token.size() <= 256 && std::all_of(token.begin(), token.end(), base64url_char);
}

std::string key_authorization(std::string_view token, std::string_view thumbprint_b64url) {
    return fmt::format("{}.{}", token, thumbprint_b64url);
}

bool email_is_valid(std::string_view email) noexcept {
    if (email.size() < 3 || email.size() > 254) return false;
    const auto at = email.find('@');
    if (at == 0 || at == std::string_view::npos || at + 1 >= email.size() || email.find('@', at + 1) != std::string_view::npos)
        return false;
    return std::none_of(email.begin(), email.end(), [](char ch) {
        const auto u = static_cast<unsigned char>(ch);
        return u <= 0x20 || u == 0x7f || ch == ',' || ch == '"' || ch == '<' || ch == '>' || ch == '\\' || ch == '?';
    });
}

std::string new_account_payload(std::string_view email) {
    json j = {{"termsOfServiceAgreed", true}};
    if (!email.empty()) j["contact"] = json::array({"mailto:" + std::string(email)});
    return dump(j);
}

std::string new_order_payload(std::string_view hostname) {
    return dump(json{{"identifiers", json::array({json{{"type", "dns"}, {"value", std::string(hostname)}}})}});
}

std::string finalize_payload(std::string_view csr_der_b64url) { return dump(json{{"csr", std::string(csr_der_b64url)}}); }

std::string protected_header(std::string_view nonce, std::string_view url, std::string_view jwk_json,
                             std::string_view kid) {
    json j = {{"alg", "ES256"}, {"nonce", std::string(nonce)}, {"url", std::string(url)}};
    if (!jwk_json.empty()) {
        json jwk = json::parse(jwk_json.begin(), jwk_json.end(), nullptr, false);
        j["jwk"] = std::move(jwk);
    } else {
        j["kid"] = std::string(kid);
    }
    return dump(j);
}

result<https_url, std::string> parse_https_url(std::string_view url) {
    if (url.size() > url_bytes_max) return unexpected(std::string("URL too long"));
    constexpr std::string_view scheme = "https://";
    if (url.size() < scheme.size() ||
        !std::equal(scheme.begin(), scheme.end(), url.begin(), [](char a, char b) { return a == (b | 0x20); }))
        return unexpected(fmt::format("\"{}\" is not an https URL", url.substr(0, 80)));
    std::string_view rest = url.substr(scheme.size());
    const auto slash = rest.find_first_of("/?#");
    std::string_view authority = rest.substr(0, slash);
    std::string_view target = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
    if (const auto hash = target.find('#'); hash != std::string_view::npos) target = target.substr(0, hash);
    if (authority.find('@') != std::string_view::npos) return unexpected(std::string("URL with user information"));
    https_url out;
    out.host_header = std::string(authority);
    std::string_view port_text;
    if (!authority.empty() && authority.front() == '[') {
        const auto close = authority.find(']');
        if (close == std::string_view::npos) return unexpected(std::string("URL: unclosed [ in the host"));
        out.host = std::string(authority.substr(1, close - 1));
        std::string_view after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return unexpected(std::string("URL: junk after the IPv6 host"));
            port_text = after.substr(1);
        }
    } else {
        const auto colon = authority.rfind(':');
        out.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
    }
    if (out.host.empty()) return unexpected(std::string("URL without a host"));
    for (char ch : out.host) {
        const auto u = static_cast<unsigned char>(ch);
        if (u <= 0x20 || u >= 0x7f || ch == '/' || ch == '\\') return unexpected(std::string("URL: bad character in the host"));
    }
    if (!port_text.empty()) {
        unsigned port = 0;
        auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
        if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 || port > 65535)
            return unexpected(fmt::format("URL: bad port \"{}\"", port_text.substr(0, 16)));
        out.port = static_cast<std::uint16_t>(port);
    }
    for (char ch : target) {
        const auto u = static_cast<unsigned char>(ch);
        if (u <= 0x20 || u >= 0x7f) return unexpected(std::string("URL: bad character in the path"));
    }
    out.target = target.empty() ? "/" : std::string(target);
    if (out.target.front() == '?') out.target.insert(out.target.begin(), '/');
    return out;
}

std::optional<std::int64_t> parse_retry_after(std::string_view value, std::int64_t now_unix) noexcept {
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (value.empty()) return std::nullopt;
    if (value.front() >= '0' && value.front() <= '9') {
        std::int64_t seconds = 0;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
        if (ec != std::errc() || end != value.data() + value.size()) return std::nullopt;
        return seconds;
    }
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
    if (value.size() != 29 || value.substr(3, 2) != ", " || value.substr(25) != " GMT") return std::nullopt;
    static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    unsigned month = 0;
    for (unsigned i = 0; i < 12; ++i)
        if (value.substr(8, 3) == months[i]) month = i + 1;
    auto number = [&](std::size_t at, std::size_t length, unsigned& out) {
        auto [end, ec] = std::from_chars(value.data() + at, value.data() + at + length, out);
        return ec == std::errc() && end == value.data() + at + length;
    };
    unsigned day = 0, year = 0, hour = 0, minute = 0, second = 0;
    if (month == 0 || !number(5, 2, day) || !number(12, 4, year) || !number(17, 2, hour) || !number(20, 2, minute) ||
        !number(23, 2, second) || value[7] != ' ' || value[11] != ' ' || value[16] != ' ' || value[19] != ':' ||
        value[22] != ':' || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60)
        return std::nullopt;
    const std::int64_t when = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    return std::max<std::int64_t>(0, when - now_unix);
}

std::int64_t renewal_time_unix(std::int64_t not_before, std::int64_t not_after, double jitter_fraction) noexcept {
    const std::int64_t lifetime = std::max<std::int64_t>(0, not_after - not_before);
    const double jitter = std::clamp(jitter_fraction, 0.0, 1.0) * static_cast<double>(lifetime) / 10.0;
    return not_after - lifetime / 3 - static_cast<std::int64_t>(std::llround(jitter));
}

std::int64_t backoff_ns(std::uint32_t failures, std::int64_t base_ns, std::int64_t cap_ns) noexcept {
    std::int64_t delay = base_ns;
    for (std::uint32_t i = 1; i < failures && delay < cap_ns; ++i) delay *= 2;
    return std::min(delay, cap_ns);
}

}  // namespace derp::acme
