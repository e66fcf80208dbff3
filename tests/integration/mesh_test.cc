// A DERP region of three derpd nodes on loopback (127.0.0.1-3, one port, TLS certificates from a
// test CA, every node meshed with the whole list, itself included) against issue 12's acceptance:
// packets of every size between clients on different nodes, a client moving between nodes, a
// node killed and restarted (PeerGone to its clients' peers, then healing), the same key on two
// nodes (the multi-forwarder rules), and a fourth node with the wrong mesh key (refused; its
// clients stay local). Every wait polls a condition with a generous deadline; nothing sleeps.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "crypto/box.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/mesh_region.hh"

namespace {

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

constexpr auto converge_timeout = 40s;  // nodes dial each other every 5-6 s until all are up
constexpr auto learn_timeout = 15s;     // a key announced on one node reaching another
constexpr auto deliver_timeout = 10s;

const std::vector<std::string> three_ips = {"127.0.0.1", "127.0.0.2", "127.0.0.3"};

std::vector<mesh_node_spec> three_nodes() {
    std::vector<mesh_node_spec> out;
    for (const auto& ip : three_ips) out.push_back({ip, mesh_psk_for(1), three_ips, {}});
    return out;
}

bytes pattern(std::size_t size, std::uint8_t seed) {
    bytes out(size);
    for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<std::uint8_t>((i * 31 + seed) & 0xff);
    return out;
}

bool is_peer_gone(const frame& f, const node_key& key, peer_gone_reason reason) {
    return f.wire() == peer_gone_frame(key, reason);
}

// Starts the region and waits until it has converged; prints how long that took.
void start_converged(mesh_region& region) {
    region.start();
    const auto took = region.wait_converged(converge_timeout);
    MESSAGE("region on port " << region.port() << " converged in " << took.count() << " ms");
}

// Waits until node i counts at least `at_least` remote clients.
void wait_remote(mesh_region& region, std::size_t i, double at_least) {
    region.wait_metric(i, "derp_clients_remote", {}, [at_least](double v) { return v >= at_least; }, learn_timeout,
                       "derp_clients_remote >= " + std::to_string(at_least));
}

// Exchanges packets of 1, 1200 and 65536 bytes both ways between a and b (on different nodes).
void exchange_sizes(derp_client& a, derp_client& b) {
    probe_until_delivered(a, b, deliver_timeout);
    probe_until_delivered(b, a, deliver_timeout);
    std::uint8_t seed = 0;
    for (const std::size_t size : {std::size_t{1}, std::size_t{1200}, std::size_t{65536}}) {
        const bytes ab = pattern(size, ++seed);
        const bytes ba = pattern(size, ++seed);
        a.send_packet(b.key(), ab);
        b.send_packet(a.key(), ba);
        expect_payload(b, a.key(), ab, deliver_timeout);
        expect_payload(a, b.key(), ba, deliver_timeout);
    }
}

}  // namespace

