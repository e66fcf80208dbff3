// What every derpprobe probe takes and returns (spec 8.1): a deadline and a stop flag in, a
// verdict with a one-line explanation out. Probes block their worker thread; they must return
// by the deadline and soon after the stop flag is raised.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace derp::probe {

// Monotonic nanoseconds (steady_clock): deadlines and latencies.
inline std::int64_t monotonic_now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Wall-clock seconds since the epoch: certificate dates and the start_secs/end_secs metrics.
inline double wall_now_secs() noexcept {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct run_context {
    std::int64_t deadline_ns = 0;  // monotonic
    const std::atomic<bool>* stop = nullptr;

    std::int64_t remaining_ns() const noexcept { return deadline_ns - monotonic_now_ns(); }
    bool stopping() const noexcept { return stop != nullptr && stop->load(std::memory_order_relaxed); }
    // Past the deadline, or asked to stop: either way the probe gives up now.
    bool over() const noexcept { return remaining_ns() <= 0 || stopping(); }
    // A wait slice: what is left, but never more than 100 ms, so that a stop is noticed quickly.
    int poll_slice_ms() const noexcept {
        const std::int64_t left_ms = remaining_ns() / 1'000'000;
        return static_cast<int>(left_ms < 0 ? 0 : (left_ms > 100 ? 100 : left_ms));
    }
};

struct outcome {
    bool ok = false;
    std::string text;  // on success a detail (handshake, days left, delivery time); else the error
    std::optional<std::int64_t> cert_expiry_secs;  // tls probes that saw a leaf certificate
};

inline outcome failed(std::string text) { return outcome{false, std::move(text), std::nullopt}; }

}  // namespace derp::probe
