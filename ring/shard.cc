// The shard loop and its completion handlers. See shard.hh for ownership; STYLE.md for the loop.
#include "ring/shard.hh"

#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <fstream>

namespace derp::ring {
namespace {

constexpr std::uint32_t wake_slot_eventfd = 1;    // op::wake from our eventfd read
constexpr std::size_t pending_input_keep_bytes = 64 * 1024;

std::string io_uring_disabled_value() {
    std::ifstream in("/proc/sys/kernel/io_uring_disabled");
    std::string value;
    if (in >> value) return value;
    return "unknown";
}

}  // namespace

const char* close_cause_name(close_cause cause) noexcept {
    switch (cause) {
    case close_cause::peer_closed: return "peer_closed";
    case close_cause::io_error: return "io_error";
    case close_cause::closed_by_app: return "closed_by_app";
    case close_cause::write_timeout: return "write_timeout";
    case close_cause::input_overflow: return "input_overflow";
    case close_cause::shutdown: return "shutdown";
    }
    return "unknown";
}

shard::shard(shard_config config, std::span<thread_link> links,
             std::vector<spsc_ring<message>*> outbound, std::vector<spsc_ring<message>*> inbound,
             shard_counters& counters)
    : _config(std::move(config)),
      _links(links),
      _outbound(std::move(outbound)),
      _inbound(std::move(inbound)),
      _counters(counters),
      _timers(monotonic_ns()) {
    DERP_ASSERT(_config.index < _config.thread_count);
    DERP_ASSERT(_outbound.size() == _config.thread_count && _inbound.size() == _config.thread_count);
    DERP_ASSERT(_config.conn_slots > 0 && _config.conn_slots <= slot_max);
    DERP_ASSERT((_config.recv_buffer_count & (_config.recv_buffer_count - 1)) == 0);
    DERP_ASSERT(_config.recv_buffer_count <= 32768);
}

shard::~shard() {
    _service.reset();  // before the pools and slots it may refer to
    if (_ring_ready) io_uring_queue_exit(&_ring);  // cancels whatever is still in flight
    for (auto& s : _slots)
        if (s.fd >= 0) ::close(s.fd);
    for (int fd : _config.listen_fds)
        if (fd >= 0) ::close(fd);
    for (int fd : _config.udp_fds)
        if (fd >= 0) ::close(fd);
}

result<void, std::string> shard::init() noexcept {
    const std::string who = _config.is_admin ? "admin" : fmt::format("shard {}", _config.index);
    if (_config.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(static_cast<unsigned>(_config.cpu), &set);
        if (const int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set); err != 0)
            log(log_level::warn, "{}: cannot pin to cpu {}: {}", who, _config.cpu, std::strerror(err));
    }

