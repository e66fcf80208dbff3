// The udp probe (see probe_stun.hh), on stunc's approach: a connected UDP socket, so that an
// ICMP port-unreachable comes back as ECONNREFUSED at once instead of as a silent timeout.
#include "probe/probe_stun.hh"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "probe/probe_net.hh"
#include "core/flags.hh"
#include "stun/codec.hh"

namespace derp::probe {
namespace {

// derpprobe waits this long for each answer before sending the request again.
constexpr std::int64_t stun_try_ns = 2'000'000'000;

std::string format_endpoint(const stun::endpoint& e) {
    char text[INET6_ADDRSTRLEN] = {};
    if (e.is_ipv4()) {
        inet_ntop(AF_INET, e.ip.data() + 12, text, sizeof text);
        return fmt::format("{}:{}", text, e.port);
    }
    inet_ntop(AF_INET6, e.ip.data(), text, sizeof text);
    return fmt::format("[{}]:{}", text, e.port);
}

}  // namespace

outcome probe_stun(const derp_node& node, int family, const run_context& ctx) {
    const std::string& ip = family == AF_INET ? node.ipv4 : node.ipv6;
    const auto port = static_cast<std::uint16_t>(node.stun_port != 0 ? node.stun_port : 3478);
    ring::socket_address server;
    if (!parse_ip_literal(ip, family, server, port))
        return failed(fmt::format("\"{}\" is not an {} address", ip, family == AF_INET ? "IPv4" : "IPv6"));
    const std::string where = server.to_string();
    const int fd = ::socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return failed(fmt::format("socket: {}", std::strerror(errno)));
    struct fd_closer {
        int fd;
        ~fd_closer() { ::close(fd); }
    } closer{fd};
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&server.storage), server.length) != 0)
        return failed(fmt::format("connect {}: {}", where, std::strerror(errno)));

    stun::transaction_id txid{};
    if (getrandom(txid.data(), txid.size(), 0) != static_cast<ssize_t>(txid.size()))
        return failed("no randomness for the transaction id");
    std::array<std::uint8_t, stun::binding_request_bytes_max> request{};
    const std::size_t request_bytes = stun::encode_binding_request(request, txid, stun::request_style::tailscale);
    const std::int64_t started_ns = monotonic_now_ns();
    int tries = 0;
    // As derpprobe: the same request (same transaction id) again after each silent 2 s.
    while (!ctx.over()) {
        ++tries;
        if (::send(fd, request.data(), request_bytes, 0) != static_cast<ssize_t>(request_bytes))
            return failed(fmt::format("send to {}: {}", where, std::strerror(errno)));
        const std::int64_t try_deadline_ns = monotonic_now_ns() + stun_try_ns;
        run_context try_ctx = ctx;
        if (try_deadline_ns < try_ctx.deadline_ns) try_ctx.deadline_ns = try_deadline_ns;
        if (!wait_fd(fd, false, try_ctx)) continue;
        // Tailscale reads into a jumbo buffer: an answer may be as large as the path MTU.
        std::array<std::uint8_t, 9000> reply{};
        const ssize_t n = ::recv(fd, reply.data(), reply.size(), 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            // ECONNREFUSED: an ICMP port unreachable, nothing listens on that port.
            return failed(fmt::format("no STUN server at {}: {}", where, std::strerror(errno)));
        }
        const auto mapped = stun::parse_binding_response({reply.data(), static_cast<std::size_t>(n)}, txid);
        if (!mapped) {
            if (mapped.error() == stun::response_error::wrong_transaction)
                return failed(fmt::format("{} answered for another transaction id", where));
            return failed(fmt::format("bad STUN answer from {}: {}", where, stun::to_string(mapped.error())));
        }
        return outcome{true,
                       fmt::format("{} answered in {}{}, it sees us as {}", where,
                                   format_latency(monotonic_now_ns() - started_ns),
                                   tries > 1 ? fmt::format(" ({} tries)", tries) : std::string(),
                                   format_endpoint(*mapped)),
                       std::nullopt};
    }
    if (ctx.stopping()) return failed("stopped");
    return failed(fmt::format("no STUN answer from {} within {} ({} request{} sent)", where,
                              format_latency(monotonic_now_ns() - started_ns), tries, tries == 1 ? "" : "s"));
}

}  // namespace derp::probe
