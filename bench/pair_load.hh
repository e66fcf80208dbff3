// Pairs of DERP clients (each sender sends to its receiver) on a one-shard client runtime,
// paced or unpaced, measured over a window: the load behind relay_bench and derpbench's
// throughput workload. Server CPU and RSS come from /proc when the server's pid is known.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "bench/derp_client.hh"
#include "ring/listen.hh"

namespace derp::bench {

struct pair_options {
    std::uint32_t pairs = 4;
    std::size_t packet_bytes = 1400;
    double rate_pps = 0;                  // over all senders; 0 = as fast as the sockets take
    std::uint64_t pacing_interval_ns = 250'000;
    double warmup_s = 0.3;
    double duration_s = 2;
    pid_t server_pid = -1;                // sample its CPU and RSS from /proc; -1 = don't
    std::uint32_t client_cpu_offset = 1;  // the client runtime's shard runs on this core
    std::shared_ptr<client::client_tls> tls;  // dial over TLS when set
};

struct pair_measurement {
    double delivered_pps = 0;
    double delivered_gbps = 0;
    std::uint64_t sent_packets = 0;       // in the measured window
    std::uint64_t delivered_packets = 0;  // of those, delivered by the end of the drain
    double loss = 0;
    double server_cpu_s = 0;              // user + system over the window (-1 when not sampled)
    double server_cpu_us_per_packet = 0;
    double server_cpu_share = 0;          // server CPU seconds per wall second
    double client_cpu_share = 0;          // this process
    std::uint64_t server_rss_bytes = 0;
    std::uint64_t failures = 0;           // handshakes that did not finish, unexpected closes
    std::string error;                    // set when the run could not be made at all
};

pair_measurement measure_pairs(const ring::socket_address& server, const pair_options& options);

// /proc readings of another process (0 when it cannot be read).
double process_cpu_seconds(pid_t pid);
std::uint64_t process_rss_bytes(pid_t pid);

}  // namespace derp::bench
