// derpd's relay semantics end to end on loopback with a real derpd on 2 shards (spec 2.2-2.10).
// Packets of every size both ways, PeerGone (NotHere and Disconnected), duplicate keys, mesh
// watchers, ClosePeer and ForwardPacket, Ping/Pong, KeepAlive, and 2,000 idle clients that do not
// disturb relaying.
#include <fstream>
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
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

derpd_options mesh_options() {
    derpd_options o;
    o.mesh_psk = std::string(fixture_mesh_psk_hex) + "\n";
    return o;
}

bytes pattern(std::size_t size, std::uint8_t seed) {
    bytes out(size);
    for (std::size_t i = 0; i < size; ++i) out[i] = static_cast<std::uint8_t>((i * 31 + seed) & 0xff);
    return out;
}

bytes disco_packet(std::uint8_t seed) {
    bytes out = pattern(disco_packet_bytes_min + 10, seed);
    std::copy(disco_magic.begin(), disco_magic.end(), out.begin());
    return out;
}

node_key random_key() {
    return public_key_of(generate_private_key());
}

bool is_type(const frame& f, frame_type t) {
    return f.type == static_cast<std::uint8_t>(t);
}

bool is_peer_gone(const frame& f, const node_key& key, peer_gone_reason reason) {
    return f.wire() == peer_gone_frame(key, reason);
}

// Expects the next RecvPacket at to be src's packet.
void expect_packet(derp_client& to, const node_key& src, const bytes& packet) {
    bytes storage;
    const auto got = to.expect_recv_packet(storage);
    CHECK(got.src == src);
    CHECK_MESSAGE(got.packet.size() == packet.size(),
                  "got " << to_hex(bytes(got.packet.begin(), got.packet.end())));
    CHECK(std::equal(got.packet.begin(), got.packet.end(), packet.begin(), packet.end()));
}

// Sends numbered packets from `from` to dst every 50 ms until `to` receives one of them (changes
// of the active connection travel between shards asynchronously). Packets of earlier calls that
// are still unread at `to` are skipped: each call tags its packets with a fresh round number.
void send_until_received(derp_client& from, const node_key& dst, derp_client& to,
                         std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
    static std::uint8_t round = 0;
    ++round;
    const auto deadline = clock_type::now() + timeout;
    for (std::uint8_t seq = 1; clock_type::now() < deadline; ++seq) {
        const bytes packet = {'s', 'e', 'q', round, seq};
        from.send_packet(dst, packet);
        // Wait the whole 50 ms for it, whatever else arrives meanwhile (a KeepAlive, a stale
        // probe), so that a slow probe is not followed by a fresh one that arrives late.
        const auto window_end = clock_type::now() + std::chrono::milliseconds(50);
        frame_read r{};
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(window_end - clock_type::now());
            r = to.next(std::max(left, std::chrono::milliseconds(0)));
            if (r.status != io_status::ok) break;
            if (!is_type(r.f, frame_type::recv_packet)) continue;
            const auto view = decode_recv_packet(r.f.payload);
            REQUIRE(view.has_value());
            CHECK(view->src == from.key());
            REQUIRE(view->packet.size() == packet.size());
            if (view->packet[3] == round) return;
        }
        REQUIRE_MESSAGE(r.status == io_status::timeout, "connection ended: " << to_string(r.status));
    }
    FAIL("no packet reached the expected connection within the deadline");
}

// No frame other than KeepAlive arrives on c for `quiet`.
void expect_no_frame(derp_client& c, std::chrono::milliseconds quiet) {
    const frame_read r = c.next(quiet);
    CHECK_MESSAGE(r.status == io_status::timeout,
                  "want nothing, got " << to_string(r.status) << " " << to_hex(r.f.wire()));
}

// The connection is closed by the server without any frame other than KeepAlive before it.
void expect_closed_without_frame(derp_client& c) {
    const auto deadline = clock_type::now() + std::chrono::milliseconds(3000);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
        const frame_read r = c.next(std::max(left, std::chrono::milliseconds(0)));
        if (r.status == io_status::ok) {
            FAIL_CHECK("want a close without frames, got frame " << to_hex(r.f.wire()));
            continue;
        }
        CHECK_MESSAGE((r.status == io_status::eof || r.status == io_status::reset),
                      "want the connection closed, got " << to_string(r.status));
        return;
    }
}

}  // namespace

