// Node addresses and a deadline-bounded TCP connect for derpprobe (see probe_net.hh).
#include "probe/probe_net.hh"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "core/flags.hh"

namespace derp::probe {

bool parse_ip_literal(const std::string& text, int family, ring::socket_address& out, std::uint16_t port) {
    out = ring::socket_address{};
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
        if (inet_pton(AF_INET, text.c_str(), &sin->sin_addr) != 1) return false;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        out.length = sizeof(sockaddr_in);
        return true;
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    if (inet_pton(AF_INET6, text.c_str(), &sin6->sin6_addr) != 1) return false;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    out.length = sizeof(sockaddr_in6);
    return true;
}

bool is_ip_literal(const std::string& text) {
    ring::socket_address scratch;
    return parse_ip_literal(text, AF_INET, scratch, 0) || parse_ip_literal(text, AF_INET6, scratch, 0);
}

result<std::vector<ring::socket_address>, std::string> node_addresses(const derp_node& node, std::uint16_t port) {
    std::vector<ring::socket_address> out;
    for (const auto& [family, field] : {std::pair{AF_INET, &node.ipv4}, std::pair{AF_INET6, &node.ipv6}}) {
        ring::socket_address address;
        if (parse_ip_literal(*field, family, address, port)) out.push_back(address);
    }
    // Go races the DNS answer for an empty family against the given address; a probe dials what
    // the map names and asks DNS only when it names no address at all (no lookup delays, and
    // no resolver needed, for the usual map that gives IPv4).
    if (!out.empty()) return out;
    std::string dns_problem;
    for (const auto& [family, field] : {std::pair{AF_INET, &node.ipv4}, std::pair{AF_INET6, &node.ipv6}}) {
        if (!field->empty()) continue;  // "none" or any other non-address: this family is off
        addrinfo hints{};
        hints.ai_family = family;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* found = nullptr;
        const std::string port_text = std::to_string(port);
        if (const int err = getaddrinfo(node.host_name.c_str(), port_text.c_str(), &hints, &found); err != 0) {
            // One family without records is normal (no AAAA); only report when nothing resolves.
            dns_problem = fmt::format("resolving {}: {}", node.host_name, gai_strerror(err));
            continue;
        }
        for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
            ring::socket_address resolved;
            std::memcpy(&resolved.storage, a->ai_addr, a->ai_addrlen);
            resolved.length = a->ai_addrlen;
            out.push_back(resolved);
        }
        freeaddrinfo(found);
    }
    if (!out.empty()) return out;
    if (!dns_problem.empty()) return unexpected(dns_problem);
    return unexpected(fmt::format("node {} has no usable address (IPv4 \"{}\", IPv6 \"{}\")", node.name, node.ipv4,
                                  node.ipv6));
}

bool wait_fd(int fd, bool want_write, const run_context& ctx) {
    while (!ctx.over()) {
        pollfd p{fd, static_cast<short>(want_write ? POLLOUT : POLLIN), 0};
        const int n = ::poll(&p, 1, ctx.poll_slice_ms());
        if (n > 0) return true;
        if (n < 0 && errno != EINTR) return false;
    }
    return false;
}

result<int, std::string> connect_tcp(const std::vector<ring::socket_address>& addresses, const run_context& ctx) {
    std::string problem = "no address to connect to";
    for (const ring::socket_address& address : addresses) {
        const int fd = ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) {
            problem = fmt::format("socket: {}", std::strerror(errno));
            continue;
        }
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int err = 0;
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                if (!wait_fd(fd, true, ctx)) {
                    ::close(fd);
                    if (ctx.stopping()) return unexpected(std::string("stopped"));
                    return unexpected(fmt::format("connect {}: timed out", address.to_string()));
                }
                socklen_t length = sizeof err;
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &length);
            }
        }
        if (err == 0) return fd;
        ::close(fd);
        problem = fmt::format("connect {}: {}", address.to_string(), std::strerror(err));
    }
    return unexpected(problem);
}

std::string format_latency(std::int64_t duration_ns) {
    return format_go_duration(duration_ns / 1000 * 1000);
}

}  // namespace derp::probe
