// The capacity sizing arithmetic (bench/sizing.hh) at its edges: no headroom, a target that
// exactly fills a shard, a target above one node, memory-bound against CPU-bound, the knee
// between and beyond the measured sizes, and the --target and --node texts.
#include <doctest/doctest.h>

#include <string>

#include "bench/sizing.hh"

using namespace derp::bench;

namespace {

// One shard relays 100,000 pkt/s at 1000 B (0.8 Gbit/s) and 200,000 at 100 B; idle clients
// cost 1,000 B each.
measured_capacity simple_capacity() {
    measured_capacity m;
    m.run = "test run";
    m.knees = {{1000, 100'000, true}, {100, 200'000, true}};
    m.bytes_per_connection = 1000;
    return m;
}

sizing_target gbps_target(std::int64_t clients, double gbps, double bytes, double headroom) {
    sizing_target t;
    t.clients = clients;
    t.total_gbps = gbps;
    t.packet_bytes = bytes;
    t.packet_label = std::to_string(static_cast<int>(bytes));
    t.headroom = headroom;
    return t;
}

}  // namespace

TEST_CASE("sizing: zero headroom and a target that exactly fills one shard need one shard, not two") {
    // 0.8 Gbit/s of 1000 B packets = 100,000 pkt/s = one shard's knee, used in full.
    auto plan = plan_capacity(gbps_target(10, 0.8, 1000, 0), {1, 1}, simple_capacity());
    REQUIRE(plan);
    CHECK(plan->packets_pps == doctest::Approx(100'000));
    CHECK(plan->usable_pps_per_shard == doctest::Approx(100'000));
    CHECK(plan->shards_for_traffic == 1);
    CHECK(plan->nodes_for_cpu == 1);
    CHECK(plan->nodes == 1);
    // A little more needs a second shard (and, one shard per node, a second node).
    auto more = plan_capacity(gbps_target(10, 0.8008, 1000, 0), {1, 1}, simple_capacity());
    REQUIRE(more);
    CHECK(more->shards_for_traffic == 2);
    CHECK(more->nodes == 2);
}

TEST_CASE("sizing: headroom shrinks what a shard and a node may carry") {
    // 50 % headroom: 50,000 pkt/s usable per shard; 0.8 Gbit/s needs 2 shards.
    auto plan = plan_capacity(gbps_target(10, 0.8, 1000, 0.5), {4, 1}, simple_capacity());
    REQUIRE(plan);
    CHECK(plan->usable_pps_per_shard == doctest::Approx(50'000));
    CHECK(plan->shards_for_traffic == 2);
    CHECK(plan->usable_memory_per_node == doctest::Approx(0.5 * 1024.0 * 1024.0 * 1024.0));
    CHECK_FALSE(plan_capacity(gbps_target(10, 0.8, 1000, 1.0), {4, 1}, simple_capacity()));
    CHECK_FALSE(plan_capacity(gbps_target(10, 0.8, 1000, -0.1), {4, 1}, simple_capacity()));
}

TEST_CASE("sizing: a target above one node needs several, CPU-bound") {
    // 40 Gbit/s of 1000 B = 5,000,000 pkt/s; 80,000 usable per shard (20 % headroom) = 62.5 ->
    // 63 shards; 16 shards per node = 3.9 -> 4 nodes. Memory: 50,000 x 1000 B = 48 MiB, 1 node.
    auto plan = plan_capacity(gbps_target(50'000, 40, 1000, 0.2), {16, 64}, simple_capacity());
    REQUIRE(plan);
    CHECK(plan->shards_for_traffic == 63);
    CHECK(plan->nodes_for_cpu == 4);
    CHECK(plan->nodes_for_memory == 1);
    CHECK(plan->nodes == 4);
    CHECK(plan->bound == "CPU");
    // The arithmetic says so, with its numbers.
    bool saw_nodes = false;
    for (const auto& line : plan->arithmetic) saw_nodes = saw_nodes || line.find("= 4: CPU-bound") != std::string::npos;
    CHECK(saw_nodes);
    CHECK(plan_text(*plan).rfind("4 nodes (16 shards each, 64 GiB)", 0) == 0);
    CHECK(plan_json(*plan).find("\"nodes\":4") != std::string::npos);
}

TEST_CASE("sizing: many idle clients and little traffic are memory-bound") {
    // 10,000,000 clients x 1000 B = 9.3 GiB; nodes of 4 GiB with 25 % headroom hold 3 GiB: 4
    // nodes. Traffic 0.08 Gbit/s = 10,000 pkt/s, a fraction of one shard.
    measured_capacity m = simple_capacity();
    auto plan = plan_capacity(gbps_target(10'000'000, 0.08, 1000, 0.25), {16, 4}, m);
    REQUIRE(plan);
    CHECK(plan->nodes_for_memory == 4);
    CHECK(plan->nodes_for_cpu == 1);
    CHECK(plan->nodes == 4);
    CHECK(plan->bound == "memory");
    // The same clients with a lot of traffic: CPU needs more nodes than memory.
    auto busy = plan_capacity(gbps_target(10'000'000, 200, 1000, 0.25), {16, 4}, m);
    REQUIRE(busy);
    CHECK(busy->bound == "CPU");
    CHECK(busy->nodes == busy->nodes_for_cpu);
    CHECK(busy->nodes > busy->nodes_for_memory);
}

TEST_CASE("sizing: per-client rates, and no traffic at all still needs one node") {
    sizing_target t = gbps_target(1000, -1, 1000, 0);
    t.mbps_per_client = 0.8;  // 1000 x 0.8 Mbit/s = 0.8 Gbit/s
    auto plan = plan_capacity(t, {1, 1}, simple_capacity());
    REQUIRE(plan);
    CHECK(plan->total_bps == doctest::Approx(0.8e9));
    CHECK(plan->shards_for_traffic == 1);
    auto idle = plan_capacity(gbps_target(1, 0, 1000, 0), {1, 1}, simple_capacity());
    REQUIRE(idle);
    CHECK(idle->shards_for_traffic == 0);
    CHECK(idle->nodes == 1);
}

TEST_CASE("sizing: missing measurements are errors that say what to run") {
    measured_capacity no_knee = simple_capacity();
    no_knee.knees.clear();
    auto a = plan_capacity(gbps_target(10, 1, 1000, 0), {1, 1}, no_knee);
    REQUIRE_FALSE(a);
    CHECK(a.error().find("sweep") != std::string::npos);
    measured_capacity no_memory = simple_capacity();
    no_memory.bytes_per_connection = 0;
    auto b = plan_capacity(gbps_target(10, 1, 1000, 0), {1, 1}, no_memory);
    REQUIRE_FALSE(b);
    CHECK(b.error().find("connections") != std::string::npos);
    CHECK_FALSE(plan_capacity(gbps_target(0, 1, 1000, 0), {1, 1}, simple_capacity()));
    CHECK_FALSE(plan_capacity(gbps_target(10, 1, 1000, 0), {0, 1}, simple_capacity()));
}

TEST_CASE("sizing: the knee between, below and above the measured sizes") {
    const std::vector<knee_point> knees = {{100, 200'000, true}, {1000, 100'000, true}};
    std::string how;
    CHECK(knee_pps_at(knees, 1000, &how) == doctest::Approx(100'000));
    CHECK(how.find("measured") != std::string::npos);
    // Half way: time per packet (5 us + 10 us) / 2 = 7.5 us -> 133,333 pkt/s.
    CHECK(knee_pps_at(knees, 550, &how) == doctest::Approx(1e6 / 7.5));
    CHECK(how.find("interpolated") != std::string::npos);
    // Below the smallest: the smallest's rate; above the largest: its bytes per second.
    CHECK(knee_pps_at(knees, 64, &how) == doctest::Approx(200'000));
    CHECK(knee_pps_at(knees, 2000, &how) == doctest::Approx(50'000));
    CHECK(how.find("bytes/s") != std::string::npos);
    CHECK(knee_pps_at({}, 500) == 0);
}

TEST_CASE("sizing: --target and --node texts") {
    auto t = parse_sizing_target("clients=50000,gbps=20", 567);
    REQUIRE(t);
    CHECK(t->clients == 50'000);
    CHECK(t->total_gbps == 20);
    CHECK(t->packet_bytes == 567);
    CHECK(t->packet_label == "mix");
    CHECK(t->headroom == doctest::Approx(0.3));
    auto u = parse_sizing_target("headroom=0,size=1400,mbps-per-client=0.5,clients=10", 567);
    REQUIRE(u);
    CHECK(u->headroom == 0);
    CHECK(u->packet_bytes == 1400);
    CHECK(u->mbps_per_client == doctest::Approx(0.5));
    for (const char* bad : {"", "clients=10", "gbps=1", "clients=10,gbps=1,mbps-per-client=1", "clients=1.5,gbps=1",
                            "clients=10,gbps=x", "clients=10,gbps=1,headroom=1", "clients=10,gbps=1,size=0",
                            "clients=10,gbps=1,color=red", "clients", "clients=10,gbps=-1"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_sizing_target(bad, 567));
    }
    auto n = parse_node_shape("shards=16,memory-gib=64");
    REQUIRE(n);
    CHECK(n->shards == 16);
    CHECK(n->memory_gib == 64);
    for (const char* bad : {"", "shards=16", "memory-gib=1", "shards=0,memory-gib=1", "shards=2,memory-gib=0", "cores=2,memory-gib=1"}) {
        CAPTURE(bad);
        CHECK_FALSE(parse_node_shape(bad));
    }
    CHECK(grouped(4409171.4) == "4,409,171");
    CHECK(grouped(999) == "999");
    CHECK(grouped(1000) == "1,000");
}
