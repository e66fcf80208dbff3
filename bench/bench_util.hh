// Small helpers shared by the benchmark programs: medians of rounds, thread pinning, and the
// comma-separated lists their flags take.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "core/bootstrap_dns.hh"
#include "core/flags.hh"

namespace derp::bench {

// The median of the rounds (the upper one of the middle two for an even count); 0 for none.
inline double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values.empty() ? 0 : values[values.size() / 2];
}

// A flag's comma-separated list ("64,570,1400"), entries trimmed, empty ones skipped.
inline std::vector<std::string> comma_list(std::string_view text) { return parse_name_list(text); }
inline std::vector<std::int64_t> comma_ints(std::string_view text) {
    std::vector<std::int64_t> out;
    for (const auto& entry : comma_list(text)) out.push_back(std::stoll(entry));
    return out;
}

// "host:port", "[v6]:port" or "host" -> (host, port), default_port when none is given; nullopt
// for an unclosed '['.
inline std::optional<std::pair<std::string, std::string>> split_host_port(const std::string& hostport,
                                                                          const std::string& default_port) {
    std::string host = hostport, port = default_port;
    if (!hostport.empty() && hostport.front() == '[') {
        const auto close = hostport.find(']');
        if (close == std::string::npos) return std::nullopt;
        host = hostport.substr(1, close - 1);
        if (close + 1 < hostport.size() && hostport[close + 1] == ':') port = hostport.substr(close + 2);
    } else if (const auto colon = hostport.rfind(':'); colon != std::string::npos) {
        host = hostport.substr(0, colon);
        port = hostport.substr(colon + 1);
    }
    return std::pair{host, port};
}

// Pins the calling thread to `cpu` (modulo the online cores).
inline void pin_this_thread(int cpu) {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<unsigned>(cpu % static_cast<int>(std::max(1L, online))), &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// Parses a benchmark's flags; on bad flags or -h prints usage and returns the exit status the
// program should end with.
inline std::optional<int> parse_flags(flag_set& flags, int argc, char** argv) {
    std::vector<std::string_view> args(argv + 1, argv + argc);
    auto parsed = flags.parse(args);
    if (parsed && !parsed->help_requested) return std::nullopt;
    fmt::print(stderr, "{}{}", parsed ? "" : parsed.error() + "\n", flags.usage());
    return parsed ? 0 : 2;
}

// The derpd to measure: -derpd if given, else the one of the build the tests run in
// ($DERP_BUILD_ROOT), else the default.
inline void default_derpd_path(const flag_set& flags, std::string& derpd) {
    if (const char* root = std::getenv("DERP_BUILD_ROOT"); root != nullptr && !flags.was_set("derpd"))
        derpd = std::string(root) + "/server/derpd";
}

}  // namespace derp::bench