TEST_CASE("packets of 0, 1, 1200 and 65536 bytes relay intact both ways across shards") {
    derpd_process server;
    auto a = derp_client::connect(server.port(), server.server_public());
    auto b = derp_client::connect(server.port(), server.server_public());
    for (const std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{1200}, packet_bytes_max}) {
        CAPTURE(size);
        const bytes ab = pattern(size, 1);
        const bytes ba = pattern(size, 2);
        a.send_packet(b.key(), ab);
        expect_packet(b, a.key(), ab);
        b.send_packet(a.key(), ba);
        expect_packet(a, b.key(), ba);
    }
    SUBCASE("a packet to one's own key comes back") {
        const bytes self = pattern(100, 7);
        a.send_packet(a.key(), self);
        expect_packet(a, a.key(), self);
    }
}

TEST_CASE("-wait-min: batched sleeps relay the same bytes, across shards, in order") {
    // The loop sleeps with the kernel's min-wait (a raw io_uring_enter); where the kernel has
    // none it says so and wakes at each completion. Either way nothing changes for clients.
    derpd_options o;
    o.extra_args = {"-wait-min", "50us", "-wait-batch", "8"};
    derpd_process server(o);
    auto a = derp_client::connect(server.port(), server.server_public());
    auto b = derp_client::connect(server.port(), server.server_public());
    for (std::uint8_t i = 0; i < 40; ++i) {
        CAPTURE(static_cast<int>(i));
        const bytes ab = pattern(1200, i);
        a.send_packet(b.key(), ab);
        expect_packet(b, a.key(), ab);  // one at a time: each wake-up carries a single completion
    }
    for (std::uint8_t i = 0; i < 40; ++i) b.send_packet(a.key(), pattern(500, i));
    for (std::uint8_t i = 0; i < 40; ++i) expect_packet(a, b.key(), pattern(500, i));
}

TEST_CASE("a burst of 64 packets to an idle client arrives complete and in order") {
    // 64 x 1237 bytes fit easily in the loopback socket buffers, so nothing is backed up and
    // derper's per-client queue of 32 (spec 2.5) never overflows: nothing may be dropped.
    derpd_process server;
    auto a = derp_client::connect(server.port(), server.server_public());
    auto b = derp_client::connect(server.port(), server.server_public());
    for (std::uint8_t i = 0; i < 64; ++i) a.send_packet(b.key(), pattern(1200, i));
    for (std::uint8_t i = 0; i < 64; ++i) {
        CAPTURE(i);
        bytes storage;
        const auto got = b.expect_recv_packet(storage, std::chrono::milliseconds(2000));
        REQUIRE(got.packet.size() == 1200);
        REQUIRE_MESSAGE(got.packet[0] == pattern(1200, i)[0],
                        "packet " << static_cast<int>(i) << " is missing; the next to arrive is "
                                  << static_cast<int>(got.packet[0]));
    }
}

