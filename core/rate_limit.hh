// derper's per-client receive rate limit (spec 2.12): the --rate-config file's JSON and the
// byte token bucket that delays reading a client's next frame. Pure: text in, verdict out;
// time comes in as a number of nanoseconds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/result.hh"

namespace derp {

// A burst smaller than one maximal frame could never admit it: derper raises it to 64 KiB + 32.
inline constexpr std::uint64_t rate_burst_bytes_min = 64 * 1024 + 32;
// The most tokens one frame waits for (derper: min(frame length, 65568)).
inline constexpr std::uint64_t rate_frame_cost_max = rate_burst_bytes_min;
// A --rate-config file larger than this is refused unread (derper's is a two-field object).
inline constexpr std::size_t rate_config_bytes_max = 64 * 1024;

struct rate_config {
    std::uint64_t bytes_per_second = 0;  // 0 = no limit
    std::uint64_t burst_bytes = 0;       // as written; effective_burst() applies derper's floor
    bool enabled() const noexcept { return bytes_per_second != 0; }
    std::uint64_t effective_burst() const noexcept {
        return burst_bytes < rate_burst_bytes_min ? rate_burst_bytes_min : burst_bytes;
    }
    friend bool operator==(const rate_config&, const rate_config&) noexcept = default;
};

// Decodes the file as Go's encoding/json fills derper's struct: keys
// PerClientRateLimitBytesPerSec and PerClientRateBurstBytes (Go's case folding), each a
// non-negative integer that fits 64 bits or null (field left at 0), unknown keys ignored, top-level
// null = {}. Anything else is an error naming what is wrong.
result<rate_config, std::string> parse_rate_config(std::string_view text);

// The cost of a frame with `payload_bytes` of payload (derper waits for min(length, 65568)).
inline std::uint64_t rate_frame_cost(std::uint64_t payload_bytes) noexcept {
    return payload_bytes < rate_frame_cost_max ? payload_bytes : rate_frame_cost_max;
}

// ServerInfo's JSON with the bucket advertised (-advertise-rate-limit; spec 1.7):
// {"version":2,"TokenBucketBytesPerSecond":R,"TokenBucketBytesBurst":B}, B the burst in force
// (never 0: a Go client would then drop every send). Go's client decodes both into an int, which
// is 32 bits on some platforms: values are capped at 2^31-1 (2 GB/s is no limit per client).
std::string server_info_json_with_rate(const rate_config& config);
inline constexpr std::uint64_t advertised_rate_max = 0x7fffffff;

// A token bucket in bytes (golang.org/x/time/rate semantics for WaitN without a context: it
// starts full, fills at bytes_per_second up to the burst). take() either admits a frame now,
// taking its tokens, or says when enough tokens will be there; it never goes negative, so a
// caller that waits and asks again is admitted at exactly the time Go's WaitN would return.
class byte_bucket {
public:
    byte_bucket() = default;
    byte_bucket(const rate_config& config, std::uint64_t now_ns) noexcept;

    bool limited() const noexcept { return _rate != 0; }
    // True: cost tokens taken. False: not enough; *ready_ns is the earliest time they are.
    bool take(std::uint64_t cost, std::uint64_t now_ns, std::uint64_t& ready_ns) noexcept;
    double tokens() const noexcept { return _tokens; }

private:
    void refill(std::uint64_t now_ns) noexcept;
    std::uint64_t _rate = 0;   // bytes per second; 0 = unlimited
    double _burst = 0;
    double _tokens = 0;
    std::uint64_t _refill_ns = 0;
};

}  // namespace derp
