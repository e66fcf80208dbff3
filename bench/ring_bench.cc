// Runtime benchmarks (suite 'bench'): cross-thread message throughput over the SPSC rings, raw
// and through the shard loop with MSG_RING wake-ups; and a loopback echo served by the runtime
// against a plain epoll echo server written for the comparison, both driven by the same
// epoll client in the same run. Servers are pinned to cpu 0, the load to cpu 1.
// Prints one line per figure and a JSON summary; docs/BENCHMARKS.md records the medians.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench/bench_util.hh"

#include "core/flags.hh"
#include "ring/runtime.hh"

using namespace derp::ring;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

// ---- 1. Raw SPSC ring: producer on cpu 0, consumer on cpu 1. ----
double spsc_messages_per_s(std::uint64_t total, std::size_t batch) {
    spsc_ring<message> ring(4096);
    std::thread producer([&] {
        derp::bench::pin_this_thread(0);
        message m;
        std::uint64_t sent = 0;
        while (sent < total) {
            std::size_t n = 0;
            while (n < batch && sent < total) {
                m.u64 = sent;
                if (!ring.push(m)) break;
                ++n;
                ++sent;
            }
            ring.publish();
        }
    });
    derp::bench::pin_this_thread(1);
    const auto start = clock_type::now();
    std::uint64_t received = 0, checksum = 0;
    while (received < total) {
        while (const message* m = ring.pop()) {
            checksum += m->u64;
            ++received;
        }
        ring.release();
    }
    const double elapsed = seconds_since(start);
    producer.join();
    if (checksum != total * (total - 1) / 2) fmt::print(stderr, "spsc: checksum mismatch\n");
    return static_cast<double>(total) / elapsed;
}

// ---- 2. Through the runtime: shard 0 posts to shard 1 as fast as the ring takes them. ----
constexpr std::uint16_t kind_bench = message_kind_service_base;

struct flood_state {
    std::atomic<std::uint64_t> received{0};
    std::atomic<bool> go{false};
    std::uint64_t target = 0;
};

