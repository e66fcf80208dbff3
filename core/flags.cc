// Go-style flag parsing; see flags.hh for the accepted spellings.
#include "core/flags.hh"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace derp {
namespace {

struct duration_unit {
    std::string_view name;
    double ns;
};
// Longest names first so that "ms" is not read as "m" followed by garbage.
constexpr duration_unit duration_units[] = {
    {"ns", 1.0},           {"us", 1e3},  {"\xc2\xb5s", 1e3} /* U+00B5 micro sign */,
    {"\xce\xbcs", 1e3} /* U+03BC mu */, {"ms", 1e6}, {"s", 1e9},
    {"m", 60e9},           {"h", 3600e9},
};

bool parse_int64(std::string_view text, std::int64_t* out) noexcept {
    if (text.empty()) return false;
    const char* first = text.data();
    const char* last = text.data() + text.size();
    int base = 10;
    bool negative = false;
    if (*first == '+' || *first == '-') {
        negative = *first == '-';
        ++first;
    }
    // Go's flag package takes base prefixes (0x, 0o, 0b, leading 0 for octal).
    if (last - first > 2 && first[0] == '0' && (first[1] == 'x' || first[1] == 'X')) {
        base = 16;
        first += 2;
    } else if (last - first > 2 && first[0] == '0' && (first[1] == 'b' || first[1] == 'B')) {
        base = 2;
        first += 2;
    } else if (last - first > 2 && first[0] == '0' && (first[1] == 'o' || first[1] == 'O')) {
        base = 8;
        first += 2;
    } else if (last - first > 1 && first[0] == '0') {
        base = 8;
        first += 1;
    }
    if (first == last) return false;
    std::uint64_t magnitude = 0;
    auto [ptr, ec] = std::from_chars(first, last, magnitude, base);
    if (ec != std::errc() || ptr != last) return false;
    const auto limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    if (negative) {
        if (magnitude > limit + 1) return false;
        *out = magnitude == limit + 1 ? std::numeric_limits<std::int64_t>::min()
                                      : -static_cast<std::int64_t>(magnitude);
    } else {
        if (magnitude > limit) return false;
        *out = static_cast<std::int64_t>(magnitude);
    }
    return true;
}

std::optional<bool> parse_go_bool(std::string_view text) noexcept {
    // strconv.ParseBool's accepted spellings.
    for (std::string_view t : {"1", "t", "T", "TRUE", "true", "True"})
        if (text == t) return true;
    for (std::string_view f : {"0", "f", "F", "FALSE", "false", "False"})
        if (text == f) return false;
    return std::nullopt;
}

}  // namespace

std::optional<std::int64_t> parse_go_duration_ns(std::string_view text) noexcept {
    // Grammar (time.ParseDuration): [-+]? ( decimal unit )+ | "0".
    std::string_view s = text;
    bool negative = false;
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
        negative = s[0] == '-';
        s.remove_prefix(1);
    }
    if (s == "0") return 0;
    if (s.empty()) return std::nullopt;
    double total_ns = 0;
    while (!s.empty()) {
        std::size_t digits = 0;
        bool seen_dot = false;
        bool seen_digit = false;
        while (digits < s.size() && ((s[digits] >= '0' && s[digits] <= '9') || s[digits] == '.')) {
            if (s[digits] == '.') {
                if (seen_dot) return std::nullopt;
                seen_dot = true;
            } else {
                seen_digit = true;
            }
            ++digits;
        }
        if (!seen_digit) return std::nullopt;
        double number = 0;
        auto [ptr, ec] = std::from_chars(s.data(), s.data() + digits, number);
        if (ec != std::errc() || ptr != s.data() + digits) return std::nullopt;
        s.remove_prefix(digits);
        const duration_unit* unit = nullptr;
        for (const auto& candidate : duration_units) {
            if (s.substr(0, candidate.name.size()) == candidate.name &&
                (unit == nullptr || candidate.name.size() > unit->name.size()))
                unit = &candidate;
        }
        if (unit == nullptr) return std::nullopt;  // "missing unit" or "unknown unit"
        s.remove_prefix(unit->name.size());
        total_ns += number * unit->ns;
        if (total_ns > 9.223372036854775807e18) return std::nullopt;  // overflows int64 ns
    }
    const auto rounded = static_cast<std::int64_t>(std::llround(total_ns));
    return negative ? -rounded : rounded;
}

