// Exit status 77 tells meson the test was skipped: used when the kernel lacks what the test
// needs (io_uring disabled, no IPv6, no network namespaces), with the reason on stderr.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace derp::test {

inline constexpr int exit_skip = 77;

[[noreturn]] inline void skip(std::string_view why) {
    std::fprintf(stderr, "SKIP: %.*s\n", static_cast<int>(why.size()), why.data());
    std::exit(exit_skip);
}

// A runtime start-up error that means "this kernel cannot run io_uring here" is a skip, not a
// failure; anything else is a real failure.
inline bool is_missing_io_uring(std::string_view error) {
    return error.find("io_uring is disabled") != std::string_view::npos ||
           error.find("has no io_uring") != std::string_view::npos ||
           error.find("needs Linux 6.0") != std::string_view::npos;
}

}  // namespace derp::test
