// Hostile and broken clients against a real derpd: each is closed, logged, and harms no one.
// Oversize and truncated frames, broken handshakes, clients that stall or never read, connection
// churn and garbage HTTP. Each must end in a close seen by the client and a log line naming the
// client, and derpd must stay up and serve fresh clients afterwards.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "crypto/box.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"

namespace {

using namespace derp;
using namespace derp::test;
using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds log_timeout{3000};

// A line of derpd's log that names the client (127.0.0.1:port) and contains what.
bool log_line_for(const derpd_process& server, std::uint16_t client_port, std::string_view what,
                  milliseconds timeout = log_timeout) {
    const std::string addr = "127.0.0.1:" + std::to_string(client_port) + ":";
    const std::string addr_relay = "127.0.0.1:" + std::to_string(client_port) + " ";
    const auto deadline = clock_type::now() + timeout;
    for (;;) {
        std::istringstream lines(server.log_text());
        for (std::string line; std::getline(lines, line);)
            if ((line.find(addr) != std::string::npos || line.find(addr_relay) != std::string::npos) &&
                line.find(what) != std::string::npos)
                return true;
        if (clock_type::now() > deadline) return false;
        std::this_thread::sleep_for(milliseconds(10));
    }
}

void expect_logged(const derpd_process& server, std::uint16_t client_port, std::string_view what) {
    CHECK_MESSAGE(log_line_for(server, client_port, what),
                  "no log line for 127.0.0.1:" << client_port << " containing \"" << what
                                               << "\"\n--- log tail ---\n"
                                               << server.log_tail());
}

// The server closes c (EOF or reset) within timeout; returns what arrived before.
tcp_conn::close_wait expect_closed(tcp_conn& c, milliseconds timeout = milliseconds(3000)) {
    auto closed = c.wait_closed(timeout);
    CHECK_MESSAGE((closed.status == io_status::eof || closed.status == io_status::reset),
                  "want the connection closed, got " << to_string(closed.status));
    return closed;
}

// A connection that has sent the upgrade request and read the 101 and ServerKey: next comes
// what the client sends as ClientInfo.
tcp_conn upgraded(const derpd_process& server) {
    tcp_conn c = tcp_conn::connect_loopback(server.port());
    REQUIRE(c.write_all(upgrade_request()) == io_status::ok);
    std::string head;
    REQUIRE(c.read_http_head(head) == io_status::ok);
    REQUIRE(head.rfind("HTTP/1.1 101 ", 0) == 0);
    const frame_read sk = read_frame(c);
    REQUIRE(sk.status == io_status::ok);
    REQUIRE(sk.f.type == static_cast<std::uint8_t>(frame_type::server_key));
    return c;
}

// derpd is alive and relays between two fresh clients.
void expect_serves_fresh_clients(derpd_process& server) {
    REQUIRE(server.running());
    auto a = derp_client::connect(server.port(), server.server_public());
    auto b = derp_client::connect(server.port(), server.server_public());
    const bytes packet = {'s', 't', 'i', 'l', 'l', ' ', 'u', 'p'};
    a.send_packet(b.key(), packet);
    bytes storage;
    const auto got = b.expect_recv_packet(storage);
    CHECK(got.src == a.key());
    CHECK(bytes(got.packet.begin(), got.packet.end()) == packet);
    const ping_data ping = {1, 1, 2, 3, 5, 8, 13, 21};
    b.send_ping(ping);
    const frame pong = b.expect(
        [](const frame& f) { return f.type == static_cast<std::uint8_t>(frame_type::pong); }, "Pong");
    CHECK(to_hex(pong.payload) == to_hex(ping));
}

bytes frame_bytes(frame_type type, const bytes& payload) {
    bytes out(frame_header_bytes + payload.size());
    encode_frame_header(out, type, payload.size());
    std::copy(payload.begin(), payload.end(), out.begin() + frame_header_bytes);
    return out;
}

// Sends a ClientInfo-position frame and expects derpd to close with reason logged.
void expect_handshake_rejected(derpd_process& server, const bytes& wire, std::string_view reason) {
    tcp_conn c = upgraded(server);
    const std::uint16_t port = c.local_port();
    const io_status st = c.write_all(wire);
    CHECK((st == io_status::ok || st == io_status::reset));  // derpd may close before reading it all
    const auto closed = expect_closed(c);
    CHECK_MESSAGE(closed.bytes_before == 0,
                  "derpd sent bytes after ServerKey: " << to_hex(closed.data_before));
    expect_logged(server, port, reason);
    expect_serves_fresh_clients(server);
}

}  // namespace

