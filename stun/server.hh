// The STUN server on the admin thread (spec 6): answers Binding requests on the UDP sockets the
// runtime opened for that thread, exactly as derper does for Tailscale's requests, and (unless
// strict) for ordinary RFC 5389 clients too. Counts derper's stun_requests{disposition} and
// stun_addrfamily{family}. The wire format lives in stun/codec.
#pragma once

#include <array>
#include <cstdint>

#include "ring/counters.hh"
#include "ring/shard.hh"
#include "stun/codec.hh"

namespace derp::stun {

struct alignas(ring::cache_line_bytes) stun_counters {
    std::array<ring::counter, all_dispositions.size()> requests;  // by disposition
    ring::counter family_ipv4;
    ring::counter family_ipv6;
    ring::counter standard_requests;  // derpd: answered RFC 5389 requests without "tailnode"
};

class stun_service final : public ring::service {
public:
    stun_service(ring::shard& sh, stun_counters& counters, bool accept_standard_requests)
        : _shard(sh), _counters(counters), _accept_standard(accept_standard_requests) {}

    void on_datagram(std::uint32_t socket_index, const sockaddr_storage& from,
                     std::span<const std::uint8_t> payload, bool truncated) noexcept override;

    // The admin thread has no connections of its own yet.
    void on_accept(ring::conn_id conn, const sockaddr_storage&) noexcept override { _shard.close(conn); }
    std::size_t on_data(ring::conn_id, std::span<const std::uint8_t> b) noexcept override { return b.size(); }
    std::size_t on_writable(ring::conn_id, std::span<std::uint8_t>) noexcept override { return 0; }
    void on_timer(ring::conn_id, std::uint8_t) noexcept override {}
    void on_closed(ring::conn_id, ring::close_cause) noexcept override {}
    void on_message(const ring::message&) noexcept override {}

private:
    void count(disposition d) noexcept { _counters.requests[static_cast<std::size_t>(d)].add(); }

    ring::shard& _shard;
    stun_counters& _counters;
    bool _accept_standard;
};

}  // namespace derp::stun