    // Ring set-up: SINGLE_ISSUER|DEFER_TASKRUN (6.1+) runs completion work only when this thread
    // waits, so nothing interrupts the loop; older kernels get COOP_TASKRUN (5.19+) and then
    // plain rings. Each refusal is logged, never silent.
    struct attempt {
        unsigned flags;
        const char* name;
    };
    const attempt attempts[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
         "SINGLE_ISSUER|DEFER_TASKRUN"},
        {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
         "COOP_TASKRUN"},
        {0, "no setup flags"},
    };
    int rc = -EINVAL;
    for (const auto& a : attempts) {
        io_uring_params params{};
        params.flags = a.flags | IORING_SETUP_CQSIZE;
        params.cq_entries = _config.ring_entries * 4;  // multishot ops post many CQEs per SQE
        rc = io_uring_queue_init_params(_config.ring_entries, &_ring, &params);
        if (rc == 0) {
            _setup_note = a.name;
            break;
        }
        if (rc != -EINVAL) break;
        log(log_level::warn, "{}: kernel refused io_uring setup with {} ({}); trying the next mode",
            who, a.name, std::strerror(-rc));
    }
    if (rc == -EPERM || rc == -EACCES)
        return unexpected(fmt::format(
            "io_uring_setup: {}: io_uring is disabled for this process. Check sysctl "
            "kernel.io_uring_disabled (now {}; 0 allows everyone, 1 only members of "
            "kernel.io_uring_group) and any seccomp filter (container runtime, systemd "
            "SystemCallFilter=) that blocks io_uring_setup",
            std::strerror(-rc), io_uring_disabled_value()));
    if (rc == -ENOSYS)
        return unexpected(std::string(
            "io_uring_setup: this kernel has no io_uring (derpd needs Linux 6.0 or newer built "
            "with CONFIG_IO_URING)"));
    if (rc == -ENOMEM)
        return unexpected(std::string(
            "io_uring_setup: out of locked memory; raise LimitMEMLOCK= in the systemd unit or "
            "ulimit -l"));
    if (rc != 0) return unexpected(fmt::format("io_uring_setup: {}", std::strerror(-rc)));
    _ring_ready = true;
    _ring_fd_registered = io_uring_register_ring_fd(&_ring) == 1;  // saves an fd lookup per enter; optional
    // Batched sleeps (wait_min_ns) need the kernel's min-wait (6.13+); elsewhere the loop wakes
    // at the first completion, as it always did, and says so once.
    if (_config.wait_min_ns > 0 && (_ring.features & feature_min_timeout) == 0) {
        log(log_level::warn, "{}: this kernel has no io_uring min-wait (IORING_FEAT_MIN_TIMEOUT, 6.13+): "
            "the loop wakes at each completion", who);
        _config.wait_min_ns = 0;
    }
    _links[_config.index].ring_fd = _ring.ring_fd;

    // Send buffers, registered so that WRITE_FIXED skips per-send page pinning. Registration
    // pins memory (RLIMIT_MEMLOCK for unprivileged users); without it, plain sends work too.
    _send_pool = std::make_unique<buffer_pool>(_config.send_buffer_count, _config.send_buffer_bytes);
    iovec region{_send_pool->region(), _send_pool->region_bytes()};
    if (const int err = io_uring_register_buffers(&_ring, &region, 1); err == 0) {
        _use_fixed_sends = true;
    } else {
        log(log_level::warn,
            "{}: cannot register {} MiB of send buffers ({}); sending from unregistered memory "
            "(raise LimitMEMLOCK= to enable fixed-buffer sends)",
            who, _send_pool->region_bytes() >> 20, std::strerror(-err));
    }

    // Provided buffers for multishot recv (group 0) and, on the admin thread, UDP recvmsg
    // (group 1, datagrams up to udp_datagram_bytes_max).
    if (auto r = _recv_buffers.setup(_ring, _config.recv_buffer_count, _config.recv_buffer_bytes, 0); !r)
        return unexpected(fmt::format("{}: {}", who, r.error()));
    if (!_config.udp_fds.empty()) {
        if (auto r = _udp_buffers.setup(_ring, 256, udp_datagram_bytes_max, 1); !r)
            return unexpected(fmt::format("{}: {}", who, r.error()));
        _udp_msghdr.msg_namelen = sizeof(sockaddr_storage);
    }

    _slots.resize(_config.conn_slots);
    for (std::uint32_t i = 0; i < _config.conn_slots; ++i) _slots[i].next_free = i + 1;
    _free_head = 0;
    _accept_armed.assign(_config.listen_fds.size(), false);
    _listener_retry.resize(_config.listen_fds.size());
    _write_list.reserve(256);

    _now_ns = monotonic_ns();
    prep_wake_read();
    if (_config.signal_fd >= 0) prep_signal_read();
    for (std::uint32_t l = 0; l < _config.listen_fds.size(); ++l) prep_accept(l);
    _recvmsg_armed.assign(_config.udp_fds.size(), false);
    for (std::uint32_t u = 0; u < _config.udp_fds.size(); ++u) prep_recvmsg(u);
    log(log_level::debug, "{}: io_uring ready ({}; {} fixed sends)", who, _setup_note,
        _use_fixed_sends ? "with" : "without");
    return {};
}

io_uring_sqe* shard::get_sqe() noexcept {
    io_uring_sqe* sqe = io_uring_get_sqe(&_ring);
    if (sqe == nullptr) {
        // The submission queue is full mid-batch: hand it to the kernel and take a fresh entry.
        io_uring_submit(&_ring);
        _counters.submits.add();
        sqe = io_uring_get_sqe(&_ring);
        DERP_ASSERT(sqe != nullptr);
    }
    _counters.sqes.add();
    return sqe;
}

