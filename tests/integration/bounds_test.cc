// Each bound of issue 16 hit on purpose: the limit holds, the refusal is counted and logged,
// and the clients already connected relay as before. -accept-connection-limit (derper's flag;
// derpd resets the excess and keeps running where derper exits), the per-shard connection
// table (-conns-per-shard), and the bound on unfinished connections (-unfinished-per-shard),
// which keeps a slowloris from taking the slots a real client needs.
#include <doctest/doctest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/frame.hh"
#include "crypto/box.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/mesh_region.hh"

namespace {

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// From the admin listener (-admin-addr): a read through the DERP listener would itself be an
// unfinished connection and draw on the accept bucket.
double metric(const derpd_process& d, std::string_view name) {
    return varz_sum(http_get_body("127.0.0.1", d.admin_port(), "/debug/varz"), name, {}).value_or(-1);
}

derpd_options with_admin() {
    derpd_options o;
    o.admin_addr = "127.0.0.1:0";
    return o;
}

// Waits until the metric reaches want (it is counted as the shard gets to the connections).
double wait_metric(const derpd_process& d, std::string_view name, double want) {
    const auto deadline = clock_type::now() + 10s;
    double v = metric(d, name);
    while (v < want && clock_type::now() < deadline) {
        std::this_thread::sleep_for(20ms);
        v = metric(d, name);
    }
    return v;
}

}  // namespace

TEST_CASE("-accept-connection-limit: the excess is reset at once and counted; connected clients relay; derpd runs on") {
    derpd_options o = with_admin();
    o.shards = 2;
    o.extra_args = {"-accept-connection-limit", "1", "-accept-connection-burst", "4"};
    derpd_process d(o);
    auto a = derp_client::connect(d.port(), d.server_public());
    auto b = derp_client::connect(d.port(), d.server_public());
    const auto start = clock_type::now();
    constexpr int flood = 60;
    std::vector<tcp_conn> conns;
    std::size_t reset = 0;
    const std::string reset_text = std::strerror(ECONNRESET);
    for (int i = 0; i < flood; ++i) {
        try {
            conns.push_back(tcp_conn::connect_loopback(d.port()));
        } catch (const std::runtime_error& e) {
            // derpd's reset can reach the socket before connect() returns on loopback: the
            // connect itself then fails with ECONNRESET, the same reset seen earlier.
            REQUIRE_MESSAGE(std::string(e.what()).find(reset_text) != std::string::npos, e.what());
            ++reset;
        }
    }
    const double elapsed_s = std::chrono::duration<double>(clock_type::now() - start).count();
    // The bucket held 4 - 2 tokens and refills at 1/s: at most that many of the flood stay.
    const double may_stay = 2 + 1 + elapsed_s * 1.0;
    for (auto& c : conns) {
        const auto closed = c.wait_closed(2000ms);
        if (closed.status == io_status::reset || closed.status == io_status::eof) ++reset;
    }
    CHECK(static_cast<double>(reset) >= flood - may_stay);
    conns.clear();
    const double counted = metric(d, "derpd_shard_accepts_rate_limited_total");
    CHECK(counted >= flood - may_stay);
    CHECK(counted <= flood);
    CHECK(d.wait_for_log("over -accept-connection-limit; reset", 2000ms));
    CHECK(d.running());
    expect_relayed(a, b, "after the flood");
    expect_relayed(b, a, "both ways");
}

TEST_CASE("-conns-per-shard: past the table, connections are refused and counted; the connected relay") {
    derpd_options o = with_admin();
    o.shards = 1;
    o.extra_args = {"-conns-per-shard", "24", "-unfinished-per-shard", "24"};
    derpd_process d(o);
    std::vector<derp_client> clients;
    for (int i = 0; i < 22; ++i) clients.push_back(derp_client::connect(d.port(), d.server_public()));
    // Two slots left: 2 of these are held, the other 8 closed at once by derpd.
    std::vector<tcp_conn> extra;
    for (int i = 0; i < 10; ++i) extra.push_back(tcp_conn::connect_loopback(d.port()));
    std::size_t closed_at_once = 0;
    for (auto& c : extra) {
        const auto closed = c.wait_closed(500ms);
        if (closed.status == io_status::reset || closed.status == io_status::eof) ++closed_at_once;
    }
    CHECK(closed_at_once == 8);
    CHECK(d.wait_for_log("connection table full (24 slots)", 2000ms));
    expect_relayed(clients[0], clients[21], "table full");
    extra.clear();
    // The slots come back: a new client gets in, and the refusals were counted.
    auto late = derp_client::connect(d.port(), d.server_public());
    expect_relayed(late, clients[0], "room again");
    CHECK(metric(d, "derpd_shard_accepts_refused_full_total") == 8);
}

