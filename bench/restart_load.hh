// derpbench restart: pairs of clients exchanging numbered packets, one frame per write, that
// follow the server's Restarting frame (spec 2.10): after its reconnect-in each client dials
// again with the same key, moves its sending to the new connection once that is ready, and
// keeps reading the old one until it falls quiet (make before break: packets still on their
// way through the old process, or from peers still there, arrive). Run it while a node
// restarts (a new derpd with -takeover beside the old one, then SIGTERM to the old) to count
// what the restart cost. Every lost packet is classed by its send time: inside the interval
// during which the two ends of its pair sat on different processes (a packet to a peer that
// has not arrived on the new process yet has nowhere to go) or beyond it (a packet the restart
// should not have cost).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "client/derp_client.hh"
#include "ring/listen.hh"

namespace derp::bench {

struct restart_options {
    ring::socket_address server;
    client::client_options base;             // host, TLS context, WebSocket, mesh key (key: ignored)
    std::shared_ptr<client::client_tls> tls;  // dial over TLS when set
    std::uint32_t pairs = 4;
    std::size_t packet_bytes = 128;          // at least 24: sequence, sender, send time
    double rate_pps = 2000;                  // over all clients (both directions of every pair)
    double duration_s = 20;                  // sending time; the restart must happen inside it
    double drain_s = 0.5;                    // after sending stops, for packets still in flight
    std::uint32_t client_cpu = 1;            // the client runtime's core
    // A packet sent this close to either end's move still counts as inside the interval: it
    // was in flight on a connection its receiver was leaving (the close can reset it).
    std::uint64_t in_flight_ns = 10'000'000;
    // After a move the old connection is still read, and left once no packet has come on it
    // for this long (the old process also closes it at its drain deadline).
    std::uint64_t linger_quiet_ns = 200'000'000;
    // Reconnects after an unannounced close (no Restarting) wait this long, doubling to 5 s
    // as magicsock's back-off does, for this long in all.
    std::uint64_t retry_first_ns = 50'000'000;
    std::uint64_t unannounced_try_for_ns = 30'000'000'000;
    std::function<void(std::string_view)> event;  // one line per Restarting, move, Health, close
    std::function<bool()> stop_early;              // polled every 50 ms
};

struct restart_measurement {
    std::uint64_t sent = 0;
    std::uint64_t delivered = 0;
    std::uint64_t lost_in_interval = 0;   // sent while the pair's ends sat on different processes
    std::uint64_t lost_beyond = 0;        // every other loss
    std::uint64_t duplicates = 0;
    std::uint64_t restarting_heard = 0;   // Restarting frames received (on current connections)
    std::uint64_t moves = 0;              // new connections that took over a client's traffic
    std::uint64_t unannounced_closes = 0; // current connections the server closed without Restarting
    std::uint64_t dial_failures = 0;      // reconnect attempts that failed (then retried)
    std::uint64_t gave_up = 0;            // clients that found no server within try-for
    std::uint64_t pairs_split = 0;        // pairs whose two ends did not move the same number of times
    double interval_ms_max = 0;           // the longest time a pair's ends sat on different processes
    double interval_ms_sum = 0;           // over all pair moves, for the mean
    std::uint64_t pair_moves = 0;
    double reconnect_in_ms_max = 0;       // the largest reconnect-in a Restarting asked for
    double move_ms_max = 0;               // past reconnect-in: the longest dial-to-ready of a move
    std::string error;                    // the run could not be made at all
};

restart_measurement measure_restart(const restart_options& options);

}  // namespace derp::bench
