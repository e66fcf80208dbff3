// Pairs of DERP clients (each sender sends to its receiver) on a one-shard client runtime,
// paced or unpaced, measured over a window: the load behind relay_bench and derpbench's
// throughput workload. Server CPU and RSS come from /proc when the server's pid is known.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>
#include <memory>
#include <string>

#include "bench/proc_sample.hh"
#include "client/derp_client.hh"
#include "ring/listen.hh"

namespace derp::bench {

// A mix of packet sizes, (bytes, share); shares sum to 1.
using size_mix = std::vector<std::pair<std::size_t, double>>;
// What a VPN relay carries, roughly: TCP ACKs and keepalives (about half the packets), some
// mid-size, the rest full WireGuard MTU. Mean 567 bytes, close to the 570 the issue names.
size_mix realistic_size_mix();
double mean_size(const size_mix& mix);

// A snapshot during the measured window, for a live progress line.
struct pair_progress {
    double elapsed_s = 0;
    std::uint64_t sent_packets = 0;
    std::uint64_t delivered_packets = 0;
    double delivered_gbps = 0;
};

struct pair_options {
    std::uint32_t pairs = 4;
    std::size_t packet_bytes = 1400;
    size_mix sizes;                       // when not empty, packet sizes follow it (packet_bytes unused)
    double rate_pps = 0;                  // over all senders; 0 = as fast as the sockets take
    std::uint64_t pacing_interval_ns = 250'000;
    double warmup_s = 0.3;
    double duration_s = 2;
    pid_t server_pid = -1;                // sample its CPU and RSS from /proc; -1 = don't
    std::uint32_t client_cpu_offset = 1;  // the client runtime's shard runs on this core
    std::shared_ptr<client::client_tls> tls;  // dial over TLS when set
    std::string host = "127.0.0.1";       // Host header (and the TLS name, from the context)
    bool websocket = false;               // DERP over WebSocket (spec 3.4) instead of Upgrade: DERP
    bool raw = false;                     // a raw forwarder (bench/raw_pool.hh), not a DERP server
    std::uint32_t frames_per_write_max = 0;  // a sender's frames per send; 0 = as many as fit
    std::optional<key_mesh> mesh_key;
    // Several servers (a region): pair i uses servers[i % n]; with cross_node its receiver is
    // on the next server, so every packet crosses the region's mesh.
    bool cross_node = false;
    // Per server (when not empty): its Host header and TLS context (its name), for regions
    // whose nodes have names of their own.
    std::vector<std::string> hosts;
    std::vector<std::shared_ptr<tls::context>> contexts;
    std::function<void(const pair_progress&)> progress;  // called about every 250 ms
    double stop_reading_after_s = -1;     // fault injection: receivers stop reading this long after sending starts
};

struct pair_measurement {
    double delivered_pps = 0;
    double delivered_gbps = 0;
    std::uint64_t sent_packets = 0;       // in the measured window
    std::uint64_t delivered_packets = 0;  // of those, delivered by the end of the drain
    std::uint64_t late_packets = 0;       // of those, delivered only after the window ended
    double loss = 0;
    double server_cpu_s = 0;              // user + system over the window (-1 when not sampled)
    double server_cpu_us_per_packet = 0;
    double server_cpu_share = 0;          // server CPU seconds per wall second
    double client_cpu_share = 0;          // this process
    std::uint64_t server_rss_bytes = 0;
    std::uint64_t failures = 0;           // handshakes that did not finish, unexpected closes
    std::string error;                    // set when the run could not be made at all
};

pair_measurement measure_pairs(const std::vector<ring::socket_address>& servers, const pair_options& options);

}  // namespace derp::bench
