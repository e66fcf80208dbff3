// The runtime on loopback with real io_uring and real sockets: hundreds of concurrent
// connections on 2 shards, every byte delivered intact and in order, messages handed from a
// connection on one shard to a connection on the other through the SPSC rings, a client that
// never reads closed by the write timeout without harming the others, and an orderly stop.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ring/runtime.hh"
#include "tests/support/skip.hh"

using namespace derp::ring;

namespace {

// ---- The service under test: a tiny relay keyed by 64-bit ids. ----
// Client -> server: id (u64 LE) once, then frames [u32 LE length][u64 LE dst][payload].
// Server -> client:                     frames [u32 LE length][u64 LE src][payload].
// The directory (id -> shard, connection) is a locked map: fine for a test service, and it
// leaves the data path to the runtime: same-shard delivery is direct, cross-shard delivery is a
// message through the SPSC ring carrying the one copy the producer made.
constexpr std::uint16_t kind_deliver = message_kind_service_base;

struct directory {
    struct entry {
        std::uint32_t shard;
        conn_id conn;
    };
    std::mutex mutex;
    std::map<std::uint64_t, entry> by_id;
    std::atomic<std::uint64_t> delivered_local{0};
    std::atomic<std::uint64_t> delivered_cross{0};
    std::atomic<std::uint64_t> dropped{0};
    std::atomic<std::uint64_t> closed{0};
    std::atomic<std::uint64_t> closed_write_timeout{0};
};

template <typename T>
T load_le(const std::uint8_t* p) {
    T v{};
    std::memcpy(&v, p, sizeof v);
    return v;
}

class relay_service final : public service {
public:
    relay_service(shard& sh, directory& dir) : _shard(sh), _dir(dir) {}

    void on_accept(conn_id conn, const sockaddr_storage&) noexcept override {
        _conns[conn.slot] = state{};
        _conns[conn.slot].gen = conn.gen;
    }

    std::size_t on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept override {
        state& st = _conns[conn.slot];
        std::size_t used = 0;
        if (!st.registered) {
            if (bytes.size() < 8) return 0;
            st.id = load_le<std::uint64_t>(bytes.data());
            st.registered = true;
            std::lock_guard lock(_dir.mutex);
            _dir.by_id[st.id] = {_shard.index(), conn};
            used = 8;
        }
        while (bytes.size() - used >= 4) {
            const auto length = load_le<std::uint32_t>(bytes.data() + used);
            if (length < 8 || length > 1'000'000) {
                _shard.close(conn);
                return used;
            }
            if (bytes.size() - used < 4 + length) break;
            const std::uint64_t dst = load_le<std::uint64_t>(bytes.data() + used + 4);
            // Re-address the frame: same length, source id in place of the destination.
            auto* frame = new std::vector<std::uint8_t>(bytes.begin() + static_cast<std::ptrdiff_t>(used),
                                                        bytes.begin() + static_cast<std::ptrdiff_t>(used + 4 + length));
            std::memcpy(frame->data() + 4, &st.id, 8);
            used += 4 + length;
            directory::entry target{};
            {
                std::lock_guard lock(_dir.mutex);
                auto it = _dir.by_id.find(dst);
                if (it == _dir.by_id.end()) {
                    _dir.dropped++;
                    delete frame;
                    continue;
                }
                target = it->second;
            }
            if (target.shard == _shard.index()) {
                enqueue(target.conn, frame);
                _dir.delivered_local++;
            } else {
                message m;
                m.kind = kind_deliver;
                m.u32 = target.conn.slot;
                m.u64 = target.conn.gen;
                m.ptr = frame;
                // A full ring is backpressure (the runtime counts it): keep the frame and retry
                // at the end of the turn, in order.
                if (_backlog.empty() && _shard.post(target.shard, m))
                    _dir.delivered_cross++;
                else
                    _backlog.push_back({target.shard, m});
            }
        }
        return used;
    }

