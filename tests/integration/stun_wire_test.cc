// Tailscale's own STUN requests against a derpd process, over IPv4 and IPv6: the recorded
// request bytes of fixtures/05-stun get derper's answer, byte for byte when the recorded client
// port is free here (else the same answer for our port), and malformed datagrams get none.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "stun/codec.hh"
#include "tests/support/derpd_process.hh"
#include "tests/unit/fixture_util.hh"

using namespace derp;

namespace {

using bytes = std::vector<std::uint8_t>;

// A UDP port with nothing bound right now.
std::uint16_t free_udp_port() {
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

struct udp_client {
    int fd = -1;
    sockaddr_storage local{};
    ~udp_client() {
        if (fd >= 0) ::close(fd);
    }
};

// Binds to the loopback of the family, on `preferred_port` if it is free (else any port).
udp_client make_client(int family, std::uint16_t preferred_port) {
    udp_client c;
    c.fd = ::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(c.fd >= 0);
    for (const std::uint16_t port : {preferred_port, std::uint16_t{0}}) {
        sockaddr_storage s{};
        socklen_t len = 0;
        if (family == AF_INET) {
            auto* a = reinterpret_cast<sockaddr_in*>(&s);
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a->sin_port = htons(port);
            len = sizeof *a;
        } else {
            auto* a = reinterpret_cast<sockaddr_in6*>(&s);
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_loopback;
            a->sin6_port = htons(port);
            len = sizeof *a;
        }
        if (::bind(c.fd, reinterpret_cast<sockaddr*>(&s), len) == 0) break;
    }
    socklen_t len = sizeof c.local;
    getsockname(c.fd, reinterpret_cast<sockaddr*>(&c.local), &len);
    return c;
}

std::optional<bytes> exchange(const udp_client& c, int family, std::uint16_t server_port, const bytes& request,
                              int wait_ms) {
    sockaddr_storage to{};
    socklen_t len = 0;
    if (family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&to);
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons(server_port);
        len = sizeof *a;
    } else {
        auto* a = reinterpret_cast<sockaddr_in6*>(&to);
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons(server_port);
        len = sizeof *a;
    }
    REQUIRE(::sendto(c.fd, request.data(), request.size(), 0, reinterpret_cast<sockaddr*>(&to), len) ==
            static_cast<ssize_t>(request.size()));
    pollfd p{c.fd, POLLIN, 0};
    if (::poll(&p, 1, wait_ms) != 1) return std::nullopt;
    bytes reply(2048);
    const ssize_t n = ::recv(c.fd, reply.data(), reply.size(), 0);
    REQUIRE(n > 0);
    reply.resize(static_cast<std::size_t>(n));
    return reply;
}

stun::endpoint endpoint_of(const sockaddr_storage& s) {
    stun::endpoint e;
    if (s.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&s);
        std::array<std::uint8_t, 4> v4{};
        std::memcpy(v4.data(), &a->sin_addr, 4);
        return stun::endpoint_from_ipv4(v4, ntohs(a->sin_port));
    }
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&s);
    std::memcpy(e.ip.data(), &a->sin6_addr, 16);
    e.port = ntohs(a->sin6_port);
    return e;
}

}  // namespace

TEST_CASE("Tailscale STUN requests over IPv4 and IPv6 get derper's answer") {
    const std::uint16_t stun_port = free_udp_port();
    test::derpd_options options;
    options.extra_args = {"-a", "localhost:0", "-stun=true", "-stun-port", std::to_string(stun_port)};
    test::derpd_process derpd(options);
    REQUIRE(derpd.wait_for_log("STUN server listening on 127.0.0.1:" + std::to_string(stun_port),
                               std::chrono::milliseconds(2000)));
    const bool ipv6 = derpd.wait_for_log("STUN server listening on [::1]", std::chrono::milliseconds(100));

    struct family_case {
        int family;
        const char* name;
        std::uint16_t recorded_client_port;
    };
    for (const family_case& fc : {family_case{AF_INET, "ipv4", 47804}, family_case{AF_INET6, "ipv6", 47806}}) {
        if (fc.family == AF_INET6 && !ipv6) {
            MESSAGE("no IPv6 loopback: the IPv6 case is skipped");
            continue;
        }
        CAPTURE(fc.name);
        const bytes request = test::read_binary(std::string("05-stun/") + fc.name + "-request.bin");
        const bytes recorded = test::read_binary(std::string("05-stun/") + fc.name + "-response.bin");
        udp_client client = make_client(fc.family, fc.recorded_client_port);
        const auto reply = exchange(client, fc.family, stun_port, request, 2000);
        REQUIRE(reply.has_value());
        const auto parsed = stun::parse_binding_request(request, false);
        REQUIRE(parsed.has_value());
        const stun::endpoint me = endpoint_of(client.local);
        // derpd listens on 127.0.0.1 and ::1 (not dual-stack), as derper did when recorded:
        // IPv4 clients get family 1.
        bytes expected(stun::binding_response_bytes_max);
        expected.resize(stun::encode_binding_response(expected, parsed->txid, me, stun::ipv4_form::ipv4));
        CHECK(*reply == expected);
        if (me.port == fc.recorded_client_port) CHECK(*reply == recorded);  // byte for byte
        else MESSAGE("recorded client port busy here: compared with derper's answer for our port");
        const auto mapped = stun::parse_binding_response(*reply, parsed->txid);
        REQUIRE(mapped.has_value());
        CHECK(*mapped == me);
    }

    // Malformed datagrams: no answer at all.
    udp_client client = make_client(AF_INET, 0);
    bytes bad = test::read_binary("05-stun/ipv4-request.bin");
    bad.back() ^= 0xff;  // breaks the FINGERPRINT
    CHECK_FALSE(exchange(client, AF_INET, stun_port, bad, 300).has_value());
    CHECK_FALSE(exchange(client, AF_INET, stun_port, bytes(19, 0), 300).has_value());
    CHECK(derpd.running());
}
