// Graceful drain and the restart without a gap (issue 16; spec 2.10's Restarting frame, which
// derper defines and never sends). SIGTERM with -drain-timeout: the listeners close (new
// connections are refused, or land on a derpd started beside it with -takeover), every client
// gets Restarting{reconnect in < -drain-reconnect-spread, try for 30 s}, relaying goes on until
// the clients leave (then the process exits at once) or the deadline passes (then it closes
// them). A second signal stops at once.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "core/frame.hh"
#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"

namespace {

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;

derpd_options draining(std::string timeout, std::vector<std::string> extra = {}) {
    derpd_options o;
    o.extra_args = {"-drain-timeout", std::move(timeout), "-drain-reconnect-spread", "500ms"};
    o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
    return o;
}

// The next Restarting frame (other frames skipped); fails the test when none comes.
restarting_view expect_restarting(derp_client& c) {
    const frame f = c.expect([](const frame& x) { return x.type == static_cast<std::uint8_t>(frame_type::restarting); },
                             "Restarting", 5000ms);
    const auto r = decode_restarting(f.payload);
    REQUIRE(r);
    return *r;
}

// Waits for the process to exit; true when it did within the timeout.
bool exits_within(derpd_process& d, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (d.running()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(20ms);
    }
    return true;
}

bool connect_refused(std::uint16_t port) {
    try {
        tcp_conn c = tcp_conn::connect_loopback(port);
        // Accepted by a listener still there: the drain did not close it.
        return false;
    } catch (const std::exception&) {
        return true;
    }
}

}  // namespace

