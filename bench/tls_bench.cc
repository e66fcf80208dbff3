// TLS handshake benchmark (suite 'bench'): a derpd with -certmode manual (self-signed P-256
// certificate) pinned to cpu 0, and a one-shard client runtime on cpu 1 that keeps -concurrency
// TLS connections in flight, each closed as soon as its handshake completes. Reports handshakes
// per second and derpd's CPU time per handshake from /proc, hence how many handshakes one
// fully busy shard completes per second (the client, doing the same asymmetric crypto, is
// usually the limit on a 2-core machine, which is why the CPU figure is the one to quote).
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <openssl/ssl.h>

#include "bench/bench_util.hh"
#include "bench/pair_load.hh"
#include "core/flags.hh"
#include "crypto/box.hh"
#include "crypto/tls_layer.hh"
#include "ring/runtime.hh"

using namespace derp;

namespace {

struct derpd_child {
    pid_t pid = -1;
    std::uint16_t port = 0;
    std::string dir;

    bool start(const std::string& binary) {
        char tmpl[] = "/tmp/tls-bench-XXXXXX";
        dir = mkdtemp(tmpl);
        const std::string log = dir + "/derpd.log", key = dir + "/derper.key", certs = dir + "/certs";
        pid = fork();
        if (pid == 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(0, &set);
            sched_setaffinity(0, sizeof set, &set);
            FILE* out = std::freopen(log.c_str(), "w", stderr);
            (void)out;
            execl(binary.c_str(), binary.c_str(), "-a", "127.0.0.1:0", "-c", key.c_str(), "-stun=false", "-shards", "1",
                  "-certmode", "manual", "-hostname", "127.0.0.1", "-certdir", certs.c_str(), "-http-port", "-1",
                  static_cast<char*>(nullptr));
            _exit(127);
        }
        for (int i = 0; i < 200 && port == 0; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(25));
            std::ifstream in(log);
            std::string line;
            while (std::getline(in, line))
                if (const auto at = line.find("serving on 127.0.0.1:"); at != std::string::npos)
                    port = static_cast<std::uint16_t>(std::stoul(line.substr(at + 21)));
        }
        return port != 0;
    }
    void stop() {
        if (pid <= 0) return;
        kill(pid, SIGTERM);
        int status = 0;
        waitpid(pid, &status, 0);
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

// Keeps `concurrency` connections handshaking: each is closed when its handshake is done
// (on_connect after TLS) and replaced.
class churn final : public ring::service {
public:
    churn(ring::shard& sh, ring::socket_address server, std::uint32_t concurrency, std::atomic<std::uint64_t>& done,
          std::atomic<std::uint64_t>& failed)
        : _shard(sh), _server(server), _concurrency(concurrency), _done(done), _failed(failed) {}
    void on_accept(ring::conn_id conn, const sockaddr_storage&) noexcept override { _shard.close(conn); }
    void on_connect(ring::conn_id conn, int error) noexcept override {
        if (error == 0) {
            _done.fetch_add(1, std::memory_order_relaxed);
            _completed = true;
        }
        _shard.close(conn);
    }
    std::size_t on_data(ring::conn_id, std::span<const std::uint8_t> bytes) noexcept override { return bytes.size(); }
    std::size_t on_writable(ring::conn_id, std::span<std::uint8_t>) noexcept override { return 0; }
    void on_timer(ring::conn_id, std::uint8_t) noexcept override {}
    void on_closed(ring::conn_id, ring::close_cause) noexcept override {
        if (!_completed && !_stopping) _failed.fetch_add(1, std::memory_order_relaxed);
        _completed = false;
        --_open;
    }
    void on_message(const ring::message&) noexcept override {}
    bool on_turn_end() noexcept override {
        while (!_stopping && _open < _concurrency) {
            if (!_shard.connect(_server.storage, _server.length)) break;
            ++_open;
        }
        return false;
    }
    void on_stop() noexcept override { _stopping = true; }

private:
    ring::shard& _shard;
    ring::socket_address _server;
    std::uint32_t _concurrency;
    std::atomic<std::uint64_t>& _done;
    std::atomic<std::uint64_t>& _failed;
    std::uint32_t _open = 0;
    bool _completed = false;  // on_connect(0) then on_closed for the same connection, in order
    bool _stopping = false;
};

}  // namespace

int main(int argc, char** argv) {
    std::string derpd = "build/server/derpd";
    std::int64_t rounds = 3, duration_ns = 2'000'000'000, concurrency = 16;
    std::string versions = "1.3,1.2";
    flag_set flags("tls_bench");
    flags.add_string("derpd", &derpd, "path of the derpd binary to measure");
    flags.add_int("rounds", &rounds, "rounds per row (the median is reported)");
    flags.add_duration("duration", &duration_ns, "measured time per round");
    flags.add_int("concurrency", &concurrency, "handshakes in flight");
    flags.add_string("versions", &versions, "comma-separated TLS versions: 1.3, 1.2");
    if (auto exit_status = bench::parse_flags(flags, argc, argv)) return *exit_status;
    bench::default_derpd_path(flags, derpd);
    if (!crypto_init()) return 1;
    ring::set_log_level(ring::log_level::warn);
    fmt::print("{:>8} {:>12} {:>18} {:>22} {:>10}\n", "version", "handshakes/s", "srv us/handshake",
               "per busy shard (/s)", "failures");
    std::string json = "[";
    bool failed_any = false;
    for (const std::string& version : bench::comma_list(versions)) {
        std::vector<double> rates, cpu_us;
        std::uint64_t failures = 0;
        for (std::int64_t round = 0; round < rounds; ++round) {
            derpd_child child;
            if (!child.start(derpd)) {
                fmt::print(stderr, "derpd did not start; log in {}\n", child.dir);
                return 1;
            }
            tls::context::client_options o;
            o.server_name = "127.0.0.1";
            o.verify = tls::context::verify_mode::insecure;
            if (version == "1.2") o.max_version = TLS1_2_VERSION;
            auto ctx = tls::context::make_client(o);
            if (!ctx) {
                fmt::print(stderr, "{}\n", ctx.error());
                return 1;
            }
            auto contexts = std::make_shared<tls::context_slot>();
            contexts->current.store(ctx.value());
            tls::tls_counters counters;
            std::atomic<std::uint64_t> done{0}, failed{0};
            const auto server = ring::parse_listen_address(fmt::format("127.0.0.1:{}", child.port)).value().front();
            ring::runtime_config cfg;
            cfg.shard_count = 1;
            cfg.cpu_offset = 1;
            cfg.shard_defaults.conn_slots = static_cast<std::uint32_t>(concurrency) * 4 + 16;
            cfg.shard_defaults.send_buffer_count = 64;
            auto rt = ring::runtime::start(
                cfg,
                [&](ring::shard& sh) -> std::unique_ptr<ring::service> {
                    tls::tls_layer_config layer;
                    layer.client = true;
                    layer.contexts = contexts;
                    return std::make_unique<tls::tls_layer>(
                        sh, std::make_unique<churn>(sh, server, static_cast<std::uint32_t>(concurrency), done, failed),
                        layer, counters);
                },
                nullptr);
            if (!rt) {
                fmt::print(stderr, "client runtime: {}\n", rt.error());
                child.stop();
                return 1;
            }
            rt.value()->wake_all();
            std::this_thread::sleep_for(std::chrono::milliseconds(300));  // warm-up
            const std::uint64_t done0 = done.load();
            const double cpu0 = bench::process_cpu_seconds(child.pid);
            const auto t0 = std::chrono::steady_clock::now();
            std::this_thread::sleep_for(std::chrono::nanoseconds(duration_ns));
            const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const std::uint64_t handshakes = done.load() - done0;
            const double cpu = bench::process_cpu_seconds(child.pid) - cpu0;
            rt.value()->request_stop();
            rt.value()->wait();
            child.stop();
            rates.push_back(static_cast<double>(handshakes) / elapsed);
            cpu_us.push_back(handshakes > 0 ? cpu * 1e6 / static_cast<double>(handshakes) : 0);
            failures += failed.load();
        }
        const double per_shard = bench::median(cpu_us) > 0 ? 1e6 / bench::median(cpu_us) : 0;
        fmt::print("{:>8} {:>12.0f} {:>18.1f} {:>22.0f} {:>10}\n", version, bench::median(rates), bench::median(cpu_us),
                   per_shard, failures);
        json += fmt::format("{}{{\"version\":\"{}\",\"handshakes_per_s\":{:.0f},\"server_cpu_us_per_handshake\":{:.1f},"
                            "\"handshakes_per_busy_shard\":{:.0f},\"failures\":{}}}",
                            json.size() > 1 ? "," : "", version, bench::median(rates), bench::median(cpu_us), per_shard,
                            failures);
        failed_any = failed_any || failures > rates.size() * static_cast<std::size_t>(concurrency);
    }
    fmt::print("{}]\n", json);
    return failed_any ? 1 : 0;
}
