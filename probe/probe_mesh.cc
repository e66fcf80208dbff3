// The mesh probe (see probe_mesh.hh). Each client gets its own one-shard client runtime because
// a runtime's TLS layer has one client context (one SNI, one verification rule) and the two
// nodes of a pair may differ in both. The probe's worker thread waits on a condition variable
// that the clients' handlers signal from their shard threads; it hands a client work by setting
// a flag and waking that client's loop (the handler acts in on_turn).
#include "probe/probe_mesh.hh"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "client/derp_client.hh"
#include "probe/probe_net.hh"
#include "probe/probe_tls.hh"
#include "crypto/box.hh"

namespace derp::probe {
namespace {

// derpprobe's meshProbePacketSize.
constexpr std::size_t probe_packet_bytes = 8;
// derpprobe gives the from node this long to hear (over the mesh) of the to client.
constexpr std::int64_t mesh_settle_ns = 100'000'000;

using packet = std::array<std::uint8_t, probe_packet_bytes>;

// What the two clients report, read by the probe thread. Guarded by mutex.
struct pair_state {
    std::mutex mutex;
    std::condition_variable changed;
    bool ready[2] = {false, false};
    std::string problem;  // the first thing that went wrong, on either side
    // Set before the sender is told to send; the receiver checks what arrives against them.
    bool expecting = false;
    node_key expected_src;
    packet expected{};
    bool delivered = false;
    std::int64_t sent_ns = 0;
    std::int64_t delivered_ns = 0;
    bool sender_saw_peer_gone = false;  // the from node said the destination is not there
    int closed_in_handshake_side = -1;  // a connect or TLS handshake that failed without a reason

    void note(std::string text) {
        {
            std::lock_guard lock(mutex);
            if (problem.empty()) problem = std::move(text);
        }
        changed.notify_all();
    }
};

const char* failure_text(client::client_failure failure, bool ready) {
    switch (failure) {
    case client::client_failure::connect_failed: return "TCP connect failed";
    case client::client_failure::tls_handshake: return "the TLS handshake failed (the node's tls probe has the detail)";
    case client::client_failure::http_status: return "the server answered the DERP upgrade with a status other than 101";
    case client::client_failure::bad_server_key: return "the first frame was not a valid ServerKey";
    case client::client_failure::bad_server_info: return "ServerInfo did not open with the server key";
    case client::client_failure::protocol: return "the server sent a frame the client cannot accept";
    case client::client_failure::closed:
        return ready ? "the server closed the connection" : "the connection closed before ServerInfo";
    }
    return "failed";
}

// One DERP client on its own runtime's single shard; all virtual calls come from that shard.
class probe_client final : public client::handler {
public:
    probe_client(pair_state& state, int side, std::string label, ring::socket_address server,
                 client::client_options options)
        : _state(state), _side(side), _label(std::move(label)), _server(server), _options(std::move(options)),
          _public(public_key_of(_options.key)) {}

    void attach(client::client_pool& pool) { _pool = &pool; }
    const node_key& public_key() const noexcept { return _public; }

    // From the probe thread; take effect at the client's next loop turn (wake its runtime).
    void request_send(const node_key& dst, const packet& payload) {
        {
            std::lock_guard lock(_mutex);
            _dst = dst;
            _payload = payload;
        }
        _send_requested.store(true, std::memory_order_release);
    }
    void request_close() { _close_requested.store(true, std::memory_order_release); }

    void on_ready(ring::conn_id, const node_key&) noexcept override {
        _ready = true;
        {
            std::lock_guard lock(_state.mutex);
            _state.ready[_side] = true;
        }
        _state.changed.notify_all();
    }

    void on_packet(ring::conn_id, const node_key& src, std::span<const std::uint8_t> bytes) noexcept override {
        if (!_ready) return first_message_problem("a RecvPacket");
        if (_side != 1) return;  // the sender has no business receiving; derpprobe ignores it too
        {
            std::lock_guard lock(_state.mutex);
            if (!_state.expecting || _state.delivered) return;
            if (src != _state.expected_src) {
                if (_state.problem.empty())
                    _state.problem = fmt::format("{} received a packet from unexpected source {}", _label,
                                                 src.to_string().substr(0, 16));
            } else if (bytes.size() != _state.expected.size() ||
                       !std::equal(bytes.begin(), bytes.end(), _state.expected.begin())) {
                if (_state.problem.empty())
                    _state.problem = fmt::format("{} received {} bytes from the sender that differ from the {} sent",
                                                 _label, bytes.size(), probe_packet_bytes);
            } else {
                _state.delivered = true;
                _state.delivered_ns = monotonic_now_ns();
            }
        }
        _state.changed.notify_all();
    }

