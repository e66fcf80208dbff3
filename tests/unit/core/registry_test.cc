// derper's registry rules: single connections, duplicates (last writer active), leaving in
// every order, and what watchers are told.
#include <doctest/doctest.h>

#include <map>
#include <vector>

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

TEST_CASE("key_registry: duplicate counts kept as keys change match a recount, at any size") {
    // Counted on every registration (varz current_dup_client_*): they are kept incrementally,
    // so a reconnect storm costs O(1) per registration, not a walk over every key. A fixed-seed
    // sequence of adds and removes over a few keys (many duplicates) checks them against a model.
    key_registry reg;
    std::map<int, std::vector<conn_ref>> model;  // key index -> its connections
    std::uint64_t rng = 12345;
    auto next = [&rng]() {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<std::uint32_t>(rng >> 33);
    };
    auto key_for = [](int k) {
        std::array<std::uint8_t, key_bytes> raw{};
        raw[0] = static_cast<std::uint8_t>(k + 1);
        return node_key(key_span(raw));
    };
    std::uint32_t slot = 0;
    for (int step = 0; step < 5000; ++step) {
        const int k = static_cast<int>(next() % 7);
        auto& conns = model[k];
        if (conns.empty() || next() % 3 != 0) {
            const conn_ref c{0, ++slot, 1};
            reg.add(key_for(k), c, presence_info{});
            conns.push_back(c);
        } else {
            const std::size_t i = next() % conns.size();
            reg.remove(key_for(k), conns[i]);
            conns.erase(conns.begin() + static_cast<std::ptrdiff_t>(i));
        }
        std::size_t dup_keys = 0, dup_conns = 0, all = 0;
        for (const auto& [key, cs] : model) {
            all += cs.size();
            if (cs.size() > 1) {
                ++dup_keys;
                dup_conns += cs.size();
            }
        }
        REQUIRE(reg.dup_key_count() == dup_keys);
        REQUIRE(reg.dup_conn_count() == dup_conns);
        REQUIRE(reg.conn_count() == all);
    }
}
