// The DERP clients of derpbench's workloads other than the pair load (bench/pair_load): the
// servers of a run (--url, a region's nodes, their TLS), idle clients for the connections
// workload, and the round-trip probe of the latency workload.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/load_pool.hh"
#include "client/derp_client.hh"
#include "core/key.hh"
#include "core/result.hh"
#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "ring/runtime.hh"

namespace derp::bench {

struct target {
    std::string url;
    std::string host;  // the Host header and TLS name
    bool tls = false;
    bool websocket = false;  // ws:// or wss://: DERP over WebSocket (spec 3.4)
    bool raw = false;        // tcp://: a raw forwarder (bench/forwarder), not a DERP server
    ring::socket_address address;
    std::shared_ptr<tls::context> context;  // https: this node's name (SNI, verification)
};

// The servers of one run: every --url, and the TLS setup they share.
struct targets {
    std::vector<target> list;
    std::shared_ptr<client::client_tls> tls;
    std::string urls() const {
        std::string text;
        for (const auto& t : list) text += (text.empty() ? "" : ",") + t.url;
        return text;
    }
    std::vector<ring::socket_address> addresses() const {
        std::vector<ring::socket_address> out;
        for (const auto& t : list) out.push_back(t.address);
        return out;
    }
    // The client options for node i: its Host header and TLS context.
    client::client_options for_node(client::client_options base, std::size_t i) const {
        base.host = list[i].host;
        base.tls_context = list[i].context;
        base.websocket = list[i].websocket;
        return base;
    }
};

// http(s)://host[:port]/derp, ws(s)://host[:port]/derp or tcp://host:port (a raw forwarder)
// -> the address to dial.
result<target, std::string> parse_url(const std::string& url);

// ---- connections: idle clients up to a count. ----
struct idle_stats {
    std::atomic<std::uint64_t> ready{0};
    std::atomic<std::uint64_t> failed{0};
    std::atomic<bool> dialled{false};
};

class idle_clients final : public client::handler {
public:
    // At most `concurrency` clients between dial and handshake at once (0: all at once), as
    // clients arrive at a real server: a TLS server given 18,000 handshakes in one instant
    // times most of them out, which measures the burst, not the server.
    idle_clients(idle_stats& st, std::vector<ring::socket_address> servers, std::uint64_t count,
                 std::vector<client::client_options> per_server, std::uint64_t concurrency)
        : _st(st), _servers(std::move(servers)), _count(count), _per_server(std::move(per_server)),
          _concurrency(concurrency) {}
    void attach(client::client_pool& pool) { _pool = &pool; }
    void on_ready(ring::conn_id conn, const node_key&) noexcept override {
        _st.ready++;
        settle(conn);
    }
    void on_packet(ring::conn_id, const node_key&, std::span<const std::uint8_t>) noexcept override {}
    void on_closed(ring::conn_id conn, client::client_failure) noexcept override {
        _st.failed++;
        settle(conn);
    }
    std::size_t fill(ring::conn_id, std::span<std::uint8_t>) noexcept override { return 0; }
    bool on_turn() noexcept override {
        while (_next < _count && (_concurrency == 0 || _in_flight < _concurrency)) {
            const std::uint64_t i = _next++;
            client::client_options options = _per_server[i % _servers.size()];
            options.key = generate_private_key();
            auto conn = _pool->dial(_servers[i % _servers.size()], options);
            if (!conn) {
                _st.failed++;
                continue;
            }
            if (_pending.size() <= conn->slot) _pending.resize(conn->slot + 1, 0);
            _pending[conn->slot] = conn->gen + 1;
            ++_in_flight;
        }
        if (_next == _count) _st.dialled = true;
        return false;
    }

private:
    idle_stats& _st;
    std::vector<ring::socket_address> _servers;
    std::uint64_t _count;
    std::vector<client::client_options> _per_server;
    std::uint64_t _concurrency;
    client::client_pool* _pool = nullptr;
    std::uint64_t _next = 0;       // clients dialled so far
    std::uint64_t _in_flight = 0;  // dialled, not yet ready or failed
    std::vector<std::uint32_t> _pending;  // by slot: gen + 1 while in flight, else 0
    void settle(ring::conn_id conn) noexcept {
        if (conn.slot < _pending.size() && _pending[conn.slot] == conn.gen + 1) {
            _pending[conn.slot] = 0;
            --_in_flight;
        }
    }
};

// ---- latency: round trips through the relay, beside an optional background load. ----
// Client A sends a probe (sequence number and send time) every interval to client B; B echoes
// each probe back to A; A records the round-trip time. Both clients live in this process, so
// one clock times both ends.
struct latency_stats {
    std::atomic<int> ready{0};
    std::atomic<bool> running{false};
    std::atomic<std::uint64_t> sent{0};
    std::atomic<std::uint64_t> failures{0};
};

class latency_probe final : public client::handler {
public:
    latency_probe(latency_stats& st, ring::socket_address server_a, ring::socket_address server_b, std::size_t size,
                  std::uint64_t interval_ns, client::client_options base_a, client::client_options base_b)
        : _st(st), _server_a(server_a), _server_b(server_b), _size(std::max<std::size_t>(size, 16)),
          _interval_ns(interval_ns), _base_a(std::move(base_a)), _base_b(std::move(base_b)) {}
    template <typename Pool>
    void attach(Pool& pool) {
        _pool = std::make_unique<load_pool_of<Pool>>(pool);
    }
    std::vector<double>& rtts_us() { return _rtts_us; }

