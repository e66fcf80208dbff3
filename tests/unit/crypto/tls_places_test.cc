// crypto/tls_places: handshake places per shard and per source, waiting in turn.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "crypto/tls_places.hh"

namespace {

using derp::ring::conn_id;
using derp::tls::handshake_places;
using derp::tls::handshake_source_of;

conn_id id(std::uint32_t slot) { return conn_id{slot, 1}; }
const auto all_waiting = [](conn_id) { return true; };

sockaddr_storage v4(const char* text) {
    sockaddr_storage ss{};
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    REQUIRE(inet_pton(AF_INET, text, &a.sin_addr) == 1);
    return ss;
}
sockaddr_storage v6(const char* text) {
    sockaddr_storage ss{};
    auto& a = reinterpret_cast<sockaddr_in6&>(ss);
    a.sin6_family = AF_INET6;
    REQUIRE(inet_pton(AF_INET6, text, &a.sin6_addr) == 1);
    return ss;
}

}  // namespace

TEST_CASE("sources: an IPv4 address, the same when IPv4-mapped, an IPv6 /64") {
    CHECK(handshake_source_of(v4("192.0.2.1")) == handshake_source_of(v6("::ffff:192.0.2.1")));
    CHECK(handshake_source_of(v4("192.0.2.1")) != handshake_source_of(v4("192.0.2.2")));
    CHECK(handshake_source_of(v6("2001:db8:1:2::1")) == handshake_source_of(v6("2001:db8:1:2:ffff::9")));
    CHECK(handshake_source_of(v6("2001:db8:1:2::1")) != handshake_source_of(v6("2001:db8:1:3::1")));
    sockaddr_storage unix_peer{};
    unix_peer.ss_family = AF_UNIX;
    CHECK(handshake_source_of(unix_peer) == 0);
}

TEST_CASE("the shard's places: the rest wait in arrival order and start as places free") {
    handshake_places p(3, 0);
    CHECK(p.arrive(id(1), 7));
    CHECK(p.arrive(id(2), 8));
    CHECK(p.arrive(id(3), 9));
    CHECK_FALSE(p.arrive(id(4), 7));
    CHECK_FALSE(p.arrive(id(5), 7));
    CHECK(p.in_flight() == 3);
    CHECK_FALSE(p.next(all_waiting));  // no place is free
    p.leave(8);
    const auto a = p.next(all_waiting);
    REQUIRE(a);
    CHECK(a->slot == 4);
    CHECK_FALSE(p.next(all_waiting));
    p.leave(7);
    const auto b = p.next(all_waiting);
    REQUIRE(b);
    CHECK(b->slot == 5);
    CHECK(p.in_flight() == 3);
}

TEST_CASE("one source holds at most its share; the others get the places") {
    handshake_places p(8, 2);
    const std::uint64_t attacker = 1, real = 2, other = 3;
    CHECK(p.arrive(id(1), attacker));
    CHECK(p.arrive(id(2), attacker));
    for (std::uint32_t slot = 3; slot < 10; ++slot) CHECK_FALSE(p.arrive(id(slot), attacker));  // its share is taken
    CHECK(p.in_flight() == 2);
    CHECK(p.arrive(id(20), real));  // places are free for everyone else
    CHECK(p.arrive(id(21), other));
    CHECK(p.in_flight() == 4);
    CHECK_FALSE(p.next(all_waiting));  // the attacker's queue waits for its own places
    p.leave(attacker);
    const auto n = p.next(all_waiting);
    REQUIRE(n);
    CHECK(n->slot == 3);
    CHECK(p.in_flight() == 4);
}

TEST_CASE("sources take turns for the places that free; connections gone while waiting are skipped") {
    handshake_places p(2, 0);
    CHECK(p.arrive(id(1), 1));
    CHECK(p.arrive(id(2), 1));
    // Source 1 queues three, then source 2 one: a freed place goes to 1, the next to 2.
    CHECK_FALSE(p.arrive(id(3), 1));
    CHECK_FALSE(p.arrive(id(4), 1));
    CHECK_FALSE(p.arrive(id(5), 1));
    CHECK_FALSE(p.arrive(id(6), 2));
    p.leave(1);
    auto n = p.next(all_waiting);
    REQUIRE(n);
    CHECK(n->slot == 3);
    p.leave(1);
    n = p.next(all_waiting);
    REQUIRE(n);
    CHECK(n->slot == 6);  // source 2's turn, not source 1's second
    // Slot 4 closed while it waited: skipped, slot 5 starts.
    p.leave(1);
    n = p.next([](conn_id c) { return c.slot != 4; });
    REQUIRE(n);
    CHECK(n->slot == 5);
    CHECK(p.in_flight() == 2);
    CHECK_FALSE(p.next(all_waiting));
}

TEST_CASE("many arrivals and departures: the bounds hold, every arrival starts once") {
    handshake_places p(16, 4);
    std::map<std::uint32_t, std::uint64_t> source_of;  // by slot
    std::vector<std::uint32_t> running;
    std::set<std::uint32_t> started;
    std::uint32_t slot = 0;
    auto per_source_ok = [&] {
        std::map<std::uint64_t, int> n;
        for (auto r : running) ++n[source_of[r]];
        for (const auto& [source, count] : n)
            if (count > 4) return false;
        return true;
    };
    for (int round = 0; round < 300; ++round) {
        for (int k = 0; k < 3; ++k) {
            const std::uint64_t source = static_cast<std::uint64_t>((round * 7 + k) % 6);
            source_of[++slot] = source;
            if (p.arrive(id(slot), source)) {
                running.push_back(slot);
                CHECK(started.insert(slot).second);
            }
        }
        for (int k = 0; k < 2 && !running.empty(); ++k) {
            p.leave(source_of[running.front()]);
            running.erase(running.begin());
        }
        while (const auto n = p.next(all_waiting)) {
            running.push_back(n->slot);
            CHECK(started.insert(n->slot).second);
        }
        CHECK(p.in_flight() == running.size());
        CHECK(running.size() <= 16);
        CHECK(per_source_ok());
    }
    // Everyone ends: every arrival gets its turn.
    while (!running.empty()) {
        p.leave(source_of[running.front()]);
        running.erase(running.begin());
        while (const auto n = p.next(all_waiting)) {
            running.push_back(n->slot);
            CHECK(started.insert(n->slot).second);
        }
    }
    CHECK(started.size() == slot);
    CHECK(p.in_flight() == 0);
    CHECK(p.waiting() == 0);
}
