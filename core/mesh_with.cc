// Parsing derper's -mesh-with list: see mesh_with.hh.
#include "core/mesh_with.hh"

#include <charconv>
#include <optional>

#include <fmt/format.h>

namespace derp {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool valid_host_chars(std::string_view s) {
    if (s.empty() || s.size() > 253) return false;
    for (const char ch : s) {
        const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                        ch == '.' || ch == '-' || ch == '_' || ch == ':';  // ':' for IPv6 literals
        if (!ok) return false;
    }
    return true;
}

// Splits "name", "name:port", "[v6]" or "[v6]:port". Returns false when malformed.
bool split_host_port(std::string_view text, std::string_view& name, std::optional<std::uint16_t>& port) {
    std::string_view rest;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos) return false;
        name = text.substr(1, close - 1);
        rest = text.substr(close + 1);
        if (!rest.empty() && rest.front() != ':') return false;
    } else {
        const auto colon = text.find(':');
        // A bare IPv6 literal has several colons and no port (Go's SplitHostPort refuses it too).
        if (colon != std::string_view::npos && text.find(':', colon + 1) != std::string_view::npos) return false;
        name = text.substr(0, colon);
        rest = colon == std::string_view::npos ? std::string_view{} : text.substr(colon);
    }
    if (!rest.empty()) {
        rest.remove_prefix(1);  // ':'
        unsigned value = 0;
        const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
        if (ec != std::errc{} || end != rest.data() + rest.size() || value == 0 || value > 65535) return false;
        port = static_cast<std::uint16_t>(value);
    }
    return valid_host_chars(name);
}

}  // namespace

result<std::vector<mesh_entry>, std::string> parse_mesh_with(std::string_view list) {
    std::vector<mesh_entry> out;
    while (!list.empty()) {
        const auto comma = list.find(',');
        const std::string_view raw = trim(list.substr(0, comma));
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
        if (raw.empty()) continue;
        const auto slash = raw.find('/');
        const std::string_view host = raw.substr(0, slash);
        std::string_view name;
        std::optional<std::uint16_t> port;
        if (!split_host_port(host, name, port))
            return unexpected(fmt::format("-mesh-with: \"{}\" is not host, host:port or host/dialhost", raw));
        mesh_entry e;
        e.host = std::string(host);
        e.verify_name = std::string(name);
        e.port = port.value_or(443);
        e.dial_host = e.verify_name;
        if (slash != std::string_view::npos) {
            // derper dials dialhost at the entry's port; a port on dialhost itself is accepted.
            std::string_view dial_name;
            std::optional<std::uint16_t> dial_port;
            if (!split_host_port(raw.substr(slash + 1), dial_name, dial_port))
                return unexpected(fmt::format("-mesh-with: \"{}\": bad dial host after '/'", raw));
            e.dial_host = std::string(dial_name);
            if (dial_port) e.port = *dial_port;
        }
        for (const auto& seen : out)
            if (seen.host == e.host)
                return unexpected(fmt::format("-mesh-with: \"{}\" is listed twice", e.host));
        out.push_back(std::move(e));
    }
    return out;
}

}  // namespace derp
