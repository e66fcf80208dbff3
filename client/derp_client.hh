// The project's DERP client library on the shard runtime: many client connections per shard,
// each dialling a DERP server over plain HTTP or TLS (crypto/tls_layer under the pool),
// upgrading, doing the NaCl handshake and then exchanging frames. The application sees events
// through a handler and writes its frames straight into the connection's send buffer (over
// plain TCP with no intermediate copy), which is what lets derpbench drive a server harder
// than the server drives itself; derpd's mesh links are clients of this library too. Over
// WebSocket (spec 3.4, `websocket`) the same bytes travel as binary messages: each buffer the
// application fills leaves as one masked message, as a browser's ws.send() would.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/frame.hh"
#include "core/key.hh"
#include "core/websocket.hh"
#include "crypto/tls_layer.hh"
#include "ring/listen.hh"
#include "ring/runtime.hh"
#include "ring/shard.hh"

namespace derp::client {

using ring::conn_id;

struct client_options {
    private_key key;
    std::optional<key_mesh> mesh_key;
    bool can_ack_pings = false;
    bool is_prober = false;
    bool note_preferred = false;  // send NotePreferred(true) right after ClientInfo
    bool watch_conns = false;     // send WatchConns right after ClientInfo (a mesh watcher, spec 5)
    std::string host = "127.0.0.1";  // Host header
    // GET /derp with Upgrade: websocket and subprotocol "derp" (ws://, wss://) instead of
    // Upgrade: DERP.
    bool websocket = false;
    // Over TLS: this connection's context (its SNI and verification name) instead of the
    // runtime's, for clients of several servers with different names (a region).
    std::shared_ptr<tls::context> tls_context;
};

enum class client_failure : std::uint8_t {
    connect_failed,       // TCP connect error
    tls_handshake,        // the TLS handshake failed (certificate, pin, alert; the log says which)
    http_status,          // the upgrade was answered with something other than 101
    bad_server_key,       // first frame not a valid ServerKey
    bad_server_info,      // ServerInfo missing, not openable, or not JSON
    protocol,             // a frame the client cannot accept (oversize, truncated PeerGone...)
    closed,               // the server closed the connection
};
const char* to_string(client_failure failure) noexcept;

class handler {
public:
    virtual ~handler() = default;
    // The handshake finished (ServerInfo opened with the server key).
    virtual void on_ready(conn_id conn, const node_key& server_key) noexcept = 0;
    virtual void on_packet(conn_id conn, const node_key& src, std::span<const std::uint8_t> packet) noexcept = 0;
    virtual void on_peer_gone(conn_id, const node_key&, peer_gone_reason) noexcept {}
    virtual void on_peer_present(conn_id, const node_key&) noexcept {}
    // PeerPresent with the fields a watcher learns (spec 1.3); the default calls on_peer_present.
    virtual void on_peer_present_info(conn_id conn, const peer_present_view& view) noexcept {
        on_peer_present(conn, view.key);
    }
    virtual void on_pong(conn_id, const ping_data&) noexcept {}
    virtual void on_keep_alive(conn_id) noexcept {}
    // The server is going away (spec 2.10's Restarting): reconnect after reconnect_in_ms and
    // keep trying for try_for_ms. The connection still works meanwhile; what to do is the
    // application's (derpbench restart moves before it breaks). Ignored by default, as
    // magicsock ignores it (spec 9.2).
    virtual void on_restarting(conn_id, const restarting_view&) noexcept {}
    // The server's Health text: a problem it has, or empty when it is healthy again.
    virtual void on_health(conn_id, std::string_view) noexcept {}
    // The connection is gone; `failure` says why (closed for an orderly end by either side).
    virtual void on_closed(conn_id conn, client_failure failure) noexcept = 0;
    // The connection may send: write whole frames into out, return the bytes written. Called
    // after client_pool::want_send(); call want_send() again if more is waiting.
    virtual std::size_t fill(conn_id conn, std::span<std::uint8_t> out) noexcept = 0;
    // Once per loop turn. Return true to keep the loop awake (busy-polls: prefer on_tick).
    virtual bool on_turn() noexcept { return false; }
    // A tick armed with client_pool::arm_tick() on this connection fired.
    virtual void on_tick(conn_id) noexcept {}
};

// A ring service holding DERP client connections. Construct it in the runtime's service
// factory; every call is made on its shard's thread.
class client_pool final : public ring::service {
public:
    client_pool(ring::shard& sh, handler& h) : _shard(sh), _handler(h) {}

