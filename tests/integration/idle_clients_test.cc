// 10,000 idle DERP clients against a derpd process: they all finish the handshake, stay
// connected through keepalives, and a packet still crosses between two of them. The clients
// run on the project's client library in this process and derpd in its own, because each
// process may hold only about 20,000 open files here. Reports derpd's memory per connection.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/derp_client.hh"
#include "crypto/box.hh"
#include "ring/runtime.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/skip.hh"

using namespace derp;

namespace {

constexpr std::uint32_t client_count = 10'000;

struct idle_state {
    std::atomic<std::uint32_t> ready{0};
    std::atomic<std::uint32_t> closed{0};
    std::atomic<std::uint32_t> dial_failures{0};
    std::atomic<std::uint64_t> keepalives{0};
    std::atomic<bool> send_probe{false};
    std::atomic<std::uint32_t> probe_received{0};
};

class idle_load final : public client::handler {
public:
    idle_load(idle_state& st, ring::socket_address server) : _st(st), _server(server) {}
    void attach(client::client_pool& pool) { _pool = &pool; }

    void on_ready(ring::conn_id, const node_key&) noexcept override { _st.ready++; }
    void on_packet(ring::conn_id conn, const node_key& src, std::span<const std::uint8_t> packet) noexcept override {
        if (conn == _conns.back() && src == _first_public && packet.size() == 5 &&
            std::memcmp(packet.data(), "probe", 5) == 0)
            _st.probe_received++;
    }
    void on_keep_alive(ring::conn_id) noexcept override { _st.keepalives++; }
    void on_closed(ring::conn_id, client::client_failure) noexcept override { _st.closed++; }
    std::size_t fill(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override {
        if (conn != _conns.front() || _probe_sent) return 0;
        _probe_sent = true;
        const std::uint8_t probe[] = {'p', 'r', 'o', 'b', 'e'};
        return encode_send_packet(out, _last_public, probe);
    }
    bool on_turn() noexcept override {
        if (!_dialled) {
            _dialled = true;
            for (std::uint32_t i = 0; i < client_count; ++i) {
                client::client_options options;
                options.key = generate_private_key();
                if (i == 0) _first_public = public_key_of(options.key);
                if (i == client_count - 1) _last_public = public_key_of(options.key);
                auto conn = _pool->dial(_server, options);
                if (!conn) {
                    _st.dial_failures++;
                    continue;
                }
                _conns.push_back(*conn);
            }
        }
        if (_st.send_probe.load() && !_probe_asked && !_conns.empty()) {
            _probe_asked = true;
            _pool->want_send(_conns.front());
        }
        return false;
    }

private:
    idle_state& _st;
    ring::socket_address _server;
    client::client_pool* _pool = nullptr;
    std::vector<ring::conn_id> _conns;
    node_key _first_public, _last_public;
    bool _dialled = false;
    bool _probe_asked = false;
    bool _probe_sent = false;
};

std::uint64_t rss_bytes(pid_t pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    return 0;
}

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return pred();
}

}  // namespace

TEST_CASE("10,000 idle clients connect, stay connected through keepalives, and still relay") {
    REQUIRE(crypto_init().has_value());
    test::derpd_options options;
    options.keepalive_interval = "2s";
    options.handshake_timeout = "10s";  // a burst of 10,000 handshakes takes a few seconds
    test::derpd_process derpd(options);
    const std::uint64_t rss_before = rss_bytes(derpd.pid());

    idle_state st;
    auto server = ring::parse_listen_address(fmt::format("127.0.0.1:{}", derpd.port())).value().front();
    idle_load load(st, server);
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.shard_defaults.conn_slots = client_count + 16;
    cfg.shard_defaults.send_buffer_count = 256;
    auto rt = client::start_client_runtime(cfg, load);
    if (!rt && test::is_missing_io_uring(rt.error())) test::skip(rt.error());
    REQUIRE_MESSAGE(rt.has_value(), (rt ? std::string() : rt.error()));

    const auto start = std::chrono::steady_clock::now();
    REQUIRE_MESSAGE(wait_until([&] { return st.ready.load() + st.closed.load() >= client_count; },
                               std::chrono::seconds(60)),
                    "ready " << st.ready.load() << ", closed " << st.closed.load());
    const double connect_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(st.dial_failures.load() == 0);
    CHECK(st.closed.load() == 0);
    REQUIRE(st.ready.load() == client_count);

    // Idle for longer than a keepalive period: every client hears at least one KeepAlive and
    // none is dropped.
    REQUIRE(wait_until([&] { return st.keepalives.load() >= client_count; }, std::chrono::seconds(8)));
    CHECK(st.closed.load() == 0);
    const std::uint64_t rss_after = rss_bytes(derpd.pid());
    MESSAGE("10,000 handshakes in " << connect_s << " s; derpd RSS " << rss_before / 1024 << " KiB idle -> "
                                    << rss_after / 1024 << " KiB with 10,000 clients: "
                                    << (rss_after - rss_before) / client_count << " bytes per connection");
    CHECK(derpd.running());

    // A packet between the first and the last client still crosses.
    st.send_probe = true;
    rt.value()->wake_all();
    CHECK(wait_until([&] { return st.probe_received.load() == 1; }, std::chrono::seconds(5)));

    rt.value()->request_stop();
    rt.value()->wait();
    // derpd sees 10,000 disconnects and stays healthy.
    CHECK(derpd.running());
}
