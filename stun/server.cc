// STUN Binding answers on the admin thread (see server.hh).
#include "stun/server.hh"

#include <netinet/in.h>

#include <cstring>

namespace derp::stun {

void stun_service::on_datagram(std::uint32_t socket_index, const sockaddr_storage& from,
                               std::span<const std::uint8_t> payload, bool truncated) noexcept {
    // A datagram longer than the receive buffer is no Binding request derper would answer.
    if (truncated) {
        count(disposition::not_stun);
        return;
    }
    const auto request = parse_binding_request(payload, _accept_standard);
    if (!request) {
        count(disposition_of(request.error()));
        return;
    }
    endpoint client;
    socklen_t from_length = 0;
    ipv4_form form = ipv4_form::ipv4;
    if (from.ss_family == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&from);
        std::array<std::uint8_t, 4> v4{};
        std::memcpy(v4.data(), &sin->sin_addr, 4);
        client = endpoint_from_ipv4(v4, ntohs(sin->sin_port));
        from_length = sizeof(sockaddr_in);
    } else if (from.ss_family == AF_INET6) {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&from);
        std::memcpy(client.ip.data(), &sin6->sin6_addr, 16);
        client.port = ntohs(sin6->sin6_port);
        from_length = sizeof(sockaddr_in6);
        // An IPv4 client seen on a dual-stack socket: derper answers Tailscale's requests with
        // the IPv4-mapped IPv6 form (family 2), spec 10 item 6, and Go clients read both. An
        // ordinary RFC 5389 client may not unmap it, so it gets the plain IPv4 form.
        if (request->kind == request_kind::tailscale) form = ipv4_form::ipv4_mapped;
    } else {
        count(disposition::read_error);
        return;
    }
    if (client.is_ipv4()) _counters.family_ipv4.add();
    else _counters.family_ipv6.add();
    if (request->kind == request_kind::standard) _counters.standard_requests.add();

    std::array<std::uint8_t, binding_response_bytes_max> response{};
    const std::size_t n = encode_binding_response(response, request->txid, client, form);
    if (_shard.send_datagram(socket_index, from, from_length, {response.data(), n}) != 0) {
        count(disposition::write_error);
        return;
    }
    count(disposition::success);
}

}  // namespace derp::stun
