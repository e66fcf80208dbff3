// 10,000 idle DERP clients against a derpd process: they all finish the handshake, stay
// connected through keepalives, and a packet still crosses between two of them. The clients
// run on the project's client library in this process and derpd in its own, because each
// process may hold only about 20,000 open files here. Reports derpd's memory per connection.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "client/derp_client.hh"
#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "tests/support/tls_socket.hh"
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

// A /proc/<pid>/status figure in bytes: VmRSS now, or VmHWM, the high-water mark.
std::uint64_t status_bytes(pid_t pid, std::string_view field) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind(field, 0) == 0) return std::stoull(line.substr(field.size())) * 1024;
    return 0;
}
std::uint64_t rss_bytes(pid_t pid) { return status_bytes(pid, "VmRSS:"); }

// derpd's live heap from its /debug/varz (derpd_heap_in_use_bytes).
std::uint64_t heap_bytes(std::uint16_t port, bool tls) {
    std::string page;
    if (tls) {
        auto s = test::tls_socket::open(port, test::insecure_client_context());
        REQUIRE(s);
        page = s.value()->http_get("/debug/varz");
    } else {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
        const std::string request = "GET /debug/varz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) > 0);
        char buffer[65536];
        ssize_t n = 0;
        while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) page.append(buffer, static_cast<std::size_t>(n));
        ::close(fd);
    }
    const std::string name = "\nderpd_heap_in_use_bytes ";
    const auto at = page.find(name);
    REQUIRE(at != std::string::npos);
    return std::stoull(page.substr(at + name.size()));
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

namespace {

// Returns derpd's RSS growth per connection in bytes.
std::uint64_t run_idle_clients(bool tls) {
    test::derpd_options options;
    options.keepalive_interval = "2s";
    // A burst of 10,000 handshakes takes a few seconds; over TLS (ECDHE and a signature each,
    // on both sides of this 2-core machine) and under the sanitizers, much longer.
    options.handshake_timeout = "60s";
    options.tls = tls;
    options.extra_args = {"-memory-trim-interval", "1s"};
    test::derpd_process derpd(options);
    std::shared_ptr<client::client_tls> client_tls;
    if (tls) {
        tls::context::client_options o;
        o.server_name = "127.0.0.1";
        o.verify = tls::context::verify_mode::insecure;
        auto setup = client::make_client_tls(o, 1);
        REQUIRE(setup);
        client_tls = setup.value();
        client_tls->handshake_timeout_ns = 60'000'000'000;  // 10,000 handshakes queue up at once
    }
    const std::uint64_t rss_before = rss_bytes(derpd.pid());
    const std::uint64_t heap_before = heap_bytes(derpd.port(), tls);

    idle_state st;
    auto server = ring::parse_listen_address(fmt::format("127.0.0.1:{}", derpd.port())).value().front();
    idle_load load(st, server);
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.shard_defaults.conn_slots = client_count + 16;
    cfg.shard_defaults.send_buffer_count = 256;
    auto rt = client::start_client_runtime(cfg, load, client_tls);
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
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // past a memory trim
    // The high-water mark covers the burst of handshakes (derpd's start is below rss_before).
    const std::uint64_t rss_peak = status_bytes(derpd.pid(), "VmHWM:");
    const std::uint64_t rss_after = rss_bytes(derpd.pid());
    const std::uint64_t heap_after = heap_bytes(derpd.port(), tls);
    const std::uint64_t per_connection = (rss_after - rss_before) / client_count;
    const std::uint64_t heap_per_connection = (heap_after - heap_before) / client_count;
    MESSAGE(std::string(tls ? "TLS: " : "plain: ") << "10,000 handshakes in " << connect_s << " s; derpd RSS "
                                                   << rss_before / 1024 << " KiB idle -> " << rss_after / 1024
                                                   << " KiB with 10,000 clients: " << per_connection
                                                   << " bytes per connection (heap: " << heap_per_connection
                                                   << "); RSS high-water " << rss_peak / 1024 << " KiB: "
                                                   << (rss_peak - rss_before) / client_count
                                                   << " bytes per connection during the burst");
    CHECK(derpd.running());

    // A packet between the first and the last client still crosses.
    st.send_probe = true;
    rt.value()->wake_all();
    CHECK(wait_until([&] { return st.probe_received.load() == 1; }, std::chrono::seconds(5)));

    rt.value()->request_stop();
    rt.value()->wait();
    // derpd sees 10,000 disconnects and stays healthy.
    CHECK(derpd.running());
    return per_connection;
}

}  // namespace

TEST_CASE("10,000 idle clients connect, stay connected through keepalives, and still relay") {
    REQUIRE(crypto_init().has_value());
    run_idle_clients(false);
}

TEST_CASE("10,000 idle TLS clients: the same, over userspace TLS records") {
    REQUIRE(crypto_init().has_value());
    const std::uint64_t per_connection = run_idle_clients(true);
    // Issue 18: without kTLS the userspace record layer carries the connection and the SSL
    // object is freed after the handshake; the heap per idle TLS connection went from 17.3 KB
    // to about 3 KB (plain: 1.3 KB) and RSS after a trim to about 4.2 KB (docs/BENCHMARKS.md).
    // The bound, three times that, catches a regression such as an SSL object or a 16 KiB
    // record buffer kept per idle connection (RSS was 23 KB with them).
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer's redzones and quarantine inflate every allocation: no memory bound.
    (void)per_connection;
#else
    CHECK(per_connection <= 12 * 1024);
#endif
}
