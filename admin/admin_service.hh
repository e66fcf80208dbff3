// The admin thread's service: STUN (stun/server) and, with --admin-addr, a small HTTP listener
// for operators that serves /debug/varz, /debug/check and the /debug/ index off the shards.
// It reads the shards' counters (relaxed atomics) and never writes shard state.
#pragma once

#include <string>
#include <vector>

#include "ring/shard.hh"
#include "admin/derp_counters.hh"
#include "stun/server.hh"

namespace derp::admin {

class admin_service final : public ring::service {
public:
    admin_service(ring::shard& sh, const metric_sources& shared, stun::stun_counters& stun_counters,
                  bool stun_accept_standard)
        : _shard(sh), _shared(shared), _stun(sh, stun_counters, stun_accept_standard) {}

    void on_datagram(std::uint32_t socket_index, const sockaddr_storage& from,
                     std::span<const std::uint8_t> payload, bool truncated) noexcept override {
        _stun.on_datagram(socket_index, from, payload, truncated);
    }
    void on_accept(ring::conn_id conn, const sockaddr_storage& peer) noexcept override;
    std::size_t on_data(ring::conn_id conn, std::span<const std::uint8_t> bytes) noexcept override;
    std::size_t on_writable(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override;
    void on_timer(ring::conn_id conn, std::uint8_t timer_id) noexcept override;
    void on_closed(ring::conn_id conn, ring::close_cause cause) noexcept override;
    void on_message(const ring::message&) noexcept override {}

private:
    struct http_conn {
        std::uint32_t gen = 0;
        bool open = false;
        std::string out;
        std::size_t sent = 0;
    };
    http_conn* find(ring::conn_id conn) noexcept;

    ring::shard& _shard;
    const metric_sources& _shared;
    stun::stun_service _stun;
    std::vector<http_conn> _conns;  // by slot
};

}  // namespace derp::admin