    std::size_t on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept override {
        state& st = _conns[conn.slot];
        std::size_t n = std::min(out.size(), st.out.size() - st.out_offset);
        std::memcpy(out.data(), st.out.data() + st.out_offset, n);
        st.out_offset += n;
        if (st.out_offset == st.out.size()) {
            st.out.clear();
            st.out_offset = 0;
        } else {
            _shard.want_write(conn);
        }
        return n;
    }

    void on_timer(conn_id, std::uint8_t) noexcept override {}

    void on_closed(conn_id conn, close_cause cause) noexcept override {
        state& st = _conns[conn.slot];
        if (st.registered) {
            std::lock_guard lock(_dir.mutex);
            auto it = _dir.by_id.find(st.id);
            if (it != _dir.by_id.end() && it->second.conn == conn && it->second.shard == _shard.index())
                _dir.by_id.erase(it);
        }
        _conns.erase(conn.slot);
        _dir.closed++;
        if (cause == close_cause::write_timeout) _dir.closed_write_timeout++;
    }

    void on_message(const message& m) noexcept override {
        auto* frame = static_cast<std::vector<std::uint8_t>*>(m.ptr);
        enqueue(conn_id{m.u32, static_cast<std::uint32_t>(m.u64)}, frame);
    }

    void discard_message(const message& m) noexcept override {
        delete static_cast<std::vector<std::uint8_t>*>(m.ptr);
    }

    bool on_turn_end() noexcept override {
        while (!_backlog.empty() && _shard.post(_backlog.front().first, _backlog.front().second)) {
            _backlog.pop_front();
            _dir.delivered_cross++;
        }
        return !_backlog.empty();
    }

    ~relay_service() override {
        for (auto& [to, m] : _backlog) discard_message(m);
    }

private:
    struct state {
        std::uint32_t gen = 0;
        bool registered = false;
        std::uint64_t id = 0;
        std::vector<std::uint8_t> out;
        std::size_t out_offset = 0;
    };

    void enqueue(conn_id conn, std::vector<std::uint8_t>* frame) {
        auto it = _conns.find(conn.slot);
        if (it != _conns.end() && it->second.gen == conn.gen && _shard.is_open(conn)) {
            it->second.out.insert(it->second.out.end(), frame->begin(), frame->end());
            _shard.want_write(conn);
        } else {
            _dir.dropped++;
        }
        delete frame;
    }

    shard& _shard;
    directory& _dir;
    std::map<std::uint32_t, state> _conns;
    std::deque<std::pair<std::uint32_t, message>> _backlog;
};

// ---- Client side: non-blocking sockets driven by epoll on the test thread. ----
int connect_to(const socket_address& address) {
    const int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) == 0);
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void put_le32(std::vector<std::uint8_t>& out, std::uint32_t v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    out.insert(out.end(), p, p + 4);
}
void put_le64(std::vector<std::uint8_t>& out, std::uint64_t v) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
    out.insert(out.end(), p, p + 8);
}

// Payload byte k of message m from id: derived, so the receiver can check every byte.
std::uint8_t payload_byte(std::uint64_t src, std::uint32_t m, std::size_t k) {
    return static_cast<std::uint8_t>((src * 131 + m * 31 + k * 7) & 0xff);
}
std::size_t payload_bytes_of(std::uint32_t m) { return 1 + (m * 977) % 3000; }

struct client {
    int fd = -1;
    std::uint64_t id = 0;
    std::uint64_t partner = 0;
    std::vector<std::uint8_t> out;
    std::size_t out_offset = 0;
    std::vector<std::uint8_t> in;
    std::uint32_t received = 0;
    std::uint64_t corrupt = 0;
};

runtime_config test_config(std::uint32_t shards) {
    runtime_config cfg;
    cfg.shard_count = shards;
    cfg.pin_threads = false;
    auto addresses = parse_listen_address("127.0.0.1:0");
    REQUIRE(addresses.has_value());
    cfg.listen = addresses.value();
    cfg.shard_defaults.conn_slots = 2048;
    cfg.shard_defaults.recv_buffer_count = 256;
    cfg.shard_defaults.send_buffer_count = 256;
    return cfg;
}