    // Starts one client. Nothing when the shard's slot table is full.
    std::optional<conn_id> dial(const ring::socket_address& server, const client_options& options) noexcept;
    // The TLS layer under this pool, when there is one (client_options::tls_context needs it).
    void set_tls_layer(tls::tls_layer* layer) noexcept { _tls = layer; }
    void want_send(conn_id conn) noexcept { _shard.want_write(conn); }
    void close(conn_id conn) noexcept { _shard.close(conn); }
    // Stops reading from the server (fault injection: a stuck client whose socket fills up).
    void stop_reading(conn_id conn) noexcept { _shard.pause_recv(conn); }
    void resume_reading(conn_id conn) noexcept { _shard.resume_recv(conn); }
    // Calls handler::on_tick(conn) at deadline_ns (monotonic), once; re-arm from there for a
    // periodic tick. Ticks live on a connection and end with it.
    void arm_tick(conn_id conn, std::uint64_t deadline_ns) noexcept { _shard.arm_timer(conn, 0, deadline_ns); }
    // The loop's next wait ends no later than deadline_ns (precise, for pacing from on_turn).
    void wake_at(std::uint64_t deadline_ns) noexcept { _shard.wake_at(deadline_ns); }
    ring::shard& shard() noexcept { return _shard; }

    void on_accept(conn_id conn, const sockaddr_storage&) noexcept override { _shard.close(conn); }
    void on_connect(conn_id conn, int error) noexcept override;
    std::size_t on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept override;
    std::size_t on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept override;
    void on_timer(conn_id conn, std::uint8_t) noexcept override { _handler.on_tick(conn); }
    void on_closed(conn_id conn, ring::close_cause cause) noexcept override;
    void on_message(const ring::message&) noexcept override {}
    bool on_turn_end() noexcept override { return _handler.on_turn(); }

private:
    enum class phase : std::uint8_t { connecting, http, server_key, server_info, ready };
    struct conn_state {
        std::uint32_t gen = 0;
        bool open = false;
        phase stage = phase::connecting;
        client_options options;
        node_key public_key;
        node_key server_key;
        std::string out;  // handshake bytes (over WebSocket: whole frames) not yet sent
        // WebSocket: the Sec-WebSocket-Accept the 101 must carry; then the decoder of the
        // server's messages and the DERP bytes unframed from them, not yet parsed.
        std::string ws_accept;
        std::optional<ws_decoder> ws;
        std::vector<std::uint8_t> ws_plain;
        std::size_t out_sent = 0;
        std::optional<client_failure> failure;
    };
    conn_state* find(conn_id conn) noexcept;
    void fail(conn_id conn, conn_state& c, client_failure failure) noexcept;
    std::size_t handle_frames(conn_id conn, conn_state& c, std::span<const std::uint8_t> in) noexcept;
    // Handshake bytes to send: as they are, or as one masked binary message over WebSocket.
    void queue_out(conn_state& c, std::span<const std::uint8_t> bytes, ws_opcode opcode = ws_opcode::binary);
    std::size_t handle_websocket(conn_id conn, conn_state& c, std::span<const std::uint8_t> in) noexcept;
    std::size_t fill_websocket(conn_id conn, std::span<std::uint8_t> out) noexcept;

    ring::shard& _shard;
    handler& _handler;
    tls::tls_layer* _tls = nullptr;
    std::vector<conn_state> _conns;  // by slot
};

// Per-runtime TLS counters for client runtimes (one shard each in practice).
struct client_tls {
    std::shared_ptr<tls::context_slot> contexts;
    std::unique_ptr<tls::tls_counters[]> counters;
    std::int64_t handshake_timeout_ns = 10'000'000'000;
};
// A TLS setup for clients dialling `server_name` (SNI and verification name).
result<std::shared_ptr<client_tls>, std::string> make_client_tls(const tls::context::client_options& options,
                                                                 std::uint32_t shards);

// Starts a client runtime (usually one shard) whose shards each serve `handler` through a
// client_pool; handler.attach(pool) runs on the shard thread before the loop starts. With
// `tls`, every connection speaks TLS under the pool.
template <typename Handler>
result<std::unique_ptr<ring::runtime>, std::string> start_client_runtime(ring::runtime_config config, Handler& handler,
                                                                         std::shared_ptr<client_tls> tls = nullptr) {
    return ring::runtime::start(
        std::move(config),
        [&handler, tls](ring::shard& sh) -> std::unique_ptr<ring::service> {
            auto pool = std::make_unique<client_pool>(sh, handler);
            handler.attach(*pool);
            if (!tls) return pool;
            client_pool* pool_view = pool.get();
            tls::tls_layer_config layer;
            layer.client = true;
            layer.contexts = tls->contexts;
            layer.handshake_timeout_ns = tls->handshake_timeout_ns;
            auto wrapped = std::make_unique<tls::tls_layer>(sh, std::move(pool), layer, tls->counters[sh.index()]);
            pool_view->set_tls_layer(wrapped.get());
            return wrapped;
        },
        nullptr);
}

}  // namespace derp::client
