// Per-shard timers for handshake deadlines, keepalives and write timeouts: a hashed timing wheel
// with intrusive nodes, so arming, re-arming and cancelling are O(1) and allocation-free, and the
// shard can afford one or more live timers on every one of tens of thousands of connections.
// A bitmap of non-empty buckets finds the next deadline to sleep until without scanning.
// Resolution is one tick (about 4 ms): a timer never fires early, and at most a tick late
// (plus however long the loop was busy). Not thread-safe: one wheel per shard.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "core/assert.hh"

namespace derp::ring {

struct timer_node {
    std::uint64_t expiry_ns = 0;
    timer_node* next = nullptr;
    timer_node** prev_next = nullptr;  // nullptr when not armed
    std::uint32_t owner = 0;           // what the owner needs to find itself (e.g. slot)
    std::uint8_t id = 0;               // which of the owner's timers

    bool armed() const noexcept { return prev_next != nullptr; }
};

class timer_wheel {
public:
    static constexpr std::uint32_t tick_shift = 22;  // 2^22 ns = 4.19 ms per tick
    static constexpr std::uint64_t tick_ns = std::uint64_t{1} << tick_shift;
    static constexpr std::uint32_t bucket_count = 4096;  // one revolution = 17.2 s

    explicit timer_wheel(std::uint64_t now_ns) noexcept : _current_tick(now_ns >> tick_shift) {}
    timer_wheel(const timer_wheel&) = delete;
    timer_wheel& operator=(const timer_wheel&) = delete;

    // Arms (or re-arms) the node to fire at the first expire() call at or after expiry_ns.
    void arm(timer_node& node, std::uint64_t expiry_ns) noexcept;
    void cancel(timer_node& node) noexcept;

    // Fires every node due at now_ns, in bucket order, each disarmed before fire(node) runs
    // (so fire may re-arm it or arm/cancel others). Returns how many fired.
    template <typename Fire>
    std::size_t expire(std::uint64_t now_ns, Fire&& fire) noexcept;

    // The time worth waking for: the end of the next non-empty bucket's tick, or nothing when
    // no timer is armed. Nodes many revolutions ahead share a bucket with near ones; waking for
    // them costs one bucket scan.
    std::optional<std::uint64_t> next_wake_ns() const noexcept;

    std::size_t armed_count() const noexcept { return _armed; }

private:
    void link(timer_node& node, std::uint32_t bucket) noexcept;
    void mark(std::uint32_t bucket, bool non_empty) noexcept;

    std::array<timer_node*, bucket_count> _buckets{};
    std::array<std::uint64_t, bucket_count / 64> _non_empty{};
    std::uint64_t _current_tick;  // every bucket of ticks before this one has been processed
    std::size_t _armed = 0;
};

template <typename Fire>
std::size_t timer_wheel::expire(std::uint64_t now_ns, Fire&& fire) noexcept {
    const std::uint64_t now_tick = now_ns >> tick_shift;
    std::size_t fired = 0;
    // Visit every bucket from the current tick up to now, but at most one revolution: after
    // that every bucket has been seen once, and each visit fires all due nodes in it.
    std::uint64_t last_tick = now_tick;
    if (last_tick - _current_tick >= bucket_count) last_tick = _current_tick + bucket_count - 1;
    for (std::uint64_t tick = _current_tick; tick <= last_tick; ++tick) {
        const auto bucket = static_cast<std::uint32_t>(tick % bucket_count);
        timer_node* node = _buckets[bucket];
        while (node != nullptr) {
            timer_node* next = node->next;
            if (node->expiry_ns <= now_ns) {
                cancel(*node);
                ++fired;
                fire(*node);
                // fire() may have cancelled `next`; restart the bucket scan when it did.
                if (next != nullptr && !next->armed()) next = _buckets[bucket];
            }
            node = next;
        }
    }
    _current_tick = now_tick;
    return fired;
}

}  // namespace derp::ring