std::unique_ptr<runtime> start_or_skip(runtime_config cfg, directory& dir) {
    auto rt = runtime::start(std::move(cfg),
                             [&dir](shard& sh) { return std::make_unique<relay_service>(sh, dir); },
                             nullptr);
    if (!rt && derp::test::is_missing_io_uring(rt.error())) derp::test::skip(rt.error());
    REQUIRE_MESSAGE(rt.has_value(), (rt.has_value() ? std::string() : rt.error()));
    return std::move(rt).value();
}

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (pred()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pred();
}

}  // namespace

TEST_CASE("runtime: 400 connections on 2 shards relay intact, across shards through the rings") {
    constexpr std::uint32_t client_count = 400;
    constexpr std::uint32_t messages_each = 60;
    directory dir;
    auto rt = start_or_skip(test_config(2), dir);
    const socket_address server = rt->bound_addresses().front();

    std::vector<client> clients(client_count);
    for (std::uint32_t i = 0; i < client_count; ++i) {
        client& c = clients[i];
        c.id = 1000 + i;
        c.partner = 1000 + (i ^ 1);
        c.fd = connect_to(server);
        std::vector<std::uint8_t> hello;
        put_le64(hello, c.id);
        REQUIRE(::send(c.fd, hello.data(), hello.size(), MSG_NOSIGNAL) == 8);
    }
    // Wait until every client is in the directory, so no frame races its destination's hello.
    REQUIRE(wait_until([&] {
        std::lock_guard lock(dir.mutex);
        return dir.by_id.size() == client_count;
    }, std::chrono::seconds(10)));

    for (auto& c : clients) {
        for (std::uint32_t m = 0; m < messages_each; ++m) {
            const std::size_t n = payload_bytes_of(m);
            put_le32(c.out, static_cast<std::uint32_t>(8 + n));
            put_le64(c.out, c.partner);
            for (std::size_t k = 0; k < n; ++k) c.out.push_back(payload_byte(c.id, m, k));
        }
        fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
    }

    const int ep = epoll_create1(EPOLL_CLOEXEC);
    for (std::uint32_t i = 0; i < client_count; ++i) {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.u32 = i;
        REQUIRE(epoll_ctl(ep, EPOLL_CTL_ADD, clients[i].fd, &ev) == 0);
    }
    std::uint32_t done = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    std::vector<epoll_event> events(256);
    std::vector<std::uint8_t> buffer(65536);
    while (done < client_count && std::chrono::steady_clock::now() < deadline) {
        const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
        for (int e = 0; e < n; ++e) {
            client& c = clients[events[static_cast<std::size_t>(e)].data.u32];
            if ((events[static_cast<std::size_t>(e)].events & EPOLLOUT) && c.out_offset < c.out.size()) {
                const ssize_t w = ::send(c.fd, c.out.data() + c.out_offset, c.out.size() - c.out_offset, MSG_NOSIGNAL);
                if (w > 0) c.out_offset += static_cast<std::size_t>(w);
                if (c.out_offset == c.out.size()) {
                    epoll_event ev{};
                    ev.events = EPOLLIN;
                    ev.data.u32 = events[static_cast<std::size_t>(e)].data.u32;
                    epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
                }
            }
            if (events[static_cast<std::size_t>(e)].events & EPOLLIN) {
                const ssize_t r = ::recv(c.fd, buffer.data(), buffer.size(), 0);
                if (r <= 0) continue;
                c.in.insert(c.in.end(), buffer.begin(), buffer.begin() + r);
                std::size_t used = 0;
                while (c.in.size() - used >= 4) {
                    const auto length = load_le<std::uint32_t>(c.in.data() + used);
                    if (c.in.size() - used < 4 + length) break;
                    const auto src = load_le<std::uint64_t>(c.in.data() + used + 4);
                    const std::uint32_t m = c.received;
                    const std::size_t payload = length - 8;
                    if (src != c.partner || payload != payload_bytes_of(m)) {
                        ++c.corrupt;
                    } else {
                        for (std::size_t k = 0; k < payload; ++k)
                            if (c.in[used + 12 + k] != payload_byte(src, m, k)) {
                                ++c.corrupt;
                                break;
                            }
                    }
                    ++c.received;
                    if (c.received == messages_each) ++done;
                    used += 4 + length;
                }
                c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(used));
            }
        }
    }
    ::close(ep);

    std::uint64_t corrupt = 0, short_clients = 0;
    for (const auto& c : clients) {
        corrupt += c.corrupt;
        if (c.received != messages_each) ++short_clients;
    }
    CHECK(corrupt == 0);
    CHECK(short_clients == 0);
    CHECK(dir.dropped.load() == 0);
    CHECK(dir.delivered_local + dir.delivered_cross == std::uint64_t{client_count} * messages_each);
    // SO_REUSEPORT spread the connections, and some partners landed on the other shard.
    CHECK(rt->counters(0).accepts.get() > 0);
    CHECK(rt->counters(1).accepts.get() > 0);
    CHECK(rt->counters(0).accepts.get() + rt->counters(1).accepts.get() == client_count);
    CHECK(dir.delivered_cross.load() > 0);
    CHECK(rt->counters(0).messages_received.get() + rt->counters(1).messages_received.get() ==
          dir.delivered_cross.load());
    MESSAGE("ring full (backpressure) " << rt->counters(0).ring_full.get() + rt->counters(1).ring_full.get());
    MESSAGE("local " << dir.delivered_local.load() << ", cross-shard " << dir.delivered_cross.load()
                     << ", wake-ups " << rt->counters(0).wakeups_sent.get() + rt->counters(1).wakeups_sent.get());

    for (auto& c : clients) ::close(c.fd);
    REQUIRE(wait_until([&] { return dir.closed.load() == client_count; }, std::chrono::seconds(10)));
    // on_closed runs when a close begins; the slot is free once its cancelled ops complete.
    CHECK(wait_until([&] { return rt->counters(0).conns_open.get() + rt->counters(1).conns_open.get() == 0; },
                     std::chrono::seconds(5)));
    rt->request_stop();
    rt->wait();
}