TEST_SUITE("integration") {

// The harness itself: a node on 127.0.0.2 with the CA's certificate, verified TLS clients
// relaying through it, its admin listener, and a SIGKILL and restart on the same port and key.
TEST_CASE("a region node serves TLS clients verified against the test CA, and restarts on its port") {
    mesh_region region({{"127.0.0.2", mesh_psk_for(1), {}, {}}});
    region.start();
    CHECK(region.node(0).log_text().find("derper: serving on 127.0.0.2:" + std::to_string(region.port())) !=
          std::string::npos);
    CHECK(region.metric(0, "derp_clients_local") == 0);
    {
        derp_client a = region.connect(0);
        derp_client b = region.connect(0);
        CHECK(a.conn().is_tls());
        exchange_sizes(a, b);
        CHECK(region.metric(0, "derp_clients_local") == 2);
    }
    const node_key server = region.node(0).server_public();
    region.node(0).kill();
    region.node(0).restart();
    CHECK(region.node(0).port() == region.port());
    CHECK(region.node(0).server_public() == server);
    derp_client a = region.connect(0);  // checks the ServerKey: the same node
    derp_client b = region.connect(0);
    probe_until_delivered(a, b, deliver_timeout);
}

TEST_CASE("clients on different nodes exchange packets of 1, 1200 and 65536 bytes both ways") {
    mesh_region region(three_nodes());
    start_converged(region);
    std::vector<double> remote_before;
    std::vector<double> forwarded_out_before, forwarded_in_before;
    for (std::size_t i = 0; i < 3; ++i) {
        remote_before.push_back(region.metric(i, "derp_clients_remote"));
        forwarded_out_before.push_back(region.metric(i, "derp_packets_forwarded_out"));
        forwarded_in_before.push_back(region.metric(i, "derp_packets_forwarded_in"));
    }
    derp_client c1 = region.connect(0);
    derp_client c2 = region.connect(1);
    derp_client c3 = region.connect(2);
    // Each node learns the two clients of the others as remote keys before anything is sent.
    for (std::size_t i = 0; i < 3; ++i) wait_remote(region, i, remote_before[i] + 2);

    exchange_sizes(c1, c2);
    exchange_sizes(c2, c3);
    exchange_sizes(c1, c3);

    // Every packet here crossed the mesh: some node forwarded it out, another took it in.
    double out_delta = 0, in_delta = 0;
    for (std::size_t i = 0; i < 3; ++i) {
        out_delta += region.metric(i, "derp_packets_forwarded_out") - forwarded_out_before[i];
        in_delta += region.metric(i, "derp_packets_forwarded_in") - forwarded_in_before[i];
    }
    CHECK(out_delta >= 24);  // per pair, at least 2 probes and 6 sized packets
    CHECK(in_delta >= 24);
}

TEST_CASE("a client that moves from node 1 to node 3 is reachable at its new node") {
    mesh_region region(three_nodes());
    start_converged(region);
    const double remote_before = region.metric(1, "derp_clients_remote");
    const private_key mover_key = generate_private_key();
    client_options mover_options;
    mover_options.key = mover_key;
    derp_client sender = region.connect(1);
    std::optional<derp_client> mover = region.connect(0, mover_options);
    wait_remote(region, 1, remote_before + 1);
    probe_until_delivered(sender, *mover, deliver_timeout);

    mover->conn().close();
    mover.reset();
    mover = region.connect(2, mover_options);
    const auto reconnected = clock_type::now();
    probe_until_delivered(sender, *mover, deliver_timeout);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - reconnected);
    MESSAGE("the moved client was reachable at node 3 " << took.count()
                                                        << " ms after its handshake there (issue 12 asks < 1000)");
    // And back the other way, from its new node.
    probe_until_delivered(*mover, sender, deliver_timeout);
}

TEST_CASE("killing node 2 withdraws its clients (PeerGone) and restarting it heals the region") {
    mesh_region region(three_nodes());
    start_converged(region);
    std::vector<double> remote_before;
    for (std::size_t i = 0; i < 3; ++i) remote_before.push_back(region.metric(i, "derp_clients_remote"));
    const private_key b_key = generate_private_key();
    client_options b_options;
    b_options.key = b_key;
    derp_client a = region.connect(0);
    std::optional<derp_client> b = region.connect(1, b_options);
    derp_client c = region.connect(2);
    wait_remote(region, 0, remote_before[0] + 2);
    wait_remote(region, 2, remote_before[2] + 2);
    // Spec 2.7: PeerGone goes to the clients that received a packet from the one that left.
    probe_until_delivered(*b, a, deliver_timeout);
    probe_until_delivered(*b, c, deliver_timeout);
    const double reconnects_before = region.metric(0, "derpd_mesh_reconnects_total", peer_label("127.0.0.2"));

    region.node(1).kill();
    b.reset();  // its node is gone; the test's socket goes too
    const node_key b_public = public_key_of(b_key);
    for (derp_client* peer : {&a, &c}) {
        std::vector<frame> skipped;
        peer->expect([&](const frame& f) { return is_peer_gone(f, b_public, peer_gone_reason::disconnected); },
                     "PeerGone(Disconnected) for node 2's client", 20s, &skipped);
        for (const frame& f : skipped)
            CHECK_MESSAGE((f.type == static_cast<std::uint8_t>(frame_type::recv_packet) ||
                           f.type == static_cast<std::uint8_t>(frame_type::keep_alive)),
                          "unexpected frame before PeerGone: " << to_hex(f.wire()));
    }

    region.node(1).restart();
    const auto healed = region.wait_converged(converge_timeout);
    MESSAGE("node 2 restarted on port " << region.node(1).port() << "; the region healed in " << healed.count()
                                        << " ms");
    CHECK(region.node(1).port() == region.port());
    CHECK(region.metric(0, "derpd_mesh_reconnects_total", peer_label("127.0.0.2")) > reconnects_before);
    b = region.connect(1, b_options);
    probe_until_delivered(a, *b, deliver_timeout);
    probe_until_delivered(*b, a, deliver_timeout);
    probe_until_delivered(c, *b, deliver_timeout);
    probe_until_delivered(*b, c, deliver_timeout);
}

