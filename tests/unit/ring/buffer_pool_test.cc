// Send buffer pool: the state machine, exhaustion as a value, and illegal transitions abort.
#include <doctest/doctest.h>

#include <set>

#include "ring/buffer_pool.hh"

using derp::ring::buffer_pool;
using state = buffer_pool::state;

TEST_CASE("buffer pool: free -> app -> sending -> app -> free") {
    buffer_pool pool(4, 4096);
    CHECK(pool.in_use() == 0);
    auto b = pool.acquire();
    REQUIRE(b.has_value());
    CHECK(pool.state_of(*b) == state::app);
    CHECK(pool.data(*b).size() == 4096);
    pool.data(*b)[4095] = 0x5a;  // writable to the last byte
    pool.start_sending(*b);
    CHECK(pool.state_of(*b) == state::sending);
    pool.finish_sending(*b);
    CHECK(pool.state_of(*b) == state::app);
    pool.release(*b);
    CHECK(pool.state_of(*b) == state::free);
    CHECK(pool.in_use() == 0);
}

TEST_CASE("buffer pool: lend and come home; exhaustion is a value") {
    buffer_pool pool(3, 1024);
    std::set<std::uint32_t> taken;
    for (int i = 0; i < 3; ++i) {
        auto b = pool.acquire();
        REQUIRE(b.has_value());
        taken.insert(*b);
    }
    CHECK(taken.size() == 3);
    CHECK_FALSE(pool.acquire().has_value());
    const std::uint32_t lent = *taken.begin();
    pool.lend(lent);
    CHECK(pool.in_state(state::lent) == 1);
    CHECK(pool.index_of(pool.data(lent).data() + 100) == lent);
    CHECK_FALSE(pool.index_of(&taken).has_value());
    pool.release(lent);
    CHECK(pool.acquire() == lent);  // LIFO: the warmest buffer comes back first
}

TEST_CASE("buffer pool: region covers every buffer, page aligned") {
    buffer_pool pool(8, 16384);
    CHECK(pool.region_bytes() == 8 * 16384);
    CHECK(reinterpret_cast<std::uintptr_t>(pool.region()) % 4096 == 0);
}
