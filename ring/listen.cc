// Listener creation and address parsing (see listen.hh).
#include "ring/listen.hh"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

namespace derp::ring {

std::uint16_t socket_address::port() const noexcept {
    if (family() == AF_INET)
        return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
}

void socket_address::set_port(std::uint16_t port) noexcept {
    if (family() == AF_INET)
        reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(port);
    else
        reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(port);
}

bool socket_address::is_loopback() const noexcept {
    if (family() == AF_INET)
        return (ntohl(reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr.s_addr) >> 24) == 127;
    const auto* a6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    if (IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr) && a6->sin6_addr.s6_addr[12] == 127;
}

std::string socket_address::to_string() const {
    char text[INET6_ADDRSTRLEN] = {};
    if (family() == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, text,
                  sizeof text);
        return fmt::format("{}:{}", text, port());
    }
    if (family() == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, text,
                  sizeof text);
        return fmt::format("[{}]:{}", text, port());
    }
    return "unknown";
}

namespace {

socket_address make_v4(const in_addr& address, std::uint16_t port) {
    socket_address out;
    auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
    sin->sin_family = AF_INET;
    sin->sin_addr = address;
    sin->sin_port = htons(port);
    out.length = sizeof(sockaddr_in);
    return out;
}

socket_address make_v6(const in6_addr& address, std::uint16_t port) {
    socket_address out;
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = address;
    sin6->sin6_port = htons(port);
    out.length = sizeof(sockaddr_in6);
    return out;
}

result<void, std::string> set_int_option(int fd, int level, int name, int value,
                                         std::string_view what) {
    if (setsockopt(fd, level, name, &value, sizeof value) != 0)
        return unexpected(fmt::format("setsockopt {}: {}", what, std::strerror(errno)));
    return {};
}

}  // namespace

result<std::vector<socket_address>, std::string> parse_listen_address(std::string_view text) {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
        return unexpected(fmt::format("listen address \"{}\": missing port (want host:port or :port)", text));
    std::string_view host = text.substr(0, colon);
    const std::string_view port_text = text.substr(colon + 1);
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || ptr != port_text.data() + port_text.size() ||
        port > 65535)
        return unexpected(fmt::format("listen address \"{}\": bad port \"{}\"", text, port_text));
    const auto port16 = static_cast<std::uint16_t>(port);
    if (host.empty()) return std::vector<socket_address>{make_v6(in6addr_any, port16)};
    if (host == "localhost") {
        in_addr v4{};
        inet_pton(AF_INET, "127.0.0.1", &v4);
        return std::vector<socket_address>{make_v4(v4, port16), make_v6(in6addr_loopback, port16)};
    }
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        const std::string literal(host.substr(1, host.size() - 2));
        in6_addr v6{};
        if (inet_pton(AF_INET6, literal.c_str(), &v6) != 1)
            return unexpected(fmt::format("listen address \"{}\": bad IPv6 address", text));
        return std::vector<socket_address>{make_v6(v6, port16)};
    }
    const std::string literal(host);
    in_addr v4{};
    if (inet_pton(AF_INET, literal.c_str(), &v4) == 1)
        return std::vector<socket_address>{make_v4(v4, port16)};
    return unexpected(fmt::format(
        "listen address \"{}\": host must be an IP address, [IPv6], localhost or empty", text));
}

