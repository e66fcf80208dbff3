// conn_flood: the hostile side of issue 16's benchmarks, bounded in count and time, loopback
// only. Two modes:
//   conn_flood flood PORT COUNT SECONDS   COUNT connection attempts (each closed as soon as it
//                                         is established or refused), at most 512 in flight,
//                                         stopping at SECONDS; prints attempts, connected, failed
//   conn_flood hold PORT COUNT SECONDS    COUNT silent connections (every other one sends one
//                                         byte a second: a slowloris), held for SECONDS
// The process's open-files cap (20,000 here) bounds what one instance can hold.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

int open_connection(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
        ::close(fd);
        return -1;
    }
    return fd;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: conn_flood flood|hold PORT COUNT SECONDS\n");
        return 2;
    }
    const std::string mode = argv[1];
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[2]));
    const long count = std::atol(argv[3]);
    const auto deadline = clock_type::now() + std::chrono::seconds(std::atol(argv[4]));
    rlimit nofile{};
    getrlimit(RLIMIT_NOFILE, &nofile);
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);

    if (mode == "flood") {
        long attempts = 0, connected = 0, failed = 0;
        std::vector<pollfd> in_flight;
        while ((attempts < count || !in_flight.empty()) && clock_type::now() < deadline) {
            while (attempts < count && in_flight.size() < 512) {
                const int fd = open_connection(port);
                ++attempts;
                if (fd < 0) {
                    ++failed;
                    continue;
                }
                in_flight.push_back({fd, POLLOUT, 0});
            }
            if (::poll(in_flight.data(), in_flight.size(), 100) < 0) break;
            for (std::size_t i = 0; i < in_flight.size();) {
                if (in_flight[i].revents == 0) {
                    ++i;
                    continue;
                }
                int error = 0;
                socklen_t length = sizeof error;
                ::getsockopt(in_flight[i].fd, SOL_SOCKET, SO_ERROR, &error, &length);
                (error == 0 ? connected : failed)++;
                ::close(in_flight[i].fd);
                in_flight[i] = in_flight.back();
                in_flight.pop_back();
            }
        }
        for (const auto& p : in_flight) ::close(p.fd);
        std::printf("attempts=%ld connected=%ld failed=%ld unfinished=%zu\n", attempts, connected, failed, in_flight.size());
        return 0;
    }
    if (mode == "hold") {
        std::vector<int> fds;
        for (long i = 0; i < count; ++i) {
            const int fd = open_connection(port);
            if (fd < 0) break;
            fds.push_back(fd);
        }
        std::printf("holding=%zu\n", fds.size());
        std::fflush(stdout);
        while (clock_type::now() < deadline) {
            ::sleep(1);
            for (std::size_t i = 0; i < fds.size(); i += 2) [[maybe_unused]] auto n = ::send(fds[i], "G", 1, MSG_NOSIGNAL);
        }
        long open = 0;
        for (int fd : fds) {
            char byte;
            const ssize_t r = ::recv(fd, &byte, 1, MSG_DONTWAIT);
            if (r < 0 && errno == EAGAIN) ++open;  // still open: derpd kept it
            ::close(fd);
        }
        std::printf("still_open=%ld of %zu\n", open, fds.size());
        return 0;
    }
    std::fprintf(stderr, "conn_flood: unknown mode %s\n", mode.c_str());
    return 2;
}
