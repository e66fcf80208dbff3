// The DERP relay as a service on the shard runtime (spec sections 1-2): the HTTP upgrade, the
// handshake, the read loop, per-client send queues, and the process-wide registry split across
// shards. Each key is arbitrated by one owner shard (hash of the key), which applies derper's
// duplicate rules (core/registry.hh) and publishes route changes to every shard; every shard
// looks routes up in its own cache, so the packet path takes no lock and touches no shared
// state. A packet for a client on another shard is written once, as the finished RecvPacket
// frame, into a transfer buffer of the sending shard, handed over through the SPSC ring, and
// returned to its owner after it has been copied into the receiver's send buffer.
#pragma once

#include <array>
#include <atomic>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "admin/derp_counters.hh"
#include "core/client_output.hh"
#include "core/drop_reason.hh"
#include "core/frame.hh"
#include "core/handshake.hh"
#include "core/http_endpoints.hh"
#include "core/key.hh"
#include "core/rate_limit.hh"
#include "core/region_table.hh"
#include "core/registry.hh"
#include "crypto/box.hh"
#include "crypto/tls_layer.hh"
#include "ring/buffer_pool.hh"
#include "ring/shard.hh"
#include "server/bootstrap_dns.hh"
#include "stun/server.hh"

namespace derp::server {

using admin::buffered_write_frames_bounds;
using admin::derp_counters;
using admin::tcp_rtt_bounds_us;
using admin::tcp_rtt_labels;

class mesh_links;   // server/mesh.hh
class admission_checker;  // server/admission.hh
class ws_layer;           // server/ws_layer.hh
struct mesh_config;

// What every shard's service shares, read-only once the runtime runs (counters apart, which
// are per shard and single-writer).
struct derp_settings {
    private_key server_private;
    node_key server_public;
    std::optional<key_mesh> mesh_key;
    bool serve_derp = true;
    std::int64_t write_timeout_ns = 2'000'000'000;       // -tcp-write-timeout, non-mesh clients
    std::int64_t mesh_write_timeout_ns = 30'000'000'000;  // mesh-key holders (spec 1.1)
    std::int64_t http_header_timeout_ns = 30'000'000'000;  // Go's ReadTimeout before the upgrade
    std::int64_t handshake_timeout_ns = 10'000'000'000;     // spec 1.4
    std::int64_t keepalive_ns = 60'000'000'000;            // plus jitter in [0, 5 s)
    std::int64_t keepalive_jitter_ns = 5'000'000'000;
    std::string hostname = "derp.tailscale.com";           // -hostname (home page)
    debug_access_policy debug_policy;                      // TS_DEBUG_KEY_PATH & co. (spec 3.8)
    std::uint32_t queue_depth_max = 32;                    // per queue, two queues per client
    // Per client, frames waiting for the next send (beyond the queues): staged_bytes_max while
    // its send waits on a full socket (a slow reader: derper's queue semantics, plus this);
    // up to staged_burst_bytes_max while its socket takes what it is sent, so that what one
    // loop turn reads (-recv-buffers x 16 KiB) never overflows a receiver that keeps up: its
    // packets only wait for the loop, not for the receiver.
    std::uint32_t staged_bytes_max = 64 * 1024;
    std::uint32_t staged_burst_bytes_max = 512 * 1024;
    std::uint64_t staged_total_max = 64ull << 20;          // per shard: every client's staging together
    bool tls_mode = false;                                 // the main listener serves TLS (spec 3.1)
    std::uint32_t small_transfer_buffers = 8192;           // frames up to 2 KiB, per shard
    std::uint32_t large_transfer_buffers = 128;            // frames up to 64 KiB + 37, per shard
    // Drain (SIGTERM with -drain-timeout): each client's Restarting frame says "reconnect in"
    // a time drawn evenly from [0, spread), so that the clients of a restarting node do not
    // all come back in the same millisecond, and "try for" this long.
    std::int64_t drain_reconnect_spread_ns = 2'000'000'000;
    std::int64_t restart_try_for_ns = 30'000'000'000;
    // Connections per shard that have not finished the DERP handshake (HTTP, TLS, WebSocket,
    // ClientInfo, admission): past this, each new one closes the oldest such connection, so a
    // slowloris holding connections open cannot take the slots real clients need (they finish
    // in milliseconds and are never the oldest for long). 0 = no bound.
    std::uint32_t unfinished_conns_max = 0;
    // Messages a shard keeps waiting for full rings to other shards before it refuses new
    // work that would add more (registrations, ClosePeer, repeated WatchConns): see
    // post_or_backlog. Messages already owed (unregistrations, routes) are never refused.
    std::uint64_t cross_shard_backlog_max = 16384;
    bool advertise_rate_limit = false;  // -advertise-rate-limit: the bucket goes into ServerInfo
};

// The node's health as its clients hear it (spec 1.x Health frames): a problem text, empty
// when healthy. Set by whoever notices (the ACME client when renewals fail), from any thread;
// every shard sends a Health frame to each of its clients when it changes, and to each new
// client after ServerInfo while it is not empty.
class node_health {
public:
    static constexpr std::size_t problem_bytes_max = 512;
    void set(std::string problem);  // cut to problem_bytes_max
    std::uint64_t generation() const noexcept { return _generation.load(std::memory_order_acquire); }
    std::string problem() const;

private:
    mutable std::mutex _mutex;
    std::string _problem;
    std::atomic<std::uint64_t> _generation{0};
};

// What the shards share: the settings, read-only once the runtime runs, and the counters and
// other sources the admin plane publishes (admin/derp_counters.hh).
struct derp_shared : admin::metric_sources {
    explicit derp_shared(derp_settings s, std::uint32_t shard_count)
        : metric_sources(shard_count, s.mesh_key.has_value()), settings(std::move(s)) {}
    derp_settings settings;
    const bootstrap_resolver* bootstrap = nullptr;  // when bootstrap DNS names are configured
    const mesh_config* mesh = nullptr;              // when -mesh-with names peers
    admission_checker* admission = nullptr;         // -verify-clients / -verify-client-url
    node_health health;
};

// One client connection's line of /debug/traffic.
struct traffic_row {
    node_key key;
    std::uint64_t sent = 0;  // bytes the server sent to it
    std::uint64_t recv = 0;  // bytes the server received from it
    std::uint64_t unique_senders = 0;
};

class derp_service final : public ring::service {
public:
    derp_service(ring::shard& sh, derp_shared& shared);
    ~derp_service() override;

