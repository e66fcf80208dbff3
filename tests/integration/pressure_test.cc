// derpd under pressure (issue 16): the per-client receive rate limit (-rate-config, spec 2.12)
// against an unpaced sender, its SIGHUP reload, the mesh exemption and -advertise-rate-limit; and
// the bound on the messages a shard keeps for another shard's full ring (-cross-shard-backlog),
// hit by stopping one shard thread with ptrace. Real derpd, real sockets on loopback.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "core/frame.hh"
#include "crypto/box.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/mesh_region.hh"
#include "tests/support/skip.hh"
#include "tests/support/tls_socket.hh"

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr std::size_t packet_bytes = 1000;
constexpr double burst_floor = 65568;          // derper raises every burst to 64 KiB + 32
constexpr double recv_buffer_slack = 16384;    // one receive buffer, and float rounding

double seconds_since(clock_type::time_point t0, clock_type::time_point t) {
    return std::chrono::duration<double>(t - t0).count();
}

void write_file(const std::filesystem::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    REQUIRE(out.good());
}

std::string varz(const derpd_process& server) { return http_get_body("127.0.0.1", server.admin_port(), "/debug/varz"); }
double metric(const derpd_process& server, std::string_view name,
              const std::vector<std::pair<std::string, std::string>>& labels = {}) {
    return varz_sum(varz(server), name, labels).value_or(-1);
}

// An unpaced sender: SendPacket frames of packet_bytes to `to`, one frame per write, as fast as
// the socket takes them, until stopped (or the connection fails).
class flood {
public:
    flood(derp_client& from, const node_key& to) : _thread([this, &from, to] {
        const bytes packet(packet_bytes, 0x5a);
        while (!_stop.load()) {
            try {
                from.send_packet(to, packet);
            } catch (const std::exception&) {
                return;  // a write that stalls past the client's 5 s deadline ends the flood
            }
            _sent.fetch_add(packet_bytes);
        }
    }) {}
    ~flood() { stop(); }
    void stop() {
        _stop = true;
        if (_thread.joinable()) _thread.join();
    }
    std::uint64_t sent() const { return _sent.load(); }

private:
    std::atomic<bool> _stop{false};
    std::atomic<std::uint64_t> _sent{0};
    std::thread _thread;
};

// Reads RecvPackets on `c` and keeps (time read, packet bytes so far) samples.
class sink {
public:
    explicit sink(derp_client& c) : _thread([this, &c] {
        while (!_stop.load()) {
            if (c.conn().quiet_for(50ms)) continue;
            const frame_read r = c.next(5000ms);
            if (r.status != io_status::ok) return;
            if (r.f.type != static_cast<std::uint8_t>(frame_type::recv_packet)) continue;
            const auto view = decode_recv_packet(r.f.payload);
            if (!view) continue;
            const std::uint64_t total = _bytes.fetch_add(view->packet.size()) + view->packet.size();
            std::lock_guard lock(_mutex);
            _samples.emplace_back(clock_type::now(), total);
        }
    }) {}
    ~sink() { stop(); }
    void stop() {
        _stop = true;
        if (_thread.joinable()) _thread.join();
    }
    std::uint64_t bytes_read() const { return _bytes.load(); }
    std::vector<std::pair<clock_type::time_point, std::uint64_t>> samples() {
        std::lock_guard lock(_mutex);
        return _samples;
    }

private:
    std::atomic<bool> _stop{false};
    std::atomic<std::uint64_t> _bytes{0};
    std::mutex _mutex;
    std::vector<std::pair<clock_type::time_point, std::uint64_t>> _samples;
    std::thread _thread;
};

// derpd with an admin listener on loopback (its varz read without touching the DERP
// listener). A function of its own: GCC 12 at -O2 reports the optional's string as maybe
// uninitialized when a test body assigns it in place (-Werror in CI).
derpd_options with_admin(int shards) {
    derpd_options o;
    o.shards = shards;
    o.admin_addr = "127.0.0.1:0";
    return o;
}

