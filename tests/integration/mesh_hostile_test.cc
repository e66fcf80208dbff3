// Hostile mesh peers (issue 12): a derpd node whose -mesh-with lists a listener that accepts TCP
// and never answers, one that answers garbage, and a TLS server whose self-signed certificate
// does not verify. Each must be retried (logged, counted, dialled again), while two clients on the
// node keep relaying packets the whole time with none lost and none held up for seconds.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/mesh_region.hh"

namespace {

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// A TCP server on ip:<kernel's port> that misbehaves in one way, on its own thread. Each
// connection is served until the peer closes it; nothing it does waits on the node under test.
class hostile_peer {
public:
    enum class kind : std::uint8_t {
        silent,   // accepts, never reads or writes
        garbage,  // writes bytes that are neither HTTP nor TLS, and more for whatever it reads
        bad_tls,  // a TLS server whose certificate is self-signed, not from the region's CA
    };

    hostile_peer(kind k, const std::string& ip, const std::filesystem::path& dir) : _kind(k), _ip(ip) {
        _listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = 0;
        ::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
        if (::bind(_listener, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
            ::listen(_listener, 64) != 0)
            throw std::runtime_error("hostile peer on " + ip + ": " + std::strerror(errno));
        socklen_t len = sizeof addr;
        ::getsockname(_listener, reinterpret_cast<sockaddr*>(&addr), &len);
        _port = ntohs(addr.sin_port);
        if (k == kind::bad_tls) {
            const auto cert = dir / (ip + "-self-signed.crt");
            const auto key = dir / (ip + "-self-signed.key");
            if (auto r = tls::write_self_signed(ip, cert.string(), key.string()); !r) throw std::runtime_error(r.error());
            auto ctx = tls::context::make_server({ip, cert.string(), key.string(), {}});
            if (!ctx) throw std::runtime_error(ctx.error());
            _tls = ctx.value();
        }
        _thread = std::thread([this] { run(); });
    }
    ~hostile_peer() {
        _stop = true;
        _thread.join();
        for (auto& entry : _conns) ::close(entry.first);
        ::close(_listener);
    }
    hostile_peer(const hostile_peer&) = delete;
    hostile_peer& operator=(const hostile_peer&) = delete;

    std::string entry() const { return _ip + ":" + std::to_string(_port); }
    const std::string& ip() const noexcept { return _ip; }
    std::size_t accepted() const noexcept { return _accepted.load(); }

private:
    struct peer_conn {
        std::unique_ptr<tls::session> session;
    };

    static void write_all(int fd, std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n <= 0) return;  // a full or broken socket: the garbage need not all arrive
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
    }

    static std::string garbage() {
        std::string out(1024, '\0');
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>((i * 167 + 13) & 0xff);
        return out;
    }

    void run() {
        while (!_stop) {
            std::vector<pollfd> fds{{_listener, POLLIN, 0}};
            if (_kind != kind::silent)
                for (const auto& [fd, c] : _conns) fds.push_back({fd, POLLIN, 0});
            if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
            if (fds[0].revents & POLLIN) {
                const int fd = ::accept4(_listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd >= 0) {
                    ++_accepted;
                    peer_conn c;
                    if (_kind == kind::bad_tls) c.session = std::make_unique<tls::session>(_tls, false);
                    if (_kind == kind::garbage) write_all(fd, garbage());
                    _conns.emplace(fd, std::move(c));
                }
            }
            for (std::size_t i = 1; i < fds.size(); ++i)
                if (fds[i].revents != 0) serve(fds[i].fd);
        }
    }

    // Input on one connection: answered as the kind says; closed when the peer has gone.
    void serve(int fd) {
        char buf[16384];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        bool close = n <= 0;
        if (!close && _kind == kind::garbage) write_all(fd, garbage());
        if (!close && _kind == kind::bad_tls) {
            std::string plain, out;
            const auto st = _conns[fd].session->feed(
                {reinterpret_cast<const std::uint8_t*>(buf), static_cast<std::size_t>(n)}, plain, out);
            write_all(fd, out);
            close = st == tls::status::failed || st == tls::status::closed;
        }
        if (close) {
            ::close(fd);
            _conns.erase(fd);
        }
    }

