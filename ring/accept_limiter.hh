// A process-wide limit on the rate of accepted connections (derper's -accept-connection-limit
// and -accept-connection-burst, spec 2.12), shared by every shard without a lock: a token
// bucket in its GCRA form, where one atomic "theoretical arrival time" stands for the bucket.
// A connection is admitted when now >= tat - burst * interval, and then tat moves on by one
// interval (from now if the bucket had filled up). Equivalent to a bucket of `burst` tokens
// refilled at `rate_per_s`, starting full, as Go's rate.Limiter; the shards draw from one
// bucket in the order their accepts complete, so the limit holds for the process however the
// kernel spreads connections over the shards.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

namespace derp::ring {

class accept_limiter {
public:
    // rate_per_s > 0 and finite; burst >= 1 (derper's default burst, MaxInt, is "unbounded").
    accept_limiter(double rate_per_s, std::int64_t burst) noexcept
        : _interval_ns(std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::llround(1e9 / rate_per_s)))) {
        // burst * interval, saturated: with a huge burst the bucket never runs dry in practice.
        const auto b = static_cast<std::uint64_t>(burst < 1 ? 1 : burst);
        _tolerance_ns = b > std::numeric_limits<std::uint64_t>::max() / _interval_ns
                            ? std::numeric_limits<std::uint64_t>::max() / 2
                            : b * _interval_ns;
    }

    // True when a connection accepted at now_ns (monotonic) may stay; false: close it.
    bool admit(std::uint64_t now_ns) noexcept {
        std::uint64_t tat = _tat_ns.load(std::memory_order_relaxed);
        for (;;) {
            const std::uint64_t base = tat > now_ns ? tat : now_ns;
            if (base - now_ns >= _tolerance_ns) return false;  // the bucket is empty
            if (_tat_ns.compare_exchange_weak(tat, base + _interval_ns, std::memory_order_relaxed)) return true;
        }
    }

    std::uint64_t interval_ns() const noexcept { return _interval_ns; }

private:
    std::uint64_t _interval_ns;
    std::uint64_t _tolerance_ns = 0;
    std::atomic<std::uint64_t> _tat_ns{0};
};

}  // namespace derp::ring