    void on_ready(ring::conn_id, const node_key&) noexcept override { _st.ready++; }
    void on_packet(ring::conn_id conn, const node_key&, std::span<const std::uint8_t> packet) noexcept override {
        if (packet.size() < 16) return;
        if (conn == _b) {  // echo it home
            _echoes.emplace_back(packet.begin(), packet.end());
            _pool->want_send(_b);
            return;
        }
        std::uint64_t sent_ns = 0;
        std::memcpy(&sent_ns, packet.data() + 8, 8);
        _rtts_us.push_back(static_cast<double>(ring::monotonic_ns() - sent_ns) / 1e3);
    }
    void on_closed(ring::conn_id, client::client_failure) noexcept override {
        if (_st.running.load()) _st.failures++;
    }
    std::size_t fill(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override {
        std::size_t n = 0;
        const std::size_t frame = send_packet_frame_bytes(_size);
        if (conn == _a) {
            while (_due > 0 && n + frame <= out.size()) {
                std::vector<std::uint8_t> payload(_size, 0);
                const std::uint64_t now = ring::monotonic_ns();
                std::memcpy(payload.data(), &_seq, 8);
                std::memcpy(payload.data() + 8, &now, 8);
                n += encode_send_packet(out.subspan(n), _b_key, payload);
                ++_seq;
                --_due;
                _st.sent++;
            }
            if (_due > 0) _pool->want_send(_a);
        } else if (conn == _b) {
            while (!_echoes.empty() && n + frame <= out.size()) {
                n += encode_send_packet(out.subspan(n), _a_key, _echoes.front());
                _echoes.erase(_echoes.begin());
            }
            if (!_echoes.empty()) _pool->want_send(_b);
        }
        return n;
    }
    bool on_turn() noexcept override {
        if (!_dialled) {
            _dialled = true;
            client::client_options a = _base_a, b = _base_b;
            a.key = generate_private_key();
            b.key = generate_private_key();
            _a_key = public_key_of(a.key);
            _b_key = public_key_of(b.key);
            auto ca = _pool->dial(_server_a, a);
            auto cb = _pool->dial(_server_b, b);
            if (!ca || !cb) {
                _st.failures++;
                return false;
            }
            _a = *ca;
            _b = *cb;
        }
        if (_st.running.load()) {
            const std::uint64_t now = ring::monotonic_ns();
            if (_next_ns == 0) _next_ns = now;
            if (now >= _next_ns) {
                ++_due;
                _next_ns += _interval_ns;
                _pool->want_send(_a);
            }
            _pool->wake_at(_next_ns);
        }
        return false;
    }

private:
    latency_stats& _st;
    ring::socket_address _server_a, _server_b;
    std::size_t _size;
    std::uint64_t _interval_ns;
    client::client_options _base_a, _base_b;
    std::unique_ptr<load_pool> _pool;
    ring::conn_id _a{}, _b{};
    node_key _a_key, _b_key;
    bool _dialled = false;
    std::uint64_t _seq = 0, _due = 0, _next_ns = 0;
    std::vector<std::vector<std::uint8_t>> _echoes;
    std::vector<double> _rtts_us;
};

// The value at share p (0..1) of sorted values, nearest rank; 0 for none.
double percentile(const std::vector<double>& sorted, double p);

}  // namespace derp::bench
