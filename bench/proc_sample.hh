// Another process's CPU time and RSS read from /proc, as every benchmark here measures a server
// (derpd, derper, the raw forwarder): utime + stime from /proc/PID/stat (proc(5) fields 14 and
// 15, in clock ticks), VmRSS from /proc/PID/status. Header-only so that small programs (the
// forwarder reporting its own CPU) need no library.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <fmt/format.h>

namespace derp::bench {

struct cpu_times {
    double user_s = 0;
    double system_s = 0;
    double total_s() const noexcept { return user_s + system_s; }
};

// Zero when the process cannot be read (gone, or not ours to read).
inline cpu_times process_cpu_times(pid_t pid) {
    std::ifstream stat(fmt::format("/proc/{}/stat", pid));
    const std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    // The command name (field 2) is in parentheses and may hold blanks: count after the last ')'.
    const auto close = text.rfind(')');
    if (close == std::string::npos || close + 2 >= text.size()) return {};
    std::istringstream in(text.substr(close + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && (in >> field); ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    const auto ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    return {static_cast<double>(utime) / ticks, static_cast<double>(stime) / ticks};
}

inline double process_cpu_seconds(pid_t pid) { return process_cpu_times(pid).total_s(); }

inline std::uint64_t process_rss_bytes(pid_t pid) {
    std::ifstream status(fmt::format("/proc/{}/status", pid));
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    return 0;
}

}  // namespace derp::bench
