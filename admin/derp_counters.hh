// The DERP server's counters, one set per shard, each written only by its shard (see
// ring/counters.hh), and where the admin plane finds every counter it publishes: the metrics
// schema lives here, with the exposition, so that the relay (server/) writes into it from above
// and the admin plane never includes the relay. Names follow derper's expvars (spec 7.2) so that
// /debug/varz can keep derper's metric names.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/close_reason.hh"
#include "core/drop_reason.hh"
#include "core/rate_limit.hh"
#include "crypto/tls_layer.hh"
#include "ring/counters.hh"
#include "stun/server.hh"

namespace derp::admin {

using ring::counter;

inline constexpr std::array<std::string_view, 9> tcp_rtt_labels = {"10ms", "20ms", "50ms", "100ms", "150ms",
                                                                   "250ms", "500ms", "inf", "error"};
inline constexpr std::array<std::uint32_t, 8> tcp_rtt_bounds_us = {10'000, 20'000, 50'000, 100'000,
                                                                   150'000, 250'000, 500'000, ~0u};
inline constexpr std::array<std::uint32_t, 16> buffered_write_frames_bounds = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                               10, 15, 20, 25, 50, 100};

struct alignas(ring::cache_line_bytes) derp_counters {
    counter accepts;                       // connections handed to the DERP server
    counter plain_accepts;                 // of which not over TLS
    counter current_connections;           // gauge: registered DERP connections
    counter current_home_connections;      // gauge
    counter current_notideal_connections;  // gauge
    counter watchers;                      // gauge
    counter clients_local;                 // gauge: keys this shard owns with a connection
    counter clients_remote;                // gauge: keys this shard owns reachable only via a mesh peer
    counter multiforwarder_created, multiforwarder_deleted;  // owner side (region table)
    counter packet_forwarder_delete_other_value;
    counter current_dup_client_keys;       // gauge (owner side)
    counter current_dup_client_conns;      // gauge (owner side)
    counter total_dup_client_conns;
    counter packets_received, bytes_received;
    std::array<counter, 2> packets_received_kind;  // by packet_kind
    counter packets_sent, bytes_sent;
    std::array<std::array<counter, 2>, drop_reason_count> packets_dropped;  // [reason][kind]
    std::array<std::array<counter, 2>, drop_reason_count> bytes_dropped;
    std::array<counter, derpd_drop_reason_count> derpd_packets_dropped;
    counter unknown_frames;
    counter home_moves_in, home_moves_out;
    counter got_ping, sent_pong;
    counter peer_gone_disconnected_frames, peer_gone_not_here_frames;
    counter packets_forwarded_in, packets_forwarded_out;
    counter sclient_write_timeouts;
    std::array<counter, close_reason_count> protocol_closes;  // by core close_reason
    counter http_requests;
    // derper's derper_tls_request_version (per request) and derper_tls_active_version (in
    // flight: a DERP connection's request lasts as long as the connection), by
    // tls::version_index: 1.0, 1.1, 1.2, 1.3, unknown.
    std::array<counter, 5> tls_request_version;
    std::array<counter, 5> tls_active_version;
    counter port80_requests;               // requests on the port-80 listener of a TLS server
    counter http_errors;                   // malformed requests answered 4xx/5xx and closed
    counter handshake_timeouts;            // no complete upgrade + ClientInfo in time
    // Admission decisions (spec 2.11) by server::admission_outcome: allowed, denied,
    // error_allowed (fail-open), error_denied; and how many of them came from the cache.
    std::array<counter, 4> admissions;
    counter admissions_cached;
    counter cross_shard_packets;           // relayed through a ring to another shard
    counter control_backlog;               // gauge-ish: control messages waiting for ring space
    // Messages refused because the backlog for a full ring was at control_backlog_max
    // (derpd_control_backlog_refused_total): what they were is logged, rate-limited.
    counter control_backlog_refused;
    counter rate_limit_waited;             // derper's rate_limit_per_client_waited: frames that waited
    // derper's tcp_rtt{le}: RTT samples of every connection, every 10 s (spec 2.13).
    std::array<counter, 9> tcp_rtt;  // 10ms 20ms 50ms 100ms 150ms 250ms 500ms inf error
    // derper's buffered_write_frames histogram: frames per flush (bucket upper bounds below).
    std::array<counter, 17> buffered_write_frames;  // ..., +Inf
    counter buffered_write_frames_sum;
    // average_queue_duration_ms: an EMA (alpha 0.1) of ms from enqueue to write or head drop,
    // kept per shard in microseconds (single writer) and averaged over active shards on scrape.
    counter average_queue_duration_us;
    counter queued_packets;                // gauge: packets in this shard's clients' queues
    counter transfer_buffers_in_use;       // gauge: this shard's transfer buffers out (any shard)
    // /bootstrap-dns (spec 3.5).
    counter bootstrap_dns_requests;
    counter bootstrap_dns_published_hits, bootstrap_dns_published_misses;
    counter bootstrap_dns_unpublished_hits, bootstrap_dns_unpublished_misses;
    counter bootstrap_dns_unpublished_percent_misses;
    counter bootstrap_dns_queried_domains;  // gauge: this shard's set of queried names
    // DERP over WebSocket (spec 3.4, server/ws_layer).
    counter websocket_accepts;  // derper's derp_websocket_accepts
    counter restarting_frames;  // Restarting frames sent (drain)
    counter health_frames;      // Health frames sent (a problem, or the all-clear)
    counter unfinished;         // gauge: connections that have not finished the DERP handshake
    counter unfinished_evictions;  // of those, closed to make room (unfinished_conns_max)
    counter staged_bytes;       // gauge: bytes in the clients' staging (derp_settings::staged_total_max)
    counter transfer_bytes;     // gauge: bytes of the shard's transfer buffers holding a frame
    std::array<counter, 8> websocket_closes;  // by ws_close_kind
};

// derpd_client_admissions_total{result}, by server::admission_outcome.
inline constexpr std::array<std::string_view, 4> admission_labels = {"allowed", "denied", "error_allowed",
                                                                     "error_denied"};

// How a WebSocket connection's framing ended (derpd_websocket_closes_total{reason}).
enum class ws_close_kind : std::uint8_t {
    peer_close,            // the peer sent a close frame
    protocol_error,        // 1002: unmasked, bad opcode, fragmented control frame, ...
    unsupported_data,      // 1003: a text message
    message_too_big,       // 1009
    not_derp_subprotocol,  // 1008: the selected subprotocol is not exactly "derp"
    input_overflow,        // the service left too many unframed bytes unread
    eof_inside_frame,      // the TCP stream ended inside a frame or a fragmented message
    session_end,           // 1011 "closing": the DERP service ended the session (derper's deferred close)
};
inline constexpr std::array<std::string_view, 8> ws_close_kind_names = {
    "peer_close", "protocol_error", "unsupported_data", "message_too_big", "not_derp_subprotocol",
    "input_overflow", "eof_inside_frame", "session_end"};

// Why a mesh link failed (derpd_mesh_failures_total{peer,reason}).
inline constexpr std::array<std::string_view, 9> mesh_failure_labels = {
    "resolve", "connect", "tls", "http_status", "server_key", "server_info", "protocol", "closed", "timeout"};

// One -mesh-with entry's link, written only by the shard that hosts it.
struct alignas(ring::cache_line_bytes) mesh_peer_counters {
    counter up;           // gauge: 1 while the link is ready (handshake done)
    counter connects;     // handshakes completed
    counter reconnects;   // of which after an earlier connection of this link
    counter keys;         // gauge: keys the peer announces now
    counter forwarded;    // ForwardPacket frames written to the peer
    counter dropped;      // frames dropped: link down or queue full
    std::array<counter, mesh_failure_labels.size()> failures;
};

// Everything /debug/varz, /debug/vars, /debug/check and the /debug/ index read: set up by main
// before the runtime starts, read-only after (counters apart, which are per shard and
// single-writer, loaded with relaxed atomics).
// -certmode letsencrypt: what the ACME client thread did (single writer: that thread).
struct acme_counters {
    counter orders_ok;              // certificates obtained and installed
    counter orders_failed;          // attempts that ended without one (the log says why)
    counter orders_reused;          // starts that found a stored certificate still good
    counter challenges_tls_alpn;    // authorizations answered with TLS-ALPN-01
    counter challenges_http01;      // ... with HTTP-01
    // GET /.well-known/acme-challenge/<token> on the port-80 listener, answered or 404 (a token
    // derpd does not hold). Any shard adds: atomic increments, not single-writer counters.
    std::atomic<std::uint64_t> http01_answers{0};
    std::atomic<std::uint64_t> http01_unknown{0};
};

// --rate-config (spec 2.12): the per-client receive limit in force. Written by one thread (the
// admin thread: at start and on SIGHUP), read by every shard at the top of a loop turn and by
// the metrics; a sequence lock, so that a reader never pairs one config's rate with another's
// burst. `sequence` is odd while a write is under way and grows by 2 per config.
struct rate_limit_shared {
    bool configured = false;  // --rate-config was given (set before the threads start)
    std::atomic<std::uint64_t> sequence{0};
    std::atomic<std::uint64_t> bytes_per_second{0};
    std::atomic<std::uint64_t> burst_bytes{0};