TEST_CASE("a SendPacket with a 65537-byte packet closes the connection") {
    derpd_process server;
    auto c = derp_client::connect(server.port(), server.server_public());
    const std::uint16_t port = c.local_port();
    const bytes packet(packet_bytes_max + 1, 0x5a);
    bytes wire(frame_header_bytes + key_bytes + packet.size());
    encode_frame_header(wire, frame_type::send_packet, key_bytes + packet.size());
    const node_key dst = public_key_of(generate_private_key());
    std::copy(dst.bytes().begin(), dst.bytes().end(), wire.begin() + frame_header_bytes);
    std::copy(packet.begin(), packet.end(), wire.begin() + frame_header_bytes + key_bytes);
    const io_status st = c.conn().write_all(wire);
    CHECK((st == io_status::ok || st == io_status::reset));
    expect_closed(c.conn());
    expect_logged(server, port, "frame_too_large");
    expect_serves_fresh_clients(server);
}

TEST_CASE("a truncated frame followed by the client closing") {
    derpd_process server;
    auto c = derp_client::connect(server.port(), server.server_public());
    const std::uint16_t port = c.local_port();
    bytes wire;
    SUBCASE("inside the header") {
        wire = {0x04, 0x00, 0x00};
    }
    SUBCASE("inside the payload") {
        wire = frame_bytes(frame_type::send_packet, bytes(32 + 100, 0x11));
        wire.resize(wire.size() - 60);
    }
    c.send_raw(wire);
    c.conn().shutdown_write();
    expect_closed(c.conn());
    // derper logs the unexpected EOF: "derp: <addr>: client <key>: readFrameHeader: unexpected
    // EOF" (or recvPacket: ...). derpd should name the client too.
    expect_logged(server, port, "");
    expect_serves_fresh_clients(server);
}

TEST_CASE("a first frame other than ClientInfo closes the connection") {
    derpd_process server;
    bytes payload(32 + 10, 0x22);
    expect_handshake_rejected(server, frame_bytes(frame_type::send_packet, payload), "bad_frame_type");
}

TEST_CASE("a ClientInfo whose box does not open closes the connection") {
    derpd_process server;
    const private_key client = generate_private_key();
    bytes wire = client_info_frame(client, server.server_public(), client_info_json());
    SUBCASE("a flipped ciphertext byte") {
        wire.back() ^= 0x01;
    }
    SUBCASE("a flipped tag byte") {
        wire[frame_header_bytes + key_bytes + nonce_bytes] ^= 0x80;
    }
    SUBCASE("sealed to another server key") {
        wire = client_info_frame(client, public_key_of(generate_private_key()), client_info_json());
    }
    SUBCASE("garbage where the box should be") {
        for (std::size_t i = frame_header_bytes + key_bytes; i < wire.size(); ++i)
            wire[i] = static_cast<std::uint8_t>(0x44 + i);
    }
    expect_handshake_rejected(server, wire, "client_info_box_open");
}

TEST_CASE("a ClientInfo that opens but is not valid JSON closes the connection") {
    derpd_process server;
    const bytes wire = client_info_frame(generate_private_key(), server.server_public(), R"({"version":2,)");
    expect_handshake_rejected(server, wire, "client_info_bad_json");
}

TEST_CASE("a ClientInfo from the all-zero key closes the connection") {
    derpd_process server;
    bytes wire = client_info_frame(generate_private_key(), server.server_public(), client_info_json());
    std::fill(wire.begin() + frame_header_bytes, wire.begin() + frame_header_bytes + key_bytes, 0);
    expect_handshake_rejected(server, wire, "client_key_zero");
}

TEST_CASE("ClientInfo length limits") {
    derpd_process server;
    SUBCASE("over 256 KiB") {
        bytes wire(frame_header_bytes + client_info_payload_bytes_max + 1, 0x33);
        encode_frame_header(wire, frame_type::client_info, client_info_payload_bytes_max + 1);
        expect_handshake_rejected(server, wire, "client_info_too_long");
    }
    SUBCASE("under 56 bytes") {
        expect_handshake_rejected(server, frame_bytes(frame_type::client_info, bytes(55, 0x33)),
                                  "client_info_too_short");
    }
}

TEST_CASE("a client that never finishes the handshake is closed after -handshake-timeout") {
    derpd_process server;  // -handshake-timeout 1s
    tcp_conn c = upgraded(server);
    const std::uint16_t port = c.local_port();
    const auto start = clock_type::now();
    const auto closed = expect_closed(c, milliseconds(4000));
    const auto waited = std::chrono::duration_cast<milliseconds>(clock_type::now() - start).count();
    CHECK(closed.bytes_before == 0);
    CHECK(waited >= 700);
    CHECK(waited <= 2500);
    expect_logged(server, port, "handshake not complete in time");
    expect_serves_fresh_clients(server);
}

