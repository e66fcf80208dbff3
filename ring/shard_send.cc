// The shard's send path: a connection asks to write (want_write), the loop offers it a send
// buffer in turn (flush_writes, submit_send), and the completion either ends the send or sends
// the rest (handle_send). Registered pool buffers for connections whose sockets take what they
// are given; a connection's own memory for one whose socket is full (see submit_send). The loop
// itself is in shard.cc.
#include "ring/shard.hh"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace derp::ring {

void shard::want_write(conn_id conn) noexcept {
    conn_slot* s = lookup(conn);
    if (s == nullptr) return;
    s->want_write = true;
    if (!s->in_write_list && !s->send_in_flight && !s->connecting) {
        s->in_write_list = true;
        _write_list.push_back(conn.slot);
    }
}

void shard::flush_now(conn_id conn) noexcept {
    conn_slot* s = lookup(conn);
    if (s == nullptr || s->send_in_flight || s->connecting || _send_starved) return;
    s->want_write = true;
    submit_send(conn.slot);
}

bool shard::send_waits_on_peer(conn_id conn) noexcept {
    const conn_slot* s = lookup(conn);
    return s != nullptr && s->send_in_flight && _batch > s->send_batch;
}

void shard::submit_send(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    DERP_ASSERT(s.state == conn_state::open && !s.send_in_flight);
    const conn_id id{slot, s.gen};
    if (s.send_slow) {
        // Its socket was full last time: a write now would most likely wait in the kernel for
        // the peer to read, holding whatever buffer it writes from until then (up to the write
        // timeout: 2 s, 30 s for mesh peers). From the shard's send pool, a few hundred such
        // receivers would take every buffer and stall every connection of the shard. So it
        // writes from memory of its own, at most one send's worth, freed once it drains.
        s.send_heap.resize(_config.send_buffer_bytes);
        s.want_write = false;
        const std::size_t written = _service->on_writable(id, s.send_heap);
        DERP_ASSERT(written <= _config.send_buffer_bytes);
        if (s.state != conn_state::open) return;
        if (written == 0) {
            if (s.close_when_flushed && !s.want_write) close_flushed(slot);
            return;
        }
        s.send_from_heap = true;
        s.send_offset = 0;
        s.send_length = static_cast<std::uint32_t>(written);
        prep_send(slot);
        return;
    }
    if (s.send_buffer == no_buffer) {
        auto buffer = _send_pool->acquire();
        if (!buffer) {
            // Every send buffer is on the wire: retry when a send completes. The data stays in
            // the service's queues, which apply their own limits.
            _counters.send_pool_exhausted.add();
            _send_starved = true;
            if (!s.in_write_list) {
                s.in_write_list = true;
                _write_list.push_back(slot);
            }
            return;
        }
        s.send_buffer = *buffer;
    }
    s.want_write = false;
    const std::size_t written = _service->on_writable(id, _send_pool->data(s.send_buffer));
    DERP_ASSERT(written <= _config.send_buffer_bytes);
    if (s.state != conn_state::open) return;  // the service closed it from on_writable
    if (written == 0) {
        _send_pool->release(s.send_buffer);
        s.send_buffer = no_buffer;
        _send_starved = false;
        if (s.close_when_flushed && !s.want_write) close_flushed(slot);
        return;
    }
    s.send_offset = 0;
    s.send_length = static_cast<std::uint32_t>(written);
    prep_send(slot);
}

