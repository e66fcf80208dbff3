// Client admission's wire formats (see admission.hh).
#include "core/admission.hh"

#include <nlohmann/json.hpp>

#include <array>
#include <charconv>

#include "core/go_json.hh"

namespace derp {

std::string admission_request_json(const node_key& key, std::string_view source_ip) {
    std::string out = "{\"NodePublic\":\"nodekey:";
    out += key.to_string();
    out += "\",\"Source\":\"";
    // An IP address's text needs no escaping; anything else is left out rather than trusted.
    for (const char ch : source_ip)
        if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == '.' || ch == ':')
            out += ch;
    out += "\"}";
    return out;
}

admission_answer parse_admission_answer(std::string_view body) noexcept {
    static constexpr std::array<std::string_view, 1> fields = {"Allow"};
    bool allow = false;
    auto handler = [&allow](std::size_t, const json_value& value) noexcept {
        if (value.kind == json_kind::null) return true;  // Go leaves the field as it was
        if (value.kind != json_kind::boolean) return false;
        allow = value.boolean;
        return true;
    };
    if (!decode_json_object(body, fields, handler)) return admission_answer::invalid;
    return allow ? admission_answer::allow : admission_answer::deny;
}

bool whois_answer_valid(std::string_view body) noexcept {
    static constexpr std::array<std::string_view, 3> fields = {"Node", "UserProfile", "CapMap"};
    auto handler = [](std::size_t, const json_value& value) noexcept {
        return value.kind == json_kind::null || value.kind == json_kind::aggregate;
    };
    return decode_json_object(body, fields, handler);
}

std::optional<node_key> status_self_key(std::string_view body) noexcept {
    try {
        const auto doc = nlohmann::json::parse(body, nullptr, false);
        if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
        // encoding/json: the last member whose key folds to the field's name wins.
        static constexpr std::array<std::string_view, 1> self_field = {"Self"};
        static constexpr std::array<std::string_view, 1> key_field = {"PublicKey"};
        const nlohmann::json* self = nullptr;
        for (const auto& [name, value] : doc.items())
            if (match_go_json_field(name, self_field) == 0) self = &value;
        if (self == nullptr || !self->is_object()) return std::nullopt;
        const nlohmann::json* key = nullptr;
        for (const auto& [name, value] : self->items())
            if (match_go_json_field(name, key_field) == 0) key = &value;
        if (key == nullptr || !key->is_string()) return std::nullopt;
        const std::string& text = key->get_ref<const std::string&>();
        constexpr std::string_view prefix = "nodekey:";
        if (text.size() != prefix.size() + 64 || text.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
        return node_key::from_hex(std::string_view(text).substr(prefix.size()));
    } catch (...) {  // allocation failure: no key
        return std::nullopt;
    }
}

std::optional<http_url> parse_http_url(std::string_view url) {
    // The scheme, case-insensitive as RFC 3986 says.
    auto has_scheme = [&](std::string_view scheme) {
        if (url.size() < scheme.size()) return false;
        for (std::size_t i = 0; i < scheme.size(); ++i)
            if ((url[i] | 0x20) != scheme[i] && url[i] != scheme[i]) return false;
        return true;
    };
    http_url out;
    if (has_scheme("https://")) {
        out.tls = true;
        out.port = 443;
        url.remove_prefix(8);
    } else if (has_scheme("http://")) {
        url.remove_prefix(7);
    } else {
        return std::nullopt;
    }
    const auto slash = url.find_first_of("/?#");
    std::string_view authority = url.substr(0, slash);
    std::string_view rest = slash == std::string_view::npos ? std::string_view() : url.substr(slash);
    if (const auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
    if (authority.empty() || authority.find('@') != std::string_view::npos) return std::nullopt;
    std::string_view port_text;
    if (authority.front() == '[') {
        const auto close = authority.find(']');
        if (close == std::string_view::npos || close == 1) return std::nullopt;
        out.host = std::string(authority.substr(1, close - 1));
        const auto after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return std::nullopt;
            port_text = after.substr(1);
            if (port_text.empty()) return std::nullopt;
        }
    } else {
        const auto colon = authority.find(':');
        out.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) {
            port_text = authority.substr(colon + 1);
            if (port_text.empty()) return std::nullopt;
        }
        if (out.host.empty()) return std::nullopt;
    }
    for (const char ch : out.host)
        if (static_cast<unsigned char>(ch) <= ' ' || ch == '/' || ch == '\\' || ch == 0x7f) return std::nullopt;
    if (!port_text.empty()) {
        unsigned value = 0;
        const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
        if (ec != std::errc() || end != port_text.data() + port_text.size() || value == 0 || value > 65535)
            return std::nullopt;
        out.port = static_cast<std::uint16_t>(value);
    }
    for (const char ch : rest)
        if (static_cast<unsigned char>(ch) <= ' ' || ch == 0x7f) return std::nullopt;
    out.target = rest.empty() ? "/" : (rest.front() == '?' ? "/" + std::string(rest) : std::string(rest));
    return out;
}

}  // namespace derp
