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

#include "bench/pair_load.hh"
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

    bool start(const std::string& binary, std::int64_t shards, int cpu, bool tls) {
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
            const std::string certdir = dir + "/certs";
            if (tls)
                execl(binary.c_str(), binary.c_str(), "-a", "127.0.0.1:0", "-c", key.c_str(), "-stun=false",
                      "-shards", shards_text.c_str(), "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir",
                      certdir.c_str(), "-http-port", "-1", static_cast<char*>(nullptr));
            else
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
struct round_result {
    double delivered_pps = 0;
    double delivered_gbps = 0;
    double loss = 0;
    double server_cpu_us_per_packet = 0;
    double server_cpu_share = 0;  // server CPU seconds per wall second
    double client_cpu_share = 0;
    std::uint64_t failures = 0;
};

round_result run_round(const std::string& derpd, std::int64_t shards, std::uint32_t pairs,
                       std::size_t packet_bytes, double rate_pps, double duration_s, std::uint64_t pace_ns,
                       const std::shared_ptr<client::client_tls>& tls) {
    round_result r;
    server_process server;
    // One shard: the server alone on cpu 0, the load on cpu 1. Two shards: the server needs
    // both cores, and shares them with the load.
    if (!server.start(derpd, shards, shards == 1 ? 0 : -1, tls != nullptr)) {
        fmt::print(stderr, "derpd did not start; see its log in {}\n", server.dir);
        r.failures = 1;
        return r;
    }
    bench::pair_options options;
    options.pairs = pairs;
    options.packet_bytes = packet_bytes;
    options.rate_pps = rate_pps;
    options.pacing_interval_ns = pace_ns;
    options.duration_s = duration_s;
    options.server_pid = server.pid;
    options.tls = tls;
    const bench::pair_measurement m = bench::measure_pairs({server.address}, options);
    if (!m.error.empty()) fmt::print(stderr, "{}\n", m.error);
    r.delivered_pps = m.delivered_pps;
    r.delivered_gbps = m.delivered_gbps;
    r.loss = m.loss;
    r.server_cpu_us_per_packet = m.server_cpu_us_per_packet;
    r.server_cpu_share = m.server_cpu_share;
    r.client_cpu_share = m.client_cpu_share;
    r.failures = m.failures;
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
    std::string transports = "plain";
    flags.add_string("transport", &transports, "comma-separated: plain (HTTP) and/or tls (userspace records, or kTLS where the kernel has it)");
    flags.add_duration("pace", &pace_ns, "pacing interval: each sender sends its accumulated packets this often");
    if (auto exit_status = derp::bench::parse_flags(flags, argc, argv)) return *exit_status;
    derp::bench::default_derpd_path(flags, derpd);
    if (!crypto_init()) return 1;
    if (pace_ns <= 0) {
        fmt::print(stderr, "-pace must be positive\n");
        return 2;
    }
    ring::set_log_level(ring::log_level::warn);
    fmt::print("{:>9} {:>6} {:>6} {:>6} {:>12} {:>9} {:>8} {:>14} {:>10} {:>10}\n", "transport", "shards", "bytes", "pairs",
               "pkts/s", "Gbit/s", "loss", "srv us/pkt", "srv cpu", "load cpu");
    bool failed = false;
    std::string json = "[";
    for (const auto& transport : bench::comma_list(transports)) {
    std::shared_ptr<client::client_tls> tls;
    if (transport == "tls") {
        tls::context::client_options o;
        o.server_name = "127.0.0.1";
        o.verify = tls::context::verify_mode::insecure;
        auto setup = client::make_client_tls(o, 1);
        if (!setup) {
            fmt::print(stderr, "TLS client: {}\n", setup.error());
            return 1;
        }
        tls = setup.value();
    } else if (transport != "plain") {
        fmt::print(stderr, "-transport: want plain or tls, not {}\n", transport);
        return 2;
    }
    for (const auto shards : bench::comma_ints(shard_list)) {
        for (const auto size : bench::comma_ints(sizes)) {
            std::vector<double> pps, gbps, loss, cpu, srv_share, cli_share;
            std::uint64_t failures = 0;
            for (std::int64_t i = 0; i < rounds; ++i) {
                const auto r = run_round(derpd, shards, static_cast<std::uint32_t>(pairs),
                                         static_cast<std::size_t>(size), static_cast<double>(rate),
                                         static_cast<double>(duration_ns) / 1e9,
                                         static_cast<std::uint64_t>(pace_ns), tls);
                pps.push_back(r.delivered_pps);
                gbps.push_back(r.delivered_gbps);
                loss.push_back(r.loss);
                cpu.push_back(r.server_cpu_us_per_packet);
                srv_share.push_back(r.server_cpu_share);
                cli_share.push_back(r.client_cpu_share);
                failures += r.failures;
            }
            failed = failed || failures > 0;
            fmt::print("{:>9} {:>6} {:>6} {:>6} {:>12.0f} {:>9.3f} {:>7.2f}% {:>14.3f} {:>9.0f}% {:>9.0f}%{}\n", transport, shards,
                       size, pairs, bench::median(pps), bench::median(gbps), bench::median(loss) * 100, bench::median(cpu),
                       bench::median(srv_share) * 100, bench::median(cli_share) * 100,
                       failures > 0 ? fmt::format("  ({} client failures)", failures) : "");
            json += fmt::format("{}{{\"transport\":\"{}\",\"shards\":{},\"bytes\":{},\"pairs\":{},\"delivered_pps\":{:.0f},"
                                "\"delivered_gbps\":{:.4f},\"loss_ratio\":{:.5f},\"server_cpu_us_per_packet\":{:.4f},"
                                "\"server_cpu_share\":{:.3f},\"load_cpu_share\":{:.3f}}}",
                                json.size() > 1 ? "," : "", transport, shards, size, pairs, bench::median(pps), bench::median(gbps),
                                bench::median(loss), bench::median(cpu), bench::median(srv_share), bench::median(cli_share));
        }
    }
    }
    fmt::print("{}]\n", json);
    return failed ? 1 : 0;
}