shard::conn_slot* shard::lookup(conn_id conn) noexcept {
    if (conn.slot >= _slots.size()) return nullptr;
    conn_slot& s = _slots[conn.slot];
    if (s.gen != conn.gen || s.state != conn_state::open) return nullptr;
    return &s;
}
const shard::conn_slot* shard::lookup(conn_id conn) const noexcept {
    return const_cast<shard*>(this)->lookup(conn);
}

bool shard::is_open(conn_id conn) const noexcept { return lookup(conn) != nullptr; }
int shard::fd_of(conn_id conn) const noexcept {
    const conn_slot* s = lookup(conn);
    return s != nullptr ? s->fd : -1;
}

std::uint8_t shard::listener_tag(conn_id conn) const noexcept {
    const conn_slot* s = lookup(conn);
    return s != nullptr ? s->listener_tag : 0;
}

void shard::replay_input(conn_id conn) noexcept {
    conn_slot* s = lookup(conn);
    if (s == nullptr) return;
    if (s->pending_input.empty()) {
        if (_service) _service->on_data(conn, {});
        return;
    }
    std::vector<std::uint8_t> pending;
    pending.swap(s->pending_input);
    deliver_input(conn.slot, pending);  // whatever is still unconsumed is kept again
}

void shard::pause_recv(conn_id conn) noexcept {
    conn_slot* s = lookup(conn);
    if (s == nullptr || s->state != conn_state::open || s->recv_paused) return;
    s->recv_paused = true;
    if (!s->recv_armed) {
        if (_service) _service->on_recv_paused(conn);
        return;
    }
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, pack_user_data(op::recv, conn.slot, conn.gen), 0);
    io_uring_sqe_set_data64(sqe, pack_user_data(op::cancel, conn.slot, conn.gen));
    ++s->ops_in_flight;
}

void shard::resume_recv(conn_id conn) noexcept {
    conn_slot* s = lookup(conn);
    if (s == nullptr || !s->recv_paused) return;
    s->recv_paused = false;
    if (s->state == conn_state::open && !s->recv_armed) prep_recv(conn.slot);
}

void shard::set_recv_one_shot(conn_id conn, bool one_shot) noexcept {
    if (conn_slot* s = lookup(conn)) s->recv_one_shot = one_shot;
}

void shard::close(conn_id conn) noexcept {
    if (lookup(conn) != nullptr) begin_close(conn.slot, close_cause::closed_by_app);
}

void shard::close_after_flush(conn_id conn) noexcept {
    conn_slot* s = lookup(conn);
    if (s == nullptr) return;
    s->close_when_flushed = true;
    if (!s->send_in_flight && !s->want_write) close_flushed(conn.slot);
}

void shard::close_flushed(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    if (s.state != conn_state::open) return;
    if (_service) _service->on_flushed_close(conn_id{slot, s.gen});
    begin_close(slot, close_cause::closed_by_app);
}

void shard::set_write_timeout(conn_id conn, std::int64_t timeout_ns) noexcept {
    if (conn_slot* s = lookup(conn)) s->write_timeout_ns = timeout_ns;
}

void shard::arm_timer(conn_id conn, std::uint8_t timer_id, std::uint64_t deadline_ns) noexcept {
    DERP_ASSERT(timer_id < service_timer_count);
    conn_slot* s = lookup(conn);
    if (s == nullptr) return;
    timer_node& node = s->timers[timer_id];
    node.owner = conn.slot;
    node.id = timer_id;
    _timers.arm(node, deadline_ns);
}

void shard::cancel_timer(conn_id conn, std::uint8_t timer_id) noexcept {
    DERP_ASSERT(timer_id < service_timer_count);
    if (conn_slot* s = lookup(conn)) _timers.cancel(s->timers[timer_id]);
}

bool shard::post(std::uint32_t to_thread, message m) noexcept {
    DERP_ASSERT(to_thread < _config.thread_count && to_thread != _config.index);
    m.from_thread = static_cast<std::uint16_t>(_config.index);
    if (!_outbound[to_thread]->push(m)) {
        _counters.ring_full.add();
        return false;
    }
    _counters.messages_posted.add();
    return true;
}

