// Out-of-line failure path of DERP_ASSERT, kept cold so that the checks stay cheap inline.
#include "core/assert.hh"

#include <cstdio>
#include <cstdlib>

namespace derp::detail {

void assert_failed(const char* condition, const char* file, int line) noexcept {
    std::fprintf(stderr, "derpd: assertion failed: %s (%s:%d)\n", condition, file, line);
    std::fflush(stderr);
    std::abort();
}

}  // namespace derp::detail
