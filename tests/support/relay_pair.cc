// The two-client relay check (see relay_pair.hh).
#include "tests/support/relay_pair.hh"

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "crypto/box.hh"

namespace derp::test {
namespace {

class pair_handler final : public client::handler {
public:
    pair_handler(ring::socket_address server, std::vector<std::size_t> sizes, std::uint32_t per_size)
        : _server(server), _sizes(std::move(sizes)), _per_size(per_size) {}
    void attach(client::client_pool& pool) { _pool = &pool; }

    void on_ready(ring::conn_id conn, const node_key&) noexcept override {
        ++_ready;
        if (_ready == 2) {
            _pool->want_send(_conns[0]);
            _pool->want_send(_conns[1]);
        }
        (void)conn;
    }
    void on_packet(ring::conn_id conn, const node_key& src, std::span<const std::uint8_t> packet) noexcept override {
        const int me = conn == _conns[0] ? 0 : 1;
        if (src != _public[1 - me]) return note("a packet from an unexpected source");
        // Packet k of the sequence: its size is _sizes[k / per_size]; byte i = (i + k) & 0xff.
        const std::uint64_t k = _received[me];
        const std::size_t want_size = _sizes[k / _per_size];
        if (packet.size() != want_size) return note(fmt::format("packet {} has {} bytes, want {}", k, packet.size(), want_size));
        for (std::size_t i = 0; i < packet.size(); ++i)
            if (packet[i] != static_cast<std::uint8_t>(i + k)) return note(fmt::format("packet {} byte {} differs", k, i));
        ++_received[me];
        delivered.fetch_add(1);
    }
    void on_closed(ring::conn_id, client::client_failure failure) noexcept override {
        // A close after the test asked to stop is the one it asked for, whichever side (the
        // runtime's own stop, or this handler's) got there first.
        if (!_stopping && !stop_requested.load()) note(fmt::format("a client closed: {}", client::to_string(failure)));
        closed.fetch_add(1);
    }
    std::size_t fill(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override {
        const int me = conn == _conns[0] ? 0 : 1;
        std::size_t used = 0;
        const std::uint64_t total = _sizes.size() * _per_size;
        // Paced by the receiver: at most 8 packets ahead of what the peer has received, so
        // that no queue in the server overflows and drops (which this check would call loss).
        while (_sent[me] < total && _sent[me] < _received[1 - me] + 8) {
            const std::uint64_t k = _sent[me];
            const std::size_t size = _sizes[k / _per_size];
            if (out.size() - used < size + 64) break;
            _packet.resize(size);
            for (std::size_t i = 0; i < size; ++i) _packet[i] = static_cast<std::uint8_t>(i + k);
            used += encode_send_packet(out.subspan(used), _public[1 - me], _packet);
            ++_sent[me];
        }
        return used;
    }
    bool on_turn() noexcept override {
        if (!_dialled) {
            _dialled = true;
            for (int i = 0; i < 2; ++i) {
                client::client_options options;
                options.key = generate_private_key();
                _public[i] = public_key_of(options.key);
                auto conn = _pool->dial(_server, options);
                if (!conn) return note("dial failed"), false;
                _conns[i] = *conn;
            }
        }
        // Keep both senders going as the peers catch up.
        if (_ready == 2)
            for (int i = 0; i < 2; ++i)
                if (_sent[i] < _sizes.size() * _per_size && _sent[i] < _received[1 - i] + 8) _pool->want_send(_conns[i]);
        if (stop_requested.load()) {
            _stopping = true;
            for (auto c : _conns) _pool->close(c);
        }
        return false;
    }

    std::atomic<std::uint64_t> delivered{0};
    std::atomic<int> closed{0};
    std::atomic<bool> stop_requested{false};
    std::string problem() {
        std::lock_guard lock(_mutex);
        return _problem;
    }

private:
    void note(std::string text) {
        std::lock_guard lock(_mutex);
        if (_problem.empty()) _problem = std::move(text);
    }
    ring::socket_address _server;
    std::vector<std::size_t> _sizes;
    std::uint32_t _per_size;
    client::client_pool* _pool = nullptr;
    ring::conn_id _conns[2]{};
    node_key _public[2];
    std::uint64_t _sent[2]{}, _received[2]{};
    std::vector<std::uint8_t> _packet;
    int _ready = 0;
    bool _dialled = false;
    bool _stopping = false;
    std::mutex _mutex;
    std::string _problem;
};

}  // namespace

relay_pair_result run_relay_pair(std::uint16_t port, std::shared_ptr<client::client_tls> tls,
                                 const std::vector<std::size_t>& sizes, std::uint32_t per_size, int timeout_ms) {
    relay_pair_result result;
    result.expected = 2ull * sizes.size() * per_size;
    auto server = ring::parse_listen_address(fmt::format("127.0.0.1:{}", port));
    if (!server) {
        result.problem = server.error();
        return result;
    }
    pair_handler handler(server.value().front(), sizes, per_size);
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.shard_defaults.conn_slots = 16;
    cfg.shard_defaults.send_buffer_count = 16;
    cfg.shard_defaults.send_buffer_bytes = 128 * 1024;
    auto rt = client::start_client_runtime(cfg, handler, tls);
    if (!rt) {
        result.problem = rt.error();
        return result;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline && handler.delivered.load() < result.expected &&
           handler.problem().empty()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        rt.value()->wake_all();
    }
    result.delivered = handler.delivered.load();
    handler.stop_requested = true;
    // The handler closes both clients on its next turn; stop the runtime once it has (or after
    // a generous bound: the runtime's own stop closes them too, and that close is expected).
    const auto close_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (handler.closed.load() < 2 && std::chrono::steady_clock::now() < close_deadline) {
        rt.value()->wake_all();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    rt.value()->request_stop();
    rt.value()->wait();
    result.problem = handler.problem();
    if (result.problem.empty() && result.delivered < result.expected)
        result.problem = fmt::format("timed out: {} of {} packets arrived", result.delivered, result.expected);
    result.ok = result.problem.empty();
    return result;
}

}  // namespace derp::test
