// One shard: a thread pinned to a core that owns one io_uring, its listening sockets, a fixed
// table of connection slots, a provided-buffer ring for multishot recv, a registered buffer pool
// for sends, a timer wheel, and its ends of the SPSC rings to every other thread. Nothing here is
// touched by another thread except through those rings, the wake-up flag and the counters.
// The admin thread runs the same loop with no listeners (and the signalfd).
#pragma once

#include <liburing.h>
#include <sys/signalfd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <span>
#include <string>
#include <vector>

#include "core/result.hh"
#include "ring/accept_limiter.hh"
#include "ring/buffer_pool.hh"
#include "ring/counters.hh"
#include "ring/log.hh"
#include "ring/provided_ring.hh"
#include "ring/service.hh"
#include "ring/spsc.hh"
#include "ring/timer_wheel.hh"
#include "ring/user_data.hh"

namespace derp::ring {

// What every thread publishes to the others so that they can wake it. Owned by the runtime.
struct alignas(cache_line_bytes) thread_link {
    std::atomic<bool> may_sleep{false};  // set by the owner just before it blocks
    std::atomic<bool> stop_requested{false};
    // Drain (runtime::request_drain): the monotonic deadline, 0 while not draining.
    std::atomic<std::uint64_t> drain_deadline_ns{0};
    std::atomic<bool> finished{false};  // the thread has left its loop
    std::atomic<bool> listeners_closed{false};  // draining, and every listener/UDP socket is closed
    int ring_fd = -1;                    // target of IORING_OP_MSG_RING
    int wake_eventfd = -1;               // for threads that own no ring (signals, main, tests)
};

struct shard_config {
    std::uint32_t index = 0;           // this thread's index: shards 0..N-1, admin N
    std::uint32_t thread_count = 1;    // shards + admin
    int cpu = -1;                      // core to pin to; -1 = not pinned
    bool is_admin = false;
    std::uint32_t ring_entries = 1024;
    std::uint32_t conn_slots = 1024;
    std::uint32_t recv_buffer_count = 512;   // power of two
    std::uint32_t recv_buffer_bytes = 16384;
    std::uint32_t send_buffer_count = 1024;
    std::uint32_t send_buffer_bytes = 16384;
    std::uint32_t input_buffered_bytes_max = 1u << 20;
    // Unconsumed input held by all of the shard's connections together (partial frames, a
    // request head in pieces). Past it, the connections whose input has gone longest without
    // the service consuming any are closed until the total fits: a client that completes its
    // frames never holds input for long, one that sends partial frames and stops does.
    std::uint64_t input_buffered_total_max = 64ull << 20;
    std::uint32_t inbound_batch_max = 256;   // messages taken from one ring per loop turn
    std::int64_t default_write_timeout_ns = 0;  // 0 = none
    // The loop's sleep, batched (kernels with IORING_FEAT_MIN_TIMEOUT, 6.13+): once asleep it
    // waits for wait_batch_cqes completions, or for wait_min_ns to pass with at least one, so
    // that a busy shard wakes once per few completions instead of once per completion. Costs
    // up to wait_min_ns of latency per wake-up. 0 = wake at the first completion.
    std::int64_t wait_min_ns = 0;
    std::uint32_t wait_batch_cqes = 16;
    std::int64_t shutdown_grace_ns = 5'000'000'000;
    std::vector<int> listen_fds;             // owned from start() on
    std::vector<std::uint8_t> listen_tags;   // per listen_fds entry; services read it per connection
    int signal_fd = -1;                      // admin only: SIGINT/SIGTERM/SIGHUP
    // -accept-connection-limit: shared by every shard (not owned); nullptr = unlimited. It
    // applies to listeners whose tag's bit is set in accept_limit_tags.
    accept_limiter* accept_limit = nullptr;
    std::uint32_t accept_limit_tags = ~0u;
    std::vector<int> udp_fds;                // UDP sockets read with multishot recvmsg (owned)
};

// Optional callback for signals read by the admin thread (which owns the signalfd).
using signal_handler = void (*)(void* context, int signal_number) noexcept;

class shard {
public:
    // Timers per connection for the services: 0 and 1 the DERP service (or the client pool),
    // 2 the TLS layer's handshake deadline, 3 the WebSocket layer's close handshake.
    static constexpr std::uint8_t service_timer_count = 4;
    // Datagrams longer than this are cut (and reported truncated): STUN needs a few hundred.
    static constexpr std::uint32_t udp_datagram_bytes_max = 2048;

