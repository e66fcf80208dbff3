// DERP_ASSERT: checks for programming errors (bugs), on in every build type, aborting with the
// failed condition and its place. Operating errors (bad input, resets, full queues) are values,
// never asserts; see core/result.hh.
#pragma once

namespace derp::detail {
[[noreturn]] void assert_failed(const char* condition, const char* file, int line) noexcept;
}  // namespace derp::detail

#define DERP_ASSERT(condition)                                                   \
    do {                                                                         \
        if (!(condition)) [[unlikely]]                                           \
            ::derp::detail::assert_failed(#condition, __FILE__, __LINE__);       \
    } while (false)
