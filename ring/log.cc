// Log output and the monotonic clock.
#include "ring/log.hh"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <string>

namespace derp::ring {
namespace {
std::atomic<log_level> g_level{log_level::info};

constexpr std::string_view level_name(log_level level) noexcept {
    switch (level) {
    case log_level::debug: return "debug";
    case log_level::info: return "info";
    case log_level::warn: return "warn";
    case log_level::error: return "error";
    }
    return "?";
}
}  // namespace

void set_log_level(log_level level) noexcept { g_level.store(level, std::memory_order_relaxed); }
log_level current_log_level() noexcept { return g_level.load(std::memory_order_relaxed); }

bool parse_log_level(std::string_view text, log_level* out) noexcept {
    for (auto level : {log_level::debug, log_level::info, log_level::warn, log_level::error}) {
        if (text == level_name(level)) {
            *out = level;
            return true;
        }
    }
    return false;
}

void write_log_line(log_level level, std::string_view line) noexcept {
    // Wall-clock timestamp like Go's log package (date time.micro), then level and message.
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    tm parts{};
    gmtime_r(&now.tv_sec, &parts);
    char stamp[40];
    const auto stamp_bytes = strftime(stamp, sizeof stamp, "%Y/%m/%d %H:%M:%S", &parts);
    std::string out;
    try {
        out = fmt::format("{}.{:06d} {}: {}\n", std::string_view(stamp, stamp_bytes),
                          now.tv_nsec / 1000, level_name(level), line);
    } catch (...) {
        return;
    }
    // One write(2) per line; a short write to a pipe of a line under PIPE_BUF cannot happen,
    // and for longer lines the rest follows.
    std::string_view rest = out;
    while (!rest.empty()) {
        const ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
        if (n <= 0) return;
        rest.remove_prefix(static_cast<std::size_t>(n));
    }
}

std::uint64_t log_limiter::allow(std::uint64_t now_ns) noexcept {
    // Token bucket: one token per interval, at most `burst` saved up.
    if (_interval_ns > 0 && now_ns > _last_ns) {
        const std::uint64_t earned = (now_ns - _last_ns) / _interval_ns;
        if (earned > 0) {
            _tokens = static_cast<std::uint32_t>(std::min<std::uint64_t>(_burst, _tokens + earned));
            _last_ns += earned * _interval_ns;
        }
    }
    if (_last_ns == 0) _last_ns = now_ns;
    if (_tokens == 0) {
        ++_suppressed;
        return 0;
    }
    --_tokens;
    const std::uint64_t count = _suppressed + 1;
    _suppressed = 0;
    return count;
}

std::uint64_t monotonic_ns() noexcept {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000u +
           static_cast<std::uint64_t>(now.tv_nsec);
}

}  // namespace derp::ring
