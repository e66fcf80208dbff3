// The shard's listeners and UDP sockets: multishot accept and recvmsg, and how they end, at a
// stop (every connection closed) or at a drain (no new connections; the accepted ones leave on
// their own until the deadline). The loop itself is in shard.cc.
#include "ring/shard.hh"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace derp::ring {

void shard::prep_accept(std::uint32_t listener) noexcept {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, _config.listen_fds[listener], nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, pack_user_data(op::accept, listener, 0));
    _accept_armed[listener] = true;
    ++_global_ops;
}

void shard::handle_accept(std::uint32_t listener, const io_uring_cqe& cqe) noexcept {
    const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        _accept_armed[listener] = false;
        --_global_ops;
    }
    if (cqe.res >= 0) {
        const int fd = cqe.res;
        const std::uint8_t tag = listener < _config.listen_tags.size() ? _config.listen_tags[listener] : 0;
        if (_stopping) {
            ::close(fd);
        } else if (_config.accept_limit != nullptr && (_config.accept_limit_tags >> tag & 1u) != 0 &&
                   !_config.accept_limit->admit(_now_ns)) {
            // Over the rate: reset at once (SO_LINGER 0), before any read, TLS or slot, so that
            // a flood costs two syscalls per connection and leaves no TIME_WAIT behind here.
            const linger reset{1, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
            ::close(fd);
            _counters.accepts_rate_limited.add();
            if (const auto n = _accept_limit_log.allow(_now_ns))
                log(log_level::warn, "shard {}: over -accept-connection-limit; reset {} connection(s)",
                    _config.index, n);
        } else if (_free_head >= _slots.size()) {
            ::close(fd);
            _counters.accepts_refused_full.add();
            if (const auto n = _accept_error_log.allow(_now_ns))
                log(log_level::warn,
                    "shard {}: connection table full ({} slots); refused {} connection(s). "
                    "Raise the open-files limit (LimitNOFILE=) or add shards",
                    _config.index, _slots.size(), n);
        } else {
            const std::uint32_t slot = *take_slot(fd);
            conn_slot& s = _slots[slot];
            s.listener_tag = tag;
            s.accepted = true;
            ++_accepted_in_use;
            _counters.accepts.add();
            sockaddr_storage peer{};
            socklen_t peer_length = sizeof peer;
            if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0)
                peer.ss_family = AF_UNSPEC;  // reset before we looked: the service sees no address
            _service->on_accept(conn_id{slot, s.gen}, peer);
            if (s.state == conn_state::open) prep_recv(slot);
        }
    } else if (cqe.res != -ECANCELED) {
        _counters.accept_errors.add();
        if (const auto n = _accept_error_log.allow(_now_ns)) {
            const bool fd_limit = cqe.res == -EMFILE || cqe.res == -ENFILE;
            log(log_level::warn, "shard {}: accept failed {} time(s): {}{}", _config.index, n,
                std::strerror(-cqe.res),
                fd_limit ? " (out of file descriptors: raise LimitNOFILE= or ulimit -n)" : "");
        }
    }
    if (!more && _draining) {
        close_listener(listener);  // the accept was cancelled: the socket may go now
    } else if (!more && !_stopping) {
        if (cqe.res == -EMFILE || cqe.res == -ENFILE || cqe.res == -ENOMEM) {
            // Re-arming at once would fail at once; give closing connections time to free fds.
            timer_node& node = _listener_retry[listener];
            node.owner = listener;
            node.id = accept_retry_timer_id;
            _timers.arm(node, _now_ns + accept_retry_ns);
        } else {
            prep_accept(listener);
        }
    }
}

void shard::prep_recvmsg(std::uint32_t socket_index) noexcept {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_recvmsg_multishot(sqe, _config.udp_fds[socket_index], &_udp_msghdr, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = _udp_buffers.group();
    io_uring_sqe_set_data64(sqe, pack_user_data(op::recvmsg, socket_index, 0));
    _recvmsg_armed[socket_index] = true;
    ++_global_ops;
}

void shard::handle_recvmsg(std::uint32_t socket_index, const io_uring_cqe& cqe) noexcept {
    const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
    if (!more) {
        _recvmsg_armed[socket_index] = false;
        --_global_ops;
    }
    if ((cqe.flags & IORING_CQE_F_BUFFER) != 0) {
        const auto bid = static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        if (cqe.res >= 0) {
            // Buffer layout of multishot recvmsg: io_uring_recvmsg_out, the name, the control
            // data (none here), then the payload.
            std::uint8_t* buffer = _udp_buffers.buffer(bid);
            io_uring_recvmsg_out* out = io_uring_recvmsg_validate(buffer, cqe.res, &_udp_msghdr);
            if (out != nullptr && _service) {
                sockaddr_storage from{};
                std::memcpy(&from, io_uring_recvmsg_name(out),
                            std::min<std::size_t>(out->namelen, sizeof from));
                const auto* payload = static_cast<const std::uint8_t*>(io_uring_recvmsg_payload(out, &_udp_msghdr));
                const auto length = io_uring_recvmsg_payload_length(out, cqe.res, &_udp_msghdr);
                const bool truncated = (out->flags & MSG_TRUNC) != 0;
                _counters.datagrams_received.add();
                if (truncated) _counters.datagrams_truncated.add();
                _service->on_datagram(socket_index, from, {payload, length}, truncated);
            }
        }
        _udp_buffers.recycle(bid);
    }
    if (cqe.res < 0 && cqe.res != -ENOBUFS && cqe.res != -ECANCELED)
        log(log_level::warn, "thread {}: UDP recvmsg: {}", _config.index, std::strerror(-cqe.res));
    if (!more && _draining) {
        close_udp_socket(socket_index);
    } else if (!more && !_stopping) {
        prep_recvmsg(socket_index);  // -ENOBUFS included: buffers return this turn
    }
}

int shard::send_datagram(std::uint32_t socket_index, const sockaddr_storage& to, socklen_t to_length,
                         std::span<const std::uint8_t> payload) noexcept {
    DERP_ASSERT(socket_index < _config.udp_fds.size());
    if (_config.udp_fds[socket_index] < 0) return EBADF;  // closed by a drain
    const ssize_t n = ::sendto(_config.udp_fds[socket_index], payload.data(), payload.size(),
                               MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&to), to_length);
    if (n < 0) {
        _counters.datagram_send_errors.add();
        return errno;
    }
    _counters.datagrams_sent.add();
    return 0;
}

