// derper's registry rules: single connections, duplicates (last writer active), leaving in
// every order, and what watchers are told.
#include <doctest/doctest.h>

#include "core/registry.hh"

using namespace derp;
using presence = registry_effects::presence_event;

namespace {
node_key key_of(std::uint8_t b) {
    std::array<std::uint8_t, 32> bytes{};
    bytes.fill(b);
    return node_key(key_span(bytes));
}
constexpr conn_ref c1{0, 1, 1}, c2{1, 7, 3}, c3{0, 9, 2};
}  // namespace

TEST_CASE("registry: one connection comes and goes") {
    key_registry reg;
    const auto k = key_of(1);
    auto fx = reg.add(k, c1, {});
    CHECK(fx.route == route_state::active);
    CHECK(fx.active == c1);
    CHECK(fx.presence == presence::present);
    CHECK(fx.dup_flags.empty());
    CHECK(reg.active_of(k) == c1);
    fx = reg.remove(k, c1);
    CHECK(fx.route == route_state::gone);
    CHECK(fx.presence == presence::gone);
    CHECK(reg.key_count() == 0);
    CHECK(reg.conn_count() == 0);
    // Removing again, or an unknown connection, does nothing.
    fx = reg.remove(k, c1);
    CHECK_FALSE(fx.route.has_value());
}

TEST_CASE("registry: a duplicate becomes active; both are flagged; watchers see both arrive") {
    key_registry reg;
    const auto k = key_of(2);
    reg.add(k, c1, {});
    auto fx = reg.add(k, c2, {});
    CHECK(fx.route == route_state::active);
    CHECK(fx.active == c2);
    CHECK(fx.presence == presence::present);  // PeerPresent for every connection
    REQUIRE(fx.dup_flags.size() == 2);
    CHECK(fx.dup_flags[0] == std::pair{c1, true});
    CHECK(fx.dup_flags[1] == std::pair{c2, true});
    CHECK(reg.dup_key_count() == 1);
    CHECK(reg.dup_conn_count() == 2);
    // The old one speaks: it becomes active (last writer wins).
    fx = reg.activity(k, c1);
    CHECK(fx.route == route_state::active);
    CHECK(fx.active == c1);
    // Speaking again while active changes nothing.
    fx = reg.activity(k, c1);
    CHECK_FALSE(fx.route.has_value());
    // The active one leaves: the set dissolves, the survivor is active and no longer a dup,
    // and watchers hear nothing (the key is still here).
    fx = reg.remove(k, c1);
    CHECK(fx.route == route_state::active);
    CHECK(fx.active == c2);
    CHECK(fx.presence == presence::none);
    REQUIRE(fx.dup_flags.size() == 1);
    CHECK(fx.dup_flags[0] == std::pair{c2, false});
    fx = reg.remove(k, c2);
    CHECK(fx.route == route_state::gone);
    CHECK(fx.presence == presence::gone);
}

TEST_CASE("registry: three connections; the last writer leaves, history decides") {
    key_registry reg;
    const auto k = key_of(3);
    reg.add(k, c1, {});
    reg.add(k, c2, {});
    reg.add(k, c3, {});  // history c1 c2 c3, last c3 active
    CHECK(reg.active_of(k) == c3);
    reg.activity(k, c2);  // history c1 c2 c3 c2, active c2
    CHECK(reg.active_of(k) == c2);
    auto fx = reg.remove(k, c2);  // history c1 c3, last -> c3
    CHECK(fx.route == route_state::active);
    CHECK(fx.active == c3);
    CHECK(fx.dup_flags.empty());
    // A non-active duplicate leaving changes no route.
    reg.add(k, c2, {});  // active c2 again
    fx = reg.remove(k, c1);
    CHECK_FALSE(fx.route.has_value());
    CHECK(reg.active_of(k) == c2);
}

TEST_CASE("registry: for_each_active lists each key once with its active connection") {
    key_registry reg;
    presence_info a{}, b{};
    a.port = 1111;
    b.port = 2222;
    reg.add(key_of(4), c1, a);
    reg.add(key_of(5), c2, a);
    reg.add(key_of(5), c3, b);
    int seen = 0;
    reg.for_each_active([&](const node_key& k, const presence_info& p) {
        ++seen;
        if (k == key_of(5)) CHECK(p.port == 2222);
        if (k == key_of(4)) CHECK(p.port == 1111);
    });
    CHECK(seen == 2);
    CHECK(reg.conn_count() == 3);
}
