// STUN benchmark (suite 'bench'): Binding requests per second answered by derpd's STUN server
// on its admin core, against a plain UDP responder (recvmmsg/sendmmsg, no parsing) on the same
// core in the same run, both driven by the same closed-loop client on the other core: the ratio
// is what derpd's STUN path costs beyond the kernel's UDP path.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench/bench_util.hh"

#include "core/flags.hh"
#include "stun/codec.hh"

namespace {

using clock_type = std::chrono::steady_clock;

sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    return a;
}

std::uint16_t free_udp_port() {
    const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a = loopback(0);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

// Closed loop: keeps `window` requests outstanding, sent and received in batches; counts valid
// answers (right transaction id, a mapped address) per second.
double drive(std::uint16_t port, double duration_s, int window) {
    derp::bench::pin_this_thread(0);
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in to = loopback(port);
    ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to);
    const int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    std::vector<std::array<std::uint8_t, 40>> requests(static_cast<std::size_t>(window));
    for (int i = 0; i < window; ++i) {
        derp::stun::transaction_id txid{};
        std::memcpy(txid.data(), &i, sizeof i);
        derp::stun::encode_binding_request(requests[static_cast<std::size_t>(i)], txid,
                                           derp::stun::request_style::tailscale);
    }
    std::vector<mmsghdr> out(static_cast<std::size_t>(window)), in(64);
    std::vector<iovec> out_iov(static_cast<std::size_t>(window)), in_iov(64);
    std::vector<std::array<std::uint8_t, 128>> in_buf(64);
    for (int i = 0; i < window; ++i) {
        out_iov[static_cast<std::size_t>(i)] = {requests[static_cast<std::size_t>(i)].data(), 40};
        out[static_cast<std::size_t>(i)].msg_hdr = {};
        out[static_cast<std::size_t>(i)].msg_hdr.msg_iov = &out_iov[static_cast<std::size_t>(i)];
        out[static_cast<std::size_t>(i)].msg_hdr.msg_iovlen = 1;
    }
    for (std::size_t i = 0; i < in.size(); ++i) {
        in_iov[i] = {in_buf[i].data(), in_buf[i].size()};
        in[i].msg_hdr = {};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
    }
    sendmmsg(fd, out.data(), static_cast<unsigned>(window), 0);
    std::uint64_t answered = 0;
    const auto start = clock_type::now();
    while (std::chrono::duration<double>(clock_type::now() - start).count() < duration_s) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 20) != 1) {
            sendmmsg(fd, out.data(), static_cast<unsigned>(window), 0);  // refill after losses
            continue;
        }
        const int n = recvmmsg(fd, in.data(), static_cast<unsigned>(in.size()), MSG_DONTWAIT, nullptr);
        if (n <= 0) continue;
        answered += static_cast<std::uint64_t>(n);
        sendmmsg(fd, out.data(), static_cast<unsigned>(n), 0);  // one new request per answer
    }
    const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    ::close(fd);
    return static_cast<double>(answered) / elapsed;
}

// The baseline: answer every datagram with a 32-byte reply, no parsing, batched.
struct plain_responder {
    int fd = -1;
    std::uint16_t port = 0;
    std::atomic<bool> stop{false};
    std::thread thread;
    plain_responder() {
        fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_in a = loopback(0);
        ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
        socklen_t len = sizeof a;
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
        thread = std::thread([this] { run(); });
    }
    ~plain_responder() {
        stop = true;
        thread.join();
        ::close(fd);
    }
    void run() {
        derp::bench::pin_this_thread(1);
        std::vector<mmsghdr> msgs(64);
        std::vector<iovec> iov(64);
        std::vector<std::array<std::uint8_t, 128>> buf(64);
        std::vector<sockaddr_in> from(64);
        while (!stop) {
            for (std::size_t i = 0; i < msgs.size(); ++i) {
                iov[i] = {buf[i].data(), buf[i].size()};
                msgs[i].msg_hdr = {};
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name = &from[i];
                msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            }
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 20) != 1) continue;
            const int n = recvmmsg(fd, msgs.data(), static_cast<unsigned>(msgs.size()), MSG_DONTWAIT, nullptr);
            if (n <= 0) continue;
            for (int i = 0; i < n; ++i) iov[static_cast<std::size_t>(i)].iov_len = 32;
            sendmmsg(fd, msgs.data(), static_cast<unsigned>(n), 0);
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    std::string derpd = "build/server/derpd";
    std::int64_t rounds = 3, duration_ns = 2'000'000'000, window = 64;
    derp::flag_set flags("stun_bench");
    flags.add_string("derpd", &derpd, "path of the derpd binary to measure");
    flags.add_int("rounds", &rounds, "rounds (the median is reported)");
    flags.add_duration("duration", &duration_ns, "measured time per round");
    flags.add_int("window", &window, "requests kept outstanding");
    if (auto exit_status = derp::bench::parse_flags(flags, argc, argv)) return *exit_status;
    derp::bench::default_derpd_path(flags, derpd);
    const double duration_s = static_cast<double>(duration_ns) / 1e9;

    // derpd with one shard on cpu 0 and its admin thread (STUN) on cpu 1, the last core.
    const std::uint16_t stun_port = free_udp_port();
    const std::string dir = std::filesystem::temp_directory_path() / ("stun-bench-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const pid_t pid = fork();
    if (pid == 0) {
        FILE* log = std::freopen((dir + "/derpd.log").c_str(), "w", stderr);
        (void)log;
        const std::string port_text = std::to_string(stun_port), key = dir + "/derper.key";
        execl(derpd.c_str(), derpd.c_str(), "-a", "127.0.0.1:0", "-c", key.c_str(), "-shards", "1", "-stun-port",
              port_text.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));

    std::vector<double> derpd_rps, plain_rps, ratio;
    for (std::int64_t r = 0; r < rounds; ++r) {
        double a = 0, b = 0;
        if (r % 2 == 0) {
            a = drive(stun_port, duration_s, static_cast<int>(window));
            plain_responder plain;
            b = drive(plain.port, duration_s, static_cast<int>(window));
        } else {
            {
                plain_responder plain;
                b = drive(plain.port, duration_s, static_cast<int>(window));
            }
            a = drive(stun_port, duration_s, static_cast<int>(window));
        }
        derpd_rps.push_back(a);
        plain_rps.push_back(b);
        ratio.push_back(b > 0 ? a / b : 0);
    }
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    fmt::print("STUN Binding requests answered, window {}: derpd {:.0f}/s | plain UDP responder {:.0f}/s | ratio {:.2f}\n",
               window, derp::bench::median(derpd_rps), derp::bench::median(plain_rps), derp::bench::median(ratio));
    fmt::print("{{\"derpd_stun_rps\":{:.0f},\"plain_udp_rps\":{:.0f},\"ratio\":{:.3f}}}\n", derp::bench::median(derpd_rps),
               derp::bench::median(plain_rps), derp::bench::median(ratio));
    return derp::bench::median(derpd_rps) > 0 ? 0 : 1;
}