TEST_CASE("the same key on node 2 and node 3 follows the multi-forwarder rules on node 1") {
    mesh_region region(three_nodes());
    start_converged(region);
    const double remote_before = region.metric(0, "derp_clients_remote");
    const double created_before = region.metric(0, "derp_multiforwarder_created");
    const double deleted_before = region.metric(0, "derp_multiforwarder_deleted");
    const private_key shared_key = generate_private_key();
    client_options shared;
    shared.key = shared_key;

    derp_client sender = region.connect(0);
    std::optional<derp_client> first = region.connect(1, shared);  // the first announcer
    wait_remote(region, 0, remote_before + 1);
    probe_until_delivered(sender, *first, deliver_timeout);
    derp_client second = region.connect(2, shared);
    region.wait_metric(0, "derp_multiforwarder_created", {}, [&](double v) { return v >= created_before + 1; },
                       learn_timeout, "derp_multiforwarder_created to count the second announcer");

    // Packets from node 1 go to the first announcer only.
    for (std::uint8_t i = 0; i < 5; ++i) {
        const bytes packet = pattern(100, i);
        sender.send_packet(first->key(), packet);
        expect_payload(*first, sender.key(), packet, deliver_timeout);
    }
    CHECK(packets_from_within(second, sender.key(), 500ms) == 0);

    // When the first announcer leaves, its forwarder goes and packets reach the other one.
    first->conn().close();
    first.reset();
    region.wait_metric(0, "derp_multiforwarder_deleted", {}, [&](double v) { return v >= deleted_before + 1; },
                       learn_timeout, "derp_multiforwarder_deleted after the first announcer left");
    const auto took = probe_until_delivered(sender, second, deliver_timeout);
    MESSAGE("packets reached the second announcer " << took.count() << " ms after the multi-forwarder went");
}

TEST_CASE("a node with the wrong mesh key is refused and its clients stay local") {
    std::vector<mesh_node_spec> nodes = three_nodes();
    nodes.push_back({"127.0.0.4", mesh_psk_for(2), {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}, {}});
    mesh_region region(std::move(nodes));
    region.start();
    region.wait_converged(converge_timeout, {0, 1, 2});
    for (const std::string& peer : three_ips) {
        region.wait_metric(3, "derpd_mesh_failures_total", peer_label(peer), [](double v) { return v >= 1; },
                           converge_timeout, "node 4's failures to mesh with " + peer);
        CHECK(region.metric(3, "derpd_mesh_peer_up", peer_label(peer)) == 0);
    }
    // The nodes it dialled let it in as an ordinary client (its mesh key does not match theirs),
    // then closed it at its WatchConns, and said so: "closing: not_mesh" with its key.
    const std::string node4_key = region.node(3).server_public().to_string();
    for (std::size_t i = 0; i < 3; ++i)
        wait_until([&] { return count_log_lines(region.node(i).log_text(), node4_key, "closing: not_mesh") > 0; },
                   learn_timeout, "node " + region.ip(i) + " to log closing node 4's mesh connection",
                   [&] { return region.node(i).log_tail(60); });
    MESSAGE("node 1: " << first_log_line(region.node(0).log_text(), node4_key, "closing: not_mesh"));
    MESSAGE("node 4: " << first_log_line(region.node(3).log_text(), "mesh 127.0.0.1", "retrying in"));

    const double dropped_before =
        region.metric(0, "derp_packets_dropped", {{"reason", "unknown_dest"}});
    derp_client d1 = region.connect(3);
    derp_client d2 = region.connect(3);
    derp_client a = region.connect(0);
    probe_until_delivered(d1, d2, deliver_timeout);  // node 4 relays for its own clients
    CHECK(region.metric(3, "derp_clients_remote") == 0);

    // Node 1 has no route to node 4's client, nor node 4 to node 1's: nothing arrives either way.
    const bytes packet = pattern(300, 7);
    for (int i = 0; i < 10; ++i) {
        a.send_packet(d1.key(), packet);
        d1.send_packet(a.key(), packet);
    }
    CHECK(packets_from_within(d1, a.key(), 1s) == 0);
    CHECK(packets_from_within(a, d1.key(), 1s) == 0);
    region.wait_metric(0, "derp_packets_dropped", {{"reason", "unknown_dest"}},
                       [&](double v) { return v >= dropped_before + 10; }, learn_timeout,
                       "node 1 to count its packets to node 4's client as unknown_dest drops");
}

}  // TEST_SUITE
