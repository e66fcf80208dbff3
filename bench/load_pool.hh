// What the load handlers (derpbench's pair load and latency probe) ask of the pool their
// connections live in: the DERP client library's client_pool, or raw_pool for the raw
// forwarder baseline. One interface, so that derpd and the forwarder are loaded and measured by
// the same code.
#pragma once

#include <cstdint>
#include <optional>

#include "client/derp_client.hh"
#include "ring/listen.hh"

namespace derp::bench {

class load_pool {
public:
    virtual ~load_pool() = default;
    virtual std::optional<ring::conn_id> dial(const ring::socket_address& server,
                                              const client::client_options& options) noexcept = 0;
    virtual void want_send(ring::conn_id conn) noexcept = 0;
    virtual void wake_at(std::uint64_t deadline_ns) noexcept = 0;
    virtual void stop_reading(ring::conn_id conn) noexcept = 0;
    virtual void resume_reading(ring::conn_id conn) noexcept = 0;
};

template <typename Pool>
class load_pool_of final : public load_pool {
public:
    explicit load_pool_of(Pool& pool) : _pool(pool) {}
    std::optional<ring::conn_id> dial(const ring::socket_address& server,
                                      const client::client_options& options) noexcept override {
        return _pool.dial(server, options);
    }
    void want_send(ring::conn_id conn) noexcept override { _pool.want_send(conn); }
    void wake_at(std::uint64_t deadline_ns) noexcept override { _pool.wake_at(deadline_ns); }
    void stop_reading(ring::conn_id conn) noexcept override { _pool.stop_reading(conn); }
    void resume_reading(ring::conn_id conn) noexcept override { _pool.resume_reading(conn); }

private:
    Pool& _pool;
};

}  // namespace derp::bench
