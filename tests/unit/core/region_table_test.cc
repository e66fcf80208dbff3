// Unit tests of core/region_table: derper's mesh forwarding rules (spec 2.9), one case per rule.
#include <doctest/doctest.h>

#include "core/region_table.hh"

namespace {

using namespace derp;

node_key key_of(std::uint8_t b) {
    std::array<std::uint8_t, key_bytes> raw{};
    raw[0] = b;
    return node_key(key_span(raw));
}

}  // namespace

TEST_CASE("region_table: the first announcer forwards; a second makes a multi-forwarder and is a fall-back") {
    region_table t;
    const node_key k = key_of(1);
    auto fx = t.peer_present(k, 7);
    CHECK(fx.route_changed);
    CHECK(fx.forwarder == 7u);
    fx = t.peer_present(k, 9);
    CHECK(!fx.route_changed);  // the first stays preferred
    CHECK(t.forwarder_of(k) == 7u);
    CHECK(t.counters().multiforwarder_created == 1);
    CHECK(t.peer_present(k, 9).route_changed == false);  // announcing again changes nothing
    CHECK(t.counters().multiforwarder_created == 1);
    // The preferred one leaves: the next in announcement order takes over; the entry collapses.
    fx = t.peer_gone(k, 7);
    CHECK(fx.route_changed);
    CHECK(fx.forwarder == 9u);
    CHECK(!fx.gone_from_region);
    CHECK(t.counters().multiforwarder_deleted == 1);
    // The last one leaves: the key is gone from the region.
    fx = t.peer_gone(k, 9);
    CHECK(fx.gone_from_region);
    CHECK(!t.forwarder_of(k));
    CHECK(t.key_count() == 0);
}

TEST_CASE("region_table: a withdrawal by a peer that is not the single forwarder is counted, nothing else") {
    region_table t;
    const node_key k = key_of(2);
    t.peer_present(k, 1);
    const auto fx = t.peer_gone(k, 2);
    CHECK(!fx.route_changed);
    CHECK(t.forwarder_of(k) == 1u);
    CHECK(t.counters().delete_other_value == 1);
    CHECK(!t.peer_gone(key_of(99), 1).route_changed);  // unknown key: nothing
}

TEST_CASE("region_table: local clients come first; a forwarded key stays when its local client leaves") {
    region_table t;
    const node_key k = key_of(3);
    t.peer_present(k, 4);
    auto fx = t.set_local(k, true);
    CHECK(fx.route_changed);
    CHECK(!fx.forwarder);  // local: not forwarded
    CHECK(t.remote_key_count() == 0);
    // The forwarder leaves while the key is local: nothing changes for routing.
    fx = t.peer_gone(k, 4);
    CHECK(!fx.route_changed);
    CHECK(!fx.gone_from_region);
    CHECK(t.is_local(k));
    t.peer_present(k, 5);
    fx = t.set_local(k, false);  // the local client leaves: the forwarder takes over
    CHECK(fx.route_changed);
    CHECK(fx.forwarder == 5u);
    CHECK(!fx.gone_from_region);
    CHECK(t.remote_key_count() == 1);
    // A local-only key that leaves is gone from the region.
    const node_key only = key_of(4);
    t.set_local(only, true);
    CHECK(t.set_local(only, false).gone_from_region);
}

TEST_CASE("region_table: a broken mesh connection withdraws every key its peer announced") {
    region_table t;
    for (std::uint8_t b = 10; b < 20; ++b) t.peer_present(key_of(b), 1);
    t.peer_present(key_of(10), 2);  // also announced by peer 2: stays, through 2
    t.set_local(key_of(11), true);  // also local: stays, local
    const auto changes = t.peer_down(1);
    CHECK(changes.size() == 10);
    std::size_t gone = 0;
    for (const auto& [key, fx] : changes) {
        if (fx.gone_from_region) ++gone;
        if (key == key_of(10)) CHECK(fx.forwarder == 2u);
    }
    CHECK(gone == 8);
    CHECK(t.key_count() == 2);
    CHECK(t.peer_down(1).empty());
}