    void on_accept(ring::conn_id conn, const sockaddr_storage& peer) noexcept override;
    std::size_t on_data(ring::conn_id conn, std::span<const std::uint8_t> bytes) noexcept override;
    std::size_t on_writable(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override;
    void on_timer(ring::conn_id conn, std::uint8_t timer_id) noexcept override;
    void on_closed(ring::conn_id conn, ring::close_cause cause) noexcept override;
    void on_message(const ring::message& m) noexcept override;
    void discard_message(const ring::message& m) noexcept override;
    bool on_turn_end() noexcept override;
    void on_stop() noexcept override;
    void on_drain(std::uint64_t deadline_ns) noexcept override;

    // Listener tags (ring::shard::listener_tag): the main listener, TLS or not, and the
    // port-80 listener of a TLS server.
    static constexpr std::uint8_t listener_main_plain = 0;
    static constexpr std::uint8_t listener_main_tls = 1;
    static constexpr std::uint8_t listener_port80 = 2;
    // The TLS layer below this service, asked for a connection's TLS version.
    void set_tls_layer(const tls::tls_layer* layer) noexcept { _tls = layer; }
    // The WebSocket layer below this service (spec 3.4), told when a connection upgrades.
    void set_ws_layer(ws_layer* layer) noexcept { _ws = layer; }
    // This shard's mesh links (the peers it dials), kept alive as long as this service.
    void adopt_mesh(std::unique_ptr<mesh_links> links) noexcept;
    // The shard that hosts the link to mesh peer `peer`.
    static std::uint32_t mesh_shard_of(std::uint32_t peer, std::uint32_t shard_count) noexcept {
        return peer % shard_count;
    }

    // The owner shard of a key: every shard computes the same one.
    static std::uint32_t owner_of(const node_key& key, std::uint32_t shard_count) noexcept;

    struct control;  // a registry or presence message between shards (derp_service.cc)

private:
    friend class mesh_links;
    // traffic: the connection streams /debug/traffic and reads nothing more.
    // admitting: ClientInfo opened, waiting for the admission decision (spec 2.11).
    enum class phase : std::uint8_t { http, handshake, admitting, registering, relay, traffic };
    static constexpr std::uint8_t timer_deadline = 0;   // HTTP header / handshake deadline
    static constexpr std::uint8_t timer_keepalive = 1;
    // In the relay phase the deadline timer is done (cancelled when the handshake finished):
    // it wakes a client whose rate limit (--rate-config) stopped its reading.
    static constexpr std::uint8_t timer_rate = timer_deadline;

    struct client {
        std::uint32_t gen = 0;
        phase stage = phase::http;
        bool open = false;
        ip16 ip{};
        std::uint16_t port = 0;
        std::uint64_t connected_ns = 0;
        // After the upgrade.
        std::unique_ptr<server_handshake> handshake;  // only while handshaking
        node_key key;
        bool can_mesh = false;
        bool unfinished = false;  // counted in _unfinished (derp_bounds.cc)
        bool is_prober = false;
        bool not_ideal = false;
        bool preferred = false;
        bool is_dup = false;
        bool activity_reported = false;
        bool watcher = false;
        bool ws_upgraded = false;      // this input call upgraded to WebSocket: stop reading it
        std::uint8_t tls_active = 0;   // tls::version_index + 1 while counted in tls_active_version
        std::uint64_t skip_bytes = 0;  // payload of an ignored frame still to discard
        bool partial_input = false;    // the runtime holds the start of an unfinished frame
        std::uint64_t bytes_in = 0;    // all bytes received and sent on the connection, for
        std::uint64_t bytes_out = 0;   // /debug/traffic (the server's own accounting)
        // /debug/traffic streams only: the counters each key had at the last report.
        std::unordered_map<node_key, std::pair<std::uint64_t, std::uint64_t>> traffic_last;
        std::uint64_t http_body_skip = 0;  // request body bytes still to discard (keep-alive)
        // Everything the client is sent, in the order the protocol allows (core/client_output).
        client_output out;
        std::unordered_set<node_key> seen_sources;  // senders that get us PeerGone (spec 2.7)
        double not_here_tokens = 3;                 // PeerGone(NotHere) bucket: burst 3, 1/s
        std::uint64_t not_here_refill_ns = 0;
        // --rate-config (spec 2.12): the bucket, and for the frame at the head of the input
        // whether its tokens are paid and whether its wait was counted. rate_waiting: reading
        // is paused until timer_rate.
        byte_bucket bucket;
        bool frame_paid = false;
        bool wait_counted = false;
        bool rate_waiting = false;
    };

    struct route {
        route_state state = route_state::gone;
        conn_ref conn;
        std::uint32_t peer = 0;  // forward: the mesh peer
    };

    client* find(ring::conn_id conn) noexcept;
    client* find(const conn_ref& ref) noexcept;
    conn_ref ref_of(ring::conn_id conn) const noexcept { return {_shard.index(), conn.slot, conn.gen}; }

    std::size_t handle_http(ring::conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept;
    void respond(ring::conn_id conn, client& c, std::string response, bool keep_alive) noexcept;
    void request_traffic_snapshot(ring::conn_id conn) noexcept;
    void report_traffic(const conn_ref& streamer, std::vector<struct traffic_row>& rows) noexcept;
    std::string answer_bootstrap_dns(const http_request& request, const client& c, std::int64_t unix_seconds);
    std::size_t handle_handshake(ring::conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept;
    void begin_registration(ring::conn_id conn, client& c) noexcept;
    void apply_admissions() noexcept;  // decisions the admission thread posted for this shard
    std::size_t handle_frames(ring::conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept;
    bool handle_frame(ring::conn_id conn, client& c, const frame_header& header,
                      std::span<const std::uint8_t> payload) noexcept;
    void relay_packet(client& from, const node_key& src, const node_key& dst,
                      std::span<const std::uint8_t> packet, bool forwarded) noexcept;
    // A transfer buffer for a frame of frame_bytes (counted when none is free).
    std::optional<queued_frame> take_transfer(std::size_t frame_bytes) noexcept;
    // A frame in one of this shard's transfer buffers to another shard (m: kind, u32, u64 set).
    void hand_over(std::uint32_t to_shard, const queued_frame& frame, ring::message m) noexcept;
    // A packet for a key another node of the region holds: ForwardPacket to the mesh link.
    void forward_packet(const node_key& src, const node_key& dst, std::span<const std::uint8_t> packet,
                        std::uint32_t peer, packet_kind kind) noexcept;
    void protocol_close(ring::conn_id conn, client& c, close_reason reason) noexcept;
    // Ends a connection: at once, or over WebSocket after derper's close frame (1011 "closing").
    void end_connection(ring::conn_id conn) noexcept;
    void queue_control(ring::conn_id conn, client& c, std::span<const std::uint8_t> frame) noexcept;
    void queue_http(ring::conn_id conn, client& c, std::string_view text) noexcept;
    void queue_peer_gone(ring::conn_id conn, client& c, const node_key& peer, peer_gone_reason reason) noexcept;
    // What the node says about itself (derp_notices.cc): Restarting while draining, Health
    // when it changes; greet() gives a client that just got ServerInfo the ones in force.
    void queue_restarting(ring::conn_id conn, client& c) noexcept;
    void queue_health(ring::conn_id conn, client& c) noexcept;
    void greet(ring::conn_id conn, client& c) noexcept;
    void notice_health() noexcept;  // each turn: a new problem (or none) goes to every client
    // The bound on unfinished connections (derp_bounds.cc).
    void note_unfinished(ring::conn_id conn, client& c) noexcept;
    void note_finished(client& c) noexcept;
    // False when the queue was full and a packet was dropped to make room.
    bool enqueue(ring::conn_id conn, client& c, const queued_frame& frame, packet_kind kind) noexcept;
    void count_drop(drop_reason reason, packet_kind kind, std::size_t packet_bytes) noexcept;
    void note_staged(std::size_t before, std::size_t after) noexcept;  // _staged_total follows a client
    void release_transfer(const queued_frame& frame) noexcept;
    void drop_output(ring::conn_id conn, client& c, drop_reason reason) noexcept;
    class output_hooks;  // client_output's events for one client (derp_output.cc)
    friend class output_hooks;

    // Registry plumbing.
    void send_control(std::uint32_t to_shard, control* message) noexcept;
    void post_or_backlog(std::uint32_t to_shard, const ring::message& m) noexcept;
    // True when some shard's backlog of messages for full rings is at cross_shard_backlog_max:
    // new work that adds messages is refused then. `what` is counted and logged (rate-limited).
    bool refuse_for_backlog(std::string_view what) noexcept;
    // --rate-config: whether the frame at the head of the input (payload_bytes long) may be
    // read now; if not, reading stops until its tokens are there (timer_rate).
    bool rate_admits(ring::conn_id conn, client& c, std::uint32_t payload_bytes) noexcept;
    void rate_resume(ring::conn_id conn, client& c) noexcept;
    void apply_rate_config() noexcept;   // a new config (SIGHUP): fresh buckets for everyone
    bool rate_limits(const client& c) const noexcept { return _rate.enabled() && !c.can_mesh; }
    void handle_control(control& message) noexcept;
    void apply_effects(const node_key& key, conn_ref conn, const registry_effects& fx) noexcept;
    void apply_route(const node_key& key, route_state state, conn_ref active, std::uint32_t peer) noexcept;
    // Owner side: publishes a key's route to every shard.
    void publish_route(const node_key& key, route_state state, conn_ref active, std::uint32_t peer) noexcept;
    // Owner side: carries out what a region table change means for the key's route.
    void apply_region(const node_key& key, const region_effects& fx) noexcept;
    void count_region() noexcept;

    bool _draining = false;
    std::uint64_t _drain_deadline_ns = 0;
    std::deque<ring::conn_id> _unfinished_order;  // accept order; finished entries are skipped
    std::uint32_t _unfinished = 0;
    std::size_t _staged_total = 0;  // bytes staged by every client of this shard
    ring::log_limiter _eviction_log{1'000'000'000};
    std::uint64_t _health_generation = 0;  // of _shared.health, as last sent
    std::string _health_problem;

    ring::shard& _shard;
    derp_shared& _shared;
    const derp_settings& _settings;
    derp_counters& _counters;
    const tls::tls_layer* _tls = nullptr;
    ws_layer* _ws = nullptr;
    sodium_handshake_box _box;
    std::vector<client> _clients;  // by slot
    // Transfer buffers for RecvPacket frames made on this shard: [0] up to 2 KiB, [1] larger.
    std::array<std::unique_ptr<ring::buffer_pool>, 2> _transfer;
    std::unordered_map<node_key, route> _routes;                      // this shard's cache
    std::unordered_map<node_key, std::vector<conn_ref>> _peer_gone_subscribers;
    key_registry _registry;                                           // keys this shard owns
    region_table _region;                                             // their mesh forwarders
    std::unique_ptr<mesh_links> _mesh;                                // links this shard dials
    std::vector<conn_ref> _watchers;                                  // owner side: all watchers
    // Sealed ServerInfo frames of connections waiting for their owner's reg_ack, by slot.
    std::unordered_map<std::uint32_t, std::array<std::uint8_t, server_info_frame_bytes_v2>> _pending_server_info;
    std::deque<control*> _local_controls;                             // to this shard itself
    std::vector<std::deque<ring::message>> _backlog;                  // per destination shard
    std::uint64_t _backlog_packets = 0;
    std::uint64_t _backlog_messages = 0;                              // all destinations
    ring::log_limiter _backlog_log{1'000'000'000, 5};
    rate_config _rate;                 // --rate-config in force on this shard
    std::uint64_t _rate_sequence = 0;  // the rate_limit_shared sequence it came from
    ring::log_limiter _close_log{100'000'000, 50};  // bursts of 50, then 10 lines/s
    std::uint64_t _rng_state;
    std::uint32_t _local_dups = 0;  // connections on this shard flagged duplicate
    double _queue_ema_ms = 0;        // average_queue_duration_ms of this shard
    std::uint64_t _next_rtt_sweep_ns = 0;
    void note_queue_time(std::uint64_t enqueued_ns) noexcept;
    void sweep_tcp_rtt() noexcept;
    std::unordered_set<std::string> _bootstrap_queried;
    // /debug/traffic collection in progress, by streaming connection: rows so far, replies due.
    struct traffic_collection {
        std::vector<struct traffic_row> rows;
        std::uint32_t pending = 0;
    };
    std::unordered_map<std::uint64_t, traffic_collection> _traffic;
    std::vector<struct admission_decision> _admissions;  // apply_admissions' batch, kept for reuse  // names asked for via ?q= (cleared past 500)
};

}  // namespace derp::server
