// Per-thread runtime counters. Each is written by exactly one thread (its shard) with a relaxed
// load+store, never a read-modify-write; readers on other threads (the admin plane's scrape, the
// tests) load them relaxed and sum across shards. Padded so that shards never share a line.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "ring/service.hh"
#include "ring/spsc.hh"

namespace derp::ring {

class counter {
public:
    void add(std::uint64_t n = 1) noexcept {
        _value.store(_value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
    void sub(std::uint64_t n = 1) noexcept {
        _value.store(_value.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
    }
    void set(std::uint64_t n) noexcept { _value.store(n, std::memory_order_relaxed); }
    std::uint64_t get() const noexcept { return _value.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> _value{0};
};

struct alignas(cache_line_bytes) shard_counters {
    counter accepts;                // connections accepted
    counter accept_errors;          // accept CQEs with an error (EMFILE, ENFILE, ...)
    counter accepts_refused_full;   // accepted, then closed at once: the slot table was full
    counter accepts_rate_limited;   // accepted, then reset at once: -accept-connection-limit
    counter input_buffered_bytes;   // gauge: unconsumed input held by the shard's connections
    counter input_shed_closes;      // connections closed because that input passed its max
    counter conns_open;             // gauge: connections in the slot table (open or closing)
    std::array<counter, close_cause_count> closes;  // by close_cause
    counter recv_bytes;
    counter send_bytes;
    counter recv_no_buffers;        // multishot recv stopped with -ENOBUFS (buffer ring empty)
    counter send_pool_exhausted;    // a connection wanted to send but no send buffer was free
    counter send_partial;           // sends the kernel completed short (resubmitted)
    counter messages_posted;        // messages pushed onto rings to other threads
    counter messages_received;
    counter ring_full;              // a post found the destination ring full (backpressure)
    counter wakeups_sent;           // MSG_RING wake-ups sent to sleeping peers
    counter submits;                // io_uring_enter calls that submitted or waited
    counter sqes;                   // SQEs prepared
    counter cqes;                   // CQEs handled
    counter late_cqes;              // CQEs for a slot generation that is gone
    counter timers_fired;
    counter send_buffers_in_use;    // gauge, set each loop turn
    counter inbound_backlog;        // gauge: messages waiting in the inbound rings at turn start
    counter datagrams_received;
    counter datagrams_truncated;
    counter datagrams_sent;
    counter datagram_send_errors;
    counter loop_iterations;
};

}  // namespace derp::ring