    shard(shard_config config, std::span<thread_link> links,
          std::vector<spsc_ring<message>*> outbound, std::vector<spsc_ring<message>*> inbound,
          shard_counters& counters);
    ~shard();
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;

    // Runs on the shard's own thread: sets up the io_uring (which must be created by the thread
    // that submits to it under SINGLE_ISSUER|DEFER_TASKRUN), registers buffers. Start-up errors
    // come back as text with a hint.
    result<void, std::string> init() noexcept;
    void set_service(std::unique_ptr<service> svc) noexcept { _service = std::move(svc); }
    void set_signal_handler(signal_handler handler, void* context) noexcept {
        _signal_handler = handler;
        _signal_context = context;
    }
    // The loop; returns after a stop request once every connection is gone.
    void run() noexcept;
    // After the thread has stopped: a message that was never delivered goes to the service.
    void discard_pending(const message& m) noexcept {
        if (_service) _service->discard_message(m);
    }

    // --- Calls for the service, on this shard's thread only. Stale ids are ignored. ---
    std::uint32_t index() const noexcept { return _config.index; }
    std::uint32_t thread_count() const noexcept { return _config.thread_count; }
    std::uint32_t shard_count() const noexcept { return _config.thread_count - 1; }
    std::uint32_t admin_index() const noexcept { return _config.thread_count - 1; }
    std::uint64_t now_ns() const noexcept { return _now_ns; }
    bool is_open(conn_id conn) const noexcept;
    int fd_of(conn_id conn) const noexcept;
    // The tag of the listener that accepted the connection (shard_config::listen_tags; 0 for
    // outgoing connections and untagged listeners).
    std::uint8_t listener_tag(conn_id conn) const noexcept;
    // Asks for on_writable() when the connection can send.
    void want_write(conn_id conn) noexcept;
    // Starts the connection's send right now (on_writable is called re-entrantly) instead of at
    // the end of the loop turn, unless a send is already in flight. For a service whose queue
    // for this connection is full and would otherwise drop.
    void flush_now(conn_id conn) noexcept;
    // True when the connection's send has been in flight through a whole batch of completions:
    // a send the socket takes completes in the first batch after its submission (the kernel
    // issues it inline), so this one is waiting for the peer to read (its socket buffer is
    // full). False when nothing is in flight or it may yet complete in the batch being handled.
    bool send_waits_on_peer(conn_id conn) noexcept;
    // Offers the connection's unconsumed input to on_data again now: for a service that
    // consumed nothing while waiting for something else (a registration) and is ready now.
    // With nothing kept, on_data is called with no bytes (a layer above may hold input).
    void replay_input(conn_id conn) noexcept;
    // Stops receiving on the connection: the multishot recv is cancelled, and once its last
    // completion has been delivered, on_recv_paused() is called (at once when none is armed).
    // A socket option that changes what recv returns (kTLS RX) may only be set in that
    // window: a completion already posted would hold bytes read under the old rules.
    void pause_recv(conn_id conn) noexcept;
    void resume_recv(conn_id conn) noexcept;
    // One receive buffer per recv instead of a multishot recv, from the next arming on. For a
    // connection whose reading is paced (a rate limit): a multishot recv re-armed on a socket
    // that queued megabytes meanwhile would fill every free buffer of the shard before the
    // service could pause it again, and that input would wait in memory.
    void set_recv_one_shot(conn_id conn, bool one_shot) noexcept;
    void close(conn_id conn) noexcept;
    // Sends one datagram on UDP socket `socket_index` at once (sendto, non-blocking). Returns
    // 0 or the errno; UDP has no queue to wait in, so a full socket buffer drops (counted).
    int send_datagram(std::uint32_t socket_index, const sockaddr_storage& to, socklen_t to_length,
                      std::span<const std::uint8_t> payload) noexcept;
    // Opens an outgoing TCP connection; on_connect() reports the outcome. Nothing when the slot
    // table is full or no socket could be made (errno says why).
    std::optional<conn_id> connect(const sockaddr_storage& address, socklen_t length) noexcept;
    // Closes once everything the service has asked to send has been sent.
    void close_after_flush(conn_id conn) noexcept;
    void set_write_timeout(conn_id conn, std::int64_t timeout_ns) noexcept;
    void arm_timer(conn_id conn, std::uint8_t timer_id, std::uint64_t deadline_ns) noexcept;
    void cancel_timer(conn_id conn, std::uint8_t timer_id) noexcept;
    // Queues a message for another thread; it is published at the end of this loop turn.
    // False when that ring is full: counted, and the caller decides (drop, retry later).
    bool post(std::uint32_t to_thread, message m) noexcept;
    // Makes the loop wake no later than deadline_ns (monotonic) for its next turn, at the
    // kernel timer's precision rather than the timer wheel's 4 ms tick (pacing). One turn only.
    void wake_at(std::uint64_t deadline_ns) noexcept {
        if (_service_wake_ns == 0 || deadline_ns < _service_wake_ns) _service_wake_ns = deadline_ns;
    }
    shard_counters& counters() noexcept { return _counters; }
    buffer_pool& send_pool() noexcept { return *_send_pool; }
    std::uint32_t open_connections() const noexcept { return _conns_in_use; }
    std::uint64_t input_buffered_bytes() const noexcept { return _input_total; }
    // Connections accepted from a listener that are still open (outgoing ones not counted): a
    // draining shard stops when this reaches zero.
    std::uint32_t accepted_connections() const noexcept { return _accepted_in_use; }
    bool draining() const noexcept { return _draining; }
    // What the io_uring setup fell back to, for logs and metrics.
    const std::string& ring_setup_note() const noexcept { return _setup_note; }

private:
    enum class conn_state : std::uint8_t { free, open, closing };
    static constexpr std::uint32_t no_buffer = ~0u;
    static constexpr std::uint8_t write_timer_id = service_timer_count;
    static constexpr std::uint8_t accept_retry_timer_id = 0x7f;
    static constexpr std::uint32_t cancel_slot_listener = slot_max;  // user_data slot of listener cancels
    static constexpr std::uint64_t accept_retry_ns = 100'000'000;    // after EMFILE/ENFILE: 100 ms

