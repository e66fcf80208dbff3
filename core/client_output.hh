// The bytes one DERP client is sent, as a pure object (no I/O, no clock): it owns every source
// of a connection's output and states once the order in which they reach the socket. The
// service feeds it (HTTP answers, control frames, a Pong, RecvPacket frames for the two packet
// queues) and asks it to fill a send buffer; io_uring, TLS and counters stay outside.
//
// The sources, and the rule between them:
//  - control: HTTP bytes before the DERP stream (the 101, plain answers, /debug/traffic lines)
//    and server frames other than RecvPacket (ServerKey, ServerInfo, KeepAlive, PeerGone,
//    PeerPresent, Pong), in the order pushed;
//  - held: frames pushed while the client's registration is pending; ServerInfo must be the
//    first frame after ServerKey (spec 1.4), so they follow it when the relay opens;
//  - two packet queues (disco and other, queue_depth_max each, drop-oldest as derper's, spec
//    2.5), taken in turn with no priority, as derper does;
//  - staging: whole frames moved out of a full queue while a send was in flight (derper's
//    writer drains its queue while the socket write runs; ours waits for the completion), the
//    oldest packet data there is, bounded by staged_bytes_max and by the room the caller
//    grants per enqueue (derpd: less while the client's send waits for it to read).
//  Order: the unit that the last send stopped inside (a queue's head frame, staging or
//  control) finishes first, so frames never interleave; then control (before the relay opens
//  nothing else may go, and when it opens control starts with ServerInfo, so no RecvPacket
//  precedes it); then a pending Pong, staging (the oldest packets), and the queues in turn. A packet counts as sent when its last byte is handed to the send buffer.
//  Debug builds check every byte that leaves against that rule (output_stream_checker).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/drop_reason.hh"
#include "core/frame.hh"
#include "core/key.hh"

namespace derp {

// A RecvPacket frame waiting for a client. Its bytes live in a transfer buffer that the service
// owns; buffer_index, owner and size_class say whose it is, for the service (opaque here).
struct queued_frame {
    const std::uint8_t* data = nullptr;
    std::uint32_t frame_bytes = 0;
    std::uint32_t buffer_index = 0;
    std::uint16_t owner = 0;
    std::uint8_t size_class = 0;
    std::uint64_t enqueued_ns = 0;
};

// What the output tells its owner, at the moment it happens.
class output_events {
public:
    // The frame's transfer buffer is no longer needed (copied out, or dropped): recycle it.
    virtual void release(const queued_frame& frame) noexcept = 0;
    // A whole RecvPacket frame from src was handed to the send buffer (derper counts a write).
    virtual void sent(const node_key& src, std::size_t packet_bytes, std::uint64_t enqueued_ns) noexcept = 0;
    // A packet was dropped before it was written.
    virtual void dropped(drop_reason reason, packet_kind kind, std::size_t packet_bytes,
                         std::uint64_t enqueued_ns) noexcept = 0;

protected:
    ~output_events() = default;
};

// Follows a server-to-client byte stream and says whether it is legal: an HTTP head (or none,
// for fast start) and then whole frames of server types, ServerKey first, ServerInfo second,
// lengths within bounds. Only frame headers are looked at. Used by client_output in debug builds,
// by its unit test and by its fuzz target.
class output_stream_checker {
public:
    // Everything fed so far was HTTP (no DERP stream yet); the DERP stream starts at `offset`.
    void frames_start_at(std::uint64_t offset) noexcept;
    // Feeds the next bytes of the stream; false (and a reason) at the first violation.
    bool feed(std::span<const std::uint8_t> bytes) noexcept;
    bool at_frame_boundary() const noexcept { return _header_have == 0 && _payload_left == 0; }
    std::uint64_t frames_seen() const noexcept { return _frames; }
    std::string_view error() const noexcept { return _error; }

private:
    bool fail(std::string_view why) noexcept;
    std::optional<std::uint64_t> _frames_from;  // stream offset of the first frame
    std::uint64_t _offset = 0;
    std::array<std::uint8_t, frame_header_bytes> _header{};
    std::size_t _header_have = 0;
    std::uint64_t _payload_left = 0;
    std::uint64_t _frames = 0;
    std::string_view _error;
};

class client_output {
public:
    client_output(std::uint32_t queue_depth_max, std::uint32_t staged_bytes_max) noexcept;
    client_output() noexcept : client_output(32, 64 * 1024) {}
    client_output(client_output&&) noexcept = default;
    client_output& operator=(client_output&&) noexcept = default;

