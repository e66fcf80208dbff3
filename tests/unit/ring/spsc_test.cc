// The SPSC ring: capacity, batching visibility, and a two-thread stress test in which every
// message must arrive exactly once and in order.
#include <doctest/doctest.h>

#include <thread>

#include "ring/spsc.hh"

using derp::ring::spsc_ring;

namespace {
struct item {
    std::uint64_t sequence;
    std::uint64_t check;  // derived from sequence, so a torn or stale slot is detected
};
}  // namespace

TEST_CASE("spsc: pushes are invisible until published, and a full ring refuses") {
    spsc_ring<item> ring(4);
    for (std::uint64_t i = 0; i < 4; ++i) CHECK(ring.push({i, ~i}));
    CHECK_FALSE(ring.push({4, ~4ull}));  // full, counting unpublished pushes
    CHECK(ring.pop() == nullptr);        // nothing published yet
    CHECK(ring.unpublished() == 4);
    CHECK(ring.publish());
    CHECK_FALSE(ring.publish());  // nothing new
    for (std::uint64_t i = 0; i < 4; ++i) {
        const item* m = ring.pop();
        REQUIRE(m != nullptr);
        CHECK(m->sequence == i);
    }
    CHECK(ring.pop() == nullptr);
    CHECK_FALSE(ring.push({4, ~4ull}));  // slots are only reusable after release()
    ring.release();
    CHECK(ring.push({4, ~4ull}));
    CHECK(ring.occupancy() == 0);  // pushed but unpublished
    ring.publish();
    CHECK(ring.occupancy() == 1);
}

TEST_CASE("spsc: two threads, every message exactly once and in order") {
    constexpr std::uint64_t total = 2'000'000;
    constexpr std::size_t batch = 37;  // odd, so batches straddle the ring's wrap point
    spsc_ring<item> ring(1024);
    std::uint64_t full_events = 0;
    std::thread producer([&] {
        std::uint64_t next = 0;
        while (next < total) {
            std::size_t pushed = 0;
            while (pushed < batch && next < total && ring.push({next, next * 0x9E3779B97F4A7C15ull})) {
                ++next;
                ++pushed;
            }
            if (pushed < batch && next < total) ++full_events;
            ring.publish();
        }
    });
    std::uint64_t expected = 0;
    std::uint64_t mismatches = 0;
    while (expected < total) {
        std::size_t taken = 0;
        while (const item* m = ring.pop()) {
            if (m->sequence != expected || m->check != expected * 0x9E3779B97F4A7C15ull) ++mismatches;
            ++expected;
            if (++taken == 64) break;
        }
        ring.release();
    }
    producer.join();
    CHECK(mismatches == 0);
    CHECK(expected == total);
    CHECK(ring.pop() == nullptr);  // nothing extra arrived
    MESSAGE("producer found the ring full " << full_events << " times");
}