    struct conn_slot {
        int fd = -1;
        std::uint32_t gen = 0;
        conn_state state = conn_state::free;
        bool recv_armed = false;
        bool send_in_flight = false;
        bool want_write = false;
        bool in_write_list = false;
        bool close_when_flushed = false;
        bool cancel_sent = false;
        bool connecting = false;  // an outgoing connect is in flight: no sends yet
        bool accepted = false;    // from a listener (counted in _accepted_in_use)
        std::uint8_t listener_tag = 0;
        bool recv_paused = false;
        bool recv_one_shot = false;  // set_recv_one_shot
        std::uint16_t ops_in_flight = 0;
        std::uint32_t send_buffer = no_buffer;
        std::uint32_t send_offset = 0;
        std::uint32_t send_length = 0;
        // A connection whose socket was full (a short write) writes from its own memory until
        // a send goes out whole again, so that a receiver that stopped reading holds no buffer
        // of the shard's send pool while it waits (submit_send explains).
        bool send_slow = false;
        bool send_was_short = false;   // the send in flight came back short at least once
        // The completion batch in which the send in flight would complete if the socket took it
        // at once (send_waits_on_peer).
        std::uint64_t send_batch = 0;
        bool send_from_heap = false;   // the send in flight writes send_heap
        std::vector<std::uint8_t> send_heap;
        std::int64_t write_timeout_ns = 0;
        std::vector<std::uint8_t> pending_input;
        std::size_t input_accounted = 0;   // pending_input's capacity as counted in _input_total
        std::size_t input_size_seen = 0;   // its size at the last count
        std::uint64_t input_progress_ns = 0;  // last time it was empty or shrank (consumed)
        timer_node timers[service_timer_count + 1];
        std::uint32_t next_free = 0;
    };

    conn_slot* lookup(conn_id conn) noexcept;
    const conn_slot* lookup(conn_id conn) const noexcept;
    io_uring_sqe* get_sqe() noexcept;
    void prep_recv(std::uint32_t slot) noexcept;
    void prep_accept(std::uint32_t listener) noexcept;
    void prep_wake_read() noexcept;
    void prep_signal_read() noexcept;
    void submit_send(std::uint32_t slot) noexcept;
    void prep_send(std::uint32_t slot) noexcept;  // the bytes send_offset..send_length
    void begin_close(std::uint32_t slot, close_cause cause) noexcept;
    void close_flushed(std::uint32_t slot) noexcept;  // close_after_flush's end
    void maybe_finish_close(std::uint32_t slot) noexcept;
    void op_done(std::uint32_t slot) noexcept;

