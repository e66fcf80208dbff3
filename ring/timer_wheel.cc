// Timing wheel bookkeeping: intrusive doubly linked buckets and the non-empty bitmap.
#include "ring/timer_wheel.hh"

#include <bit>

namespace derp::ring {

void timer_wheel::mark(std::uint32_t bucket, bool non_empty) noexcept {
    const std::uint64_t bit = std::uint64_t{1} << (bucket % 64);
    if (non_empty)
        _non_empty[bucket / 64] |= bit;
    else
        _non_empty[bucket / 64] &= ~bit;
}

void timer_wheel::link(timer_node& node, std::uint32_t bucket) noexcept {
    node.next = _buckets[bucket];
    if (node.next != nullptr) node.next->prev_next = &node.next;
    node.prev_next = &_buckets[bucket];
    _buckets[bucket] = &node;
    mark(bucket, true);
}

void timer_wheel::arm(timer_node& node, std::uint64_t expiry_ns) noexcept {
    if (node.armed()) cancel(node);
    node.expiry_ns = expiry_ns;
    std::uint64_t tick = expiry_ns >> tick_shift;
    // A deadline already in the past goes into the current bucket: the next expire() fires it.
    if (tick < _current_tick) tick = _current_tick;
    link(node, static_cast<std::uint32_t>(tick % bucket_count));
    ++_armed;
}

void timer_wheel::cancel(timer_node& node) noexcept {
    if (!node.armed()) return;
    *node.prev_next = node.next;
    if (node.next != nullptr) node.next->prev_next = node.prev_next;
    // If the node was its bucket's head, prev_next points into _buckets; the bucket may be empty.
    if (node.prev_next >= &_buckets[0] && node.prev_next < &_buckets[0] + bucket_count) {
        const auto bucket = static_cast<std::uint32_t>(node.prev_next - &_buckets[0]);
        if (_buckets[bucket] == nullptr) mark(bucket, false);
    }
    node.next = nullptr;
    node.prev_next = nullptr;
    DERP_ASSERT(_armed > 0);
    --_armed;
}

std::optional<std::uint64_t> timer_wheel::next_wake_ns() const noexcept {
    if (_armed == 0) return std::nullopt;
    // Search the bitmap from the current bucket forward, a word at a time, wrapping once.
    const auto start = static_cast<std::uint32_t>(_current_tick % bucket_count);
    std::uint32_t step = 0;
    while (step <= bucket_count) {
        const std::uint32_t bucket = (start + step) % bucket_count;
        const std::uint64_t bits = _non_empty[bucket / 64] >> (bucket % 64);
        if (bits != 0) {
            const auto offset = static_cast<std::uint32_t>(std::countr_zero(bits));
            const std::uint64_t tick = _current_tick + step + offset;
            // The end of that tick: every node in the bucket that belongs to this revolution
            // is due by then, so waking there never spins and fires at most a tick late.
            return (tick + 1) << tick_shift;
        }
        step += 64 - bucket % 64;
    }
    // Unreachable while _armed > 0: every armed node sits in a marked bucket.
    DERP_ASSERT(false);
    return std::nullopt;
}

}  // namespace derp::ring