TEST_CASE("SIGTERM drains: Restarting to every client, relaying goes on, exit as soon as they leave") {
    derpd_process d(draining("60s"));
    auto a = std::make_unique<derp_client>(derp_client::connect(d.port(), d.server_public()));
    auto b = std::make_unique<derp_client>(derp_client::connect(d.port(), d.server_public()));
    expect_relayed(*a, *b, "before");
    REQUIRE(::kill(d.pid(), SIGTERM) == 0);
    for (derp_client* c : {a.get(), b.get()}) {
        const restarting_view r = expect_restarting(*c);
        CHECK(r.reconnect_in_ms < 500);
        CHECK(r.try_for_ms == 30'000);
    }
    CHECK(d.wait_for_log("draining for at most 60000 ms", 2000ms));
    expect_relayed(*a, *b, "while draining");
    expect_relayed(*b, *a, "both ways");
    CHECK(connect_refused(d.port()));
    CHECK(d.running());
    a.reset();
    CHECK(d.running());  // b is still there
    b.reset();
    // Well before the 60 s deadline: the process leaves when its last client has.
    CHECK(exits_within(d, 10s));
    CHECK(d.stop() == 0);
    CHECK(d.count_log("drain deadline reached") == 0);
}

TEST_CASE("drain deadline: clients that stay are closed, and the process exits") {
    derpd_process d(draining("1s"));
    auto a = derp_client::connect(d.port(), d.server_public());
    REQUIRE(::kill(d.pid(), SIGTERM) == 0);
    expect_restarting(a);
    CHECK(exits_within(d, 10s));
    CHECK(d.log_text().find("drain deadline reached; closing 1 connection(s)") != std::string::npos);
    const auto closed = a.conn().wait_closed(5000ms);
    CHECK((closed.status == io_status::eof || closed.status == io_status::reset));
    CHECK(d.stop() == 0);
}

TEST_CASE("a second signal during the drain stops at once") {
    derpd_process d(draining("60s"));
    auto a = derp_client::connect(d.port(), d.server_public());
    REQUIRE(::kill(d.pid(), SIGTERM) == 0);
    expect_restarting(a);
    REQUIRE(::kill(d.pid(), SIGINT) == 0);
    CHECK(exits_within(d, 10s));
    CHECK(d.stop() == 0);
}

TEST_CASE("-takeover: a second derpd joins the ports, the first drains, clients reconnect on Restarting") {
    const auto server_key = private_key::from_hex(fixture_server_private_hex);
    REQUIRE(server_key);
    derpd_options first = draining("60s");
    first.server_private = *server_key;
    derpd_process old_node(first);
    auto a = std::make_unique<derp_client>(derp_client::connect(old_node.port(), old_node.server_public()));
    auto b = std::make_unique<derp_client>(derp_client::connect(old_node.port(), old_node.server_public()));
    const private_key a_key = a->secret(), b_key = b->secret();
    expect_relayed(*a, *b, "on the old node");

    // Without -takeover the port is refused as in use; with it the new node joins.
    derpd_options same = draining("60s");
    same.port = old_node.port();
    REQUIRE_THROWS(derpd_process(same));
    same.extra_args.push_back("-takeover");
    // The same server key: clients reconnect to the same node as far as they can tell.
    same.server_private = *server_key;
    derpd_process new_node(same);
    REQUIRE(new_node.port() == old_node.port());

    REQUIRE(::kill(old_node.pid(), SIGTERM) == 0);
    const restarting_view ra = expect_restarting(*a);
    const restarting_view rb = expect_restarting(*b);
    // The old node still relays for clients that have not moved yet.
    expect_relayed(*a, *b, "still on the old node");
    // Each reconnects after its reconnect-in: every new connection lands on the new node,
    // whose listeners are now the only ones.
    std::this_thread::sleep_for(std::chrono::milliseconds(ra.reconnect_in_ms));
    client_options ao;
    ao.key = a_key;
    a = std::make_unique<derp_client>(derp_client::connect(old_node.port(), new_node.server_public(), ao));
    std::this_thread::sleep_for(std::chrono::milliseconds(rb.reconnect_in_ms));
    client_options bo;
    bo.key = b_key;
    b = std::make_unique<derp_client>(derp_client::connect(old_node.port(), new_node.server_public(), bo));
    expect_relayed(*a, *b, "on the new node");
    expect_relayed(*b, *a, "both ways");
    // The old node had no client left: it is gone.
    CHECK(exits_within(old_node, 10s));
    CHECK(old_node.stop() == 0);
    CHECK(new_node.running());
    a.reset();  // before the new node's own drain at the end of the test
    b.reset();
}

TEST_CASE("Health: a failed certificate reload tells every TLS client, a good one clears it; new clients hear it too") {
    REQUIRE(crypto_init());
    derpd_options o;
    o.tls = true;
    o.extra_args = {"-cert-poll-interval", "0"};  // reloads on SIGHUP only
    derpd_process d(o);
    tls::context::client_options tls_options;
    tls_options.server_name = "127.0.0.1";
    tls_options.verify = tls::context::verify_mode::insecure;  // derpd's self-signed certificate
    auto context = tls::context::make_client(tls_options);
    REQUIRE(context);
    client_options co;
    co.tls = context.value();
    auto a = derp_client::connect(d.port(), d.server_public(), co);
    const auto crt = d.dir() / "certs" / "127.0.0.1.crt";
    std::string good;
    {
        std::ifstream in(crt, std::ios::binary);
        good.assign(std::istreambuf_iterator<char>(in), {});
    }
    auto health = [](derp_client& c) {
        const frame f = c.expect([](const frame& x) { return x.type == static_cast<std::uint8_t>(frame_type::health); },
                                 "Health", 5000ms);
        return std::string(decode_health(f.payload));
    };
    std::ofstream(crt, std::ios::binary | std::ios::trunc) << "not a certificate\n";
    REQUIRE(::kill(d.pid(), SIGHUP) == 0);
    const std::string problem = health(a);
    CHECK_MESSAGE(problem.rfind("certificate reload failed: ", 0) == 0, problem);
    // A client that connects while the node is degraded hears it after ServerInfo.
    auto b = derp_client::connect(d.port(), d.server_public(), co);
    CHECK(health(b) == problem);
    expect_relayed(a, b, "degraded, not down");
    std::ofstream(crt, std::ios::binary | std::ios::trunc) << good;
    REQUIRE(::kill(d.pid(), SIGHUP) == 0);
    CHECK(health(a).empty());
    CHECK(health(b).empty());
}