void shard::start_stopping() noexcept {
    _stopping = true;
    _stop_deadline_ns = _now_ns + static_cast<std::uint64_t>(_config.shutdown_grace_ns);
    if (_service) _service->on_stop();
    end_listening(false);  // the sockets close when the loop ends
    for (std::uint32_t slot = 0; slot < _slots.size(); ++slot)
        if (_slots[slot].state == conn_state::open) begin_close(slot, close_cause::shutdown);
}

// The drain: the listeners and UDP sockets close now, so that the kernel hands new connections
// and datagrams to whoever else listens on the same ports (a new derpd started with
// --takeover joins our SO_REUSEPORT groups); what is in flight on them is cancelled first,
// because io_uring holds a reference to the file until its operation ends. Connections in a
// closing listener's accept queue are reset by the kernel unless net.ipv4.tcp_migrate_req
// moves them to the group's other listeners.
void shard::start_draining(std::uint64_t deadline_ns) noexcept {
    _draining = true;
    _drain_deadline_ns = deadline_ns;
    end_listening(true);  // the cancelled ones close as their last completion comes back
    if (!_config.is_admin)
        log(log_level::info, "shard {}: draining: {} client connection(s) to see off", _config.index, _accepted_in_use);
    note_listeners_closed();
}

// Stops every accept and recvmsg: armed operations are cancelled (their final completion
// ends them); with close_idle, the sockets with nothing in flight close at once.
void shard::end_listening(bool close_idle) noexcept {
    auto cancel_fd = [this](int fd) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, pack_user_data(op::cancel, cancel_slot_listener, 0));
    };
    for (std::uint32_t l = 0; l < _config.listen_fds.size(); ++l) {
        _timers.cancel(_listener_retry[l]);
        if (_config.listen_fds[l] < 0) continue;
        if (_accept_armed[l]) cancel_fd(_config.listen_fds[l]);
        else if (close_idle) close_listener(l);
    }
    for (std::uint32_t u = 0; u < _config.udp_fds.size(); ++u) {
        if (_config.udp_fds[u] < 0) continue;
        if (_recvmsg_armed[u]) cancel_fd(_config.udp_fds[u]);
        else if (close_idle) close_udp_socket(u);
    }
}

void shard::note_listeners_closed() noexcept {
    const bool all = std::all_of(_config.listen_fds.begin(), _config.listen_fds.end(), [](int fd) { return fd < 0; }) &&
                     std::all_of(_config.udp_fds.begin(), _config.udp_fds.end(), [](int fd) { return fd < 0; });
    if (all) _links[_config.index].listeners_closed.store(true, std::memory_order_release);
}

void shard::check_drain() noexcept {
    if (!_draining || _stopping) return;
    // The service hears of the drain (and tells its clients to reconnect) only once no
    // listener of the process is left open: a client that reconnects at once can then only
    // reach another process on the ports, never this one.
    if (!_drain_announced) {
        bool all_closed = true;
        for (std::uint32_t t = 0; t < _config.thread_count; ++t)
            all_closed = all_closed && _links[t].listeners_closed.load(std::memory_order_acquire);
        if (all_closed) {
            _drain_announced = true;
            if (_service) _service->on_drain(_drain_deadline_ns);
        }
    }
    bool done = _now_ns >= _drain_deadline_ns;
    if (_config.is_admin) {
        // The admin thread serves metrics until every shard has finished.
        done = true;
        for (std::uint32_t t = 0; t + 1 < _config.thread_count; ++t)
            done = done && _links[t].finished.load(std::memory_order_acquire);
    } else if (_accepted_in_use == 0) {
        done = true;
    } else if (done) {
        log(log_level::info, "shard {}: drain deadline reached; closing {} connection(s)", _config.index, _accepted_in_use);
    }
    if (done) start_stopping();
}

void shard::close_listener(std::uint32_t listener) noexcept {
    if (_config.listen_fds[listener] < 0) return;
    ::close(_config.listen_fds[listener]);
    _config.listen_fds[listener] = -1;
    note_listeners_closed();
}

void shard::close_udp_socket(std::uint32_t socket_index) noexcept {
    if (_config.udp_fds[socket_index] < 0) return;
    ::close(_config.udp_fds[socket_index]);
    _config.udp_fds[socket_index] = -1;
    note_listeners_closed();
}

}  // namespace derp::ring
