// forwarder: the raw io_uring TCP forwarder (ring/forwarder.hh) as a program, the baseline that
// derpd's CPU per packet is compared with (issue 17, bench/per_packet_matrix.sh). It listens,
// pairs accepted connections in order (1st with 2nd, 3rd with 4th, ...) and copies bytes both
// ways. derpbench drives it with tcp:// URLs (its raw mode dials one connection at a time).
//   forwarder [--listen 127.0.0.1:0] [--cpu N] [--recv-buffers 512] [--recv-buffer-bytes 16384]
// Prints "forwarder: listening on ADDR" once ready; SIGUSR1 prints a report line, SIGTERM or
// SIGINT prints the last one and exits. Each report gives the process's own CPU time from
// /proc/self/stat (as derpbench --server-pid reads it from outside) and the loop's counters.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "bench/bench_util.hh"
#include "bench/proc_sample.hh"
#include "ring/forwarder.hh"
#include "ring/listen.hh"

namespace {

void report(const derp::ring::forwarder_counters& c, void*) {
    const derp::bench::cpu_times cpu = derp::bench::process_cpu_times(getpid());
    fmt::print("forwarder: cpu {:.3f} s (user {:.3f}, system {:.3f}); accepted {}, pairs {}, open {}, closed {}; "
               "recv {} ({} B), sends {} ({} B, {} short), no-buffer stops {}, dropped {} B; enters {}, cqes {}\n",
               cpu.total_s(), cpu.user_s, cpu.system_s, c.accepted, c.pairs, c.open, c.closed, c.recv_completions,
               c.recv_bytes, c.sends, c.send_bytes, c.short_sends, c.recv_no_buffers, c.dropped_bytes, c.enters, c.cqes);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    std::string listen = "127.0.0.1:0";
    std::int64_t cpu = -1, recv_buffers = 512, recv_buffer_bytes = 16384, slots = 4096;
    derp::flag_set flags("forwarder");
    flags.add_string("listen", &listen, "address to listen on (port 0: the kernel picks one; the line \"listening on\" names it)");
    flags.add_int("cpu", &cpu, "pin the forwarder to this core (-1: not pinned)");
    flags.add_int("recv-buffers", &recv_buffers, "provided receive buffers (a power of two, at most 32768): the bytes in flight at most");
    flags.add_int("recv-buffer-bytes", &recv_buffer_bytes, "bytes per receive buffer");
    flags.add_int("slots", &slots, "connections at most");
    if (auto exit_status = derp::bench::parse_flags(flags, argc, argv)) return *exit_status;
    if (recv_buffers < 1 || recv_buffers > 32768 || (recv_buffers & (recv_buffers - 1)) != 0)
        return std::fprintf(stderr, "forwarder: --recv-buffers must be a power of two, 1..32768\n"), 2;
    if (recv_buffer_bytes < 64 || recv_buffer_bytes > (1 << 20))
        return std::fprintf(stderr, "forwarder: --recv-buffer-bytes must be 64..1048576\n"), 2;
    if (slots < 2 || slots > (1 << 20)) return std::fprintf(stderr, "forwarder: --slots must be 2..1048576\n"), 2;
    auto addresses = derp::ring::parse_listen_address(listen);
    if (!addresses || addresses->empty())
        return std::fprintf(stderr, "forwarder: --listen: %s\n", addresses ? "no address" : addresses.error().c_str()), 2;
    derp::ring::socket_address address = addresses->front();
    derp::ring::raise_open_files_limit();  // one descriptor per connection, as derpd
    auto fds = derp::ring::open_tcp_listeners(address, 1, {});  // TCP_NODELAY on every accepted socket, as derpd
    if (!fds) return std::fprintf(stderr, "forwarder: %s\n", fds.error().c_str()), 1;

    // Signals arrive as reads on signalfds in the loop's ring: TERM/INT stop it, USR1 reports.
    sigset_t stop_set, report_set, all;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    sigemptyset(&report_set);
    sigaddset(&report_set, SIGUSR1);
    all = stop_set;
    sigaddset(&all, SIGUSR1);
    sigprocmask(SIG_BLOCK, &all, nullptr);
    signal(SIGPIPE, SIG_IGN);
    const int stop_fd = signalfd(-1, &stop_set, SFD_CLOEXEC);
    const int report_fd = signalfd(-1, &report_set, SFD_CLOEXEC);
    if (stop_fd < 0 || report_fd < 0) return std::perror("forwarder: signalfd"), 1;

    derp::ring::forwarder_config config;
    config.listen_fd = fds->front();
    config.stop_fd = stop_fd;
    config.report_fd = report_fd;
    config.cpu = static_cast<int>(cpu);
    config.recv_buffer_count = static_cast<std::uint32_t>(recv_buffers);
    config.recv_buffer_bytes = static_cast<std::uint32_t>(recv_buffer_bytes);
    config.conn_slots = static_cast<std::uint32_t>(slots);
    auto fwd = derp::ring::forwarder::create(config);
    if (!fwd) return std::fprintf(stderr, "forwarder: %s\n", fwd.error().c_str()), 1;
    fmt::print("forwarder: listening on {} (pid {}, cpu {}, io_uring {}, {} receive buffers of {} B)\n",
               address.to_string(), getpid(), cpu, fwd.value()->setup_note(), recv_buffers, recv_buffer_bytes);
    std::fflush(stdout);
    auto ran = fwd.value()->run(report, nullptr);
    report(fwd.value()->counters(), nullptr);
    if (!ran) return std::fprintf(stderr, "forwarder: %s\n", ran.error().c_str()), 1;
    return 0;
}