void shard::prep_recv(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    DERP_ASSERT(!s.recv_armed);
    io_uring_sqe* sqe = get_sqe();
    // Length 0 with a provided buffer: up to the buffer's size. A one-shot recv ends (no
    // IORING_CQE_F_MORE) after one buffer and is re-armed like a multishot recv that ended.
    if (s.recv_one_shot)
        io_uring_prep_recv(sqe, s.fd, nullptr, 0, 0);
    else
        io_uring_prep_recv_multishot(sqe, s.fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, pack_user_data(op::recv, slot, s.gen));
    s.recv_armed = true;
    ++s.ops_in_flight;
}

void shard::prep_wake_read() noexcept {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_read(sqe, _links[_config.index].wake_eventfd, &_wake_value, sizeof _wake_value, 0);
    io_uring_sqe_set_data64(sqe, pack_user_data(op::wake, wake_slot_eventfd, 0));
}

void shard::prep_signal_read() noexcept {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_read(sqe, _config.signal_fd, &_signal_info, sizeof _signal_info, 0);
    io_uring_sqe_set_data64(sqe, pack_user_data(op::signal_read, 0, 0));
}

void shard::begin_close(std::uint32_t slot, close_cause cause) noexcept {
    conn_slot& s = _slots[slot];
    if (s.state != conn_state::open) return;
    s.state = conn_state::closing;
    _counters.closes[static_cast<std::size_t>(cause)].add();
    for (auto& node : s.timers) _timers.cancel(node);
    if (_service) _service->on_closed(conn_id{slot, s.gen}, cause);
    if (s.ops_in_flight > 0 && !s.cancel_sent) {
        // Each op by its user_data, not all of the descriptor's at once: the kernel finds a
        // user_data in its cancel hash, but a cancel by descriptor walks every request of the
        // ring (io_cancel_req_match), so closing N connections one after another (a stop, a
        // reconnect storm) cost O(N^2): 9,000 idle clients took 3.9 s to stop, 3,000 0.4 s.
        // An op that completes meanwhile makes its cancel come back -ENOENT; both CQEs count.
        const auto cancel = [&](op kind) {
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_cancel64(sqe, pack_user_data(kind, slot, s.gen), 0);
            io_uring_sqe_set_data64(sqe, pack_user_data(op::cancel, slot, s.gen));
            ++s.ops_in_flight;
        };
        if (s.recv_armed) cancel(op::recv);
        if (s.send_in_flight) cancel(op::send);
        if (s.connecting) cancel(op::connect);
        s.cancel_sent = true;
    }
    maybe_finish_close(slot);
}

void shard::maybe_finish_close(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    if (s.state != conn_state::closing || s.ops_in_flight > 0) return;
    // Every op on the descriptor has completed, so no CQE can name this generation again.
    ::close(s.fd);
    if (s.send_buffer != no_buffer) {
        _send_pool->release(s.send_buffer);
        _send_starved = false;
    }
    std::vector<std::uint8_t>().swap(s.pending_input);
    _input_total -= s.input_accounted;
    _counters.input_buffered_bytes.set(_input_total);
    if (s.accepted) --_accepted_in_use;
    const std::uint32_t next_gen = s.gen + 1;
    s = conn_slot{};
    s.gen = next_gen;
    s.next_free = _free_head;
    _free_head = slot;
    --_conns_in_use;
    _counters.conns_open.sub();
}

void shard::op_done(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    DERP_ASSERT(s.ops_in_flight > 0);
    --s.ops_in_flight;
}