TEST_CASE("runtime: a client that never reads is closed by the write timeout; others carry on") {
    directory dir;
    auto cfg = test_config(1);
    cfg.shard_defaults.default_write_timeout_ns = 300'000'000;  // 300 ms
    auto rt = start_or_skip(std::move(cfg), dir);
    const socket_address server = rt->bound_addresses().front();

    // The stuck client has a tiny receive buffer and never reads.
    const int stuck = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int small = 4096;
    setsockopt(stuck, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    REQUIRE(::connect(stuck, reinterpret_cast<const sockaddr*>(&server.storage), server.length) == 0);
    const int sender = connect_to(server);
    const int healthy = connect_to(server);
    const int healthy_peer = connect_to(server);
    auto hello = [](int fd, std::uint64_t id) {
        std::vector<std::uint8_t> b;
        put_le64(b, id);
        REQUIRE(::send(fd, b.data(), b.size(), MSG_NOSIGNAL) == 8);
    };
    hello(stuck, 1);
    hello(sender, 2);
    hello(healthy, 3);
    hello(healthy_peer, 4);
    REQUIRE(wait_until([&] {
        std::lock_guard lock(dir.mutex);
        return dir.by_id.size() == 4;
    }, std::chrono::seconds(5)));

    // Flood the stuck client with 8 MiB; its socket buffers fill and the send never completes.
    std::thread flood([&] {
        std::vector<std::uint8_t> frame;
        put_le32(frame, 8 + 60000);
        put_le64(frame, 1);
        frame.resize(frame.size() + 60000, 0xab);
        for (int i = 0; i < 140; ++i)
            if (::send(sender, frame.data(), frame.size(), MSG_NOSIGNAL) <= 0) break;
    });
    REQUIRE(wait_until([&] { return dir.closed_write_timeout.load() == 1; }, std::chrono::seconds(10)));
    flood.join();

    // Meanwhile the healthy pair still talks.
    std::vector<std::uint8_t> frame;
    put_le32(frame, 8 + 5);
    put_le64(frame, 4);
    for (char ch : std::string_view("hello")) frame.push_back(static_cast<std::uint8_t>(ch));
    REQUIRE(::send(healthy, frame.data(), frame.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(frame.size()));
    std::uint8_t reply[17] = {};
    std::size_t got = 0;
    pollfd p{healthy_peer, POLLIN, 0};
    while (got < sizeof reply && ::poll(&p, 1, 5000) == 1) {
        const ssize_t r = ::recv(healthy_peer, reply + got, sizeof reply - got, 0);
        if (r <= 0) break;
        got += static_cast<std::size_t>(r);
    }
    REQUIRE(got == sizeof reply);
    CHECK(load_le<std::uint64_t>(reply + 4) == 3);
    CHECK(std::memcmp(reply + 12, "hello", 5) == 0);
    CHECK(rt->counters(0).closes[static_cast<std::size_t>(close_cause::write_timeout)].get() == 1);

    for (int fd : {stuck, sender, healthy, healthy_peer}) ::close(fd);
    rt->request_stop();
    rt->wait();
}

TEST_CASE("runtime: stop with connections open closes them all and joins") {
    directory dir;
    auto rt = start_or_skip(test_config(2), dir);
    const socket_address server = rt->bound_addresses().front();
    std::vector<int> fds;
    for (int i = 0; i < 50; ++i) fds.push_back(connect_to(server));
    REQUIRE(wait_until([&] { return rt->counters(0).accepts.get() + rt->counters(1).accepts.get() == 50; },
                       std::chrono::seconds(5)));
    rt->request_stop();
    rt->wait();
    CHECK(dir.closed.load() == 50);
    CHECK(rt->counters(0).closes[static_cast<std::size_t>(close_cause::shutdown)].get() +
              rt->counters(1).closes[static_cast<std::size_t>(close_cause::shutdown)].get() ==
          50);
    // Every client sees the server close: EOF (or a reset), never a hang.
    for (int fd : fds) {
        pollfd p{fd, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 2000) == 1);
        char byte;
        CHECK(::recv(fd, &byte, 1, 0) <= 0);
        ::close(fd);
    }
    // New connections are refused once the listeners are gone.
    const int late = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(::connect(late, reinterpret_cast<const sockaddr*>(&server.storage), server.length) != 0);
    ::close(late);
}

TEST_CASE("runtime: a port in use is a clear start-up error") {
    directory dir;
    auto first = start_or_skip(test_config(1), dir);
    auto cfg = test_config(1);
    cfg.listen = first->bound_addresses();
    // Another process's socket bound without SO_REUSEPORT would collide too; here the first
    // runtime's listeners are SO_REUSEPORT, so collide with a plain socket of ours instead.
    const int blocker = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in any{};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(blocker, reinterpret_cast<sockaddr*>(&any), sizeof any) == 0);
    REQUIRE(::listen(blocker, 1) == 0);
    socklen_t len = sizeof any;
    getsockname(blocker, reinterpret_cast<sockaddr*>(&any), &len);
    cfg.listen.front().set_port(ntohs(any.sin_port));
    auto second = runtime::start(std::move(cfg),
                                 [&dir](shard& sh) { return std::make_unique<relay_service>(sh, dir); },
                                 nullptr);
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().find("address already in use") != std::string::npos);
    ::close(blocker);
}