class flood_service final : public service {
public:
    flood_service(shard& sh, flood_state& st) : _shard(sh), _st(st) {}
    void on_accept(conn_id, const sockaddr_storage&) noexcept override {}
    std::size_t on_data(conn_id, std::span<const std::uint8_t> b) noexcept override { return b.size(); }
    std::size_t on_writable(conn_id, std::span<std::uint8_t>) noexcept override { return 0; }
    void on_timer(conn_id, std::uint8_t) noexcept override {}
    void on_closed(conn_id, close_cause) noexcept override {}
    void on_message(const message&) noexcept override {
        _st.received.store(_st.received.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    bool on_turn_end() noexcept override {
        if (_shard.index() != 0 || !_st.go.load(std::memory_order_relaxed)) return _shard.index() == 0;
        message m;
        m.kind = kind_bench;
        for (int i = 0; i < 1024 && _sent < _st.target; ++i) {
            if (!_shard.post(1, m)) break;
            ++_sent;
        }
        return _sent < _st.target;
    }

private:
    shard& _shard;
    flood_state& _st;
    std::uint64_t _sent = 0;
};

double runtime_messages_per_s(std::uint64_t total, std::uint64_t* wakeups) {
    flood_state st;
    st.target = total;
    runtime_config cfg;
    cfg.shard_count = 2;
    cfg.shard_defaults.conn_slots = 16;
    auto rt = runtime::start(cfg, [&st](shard& sh) { return std::make_unique<flood_service>(sh, st); },
                             nullptr);
    if (!rt) {
        fmt::print(stderr, "runtime: {}\n", rt.error());
        return 0;
    }
    const auto start = clock_type::now();
    st.go = true;
    while (st.received.load(std::memory_order_relaxed) < total && seconds_since(start) < 30)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const double elapsed = seconds_since(start);
    *wakeups = rt.value()->counters(0).wakeups_sent.get();
    rt.value()->request_stop();
    rt.value()->wait();
    return static_cast<double>(st.received.load()) / elapsed;
}

// ---- 3. Echo: runtime service vs plain epoll server. ----
class echo_service final : public service {
public:
    explicit echo_service(shard& sh) : _shard(sh) {}
    void on_accept(conn_id conn, const sockaddr_storage&) noexcept override {
        if (_out.size() <= conn.slot) _out.resize(conn.slot + 1);
        _out[conn.slot].clear();
    }
    std::size_t on_data(conn_id conn, std::span<const std::uint8_t> b) noexcept override {
        auto& out = _out[conn.slot];
        out.insert(out.end(), b.begin(), b.end());
        _shard.want_write(conn);
        return b.size();
    }
    std::size_t on_writable(conn_id conn, std::span<std::uint8_t> dst) noexcept override {
        auto& out = _out[conn.slot];
        const std::size_t n = std::min(dst.size(), out.size());
        std::memcpy(dst.data(), out.data(), n);
        out.erase(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n));
        if (!out.empty()) _shard.want_write(conn);
        return n;
    }
    void on_timer(conn_id, std::uint8_t) noexcept override {}
    void on_closed(conn_id conn, close_cause) noexcept override { _out[conn.slot].clear(); }
    void on_message(const message&) noexcept override {}

private:
    shard& _shard;
    std::vector<std::vector<std::uint8_t>> _out;
};

// The comparison server: one thread, epoll, non-blocking sockets, echo what is read.
class epoll_echo {
public:
    epoll_echo() {
        _listen = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        const int one = 1;
        setsockopt(_listen, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(_listen, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::listen(_listen, 1024);
        socklen_t len = sizeof a;
        getsockname(_listen, reinterpret_cast<sockaddr*>(&a), &len);
        _address.length = sizeof(sockaddr_in);
        std::memcpy(&_address.storage, &a, sizeof a);
        _thread = std::thread([this] { run(); });
    }
    ~epoll_echo() {
        _stop = true;
        _thread.join();
        ::close(_listen);
    }
    const socket_address& address() const { return _address; }

private:
    void run() {
        derp::bench::pin_this_thread(0);
        const int ep = epoll_create1(EPOLL_CLOEXEC);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = _listen;
        epoll_ctl(ep, EPOLL_CTL_ADD, _listen, &ev);
        std::vector<epoll_event> events(256);
        std::vector<std::uint8_t> buf(65536);
        std::vector<int> fds;
        while (!_stop) {
            const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 50);
            for (int i = 0; i < n; ++i) {
                const int fd = events[static_cast<std::size_t>(i)].data.fd;
                if (fd == _listen) {
                    for (;;) {
                        const int c = accept4(_listen, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                        if (c < 0) break;
                        const int one = 1;
                        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                        epoll_event cev{};
                        cev.events = EPOLLIN;
                        cev.data.fd = c;
                        epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                        fds.push_back(c);
                    }
                    continue;
                }
                const ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
                if (r <= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
                    ::close(fd);
                    fds.erase(std::remove(fds.begin(), fds.end(), fd), fds.end());
                    continue;
                }
                // Requests are small relative to the socket buffer and the client waits for
                // each echo, so a blocking-style write loop never spins for long.
                std::size_t off = 0;
                while (off < static_cast<std::size_t>(r)) {
                    const ssize_t w = ::send(fd, buf.data() + off, static_cast<std::size_t>(r) - off, MSG_NOSIGNAL);
                    if (w > 0) off += static_cast<std::size_t>(w);
                    else if (errno != EAGAIN) break;
                }
            }
        }
        for (int fd : fds) ::close(fd);
        ::close(ep);
    }

    int _listen = -1;
    socket_address _address;
    std::atomic<bool> _stop{false};
    std::thread _thread;
};

struct echo_result {
    double requests_per_s;
    double megabytes_per_s;
    double server_cpu_us_per_request;  // process CPU time minus the client thread's
};

double cpu_seconds(clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Closed-loop load: each connection sends one request, waits for the whole echo, repeats.
echo_result drive_echo(const socket_address& server, int connections, std::size_t request_bytes,
                       double duration_s) {
    derp::bench::pin_this_thread(1);
    struct conn {
        int fd;
        std::size_t sent = 0, received = 0;
    };
    const int ep = epoll_create1(EPOLL_CLOEXEC);
    std::vector<conn> conns(static_cast<std::size_t>(connections));
    std::vector<std::uint8_t> request(request_bytes, 0x42), buf(65536);
    for (std::size_t i = 0; i < conns.size(); ++i) {
        conns[i].fd = ::socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
        ::connect(conns[i].fd, reinterpret_cast<const sockaddr*>(&server.storage), server.length);
        const int one = 1;
        setsockopt(conns[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(conns[i].fd, F_SETFL, O_NONBLOCK);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
        const ssize_t w = ::send(conns[i].fd, request.data(), request.size(), MSG_NOSIGNAL);
        conns[i].sent = w > 0 ? static_cast<std::size_t>(w) : 0;
    }
    std::uint64_t completed = 0;
    std::vector<epoll_event> events(256);
    const double process_cpu_start = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
    const double client_cpu_start = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
    const auto start = clock_type::now();
    while (seconds_since(start) < duration_s) {
        const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 10);
        for (int i = 0; i < n; ++i) {
            conn& c = conns[events[static_cast<std::size_t>(i)].data.u64];
            const ssize_t r = ::recv(c.fd, buf.data(), buf.size(), 0);
            if (r <= 0) continue;
            c.received += static_cast<std::size_t>(r);
            if (c.received >= request_bytes) {
                ++completed;
                c.received -= request_bytes;
                const ssize_t w = ::send(c.fd, request.data(), request.size(), MSG_NOSIGNAL);
                (void)w;
            }
        }
    }
    const double elapsed = seconds_since(start);
    const double server_cpu = (cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - process_cpu_start) -
                              (cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - client_cpu_start);
    for (auto& c : conns) ::close(c.fd);
    ::close(ep);
    const double rps = static_cast<double>(completed) / elapsed;
    return {rps, rps * static_cast<double>(request_bytes) * 2 / 1e6,  // both directions
            completed > 0 ? server_cpu * 1e6 / static_cast<double>(completed) : 0};
}

echo_result runtime_echo(int connections, std::size_t request_bytes, double duration_s) {
    runtime_config cfg;
    cfg.shard_count = 1;
    cfg.listen = parse_listen_address("127.0.0.1:0").value();
    cfg.shard_defaults.conn_slots = 1024;
    auto rt = runtime::start(cfg, [](shard& sh) { return std::make_unique<echo_service>(sh); }, nullptr);
    if (!rt) {
        fmt::print(stderr, "runtime: {}\n", rt.error());
        return {0, 0, 0};
    }
    auto result = drive_echo(rt.value()->bound_addresses().front(), connections, request_bytes, duration_s);
    rt.value()->request_stop();
    rt.value()->wait();
    return result;
}

echo_result plain_epoll_echo(int connections, std::size_t request_bytes, double duration_s) {
    epoll_echo server;
    return drive_echo(server.address(), connections, request_bytes, duration_s);
}

}  // namespace

int main(int argc, char** argv) {
    std::int64_t rounds = 5;
    std::int64_t duration_ns = 2'000'000'000;
    std::int64_t connections = 64;
    std::string sizes = "64,16384";
    derp::flag_set flags("ring_bench");
    flags.add_int("rounds", &rounds, "rounds per figure (the median is reported)");
    flags.add_duration("duration", &duration_ns, "length of each echo round");
    flags.add_int("conns", &connections, "echo client connections");
    flags.add_string("sizes", &sizes, "comma-separated echo request sizes in bytes");
    if (auto exit_status = derp::bench::parse_flags(flags, argc, argv)) return *exit_status;
    set_log_level(log_level::warn);
    const double duration_s = static_cast<double>(duration_ns) / 1e9;

    std::vector<double> spsc1, spsc64, rt_msgs;
    std::uint64_t wakeups = 0;
    for (std::int64_t r = 0; r < rounds; ++r) {
        spsc1.push_back(spsc_messages_per_s(20'000'000, 1));
        spsc64.push_back(spsc_messages_per_s(50'000'000, 64));
        rt_msgs.push_back(runtime_messages_per_s(20'000'000, &wakeups));
    }
    fmt::print("spsc ring, publish every message : {:8.1f} M msg/s\n", derp::bench::median(spsc1) / 1e6);
    fmt::print("spsc ring, publish per 64        : {:8.1f} M msg/s\n", derp::bench::median(spsc64) / 1e6);
    fmt::print("shard 0 -> shard 1 via runtime   : {:8.1f} M msg/s (wake-ups in last round: {})\n",
               derp::bench::median(rt_msgs) / 1e6, wakeups);
    std::string json = fmt::format(
        "{{\"spsc_publish_each_msgs_per_s\":{:.0f},\"spsc_publish_64_msgs_per_s\":{:.0f},"
        "\"runtime_cross_shard_msgs_per_s\":{:.0f},\"echo\":[",
        derp::bench::median(spsc1), derp::bench::median(spsc64), derp::bench::median(rt_msgs));

    bool first = true;
    for (const std::string& size_text : derp::bench::comma_list(sizes)) {
        const std::size_t size = std::stoul(size_text);
        std::vector<double> ring_rps, epoll_rps, ratio, ring_cpu, epoll_cpu, cpu_ratio;
        for (std::int64_t r = 0; r < rounds; ++r) {
            // Alternate the order so drift on a shared machine hits both equally.
            echo_result a{}, b{};
            if (r % 2 == 0) {
                a = runtime_echo(static_cast<int>(connections), size, duration_s);
                b = plain_epoll_echo(static_cast<int>(connections), size, duration_s);
            } else {
                b = plain_epoll_echo(static_cast<int>(connections), size, duration_s);
                a = runtime_echo(static_cast<int>(connections), size, duration_s);
            }
            ring_rps.push_back(a.requests_per_s);
            epoll_rps.push_back(b.requests_per_s);
            ratio.push_back(b.requests_per_s > 0 ? a.requests_per_s / b.requests_per_s : 0);
            ring_cpu.push_back(a.server_cpu_us_per_request);
            epoll_cpu.push_back(b.server_cpu_us_per_request);
            cpu_ratio.push_back(b.server_cpu_us_per_request > 0
                                    ? a.server_cpu_us_per_request / b.server_cpu_us_per_request
                                    : 0);
        }
        const double mb = static_cast<double>(size) * 2 / 1e6;
        fmt::print("echo {:>6} B x {} conns: runtime {:9.0f} req/s {:8.1f} MB/s {:6.2f} us cpu/req | "
                   "epoll {:9.0f} req/s {:8.1f} MB/s {:6.2f} us cpu/req | ratio req/s {:.2f}, cpu/req {:.2f}\n",
                   size, connections, derp::bench::median(ring_rps), derp::bench::median(ring_rps) * mb, derp::bench::median(ring_cpu),
                   derp::bench::median(epoll_rps), derp::bench::median(epoll_rps) * mb, derp::bench::median(epoll_cpu), derp::bench::median(ratio),
                   derp::bench::median(cpu_ratio));
        json += fmt::format("{}{{\"bytes\":{},\"conns\":{},\"runtime_rps\":{:.0f},\"epoll_rps\":{:.0f},"
                            "\"ratio\":{:.3f},\"runtime_cpu_us_per_req\":{:.3f},"
                            "\"epoll_cpu_us_per_req\":{:.3f},\"cpu_ratio\":{:.3f}}}",
                            first ? "" : ",", size, connections, derp::bench::median(ring_rps), derp::bench::median(epoll_rps),
                            derp::bench::median(ratio), derp::bench::median(ring_cpu), derp::bench::median(epoll_cpu), derp::bench::median(cpu_ratio));
        first = false;
    }
    json += "]}";
    fmt::print("{}\n", json);
    return 0;
}