void shard::dispatch(const io_uring_cqe& cqe) noexcept {
    _counters.cqes.add();
    const user_data_fields ud = unpack_user_data(cqe.user_data);
    switch (ud.kind) {
    case op::accept: handle_accept(ud.slot, cqe); break;
    case op::recv: handle_recv(ud.slot, ud.gen, cqe); break;
    case op::send: handle_send(ud.slot, ud.gen, cqe); break;
    case op::connect: handle_connect(ud.slot, ud.gen, cqe); break;
    case op::recvmsg: handle_recvmsg(ud.slot, cqe); break;
    case op::cancel:
        if (ud.slot == cancel_slot_listener) break;  // a listener's accept is being cancelled
        if (ud.slot < _slots.size() && _slots[ud.slot].gen == ud.gen) {
            op_done(ud.slot);
            maybe_finish_close(ud.slot);
        } else {
            _counters.late_cqes.add();
        }
        break;
    case op::wake:
        // Either a MSG_RING from a peer thread (slot 0: the CQE itself is the wake-up) or our
        // eventfd read completing (slot 1), which is re-armed unless the loop is ending.
        if (ud.slot == wake_slot_eventfd && !_stopping) prep_wake_read();
        break;
    case op::msg_ring:
        // Only failures post a CQE (IOSQE_CQE_SKIP_SUCCESS): the peer's ring is gone, which
        // happens only while stopping.
        log(log_level::debug, "thread {}: MSG_RING wake-up failed: {}", _config.index,
            std::strerror(-cqe.res));
        break;
    case op::signal_read:
        if (cqe.res == static_cast<int>(sizeof _signal_info)) {
            if (_signal_handler != nullptr)
                _signal_handler(_signal_context, static_cast<int>(_signal_info.ssi_signo));
        }
        if (!_stopping) prep_signal_read();
        break;
    case op::none:
    case op::shutdown:
    case op::close:
        break;
    }
}

std::optional<std::uint32_t> shard::take_slot(int fd) noexcept {
    if (_free_head >= _slots.size()) return std::nullopt;
    const std::uint32_t slot = _free_head;
    conn_slot& s = _slots[slot];
    _free_head = s.next_free;
    s.fd = fd;
    s.state = conn_state::open;
    s.write_timeout_ns = _config.default_write_timeout_ns;
    ++_conns_in_use;
    _counters.conns_open.add();
    return slot;
}

std::optional<conn_id> shard::connect(const sockaddr_storage& address, socklen_t length) noexcept {
    if (_stopping) {
        errno = ESHUTDOWN;
        return std::nullopt;
    }
    if (_free_head >= _slots.size()) {
        errno = EMFILE;
        return std::nullopt;
    }
    const int fd = ::socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return std::nullopt;
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const std::uint32_t slot = *take_slot(fd);
    conn_slot& s = _slots[slot];
    auto& target = _connecting[slot];
    target = std::make_unique<sockaddr_storage>(address);
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_connect(sqe, fd, reinterpret_cast<const sockaddr*>(target.get()), length);
    io_uring_sqe_set_data64(sqe, pack_user_data(op::connect, slot, s.gen));
    ++s.ops_in_flight;
    s.connecting = true;
    return conn_id{slot, s.gen};
}