derpd_options rate_limited(const std::filesystem::path& file, std::vector<std::string> extra = {}) {
    derpd_options o = with_admin(1);  // everyone on one shard: the limited sender and the others share its loop
    o.extra_args = {"-rate-config", file.string()};
    for (auto& a : extra) o.extra_args.push_back(std::move(a));
    return o;
}

}  // namespace

namespace {

// The flood against the limit, over plain HTTP or TLS (userspace records here: the TLS layer
// holds decrypted input of its own while the reading waits).
void flood_against_limit(bool over_tls) {
    const auto file = std::filesystem::temp_directory_path() / ("derpd-rate-" + std::to_string(::getpid()));
    constexpr double rate = 100'000;  // bytes per second; burst left to derper's floor
    write_file(file, R"({"PerClientRateLimitBytesPerSec": 100000})");
    derpd_options o = rate_limited(file);
    o.tls = over_tls;
    derpd_process server(o);
    std::filesystem::remove(file);
    CHECK(metric(server, "derp_rate_limit_per_client_bytes_per_second") == rate);
    CHECK(metric(server, "derp_rate_limit_per_client_burst_bytes") == burst_floor);

    client_options co;
    if (over_tls) co.tls = insecure_client_context();
    derp_client receiver = derp_client::connect(server.port(), server.server_public(), co);
    derp_client c = derp_client::connect(server.port(), server.server_public(), co);
    derp_client d = derp_client::connect(server.port(), server.server_public(), co);
    // The well-behaved pair: 40 round trips of small packets, each within the client's usual
    // deadline; first alone (the baseline of the figures printed below), then beside the flood.
    const bytes ping(64, 0x11);
    const auto round_trips = [&] {
        std::vector<double> rtt_ms;
        for (int i = 0; i < 40; ++i) {
            const auto start = clock_type::now();
            c.send_packet(d.key(), ping);
            expect_payload(d, c.key(), ping, 5000ms);
            d.send_packet(c.key(), ping);
            expect_payload(c, d.key(), ping, 5000ms);
            rtt_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - start).count());
            std::this_thread::sleep_for(50ms);
        }
        std::sort(rtt_ms.begin(), rtt_ms.end());
        return rtt_ms;
    };
    const std::vector<double> alone_ms = round_trips();
    // Taken before the sender connects: its bucket (full, at its registration) starts later.
    const auto t0 = clock_type::now();
    derp_client abuser = derp_client::connect(server.port(), server.server_public(), co);
    sink received(receiver);
    flood sender(abuser, receiver.key());
    const std::vector<double> rtt_ms = round_trips();
    std::this_thread::sleep_for(500ms);
    sender.stop();
    received.stop();
    const auto samples = received.samples();
    REQUIRE(!samples.empty());
    // Certain by the bucket's arithmetic: every frame pays at least its packet's bytes, and the
    // bucket never held more than burst + rate x (time since it was made).
    for (const auto& [t, total] : samples) {
        const double bound = rate * seconds_since(t0, t) + burst_floor + recv_buffer_slack;
        REQUIRE_MESSAGE(static_cast<double>(total) <= bound,
                        total << " bytes delivered after " << seconds_since(t0, t) << " s; bucket allows " << bound);
    }
    const double waited = metric(server, "derp_rate_limit_per_client_waited");
    CHECK(waited >= 1);
    MESSAGE("flood offered " << sender.sent() << " bytes, " << samples.back().second << " delivered in "
                             << seconds_since(t0, samples.back().first) << " s (bucket: " << rate
                             << " B/s); frames that waited " << waited << "; pair's round trip median "
                             << rtt_ms[rtt_ms.size() / 2] << " ms (alone: " << alone_ms[alone_ms.size() / 2]
                             << " ms), p90 " << rtt_ms[rtt_ms.size() * 9 / 10] << " ms (alone: "
                             << alone_ms[alone_ms.size() * 9 / 10] << " ms)");
    CHECK(server.count_log("input") == 0);  // nobody closed for leaving input unread
}

}  // namespace

