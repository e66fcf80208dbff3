// Bootstrap DNS formatting and rollout decisions (see bootstrap_dns.hh).
#include "core/bootstrap_dns.hh"

#include <charconv>

#include <fmt/format.h>

namespace derp {
namespace {

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Go's encoding/json string escaping for the characters a DNS name or address can hold, plus
// the HTML-safe escapes Go applies by default.
std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (const char ch : s) {
        switch (ch) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '<': out += "\\u003c"; break;
        case '>': out += "\\u003e"; break;
        case '&': out += "\\u0026"; break;
        default:
            if (static_cast<unsigned char>(ch) < 0x20) out += fmt::format("\\u{:04x}", static_cast<unsigned>(ch));
            else out += ch;
        }
    }
    return out + "\"";
}

}  // namespace

std::string format_bootstrap_json(const dns_map& names) {
    if (names.empty()) return "{}";
    std::string out = "{\n";
    bool first_name = true;
    for (const auto& [name, addresses] : names) {
        if (!first_name) out += ",\n";
        first_name = false;
        out += "\t" + json_string(name) + ": ";
        if (addresses.empty()) {
            out += "[]";
            continue;
        }
        out += "[\n";
        for (std::size_t i = 0; i < addresses.size(); ++i)
            out += "\t\t" + json_string(addresses[i]) + (i + 1 < addresses.size() ? ",\n" : "\n");
        out += "\t]";
    }
    return out + "\n}";
}

std::vector<std::string> parse_name_list(std::string_view flag_value) {
    std::vector<std::string> names;
    while (!flag_value.empty()) {
        const auto comma = flag_value.find(',');
        const std::string_view name = trim(flag_value.substr(0, comma));
        if (!name.empty()) names.emplace_back(name);
        flag_value = comma == std::string_view::npos ? std::string_view() : flag_value.substr(comma + 1);
    }
    return names;
}

std::vector<unpublished_name> parse_unpublished_names(std::string_view flag_value) {
    std::vector<unpublished_name> out;
    for (const auto& entry : parse_name_list(flag_value)) {
        const auto slash = entry.find('/');
        if (slash == 0) continue;  // "/txt" names nothing to resolve (found by fuzzing)
        if (slash == std::string::npos) out.push_back({entry, ""});
        else out.push_back({entry.substr(0, slash), entry.substr(slash + 1)});
    }
    return out;
}

int parse_rollout_percent(std::string_view txt) noexcept {
    txt = trim(txt);
    int value = 0;
    const auto [ptr, ec] = std::from_chars(txt.data(), txt.data() + txt.size(), value);
    if (txt.empty() || ec != std::errc() || ptr != txt.data() + txt.size() || value < 0 || value > 100) return 0;
    return value;
}

bool rollout_selects(int percent, const ip16& client, bool loopback, double coin) noexcept {
    if (percent <= 0) return false;
    if (percent >= 100) return true;
    if (loopback) return coin < 0.5;
    // splitmix64 over the two 64-bit halves: a stable draw in [0,1) per address.
    std::uint64_t state = 0;
    for (std::size_t i = 0; i < 16; ++i) state = state * 131 + client[i];
    std::uint64_t z = state + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double draw = static_cast<double>(z >> 11) / 9007199254740992.0;  // 2^53
    return draw < static_cast<double>(percent) / 100.0;
}

}  // namespace derp