result<std::vector<int>, std::string> open_tcp_listeners(socket_address& address,
                                                        std::uint32_t count,
                                                        const tcp_listen_options& options) {
    std::vector<int> fds;
    auto fail = [&fds](std::string message) -> result<std::vector<int>, std::string> {
        for (int fd : fds) ::close(fd);
        return unexpected(std::move(message));
    };
    // SO_REUSEPORT would let a second derpd (same user) bind the same port and silently take
    // half the connections. A plain socket, without SO_REUSEPORT, cannot join an existing
    // group: if it cannot bind, the port is taken, and we say so as derper would.
    if (address.port() != 0 && !options.join_existing) {
        const int probe = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
        if (probe >= 0) {
            const int one = 1;
            setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // TIME_WAIT is fine
            if (address.family() == AF_INET6) {
                const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
                const int v6only = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? 0 : 1;
                setsockopt(probe, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
            }
            const bool in_use =
                ::bind(probe, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0 &&
                errno == EADDRINUSE;
            ::close(probe);
            if (in_use)
                return unexpected(fmt::format("listen on {}: address already in use (is another "
                                              "derpd or derper running? choose another port with -a, or "
                                              "start beside a running derpd with -takeover)",
                                              address.to_string()));
        }
    }
    for (std::uint32_t i = 0; i < count; ++i) {
        const int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) {
            if (errno == EAFNOSUPPORT)
                return fail(fmt::format("listen on {}: this host has no {} support", address.to_string(),
                                        address.family() == AF_INET6 ? "IPv6" : "IPv4"));
            return fail(fmt::format("socket: {}", std::strerror(errno)));
        }
        fds.push_back(fd);
        const auto ms = [](std::int64_t ns) { return static_cast<int>(ns / 1'000'000); };
        const auto secs = [](std::int64_t ns) { return static_cast<int>(ns / 1'000'000'000); };
        result<void, std::string> r;
        if (r = set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"); !r) return fail(r.error());
        if (r = set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"); !r) return fail(r.error());
        if (r = set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY"); !r) return fail(r.error());
        if (address.family() == AF_INET6) {
            // A wildcard listener serves IPv4 too (as Go's ":port" does); a literal does not.
            const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
            const int v6only = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? 0 : 1;
            if (r = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, v6only, "IPV6_V6ONLY"); !r)
                return fail(r.error());
        }
        if (options.user_timeout_ns > 0) {
            if (r = set_int_option(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, ms(options.user_timeout_ns),
                                   "TCP_USER_TIMEOUT");
                !r)
                return fail(r.error());
        }
        if (options.keepalive_idle_ns > 0) {
            if (r = set_int_option(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE"); !r) return fail(r.error());
            if (r = set_int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE,
                                   std::max(1, secs(options.keepalive_idle_ns)), "TCP_KEEPIDLE");
                !r)
                return fail(r.error());
            if (r = set_int_option(fd, IPPROTO_TCP, TCP_KEEPINTVL,
                                   std::max(1, secs(options.keepalive_interval_ns)), "TCP_KEEPINTVL");
                !r)
                return fail(r.error());
            if (r = set_int_option(fd, IPPROTO_TCP, TCP_KEEPCNT, options.keepalive_probes,
                                   "TCP_KEEPCNT");
                !r)
                return fail(r.error());
        }
        if (::bind(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
            const int err = errno;
            if (err == EADDRINUSE)
                return fail(fmt::format("listen on {}: address already in use (is another derpd or "
                                        "derper running? choose another port with -a)",
                                        address.to_string()));
            if (err == EACCES)
                return fail(fmt::format("listen on {}: permission denied (ports below 1024 need root "
                                        "or CAP_NET_BIND_SERVICE, e.g. AmbientCapabilities= in the "
                                        "systemd unit)",
                                        address.to_string()));
            if (err == EADDRNOTAVAIL)
                return fail(fmt::format("listen on {}: no such local address on this host",
                                        address.to_string()));
            return fail(fmt::format("listen on {}: {}", address.to_string(), std::strerror(err)));
        }
        if (::listen(fd, options.backlog) != 0)
            return fail(fmt::format("listen on {}: {}", address.to_string(), std::strerror(errno)));
        if (i == 0 && address.port() == 0) {
            socket_address bound;
            bound.length = sizeof bound.storage;
            if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound.storage), &bound.length) != 0)
                return fail(fmt::format("getsockname: {}", std::strerror(errno)));
            address.set_port(bound.port());
        }
    }
    return fds;
}

result<int, std::string> open_udp_socket(socket_address& address, bool join_existing) {
    // As for TCP: a plain socket cannot join a SO_REUSEPORT group, so its failing bind says the
    // port is held (by anyone, derpd included) before our own socket joins silently.
    const auto v6only_for = [&address] {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
        return address.family() == AF_INET6 && !IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? 1 : 0;
    };
    if (address.port() != 0 && !join_existing) {
        const int probe = ::socket(address.family(), SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP);
        if (probe >= 0) {
            const int v6only = v6only_for();
            if (address.family() == AF_INET6) setsockopt(probe, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
            const bool in_use =
                ::bind(probe, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0 && errno == EADDRINUSE;
            ::close(probe);
            if (in_use)
                return unexpected(fmt::format("STUN on udp {}: address already in use (another STUN server or "
                                              "derper? choose another -stun-port, or -stun=false; beside a running "
                                              "derpd, -takeover)",
                                              address.to_string()));
        }
    }
    const int fd = ::socket(address.family(), SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_UDP);
    if (fd < 0) return unexpected(fmt::format("UDP socket for {}: {}", address.to_string(), std::strerror(errno)));
    if (address.family() == AF_INET6) {
        if (auto r = set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, v6only_for(), "IPV6_V6ONLY"); !r) {
            ::close(fd);
            return unexpected(r.error());
        }
    }
    if (auto r = set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"); !r) {
        ::close(fd);
        return unexpected(r.error());
    }
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
        const int err = errno;
        ::close(fd);
        if (err == EADDRINUSE)
            return unexpected(fmt::format("STUN on udp {}: address already in use (another STUN server or "
                                          "derper? choose another -stun-port, or -stun=false)",
                                          address.to_string()));
        if (err == EACCES)
            return unexpected(fmt::format("STUN on udp {}: permission denied (ports below 1024 need "
                                          "CAP_NET_BIND_SERVICE)",
                                          address.to_string()));
        return unexpected(fmt::format("STUN on udp {}: {}", address.to_string(), std::strerror(err)));
    }
    if (address.port() == 0) {
        socket_address bound;
        bound.length = sizeof bound.storage;
        getsockname(fd, reinterpret_cast<sockaddr*>(&bound.storage), &bound.length);
        address.set_port(bound.port());
    }
    return fd;
}

std::uint64_t raise_open_files_limit() noexcept {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 1024;
    if (limit.rlim_cur < limit.rlim_max) {
        rlimit raised = limit;
        raised.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
    }
    return limit.rlim_cur;
}

}  // namespace derp::ring
