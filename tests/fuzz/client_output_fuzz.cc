// libFuzzer target for core/client_output: the input is a program of operations on one client's
// output (enqueue a packet of a size and kind, push a control frame, answer a Ping, a send of some
// size, the relay opening, the connection ending). After every send the bytes written so far must
// parse as whole server frames in a legal order (ServerKey, ServerInfo, then anything) with every
// packet intact; packets of one kind arrive in the order queued; a packet counts as sent exactly
// when its last byte is written; at the end every packet was sent or dropped once and every
// transfer buffer was released once.
#include <cstdint>
#include <cstdio>
#include <span>
#include <vector>

#include "core/assert.hh"
#include "tests/support/output_harness.hh"

namespace {

using namespace derp;
using namespace derp::test;

class program {
public:
    program(const std::uint8_t* data, std::size_t size) : _data(data), _size(size) {}
    bool done() const noexcept { return _at >= _size; }
    std::uint8_t next() noexcept { return _at < _size ? _data[_at++] : 0; }

private:
    const std::uint8_t* _data;
    std::size_t _size;
    std::size_t _at = 0;
};

struct checked_client {
    frame_store store;
    recorder events{store};
    client_output out;
    stream_parser stream;
    std::uint64_t next_id = 1;
    std::vector<packet_kind> kind_of = {packet_kind::other};  // by id

    checked_client(std::uint32_t depth, std::uint32_t staged_max) : out(depth, staged_max) {}

    void send(std::size_t n) {
        std::vector<std::uint8_t> buffer(n);
        const auto w = out.write(buffer, events);
        DERP_ASSERT(w.bytes <= n);
        if (!stream.feed(std::span(buffer).first(w.bytes))) {
            std::fprintf(stderr, "client_output stream: %s\n", stream.error().c_str());
            DERP_ASSERT(false);
        }
        // Sent exactly when whole: the parser saw as many packets as the output reported.
        DERP_ASSERT(stream.packet_ids == events.sent_ids);
        // Pending means progress, given room for the smallest frame that waits whole (a Pong).
        DERP_ASSERT(!(w.bytes == 0 && n >= pong_frame_bytes && out.pending()));
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    program p(data, size);
    const std::uint32_t depth = 2 + p.next() % 8;
    const std::uint32_t staged_max = 256 + 64u * p.next();
    checked_client c(depth, staged_max);
    if (p.next() & 1) c.out.push_http("HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\r\n");
    c.out.push_frames(server_key_frame());
    c.out.hold_frames();
    bool ended = false;
    while (!p.done() && !ended) {
        const std::uint8_t op = p.next();
        switch (op % 7) {
        case 0:
        case 1: {  // a packet: kind from the op, size from the next byte (0..about 4 KiB)
            const auto kind = (op & 0x80) ? packet_kind::disco : packet_kind::other;
            const std::size_t bytes = std::size_t{p.next()} * 16 + (op >> 3 & 0x0f);
            c.kind_of.push_back(kind);
            // The shard's staging room: none, a little, or unbounded (op's bits 4..5).
            const std::size_t room = (op >> 4 & 3) == 0 ? 0 : (op >> 4 & 3) == 1 ? 2048 : SIZE_MAX;
            c.out.enqueue(c.store.make(c.next_id++, bytes), kind, c.events, room);
            break;
        }
        case 2:
            if (op & 0x80) c.out.push_frames(keep_alive_frame());
            else c.out.push_frames(peer_gone_frame_of(p.next()));
            break;
        case 3:
            if (!c.out.pong_pending()) c.out.set_pong({op, 1, 2, 3, 4, 5, 6, 7});
            break;
        case 4:
        case 5:
            c.send(std::size_t{p.next()} * ((op & 0x80) ? 64u : 1u));
            break;
        case 6:
            if (!c.out.relay_open()) c.out.open_relay(server_info_frame());
            else if (op & 0x80) ended = true;
            break;
        }
    }
    if (ended) {
        c.out.drop_all(drop_reason::gone_disconnected, c.events);
        DERP_ASSERT(c.out.queued_packets() == 0 && c.out.staged_bytes() == 0);
    } else {
        if (!c.out.relay_open()) c.out.open_relay(server_info_frame());
        for (int i = 0; i < 100'000 && c.out.pending(); ++i) c.send(1 + static_cast<std::size_t>(i % 3000));
        DERP_ASSERT(!c.out.pending());
        DERP_ASSERT(c.stream.whole());
        // ServerKey, then ServerInfo, whatever happened before the relay opened.
        DERP_ASSERT(c.stream.frames.size() >= 2);
        DERP_ASSERT(c.stream.frames[0].type == static_cast<std::uint8_t>(frame_type::server_key));
        DERP_ASSERT(c.stream.frames[1].type == static_cast<std::uint8_t>(frame_type::server_info));
    }
    // Packets of one kind in the order queued (drops only remove).
    std::vector<std::uint64_t> last = {0, 0};
    for (std::uint64_t id : c.stream.packet_ids) {
        auto& l = last[static_cast<std::size_t>(c.kind_of[id])];
        DERP_ASSERT(id > l);
        l = id;
    }
    // Every packet sent or dropped exactly once; every buffer back.
    DERP_ASSERT(c.events.sent_ids.size() + c.events.drops.size() == c.next_id - 1);
    DERP_ASSERT(c.store.live() == 0);
    return 0;
}
