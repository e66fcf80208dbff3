// /debug/traffic against a 2-shard derpd process: after two clients exchange packets, the stream
// reports a JSON line per client with the bytes the server sent and received and the number of
// distinct senders, then an empty line, every 2 s, and keeps streaming until closed.
#include <doctest/doctest.h>

#include <chrono>
#include <string>

#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"

using namespace derp;
using namespace derp::test;
using std::chrono::milliseconds;

namespace {
// Reads from the stream until `needle` has appeared `count` times and the report it is in has
// ended (an empty line), or the time is up.
std::string read_until(tcp_conn& conn, const std::string& needle, int count, milliseconds limit) {
    std::string text;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::uint8_t byte = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        int seen = 0;
        for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++seen;
        if (seen >= count && text.size() >= 2 && text.compare(text.size() - 2, 2, "\n\n") == 0) break;
        if (conn.read_exact({&byte, 1}, milliseconds(500)) != io_status::ok) continue;
        text.push_back(static_cast<char>(byte));
    }
    return text;
}
}  // namespace

TEST_CASE("/debug/traffic streams per-client byte counters as JSON lines") {
    derpd_process server;
    auto a = derp_client::connect(server.port(), server.server_public());
    auto b = derp_client::connect(server.port(), server.server_public());
    const bytes packet(100, 0x42);
    a.send_packet(b.key(), packet);
    bytes storage;
    b.expect_recv_packet(storage);

    tcp_conn stream = tcp_conn::connect_loopback(server.port());
    REQUIRE(stream.write_all("GET /debug/traffic HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == io_status::ok);
    std::string head;
    REQUIRE(stream.read_http_head(head) == io_status::ok);
    CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    // The first report lists both clients (their counters grew from nothing).
    const std::string first = read_until(stream, "\"Key\":\"nodekey:", 2, milliseconds(3000));
    CHECK(first.find("\"Key\":\"nodekey:" + a.key().to_string() + "\"") != std::string::npos);
    CHECK(first.find("\"Key\":\"nodekey:" + b.key().to_string() + "\",\"UniqueSenders\":1}") != std::string::npos);
    CHECK(first.find("{\"Sent\":") != std::string::npos);

    // More traffic: the next report (2 s later) has B again, with larger counters.
    a.send_packet(b.key(), packet);
    b.expect_recv_packet(storage);
    const std::string second = read_until(stream, "\"Key\":\"nodekey:" + b.key().to_string(), 1, milliseconds(4000));
    CHECK(second.find("\"Key\":\"nodekey:" + b.key().to_string()) != std::string::npos);
    CHECK(server.running());
}