TEST_CASE("-unfinished-per-shard: a slowloris beyond the table closes its own oldest; a real client still gets in") {
    derpd_options o = with_admin();
    o.shards = 1;
    o.handshake_timeout = "10s";  // the request head then has 30 s: no deadline ends a slow one here
    o.extra_args = {"-conns-per-shard", "400", "-unfinished-per-shard", "100"};
    derpd_process d(o);
    auto a = derp_client::connect(d.port(), d.server_public());
    // 600 connections that never finish (half send one byte of a request head, half nothing),
    // more than the table's 400 slots: in batches of 100, each waited for, so that the closes
    // of one batch have freed their slots before the next (a close completes a loop turn later).
    std::vector<tcp_conn> slow;
    for (int batch = 0; batch < 6; ++batch) {
        for (int i = 0; i < 100; ++i) {
            slow.push_back(tcp_conn::connect_loopback(d.port()));
            if (i % 2 == 0) REQUIRE(slow.back().write_all(std::string_view("G")) == io_status::ok);
        }
        // Every connection past the 100th closes the oldest unfinished one.
        CHECK(wait_metric(d, "derpd_unfinished_evictions_total", 100.0 * batch) == 100.0 * batch);
    }
    CHECK(metric(d, "derpd_unfinished_connections") == 100);
    CHECK(metric(d, "derpd_shard_accepts_refused_full_total") == 0);
    CHECK(d.wait_for_log("100 unfinished connections (the most allowed); closed the oldest", 2000ms));
    // A real client completes its handshake among them, and relays with the one from before.
    const auto t0 = clock_type::now();
    auto b = derp_client::connect(d.port(), d.server_public());
    MESSAGE("handshake among 100 unfinished connections: "
            << std::chrono::duration<double, std::milli>(clock_type::now() - t0).count() << " ms");
    expect_relayed(a, b, "past the slowloris");
    expect_relayed(b, a, "both ways");
    // The oldest 500 were the ones closed.
    std::size_t closed = 0;
    for (std::size_t i = 0; i < 500; ++i) {
        const auto r = slow[i].wait_closed(1000ms);
        if (r.status == io_status::reset || r.status == io_status::eof) ++closed;
    }
    CHECK(closed == 500);
}

namespace {

double memory_metric(const derpd_process& d, std::string_view pool) {
    return varz_sum(http_get_body("127.0.0.1", d.admin_port(), "/debug/varz"), "derpd_memory_bytes", {{"pool", std::string(pool)}})
        .value_or(-1);
}

}  // namespace

