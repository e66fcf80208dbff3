// Relay benchmark (suite 'bench'): starts a derpd process pinned to cpu 0, drives it from this
// process's client runtime pinned to cpu 1 with pairs of DERP clients (each sender sends to its
// receiver), and reports packets/s and Gbit/s delivered, loss, and the server's CPU time per
// delivered packet read from /proc/<pid>/stat. CPU per packet is the figure that shows the
// relay's own cost: on 2 cores one client core cannot offer more than a few Gbit/s.
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench/bench_util.hh"

#include "bench/derp_client.hh"
#include "core/flags.hh"
#include "crypto/box.hh"
#include "ring/runtime.hh"

using namespace derp;
using clock_type = std::chrono::steady_clock;

namespace {

// ---- The server under test, as its own process. ----
struct server_process {
    pid_t pid = -1;
    ring::socket_address address;
    std::string dir;

    bool start(const std::string& binary, std::int64_t shards, int cpu) {
        char tmpl[] = "/tmp/relay-bench-XXXXXX";
        dir = mkdtemp(tmpl);
        const std::string log = dir + "/derpd.log";
        pid = fork();
        if (pid == 0) {
            if (cpu >= 0) {
                cpu_set_t set;
                CPU_ZERO(&set);
                CPU_SET(static_cast<unsigned>(cpu), &set);
                sched_setaffinity(0, sizeof set, &set);
            }
            FILE* out = std::freopen(log.c_str(), "w", stderr);
            (void)out;
            const std::string shards_text = std::to_string(shards);
            const std::string key = dir + "/derper.key";
            execl(binary.c_str(), binary.c_str(), "-a", "127.0.0.1:0", "-c", key.c_str(), "-stun=false",
                  "-shards", shards_text.c_str(), static_cast<char*>(nullptr));
            _exit(127);
        }
        // Wait until it listens; the port comes from the kernel's listener table.
        for (int i = 0; i < 200; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(25));
            if (const auto port = listening_port(); port != 0) {
                address = ring::parse_listen_address(fmt::format("127.0.0.1:{}", port)).value().front();
                return true;
            }
        }
        return false;
    }

    // The TCP port the child listens on, from /proc/net/tcp and the child's socket inodes.
    std::uint16_t listening_port() const {
        std::vector<std::string> inodes;
        const std::string fd_dir = fmt::format("/proc/{}/fd", pid);
        for (int fd = 0; fd < 64; ++fd) {
            char target[256] = {};
            const auto n = readlink(fmt::format("{}/{}", fd_dir, fd).c_str(), target, sizeof target - 1);
            if (n > 0 && std::strncmp(target, "socket:[", 8) == 0)
                inodes.emplace_back(target + 8, static_cast<std::size_t>(n) - 9);
        }
        std::ifstream tcp("/proc/net/tcp");
        std::string line;
        std::getline(tcp, line);
        while (std::getline(tcp, line)) {
            std::istringstream in(line);
            std::string sl, local, remote, st, queues, tr, retr, uid, timeout, inode;
            in >> sl >> local >> remote >> st >> queues >> tr >> retr >> uid >> timeout >> inode;
            if (st != "0A") continue;  // LISTEN
            if (std::find(inodes.begin(), inodes.end(), inode) == inodes.end()) continue;
            return static_cast<std::uint16_t>(std::stoul(local.substr(local.find(':') + 1), nullptr, 16));
        }
        return 0;
    }

    double cpu_seconds() const {
        std::ifstream stat(fmt::format("/proc/{}/stat", pid));
        std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        const auto close = text.rfind(')');
        std::istringstream in(text.substr(close + 2));
        std::string field;
        unsigned long utime = 0, stime = 0;
        for (int i = 3; i <= 15; ++i) {
            in >> field;
            if (i == 14) utime = std::stoul(field);
            if (i == 15) stime = std::stoul(field);
        }
        return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
    }