    kind _kind;
    std::string _ip;
    int _listener = -1;
    std::uint16_t _port = 0;
    std::shared_ptr<tls::context> _tls;
    std::map<int, peer_conn> _conns;
    std::atomic<bool> _stop{false};
    std::atomic<std::size_t> _accepted{0};
    std::thread _thread;
};

}  // namespace

TEST_SUITE("integration") {

TEST_CASE("hostile mesh peers are retried and counted while local relaying carries on") {
    const std::filesystem::path scratch = std::filesystem::temp_directory_path() / ("derpd-hostile-" +
                                                                                     std::to_string(::getpid()));
    std::filesystem::create_directories(scratch);
    hostile_peer silent(hostile_peer::kind::silent, "127.0.0.5", scratch);
    hostile_peer garbage(hostile_peer::kind::garbage, "127.0.0.6", scratch);
    hostile_peer bad_tls(hostile_peer::kind::bad_tls, "127.0.0.7", scratch);
    const std::vector<const hostile_peer*> peers = {&silent, &garbage, &bad_tls};

    mesh_region region({{"127.0.0.1", mesh_psk_for(1), {"127.0.0.1"}, {silent.entry(), garbage.entry(), bad_tls.entry()}}});
    region.start();
    derp_client a = region.connect(0);
    derp_client b = region.connect(0);

    // Relay from a to b, one packet at a time, until every hostile peer has been dialled, failed
    // and been counted at least twice (and at least 100 packets went through).
    // A loop blocked by a peer (a blocking connect or TLS handshake) would hold packets for the
    // 10 s dial deadline; half of that separates a stall from a slow machine.
    constexpr auto packet_bound = 5000ms;  // no packet may take longer than this
    constexpr auto overall = 180s;
    const auto start = clock_type::now();
    std::size_t sent = 0;
    std::chrono::microseconds slowest{0};
    auto retried_twice = [&] {
        const std::string page = region.varz(0);
        for (const hostile_peer* p : peers) {
            if (p->accepted() < 2) return false;
            if (varz_sum(page, "derpd_mesh_failures_total", peer_label(p->ip())).value_or(0) < 2) return false;
        }
        return true;
    };
    for (bool done = false; !done;) {
        bytes packet(200);
        for (std::size_t i = 0; i < packet.size(); ++i) packet[i] = static_cast<std::uint8_t>((sent * 7 + i) & 0xff);
        const auto t0 = clock_type::now();
        a.send_packet(b.key(), packet);
        expect_payload(b, a.key(), packet, packet_bound);  // throws: lost, or held up past the bound
        slowest = std::max(slowest, std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0));
        ++sent;
        if (sent % 20 == 0) done = sent >= 100 && retried_twice();
        REQUIRE_MESSAGE(clock_type::now() - start < overall,
                        "the hostile peers were not all retried twice within " << overall.count() << " s\n"
                                                                              << region.varz(0) << region.logs(60));
        std::this_thread::sleep_for(10ms);  // pacing only: the verdict is per packet
    }
    MESSAGE(sent << " packets relayed while the hostile peers were retried; the slowest took " << slowest.count()
                 << " us");

    const std::string log = region.node(0).log_text();
    for (const hostile_peer* p : peers) {
        const std::string mention = "mesh " + p->ip();
        CHECK_MESSAGE(count_log_lines(log, mention, "retrying in") >= 2, "fewer than two \"" << mention
                                                                       << ": ... retrying in\" lines:\n"
                                                                       << region.node(0).log_tail(60));
        CHECK(region.metric(0, "derpd_mesh_peer_up", peer_label(p->ip())) == 0);
        MESSAGE(first_log_line(log, mention, "retrying in"));
        MESSAGE(p->entry() << ": dialled " << p->accepted() << " times, failures "
                           << region.metric(0, "derpd_mesh_failures_total", peer_label(p->ip())));
    }
    const std::string page = region.varz(0);
    MESSAGE("failure series above 0:\n" << [&] {
        std::string lines;
        std::size_t at = 0;
        while ((at = page.find("\nderpd_mesh_failures_total{", at)) != std::string::npos) {
            const auto end = page.find('\n', at + 1);
            if (page.compare(end - 2, 2, " 0") != 0) lines += page.substr(at + 1, end - at);
            at = end;
        }
        return lines;
    }());
    std::error_code ec;
    std::filesystem::remove_all(scratch, ec);
}

}  // TEST_SUITE
