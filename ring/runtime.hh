// The runtime: N shard threads plus the admin thread, the SPSC ring between every ordered pair
// of them, the listening sockets, and the process-level plumbing (signals, start-up errors,
// orderly stop). Services are created on their own thread by the factories given to start().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/result.hh"
#include "ring/counters.hh"
#include "ring/listen.hh"
#include "ring/shard.hh"

namespace derp::ring {

struct runtime_config {
    std::uint32_t shard_count = 1;
    bool pin_threads = true;
    std::uint32_t cpu_offset = 0;        // shard i on core (offset + i); admin on the core before
                                         // the offset (the last core when 0)
    std::vector<socket_address> listen;  // one SO_REUSEPORT socket per shard for each
    std::vector<std::uint8_t> listen_tags;  // per listen entry (missing = 0): see shard::listener_tag
    tcp_listen_options listen_options;
    std::vector<socket_address> udp_listen;    // UDP sockets of the admin thread (STUN)
    std::vector<socket_address> admin_listen;  // TCP listeners of the admin thread (operators)
    shard_config shard_defaults;         // sizes; index, cpu and fds are filled in per thread
    std::uint32_t admin_conn_slots = 64;
    std::uint32_t ring_capacity = 4096;  // messages per SPSC ring
    // The admin thread reads SIGINT/SIGTERM (stop) and SIGHUP (on_reload) from a signalfd.
    // Off in tests that run several runtimes in one process.
    bool handle_signals = false;
    // > 0: the first SIGTERM/SIGINT drains (request_drain) for at most this long; a second
    // one stops at once. 0: the first one stops.
    std::int64_t drain_timeout_ns = 0;
    std::function<void()> on_reload;     // SIGHUP, on the admin thread
};

// The default shard count: online cores minus the admin core, at least one.
std::uint32_t default_shard_count() noexcept;

class runtime {
public:
    using service_factory = std::function<std::unique_ptr<service>(shard&)>;

    // Opens the listeners, starts every thread and waits until each has its io_uring. Any
    // start-up failure stops the threads already started and comes back as one message.
    static result<std::unique_ptr<runtime>, std::string> start(runtime_config config,
                                                               service_factory shard_services,
                                                               service_factory admin_service);
    ~runtime();
    runtime(const runtime&) = delete;
    runtime& operator=(const runtime&) = delete;

    // From any thread (not from a signal handler): every thread stops accepting, closes its
    // connections and leaves its loop.
    void request_stop() noexcept;
    // From any thread: every thread stops accepting (listeners and UDP sockets close, so a
    // process sharing the ports takes over) and tells its service (on_drain); each shard stops
    // once its accepted connections have gone or timeout_ns has passed, the admin thread once
    // every shard has. False when a drain or stop was already under way.
    bool request_drain(std::int64_t timeout_ns) noexcept;
    // From any thread: wakes every loop for one turn, so services see state that a thread
    // without a ring changed (a benchmark's start flag, say).
    void wake_all() noexcept;
    // From any thread: wakes one thread's loop for a turn (a helper thread that left it work).
    void wake(std::uint32_t thread) noexcept;
    // Joins every thread, then hands messages still queued to discard_message(). Idempotent.
    void wait() noexcept;

    std::uint32_t shard_count() const noexcept { return _config.shard_count; }
    std::uint32_t thread_count() const noexcept { return _config.shard_count + 1; }
    // The listen addresses with their bound ports (port 0 becomes the kernel's choice).
    const std::vector<socket_address>& bound_addresses() const noexcept { return _config.listen; }
    const std::vector<socket_address>& bound_udp_addresses() const noexcept { return _config.udp_listen; }
    const std::vector<socket_address>& bound_admin_addresses() const noexcept { return _config.admin_listen; }
    const shard_counters& counters(std::uint32_t thread) const noexcept { return _counters[thread]; }
    const std::string& ring_setup_note(std::uint32_t thread) const noexcept {
        return _shards[thread]->ring_setup_note();
    }

private:
    explicit runtime(runtime_config config);
    static void on_signal(void* context, int signal_number) noexcept;

    runtime_config _config;
    std::unique_ptr<thread_link[]> _links;
    std::unique_ptr<shard_counters[]> _counters;
    std::vector<std::unique_ptr<spsc_ring<message>>> _rings;  // [from * threads + to]
    std::vector<std::unique_ptr<shard>> _shards;              // shards, then admin
    std::vector<std::thread> _threads;
    int _signal_fd = -1;
    bool _joined = false;
};

}  // namespace derp::ring
