// stunc: asks a STUN server which address it sees us as, like Tailscale's cmd/stunc (spec 8.2):
// `stunc <host> [port]` sends one Tailscale-style Binding request (SOFTWARE tailnode +
// FINGERPRINT; `-standard` a plain RFC 5389 one), waits up to -timeout for the answer, checks
// its transaction id, and prints the addresses and the round-trip time. Any failure is a
// message on stderr and exit status 1.
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/flags.hh"
#include "stun/codec.hh"

namespace {

std::string format_sockaddr(const sockaddr_storage& s) {
    char text[INET6_ADDRSTRLEN] = {};
    if (s.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&s);
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        return fmt::format("{}:{}", text, ntohs(a->sin_port));
    }
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&s);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    return fmt::format("[{}]:{}", text, ntohs(a->sin6_port));
}

std::string format_endpoint(const derp::stun::endpoint& e) {
    char text[INET6_ADDRSTRLEN] = {};
    if (e.is_ipv4()) {
        inet_ntop(AF_INET, e.ip.data() + 12, text, sizeof text);
        return fmt::format("{}:{}", text, e.port);
    }
    inet_ntop(AF_INET6, e.ip.data(), text, sizeof text);
    return fmt::format("[{}]:{}", text, e.port);
}

int fail(const std::string& message) {
    std::fprintf(stderr, "stunc: %s\n", message.c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::int64_t timeout_ns = 3'000'000'000;
    bool standard = false;
    derp::flag_set flags("stunc");
    flags.add_duration("timeout", &timeout_ns, "how long to wait for the answer");
    flags.add_bool("standard", &standard, "send a plain RFC 5389 Binding request instead of Tailscale's");
    std::vector<std::string_view> args(argv + 1, argv + argc);
    auto parsed = flags.parse(args);
    if (!parsed) return fail(parsed.error());
    if (parsed->help_requested || parsed->positional.empty() || parsed->positional.size() > 2) {
        std::fprintf(stderr, "usage: stunc [-timeout 3s] [-standard] <host> [port]\n%s", flags.usage().c_str());
        return parsed->help_requested ? 0 : 2;
    }
    const std::string host = parsed->positional[0];
    const std::string port = parsed->positional.size() > 1 ? parsed->positional[1] : "3478";

    addrinfo hints{};
    hints.ai_socktype = SOCK_DGRAM;
    addrinfo* resolved = nullptr;
    if (const int err = getaddrinfo(host.c_str(), port.c_str(), &hints, &resolved); err != 0)
        return fail(fmt::format("resolving {}:{}: {}", host, port, gai_strerror(err)));
    sockaddr_storage server{};
    std::memcpy(&server, resolved->ai_addr, resolved->ai_addrlen);
    const socklen_t server_length = resolved->ai_addrlen;
    freeaddrinfo(resolved);

    const int fd = ::socket(server.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(fmt::format("socket: {}", std::strerror(errno)));
    // Connected, so that an ICMP "port unreachable" comes back as an error instead of a timeout.
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&server), server_length) != 0)
        return fail(fmt::format("connect {}: {}", format_sockaddr(server), std::strerror(errno)));

    derp::stun::transaction_id txid{};
    if (getrandom(txid.data(), txid.size(), 0) != static_cast<ssize_t>(txid.size()))
        return fail("no randomness for the transaction id");
    std::array<std::uint8_t, derp::stun::binding_request_bytes_max> request{};
    const std::size_t request_bytes = derp::stun::encode_binding_request(
        request, txid, standard ? derp::stun::request_style::plain : derp::stun::request_style::tailscale);
    const auto sent_at = std::chrono::steady_clock::now();
    if (::send(fd, request.data(), request_bytes, 0) != static_cast<ssize_t>(request_bytes))
        return fail(fmt::format("send to {}: {}", format_sockaddr(server), std::strerror(errno)));
    sockaddr_storage local{};
    socklen_t local_length = sizeof local;
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length);

    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(timeout_ns / 1'000'000));
    if (ready == 0)
        return fail(fmt::format("no answer from {} within {}", format_sockaddr(server),
                                derp::format_go_duration(timeout_ns)));
    std::array<std::uint8_t, 1024> reply{};  // Tailscale's stunc reads into 1024 bytes too
    const ssize_t n = ::recv(fd, reply.data(), reply.size(), 0);
    const auto rtt = std::chrono::steady_clock::now() - sent_at;
    if (n < 0) return fail(fmt::format("receive from {}: {}", format_sockaddr(server), std::strerror(errno)));
    const auto mapped = derp::stun::parse_binding_response({reply.data(), static_cast<std::size_t>(n)}, txid);
    if (!mapped) return fail(fmt::format("bad answer from {}: {}", format_sockaddr(server), derp::stun::to_string(mapped.error())));
    std::printf("sent addr: %s\nfrom addr: %s\nstun addr: %s\nrtt: %.3f ms\n", format_sockaddr(local).c_str(),
                format_sockaddr(server).c_str(), format_endpoint(*mapped).c_str(),
                std::chrono::duration<double, std::milli>(rtt).count());
    ::close(fd);
    return 0;
}