TEST_CASE("-shard-input-max: partial frames that never finish are shed, stalest first; complete frames relay") {
    derpd_options o = with_admin();
    o.shards = 1;
    o.extra_args = {"-shard-input-max", "1048576"};
    derpd_process d(o);
    auto a = derp_client::connect(d.port(), d.server_public());
    auto b = derp_client::connect(d.port(), d.server_public());
    // 40 clients each send a SendPacket header announcing 65,000 bytes and 60,000 of them, then
    // stop: 2.4 MB of input that can never be consumed, against a 1 MiB ceiling.
    std::vector<derp_client> stalled;
    bytes head = {0x04, 0, 0, 0xfd, 0xe8};  // SendPacket, 65,000 bytes
    const bytes body(60'000, 0x5a);
    for (int i = 0; i < 40; ++i) {
        stalled.push_back(derp_client::connect(d.port(), d.server_public()));
        stalled.back().send_raw(head);
        stalled.back().send_raw(body);
    }
    // At most 1 MiB can be held: of 40 holders of about 60 KB, at least 23 are closed.
    CHECK(wait_metric(d, "derpd_shard_input_shed_closes_total", 23) >= 23);
    CHECK(memory_metric(d, "input") <= 1048576);
    CHECK(d.wait_for_log("unconsumed input over 1048576 bytes; closed the", 2000ms));
    expect_relayed(a, b, "whole frames are never held");
    expect_relayed(b, a, "both ways");
}

TEST_CASE("-shard-staging-max: slow readers' staging stays under the shard's ceiling; a healthy pair relays") {
    derpd_options o = with_admin();
    o.shards = 1;
    o.extra_args = {"-shard-staging-max", "1048576", "-tcp-write-timeout", "0"};
    derpd_process d(o);
    auto sender = derp_client::connect(d.port(), d.server_public());
    auto a = derp_client::connect(d.port(), d.server_public());
    auto b = derp_client::connect(d.port(), d.server_public());
    // 24 receivers with tiny socket buffers that never read: once the kernel's send buffers
    // towards them are full (up to tcp_wmem's maximum), each send stalls, their queues fill,
    // and whole frames would move to staging (64 KiB each, 1.5 MiB in all).
    client_options slow_options;
    slow_options.rcvbuf_bytes = 4096;
    std::vector<derp_client> slow;
    for (int i = 0; i < 24; ++i) slow.push_back(derp_client::connect(d.port(), d.server_public(), slow_options));
    const bytes packet(1000, 0x33);
    auto queue_head_drops = [&] {
        return varz_sum(http_get_body("127.0.0.1", d.admin_port(), "/debug/varz"), "derp_packets_dropped",
                        {{"reason", "queue_head"}}).value_or(0);
    };
    // Until every receiver's queue overflows (the kernel buffers are full), then as much again
    // as staging could take: 100 more packets each.
    int rounds = 0;
    for (; rounds < 20'000; ++rounds) {
        for (auto& r : slow) sender.send_packet(r.key(), packet);
        if (rounds % 500 == 499 && queue_head_drops() >= 24 * 32) break;
    }
    REQUIRE(rounds < 20'000);
    for (int more = 0; more < 100; ++more)
        for (auto& r : slow) sender.send_packet(r.key(), packet);
    expect_relayed(a, b, "beside the slow readers");
    // Every packet of the sender was read (one client, and the relay above came after them):
    // staging is as full as it gets, the ceiling plus at most the rest of one frame per
    // receiver (a frame cut by a send moves whatever the room).
    const double staged = memory_metric(d, "staging");
    MESSAGE("staged bytes with 24 stalled readers: " << staged << " after " << rounds << " rounds");
    CHECK(staged <= 1048576 + 24 * 1037);
    CHECK(staged > 1048576 - 64 * 1037);  // it did fill up to the ceiling
    expect_relayed(b, a, "still");
}

TEST_CASE("staging: a burst larger than the queue reaches a receiver that reads; one that stopped reading stages 64 KiB") {
    derpd_options o = with_admin();
    o.shards = 1;
    o.extra_args = {"-tcp-write-timeout", "0"};
    derpd_process d(o);
    auto sender = derp_client::connect(d.port(), d.server_public());
    auto reader = derp_client::connect(d.port(), d.server_public());
    const auto drops = [&] {
        return varz_sum(http_get_body("127.0.0.1", d.admin_port(), "/debug/varz"), "derp_packets_dropped",
                        {{"reason", "queue_head"}}).value_or(0);
    };
    // 300 packets of 1,400 bytes in one write: derpd reads them in one or a few loop turns
    // (up to -recv-buffers x 16 KiB a turn), far more than a queue (32) and 64 KiB of staging
    // hold while the reader's send is in flight. The reader reads meanwhile, so its socket takes
    // every send: its packets wait only for the loop, and none may be dropped (derper's queue
    // overflows only when the socket write itself is stuck).
    constexpr int burst = 300;
    bytes packet(1400, 0x5a);
    bytes all;
    for (int i = 0; i < burst; ++i) {
        packet[0] = static_cast<std::uint8_t>(i);
        packet[1] = static_cast<std::uint8_t>(i >> 8);
        const std::size_t at = all.size();
        all.resize(at + send_packet_frame_bytes(packet.size()));
        encode_send_packet(std::span(all).subspan(at), reader.key(), packet);
    }
    int received = 0;
    std::thread read_all([&] {
        bytes storage;
        try {
            for (; received < burst; ++received) {
                const recv_packet_view v = reader.expect_recv_packet(storage, 5000ms);
                if (v.packet.size() != 1400 || v.packet[0] != static_cast<std::uint8_t>(received) ||
                    v.packet[1] != static_cast<std::uint8_t>(received >> 8))
                    break;
            }
        } catch (const std::exception&) {
        }
    });
    sender.send_raw(all);
    read_all.join();
    CHECK(received == burst);
    CHECK(drops() == 0);

    // A receiver that never reads (a 4 KiB socket buffer): once a send to it waits for it, it
    // stages no more than 64 KiB beyond its queue, and the oldest packets go (queue_head). Each
    // packet is sent after derpd has read the one before, so that no loop turn reads more than
    // one of them (within a turn the send cannot be known to wait yet).
    client_options stuck_options;
    stuck_options.rcvbuf_bytes = 4096;
    auto stuck = derp_client::connect(d.port(), d.server_public(), stuck_options);
    const bytes small(1000, 0x44);
    double received_before = metric(d, "derp_packets_received");
    int sent = 0;
    for (; sent < 20'000 && drops() < 50; ++sent) {
        sender.send_packet(stuck.key(), small);
        REQUIRE(wait_metric(d, "derp_packets_received", received_before + 1) >= received_before + 1);
        received_before += 1;
    }
    REQUIRE(sent < 20'000);
    const double staged = memory_metric(d, "staging");
    MESSAGE("a stalled reader: " << staged << " bytes staged after " << sent << " packets, " << drops() << " dropped");
    CHECK(staged <= 64 * 1024 + 1037);
    expect_relayed(sender, reader, "beside the stalled reader");
}