    void on_peer_gone(ring::conn_id, const node_key& key, peer_gone_reason) noexcept override {
        if (!_ready) return first_message_problem("a PeerGone");
        std::lock_guard lock(_mutex);
        if (_side == 0 && key == _dst) {
            std::lock_guard state_lock(_state.mutex);
            _state.sender_saw_peer_gone = true;
        }
    }
    void on_peer_present(ring::conn_id, const node_key&) noexcept override {
        if (!_ready) first_message_problem("a PeerPresent");
    }
    void on_pong(ring::conn_id, const ping_data&) noexcept override {
        if (!_ready) first_message_problem("a Pong");
    }
    // KeepAlives only prove liveness once connected; before ServerInfo derpprobe refuses them.
    void on_keep_alive(ring::conn_id) noexcept override {
        if (!_ready) first_message_problem("a KeepAlive");
    }

    void on_closed(ring::conn_id, client::client_failure failure) noexcept override {
        _open = false;
        if (_closing) return;
        if (!_ready && (failure == client::client_failure::closed || failure == client::client_failure::connect_failed ||
                        failure == client::client_failure::tls_handshake)) {
            std::lock_guard lock(_state.mutex);
            if (_state.problem.empty()) _state.closed_in_handshake_side = _side;
        }
        _state.note(fmt::format("{} ({}): {}", _label, _server.to_string(), failure_text(failure, _ready)));
    }

    std::size_t fill(ring::conn_id, std::span<std::uint8_t> out) noexcept override {
        if (_sent || !_send_requested.load(std::memory_order_acquire)) return 0;
        if (out.size() < send_packet_frame_bytes(probe_packet_bytes)) {
            _pool->want_send(_conn);
            return 0;
        }
        std::lock_guard lock(_mutex);
        _sent = true;
        {
            std::lock_guard state_lock(_state.mutex);
            _state.sent_ns = monotonic_now_ns();
        }
        return encode_send_packet(out, _dst, _payload);
    }

    bool on_turn() noexcept override {
        if (!_dialled) {
            _dialled = true;
            auto conn = _pool->dial(_server, _options);
            if (!conn) {
                _state.note(fmt::format("{}: no connection slot to dial {}", _label, _server.to_string()));
                return false;
            }
            _conn = *conn;
            _open = true;
        }
        if (_open && _ready && !_sent && _send_requested.load(std::memory_order_acquire)) _pool->want_send(_conn);
        if (_open && !_closing && _close_requested.load(std::memory_order_acquire)) {
            _closing = true;
            _pool->close(_conn);
        }
        return false;
    }

private:
    void first_message_problem(const char* what) {
        // derpprobe's newConn: "unexpected first message type".
        _state.note(fmt::format("{}: the first message from the server was {}, not ServerInfo", _label, what));
    }

    pair_state& _state;
    const int _side;  // 0 = from (sender), 1 = to (receiver)
    const std::string _label;
    const ring::socket_address _server;
    const client::client_options _options;
    const node_key _public;
    client::client_pool* _pool = nullptr;
    ring::conn_id _conn{};
    // Shard-thread state.
    bool _dialled = false;
    bool _open = false;
    bool _ready = false;
    bool _sent = false;
    bool _closing = false;
    // Handed over from the probe thread.
    std::atomic<bool> _send_requested{false};
    std::atomic<bool> _close_requested{false};
    std::mutex _mutex;  // _dst and _payload
    node_key _dst;
    packet _payload{};
};

// A client and the runtime it runs on; the runtime stops before the client goes away.
struct client_side {
    std::unique_ptr<probe_client> client;
    std::unique_ptr<ring::runtime> runtime;