TEST_CASE("a client that never sends an HTTP request is closed after 3x -handshake-timeout") {
    derpd_process server;
    tcp_conn silent = tcp_conn::connect_loopback(server.port());
    const auto start = clock_type::now();
    // A second client with half a request, 300 ms later: derpd logs such closes at most once per
    // 100 ms per shard, so the two must not time out together.
    std::this_thread::sleep_for(milliseconds(300));
    tcp_conn partial = tcp_conn::connect_loopback(server.port());
    REQUIRE(partial.write_all("GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\n") == io_status::ok);
    const auto closed = expect_closed(silent, milliseconds(6000));
    const auto waited = std::chrono::duration_cast<milliseconds>(clock_type::now() - start).count();
    CHECK(closed.bytes_before == 0);
    CHECK(waited >= 2500);
    CHECK(waited <= 4500);
    // The half request is answered 408 (Go's server does the same) before the close.
    const auto partial_closed = expect_closed(partial, milliseconds(2000));
    CHECK(partial_closed.bytes_before > 0);
    expect_logged(server, silent.local_port(), "HTTP request not complete in time");
    expect_logged(server, partial.local_port(), "request head not complete in time; 408");
    expect_serves_fresh_clients(server);
}

TEST_CASE("a client that never reads while another floods it: its queue drops, others are unaffected") {
    derpd_process server;  // default -tcp-write-timeout 2s
    // A small receive buffer so that the stalled client backs up quickly.
    client_options stalled_options;
    stalled_options.rcvbuf_bytes = 4096;
    auto stalled = derp_client::connect(server.port(), server.server_public(), stalled_options);
    const std::uint16_t stalled_port = stalled.local_port();
    auto flooder = derp_client::connect(server.port(), server.server_public());
    auto c = derp_client::connect(server.port(), server.server_public());
    auto d = derp_client::connect(server.port(), server.server_public());

    constexpr std::size_t flood_packets = 400;
    const bytes big(packet_bytes_max, 0xee);
    const auto flood_start = clock_type::now();
    // The sender is never blocked (spec 2.5): 26 MB go in well within the write deadlines.
    for (std::size_t i = 0; i < flood_packets; ++i) flooder.send_packet(stalled.key(), big);
    CHECK(clock_type::now() - flood_start < std::chrono::seconds(5));

    // Everyone else is served promptly meanwhile.
    const bytes packet = {'o', 'k'};
    c.send_packet(d.key(), packet);
    bytes storage;
    const auto got = d.expect_recv_packet(storage, milliseconds(1000));
    CHECK(got.src == c.key());
    const ping_data ping = {7, 7, 7, 7, 7, 7, 7, 7};
    flooder.send_ping(ping);
    flooder.expect([](const frame& f) { return f.type == static_cast<std::uint8_t>(frame_type::pong); },
                   "Pong", milliseconds(1000));
    expect_serves_fresh_clients(server);

    // The stalled client is dropped by the write timeout, having received far less than sent.
    expect_logged(server, stalled_port, "write timeout");
    const auto closed = expect_closed(stalled.conn(), milliseconds(5000));
    CHECK(closed.bytes_before < flood_packets * big.size() / 2);
    // The others are still connected.
    c.send_packet(d.key(), packet);
    d.expect_recv_packet(storage, milliseconds(1000));
}

TEST_CASE("a burst of 500 connects and disconnects, some mid-handshake") {
    derpd_process server;
    const std::string request = upgrade_request();
    for (int i = 0; i < 500; ++i) {
        CAPTURE(i);
        tcp_conn c = tcp_conn::connect_loopback(server.port());
        switch (i % 6) {
            case 0:  // connect and close
                break;
            case 1:  // connect and reset
                c.reset();
                break;
            case 2:  // half a request
                (void)c.write_all(std::string_view(request).substr(0, request.size() / 2));
                break;
            case 3: {  // the request, then gone after the ServerKey
                REQUIRE(c.write_all(request) == io_status::ok);
                std::string head;
                REQUIRE(c.read_http_head(head) == io_status::ok);
                if (i % 12 == 3) c.reset();
                break;
            }
            case 4: {  // half a ClientInfo
                REQUIRE(c.write_all(request) == io_status::ok);
                bytes info =
                    client_info_frame(generate_private_key(), server.server_public(), client_info_json());
                info.resize(info.size() / 2);
                (void)c.write_all(info);
                break;
            }
            case 5: {  // a whole handshake, a packet to nobody, then gone
                auto client = derp_client::connect(server.port(), server.server_public());
                client.send_packet(public_key_of(generate_private_key()), bytes(100, 1));
                if (i % 12 == 5) client.conn().reset();
                break;
            }
        }
    }
    expect_serves_fresh_clients(server);
    CHECK(server.running());
}

TEST_CASE("garbage instead of an HTTP request gets a 400") {
    derpd_process server;
    tcp_conn c = tcp_conn::connect_loopback(server.port());
    const std::uint16_t port = c.local_port();
    REQUIRE(c.write_all("GARBAGE\r\n\r\n") == io_status::ok);
    const auto closed = expect_closed(c);
    const std::string response(closed.data_before.begin(), closed.data_before.end());
    CHECK_MESSAGE(response.rfind("HTTP/1.1 400 ", 0) == 0, "response: " << response);
    expect_logged(server, port, "400");
    expect_serves_fresh_clients(server);
}