    void stop() {
        if (pid <= 0) return;
        kill(pid, SIGTERM);
        int status = 0;
        waitpid(pid, &status, 0);
        pid = -1;
        if (std::getenv("RELAY_BENCH_KEEP_LOGS") != nullptr) {
            fmt::print(stderr, "derpd log: {}/derpd.log\n", dir);
            return;
        }
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

// ---- The load: pairs of clients on one client shard. ----
struct run_stats {
    std::atomic<std::uint64_t> ready{0};
    std::atomic<std::uint64_t> sent{0};
    std::atomic<std::uint64_t> received{0};
    std::atomic<std::uint64_t> failures{0};
    std::atomic<bool> sending{false};
};

class pair_load final : public client::handler {
public:
    static inline std::uint64_t pacing_interval_ns = 250'000;  // -pace

    pair_load(run_stats& stats, std::size_t packet_bytes, double rate_pps, const ring::socket_address& server,
              std::uint32_t pairs)
        : _stats(stats), _packet_bytes(packet_bytes), _rate_pps(rate_pps), _server(server), _pairs(pairs) {}

    void attach(client::client_pool& pool) { _pool = &pool; }

    void on_ready(ring::conn_id, const node_key&) noexcept override { _stats.ready++; }
    void on_packet(ring::conn_id, const node_key&, std::span<const std::uint8_t>) noexcept override {
        _received_local++;
        if ((_received_local & 63) == 0) _stats.received.store(_received_local, std::memory_order_relaxed);
    }
    void on_closed(ring::conn_id, client::client_failure f) noexcept override {
        if (_started && f != client::client_failure::closed) _stats.failures++;
        else if (_started && _stats.sending.load()) _stats.failures++;  // server hung up on us
    }
    std::size_t fill(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override {
        auto it = std::find_if(_senders.begin(), _senders.end(), [&](const sender& s) { return s.conn == conn; });
        if (it == _senders.end() || !_stats.sending.load(std::memory_order_relaxed)) return 0;
        const std::size_t frame = send_packet_frame_bytes(_packet_bytes);
        std::size_t n = 0;
        std::uint64_t budget = _rate_pps > 0 ? static_cast<std::uint64_t>(it->tokens) : ~0ull;
        while (n + frame <= out.size() && budget > 0) {
            encode_frame_header(out.subspan(n), frame_type::send_packet, key_bytes + _packet_bytes);
            std::memcpy(out.data() + n + frame_header_bytes, it->dst.bytes().data(), key_bytes);
            std::uint8_t* payload = out.data() + n + frame_header_bytes + key_bytes;
            std::memset(payload, 0, _packet_bytes);
            std::memcpy(payload, &_sent_local, std::min<std::size_t>(8, _packet_bytes));
            ++_sent_local;
            n += frame;
            --budget;
            if (_rate_pps > 0) it->tokens -= 1;
        }
        _stats.sent.store(_sent_local, std::memory_order_relaxed);
        if (_rate_pps <= 0 || it->tokens >= 1) _pool->want_send(conn);  // more is waiting
        return n;
    }
    bool on_turn() noexcept override {
        if (!_started) start();
        const bool sending = _stats.sending.load(std::memory_order_relaxed);
        const std::uint64_t now = ring::monotonic_ns();
        if (sending && !_was_sending && !_senders.empty()) {
            _last_refill_ns = now;
            _next_tick_ns = now;
            if (_rate_pps <= 0)
                for (auto& s : _senders) _pool->want_send(s.conn);
        }
        _was_sending = sending;
        _stats.received.store(_received_local, std::memory_order_relaxed);
        if (sending && _rate_pps > 0 && !_senders.empty()) {
            if (now >= _next_tick_ns) {
                pace(now);
                _next_tick_ns = now + pacing_interval_ns;
            }
            _pool->wake_at(_next_tick_ns);  // sleep until the next pacing tick
        }
        return false;
    }

    // Paced sending: every pacing interval (-pace, 250 us) each sender may send what it
    // accumulated since, as a client host carrying many flows does, rather than one packet per
    // write. The loop sleeps in between, so the load generator spends its core on sending and
    // receiving. Bursts larger than a client's 32-deep queue would measure the burst, not the
    // relay.
    void pace(std::uint64_t now) noexcept {
        const double add = static_cast<double>(now - _last_refill_ns) / 1e9 * _rate_pps /
                           static_cast<double>(_senders.size());
        _last_refill_ns = now;
        for (auto& s : _senders) {
            // At most four intervals' worth: a sender that could not keep up does not burst.
            s.tokens = std::min(s.tokens + add, std::max(1.0, 4 * _rate_pps / static_cast<double>(_senders.size()) *
                                                                  static_cast<double>(pacing_interval_ns) / 1e9));
            if (s.tokens >= 1) _pool->want_send(s.conn);
        }
    }

private:
    struct sender {
        ring::conn_id conn;
        node_key dst;
        double tokens = 0;
    };
    void start() {
        _started = true;
        for (std::uint32_t i = 0; i < _pairs; ++i) {
            client::client_options tx, rx;
            tx.key = generate_private_key();
            rx.key = generate_private_key();
            auto rx_conn = _pool->dial(_server, rx);
            auto tx_conn = _pool->dial(_server, tx);
            if (!rx_conn || !tx_conn) {
                _stats.failures++;
                continue;
            }
            _senders.push_back({*tx_conn, public_key_of(rx.key), 0});
        }
    }

    run_stats& _stats;
    std::size_t _packet_bytes;
    double _rate_pps;
    ring::socket_address _server;
    std::uint32_t _pairs;
    client::client_pool* _pool = nullptr;
    std::vector<sender> _senders;
    bool _started = false;
    bool _was_sending = false;
    std::uint64_t _last_refill_ns = 0;
    std::uint64_t _next_tick_ns = 0;
    std::uint64_t _sent_local = 0;
    std::uint64_t _received_local = 0;
};

struct round_result {
    double delivered_pps = 0;
    double delivered_gbps = 0;
    double loss = 0;
    double server_cpu_us_per_packet = 0;
    double server_cpu_share = 0;  // server CPU seconds per wall second
    double client_cpu_share = 0;
    std::uint64_t failures = 0;
};

double own_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

round_result run_round(const std::string& derpd, std::int64_t shards, std::uint32_t pairs,
                       std::size_t packet_bytes, double rate_pps, double duration_s) {
    round_result r;
    server_process server;
    // One shard: the server alone on cpu 0, the load on cpu 1. Two shards: the server needs
    // both cores, and shares them with the load.
    if (!server.start(derpd, shards, shards == 1 ? 0 : -1)) {
        fmt::print(stderr, "derpd did not start; see its log in {}\n", server.dir);
        r.failures = 1;
        return r;
    }
    run_stats stats;
    pair_load load(stats, packet_bytes, rate_pps, server.address, pairs);
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.cpu_offset = 1;
    cfg.shard_defaults.conn_slots = 2 * pairs + 16;
    cfg.shard_defaults.send_buffer_count = 256;
    cfg.shard_defaults.send_buffer_bytes = 65536;
    auto rt = ring::runtime::start(cfg, [&load](ring::shard& sh) {
        auto pool = std::make_unique<client::client_pool>(sh, load);
        load.attach(*pool);
        return pool;
    }, nullptr);
    if (!rt) {
        fmt::print(stderr, "client runtime: {}\n", rt.error());
        server.stop();
        r.failures = 1;
        return r;
    }
    const auto ready_deadline = clock_type::now() + std::chrono::seconds(10);
    while (stats.ready.load() < 2 * pairs && clock_type::now() < ready_deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (stats.ready.load() < 2 * pairs) {
        fmt::print(stderr, "only {} of {} clients finished the handshake\n", stats.ready.load(), 2 * pairs);
        r.failures = 1;
    }
    // Warm up, then measure.
    stats.sending = true;
    rt.value()->wake_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::uint64_t sent0 = stats.sent.load(), received0 = stats.received.load();
    const double server_cpu0 = server.cpu_seconds(), own_cpu0 = own_cpu_seconds();
    const auto t0 = clock_type::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(duration_s));
    const double elapsed = std::chrono::duration<double>(clock_type::now() - t0).count();
    const std::uint64_t sent1 = stats.sent.load(), received1 = stats.received.load();
    const double server_cpu = server.cpu_seconds() - server_cpu0, own_cpu = own_cpu_seconds() - own_cpu0;
    stats.sending = false;
    rt.value()->wake_all();
    // Loss over the window: what was sent in it and not delivered by the end of a short drain.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::uint64_t received_drained = stats.received.load();
    const double sent_window = static_cast<double>(sent1 - sent0);
    const double received_window = static_cast<double>(received1 - received0);
    const double lost = sent_window - static_cast<double>(received_drained - received0);
    r.delivered_pps = received_window / elapsed;
    r.delivered_gbps = r.delivered_pps * static_cast<double>(packet_bytes) * 8 / 1e9;
    r.loss = sent_window > 0 ? std::max(0.0, lost / sent_window) : 0;
    r.server_cpu_us_per_packet = received_window > 0 ? server_cpu * 1e6 / received_window : 0;
    r.server_cpu_share = server_cpu / elapsed;
    r.client_cpu_share = own_cpu / elapsed;
    r.failures += stats.failures.load();
    rt.value()->request_stop();
    rt.value()->wait();
    server.stop();
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    std::string derpd = "build/server/derpd";
    std::string sizes = "64,570,1400";
    std::string shard_list = "1,2";
    std::int64_t pairs = 4, rounds = 3, duration_ns = 2'000'000'000, rate = 0;
    flag_set flags("relay_bench");
    flags.add_string("derpd", &derpd, "path of the derpd binary to measure");
    flags.add_string("sizes", &sizes, "comma-separated packet sizes in bytes");
    flags.add_string("shards", &shard_list, "comma-separated derpd shard counts");
    flags.add_int("pairs", &pairs, "sender/receiver client pairs");
    flags.add_int("rounds", &rounds, "rounds per row (the median is reported)");
    flags.add_duration("duration", &duration_ns, "measured time per round");
    flags.add_int("rate", &rate, "offered packets/s over all senders (0 = as fast as possible)");
    std::int64_t pace_ns = 250'000;
    flags.add_duration("pace", &pace_ns, "pacing interval: each sender sends its accumulated packets this often");
    if (auto exit_status = derp::bench::parse_flags(flags, argc, argv)) return *exit_status;
    derp::bench::default_derpd_path(flags, derpd);
    if (!crypto_init()) return 1;
    if (pace_ns <= 0) {
        fmt::print(stderr, "-pace must be positive\n");
        return 2;
    }
    pair_load::pacing_interval_ns = static_cast<std::uint64_t>(pace_ns);
    ring::set_log_level(ring::log_level::warn);
    auto split = [](std::string_view text) {
        std::vector<std::int64_t> out;
        while (!text.empty()) {
            const auto comma = text.find(',');
            out.push_back(std::stoll(std::string(text.substr(0, comma))));
            text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
        }
        return out;
    };
    fmt::print("{:>6} {:>6} {:>6} {:>12} {:>9} {:>8} {:>14} {:>10} {:>10}\n", "shards", "bytes", "pairs",
               "pkts/s", "Gbit/s", "loss", "srv us/pkt", "srv cpu", "load cpu");
    bool failed = false;
    std::string json = "[";
    for (const auto shards : split(shard_list)) {
        for (const auto size : split(sizes)) {
            std::vector<double> pps, gbps, loss, cpu, srv_share, cli_share;
            std::uint64_t failures = 0;
            for (std::int64_t i = 0; i < rounds; ++i) {
                const auto r = run_round(derpd, shards, static_cast<std::uint32_t>(pairs),
                                         static_cast<std::size_t>(size), static_cast<double>(rate),
                                         static_cast<double>(duration_ns) / 1e9);
                pps.push_back(r.delivered_pps);
                gbps.push_back(r.delivered_gbps);
                loss.push_back(r.loss);
                cpu.push_back(r.server_cpu_us_per_packet);
                srv_share.push_back(r.server_cpu_share);
                cli_share.push_back(r.client_cpu_share);
                failures += r.failures;
            }
            failed = failed || failures > 0;
            fmt::print("{:>6} {:>6} {:>6} {:>12.0f} {:>9.3f} {:>7.2f}% {:>14.3f} {:>9.0f}% {:>9.0f}%{}\n", shards,
                       size, pairs, bench::median(pps), bench::median(gbps), bench::median(loss) * 100, bench::median(cpu),
                       bench::median(srv_share) * 100, bench::median(cli_share) * 100,
                       failures > 0 ? fmt::format("  ({} client failures)", failures) : "");
            json += fmt::format("{}{{\"shards\":{},\"bytes\":{},\"pairs\":{},\"delivered_pps\":{:.0f},"
                                "\"delivered_gbps\":{:.4f},\"loss_ratio\":{:.5f},\"server_cpu_us_per_packet\":{:.4f},"
                                "\"server_cpu_share\":{:.3f},\"load_cpu_share\":{:.3f}}}",
                                json.size() > 1 ? "," : "", shards, size, pairs, bench::median(pps), bench::median(gbps),
                                bench::median(loss), bench::median(cpu), bench::median(srv_share), bench::median(cli_share));
        }
    }
    fmt::print("{}]\n", json);
    return failed ? 1 : 0;
}