std::string format_go_duration(std::int64_t duration_ns) {
    if (duration_ns == 0) return "0s";
    std::string sign = duration_ns < 0 ? "-" : "";
    // Magnitude as unsigned so that INT64_MIN does not overflow.
    std::uint64_t ns = duration_ns < 0 ? 0 - static_cast<std::uint64_t>(duration_ns)
                                       : static_cast<std::uint64_t>(duration_ns);
    auto fraction = [](std::uint64_t value, std::uint64_t scale) {
        // Go prints the fractional part without trailing zeros.
        std::string whole = std::to_string(value / scale);
        std::uint64_t rest = value % scale;
        if (rest == 0) return whole;
        std::string digits = std::to_string(rest + scale).substr(1);
        while (!digits.empty() && digits.back() == '0') digits.pop_back();
        return whole + "." + digits;
    };
    if (ns < 1'000) return sign + std::to_string(ns) + "ns";
    if (ns < 1'000'000) return sign + fraction(ns, 1'000) + "\xc2\xb5s";
    if (ns < 1'000'000'000) return sign + fraction(ns, 1'000'000) + "ms";
    std::string out = sign;
    const std::uint64_t hours = ns / 3'600'000'000'000;
    ns -= hours * 3'600'000'000'000;
    const std::uint64_t minutes = ns / 60'000'000'000;
    ns -= minutes * 60'000'000'000;
    if (hours > 0) out += std::to_string(hours) + "h";
    if (hours > 0 || minutes > 0) out += std::to_string(minutes) + "m";
    out += fraction(ns, 1'000'000'000) + "s";
    return out;
}

void flag_set::add(std::string name, flag_kind kind, void* storage, std::string usage,
                   std::string default_text) {
    DERP_ASSERT(find(name) == nullptr);  // a flag registered twice is a bug
    DERP_ASSERT(storage != nullptr);
    _flags.push_back(flag{std::move(name), kind, storage, std::move(usage),
                          std::move(default_text), false});
}

void flag_set::add_bool(std::string name, bool* value, std::string usage) {
    add(std::move(name), flag_kind::boolean, value, std::move(usage), *value ? "true" : "false");
}
void flag_set::add_string(std::string name, std::string* value, std::string usage) {
    add(std::move(name), flag_kind::string, value, std::move(usage), *value);
}
void flag_set::add_int(std::string name, std::int64_t* value, std::string usage) {
    add(std::move(name), flag_kind::integer, value, std::move(usage), std::to_string(*value));
}
void flag_set::add_duration(std::string name, std::int64_t* value_ns, std::string usage) {
    add(std::move(name), flag_kind::duration, value_ns, std::move(usage),
        format_go_duration(*value_ns));
}

void flag_set::add_float(std::string name, double* value, std::string usage) {
    std::string text = std::isinf(*value) ? (*value > 0 ? "+Inf" : "-Inf") : fmt::format("{}", *value);
    add(std::move(name), flag_kind::floating, value, std::move(usage), std::move(text));
}

std::optional<double> parse_go_float(std::string_view text) noexcept {
    if (text.empty()) return std::nullopt;
    bool negative = false;
    if (text.front() == '+' || text.front() == '-') {
        negative = text.front() == '-';
        text.remove_prefix(1);
    }
    if (text.empty() || text.front() == '+' || text.front() == '-') return std::nullopt;
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, std::chars_format::general);
    if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return negative ? -value : value;
}

void flag_set::add_string_list(std::string name, std::vector<std::string>* values, std::string usage) {
    std::string defaults;
    for (const auto& v : *values) defaults += (defaults.empty() ? "" : ",") + v;
    add(std::move(name), flag_kind::string_list, values, std::move(usage), defaults);
}

flag_set::flag* flag_set::find(std::string_view name) noexcept {
    for (auto& f : _flags)
        if (f.name == name) return &f;
    return nullptr;
}
const flag_set::flag* flag_set::find(std::string_view name) const noexcept {
    for (const auto& f : _flags)
        if (f.name == name) return &f;
    return nullptr;
}

bool flag_set::was_set(std::string_view name) const noexcept {
    const flag* f = find(name);
    return f != nullptr && f->set;
}

result<void, std::string> flag_set::assign(flag& f, std::string_view value) {
    switch (f.kind) {
    case flag_kind::boolean: {
        auto b = parse_go_bool(value);
        if (!b)
            return unexpected(fmt::format("invalid boolean value \"{}\" for flag -{}", value, f.name));
        *static_cast<bool*>(f.storage) = *b;
        break;
    }
    case flag_kind::string:
        *static_cast<std::string*>(f.storage) = std::string(value);
        break;
    case flag_kind::string_list: {
        auto* list = static_cast<std::vector<std::string>*>(f.storage);
        if (!f.set) list->clear();  // the first occurrence replaces the defaults
        list->emplace_back(value);
        break;
    }
    case flag_kind::integer: {
        std::int64_t n = 0;
        if (!parse_int64(value, &n))
            return unexpected(fmt::format("invalid integer value \"{}\" for flag -{}", value, f.name));
        *static_cast<std::int64_t*>(f.storage) = n;
        break;
    }
    case flag_kind::floating: {
        auto d = parse_go_float(value);
        if (!d) return unexpected(fmt::format("invalid float value \"{}\" for flag -{}", value, f.name));
        *static_cast<double*>(f.storage) = *d;
        break;
    }
    case flag_kind::duration: {
        auto ns = parse_go_duration_ns(value);
        if (!ns)
            return unexpected(fmt::format(
                "invalid duration \"{}\" for flag -{} (Go syntax: 500ms, 15s, 10m, 1h30m)", value,
                f.name));
        *static_cast<std::int64_t*>(f.storage) = *ns;
        break;
    }
    }
    f.set = true;
    return {};
}

result<flag_set::parsed, std::string> flag_set::parse(std::span<const std::string_view> args) {
    parsed out;
    std::size_t i = 0;
    while (i < args.size()) {
        std::string_view arg = args[i];
        // As in Go: the first non-flag argument ends the flags; "-" alone is an argument.
        if (arg.size() < 2 || arg[0] != '-') break;
        ++i;
        std::string_view name = arg.substr(1);
        if (name[0] == '-') {
            name.remove_prefix(1);
            if (name.empty()) break;  // "--" terminates the flags
        }
        if (name.empty() || name[0] == '-' || name[0] == '=')
            return unexpected(fmt::format("bad flag syntax: {}", arg));
        std::optional<std::string_view> value;
        if (auto eq = name.find('='); eq != std::string_view::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
        }
        flag* f = find(name);
        if (f == nullptr) {
            if (name == "h" || name == "help") {
                out.help_requested = true;
                continue;
            }
            return unexpected(fmt::format("flag provided but not defined: -{}", name));
        }
        if (f->kind == flag_kind::boolean) {
            // A boolean never takes the next argument as its value: `-stun false` would be
            // -stun=true followed by the argument "false", exactly as Go reads it.
            if (auto r = assign(*f, value.value_or("true")); !r) return unexpected(r.error());
            continue;
        }
        if (!value) {
            if (i >= args.size())
                return unexpected(fmt::format("flag needs an argument: -{}", name));
            value = args[i++];
        }
        if (auto r = assign(*f, *value); !r) return unexpected(r.error());
    }
    for (; i < args.size(); ++i) out.positional.emplace_back(args[i]);
    return out;
}

std::string flag_set::usage() const {
    std::vector<const flag*> sorted;
    for (const auto& f : _flags) sorted.push_back(&f);
    std::sort(sorted.begin(), sorted.end(),
              [](const flag* a, const flag* b) { return a->name < b->name; });
    std::string text = fmt::format("Usage of {}:\n", _program_name);
    for (const flag* f : sorted) {
        const char* type = "";
        switch (f->kind) {
        case flag_kind::boolean: type = ""; break;
        case flag_kind::string: type = " string"; break;
        case flag_kind::string_list: type = " value (repeatable)"; break;
        case flag_kind::integer: type = " int"; break;
        case flag_kind::floating: type = " float"; break;
        case flag_kind::duration: type = " duration"; break;
        }
        text += fmt::format("  -{}{}\n    \t{}", f->name, type, f->usage);
        const bool zero_default = f->default_text.empty() || f->default_text == "false" ||
                                  (f->kind == flag_kind::integer && f->default_text == "0") ||
                                  (f->kind == flag_kind::duration && f->default_text == "0s");
        if (!zero_default) {
            if (f->kind == flag_kind::string || f->kind == flag_kind::string_list)
                text += fmt::format(" (default \"{}\")", f->default_text);
            else
                text += fmt::format(" (default {})", f->default_text);
        }
        text += "\n";
    }
    return text;
}

}  // namespace derp
