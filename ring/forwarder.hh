// A raw TCP forwarder on io_uring, the baseline of issue 17: "the least any relay could spend on
// this machine" per packet. No protocol: accepted connections are paired in the order they were
// accepted (the 1st with the 2nd, the 3rd with the 4th, ...) and every byte one of a pair sends
// goes to the other. One thread, one io_uring set up as derpd's shards set theirs up (the same
// flags), a multishot accept, a multishot recv per connection into a provided-buffer ring, and
// one send per recv completion, straight from the receive buffer (no copy in userspace); the
// buffer goes back to the kernel when its send has completed. Nothing is batched or delayed on
// purpose, and nothing is dropped: while every buffer waits for a send (a slow receiver), reads
// stop (ENOBUFS) and TCP pushes back on the senders.
//
// Pairing in order needs clients that connect one at a time (each connect complete before the
// next starts); derpbench's raw mode (tcp:// URLs) does. When either connection of a pair ends
// (EOF, reset, error), the pair stops reading, sends on what it had already read, then closes
// both sockets. There are no write timeouts: a receiver that never reads keeps its pair (and the
// buffers queued for it) until it closes or the forwarder stops; stop() frees everything.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/result.hh"

namespace derp::ring {

struct forwarder_config {
    int listen_fd = -1;        // a listening TCP socket; owned by the forwarder from create() on
    int stop_fd = -1;          // readable = stop (a signalfd or an eventfd); not owned; -1 = none
    int report_fd = -1;        // readable = hand the counters to on_report (a signalfd); not owned
    int cpu = -1;              // pin the calling thread to this core; -1 = leave it
    std::uint32_t ring_entries = 1024;
    std::uint32_t recv_buffer_count = 512;   // power of two; the most bytes in flight, together
    std::uint32_t recv_buffer_bytes = 16384;
    std::uint32_t conn_slots = 4096;
};

// What the loop did, for the report and the tests.
struct forwarder_counters {
    std::uint64_t accepted = 0;
    std::uint64_t pairs = 0;               // pairs formed
    std::uint64_t closed = 0;              // connections closed (descriptors released)
    std::uint64_t open = 0;                // connections open now
    std::uint64_t recv_completions = 0;    // recv CQEs that carried bytes
    std::uint64_t recv_bytes = 0;
    std::uint64_t sends = 0;               // send SQEs (a short send is resubmitted: counted again)
    std::uint64_t short_sends = 0;
    std::uint64_t send_bytes = 0;
    std::uint64_t recv_no_buffers = 0;     // multishot recvs that ended for want of a buffer
    std::uint64_t dropped_bytes = 0;       // read after the pair began to close (nobody to take them)
    std::uint64_t enters = 0;              // io_uring_enter calls (submit and wait)
    std::uint64_t cqes = 0;
};

class forwarder {
public:
    using report_fn = void (*)(const forwarder_counters&, void* context);

    // Sets up the io_uring and the buffers. Errors say what the kernel refused.
    static result<std::unique_ptr<forwarder>, std::string> create(const forwarder_config& config);
    ~forwarder();
    forwarder(const forwarder&) = delete;
    forwarder& operator=(const forwarder&) = delete;

    // Runs the loop on the calling thread until stop_fd is readable (or the listener fails);
    // then closes every connection. Each time report_fd is readable, on_report is called with
    // the counters (on this thread).
    result<void, std::string> run(report_fn on_report = nullptr, void* context = nullptr) noexcept;
    const forwarder_counters& counters() const noexcept;

    // How the io_uring was set up ("SINGLE_ISSUER|DEFER_TASKRUN", ...), as derpd logs it.
    const std::string& setup_note() const noexcept;

    struct state;  // the loop's state (ring/forwarder.cc)

private:
    explicit forwarder(std::unique_ptr<state> s);
    std::unique_ptr<state> _s;
};

}  // namespace derp::ring