TEST_CASE("a receiver that cannot keep up gets whole frames, in order, with the overflow dropped") {
    // A burst of 64 KiB packets to a client with a small receive buffer that reads nothing until
    // derpd has taken the whole burst from the sender: its sends stall, its queue fills, frames
    // go to the staging buffer (a frame half-sent included) and the oldest beyond that are
    // dropped. Whatever arrives must still be whole RecvPacket frames from the sender, intact, in
    // sending order. The burst is sized from the kernel's own bounds, so that it provably cannot
    // all be held: the receiver's socket buffer (the kernel doubles SO_RCVBUF), derpd's send
    // buffer at its autotuning maximum (tcp_wmem), the queue of 32, the staging buffer, and one
    // frame partly sent. The write timeout is long so that b, which reads nothing for a while
    // on purpose, is never closed for it however slow this machine is.
    derpd_options options;
    options.extra_args = {"-tcp-write-timeout", "120s"};
    derpd_process server(options);
    auto a = derp_client::connect(server.port(), server.server_public());
    client_options slow;
    slow.rcvbuf_bytes = 64 * 1024;
    auto b = derp_client::connect(server.port(), server.server_public(), slow);
    const std::size_t frame_bytes = recv_packet_frame_bytes(packet_bytes_max);
    std::size_t wmem_max = 0;
    {
        std::ifstream wmem("/proc/sys/net/ipv4/tcp_wmem");
        std::size_t lo = 0, def = 0;
        REQUIRE(static_cast<bool>(wmem >> lo >> def >> wmem_max));
    }
    const std::size_t holdable_bytes = 2 * static_cast<std::size_t>(slow.rcvbuf_bytes) + wmem_max +
                                       (32 + 1) * frame_bytes + 64 * 1024;
    const int burst = static_cast<int>(holdable_bytes / frame_bytes) + 16;
    REQUIRE(burst <= 256);  // packet indexes are one byte
    for (int i = 0; i < burst; ++i) a.send_packet(b.key(), pattern(packet_bytes_max, static_cast<std::uint8_t>(i)));
    // derpd reads a connection's frames in order: its Pong means every SendPacket before the
    // Ping has been handled (queued, staged or dropped) before b reads a byte.
    const ping_data token{1, 2, 3, 4, 5, 6, 7, 8};
    a.send_ping(token);
    a.expect([](const frame& f) { return f.type == static_cast<std::uint8_t>(frame_type::pong); }, "Pong",
             std::chrono::milliseconds(10'000));
    int received = 0, last = -1;
    for (;;) {
        const frame_read r = b.next(std::chrono::milliseconds(1500));
        if (r.status != io_status::ok) break;
        if (r.f.type != static_cast<std::uint8_t>(frame_type::recv_packet)) continue;
        const auto got = decode_recv_packet(r.f.payload);
        REQUIRE(got.has_value());
        CHECK(got->src == a.key());
        REQUIRE(got->packet.size() == packet_bytes_max);
        const int index = got->packet[0];
        CHECK_MESSAGE(index > last, "packet " << index << " arrived after " << last);
        const bytes want = pattern(packet_bytes_max, static_cast<std::uint8_t>(index));
        CHECK(std::equal(want.begin(), want.end(), got->packet.begin()));
        last = index;
        ++received;
    }
    MESSAGE(received << " of " << burst << " packets arrived");
    CHECK(received >= 32);      // at least a full queue's worth survives
    CHECK(received < burst);    // and the burst, larger than anything could hold, overflowed it
}

TEST_CASE("a disco packet to an unknown key gets PeerGone(NotHere); other packets get nothing") {
    derpd_process server;
    auto a = derp_client::connect(server.port(), server.server_public());
    const node_key unknown_plain = random_key();
    const node_key unknown_disco = random_key();
    // The non-disco packet is dropped silently, so the first frame is the disco one's answer.
    a.send_packet(unknown_plain, pattern(100, 3));
    a.send_packet(unknown_disco, disco_packet(4));
    const frame f = a.expect([](const frame&) { return true; }, "PeerGone(NotHere)");
    CHECK(to_hex(f.wire()) == to_hex(peer_gone_frame(unknown_disco, peer_gone_reason::not_here)));
    // A disco-magic packet shorter than 62 bytes is not disco.
    bytes short_disco = disco_packet(5);
    short_disco.resize(disco_packet_bytes_min - 1);
    a.send_packet(random_key(), short_disco);
    const ping_data ping = {1, 2, 3, 4, 5, 6, 7, 8};
    a.send_ping(ping);
    const frame pong = a.expect([](const frame&) { return true; }, "Pong");
    CHECK(is_type(pong, frame_type::pong));
}

TEST_CASE("PeerGone(Disconnected) goes to the clients that received packets from the leaver") {
    derpd_process server;
    auto a = derp_client::connect(server.port(), server.server_public());
    const node_key a_key = a.key();
    {
        auto b = derp_client::connect(server.port(), server.server_public());
        a.send_packet(b.key(), pattern(10, 1));
        expect_packet(b, a.key(), pattern(10, 1));
        b.send_packet(a.key(), pattern(10, 2));
        expect_packet(a, b.key(), pattern(10, 2));
        const node_key b_key = b.key();
        b.conn().close();
        const frame gone = a.expect([](const frame&) { return true; }, "PeerGone(B)");
        CHECK(to_hex(gone.wire()) == to_hex(peer_gone_frame(b_key, peer_gone_reason::disconnected)));
    }
    SUBCASE("no PeerGone for a peer one only sent to") {
        auto c = derp_client::connect(server.port(), server.server_public());
        const node_key c_key = c.key();
        a.send_packet(c_key, pattern(10, 3));
        expect_packet(c, a_key, pattern(10, 3));
        c.conn().close();
        // Once C is gone from the registry a disco packet to it gets NotHere; no frame before
        // that may be PeerGone(C, Disconnected), since A never received anything from C.
        std::vector<frame> seen;
        const auto deadline = clock_type::now() + std::chrono::milliseconds(4000);
        bool not_here = false;
        while (!not_here && clock_type::now() < deadline) {
            a.send_packet(c_key, disco_packet(9));
            for (frame_read r = a.next(std::chrono::milliseconds(300)); r.status == io_status::ok;
                 r = a.next(std::chrono::milliseconds(1))) {
                if (is_peer_gone(r.f, c_key, peer_gone_reason::not_here))
                    not_here = true;
                else
                    seen.push_back(r.f);
            }
        }
        CHECK(not_here);
        for (const frame& f : seen) CHECK_MESSAGE(false, "unexpected frame " << to_hex(f.wire()));
    }
}

TEST_CASE(
    "duplicate keys: the newest connection receives; the older one takes over when it speaks or the newest "
    "leaves") {
    derpd_process server;
    const private_key shared = generate_private_key();
    client_options same;
    same.key = shared;
    auto sender = derp_client::connect(server.port(), server.server_public());
    auto first = derp_client::connect(server.port(), server.server_public(), same);
    const node_key k = first.key();
    {
        auto second = derp_client::connect(server.port(), server.server_public(), same);
        // Registration is complete when ServerInfo arrives: the next packet goes to the newest.
        sender.send_packet(k, pattern(20, 1));
        expect_packet(second, sender.key(), pattern(20, 1));
        expect_no_frame(first, std::chrono::milliseconds(300));

        // The older connection speaks: "last writer is active" makes it the receiver.
        first.send_note_preferred(true);
        send_until_received(sender, k, first);
        // The newest speaks again and takes the packets back.
        second.send_note_preferred(true);
        send_until_received(sender, k, second);
        second.conn().close();
    }
    // The newest left: the one remaining connection receives again.
    send_until_received(sender, k, first);
    sender.send_packet(k, pattern(30, 2));
    expect_packet(first, sender.key(), pattern(30, 2));
}

TEST_CASE("a mesh watcher sees PeerPresent for existing clients (itself included) and presence changes") {
    derpd_process server(mesh_options());
    auto a = derp_client::connect(server.port(), server.server_public());
    client_options mesh;
    mesh.mesh_key = server.mesh_key();
    auto w = derp_client::connect(server.port(), server.server_public(), mesh);
    w.send_watch_conns();
    std::vector<bytes> got;
    for (int i = 0; i < 2; ++i)
        got.push_back(w.expect([](const frame&) { return true; }, "PeerPresent snapshot").wire());
    std::vector<bytes> want = {peer_present_frame(a.key(), a.local_port(), peer_present_regular),
                               peer_present_frame(w.key(), w.local_port(), peer_present_mesh_peer)};
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    CHECK(to_hex(got[0]) == to_hex(want[0]));
    CHECK(to_hex(got[1]) == to_hex(want[1]));

    // A client that comes and goes.
    node_key b_key;
    {
        auto b = derp_client::connect(server.port(), server.server_public());
        b_key = b.key();
        const frame present = w.expect([](const frame&) { return true; }, "PeerPresent(B)");
        CHECK(to_hex(present.wire()) ==
              to_hex(peer_present_frame(b.key(), b.local_port(), peer_present_regular)));

        // ForwardPacket from the mesh peer is delivered with the forwarded source key.
        const node_key remote = random_key();
        const bytes packet = pattern(64, 5);
        w.send_forward_packet(remote, b.key(), packet);
        expect_packet(b, remote, packet);
    }
    const frame gone = w.expect([](const frame&) { return true; }, "PeerGone(B)");
    CHECK(to_hex(gone.wire()) == to_hex(peer_gone_frame(b_key, peer_gone_reason::disconnected)));

    SUBCASE("an Ideal-Node header sets NotIdeal") {
        client_options not_ideal;
        not_ideal.extra_headers = "Ideal-Node: 1a\r\n";
        auto c = derp_client::connect(server.port(), server.server_public(), not_ideal);
        const frame present = w.expect([](const frame&) { return true; }, "PeerPresent(C)");
        CHECK(to_hex(present.wire()) ==
              to_hex(peer_present_frame(c.key(), c.local_port(), peer_present_not_ideal)));
    }
    SUBCASE("ClosePeer from the mesh client closes the target without a frame") {
        w.send_close_peer(a.key());
        expect_closed_without_frame(a);
        const frame a_gone = w.expect([](const frame&) { return true; }, "PeerGone(A)");
        CHECK(to_hex(a_gone.wire()) == to_hex(peer_gone_frame(a.key(), peer_gone_reason::disconnected)));
        CHECK(server.wait_for_log("frameClosePeer closing peer", std::chrono::milliseconds(2000)));
    }
    SUBCASE("a duplicate connection is announced; only the last one's leaving is PeerGone") {
        client_options same;
        same.key = generate_private_key();
        auto d1 = derp_client::connect(server.port(), server.server_public(), same);
        CHECK(to_hex(w.expect([](const frame&) { return true; }, "PeerPresent(D1)").wire()) ==
              to_hex(peer_present_frame(d1.key(), d1.local_port(), peer_present_regular)));
        auto d2 = derp_client::connect(server.port(), server.server_public(), same);
        CHECK(to_hex(w.expect([](const frame&) { return true; }, "PeerPresent(D2)").wire()) ==
              to_hex(peer_present_frame(d2.key(), d2.local_port(), peer_present_regular)));
        d2.conn().close();
        d1.conn().close();
        const frame d_gone = w.expect([](const frame&) { return true; }, "PeerGone(D)");
        CHECK(to_hex(d_gone.wire()) == to_hex(peer_gone_frame(d1.key(), peer_gone_reason::disconnected)));
        expect_no_frame(w, std::chrono::milliseconds(300));
    }
}

TEST_CASE("mesh-only frames from a client without the mesh key close it without a frame") {
    derpd_process server(mesh_options());
    auto victim = derp_client::connect(server.port(), server.server_public());
    SUBCASE("WatchConns") {
        auto c = derp_client::connect(server.port(), server.server_public());
        c.send_watch_conns();
        expect_closed_without_frame(c);
    }
    SUBCASE("ClosePeer") {
        auto c = derp_client::connect(server.port(), server.server_public());
        c.send_close_peer(victim.key());
        expect_closed_without_frame(c);
    }
    SUBCASE("a wrong mesh key is no mesh key") {
        client_options wrong;
        wrong.mesh_key = key_mesh::from_hex(std::string(64, '1'));
        auto c = derp_client::connect(server.port(), server.server_public(), wrong);
        c.send_watch_conns();
        expect_closed_without_frame(c);
    }
    // The victim is untouched.
    const ping_data ping = {9, 9, 9, 9, 9, 9, 9, 9};
    victim.send_ping(ping);
    const frame pong = victim.expect([](const frame&) { return true; }, "Pong");
    CHECK(to_hex(pong.wire()) == "13000000080909090909090909");
}

TEST_CASE("frames pipelined right after ClientInfo are answered after ServerInfo") {
    // Spec 1.4: ServerInfo is always the first frame after ServerKey, even when the client
    // pipelines frames behind its ClientInfo (the Go prober fails otherwise).
    derpd_process server;
    auto peer = derp_client::connect(server.port(), server.server_public());
    const private_key secret = generate_private_key();
    const node_key self = public_key_of(secret);
    const node_key unknown = random_key();
    const ping_data ping = {'p', 'i', 'p', 'e', 'l', 'i', 'n', 'e'};
    const bytes to_self = pattern(40, 6);
    bytes tail = client_info_frame(secret, server.server_public(), client_info_json());
    auto append = [&tail](const bytes& b) { tail.insert(tail.end(), b.begin(), b.end()); };
    bytes f(ping_frame_bytes);
    encode_ping(f, ping);
    append(f);
    f.assign(send_packet_frame_bytes(disco_packet_bytes_min + 10), 0);
    encode_send_packet(f, unknown, disco_packet(8));
    append(f);
    f.assign(send_packet_frame_bytes(to_self.size()), 0);
    encode_send_packet(f, self, to_self);
    append(f);
    const bytes to_peer = pattern(50, 7);
    f.assign(send_packet_frame_bytes(to_peer.size()), 0);
    encode_send_packet(f, peer.key(), to_peer);
    append(f);

    tcp_conn c = tcp_conn::connect_loopback(server.port());
    bool frames_fast_start = false;
    SUBCASE("fast start: the request and all frames in one write") {
        frames_fast_start = true;
        const std::string request = upgrade_request(true);
        bytes all(request.begin(), request.end());
        all.insert(all.end(), tail.begin(), tail.end());
        REQUIRE(c.write_all(all) == io_status::ok);
    }
    SUBCASE("after the 101 and ServerKey") {
        REQUIRE(c.write_all(upgrade_request()) == io_status::ok);
        std::string head;
        REQUIRE(c.read_http_head(head) == io_status::ok);
        REQUIRE(head.rfind("HTTP/1.1 101 ", 0) == 0);
        const frame_read sk = read_frame(c);
        REQUIRE(sk.status == io_status::ok);
        REQUIRE(is_type(sk.f, frame_type::server_key));
        REQUIRE(c.write_all(tail) == io_status::ok);
    }
    // Fast start: ServerKey, ServerInfo and three answers; otherwise ServerKey was read above.
    const std::size_t frames_due = frames_fast_start ? 5 : 4;
    std::vector<frame> frames;
    const auto deadline = clock_type::now() + std::chrono::milliseconds(3000);
    while (frames.size() < frames_due && clock_type::now() < deadline) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
        frame_read r = read_frame(c, std::max(left, std::chrono::milliseconds(0)));
        if (r.status == io_status::timeout) break;
        REQUIRE_MESSAGE(r.status == io_status::ok,
                        "after " << frames.size() << " frames: " << to_string(r.status));
        if (r.f.type == static_cast<std::uint8_t>(frame_type::keep_alive)) continue;
        frames.push_back(std::move(r.f));
    }
    CHECK_MESSAGE(frames.size() == frames_due, "only " << frames.size() << " of " << frames_due << " frames");
    REQUIRE(frames.size() >= (frames_fast_start ? 2u : 1u));
    if (frames_fast_start) {
        REQUIRE(is_type(frames.front(), frame_type::server_key));
        frames.erase(frames.begin());
    }
    REQUIRE_MESSAGE(is_type(frames[0], frame_type::server_info), "first frame: " << to_hex(frames[0].wire()));
    CHECK(open_server_info(frames[0], secret, server.server_public()) == std::string(R"({"version":2})"));
    std::vector<std::string> got;
    for (std::size_t i = 1; i < frames.size(); ++i) got.push_back(to_hex(frames[i].wire()));
    bytes pong(pong_frame_bytes);
    encode_pong(pong, ping);
    std::vector<std::string> want = {to_hex(pong),
                                     to_hex(peer_gone_frame(unknown, peer_gone_reason::not_here)),
                                     to_hex(recv_packet_frame(self, to_self))};
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    auto join = [](const std::vector<std::string>& v) {
        std::string out;
        for (const auto& x : v) out += x + "\n";
        return out;
    };
    CHECK(join(got) == join(want));  // Pong, PeerGone(NotHere) and the packet to itself
    expect_packet(peer, self, to_peer);
}

TEST_CASE("a WatchConns pipelined behind a mesh ClientInfo lists the watcher itself") {
    // Spec 1.4: registration (step 10) precedes the read loop, so the snapshot includes the
    // watcher's own connection even when WatchConns came in the same write as ClientInfo.
    derpd_process server(mesh_options());
    auto a = derp_client::connect(server.port(), server.server_public());
    const private_key secret = generate_private_key();
    const std::string request = upgrade_request(true);
    bytes all(request.begin(), request.end());
    const bytes info = client_info_frame(secret, server.server_public(), client_info_json(server.mesh_key()));
    all.insert(all.end(), info.begin(), info.end());
    bytes watch(watch_conns_frame_bytes);
    encode_watch_conns(watch);
    all.insert(all.end(), watch.begin(), watch.end());
    tcp_conn c = tcp_conn::connect_loopback(server.port());
    REQUIRE(c.write_all(all) == io_status::ok);
    const frame_read sk = read_frame(c);
    REQUIRE(sk.status == io_status::ok);
    REQUIRE(is_type(sk.f, frame_type::server_key));
    const frame_read si = read_frame(c);
    REQUIRE(si.status == io_status::ok);
    REQUIRE(open_server_info(si.f, secret, server.server_public()).has_value());
    std::vector<std::string> got;
    for (int i = 0; i < 2; ++i) {
        const frame_read r = read_frame(c, std::chrono::milliseconds(2000));
        if (r.status != io_status::ok) break;
        got.push_back(to_hex(r.f.wire()));
    }
    std::vector<std::string> want = {
        to_hex(peer_present_frame(a.key(), a.local_port(), peer_present_regular)),
        to_hex(peer_present_frame(public_key_of(secret), c.local_port(), peer_present_mesh_peer))};
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    REQUIRE(got.size() == 2);
    CHECK(got[0] == want[0]);
    CHECK(got[1] == want[1]);
}

TEST_CASE("Ping gets a Pong with the same 8 bytes") {
    derpd_process server;
    auto c = derp_client::connect(server.port(), server.server_public());
    const ping_data data = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    c.send_ping(data);
    const frame pong = c.expect([](const frame&) { return true; }, "Pong");
    CHECK(to_hex(pong.wire()) == "13000000080123456789abcdef");
    // A longer Ping (up to 1000 bytes) is answered with its first 8 bytes.
    bytes long_ping(frame_header_bytes + 1000);
    encode_frame_header(long_ping, frame_type::ping, 1000);
    for (std::size_t i = 0; i < 1000; ++i) long_ping[frame_header_bytes + i] = static_cast<std::uint8_t>(i);
    c.send_raw(long_ping);
    const frame pong2 = c.expect([](const frame&) { return true; }, "Pong");
    CHECK(to_hex(pong2.wire()) == "13000000080001020304050607");
}

TEST_CASE("KeepAlive arrives with -keepalive-interval") {
    derpd_process server;  // -keepalive-interval 2s: KeepAlive after 2 s plus up to 1/6 s jitter
    // The clock starts before the connection exists, so the KeepAlive (timed from the
    // registration, later) is certain to come at least 2 s after it; the upper bound only says
    // the timer was not lost (the read deadline bounds the wait).
    const auto start = clock_type::now();
    auto c = derp_client::connect(server.port(), server.server_public());
    const frame_read r = c.next(std::chrono::milliseconds(10'000), true);
    REQUIRE_MESSAGE(r.status == io_status::ok, "no KeepAlive: " << to_string(r.status));
    CHECK(to_hex(r.f.wire()) == "0600000000");
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start);
    CHECK(waited.count() >= 2000);
    CHECK(waited.count() <= 10'000);
}

TEST_CASE("2,000 idle clients: a packet still relays between two of them") {
    // Up to 100 handshakes wait while earlier ones finish one by one: a deadline that no busy
    // machine can miss.
    derpd_options options;
    options.handshake_timeout = "30s";
    derpd_process server(options);
    constexpr std::size_t clients = 2000;
    constexpr std::size_t batch = 100;  // handshakes in flight at once, within the listen backlog
    std::vector<derp_client> all;
    all.reserve(clients);
    for (std::size_t done = 0; done < clients; done += batch) {
        for (std::size_t i = 0; i < batch; ++i)
            all.push_back(derp_client::begin(server.port(), server.server_public()));
        for (std::size_t i = done; i < done + batch; ++i) all[i].finish();
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));  // idle, as the brief asks; not an assertion
    derp_client& first = all.front();
    derp_client& last = all.back();
    first.send_packet(last.key(), pattern(1200, 1));
    expect_packet(last, first.key(), pattern(1200, 1));
    last.send_packet(first.key(), pattern(1200, 2));
    expect_packet(first, last.key(), pattern(1200, 2));
    derp_client& mid = all[clients / 2 + 1];
    mid.send_packet(all[7].key(), pattern(33, 3));
    expect_packet(all[7], mid.key(), pattern(33, 3));
    CHECK(server.running());
}
