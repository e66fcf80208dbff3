// The contract between the runtime and what runs on it (the DERP server, the admin plane, test
// services): one service object per thread, called only on that thread, never concurrently.
// Handlers compute and queue; the shard loop alone submits to io_uring.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <span>

namespace derp::ring {

class shard;

// Names a connection on its shard. A stale id (the slot was closed and reused) is recognised by
// its generation and ignored by every shard call.
struct conn_id {
    std::uint32_t slot = 0;
    std::uint32_t gen = 0;
    friend bool operator==(conn_id, conn_id) = default;
};

// Why a connection ended, as the runtime saw it. Services count their own protocol reasons
// before they call shard::close().
enum class close_cause : std::uint8_t {
    peer_closed,     // recv returned 0 (FIN) or the peer reset
    io_error,        // any other recv/send error
    closed_by_app,   // the service called close()
    write_timeout,   // a send did not complete within the connection's write timeout
    input_overflow,  // the service left more unconsumed input than input_buffered_bytes_max
    shutdown,        // the process is stopping
};
inline constexpr std::size_t close_cause_count = 6;
const char* close_cause_name(close_cause cause) noexcept;

// A message between threads: 32 bytes, copied through an SPSC ring. `kind` values below
// message_kind_service_base belong to the runtime; the rest are the service's.
struct message {
    std::uint16_t kind = 0;
    std::uint16_t from_thread = 0;  // filled in by shard::post
    std::uint32_t u32 = 0;
    std::uint64_t u64 = 0;
    std::uint64_t u64b = 0;
    void* ptr = nullptr;
};
static_assert(sizeof(message) == 32);
inline constexpr std::uint16_t message_kind_service_base = 16;

class service {
public:
    virtual ~service() = default;

    // A connection was accepted; `peer` is its remote address.
    virtual void on_accept(conn_id conn, const sockaddr_storage& peer) noexcept = 0;
    // An outgoing connection made with shard::connect() is established (error 0), or failed
    // (a positive errno; on_closed follows).
    virtual void on_connect(conn_id conn, int error) noexcept {
        (void)conn;
        (void)error;
    }
    // Bytes arrived. Returns how many it consumed; the rest is kept and offered again, in front
    // of the next bytes. The span is only valid during the call.
    virtual std::size_t on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept = 0;
    // The connection may send: fill `out` (a registered buffer) and return the bytes written.
    // Called after shard::want_write(); call want_write() again from here if more is waiting
    // than fits.
    virtual std::size_t on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept = 0;
    // A UDP datagram arrived on socket `socket_index` of this thread (see shard_config::udp_fds).
    // `truncated`: it was longer than the receive buffer and was cut.
    virtual void on_datagram(std::uint32_t socket_index, const sockaddr_storage& from,
                             std::span<const std::uint8_t> payload, bool truncated) noexcept {
        (void)socket_index;
        (void)from;
        (void)payload;
        (void)truncated;
    }
    // A receive failed with `error` (an errno) and the connection is about to close as an
    // io_error: the last chance to look at the socket (kTLS reports a non-data record as EIO).
    virtual void on_recv_error(conn_id conn, int error) noexcept {
        (void)conn;
        (void)error;
    }
    // A close_after_flush() connection has sent everything and is about to close: the last
    // moment to write a few bytes synchronously (TLS sends its close_notify alert here).
    virtual void on_flushed_close(conn_id conn) noexcept { (void)conn; }
    // After shard::pause_recv(): no receive completion can arrive any more until resume_recv()
    // (every byte read so far has gone to on_data). kTLS RX is installed here.
    virtual void on_recv_paused(conn_id conn) noexcept { (void)conn; }
    // One of the connection's service timers (id < shard::service_timer_count) fired.
    virtual void on_timer(conn_id conn, std::uint8_t timer_id) noexcept = 0;
    // The connection is closing; called exactly once per accepted connection. The id is dead
    // from here on.
    virtual void on_closed(conn_id conn, close_cause cause) noexcept = 0;
    // A message from another thread arrived (a service kind).
    virtual void on_message(const message& m) noexcept = 0;
    // A message that was still queued when the runtime stopped (after every thread joined):
    // release whatever it carries. Called on the stopping thread, not the shard's.
    virtual void discard_message(const message& m) noexcept { (void)m; }
    // Called once per loop turn, after completions, messages and timers were handled and before
    // the batch of outgoing messages is published. A service that holds work back (messages
    // that found a ring full, say) retries it here and returns true to keep the loop from
    // sleeping while it still has some.
    virtual bool on_turn_end() noexcept { return false; }
    // The runtime is stopping: the listeners are closed and every connection will be closed.
    virtual void on_stop() noexcept {}
    // The process is draining (SIGTERM with a drain timeout): this shard accepts no more
    // connections and stops once every accepted one has left, or at deadline_ns (monotonic),
    // when the rest are closed. Until then it serves as usual; a service tells its clients to
    // go elsewhere here (DERP's Restarting frame).
    virtual void on_drain(std::uint64_t deadline_ns) noexcept { (void)deadline_ns; }
};

}  // namespace derp::ring
