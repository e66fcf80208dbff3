// Command-line flags in Go's `flag` spelling, as derper's operators type them: `-name value`,
// `--name value`, `-name=value`, booleans as `-name` or `-name=false`, durations as Go writes them
// (`500ms`, `15s`, `10m`, `1h30m`). Pure: argv in, values or an error naming the flag out.
// Not a general CLI framework: no short-option bundling, no subcommands (a tool handles those
// before handing the rest of argv here).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/result.hh"

namespace derp {

// Parses a Go time.Duration string ("1h2m3.5s", "-300ms", "0") into nanoseconds.
// Units: ns, us, µs, ms, s, m, h. A bare number other than 0 is an error, as in Go.
std::optional<std::int64_t> parse_go_duration_ns(std::string_view text) noexcept;

// Parses a float64 the way Go's strconv.ParseFloat does for decimal text: an optional sign,
// digits with a fraction and exponent, or Inf/Infinity/NaN in any case.
std::optional<double> parse_go_float(std::string_view text) noexcept;

// Formats nanoseconds the way Go's Duration.String does ("1m30s", "500ms", "0s").
std::string format_go_duration(std::int64_t duration_ns);

class flag_set {
public:
    explicit flag_set(std::string program_name) : _program_name(std::move(program_name)) {}

    // Each registration binds a flag to caller-owned storage, which holds the default on entry.
    // The storage must outlive parse(). Names are given without dashes.
    void add_bool(std::string name, bool* value, std::string usage);
    void add_string(std::string name, std::string* value, std::string usage);
    void add_int(std::string name, std::int64_t* value, std::string usage);
    void add_duration(std::string name, std::int64_t* value_ns, std::string usage);
    // Go's float64 flag (strconv.ParseFloat): "1.5", "2e3", "+Inf", "inf", ...
    void add_float(std::string name, double* value, std::string usage);
    // Repeatable (Go's flag.Var over a slice): each occurrence appends; the first one given
    // replaces the defaults.
    void add_string_list(std::string name, std::vector<std::string>* values, std::string usage);

    struct parsed {
        std::vector<std::string> positional;  // arguments after the flags (or after `--`)
        bool help_requested = false;          // -h / -help / --help was given
    };
    // Parses argv (without argv[0]). The error is one line, naming the flag and the problem.
    result<parsed, std::string> parse(std::span<const std::string_view> args);

    // Whether the flag was given on the command line (not just left at its default).
    bool was_set(std::string_view name) const noexcept;

    // Go-style usage text: one entry per flag, sorted by name, with defaults.
    std::string usage() const;

private:
    enum class flag_kind : std::uint8_t { boolean, string, integer, duration, string_list, floating };
    struct flag {
        std::string name;
        flag_kind kind;
        void* storage;
        std::string usage;
        std::string default_text;
        bool set = false;
    };
    flag* find(std::string_view name) noexcept;
    const flag* find(std::string_view name) const noexcept;
    void add(std::string name, flag_kind kind, void* storage, std::string usage,
             std::string default_text);
    result<void, std::string> assign(flag& f, std::string_view value);

    std::string _program_name;
    std::vector<flag> _flags;
};

}  // namespace derp
