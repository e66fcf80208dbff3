// One client's output: see client_output.hh for the sources and the order between them.
#include "core/client_output.hh"

#include <algorithm>
#include <cstring>

#include "core/assert.hh"

namespace derp {

namespace {

// Server-to-client frame types and the payload bounds derpd ever writes.
bool server_frame_ok(std::uint8_t type, std::uint64_t payload_bytes) noexcept {
    switch (static_cast<frame_type>(type)) {
    case frame_type::server_key: return payload_bytes >= 8 + key_bytes && payload_bytes <= server_key_payload_bytes_max;
    case frame_type::server_info: return payload_bytes >= nonce_bytes && payload_bytes <= client_frame_payload_bytes_max;
    case frame_type::recv_packet: return payload_bytes >= key_bytes && payload_bytes <= key_bytes + packet_bytes_max;
    case frame_type::keep_alive: return payload_bytes == 0;
    case frame_type::peer_gone: return payload_bytes == key_bytes + 1;
    case frame_type::peer_present: return payload_bytes == peer_present_payload_bytes;
    case frame_type::ping:
    case frame_type::pong: return payload_bytes == ping_data_bytes;
    case frame_type::health: return payload_bytes <= client_frame_payload_bytes_max;
    case frame_type::restarting: return payload_bytes == 8;
    default: return false;
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// output_stream_checker

void output_stream_checker::frames_start_at(std::uint64_t offset) noexcept {
    if (!_frames_from) _frames_from = offset;
}

bool output_stream_checker::fail(std::string_view why) noexcept {
    if (_error.empty()) _error = why;
    return false;
}

bool output_stream_checker::feed(std::span<const std::uint8_t> bytes) noexcept {
    if (!_error.empty()) return false;
    std::size_t i = 0;
    if (!_frames_from || _offset + bytes.size() <= *_frames_from) {
        _offset += bytes.size();
        return true;  // HTTP only so far
    }
    if (_offset < *_frames_from) i = static_cast<std::size_t>(*_frames_from - _offset);
    while (i < bytes.size()) {
        if (_payload_left > 0) {
            const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(_payload_left, bytes.size() - i));
            _payload_left -= take;
            i += take;
            continue;
        }
        _header[_header_have++] = bytes[i++];
        if (_header_have < frame_header_bytes) continue;
        _header_have = 0;
        const frame_header header = *parse_frame_header(_header);  // five bytes: always a header
        const auto type = static_cast<std::uint8_t>(header.type);
        const std::uint64_t length = header.payload_bytes;
        if (!server_frame_ok(type, length)) return fail("a frame of a type or length the server never sends");
        if (_frames == 0 && type != static_cast<std::uint8_t>(frame_type::server_key))
            return fail("the first frame is not ServerKey");
        if (_frames == 1 && type != static_cast<std::uint8_t>(frame_type::server_info))
            return fail("the frame after ServerKey is not ServerInfo (spec 1.4)");
        if (_frames > 0 && type == static_cast<std::uint8_t>(frame_type::server_key))
            return fail("a second ServerKey");
        ++_frames;
        _payload_left = length;
    }
    _offset += bytes.size();
    return true;
}

// ---------------------------------------------------------------------------------------------
// client_output

client_output::client_output(std::uint32_t queue_depth_max, std::uint32_t staged_bytes_max) noexcept
    : _queue_depth_max(queue_depth_max), _staged_bytes_max(staged_bytes_max) {
    DERP_ASSERT(queue_depth_max >= 2);
}

void client_output::push_http(std::string_view text) {
    _control.append(text);
    _http_bytes += text.size();
}

void client_output::push_frames(std::span<const std::uint8_t> frames) {
#ifndef NDEBUG
    _checker.frames_start_at(_http_bytes);  // all HTTP precedes the first frame
#endif
    const auto* p = reinterpret_cast<const char*>(frames.data());
    if (_holding && !_relay) {
        _held.append(p, frames.size());
        return;
    }
    _control.append(p, frames.size());
}

void client_output::open_relay(std::span<const std::uint8_t> server_info) {
    DERP_ASSERT(!_relay);
    _relay = true;
    _holding = false;
    _control.append(reinterpret_cast<const char*>(server_info.data()), server_info.size());
    _control += _held;
    std::string().swap(_held);
}

bool client_output::queue_full(packet_kind kind) const noexcept {
    return _queues[static_cast<std::size_t>(kind)].count == _queue_depth_max;
}

void client_output::pop(std::size_t q) noexcept {
    frame_queue& fq = _queues[q];
    fq.head = (fq.head + 1) % _queue_depth_max;
    --fq.count;
}

void client_output::compact_staged() noexcept {
    // Keep only unsent bytes (at most staged_bytes_max plus one frame), however long the
    // receiver stays behind.
    if (_staged_sent == 0) return;
    _staged.erase(_staged.begin(), _staged.begin() + static_cast<std::ptrdiff_t>(_staged_sent));
    _staged_frames.erase(_staged_frames.begin(), _staged_frames.begin() + static_cast<std::ptrdiff_t>(_staged_frames_head));
    _staged_frames_head = 0;
    for (staged_frame& f : _staged_frames) f.end -= _staged_sent;
    _staged_sent = 0;
}

void client_output::stage(const std::uint8_t* begin, const std::uint8_t* end, const queued_frame& frame,
                          packet_kind kind) {
    _staged.insert(_staged.end(), begin, end);
    staged_frame s;
    s.end = _staged.size();
    s.src = node_key(key_span(frame.data + frame_header_bytes, key_bytes));
    s.packet_bytes = frame.frame_bytes - static_cast<std::uint32_t>(recv_packet_header_bytes);
    s.kind = kind;
    s.enqueued_ns = frame.enqueued_ns;
    _staged_frames.push_back(s);
}

bool client_output::enqueue(const queued_frame& frame, packet_kind kind, output_events& events,
                            std::size_t staged_room_bytes) {
    DERP_ASSERT(frame.frame_bytes >= recv_packet_header_bytes);
    const auto k = static_cast<std::size_t>(kind);
    frame_queue& q = _queues[k];
    if (q.ring.empty()) q.ring.resize(_queue_depth_max);
    if (q.count == _queue_depth_max) {
        compact_staged();
        // The rest of a frame begun in the last send moves first: the next send starts with
        // the staging buffer, and nothing may come between a frame's parts.
        if (_partial == unit::queue0 || _partial == unit::queue1) {
            const std::size_t pq = _partial == unit::queue0 ? 0 : 1;
            DERP_ASSERT(_staged.empty());  // staging is written out before any queue
            const queued_frame& f = head_of(pq);
            stage(f.data + _head_sent, f.data + f.frame_bytes, f, static_cast<packet_kind>(pq));
            events.release(f);
            pop(pq);
            _head_sent = 0;
            _partial = unit::staged;
        }
        std::uint32_t moved = 0;
        std::size_t added = 0;
        while (q.count > 0 && moved < _queue_depth_max / 2) {
            const queued_frame& oldest = head_of(k);
            if (_staged.size() + oldest.frame_bytes > _staged_bytes_max) break;
            if (added + oldest.frame_bytes > staged_room_bytes) break;
            added += oldest.frame_bytes;
            stage(oldest.data, oldest.data + oldest.frame_bytes, oldest, kind);
            events.release(oldest);
            pop(k);
            ++moved;
        }
    }
    bool kept_all = true;
    if (q.count == _queue_depth_max) {
        // Still full: the oldest packet goes (spec 2.5). It cannot be partly written: a frame
        // begun in the last send was moved to staging above.
        const queued_frame& oldest = head_of(k);
        events.dropped(drop_reason::queue_head, kind, oldest.frame_bytes - recv_packet_header_bytes, oldest.enqueued_ns);
        events.release(oldest);
        pop(k);
        kept_all = false;
    }
    q.ring[(q.head + q.count) % _queue_depth_max] = frame;
    ++q.count;
    return kept_all;
}

void client_output::drop_all(drop_reason reason, output_events& events) noexcept {
    for (std::size_t k = 0; k < _queues.size(); ++k) {
        while (_queues[k].count > 0) {
            const queued_frame& f = head_of(k);
            events.dropped(reason, static_cast<packet_kind>(k), f.frame_bytes - recv_packet_header_bytes, f.enqueued_ns);
            events.release(f);
            pop(k);
        }
    }
    for (std::size_t i = _staged_frames_head; i < _staged_frames.size(); ++i) {
        const staged_frame& f = _staged_frames[i];
        events.dropped(reason, f.kind, f.packet_bytes, f.enqueued_ns);
    }
    std::vector<staged_frame>().swap(_staged_frames);
    _staged_frames_head = 0;
    std::vector<std::uint8_t>().swap(_staged);
    _staged_sent = 0;
    _head_sent = 0;
    if (_partial != unit::control) _partial = unit::none;
}

bool client_output::drain_control(std::span<std::uint8_t> out, std::size_t& n) noexcept {
    const std::size_t take = std::min(out.size() - n, _control.size() - _control_sent);
    if (take > 0) std::memcpy(out.data() + n, _control.data() + _control_sent, take);
    n += take;
    _control_sent += take;
    if (_control_sent < _control.size()) {
        _partial = unit::control;
        return false;
    }
    _control.clear();
    _control.shrink_to_fit();  // an idle connection keeps no output memory
    _control_sent = 0;
    _partial = unit::none;
    return true;
}

bool client_output::drain_staged(std::span<std::uint8_t> out, std::size_t& n, write_result& result,
                                 output_events& events) noexcept {
    const std::size_t take = std::min(out.size() - n, _staged.size() - _staged_sent);
    if (take > 0) std::memcpy(out.data() + n, _staged.data() + _staged_sent, take);
    n += take;
    _staged_sent += take;
    while (_staged_frames_head < _staged_frames.size() && _staged_frames[_staged_frames_head].end <= _staged_sent) {
        const staged_frame& f = _staged_frames[_staged_frames_head++];
        events.sent(f.src, f.packet_bytes, f.enqueued_ns);
        ++result.packets;
    }
    if (_staged_sent < _staged.size()) {
        _partial = unit::staged;
        return false;
    }
    DERP_ASSERT(_staged_frames_head == _staged_frames.size());  // staging holds whole frames
    _staged.clear();
    _staged_sent = 0;
    _staged_frames.clear();
    _staged_frames_head = 0;
    if (_staged.capacity() > 2 * std::size_t{_staged_bytes_max}) {
        std::vector<std::uint8_t>().swap(_staged);
        std::vector<staged_frame>().swap(_staged_frames);
    }
    _partial = unit::none;
    return true;
}

bool client_output::drain_queue_head(std::size_t q, std::span<std::uint8_t> out, std::size_t& n,
                                     write_result& result, output_events& events) noexcept {
    const queued_frame& f = head_of(q);
    const std::size_t take = std::min<std::size_t>(out.size() - n, f.frame_bytes - _head_sent);
    if (take > 0) std::memcpy(out.data() + n, f.data + _head_sent, take);  // out may be empty
    n += take;
    _head_sent += static_cast<std::uint32_t>(take);
    if (_head_sent < f.frame_bytes) {
        _partial = q == 0 ? unit::queue0 : unit::queue1;
        return false;
    }
    // Whole frame handed to the send buffer.
    _head_sent = 0;
    _partial = unit::none;
    events.sent(node_key(key_span(f.data + frame_header_bytes, key_bytes)),
                f.frame_bytes - recv_packet_header_bytes, f.enqueued_ns);
    ++result.packets;
    events.release(f);
    pop(q);
    return true;
}

client_output::write_result client_output::write(std::span<std::uint8_t> out, output_events& events) noexcept {
    write_result result;
    std::size_t n = 0;
    auto finish = [&]() {
        result.bytes = n;
        check_stream(out.first(n));
        return result;
    };
    // The unit the last send stopped inside goes first: frames never interleave.
    switch (_partial) {
    case unit::none: break;
    case unit::control:
        if (!drain_control(out, n)) return finish();
        break;
    case unit::staged:
        if (!drain_staged(out, n, result, events)) return finish();
        break;
    case unit::queue0:
    case unit::queue1:
        if (!drain_queue_head(_partial == unit::queue0 ? 0 : 1, out, n, result, events)) return finish();
        break;
    }
    // Control next: before the relay opens it is all that may go, and when it opens it starts
    // with ServerInfo, which must precede every packet (spec 1.4).
    if (_control_sent < _control.size() && !drain_control(out, n)) return finish();
    if (_relay && _pong && n + pong_frame_bytes <= out.size()) {
        std::array<std::uint8_t, pong_frame_bytes> frame{};
        encode_pong(frame, *_pong);
        _control.append(reinterpret_cast<const char*>(frame.data()), frame.size());
        _pong.reset();
        result.pong = true;
        if (!drain_control(out, n)) return finish();
    }
    // Staging holds the oldest packets: before the queues.
    if (_relay && _staged_sent < _staged.size() && !drain_staged(out, n, result, events)) return finish();
    if (_relay) {
        while (n < out.size()) {
            std::size_t which;
            if (_queues[_next_queue].count > 0) which = _next_queue;
            else if (_queues[_next_queue ^ 1].count > 0) which = _next_queue ^ 1u;
            else break;
            _next_queue ^= 1;  // the two queues in turn: no priority, as in derper
            if (!drain_queue_head(which, out, n, result, events)) break;
        }
    }
    return finish();
}

bool client_output::pending() const noexcept {
    if (_control_sent < _control.size()) return true;
    if (_partial != unit::none && _partial != unit::control) return true;
    if (!_relay) return false;
    return _pong.has_value() || _staged_sent < _staged.size() || queued_packets() > 0;
}

void client_output::check_stream([[maybe_unused]] std::span<const std::uint8_t> bytes) noexcept {
#ifndef NDEBUG
    // Debug builds: every byte that leaves must keep the stream legal.
    DERP_ASSERT(_checker.feed(bytes));
#endif
}

}  // namespace derp