void shard::prep_send(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    const std::uint32_t remaining = s.send_length - s.send_offset;
    io_uring_sqe* sqe = get_sqe();
    if (s.send_from_heap) {
        io_uring_prep_send(sqe, s.fd, s.send_heap.data() + s.send_offset, remaining, MSG_NOSIGNAL);
    } else {
        _send_pool->start_sending(s.send_buffer);
        std::uint8_t* data = _send_pool->data(s.send_buffer).data() + s.send_offset;
        // WRITE_FIXED, not SEND with IORING_RECVSEND_FIXED_BUF (-EINVAL on the kernels we
        // target). A write to a socket has no MSG_NOSIGNAL: the runtime ignores SIGPIPE.
        if (_use_fixed_sends)
            io_uring_prep_write_fixed(sqe, s.fd, data, remaining, 0, 0);
        else
            io_uring_prep_send(sqe, s.fd, data, remaining, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, pack_user_data(op::send, slot, s.gen));
    s.send_in_flight = true;
    s.send_batch = _batch + 1;  // submitted by the next enter, reaped in the batch that follows
    ++s.ops_in_flight;
    if (s.write_timeout_ns > 0) {
        timer_node& node = s.timers[write_timer_id];
        node.owner = slot;
        node.id = write_timer_id;
        _timers.arm(node, _now_ns + static_cast<std::uint64_t>(s.write_timeout_ns));
    }
}

void shard::handle_send(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept {
    conn_slot& s = _slots[slot];
    // A slot is never freed while its send is in flight, so a mismatch is a bug.
    DERP_ASSERT(s.gen == gen && s.send_in_flight);
    s.send_in_flight = false;
    op_done(slot);
    _timers.cancel(s.timers[write_timer_id]);
    if (!s.send_from_heap) _send_pool->finish_sending(s.send_buffer);
    if (cqe.res < 0) {
        if (s.state == conn_state::open) {
            const bool reset = cqe.res == -EPIPE || cqe.res == -ECONNRESET;
            if (!reset)
                log(log_level::debug, "shard {}: send on slot {}: {}", _config.index, slot,
                    std::strerror(-cqe.res));
            begin_close(slot, reset ? close_cause::peer_closed : close_cause::io_error);
        }
        maybe_finish_close(slot);
        return;
    }
    const auto sent = static_cast<std::uint32_t>(cqe.res);
    _counters.send_bytes.add(sent);
    s.send_offset += sent;
    if (s.state != conn_state::open) {
        maybe_finish_close(slot);
        return;
    }
    if (s.send_offset < s.send_length) {
        // Short write: the socket is full. The rest goes out of the connection's own memory,
        // and the pool buffer goes back at once: a peer that stopped reading must not hold it
        // until the write timeout (see submit_send).
        _counters.send_partial.add();
        s.send_slow = true;
        s.send_was_short = true;
        if (!s.send_from_heap) {
            const std::uint8_t* data = _send_pool->data(s.send_buffer).data();
            s.send_heap.assign(data + s.send_offset, data + s.send_length);
            s.send_length -= s.send_offset;
            s.send_offset = 0;
            s.send_from_heap = true;
            _send_pool->release(s.send_buffer);
            s.send_buffer = no_buffer;
            _send_starved = false;
        }
        prep_send(slot);
        return;
    }
    if (s.send_from_heap) {
        s.send_from_heap = false;
        // Out whole at the first try: the socket has room again, and the next send takes a
        // pool buffer like everyone's.
        if (!s.send_was_short) {
            s.send_slow = false;
            std::vector<std::uint8_t>().swap(s.send_heap);
        }
    }
    s.send_was_short = false;
    if (s.want_write) {
        submit_send(slot);  // refill the same buffer (or the connection's own memory)
        return;
    }
    if (s.send_buffer != no_buffer) {
        _send_pool->release(s.send_buffer);
        s.send_buffer = no_buffer;
        _send_starved = false;  // a buffer is free again: starved writers get their turn
    }
    if (s.close_when_flushed) close_flushed(slot);
}

void shard::flush_writes() noexcept {
    if (_write_list.empty() || _send_starved) return;
    // Swap in the spare list: on_writable() may ask for more writes while we walk this one.
    _write_batch.swap(_write_list);
    for (std::size_t i = 0; i < _write_batch.size(); ++i) {
        const std::uint32_t slot = _write_batch[i];
        conn_slot& s = _slots[slot];
        if (!s.in_write_list) continue;
        s.in_write_list = false;
        if (s.state != conn_state::open || s.send_in_flight || !s.want_write) continue;
        if (_send_starved) {  // no buffer was free a moment ago: keep the order for next time
            s.in_write_list = true;
            _write_list.push_back(slot);
            continue;
        }
        submit_send(slot);
    }
    _write_batch.clear();
}

}  // namespace derp::ring