void shard::handle_connect(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept {
    conn_slot& s = _slots[slot];
    DERP_ASSERT(s.gen == gen);
    _connecting.erase(slot);
    op_done(slot);
    s.connecting = false;
    if (s.state == conn_state::open) {
        if (cqe.res < 0) {
            _service->on_connect(conn_id{slot, gen}, -cqe.res);
            begin_close(slot, close_cause::io_error);
        } else {
            _service->on_connect(conn_id{slot, gen}, 0);
            if (s.state == conn_state::open && s.gen == gen) {
                prep_recv(slot);
                if (s.want_write && !s.in_write_list) {  // asked before the connect completed
                    s.in_write_list = true;
                    _write_list.push_back(slot);
                }
            }
        }
    }
    if (s.gen == gen) maybe_finish_close(slot);
}

void shard::handle_recv(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept {
    const bool has_buffer = (cqe.flags & IORING_CQE_F_BUFFER) != 0;
    const auto bid = static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
    const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
    conn_slot& s = _slots[slot];
    if (s.gen != gen || s.state == conn_state::free) {
        _counters.late_cqes.add();
        if (has_buffer) _recv_buffers.recycle(bid);
        return;
    }
    if (!more) {
        s.recv_armed = false;
        op_done(slot);
    }
    if (cqe.res > 0) {
        DERP_ASSERT(has_buffer);
        const auto length = static_cast<std::size_t>(cqe.res);
        _counters.recv_bytes.add(length);
        if (s.state == conn_state::open) deliver_input(slot, {_recv_buffers.buffer(bid), length});
        _recv_buffers.recycle(bid);
        // A multishot recv can end without an error (e.g. CQ overflow): keep reading.
        if (!more && s.state == conn_state::open && s.gen == gen) _rearm_recv.push_back(slot);
    } else {
        if (has_buffer) _recv_buffers.recycle(bid);
        if (cqe.res == 0) {
            begin_close(slot, close_cause::peer_closed);
        } else if (cqe.res == -ENOBUFS) {
            // Every receive buffer is waiting to be recycled: backpressure, not failure. The
            // buffers come back at the end of this batch; re-arm then.
            _counters.recv_no_buffers.add();
            if (!more && s.state == conn_state::open) _rearm_recv.push_back(slot);
        } else if (cqe.res == -ECANCELED) {
            // Expected: we cancelled it while closing, or for pause_recv(); a pause lifted
            // before the cancel landed reads on.
            if (!more && s.state == conn_state::open && !s.recv_paused) _rearm_recv.push_back(slot);
        } else if (cqe.res == -ECONNRESET || cqe.res == -EPIPE) {
            begin_close(slot, close_cause::peer_closed);
        } else if (cqe.res == -EINTR) {
            if (!more && s.state == conn_state::open) _rearm_recv.push_back(slot);
        } else {
            log(log_level::debug, "shard {}: recv on slot {}: {}", _config.index, slot,
                std::strerror(-cqe.res));
            if (_service) _service->on_recv_error(conn_id{slot, gen}, -cqe.res);
            begin_close(slot, close_cause::io_error);
        }
    }
    if (!more && s.gen == gen && s.state == conn_state::open && s.recv_paused && _service)
        _service->on_recv_paused(conn_id{slot, gen});
    if (s.gen == gen) maybe_finish_close(slot);
}

void shard::deliver_input(std::uint32_t slot, std::span<const std::uint8_t> bytes) noexcept {
    deliver_input_unbudgeted(slot, bytes);
    account_input(slot);
}

void shard::account_input(std::uint32_t slot) noexcept {
    conn_slot& s = _slots[slot];
    if (s.state == conn_state::free) return;  // maybe_finish_close took its count off
    const std::size_t capacity = s.pending_input.capacity();
    _input_total = _input_total - s.input_accounted + capacity;
    s.input_accounted = capacity;
    if (s.pending_input.empty() || s.pending_input.size() < s.input_size_seen) s.input_progress_ns = _now_ns;
    s.input_size_seen = s.pending_input.size();
    _counters.input_buffered_bytes.set(_input_total);
    if (_input_total > _config.input_buffered_total_max) shed_input();
}

// Over the shard's input maximum: the connections whose unconsumed input has waited longest
// for the service to take any go first (their input is released at once, so the total is
// right while their close completes).
void shard::shed_input() noexcept {
    std::uint32_t shed = 0;
    while (_input_total > _config.input_buffered_total_max) {
        std::uint32_t stalest = no_buffer;
        for (std::uint32_t i = 0; i < _slots.size(); ++i) {
            const conn_slot& c = _slots[i];
            if (c.state != conn_state::open || c.pending_input.empty()) continue;
            if (stalest == no_buffer || c.input_progress_ns < _slots[stalest].input_progress_ns) stalest = i;
        }
        if (stalest == no_buffer) break;
        conn_slot& victim = _slots[stalest];
        _input_total -= victim.input_accounted;
        victim.input_accounted = 0;
        victim.input_size_seen = 0;
        std::vector<std::uint8_t>().swap(victim.pending_input);
        _counters.input_shed_closes.add();
        ++shed;
        begin_close(stalest, close_cause::input_overflow);
    }
    _counters.input_buffered_bytes.set(_input_total);
    if (shed > 0) {
        if (const auto n = _input_shed_log.allow(_now_ns))
            log(log_level::warn, "shard {}: unconsumed input over {} bytes; closed the {} connection(s) holding the "
                "stalest, {} lately", _config.index, _config.input_buffered_total_max, shed, n);
    }
}

void shard::deliver_input_unbudgeted(std::uint32_t slot, std::span<const std::uint8_t> bytes) noexcept {
    conn_slot& s = _slots[slot];
    const conn_id id{slot, s.gen};
    // After pause_recv, completions already posted still arrive: at most one turn's worth of
    // receive buffers (the cancel leaves with the next submit). The service stopped reading on
    // purpose (a rate limit), so those bytes wait beyond its bound instead of closing it.
    const std::size_t input_max = _config.input_buffered_bytes_max +
        (s.recv_paused ? std::size_t{_config.recv_buffer_count} * _config.recv_buffer_bytes : 0);
    if (s.pending_input.empty()) {
        // Fast path: the service parses straight out of the receive buffer; only a partial
        // frame at the end is copied.
        const std::size_t consumed = _service->on_data(id, bytes);
        DERP_ASSERT(consumed <= bytes.size());
        if (s.state != conn_state::open || s.gen != id.gen || consumed == bytes.size()) return;
        if (bytes.size() - consumed > input_max) {
            begin_close(slot, close_cause::input_overflow);
            return;
        }
        s.pending_input.assign(bytes.begin() + static_cast<std::ptrdiff_t>(consumed), bytes.end());
        return;
    }
    if (s.pending_input.size() + bytes.size() > input_max) {
        begin_close(slot, close_cause::input_overflow);
        return;
    }
    s.pending_input.insert(s.pending_input.end(), bytes.begin(), bytes.end());
    const std::size_t consumed = _service->on_data(id, s.pending_input);
    if (s.state != conn_state::open || s.gen != id.gen) return;
    DERP_ASSERT(consumed <= s.pending_input.size());
    s.pending_input.erase(s.pending_input.begin(),
                          s.pending_input.begin() + static_cast<std::ptrdiff_t>(consumed));
    if (s.pending_input.empty() && s.pending_input.capacity() > pending_input_keep_bytes)
        std::vector<std::uint8_t>().swap(s.pending_input);
}

void shard::drain_inbound() noexcept {
    for (std::uint32_t from = 0; from < _config.thread_count; ++from) {
        spsc_ring<message>* ring = _inbound[from];
        if (ring == nullptr) continue;
        std::uint32_t taken = 0;
        while (taken < _config.inbound_batch_max) {
            const message* m = ring->pop();
            if (m == nullptr) break;
            const message copy = *m;
            ++taken;
            if (copy.kind >= message_kind_service_base && _service) _service->on_message(copy);
        }
        if (taken > 0) {
            ring->release();
            _counters.messages_received.add(taken);
        }
    }
}

bool shard::inbound_empty() const noexcept {
    for (const auto* ring : _inbound)
        if (ring != nullptr && !ring->empty_for_consumer()) return false;
    return true;
}

void shard::publish_outbound() noexcept {
    for (std::uint32_t to = 0; to < _config.thread_count; ++to) {
        spsc_ring<message>* ring = _outbound[to];
        if (ring == nullptr || !ring->publish()) continue;
        // Dekker pairing with the consumer's may_sleep store and inbound re-check (both
        // seq_cst): either it sees this batch before blocking, or we see its flag here. Only
        // one producer wins the exchange, so a sleeping thread gets one wake-up per sleep.
        thread_link& peer = _links[to];
        if (peer.may_sleep.load(std::memory_order_seq_cst) &&
            peer.may_sleep.exchange(false, std::memory_order_seq_cst)) {
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_msg_ring(sqe, peer.ring_fd, 0, pack_user_data(op::wake, 0, 0), 0);
            sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
            io_uring_sqe_set_data64(sqe, pack_user_data(op::msg_ring, to, 0));
            _counters.wakeups_sent.add();
        }
    }
}

void shard::run() noexcept {
    DERP_ASSERT(_ring_ready && (_service || _config.is_admin));
    thread_link& self = _links[_config.index];
    _now_ns = monotonic_ns();
    for (;;) {  // The only unbounded loop; everything inside is batch-bounded.
        _counters.loop_iterations.add();
        if (_send_pool) _counters.send_buffers_in_use.set(_send_pool->in_use());
        std::uint64_t backlog = 0;
        for (const auto* ring : _inbound)
            if (ring != nullptr) backlog += ring->occupancy();
        _counters.inbound_backlog.set(backlog);
        drain_inbound();
        if (!_stopping && self.stop_requested.load(std::memory_order_acquire)) start_stopping();
        if (!_stopping && !_draining) {
            if (const std::uint64_t deadline = self.drain_deadline_ns.load(std::memory_order_acquire); deadline != 0)
                start_draining(deadline);
        }
        check_drain();
        flush_writes();
        for (std::uint32_t slot : _rearm_recv) {
            conn_slot& s = _slots[slot];
            if (s.state == conn_state::open && !s.recv_armed && !s.recv_paused) prep_recv(slot);
        }
        _rearm_recv.clear();
        _recv_buffers.flush();
        _udp_buffers.flush();
        const bool service_busy = _service && _service->on_turn_end();
        publish_outbound();
        if (_stopping) {
            if (_conns_in_use == 0 && _global_ops == 0) break;
            if (_now_ns > _stop_deadline_ns) {
                log(log_level::warn, "thread {}: {} connection(s) still closing after the grace "
                    "period; tearing the ring down", _config.index, _conns_in_use);
                break;
            }
        }

        // Sleep until a completion, a timer, or a peer's wake-up; do not sleep with work queued.
        bool may_block = (_write_list.empty() || _send_starved) && !service_busy;
        std::optional<std::uint64_t> wake_ns = _timers.next_wake_ns();
        if (_stopping) wake_ns = std::min(wake_ns.value_or(_stop_deadline_ns), _now_ns + 50'000'000);
        // Draining: look again at least every 50 ms (the deadline; for the admin thread, the
        // shards finishing).
        if (_draining && !_stopping) wake_ns = std::min(wake_ns.value_or(_now_ns + 50'000'000), _now_ns + 50'000'000);
        if (_service_wake_ns != 0) wake_ns = std::min(wake_ns.value_or(_service_wake_ns), _service_wake_ns);
        _service_wake_ns = 0;
        int rc = 0;
        if (may_block) {
            self.may_sleep.store(true, std::memory_order_seq_cst);
            may_block = inbound_empty();
        }
        if (!may_block) {
            self.may_sleep.store(false, std::memory_order_relaxed);
            rc = io_uring_submit_and_get_events(&_ring);
        } else if (_config.wait_min_ns > 0) {
            rc = submit_and_wait_batched(wake_ns);
        } else if (wake_ns) {
            __kernel_timespec ts = timespec_until(*wake_ns);
            io_uring_cqe* cqe = nullptr;
            rc = io_uring_submit_and_wait_timeout(&_ring, &cqe, 1, &ts, nullptr);
        } else {
            rc = io_uring_submit_and_wait(&_ring, 1);
        }
        self.may_sleep.store(false, std::memory_order_relaxed);
        _counters.submits.add();
        ++_batch;
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
            log(log_level::error, "thread {}: io_uring_enter: {}", _config.index, std::strerror(-rc));
        _now_ns = monotonic_ns();
        // Messages first, then completions: a message published before an event that caused
        // one of these completions (a route change before the packet that relies on it, say)
        // is then always seen before that completion is handled.
        drain_inbound();

        unsigned head = 0;
        unsigned handled = 0;
        io_uring_cqe* cqe = nullptr;
        io_uring_for_each_cqe(&_ring, head, cqe) {
            dispatch(*cqe);
            ++handled;
        }
        io_uring_cq_advance(&_ring, handled);

        _counters.timers_fired.add(_timers.expire(_now_ns, [this](timer_node& node) noexcept {
            if (node.id == accept_retry_timer_id) {
                if (!_stopping && !_draining && !_accept_armed[node.owner]) prep_accept(node.owner);
                return;
            }
            conn_slot& s = _slots[node.owner];
            if (s.state != conn_state::open) return;
            if (node.id == write_timer_id) {
                begin_close(node.owner, close_cause::write_timeout);
                return;
            }
            _service->on_timer(conn_id{node.owner, s.gen}, node.id);
        }));
    }
    // Every accept has completed: the listeners can go, so that new connections are refused
    // at once rather than queued in a backlog nobody accepts from.
    for (int fd : _config.listen_fds)
        if (fd >= 0) ::close(fd);
    _config.listen_fds.clear();
    self.finished.store(true, std::memory_order_release);
}

}  // namespace derp::ring
