// The load generator's side of a raw forwarder (ring/forwarder.hh, derpbench's tcp:// URLs):
// plain TCP connections on the shard runtime that carry exactly the bytes a DERP client and
// server exchange per packet, with no upgrade or handshake. A sender writes SendPacket frames
// (5-byte header, the receiver's 32-byte key, the packet) as it would to derpd; the forwarder
// hands them over unchanged, so the receiver reads as many bytes per packet as it would read in
// derpd's RecvPacket frames (same header, a 32-byte key, the packet). The handler is the DERP
// client library's (client::handler), so derpbench's pair load and latency probe run unchanged
// on either pool and the two servers are measured by the same code.
//
// The forwarder pairs connections in the order it accepts them, so connect one at a time (each
// on_ready before the next dial). Every frame that arrives is checked against the key of the
// connection it arrived on: a frame for someone else (pairs crossed) fails the connection
// (client_failure::protocol), so a pairing mistake can never pass as a measurement.
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "client/derp_client.hh"
#include "ring/runtime.hh"
#include "ring/shard.hh"

namespace derp::bench {

using ring::conn_id;

class raw_pool final : public ring::service {
public:
    raw_pool(ring::shard& sh, client::handler& h) : _shard(sh), _handler(h) {}

    // Connects; on_ready follows once the connect completed (with a zero key: there is no
    // server key). Only options.key is used: frames addressed to its public key are this
    // connection's.
    std::optional<conn_id> dial(const ring::socket_address& server, const client::client_options& options) noexcept;
    void want_send(conn_id conn) noexcept { _shard.want_write(conn); }
    void close(conn_id conn) noexcept { _shard.close(conn); }
    void stop_reading(conn_id conn) noexcept { _shard.pause_recv(conn); }
    void resume_reading(conn_id conn) noexcept { _shard.resume_recv(conn); }
    void arm_tick(conn_id conn, std::uint64_t deadline_ns) noexcept { _shard.arm_timer(conn, 0, deadline_ns); }
    void wake_at(std::uint64_t deadline_ns) noexcept { _shard.wake_at(deadline_ns); }

    void on_accept(conn_id conn, const sockaddr_storage&) noexcept override { _shard.close(conn); }
    void on_connect(conn_id conn, int error) noexcept override;
    std::size_t on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept override;
    std::size_t on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept override {
        return _handler.fill(conn, out);
    }
    void on_timer(conn_id conn, std::uint8_t) noexcept override { _handler.on_tick(conn); }
    void on_closed(conn_id conn, ring::close_cause cause) noexcept override;
    void on_message(const ring::message&) noexcept override {}
    bool on_turn_end() noexcept override { return _handler.on_turn(); }

private:
    struct conn_state {
        std::uint32_t gen = 0;
        bool open = false;
        node_key public_key;
        std::optional<client::client_failure> failure;
    };
    conn_state* find(conn_id conn) noexcept;
    void fail(conn_id conn, conn_state& c, client::client_failure failure) noexcept;

    ring::shard& _shard;
    client::handler& _handler;
    std::vector<conn_state> _conns;  // by slot
};

// A one-shard (usually) client runtime whose shards serve `handler` through a raw_pool;
// handler.attach(pool) runs on the shard thread before the loop starts.
template <typename Handler>
result<std::unique_ptr<ring::runtime>, std::string> start_raw_runtime(ring::runtime_config config, Handler& handler) {
    return ring::runtime::start(
        std::move(config),
        [&handler](ring::shard& sh) -> std::unique_ptr<ring::service> {
            auto pool = std::make_unique<raw_pool>(sh, handler);
            handler.attach(*pool);
            return pool;
        },
        nullptr);
}

}  // namespace derp::bench
