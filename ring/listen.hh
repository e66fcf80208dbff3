// Listening sockets: address parsing in derper's `-a` spelling and creation of one SO_REUSEPORT
// socket per shard, so that the kernel spreads accepted connections over the shards by 4-tuple
// hash and no accept is ever handed between threads.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"

namespace derp::ring {

struct socket_address {
    sockaddr_storage storage{};
    socklen_t length = 0;

    int family() const noexcept { return storage.ss_family; }
    std::uint16_t port() const noexcept;
    void set_port(std::uint16_t port) noexcept;
    bool is_loopback() const noexcept;
    std::string to_string() const;  // "127.0.0.1:3340", "[::1]:3340"
};

// Parses "host:port", ":port", "[v6]:port", with host an IP literal or "localhost".
// ":port" (any address) yields the IPv6 wildcard, served dual-stack, as Go listens on ":port".
// "localhost" yields both 127.0.0.1 and ::1.
result<std::vector<socket_address>, std::string> parse_listen_address(std::string_view text);

struct tcp_listen_options {
    int backlog = 4096;
    std::int64_t user_timeout_ns = 0;    // TCP_USER_TIMEOUT; 0 leaves the kernel default
    std::int64_t keepalive_idle_ns = 0;  // SO_KEEPALIVE with TCP_KEEPIDLE; 0 disables keepalive
    std::int64_t keepalive_interval_ns = 15'000'000'000;  // Go's default probe interval
    int keepalive_probes = 9;                              // Go's default probe count
    // Join a running derpd's SO_REUSEPORT group on the same port instead of refusing the port
    // as in use (derpd --takeover: the restart without a gap). Applies to UDP sockets too.
    bool join_existing = false;
};

// Opens `count` listening sockets bound to the same address with SO_REUSEPORT. When the port is
// 0 the first socket's kernel-chosen port is used for the rest. The options are set on the
// listener; Linux copies them (and TCP_NODELAY) to every accepted socket. Errors say what to do.
result<std::vector<int>, std::string> open_tcp_listeners(socket_address& address,
                                                        std::uint32_t count,
                                                        const tcp_listen_options& options);

// Opens a UDP socket bound to the address (STUN); a wildcard IPv6 address serves IPv4 too.
// Port 0 becomes the kernel's choice, written back into address. SO_REUSEPORT is set so that a
// later derpd --takeover can join (join_existing: be that one); without join_existing a port
// someone else holds is refused as in use.
result<int, std::string> open_udp_socket(socket_address& address, bool join_existing = false);

// Raises the soft RLIMIT_NOFILE to the hard limit and returns the resulting soft limit.
std::uint64_t raise_open_files_limit() noexcept;

}  // namespace derp::ring