    void wake() {
        if (runtime) runtime->wake_all();
    }
    ~client_side() {
        if (!runtime) return;
        client->request_close();
        runtime->wake_all();
        runtime->request_stop();
        runtime->wait();
        runtime.reset();
    }
};

// Host header as Go's derphttp builds its URL: https://HostName[:DERPPort]/derp.
std::string host_header(const derp_node& node) {
    const bool v6 = node.host_name.find(':') != std::string::npos;
    const std::string host = v6 ? "[" + node.host_name + "]" : node.host_name;
    return node.derp_port != 0 ? fmt::format("{}:{}", host, node.derp_port) : host;
}

result<void, std::string> start_side(client_side& side, pair_state& state, int index, const derp_node& node,
                                     const mesh_settings& settings, const run_context& ctx) {
    const auto port = static_cast<std::uint16_t>(node.derp_port != 0 ? node.derp_port : 443);
    auto addresses = node_addresses(node, port);
    if (!addresses) return unexpected(fmt::format("node {}: {}", node.name, addresses.error()));
    auto policy = tls_policy_for(node, settings.ca_file);
    if (!policy) return unexpected(fmt::format("node {}: {}", node.name, policy.error()));
    auto tls = client::make_client_tls(policy->options, 1);
    if (!tls) return unexpected(fmt::format("node {}: TLS client setup: {}", node.name, tls.error()));
    tls.value()->handshake_timeout_ns = std::max<std::int64_t>(ctx.remaining_ns(), 1'000'000);
    client::client_options options;
    options.key = generate_private_key();
    options.mesh_key = settings.mesh_key;
    options.is_prober = true;
    options.host = host_header(node);
    // The client library dials one address where Go races IPv4 and IPv6: the first one (IPv4
    // when the map gives it), as the tls probe tries it first too.
    side.client = std::make_unique<probe_client>(state, index, fmt::format("{} node {}", index == 0 ? "from" : "to", node.name),
                                                 addresses->front(), std::move(options));
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.shard_defaults.conn_slots = 4;
    cfg.shard_defaults.ring_entries = 64;
    cfg.shard_defaults.recv_buffer_count = 16;
    cfg.shard_defaults.send_buffer_count = 16;
    cfg.shard_defaults.shutdown_grace_ns = 200'000'000;
    cfg.admin_conn_slots = 4;
    cfg.ring_capacity = 64;
    auto runtime = client::start_client_runtime(cfg, *side.client, tls.value());
    if (!runtime) return unexpected(fmt::format("client runtime: {}", runtime.error()));
    side.runtime = std::move(runtime).value();
    return {};
}

}  // namespace

outcome probe_mesh(const derp_node& from, const derp_node& to, const mesh_settings& settings, const run_context& ctx) {
    const std::int64_t started_ns = monotonic_now_ns();
    pair_state state;
    // Declared in this order so that the runtimes stop (destructors run in reverse) before
    // `state`, which their handlers write, goes away.
    client_side sides[2];
    for (int i = 0; i < 2; ++i)
        if (auto started = start_side(sides[i], state, i, i == 0 ? from : to, settings, ctx); !started)
            return failed(started.error());

    // Both handshakes, each ending in ServerInfo, or the first failure.
    const auto wait_for = [&](auto done) {
        std::unique_lock lock(state.mutex);
        while (!done() && state.problem.empty() && !ctx.over())
            state.changed.wait_for(lock, std::chrono::milliseconds(std::max(1, ctx.poll_slice_ms())));
        return done();
    };
    if (!wait_for([&] { return state.ready[0] && state.ready[1]; })) {
        std::unique_lock lock(state.mutex);
        if (state.closed_in_handshake_side >= 0 && !ctx.over()) {
            // The client library saw only a failed connect or a close; dial once more with the
            // tls probe's code to name the cause (errno, pin mismatch, verification, SNI).
            const int side = state.closed_in_handshake_side;
            const derp_node& node = side == 0 ? from : to;
            lock.unlock();
            if (auto problem = tls_handshake_problem(node, settings.ca_file, ctx))
                return failed(fmt::format("{} node {}: {}", side == 0 ? "from" : "to", node.name, *problem));
            lock.lock();
        }
        if (!state.problem.empty()) return failed(state.problem);
        if (ctx.stopping()) return failed("stopped");
        const int missing = !state.ready[0] ? 0 : 1;
        return failed(fmt::format("timed out waiting for ServerInfo from {} node {}", missing == 0 ? "from" : "to",
                                  missing == 0 ? from.name : to.name));
    }
    if (from.name != to.name) {
        const std::int64_t settle_until_ns = monotonic_now_ns() + mesh_settle_ns;
        while (monotonic_now_ns() < settle_until_ns && !ctx.over())
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }

    packet payload{};
    if (getrandom(payload.data(), payload.size(), 0) != static_cast<ssize_t>(payload.size()))
        return failed("no randomness for the probe packet");
    {
        std::lock_guard lock(state.mutex);
        state.expecting = true;
        state.expected_src = sides[0].client->public_key();
        state.expected = payload;
    }
    sides[0].client->request_send(sides[1].client->public_key(), payload);
    sides[0].wake();
    if (!wait_for([&] { return state.delivered; })) {
        std::lock_guard lock(state.mutex);
        if (!state.problem.empty()) return failed(state.problem);
        if (ctx.stopping()) return failed("stopped");
        std::string why;
        if (from.name != to.name)
            why = state.sender_saw_peer_gone
                      ? fmt::format(" (node {} answered PeerGone: it does not know the destination; are {} and {} meshed?)",
                                    from.name, from.name, to.name)
                      : fmt::format(" (are {} and {} meshed, with the same mesh key?)", from.name, to.name);
        return failed(fmt::format("packet from {} to {} not delivered within {}{}", from.name, to.name,
                                  format_latency(monotonic_now_ns() - started_ns), why));
    }
    std::int64_t transit_ns = 0;
    {
        std::lock_guard lock(state.mutex);
        transit_ns = state.delivered_ns - state.sent_ns;
    }
    return outcome{true,
                   fmt::format("{} bytes {} -> {} delivered in {} (handshakes included: {})", probe_packet_bytes,
                               from.name, to.name, format_latency(transit_ns),
                               format_latency(monotonic_now_ns() - started_ns)),
                   std::nullopt};
}

}  // namespace derp::probe