    // Bytes of HTTP: answers before (or instead of) the DERP stream, the 101, /debug/traffic.
    void push_http(std::string_view text);
    // All HTTP bytes pushed so far (what precedes the first frame).
    std::uint64_t http_bytes() const noexcept { return _http_bytes; }
    // Whole server frames other than RecvPacket. ServerKey goes at once; any other frame waits
    // while the client's registration is pending (hold_frames) for ServerInfo to go first.
    void push_frames(std::span<const std::uint8_t> frames);
    // The registration is pending: frames pushed from now on wait for open_relay.
    void hold_frames() noexcept { _holding = true; }
    // ServerInfo is ready: it goes out before every frame held, and packets may flow.
    void open_relay(std::span<const std::uint8_t> server_info);
    bool relay_open() const noexcept { return _relay; }
    // A Ping's answer; only the latest unanswered one is kept (derper answers one at a time).
    bool pong_pending() const noexcept { return _pong.has_value(); }
    void set_pong(const ping_data& data) noexcept { _pong = data; }

    bool queue_full(packet_kind kind) const noexcept;
    // Queues a RecvPacket frame. A full queue first moves its frames (and the rest of a frame
    // begun in the last send) into staging, within staged_bytes_max; if it is still full the
    // oldest packet goes (queue_head). False when a packet was dropped. staged_room_bytes: what
    // whole frames may add to staging now (the shard's staging ceiling less what every client
    // stages; the rest of a frame begun in the last send moves regardless, as it must).
    bool enqueue(const queued_frame& frame, packet_kind kind, output_events& events,
                 std::size_t staged_room_bytes = SIZE_MAX);
    // Drops every packet not yet written (queued or staged): the connection is gone.
    void drop_all(drop_reason reason, output_events& events) noexcept;

    struct write_result {
        std::size_t bytes = 0;
        std::uint32_t packets = 0;  // whole RecvPacket frames completed by this write
        bool pong = false;          // a Pong went into the output
    };
    // Fills out with what may go now, in the order above.
    write_result write(std::span<std::uint8_t> out, output_events& events) noexcept;
    // Something could be written now (before the relay opens, only control counts).
    bool pending() const noexcept;
    std::uint32_t queued_packets() const noexcept { return _queues[0].count + _queues[1].count; }
    std::size_t staged_bytes() const noexcept { return _staged.size() - _staged_sent; }

private:
    struct frame_queue {
        std::vector<queued_frame> ring;  // capacity queue_depth_max, allocated on first use
        std::uint32_t head = 0;
        std::uint32_t count = 0;
    };
    // A frame in the staging buffer: where it ends there, for counting it as sent then.
    struct staged_frame {
        std::size_t end = 0;  // offset in _staged just past its last byte
        node_key src;
        std::uint32_t packet_bytes = 0;
        packet_kind kind = packet_kind::other;
        std::uint64_t enqueued_ns = 0;
    };
    // The unit the last send stopped inside, which must finish before anything else.
    enum class unit : std::uint8_t { none, control, staged, queue0, queue1 };

    const queued_frame& head_of(std::size_t q) const noexcept { return _queues[q].ring[_queues[q].head]; }
    void pop(std::size_t q) noexcept;
    void stage(const std::uint8_t* begin, const std::uint8_t* end, const queued_frame& frame, packet_kind kind);
    void compact_staged() noexcept;
    bool drain_control(std::span<std::uint8_t> out, std::size_t& n) noexcept;
    bool drain_staged(std::span<std::uint8_t> out, std::size_t& n, write_result& result, output_events& events) noexcept;
    bool drain_queue_head(std::size_t q, std::span<std::uint8_t> out, std::size_t& n, write_result& result,
                          output_events& events) noexcept;
    void check_stream(std::span<const std::uint8_t> bytes) noexcept;

    std::uint32_t _queue_depth_max;
    std::uint32_t _staged_bytes_max;
    bool _holding = false;
    bool _relay = false;
    unit _partial = unit::none;
    std::optional<ping_data> _pong;
    std::string _control;
    std::size_t _control_sent = 0;
    std::string _held;
    std::array<frame_queue, 2> _queues;  // by packet_kind
    std::uint8_t _next_queue = 0;
    std::uint32_t _head_sent = 0;  // bytes of the partial queue head already written
    std::vector<std::uint8_t> _staged;
    std::size_t _staged_sent = 0;
    // Frames in _staged not yet wholly written, oldest first from _staged_frames_head (a vector,
    // not a deque: libstdc++'s deque allocates on construction, and idle clients must not).
    std::vector<staged_frame> _staged_frames;
    std::size_t _staged_frames_head = 0;
    std::uint64_t _http_bytes = 0;  // HTTP pushed before the first frame: where the checker starts
#ifndef NDEBUG
    output_stream_checker _checker;
#endif
};

}  // namespace derp
