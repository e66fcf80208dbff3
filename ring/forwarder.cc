// The raw forwarder's io_uring loop (see forwarder.hh).
#include "ring/forwarder.hh"

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "ring/log.hh"
#include "ring/provided_ring.hh"
#include "ring/user_data.hh"

namespace derp::ring {
namespace {

constexpr std::uint32_t no_slot = ~0u;
// The two descriptor reads share op::signal_read; the slot field tells them apart.
constexpr std::uint32_t stop_read_slot = 0;
constexpr std::uint32_t report_read_slot = 1;

// Bytes read into one provided buffer, waiting to be sent (from `offset`, up to `end`).
struct chunk {
    std::uint16_t bid = 0;
    std::uint32_t offset = 0;
    std::uint32_t end = 0;
};

// A FIFO of chunks in a ring that doubles when full: at most one entry per provided buffer.
class chunk_queue {
public:
    bool empty() const noexcept { return _count == 0; }
    chunk& front() noexcept { return _items[_head]; }
    void push(chunk c) {
        if (_count == _items.size()) grow();
        _items[(_head + _count) & (_items.size() - 1)] = c;
        ++_count;
    }
    chunk pop() noexcept {
        const chunk c = _items[_head];
        _head = (_head + 1) & (_items.size() - 1);
        --_count;
        return c;
    }

private:
    void grow() {
        std::vector<chunk> bigger(_items.empty() ? 8 : _items.size() * 2);
        for (std::size_t i = 0; i < _count; ++i) bigger[i] = _items[(_head + i) & (_items.size() - 1)];
        _items = std::move(bigger);
        _head = 0;
    }
    std::vector<chunk> _items;
    std::size_t _head = 0;
    std::size_t _count = 0;
};

struct conn {
    int fd = -1;
    std::uint32_t gen = 0;
    bool used = false;
    std::uint32_t peer = no_slot;
    bool recv_armed = false;
    bool send_in_flight = false;
    bool ending = false;       // the pair is closing: read no more, send what was read, close
    bool broken = false;       // a send failed: nothing more can be sent to it
    bool starved = false;      // its multishot recv ended with ENOBUFS; re-armed when buffers return
    bool cancel_sent = false;
    std::uint16_t ops = 0;     // SQEs whose last CQE has not arrived (recv, send, cancel)
    chunk_queue out;           // read from the peer, to be sent to this connection
    std::uint32_t next_free = 0;
};

}  // namespace

struct forwarder::state {
    forwarder_config config;
    io_uring ring{};
    bool ring_ready = false;
    std::string setup_note;
    provided_ring buffers;
    std::vector<conn> conns;
    std::uint32_t free_head = 0;
    std::uint32_t waiting = no_slot;  // accepted, its partner not yet
    chunk_queue waiting_input;         // what the waiting connection sent before its partner came
    std::vector<std::uint32_t> starved;
    std::uint32_t recycled_this_turn = 0;
    bool stopping = false;
    forwarder_counters counters;
    report_fn on_report = nullptr;
    void* report_context = nullptr;
    alignas(8) std::uint8_t stop_read[128]{};  // a signalfd_siginfo is 128 bytes, an eventfd count 8
    alignas(8) std::uint8_t report_read[128]{};

    ~state() {
        if (ring_ready) io_uring_queue_exit(&ring);  // cancels and waits for every op in flight
        for (auto& c : conns)
            if (c.fd >= 0) ::close(c.fd);
        if (config.listen_fd >= 0) ::close(config.listen_fd);
    }

    io_uring_sqe* get_sqe() noexcept {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        if (sqe == nullptr) {  // the submission queue is full mid-turn: hand it over
            io_uring_submit(&ring);
            ++counters.enters;
            sqe = io_uring_get_sqe(&ring);
        }
        return sqe;
    }

