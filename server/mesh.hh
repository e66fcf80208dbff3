// derpd's mesh links (spec 5): this node dials every other node of its region named in
// -mesh-with as a privileged DERP client (its own server key and the mesh key), watches the
// peer's connections (WatchConns) and carries ForwardPacket frames to it. Each link lives on
// one shard (entry index modulo shards) as a client of the project's client library over TLS,
// next to the shard's server connections (ring/service_mux); what the peer announces goes to
// each key's owner shard, whose region table (core/region_table) decides the routes.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "client/derp_client.hh"
#include "core/client_output.hh"
#include "core/mesh_with.hh"
#include "core/result.hh"
#include "crypto/tls.hh"
#include "ring/log.hh"
#include "server/derp_service.hh"

namespace derp::server {

using ring::conn_id;

// The region as this node sees it, shared read-only by every shard.
struct mesh_config {
    std::vector<mesh_entry> entries;
    std::vector<std::shared_ptr<tls::context>> contexts;  // per entry: its SNI and verification name
    std::int64_t dial_timeout_ns = 10'000'000'000;      // connect, TLS, upgrade and handshake
    std::int64_t retry_ns = 5'000'000'000;              // derper's 5 s after a failure ...
    std::int64_t retry_jitter_ns = 1'000'000'000;       // ... plus up to this (derpd's jitter)
    std::int64_t silence_timeout_ns = 150'000'000'000;  // nothing from the peer (keepalives are 60 s)
    std::int64_t write_timeout_ns = 5'000'000'000;      // derper's mesh client: 5 s per forward write
    std::size_t queue_bytes_max = 4u << 20;             // ForwardPacket frames waiting per link
};

// Parses -mesh-with and makes one TLS client context per entry, verified with the system
// trust store (OpenSSL's default paths honour SSL_CERT_FILE and SSL_CERT_DIR, as Go does).
result<mesh_config, std::string> make_mesh_config(std::string_view mesh_with);

class mesh_links final : public client::handler {
public:
    mesh_links(ring::shard& sh, derp_service& derp, derp_shared& shared, const mesh_config& config);
    ~mesh_links() override;

    // The client pool the links dial through (the client side of this shard's service_mux,
    // under a TLS layer); called once on the shard thread before the loop starts.
    void attach(client::client_pool& pool) noexcept { _pool = &pool; }

    // A ForwardPacket frame for mesh peer `peer` (hosted on this shard): queued behind the
    // others and coalesced into the link's sends; dropped (counted) while the link is down.
    void enqueue(std::uint32_t peer, const queued_frame& frame) noexcept;

    void on_ready(conn_id conn, const node_key& server_key) noexcept override;
    void on_packet(conn_id, const node_key&, std::span<const std::uint8_t>) noexcept override;
    void on_peer_gone(conn_id conn, const node_key& key, peer_gone_reason reason) noexcept override;
    void on_peer_present_info(conn_id conn, const peer_present_view& view) noexcept override;
    void on_keep_alive(conn_id conn) noexcept override;
    void on_pong(conn_id conn, const ping_data&) noexcept override { heard(conn); }
    void on_closed(conn_id conn, client::client_failure failure) noexcept override;
    std::size_t fill(conn_id conn, std::span<std::uint8_t> out) noexcept override;
    bool on_turn() noexcept override;
    // The process is stopping: no more dials, no more retries.
    void stop() noexcept { _stopping = true; }
    void on_tick(conn_id conn) noexcept override;

private:
    struct resolving;  // an asynchronous name lookup (getaddrinfo_a)
    struct link {
        std::uint32_t peer = 0;          // index of the -mesh-with entry
        std::optional<conn_id> conn;
        bool ready = false;              // handshake done
        bool accepted = false;           // the peer sent its snapshot: it took our WatchConns
        bool self = false;               // the far end is this node (its key is ours)
        bool ever_connected = false;
        bool logged_connected = false;
        std::optional<std::size_t> failure;  // derpd's own reason for closing (timeout)
        std::uint64_t retry_at_ns = 0;   // when down: dial again then (0: on the next turn)
        std::uint64_t dial_deadline_ns = 0;
        std::uint64_t ready_ns = 0;
        std::uint64_t last_heard_ns = 0;
        std::uint64_t log_at_ns = 0;     // "connected; N peers" is due
        // Keys the peer announces on this connection: a set, since derper announces a key again
        // for each duplicate connection but withdraws it once (spec 2.8).
        std::unordered_set<node_key> keys;
        std::uint32_t failures_in_row = 0;
        std::deque<queued_frame> out;    // ForwardPacket frames, oldest first
        std::size_t out_offset = 0;      // bytes of out.front() already written
        std::size_t out_bytes = 0;
        std::unique_ptr<resolving> lookup;
    };

    link* find(conn_id conn) noexcept;
    void start_dial(link& l) noexcept;
    void dial(link& l, const ring::socket_address& address) noexcept;
    void schedule_retry(link& l, std::string_view why) noexcept;
    void heard(conn_id conn) noexcept;
    void arm(link& l) noexcept;
    void drop_queue(link& l) noexcept;
    void tell_owner(const node_key& key, std::uint32_t peer, bool present) noexcept;
    admin::mesh_peer_counters& counters(const link& l) noexcept { return _shared.mesh_peers[l.peer]; }
    const mesh_entry& entry(const link& l) const noexcept { return _config.entries[l.peer]; }

    ring::shard& _shard;
    derp_service& _derp;
    derp_shared& _shared;
    const mesh_config& _config;
    client::client_pool* _pool = nullptr;
    std::vector<link> _links;  // the entries this shard hosts
    std::uint64_t _rng_state;
    bool _stopping = false;
};

}  // namespace derp::server
