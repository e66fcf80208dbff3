// libFuzzer target for derpd's --rate-config file (core/rate_limit): any bytes give a config or
// an error, never a crash; a config admits a maximal frame within one burst.
#include <cstdint>
#include <string_view>

#include "core/assert.hh"
#include "core/rate_limit.hh"

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp;
    const auto parsed = parse_rate_config(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!parsed) {
        DERP_ASSERT(!parsed.error().empty());
        return 0;
    }
    DERP_ASSERT(parsed->effective_burst() >= rate_burst_bytes_min);
    byte_bucket bucket(*parsed, 0);
    std::uint64_t ready = 0;
    DERP_ASSERT(bucket.take(rate_frame_cost_max, 0, ready));  // starts full
    if (parsed->enabled() && !bucket.take(rate_frame_cost_max, 0, ready)) DERP_ASSERT(ready > 0);
    return 0;
}
