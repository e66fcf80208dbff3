// The DERP service's side of a client's output: what goes into the client's client_output (the
// pure object in core/ that owns the order of the bytes), the counters and transfer buffers that
// its events touch, and the send half (on_writable) that fills a registered send buffer from it.
#include "server/derp_service.hh"

#include "server/derp_internal.hh"

namespace derp::server {

// client_output's events for one client: counters, the PeerGone subscription of a receiver to
// the senders it got packets from (spec 2.4), transfer buffers recycled by their owner shard.
class derp_service::output_hooks final : public output_events {
public:
    output_hooks(derp_service& service, conn_id conn, client& c) noexcept : _s(service), _conn(conn), _c(c) {}

    void release(const queued_frame& frame) noexcept override {
        _s.release_transfer(frame);
        _s._counters.queued_packets.sub();
    }
    void sent(const node_key& src, std::size_t packet_bytes, std::uint64_t enqueued_ns) noexcept override {
        _s._counters.packets_sent.add();
        _s._counters.bytes_sent.add(packet_bytes);
        _s.note_queue_time(enqueued_ns);
        if (_c.seen_sources.insert(src).second) _s._peer_gone_subscribers[src].push_back(_s.ref_of(_conn));
    }
    void dropped(drop_reason reason, packet_kind kind, std::size_t packet_bytes,
                 std::uint64_t enqueued_ns) noexcept override {
        if (reason == drop_reason::queue_head) _s.note_queue_time(enqueued_ns);
        _s.count_drop(reason, kind, packet_bytes);
    }

private:
    derp_service& _s;
    conn_id _conn;
    client& _c;
};

void derp_service::queue_control(conn_id conn, client& c, std::span<const std::uint8_t> frame) noexcept {
    c.out.push_frames(frame);
    if (c.out.pending()) _shard.want_write(conn);
}

void derp_service::queue_http(conn_id conn, client& c, std::string_view text) noexcept {
    c.out.push_http(text);
    _shard.want_write(conn);
}

void derp_service::queue_peer_gone(conn_id conn, client& c, const node_key& peer,
                                   peer_gone_reason reason) noexcept {
    std::array<std::uint8_t, peer_gone_frame_bytes> frame{};
    encode_peer_gone(frame, peer, reason);
    queue_control(conn, c, frame);
    if (reason == peer_gone_reason::not_here) _counters.peer_gone_not_here_frames.add();
    else _counters.peer_gone_disconnected_frames.add();
}

void derp_service::count_drop(drop_reason reason, packet_kind kind, std::size_t packet_bytes) noexcept {
    _counters.packets_dropped[static_cast<std::size_t>(reason)][static_cast<std::size_t>(kind)].add();
    _counters.bytes_dropped[static_cast<std::size_t>(reason)][static_cast<std::size_t>(kind)].add(packet_bytes);
}

void derp_service::release_transfer(const queued_frame& frame) noexcept {
    if (frame.owner == _shard.index()) {
        _transfer[frame.size_class]->release(frame.buffer_index);
        return;
    }
    // Only the owner recycles its buffers: send it home.
    message m;
    m.kind = kind_buffer_return;
    m.u64b = std::uint64_t{frame.buffer_index} | (std::uint64_t{frame.size_class} << 32);
    m.ptr = const_cast<std::uint8_t*>(frame.data);
    post_or_backlog(frame.owner, m);
}

bool derp_service::enqueue(conn_id conn, client& c, const queued_frame& frame, packet_kind kind) noexcept {
    if (c.out.queue_full(kind)) {
        // Before anything moves or drops, let the writer take what it can right now, as derper's
        // concurrent send loop would have: a burst larger than the queue then survives whenever
        // the socket has room.
        _shard.flush_now(conn);
    }
    output_hooks hooks(*this, conn, c);
    _counters.queued_packets.add();
    // The shard's staging ceiling: what is left of it is all this client may stage now; and
    // a client whose send waits for it to read stages no more than staged_bytes_max.
    const std::size_t staged_before = c.out.staged_bytes();
    std::size_t room = _staged_total < _settings.staged_total_max ? _settings.staged_total_max - _staged_total : 0;
    if (_shard.send_waits_on_peer(conn))
        room = std::min<std::size_t>(room, staged_before < _settings.staged_bytes_max ? _settings.staged_bytes_max - staged_before : 0);
    const bool kept_all = c.out.enqueue(frame, kind, hooks, room);
    note_staged(staged_before, c.out.staged_bytes());
    if (c.out.pending()) _shard.want_write(conn);
    return kept_all;
}

void derp_service::drop_output(conn_id conn, client& c, drop_reason reason) noexcept {
    output_hooks hooks(*this, conn, c);
    const std::size_t staged_before = c.out.staged_bytes();
    c.out.drop_all(reason, hooks);
    note_staged(staged_before, c.out.staged_bytes());
}

std::size_t derp_service::on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept {
    client* found = find(conn);
    if (found == nullptr) return 0;
    client& c = *found;
    output_hooks hooks(*this, conn, c);
    const std::size_t staged_before = c.out.staged_bytes();
    const client_output::write_result w = c.out.write(out, hooks);
    note_staged(staged_before, c.out.staged_bytes());
    c.bytes_out += w.bytes;
    if (w.pong) _counters.sent_pong.add();
    if (c.stage == phase::relay && w.bytes > 0) {
        // derper's buffered_write_frames: frames per flush (control frames count as one).
        const std::uint32_t frames = w.packets > 0 ? w.packets : 1u;
        std::size_t bucket = buffered_write_frames_bounds.size();
        for (std::size_t i = 0; i < buffered_write_frames_bounds.size(); ++i)
            if (frames <= buffered_write_frames_bounds[i]) {
                bucket = i;
                break;
            }
        _counters.buffered_write_frames[bucket].add();
        _counters.buffered_write_frames_sum.add(frames);
    }
    if (c.out.pending()) _shard.want_write(conn);
    return w.bytes;
}

void derp_service::note_staged(std::size_t before, std::size_t after) noexcept {
    _staged_total = _staged_total + after - before;
    _counters.staged_bytes.set(_staged_total);
}

}  // namespace derp::server
