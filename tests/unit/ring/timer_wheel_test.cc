// Timer wheel: never early, at most a tick late, cancel and re-arm, long timers across
// revolutions, and the next-wake hint.
#include <doctest/doctest.h>

#include <vector>

#include "ring/timer_wheel.hh"

using derp::ring::timer_node;
using derp::ring::timer_wheel;

namespace {
constexpr std::uint64_t ms = 1'000'000;
constexpr std::uint64_t start_ns = 1'000'000'000'000;  // an arbitrary monotonic time

std::vector<std::uint32_t> advance(timer_wheel& wheel, std::uint64_t now_ns) {
    std::vector<std::uint32_t> fired;
    wheel.expire(now_ns, [&](timer_node& n) { fired.push_back(n.owner); });
    return fired;
}
}  // namespace

TEST_CASE("timer wheel: fires at the deadline, never before") {
    timer_wheel wheel(start_ns);
    timer_node a, b;
    a.owner = 1;
    b.owner = 2;
    wheel.arm(a, start_ns + 10 * ms);
    wheel.arm(b, start_ns + 10'000 * ms);
    CHECK(wheel.armed_count() == 2);
    CHECK(advance(wheel, start_ns + 9 * ms).empty());
    CHECK(advance(wheel, start_ns + 10 * ms) == std::vector<std::uint32_t>{1});
    CHECK_FALSE(a.armed());
    CHECK(advance(wheel, start_ns + 9'999 * ms).empty());
    CHECK(advance(wheel, start_ns + 10'000 * ms) == std::vector<std::uint32_t>{2});
    CHECK(wheel.armed_count() == 0);
    CHECK_FALSE(wheel.next_wake_ns().has_value());
}

TEST_CASE("timer wheel: cancel and re-arm") {
    timer_wheel wheel(start_ns);
    timer_node a;
    a.owner = 7;
    wheel.arm(a, start_ns + 5 * ms);
    wheel.cancel(a);
    wheel.cancel(a);  // idempotent
    CHECK(advance(wheel, start_ns + 50 * ms).empty());
    wheel.arm(a, start_ns + 100 * ms);
    wheel.arm(a, start_ns + 200 * ms);  // re-arm moves it
    CHECK(wheel.armed_count() == 1);
    CHECK(advance(wheel, start_ns + 150 * ms).empty());
    CHECK(advance(wheel, start_ns + 200 * ms) == std::vector<std::uint32_t>{7});
}

TEST_CASE("timer wheel: timers longer than a revolution, and a long sleep") {
    timer_wheel wheel(start_ns);
    const std::uint64_t revolution_ns = timer_wheel::tick_ns * timer_wheel::bucket_count;
    timer_node keepalive, deadline, past;
    keepalive.owner = 1;
    deadline.owner = 2;
    past.owner = 3;
    wheel.arm(keepalive, start_ns + 60'000 * ms);  // 60 s: several revolutions of 17 s
    wheel.arm(deadline, start_ns + 10'000 * ms);
    wheel.arm(past, start_ns - 5 * ms);             // already due
    CHECK(advance(wheel, start_ns) == std::vector<std::uint32_t>{3});
    // Step through time in irregular strides; each timer fires once, in its own stride.
    std::vector<std::uint32_t> fired_all;
    for (std::uint64_t t = start_ns; t <= start_ns + 61'000 * ms; t += 777 * ms) {
        auto fired = advance(wheel, t);
        for (auto owner : fired) {
            fired_all.push_back(owner);
            const std::uint64_t due = owner == 1 ? start_ns + 60'000 * ms : start_ns + 10'000 * ms;
            CHECK(t >= due);
            CHECK(t < due + 777 * ms);
        }
    }
    CHECK(fired_all == std::vector<std::uint32_t>{2, 1});
    // A loop asleep for longer than a revolution still fires everything due.
    timer_node a, b;
    a.owner = 10;
    b.owner = 11;
    const std::uint64_t now = start_ns + 61'000 * ms;
    wheel.arm(a, now + 5 * ms);
    wheel.arm(b, now + revolution_ns + 5 * ms);
    auto fired = advance(wheel, now + 3 * revolution_ns);
    CHECK(fired.size() == 2);
}

TEST_CASE("timer wheel: next wake is the end of the first non-empty tick") {
    timer_wheel wheel(start_ns);
    timer_node a, b;
    wheel.arm(a, start_ns + 1'000 * ms);
    wheel.arm(b, start_ns + 30'000 * ms);  // next revolution's bucket
    auto wake = wheel.next_wake_ns();
    REQUIRE(wake.has_value());
    CHECK(*wake >= start_ns + 1'000 * ms);
    CHECK(*wake <= start_ns + 1'000 * ms + timer_wheel::tick_ns);
    advance(wheel, *wake);
    CHECK_FALSE(a.armed());
    wake = wheel.next_wake_ns();
    REQUIRE(wake.has_value());
    CHECK(*wake <= start_ns + 30'000 * ms + timer_wheel::tick_ns);
    // Waking early (for the shared bucket of the previous revolution) fires nothing.
    for (int i = 0; i < 10 && b.armed(); ++i) advance(wheel, *(wake = wheel.next_wake_ns()));
    CHECK_FALSE(b.armed());
}

TEST_CASE("timer wheel: a fire callback may cancel and arm other timers") {
    timer_wheel wheel(start_ns);
    timer_node a, b, c;
    a.owner = 1;
    b.owner = 2;
    c.owner = 3;
    wheel.arm(a, start_ns + 10 * ms);
    wheel.arm(b, start_ns + 10 * ms);
    wheel.arm(c, start_ns + 10 * ms);
    std::vector<std::uint32_t> fired;
    wheel.expire(start_ns + 20 * ms, [&](timer_node& n) {
        fired.push_back(n.owner);
        if (n.owner != 2 && b.armed()) wheel.cancel(b);  // cancel a sibling mid-scan
        if (n.owner == 1 || n.owner == 3) wheel.arm(n, start_ns + 100 * ms);
    });
    CHECK(fired.size() == 2);
    CHECK_FALSE(b.armed());
    CHECK(a.armed());
    CHECK(c.armed());
}