TEST_CASE("rate limit: an unpaced sender is held to its bucket while a pair beside it keeps its round trips") {
    flood_against_limit(false);
}

TEST_CASE("rate limit: the same over TLS") {
    flood_against_limit(true);
}

TEST_CASE("rate limit: SIGHUP re-reads the file; a bad one keeps the limit in force; 0 lifts it") {
    const auto file = std::filesystem::temp_directory_path() / ("derpd-rate-hup-" + std::to_string(::getpid()));
    write_file(file, R"({"PerClientRateLimitBytesPerSec": 100000, "PerClientRateBurstBytes": 70000})");
    derpd_process server(rate_limited(file));
    derp_client receiver = derp_client::connect(server.port(), server.server_public());
    derp_client abuser = derp_client::connect(server.port(), server.server_public());
    sink received(receiver);
    flood sender(abuser, receiver.key());
    wait_until([&] { return metric(server, "derp_rate_limit_per_client_waited") >= 1; }, 10s,
               "the flood to wait for tokens");

    // A malformed file: logged, the old limit stays (and keeps holding the flood back).
    write_file(file, R"({"PerClientRateLimitBytesPerSec": "fast"})");
    REQUIRE(::kill(server.pid(), SIGHUP) == 0);
    REQUIRE(server.wait_for_log("rate config reload (SIGHUP) failed, keeping the current limit", 5000ms));
    CHECK(server.count_log("PerClientRateLimitBytesPerSec must be a whole number") == 1);
    CHECK(metric(server, "derp_rate_limit_per_client_bytes_per_second") == 100'000);
    CHECK(metric(server, "derp_rate_limit_per_client_burst_bytes") == 70'000);
    const double waited_before = metric(server, "derp_rate_limit_per_client_waited");
    wait_until([&] { return metric(server, "derp_rate_limit_per_client_waited") > waited_before; }, 10s,
               "the old limit to keep holding the flood back");

    // Rate 0: the limit is lifted for every connection, the waiting one included; nothing waits.
    write_file(file, R"({"PerClientRateLimitBytesPerSec": 0})");
    REQUIRE(::kill(server.pid(), SIGHUP) == 0);
    REQUIRE(server.wait_for_log("rate limit 0 bytes/sec applied to", 5000ms));
    const double waited_lifted = metric(server, "derp_rate_limit_per_client_waited");
    const std::uint64_t read_lifted = received.bytes_read();
    wait_until([&] { return received.bytes_read() > read_lifted + 4 * 1024 * 1024; }, 20s,
               "4 MiB more to flow without a limit");
    CHECK(metric(server, "derp_rate_limit_per_client_waited") == waited_lifted);
    CHECK(metric(server, "derp_rate_limit_per_client_bytes_per_second") == 0);

    // And back: the flood waits again, under the new numbers.
    write_file(file, R"({"PerClientRateLimitBytesPerSec": 200000})");
    REQUIRE(::kill(server.pid(), SIGHUP) == 0);
    REQUIRE(server.wait_for_log("rate limit 200000 bytes/sec applied to", 5000ms));
    wait_until([&] { return metric(server, "derp_rate_limit_per_client_waited") > waited_lifted; }, 10s,
               "the flood to wait again");
    CHECK(metric(server, "derp_rate_limit_per_client_bytes_per_second") == 200'000);
    CHECK(server.count_log("rate config applied: client-rate=200000 bytes/sec, client-burst=65568 bytes") == 1);
    sender.stop();
    received.stop();
    std::filesystem::remove(file);
}

TEST_CASE("rate limit: mesh peers are exempt, and only others are told the bucket (-advertise-rate-limit)") {
    const auto file = std::filesystem::temp_directory_path() / ("derpd-rate-mesh-" + std::to_string(::getpid()));
    write_file(file, R"({"PerClientRateLimitBytesPerSec": 50000})");
    derpd_options o = rate_limited(file, {"-advertise-rate-limit"});
    o.mesh_psk = std::string(fixture_mesh_psk_hex);
    derpd_process server(o);
    std::filesystem::remove(file);

    client_options plain;
    plain.server_info = R"({"version":2,"TokenBucketBytesPerSecond":50000,"TokenBucketBytesBurst":65568})";
    derp_client receiver = derp_client::connect(server.port(), server.server_public(), plain);
    client_options meshed;
    meshed.mesh_key = server.mesh_key();  // ServerInfo stays {"version":2}: nothing to obey
    derp_client peer = derp_client::connect(server.port(), server.server_public(), meshed);

    // 2 MB from the mesh peer: 40 times the bucket's rate and 30 times its burst, all read at
    // once, nothing waits.
    const double received_before = metric(server, "derp_packets_received");
    sink received(receiver);
    const bytes packet(packet_bytes, 0x33);
    constexpr int packets = 2000;
    for (int i = 0; i < packets; ++i) peer.send_packet(receiver.key(), packet);
    wait_until([&] { return metric(server, "derp_packets_received") >= received_before + packets; }, 20s,
               "derpd to read all the mesh peer's packets");
    CHECK(metric(server, "derp_rate_limit_per_client_waited") == 0);
    received.stop();
}

// ---- The cross-shard backlog -------------------------------------------------------------------

namespace {

// Stops one thread of a child process (ptrace interrupt) and lets it go again on destruction.
class stopped_thread {
public:
    stopped_thread(pid_t pid, std::string_view name) {
        for (const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
            std::ifstream comm(entry.path() / "comm");
            std::string text;
            std::getline(comm, text);
            if (text == name) _tid = std::stoi(entry.path().filename().string());
        }
        REQUIRE_MESSAGE(_tid > 0, "no thread named " << name);
        if (::ptrace(PTRACE_SEIZE, _tid, nullptr, nullptr) != 0) {
            skip(std::string("ptrace is not allowed here: ") + std::strerror(errno));
        }
        REQUIRE(::ptrace(PTRACE_INTERRUPT, _tid, nullptr, nullptr) == 0);
        int status = 0;
        REQUIRE(::waitpid(_tid, &status, __WALL) == _tid);
        REQUIRE(WIFSTOPPED(status));
    }
    ~stopped_thread() { resume(); }
    void resume() {
        if (_tid > 0) ::ptrace(PTRACE_DETACH, _tid, nullptr, nullptr);
        _tid = -1;
    }

private:
    pid_t _tid = -1;
};

}  // namespace

TEST_CASE("cross-shard backlog: a stalled shard fills it to the bound; what comes after is refused, counted, logged") {
    constexpr int bound = 100;
    constexpr int ring_capacity = 4096;  // ring::runtime_config::ring_capacity
    derpd_options o = with_admin(2);
    o.mesh_psk = std::string(fixture_mesh_psk_hex);
    o.extra_args = {"-cross-shard-backlog", std::to_string(bound)};
    derpd_process server(o);
    client_options meshed;
    meshed.mesh_key = server.mesh_key();
    derp_client peer = derp_client::connect(server.port(), server.server_public(), meshed);
    // The mesh peer's shard; the other one is stopped, so that nothing drains the ring to it.
    std::uint32_t home = 2;
    wait_until([&] {
        const std::string page = varz(server);
        for (std::uint32_t s = 0; s < 2; ++s)
            if (varz_sum(page, "derpd_shard_connections", {{"shard", std::to_string(s)}}).value_or(0) >= 1) home = s;
        return home < 2;
    }, 5s, "the mesh peer's connection to show in a shard");
    derp_client a = derp_client::connect(server.port(), server.server_public());
    derp_client b = derp_client::connect(server.port(), server.server_public());
    const bytes hello(32, 0x42);
    a.send_packet(b.key(), hello);
    expect_payload(b, a.key(), hello, 5000ms);

    constexpr int close_peers = ring_capacity + bound + 50;
    {
        stopped_thread other(server.pid(), "shard-" + std::to_string(1 - home));
        // Each ClosePeer is one message for the stopped shard: the ring takes 4096, the backlog
        // `bound`, and the rest are refused.
        const node_key nobody = public_key_of(generate_private_key());
        bytes frames;
        for (int i = 0; i < close_peers; ++i) {
            bytes f(close_peer_frame_bytes);
            encode_close_peer(f, nobody);
            frames.insert(frames.end(), f.begin(), f.end());
        }
        peer.send_raw(frames);
        wait_until([&] { return metric(server, "derpd_control_backlog_refused_total") >= close_peers - ring_capacity - bound; },
                   10s, "the refusals to be counted");
        std::this_thread::sleep_for(200ms);  // nothing more may come
        // Exactly that, or one or two more: the hello's transfer buffer may still be on its way
        // home through the same ring (a message the stopped shard had not taken yet).
        const double refused = metric(server, "derpd_control_backlog_refused_total");
        CHECK(refused >= close_peers - ring_capacity - bound);
        CHECK(refused <= close_peers - ring_capacity - bound + 2);
        CHECK(metric(server, "derpd_shard_cross_backlog", {{"shard", std::to_string(home)}}) == bound);

        // New clients meanwhile: those that land on the running shard are refused their
        // registration (closed without ServerInfo; the ServerKey queued in the same turn does
        // not go out either); those on the stopped shard wait unanswered. The kernel's SO_REUSEPORT hash decides
        // which is which: of 24, all on the stopped shard has a chance of 2^-24.
        const double refused_before = metric(server, "derpd_control_backlog_refused_total");
        client_options fast;
        fast.fast_start = true;
        std::vector<derp_client> newcomers;
        for (int i = 0; i < 24; ++i) newcomers.push_back(derp_client::begin(server.port(), server.server_public(), fast));
        int answered = 0;
        for (auto& n : newcomers) {
            if (n.conn().quiet_for(answered == 0 ? 3000ms : 300ms)) continue;  // on the stopped shard
            const auto closed = n.conn().wait_closed(5000ms);
            CHECK(closed.status != io_status::timeout);
            // Whatever came before the close holds no ServerInfo (type 3) frame.
            std::size_t at = 0;
            while (at + frame_header_bytes <= closed.data_before.size()) {
                CHECK(closed.data_before[at] != static_cast<std::uint8_t>(frame_type::server_info));
                const std::size_t length = (std::size_t{closed.data_before[at + 1]} << 24) |
                                           (std::size_t{closed.data_before[at + 2]} << 16) |
                                           (std::size_t{closed.data_before[at + 3]} << 8) | closed.data_before[at + 4];
                at += frame_header_bytes + length;
            }
            ++answered;
        }
        REQUIRE(answered >= 1);
        wait_until([&] { return metric(server, "derpd_control_backlog_refused_total") >= refused_before + answered; }, 5s,
                   "the refused registrations to be counted");
        CHECK(metric(server, "derpd_control_backlog_refused_total") == refused_before + answered);
        // (Logged only if the limiter allows: the ClosePeers above used its burst.)
        other.resume();
    }
    // The stalled shard catches up; the backlog empties; the clients never noticed.
    wait_until([&] { return metric(server, "derpd_shard_cross_backlog", {{"shard", std::to_string(home)}}) == 0; }, 10s,
               "the backlog to drain");
    const std::size_t logged = server.count_log("refused a ClosePeer") + server.count_log("refused a registration");
    CHECK(logged >= 1);
    CHECK(logged <= 15);  // rate-limited: a burst of 5, then one a second
    a.send_packet(b.key(), hello);
    expect_payload(b, a.key(), hello, 5000ms);
    b.send_packet(a.key(), hello);
    expect_payload(a, b.key(), hello, 5000ms);
    peer.send_ping(ping_data{1, 2, 3, 4, 5, 6, 7, 8});
    peer.expect([](const frame& f) { return f.type == static_cast<std::uint8_t>(frame_type::pong); }, "the mesh peer's pong");
}

// ---- Send buffers ------------------------------------------------------------------------------

TEST_CASE("send buffers: more stalled receivers than the shard's send pool holds do not stall a pair beside them") {
    // Each shard has 256 registered send buffers (server/main.cc). 300 receivers that never read,
    // with small socket buffers, each get more than their sockets hold. The write timeout is
    // far away (60 s), so only a free send buffer can let the healthy pair's packets out.
    constexpr int stalled = 300;
    derpd_options o = with_admin(1);
    // No TCP_USER_TIMEOUT either: the kernel would end a zero window after 15 s by itself.
    o.extra_args = {"-tcp-write-timeout", "60s", "-tcp-user-timeout", "0"};
    derpd_process server(o);
    derp_client h1 = derp_client::connect(server.port(), server.server_public());
    derp_client h2 = derp_client::connect(server.port(), server.server_public());
    derp_client sender = derp_client::connect(server.port(), server.server_public());
    client_options small;
    small.rcvbuf_bytes = 4096;
    std::vector<derp_client> receivers;
    for (int i = 0; i < stalled; ++i)
        receivers.push_back(derp_client::connect(server.port(), server.server_public(), small));

    const double partial_before = metric(server, "derpd_shard_send_partial_total");
    // Loopback sockets take megabytes before a write comes back short (the send buffer grows
    // up to tcp_wmem's maximum, 4 MiB here): 16 KB packets until every stalled receiver has had
    // a short write, or 6 MB each, more than its socket buffers can hold whatever happened.
    const bytes packet(16'000, 0x77);
    const double received_before = metric(server, "derp_packets_received");
    std::uint64_t packets_sent = 0;
    for (int round = 0; round < 375; ++round) {
        for (auto& r : receivers) sender.send_packet(r.key(), packet);
        packets_sent += stalled;
        if (round % 8 == 7 && metric(server, "derpd_shard_send_partial_total") >= partial_before + stalled) break;
    }
    // Then a few more each, so that every one of them has output waiting to be written into
    // its full socket (the send that takes, or would take, a send buffer).
    for (int round = 0; round < 4; ++round)
        for (auto& r : receivers) sender.send_packet(r.key(), packet);
    packets_sent += 4 * stalled;
    wait_until([&] { return metric(server, "derp_packets_received") >= received_before + static_cast<double>(packets_sent); },
               30s, "derpd to read everything sent to the stalled receivers");
    wait_until([&] { return metric(server, "derp_packets_received") >= received_before + static_cast<double>(packets_sent); }, 1s,
               "derpd to have read everything", [&] {
                   const std::string page = varz(server);
                   std::string out;
                   for (const char* name : {"derpd_shard_send_partial_total", "derpd_shard_send_pool_exhausted_total",
                                            "derpd_shard_send_buffers_in_use", "derp_packets_sent", "derp_packets_received"})
                       out += std::string(name) + " " + std::to_string(varz_sum(page, name).value_or(-1)) + "\n";
                   return out;
               });
    MESSAGE("send pool exhausted " << metric(server, "derpd_shard_send_pool_exhausted_total") << " time(s); buffers in use "
                                   << metric(server, "derpd_shard_send_buffers_in_use"));

    const bytes ping(64, 0x12);
    for (int i = 0; i < 5; ++i) {
        h1.send_packet(h2.key(), ping);
        expect_payload(h2, h1.key(), ping, 10'000ms);
        h2.send_packet(h1.key(), ping);
        expect_payload(h1, h2.key(), ping, 10'000ms);
    }
    // No stalled receiver was closed meanwhile: the pair did not get out by a write timeout
    // freeing a buffer.
    CHECK(metric(server, "derp_sclient_write_timeouts") == 0);
    CHECK(metric(server, "derpd_shard_connections") == stalled + 3);
}