namespace {

// Connects out from its shard to each target on its first loop turn, asks to write before the
// connect has completed (the runtime must hold the send back), sends a greeting, and counts
// what comes back.
struct connector_state {
    std::atomic<int> connected{0};
    std::atomic<int> failed{0};
    std::atomic<int> failed_errno{0};
    std::atomic<int> echoed_bytes{0};
    std::atomic<int> closed{0};
};

class connector_service final : public service {
public:
    connector_service(shard& sh, connector_state& st, std::vector<socket_address> targets)
        : _shard(sh), _st(st), _targets(std::move(targets)) {}
    bool on_turn_end() noexcept override {
        for (const auto& to : _targets) {
            auto conn = _shard.connect(to.storage, to.length);
            if (conn) _shard.want_write(*conn);
            else _st.failed++;
        }
        _targets.clear();
        return false;
    }
    void on_accept(conn_id, const sockaddr_storage&) noexcept override {}
    void on_connect(conn_id, int error) noexcept override {
        if (error == 0) {
            _st.connected++;
        } else {
            _st.failed++;
            _st.failed_errno = error;
        }
    }
    std::size_t on_data(conn_id, std::span<const std::uint8_t> b) noexcept override {
        _st.echoed_bytes += static_cast<int>(b.size());
        return b.size();
    }
    std::size_t on_writable(conn_id, std::span<std::uint8_t> out) noexcept override {
        std::memcpy(out.data(), "greetings", 9);
        return 9;
    }
    void on_timer(conn_id, std::uint8_t) noexcept override {}
    void on_closed(conn_id, close_cause) noexcept override { _st.closed++; }
    void on_message(const message&) noexcept override {}

private:
    shard& _shard;
    connector_state& _st;
    std::vector<socket_address> _targets;
};

}  // namespace

