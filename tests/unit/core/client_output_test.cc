// Unit tests of core/client_output: the order of one client's bytes. Each case that broke the
// stream in the service before the output became its own room has a case here (a control frame
// cut at the end of a send overtaken by staging; packets before ServerInfo; staged packets
// counted as sent before they were), plus the queue rules (turns, drop-oldest, staging bound).
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "tests/support/output_harness.hh"

namespace {

using namespace derp;
using namespace derp::test;

constexpr std::uint32_t depth = 4;
constexpr std::uint32_t staged_max = 8 * 1024;

// An output that has sent its ServerKey and is registered (relay open unless told otherwise).
struct fixture {
    frame_store store;
    recorder events{store};
    client_output out{depth, staged_max};
    stream_parser stream;
    std::uint64_t next_id = 1;

    explicit fixture(bool open = true) {
        out.push_http("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\r\n");
        out.push_frames(server_key_frame());
        out.hold_frames();
        if (open) out.open_relay(server_info_frame());
    }
    bool enqueue(packet_kind kind, std::size_t bytes = 1000) {
        return out.enqueue(store.make(next_id++, bytes), kind, events);
    }
    // One send of at most n bytes; the bytes go through the parser.
    std::size_t write(std::size_t n) {
        std::vector<std::uint8_t> buffer(n);
        const auto w = out.write(buffer, events);
        REQUIRE_MESSAGE(stream.feed(std::span(buffer).first(w.bytes)), stream.error());
        return w.bytes;
    }
    void write_all() {
        for (int i = 0; i < 10'000 && out.pending(); ++i) write(1500);
        REQUIRE(!out.pending());
        REQUIRE(stream.whole());
    }
    std::vector<std::uint8_t> types() const {
        std::vector<std::uint8_t> t;
        for (const auto& f : stream.frames) t.push_back(f.type);
        return t;
    }
};

constexpr auto t_key = static_cast<std::uint8_t>(frame_type::server_key);
constexpr auto t_info = static_cast<std::uint8_t>(frame_type::server_info);
constexpr auto t_recv = static_cast<std::uint8_t>(frame_type::recv_packet);
constexpr auto t_gone = static_cast<std::uint8_t>(frame_type::peer_gone);
constexpr auto t_keep = static_cast<std::uint8_t>(frame_type::keep_alive);

}  // namespace

TEST_CASE("client_output: a control frame cut at the end of a send finishes before staged packets") {
    fixture f;
    f.write_all();
    f.out.push_frames(peer_gone_frame_of(7));
    f.write(10);  // PeerGone is 38 bytes: the send stops inside it
    // The queue fills while that send is in flight: packets move to staging.
    for (std::uint32_t i = 0; i < depth + 3; ++i) f.enqueue(packet_kind::other);
    CHECK(f.out.staged_bytes() > 0);
    f.write_all();
    const std::vector<std::uint8_t> want_prefix = {t_key, t_info, t_gone};
    const auto types = f.types();
    REQUIRE(types.size() == 3 + depth + 3);
    CHECK(std::equal(want_prefix.begin(), want_prefix.end(), types.begin()));
    CHECK(std::all_of(types.begin() + 3, types.end(), [](std::uint8_t t) { return t == t_recv; }));
    CHECK(f.stream.packet_ids == f.events.sent_ids);
}

TEST_CASE("client_output: no packet, staged or queued, before ServerInfo") {
    fixture f(false);
    f.write_all();  // only the 101 and ServerKey may go
    CHECK(f.types() == std::vector<std::uint8_t>{t_key});
    // Packets and a held control frame arrive while registering; the queue overflows into staging.
    f.out.push_frames(keep_alive_frame());
    for (std::uint32_t i = 0; i < depth + 2; ++i) f.enqueue(packet_kind::disco, 200);
    CHECK(f.out.staged_bytes() > 0);
    CHECK(!f.out.pending());
    std::vector<std::uint8_t> buffer(4096);
    CHECK(f.out.write(buffer, f.events).bytes == 0);
    CHECK(f.events.sent_ids.empty());
    f.out.open_relay(server_info_frame());
    f.write_all();
    const auto types = f.types();
    REQUIRE(types.size() >= 3);
    CHECK(types[1] == t_info);  // ServerInfo first after ServerKey (spec 1.4)
    CHECK(types[2] == t_keep);  // then what was held
    CHECK(f.stream.packet_ids.size() == depth + 2);
}

TEST_CASE("client_output: staged packets count as sent when written, not when staged") {
    fixture f;
    f.write_all();
    f.enqueue(packet_kind::other);
    f.write(100);  // a frame begun: the send stops inside it
    for (std::uint32_t i = 0; i < depth + 1; ++i) f.enqueue(packet_kind::other);
    CHECK(f.out.staged_bytes() > 0);
    CHECK(f.events.sent_ids.empty());  // staged, not written
    f.write(950);  // the rest of the first frame (1037 bytes) and part of the next
    CHECK(f.events.sent_ids == std::vector<std::uint64_t>{1});
    f.write_all();
    CHECK(f.events.sent_ids.size() == depth + 2);
    CHECK(f.stream.packet_ids == f.events.sent_ids);
    CHECK(f.events.drops.empty());
    CHECK(f.store.live() == 0);
}

TEST_CASE("client_output: a queue frame cut at the end of a send moves to staging first") {
    fixture f;
    f.write_all();
    for (std::uint32_t i = 0; i < depth; ++i) f.enqueue(packet_kind::other);
    f.write(500);  // inside packet 1
    f.enqueue(packet_kind::other);  // full: packet 1's rest, then the oldest, go to staging
    f.write_all();
    CHECK(f.stream.packet_ids == std::vector<std::uint64_t>{1, 2, 3, 4, 5});
}

TEST_CASE("client_output: no staging room (the shard's ceiling) drops the oldest instead of staging it") {
    fixture f;
    f.write_all();
    for (std::uint32_t i = 0; i < depth; ++i) f.enqueue(packet_kind::other);
    // The queue is full and staging has no room: the oldest whole packet goes at once.
    CHECK_FALSE(f.out.enqueue(f.store.make(f.next_id++, 1000), packet_kind::other, f.events, 0));
    CHECK(f.out.staged_bytes() == 0);
    REQUIRE(f.events.drops.size() == 1);
    f.write_all();
    CHECK(f.stream.packet_ids.front() == 2);
    // A frame begun in the last send still moves, room or not (its rest must go next), and
    // that frees the slot the new packet needs.
    for (std::uint32_t i = 0; i < depth; ++i) f.enqueue(packet_kind::other);
    f.write(500);
    CHECK(f.out.enqueue(f.store.make(f.next_id++, 1000), packet_kind::other, f.events, 0));
    CHECK(f.out.staged_bytes() == 1037 - 500);  // the 1,000 + 37-byte frame less what was sent
    f.write_all();
    CHECK(f.store.live() == 0);
}

TEST_CASE("client_output: queues are taken in turn; a full queue beyond staging drops its oldest") {
    fixture f;
    f.write_all();
    f.enqueue(packet_kind::disco);   // 1
    f.enqueue(packet_kind::disco);   // 2
    f.enqueue(packet_kind::other);   // 3
    f.enqueue(packet_kind::other);   // 4
    f.write_all();
    CHECK(f.stream.packet_ids == std::vector<std::uint64_t>{1, 3, 2, 4});

    // Staging holds at most staged_max bytes: with 4 KiB packets two fit, the rest drops.
    fixture g;
    g.write_all();
    for (int i = 0; i < 12; ++i) g.enqueue(packet_kind::other, 4000);
    CHECK(g.out.staged_bytes() <= staged_max);
    CHECK(!g.events.drops.empty());
    CHECK(std::all_of(g.events.drops.begin(), g.events.drops.end(),
                      [](drop_reason r) { return r == drop_reason::queue_head; }));
    g.write_all();
    CHECK(g.stream.packet_ids.size() + g.events.drops.size() == 12);
    CHECK(std::is_sorted(g.stream.packet_ids.begin(), g.stream.packet_ids.end()));
    CHECK(g.stream.packet_ids.back() == 12);  // the newest survives (drop-oldest)
    CHECK(g.store.live() == 0);
}

TEST_CASE("client_output: a Pong goes out only whole and only after ServerInfo") {
    fixture f(false);
    f.out.set_pong({1, 2, 3, 4, 5, 6, 7, 8});
    f.write_all();
    CHECK(f.types() == std::vector<std::uint8_t>{t_key});
    f.out.open_relay(server_info_frame());
    f.write(20);  // inside ServerInfo: the Pong must wait behind it, whole
    f.write_all();
    const auto types = f.types();
    REQUIRE(types.size() == 3);
    CHECK(types[2] == static_cast<std::uint8_t>(frame_type::pong));
}

TEST_CASE("client_output: drop_all drops queued and staged packets once and releases every buffer") {
    fixture f;
    f.write_all();
    f.enqueue(packet_kind::other);
    f.write(300);
    for (std::uint32_t i = 0; i < depth + 2; ++i) f.enqueue(packet_kind::other);
    f.enqueue(packet_kind::disco);
    f.out.drop_all(drop_reason::gone_disconnected, f.events);
    CHECK(f.store.live() == 0);
    CHECK(f.events.sent_ids.size() + f.events.drops.size() == f.next_id - 1);
    CHECK(f.out.queued_packets() == 0);
    CHECK(f.out.staged_bytes() == 0);
}

TEST_CASE("output_stream_checker: refuses what the server must never send") {
    SUBCASE("a packet before ServerInfo") {
        output_stream_checker c;
        c.frames_start_at(0);
        frame_store store;
        const auto key = server_key_frame();
        const auto packet = store.make(1, 10);
        CHECK(c.feed(key));
        CHECK(!c.feed(std::span(packet.data, packet.frame_bytes)));
    }
    SUBCASE("a frame cut by another") {
        output_stream_checker c;
        c.frames_start_at(0);
        const auto key = server_key_frame();
        const auto info = server_info_frame();
        CHECK(c.feed(key));
        CHECK(c.feed(std::span(info).first(10)));
        const auto gone = peer_gone_frame_of(1);
        // PeerGone's bytes inside ServerInfo's payload read as payload; the stream then
        // continues in the wrong place, where the header is not one the server sends.
        CHECK(c.feed(gone));
        CHECK(!c.feed(std::span(info).subspan(10)));
    }
    SUBCASE("HTTP before the frames is skipped") {
        output_stream_checker c;
        const std::string head = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
        c.frames_start_at(head.size());
        CHECK(c.feed({reinterpret_cast<const std::uint8_t*>(head.data()), head.size()}));
        CHECK(c.feed(server_key_frame()));
        CHECK(c.feed(server_info_frame()));
        CHECK(c.at_frame_boundary());
        CHECK(c.frames_seen() == 2);
    }
}
