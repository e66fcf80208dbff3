// Process log: one line per event on stderr, written with a single write(2) so that lines from
// different threads never interleave. Levels filter at the call site. Hot paths must not log per
// packet; per-connection events log at debug, repeated failures through a log_limiter.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include <fmt/format.h>

namespace derp::ring {

enum class log_level : std::uint8_t { debug = 0, info = 1, warn = 2, error = 3 };

void set_log_level(log_level level) noexcept;
log_level current_log_level() noexcept;
bool parse_log_level(std::string_view text, log_level* out) noexcept;
void write_log_line(log_level level, std::string_view line) noexcept;

template <typename... Args>
void log(log_level level, fmt::format_string<Args...> format, Args&&... args) noexcept {
    if (level < current_log_level()) return;
    try {
        write_log_line(level, fmt::format(format, std::forward<Args>(args)...));
    } catch (...) {
        write_log_line(level, "(log line could not be formatted)");
    }
}

// Lets a burst of lines through, then one per interval, for an event that can repeat per
// connection or per accept (closes, EMFILE), and says how many were held back.
class log_limiter {
public:
    explicit log_limiter(std::uint64_t interval_ns, std::uint32_t burst = 1) noexcept
        : _interval_ns(interval_ns), _burst(burst), _tokens(burst) {}
    // Returns the number of suppressed events since the last allowed one plus one, or 0 when
    // this event should not be logged.
    std::uint64_t allow(std::uint64_t now_ns) noexcept;

private:
    std::uint64_t _interval_ns;
    std::uint32_t _burst;
    std::uint32_t _tokens;
    std::uint64_t _last_ns = 0;
    std::uint64_t _suppressed = 0;
};

std::uint64_t monotonic_ns() noexcept;

}  // namespace derp::ring