TEST_CASE("runtime: IPv6 listener, and outgoing connections to a live and to a closed port") {
    // The peer: a plain echo listener on [::1] (skip where the host has no IPv6 loopback).
    const int listener = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in6 a6{};
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;
    if (listener < 0 || ::bind(listener, reinterpret_cast<sockaddr*>(&a6), sizeof a6) != 0)
        derp::test::skip("no IPv6 loopback on this host");
    REQUIRE(::listen(listener, 8) == 0);
    socklen_t len = sizeof a6;
    getsockname(listener, reinterpret_cast<sockaddr*>(&a6), &len);
    socket_address live;
    std::memcpy(&live.storage, &a6, sizeof a6);
    live.length = sizeof a6;
    std::thread echo([listener] {
        const int c = ::accept(listener, nullptr, nullptr);
        char buf[64];
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n > 0) ::send(c, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL);
        ::close(c);
    });
    // A port with nothing listening: bind and close a socket to find one.
    socket_address dead = parse_listen_address("127.0.0.1:0").value().front();
    {
        const int probe = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ::bind(probe, reinterpret_cast<const sockaddr*>(&dead.storage), dead.length);
        socklen_t dl = sizeof dead.storage;
        getsockname(probe, reinterpret_cast<sockaddr*>(&dead.storage), &dl);
        ::close(probe);
    }

    connector_state st;
    runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.listen = parse_listen_address("[::1]:0").value();
    cfg.shard_defaults.conn_slots = 64;
    auto started = runtime::start(
        cfg, [&](shard& sh) { return std::make_unique<connector_service>(sh, st, std::vector{live, dead}); },
        nullptr);
    if (!started && derp::test::is_missing_io_uring(started.error())) derp::test::skip(started.error());
    REQUIRE(started.has_value());
    auto rt = std::move(started).value();
    CHECK(rt->bound_addresses().front().to_string().rfind("[::1]:", 0) == 0);

    REQUIRE(wait_until([&] { return st.echoed_bytes.load() == 9 && st.failed.load() == 1; },
                       std::chrono::seconds(5)));
    CHECK(st.connected.load() == 1);
    CHECK(st.failed_errno.load() == ECONNREFUSED);
    echo.join();
    // The echo peer closed after answering; the refused one closed at once.
    REQUIRE(wait_until([&] { return st.closed.load() == 2; }, std::chrono::seconds(5)));

    // The IPv6 listener accepts too.
    const int direct = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const auto& bound = rt->bound_addresses().front();
    REQUIRE(::connect(direct, reinterpret_cast<const sockaddr*>(&bound.storage), bound.length) == 0);
    REQUIRE(wait_until([&] { return rt->counters(0).accepts.get() == 1; }, std::chrono::seconds(5)));
    ::close(direct);
    rt->request_stop();
    rt->wait();
    ::close(listener);
}