    void prep_accept() noexcept {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_multishot_accept(sqe, config.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        io_uring_sqe_set_data64(sqe, pack_user_data(op::accept, 0, 0));
    }
    void prep_fd_read(int fd, std::uint8_t* into, std::uint32_t slot) noexcept {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_read(sqe, fd, into, 128, 0);
        io_uring_sqe_set_data64(sqe, pack_user_data(op::signal_read, slot, 0));
    }
    void arm_recv(std::uint32_t slot) noexcept {
        conn& c = conns[slot];
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_recv_multishot(sqe, c.fd, nullptr, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = buffers.group();
        io_uring_sqe_set_data64(sqe, pack_user_data(op::recv, slot, c.gen));
        c.recv_armed = true;
        ++c.ops;
    }
    // The first queued chunk goes out, unless a send is already in flight: one send per
    // connection at a time keeps the byte order (two sends on one socket may interleave
    // when the first comes back short).
    void start_send(std::uint32_t slot) noexcept {
        conn& c = conns[slot];
        if (c.send_in_flight || c.broken || c.out.empty()) return;
        const chunk& h = c.out.front();
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_send(sqe, c.fd, buffers.buffer(h.bid) + h.offset, h.end - h.offset, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, pack_user_data(op::send, slot, c.gen));
        c.send_in_flight = true;
        ++c.ops;
        ++counters.sends;
    }
    void recycle(std::uint16_t bid) noexcept {
        buffers.recycle(bid);
        ++recycled_this_turn;
    }
    void recycle_all(chunk_queue& q) noexcept {
        while (!q.empty()) recycle(q.pop().bid);
    }

    void on_accept(const io_uring_cqe& cqe) noexcept {
        const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        if (cqe.res >= 0) {
            const int fd = cqe.res;
            if (stopping || free_head >= conns.size()) {
                if (!stopping) log(log_level::warn, "forwarder: all {} connection slots in use; closing a new one", conns.size());
                ::close(fd);
            } else {
                const std::uint32_t slot = free_head;
                conn& c = conns[slot];
                free_head = c.next_free;
                c.fd = fd;
                c.used = true;
                ++counters.accepted;
                ++counters.open;
                arm_recv(slot);
                if (waiting == no_slot) {
                    waiting = slot;
                } else {
                    c.peer = waiting;
                    conns[waiting].peer = slot;
                    waiting = no_slot;
                    ++counters.pairs;
                    // What the first one sent while it waited goes to its partner now.
                    while (!waiting_input.empty()) c.out.push(waiting_input.pop());
                    start_send(slot);
                }
            }
        } else if (cqe.res != -ECANCELED) {
            log(log_level::warn, "forwarder: accept: {}", std::strerror(-cqe.res));
        }
        if (!more && !stopping) prep_accept();
    }

    void on_recv(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept {
        const bool has_buffer = (cqe.flags & IORING_CQE_F_BUFFER) != 0;
        const auto bid = static_cast<std::uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
        const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        conn& c = conns[slot];
        DERP_ASSERT(c.used && c.gen == gen);  // a slot is freed only once its ops are done
        if (!more) c.recv_armed = false;
        if (cqe.res > 0) {
            DERP_ASSERT(has_buffer);
            ++counters.recv_completions;
            counters.recv_bytes += static_cast<std::uint64_t>(cqe.res);
            const chunk read{bid, 0, static_cast<std::uint32_t>(cqe.res)};
            if (c.ending) {
                counters.dropped_bytes += read.end;
                recycle(bid);
            } else if (c.peer != no_slot) {
                conns[c.peer].out.push(read);
                start_send(c.peer);
            } else {
                waiting_input.push(read);
            }
            // A multishot recv can end without an error (a full completion queue): read on.
            if (!more && !c.ending) arm_recv(slot);
        } else {
            if (has_buffer) recycle(bid);
            if (cqe.res == -ENOBUFS) {
                // Every buffer waits for a send: stop reading until one comes back (TCP pushes
                // back on the sender meanwhile).
                ++counters.recv_no_buffers;
                if (!more && !c.ending && !c.starved) {
                    c.starved = true;
                    starved.push_back(slot);
                }
            } else if (cqe.res == -EINTR) {
                if (!more && !c.ending) arm_recv(slot);
            } else if (cqe.res != -ECANCELED) {
                end_pair(slot);  // 0 (the peer closed), a reset or another error
            }
        }
        if (!more) op_done(slot);
    }

    void on_send(std::uint32_t slot, const io_uring_cqe& cqe) noexcept {
        conn& c = conns[slot];
        c.send_in_flight = false;
        if (cqe.res > 0) {
            chunk& h = c.out.front();
            counters.send_bytes += static_cast<std::uint64_t>(cqe.res);
            h.offset += static_cast<std::uint32_t>(cqe.res);
            if (h.offset < h.end) {
                ++counters.short_sends;  // the socket took part: the rest goes next
            } else {
                recycle(c.out.pop().bid);
            }
            start_send(slot);
        } else {
            // The receiver is gone (EPIPE, ECONNRESET) or the stop cancelled the send.
            c.broken = true;
            recycle_all(c.out);
            end_pair(slot);
        }
        op_done(slot);
    }

    // Either connection of a pair ended: both stop reading (their multishot recvs are cancelled)
    // and close once what they have queued is sent.
    void end_pair(std::uint32_t slot) noexcept {
        if (conns[slot].ending) return;
        if (waiting == slot) {
            waiting = no_slot;
            recycle_all(waiting_input);
        }
        const std::uint32_t peer = conns[slot].peer;
        begin_end(slot);
        if (peer != no_slot) begin_end(peer);
    }
    void begin_end(std::uint32_t slot) noexcept {
        conn& c = conns[slot];
        if (c.ending) return;
        c.ending = true;
        if (c.recv_armed && !c.cancel_sent) {
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_cancel64(sqe, pack_user_data(op::recv, slot, c.gen), 0);
            io_uring_sqe_set_data64(sqe, pack_user_data(op::cancel, slot, c.gen));
            c.cancel_sent = true;
            ++c.ops;
        }
        maybe_close(slot);
    }
    void op_done(std::uint32_t slot) noexcept {
        conn& c = conns[slot];
        DERP_ASSERT(c.ops > 0);
        --c.ops;
        maybe_close(slot);
    }
    void maybe_close(std::uint32_t slot) noexcept {
        conn& c = conns[slot];
        if (!c.used || !c.ending || c.ops > 0 || !(c.out.empty() || c.broken)) return;
        recycle_all(c.out);
        ::close(c.fd);
        ++counters.closed;
        --counters.open;
        if (c.peer != no_slot) conns[c.peer].peer = no_slot;
        const std::uint32_t gen = c.gen + 1;
        c = conn{};
        c.gen = gen;
        c.next_free = free_head;
        free_head = slot;
    }

    void dispatch(const io_uring_cqe& cqe) noexcept {
        const auto f = unpack_user_data(io_uring_cqe_get_data64(&cqe));
        switch (f.kind) {
        case op::accept: on_accept(cqe); break;
        case op::recv: on_recv(f.slot, f.gen, cqe); break;
        case op::send: on_send(f.slot, cqe); break;
        case op::cancel: op_done(f.slot); break;
        case op::signal_read:
            if (f.slot == stop_read_slot) {
                stopping = true;
            } else {
                if (on_report != nullptr) on_report(counters, report_context);
                if (cqe.res > 0) prep_fd_read(config.report_fd, report_read, report_read_slot);
            }
            break;
        default: break;
        }
    }

    // The turn's end: returned buffers become visible to the kernel in one batch, and the
    // connections that ran out of buffers read again.
    void end_turn() noexcept {
        buffers.flush();
        if (recycled_this_turn > 0 && !starved.empty()) {
            for (const std::uint32_t slot : starved) {
                conn& c = conns[slot];
                if (c.used && c.starved && !c.ending && !c.recv_armed) arm_recv(slot);
                c.starved = false;
            }
            starved.clear();
        }
        recycled_this_turn = 0;
    }
};

result<std::unique_ptr<forwarder>, std::string> forwarder::create(const forwarder_config& config) {
    auto s = std::make_unique<state>();
    s->config = config;
    if (config.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(static_cast<unsigned>(config.cpu), &set);
        if (const int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set); err != 0)
            return unexpected(fmt::format("cannot pin to cpu {}: {}", config.cpu, std::strerror(err)));
    }
    // The same set-up as derpd's shards (ring/shard.cc): SINGLE_ISSUER|DEFER_TASKRUN, else
    // COOP_TASKRUN, else plain, and a completion queue four times the submission queue.
    const std::pair<unsigned, const char*> attempts[] = {
        {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL, "SINGLE_ISSUER|DEFER_TASKRUN"},
        {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL, "COOP_TASKRUN"},
        {0, "no setup flags"},
    };
    int rc = -EINVAL;
    for (const auto& [flags, name] : attempts) {
        io_uring_params params{};
        params.flags = flags | IORING_SETUP_CQSIZE;
        params.cq_entries = config.ring_entries * 4;
        rc = io_uring_queue_init_params(config.ring_entries, &s->ring, &params);
        if (rc == 0) {
            s->setup_note = name;
            break;
        }
        if (rc != -EINVAL) break;
    }
    if (rc != 0) {
        // The listener is ours from here on: close it as the state would.
        if (config.listen_fd >= 0) ::close(config.listen_fd);
        s->config.listen_fd = -1;
        return unexpected(fmt::format("io_uring_setup: {}", std::strerror(-rc)));
    }
    s->ring_ready = true;
    io_uring_register_ring_fd(&s->ring);
    if (auto r = s->buffers.setup(s->ring, config.recv_buffer_count, config.recv_buffer_bytes, 0); !r)
        return unexpected(r.error());
    s->conns.resize(config.conn_slots);
    for (std::uint32_t i = 0; i < config.conn_slots; ++i) s->conns[i].next_free = i + 1;
    return std::unique_ptr<forwarder>(new forwarder(std::move(s)));
}

forwarder::forwarder(std::unique_ptr<state> s) : _s(std::move(s)) {}
forwarder::~forwarder() = default;
const forwarder_counters& forwarder::counters() const noexcept { return _s->counters; }
const std::string& forwarder::setup_note() const noexcept { return _s->setup_note; }

result<void, std::string> forwarder::run(report_fn on_report, void* context) noexcept {
    state& s = *_s;
    s.on_report = on_report;
    s.report_context = context;
    s.prep_accept();
    if (s.config.stop_fd >= 0) s.prep_fd_read(s.config.stop_fd, s.stop_read, stop_read_slot);
    if (s.config.report_fd >= 0) s.prep_fd_read(s.config.report_fd, s.report_read, report_read_slot);
    std::string error;
    while (!s.stopping) {
        const int rc = io_uring_submit_and_wait(&s.ring, 1);
        ++s.counters.enters;
        if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EBUSY) {
            error = fmt::format("io_uring_enter: {}", std::strerror(-rc));
            break;
        }
        unsigned head = 0;
        unsigned handled = 0;
        io_uring_cqe* cqe = nullptr;
        io_uring_for_each_cqe(&s.ring, head, cqe) {
            s.dispatch(*cqe);
            ++handled;
        }
        io_uring_cq_advance(&s.ring, handled);
        s.counters.cqes += handled;
        s.end_turn();
    }
    // The stop: tearing the ring down cancels every op in flight (their buffers die with it);
    // then every descriptor is closed.
    io_uring_queue_exit(&s.ring);
    s.ring_ready = false;
    for (auto& c : s.conns) {
        if (c.fd < 0) continue;
        ::close(c.fd);
        c.fd = -1;
        ++s.counters.closed;
        --s.counters.open;
    }
    if (!error.empty()) return unexpected(error);
    return {};
}

}  // namespace derp::ring
