// derper's per-client receive rate limit (see rate_limit.hh).
#include "core/rate_limit.hh"

#include <array>
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/go_json.hh"

namespace derp {

result<rate_config, std::string> parse_rate_config(std::string_view text) {
    if (text.size() > rate_config_bytes_max)
        return unexpected(fmt::format("{} bytes; a rate config is a small JSON object (at most {})", text.size(),
                                      rate_config_bytes_max));
    static constexpr std::array<std::string_view, 2> fields = {"PerClientRateLimitBytesPerSec",
                                                               "PerClientRateBurstBytes"};
    rate_config out;
    std::string problem;
    auto handler = [&](std::size_t field, const json_value& value) noexcept {
        if (value.kind == json_kind::null) return true;  // Go leaves the field as it was
        if (value.kind != json_kind::integer || !value.fits_uint64) {
            problem = fmt::format("{} must be a whole number of bytes from 0 to 2^64-1", fields[field]);
            return false;
        }
        (field == 0 ? out.bytes_per_second : out.burst_bytes) = value.uint64;
        return true;
    };
    if (!decode_json_object(text, fields, handler)) {
        if (problem.empty())
            problem = "not a JSON object like {\"PerClientRateLimitBytesPerSec\": 1000000, "
                      "\"PerClientRateBurstBytes\": 2000000}";
        return unexpected(problem);
    }
    return out;
}

std::string server_info_json_with_rate(const rate_config& config) {
    return fmt::format(R"({{"version":2,"TokenBucketBytesPerSecond":{},"TokenBucketBytesBurst":{}}})",
                       std::min(config.bytes_per_second, advertised_rate_max),
                       std::min(config.effective_burst(), advertised_rate_max));
}

byte_bucket::byte_bucket(const rate_config& config, std::uint64_t now_ns) noexcept
    : _rate(config.bytes_per_second),
      _burst(static_cast<double>(config.effective_burst())),
      _tokens(_burst),
      _refill_ns(now_ns) {}

void byte_bucket::refill(std::uint64_t now_ns) noexcept {
    if (now_ns <= _refill_ns) return;
    const double elapsed_s = static_cast<double>(now_ns - _refill_ns) / 1e9;
    _tokens = std::min(_burst, _tokens + elapsed_s * static_cast<double>(_rate));
    _refill_ns = now_ns;
}

bool byte_bucket::take(std::uint64_t cost, std::uint64_t now_ns, std::uint64_t& ready_ns) noexcept {
    if (_rate == 0) return true;
    refill(now_ns);
    const double need = static_cast<double>(cost);
    if (_tokens >= need) {
        _tokens -= need;
        return true;
    }
    // Rounded up to the next nanosecond, so that a caller woken at ready_ns finds enough.
    const double wait_ns = std::ceil((need - _tokens) * 1e9 / static_cast<double>(_rate));
    ready_ns = _refill_ns + static_cast<std::uint64_t>(wait_ns) + 1;
    return false;
}

}  // namespace derp