    void dispatch(const io_uring_cqe& cqe) noexcept;
    void handle_accept(std::uint32_t listener, const io_uring_cqe& cqe) noexcept;
    void handle_recv(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept;
    void handle_send(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept;
    void handle_connect(std::uint32_t slot, std::uint32_t gen, const io_uring_cqe& cqe) noexcept;
    void prep_recvmsg(std::uint32_t socket_index) noexcept;
    void handle_recvmsg(std::uint32_t socket_index, const io_uring_cqe& cqe) noexcept;
    std::optional<std::uint32_t> take_slot(int fd) noexcept;
    void deliver_input(std::uint32_t slot, std::span<const std::uint8_t> bytes) noexcept;
    void deliver_input_unbudgeted(std::uint32_t slot, std::span<const std::uint8_t> bytes) noexcept;
    void account_input(std::uint32_t slot) noexcept;  // _input_total follows the slot; sheds past the max
    void shed_input() noexcept;
    void flush_writes() noexcept;
    // From now (_now_ns) to deadline_ns, at least 0: a wait's timeout.
    __kernel_timespec timespec_until(std::uint64_t deadline_ns) const noexcept;
    // Submits and sleeps with the kernel's min-wait (see shard_config::wait_min_ns; init()
    // sets it to 0 where the kernel has none).
    int submit_and_wait_batched(std::optional<std::uint64_t> wake_ns) noexcept;
    void drain_inbound() noexcept;
    void publish_outbound() noexcept;
    void start_stopping() noexcept;
    void start_draining(std::uint64_t deadline_ns) noexcept;
    void end_listening(bool close_idle) noexcept;  // cancels accepts and recvmsgs (stop, drain)
    void check_drain() noexcept;  // each turn while draining: stop when done or at the deadline
    void close_listener(std::uint32_t listener) noexcept;
    void close_udp_socket(std::uint32_t socket_index) noexcept;
    void note_listeners_closed() noexcept;  // publishes listeners_closed once all are
    bool inbound_empty() const noexcept;

    shard_config _config;
    std::span<thread_link> _links;
    std::vector<spsc_ring<message>*> _outbound;  // by destination thread (nullptr for self)
    std::vector<spsc_ring<message>*> _inbound;   // by source thread (nullptr for self)
    shard_counters& _counters;
    std::unique_ptr<service> _service;
    signal_handler _signal_handler = nullptr;
    void* _signal_context = nullptr;

    io_uring _ring{};
    bool _ring_ready = false;
    std::string _setup_note;
    bool _use_fixed_sends = false;
    std::uint64_t _batch = 0;          // completion batches reaped (one per loop wait)
    bool _ring_fd_registered = false;
    // IORING_FEAT_MIN_TIMEOUT (Linux 6.13), newer than Debian 12's liburing headers.
    static constexpr unsigned feature_min_timeout = 1u << 15;
    std::unique_ptr<buffer_pool> _send_pool;
    provided_ring _recv_buffers;  // group 0: multishot recv on TCP connections
    provided_ring _udp_buffers;   // group 1: multishot recvmsg on UDP sockets (admin)
    msghdr _udp_msghdr{};         // template for recvmsg multishot: name length, no control

    std::vector<conn_slot> _slots;
    std::uint32_t _free_head = 0;
    std::uint32_t _conns_in_use = 0;
    std::uint32_t _accepted_in_use = 0;
    std::uint64_t _input_total = 0;  // bytes of pending_input capacity over every slot
    std::vector<std::uint32_t> _write_list;
    // Destination addresses of connects in flight (the kernel reads them until completion).
    std::unordered_map<std::uint32_t, std::unique_ptr<sockaddr_storage>> _connecting;
    std::vector<std::uint32_t> _write_batch;   // flush_writes' working copy, kept for reuse
    bool _send_starved = false;              // a writer found the send pool empty
    std::vector<std::uint32_t> _rearm_recv;  // slots whose multishot recv ended (e.g. ENOBUFS)
    std::vector<bool> _accept_armed;
    std::vector<timer_node> _listener_retry;  // accept re-arm after EMFILE/ENFILE
    std::vector<bool> _recvmsg_armed;         // by UDP socket
    timer_wheel _timers;
    std::uint64_t _now_ns = 0;
    std::uint64_t _service_wake_ns = 0;      // wake_at() for the coming wait; 0 = none
    std::uint64_t _wake_value = 0;           // eventfd read target
    signalfd_siginfo _signal_info{};         // signalfd read target (admin)
    bool _stopping = false;
    std::uint64_t _stop_deadline_ns = 0;
    bool _draining = false;
    bool _drain_announced = false;  // on_drain() was called
    std::uint64_t _drain_deadline_ns = 0;
    std::uint32_t _global_ops = 0;           // listener, eventfd and signalfd ops in flight
    log_limiter _accept_error_log{1'000'000'000};
    log_limiter _accept_limit_log{1'000'000'000};
    log_limiter _input_shed_log{1'000'000'000};
};

}  // namespace derp::ring