    void store(const rate_config& config) noexcept {
        const std::uint64_t s = sequence.load(std::memory_order_relaxed);
        sequence.store(s + 1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);
        bytes_per_second.store(config.bytes_per_second, std::memory_order_relaxed);
        burst_bytes.store(config.burst_bytes, std::memory_order_relaxed);
        sequence.store(s + 2, std::memory_order_release);
    }
    // The config and the sequence it was stored under.
    rate_config load(std::uint64_t& at_sequence) const noexcept {
        for (;;) {
            const std::uint64_t before = sequence.load(std::memory_order_acquire);
            rate_config out{bytes_per_second.load(std::memory_order_relaxed),
                            burst_bytes.load(std::memory_order_relaxed)};
            std::atomic_thread_fence(std::memory_order_acquire);
            if ((before & 1) == 0 && sequence.load(std::memory_order_relaxed) == before) {
                at_sequence = before;
                return out;
            }
        }
    }
};

struct metric_sources {
    explicit metric_sources(std::uint32_t shard_count, bool mesh_key_set)
        : counters(std::make_unique<derp_counters[]>(shard_count)), shards(shard_count),
          ring_counters(shard_count, nullptr), mesh_key(mesh_key_set),
          start_unix_seconds(static_cast<std::int64_t>(std::time(nullptr))) {}
    std::unique_ptr<derp_counters[]> counters;  // one per shard
    std::uint32_t shards;
    // Each shard's runtime counters, filled in by its service constructor (each shard its own
    // element; the runtime's start gate orders that before any request is served).
    std::vector<const ring::shard_counters*> ring_counters;
    bool mesh_key;  // -mesh-psk-file was given (the /debug/ index says so)
    std::int64_t start_unix_seconds;
    const stun::stun_counters* stun = nullptr;  // the admin thread's, when STUN runs
    const tls::tls_counters* tls = nullptr;     // per shard, in TLS mode
    std::vector<std::string> cmdline;           // argv, for /debug/vars
    // The mesh links, by -mesh-with entry (host as written), when -mesh-with is set.
    std::vector<std::string> mesh_peer_names;
    std::unique_ptr<mesh_peer_counters[]> mesh_peers;
    // TLS mode: the context new connections get (derpd_cert_expiry_seconds reads its leaf).
    const tls::context_slot* tls_contexts = nullptr;
    // -certmode letsencrypt: the ACME client's counters (written by its thread and, for the
    // HTTP-01 answers, by the shards: relaxed atomics either way) and the challenge answers
    // that the port-80 listener serves.
    acme_counters* acme = nullptr;
    const tls::acme_challenges* acme_challenges = nullptr;
    // What each shard may hold at most, in bytes, by pool (derpd_memory_ceiling_bytes): fixed
    // pools (registered send buffers, transfer buffers) and ceilings (input, staging).
    struct memory_ceilings {
        std::uint64_t send_buffer_bytes = 0;  // one registered send buffer
        std::uint64_t send_buffers = 0, transfer_buffers = 0, input = 0, staging = 0;
    } memory;
    // -verify-clients: the admission thread's latest self-check verdict for /debug/check ("" when
    // this node's own key would be admitted). Any thread may call it.
    std::function<std::string()> self_check;
    rate_limit_shared rate_limit;  // --rate-config; `configured` false without it
};

}  // namespace derp::admin
