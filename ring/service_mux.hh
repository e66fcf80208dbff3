// Two services on one shard: connections the shard accepted belong to the first (the server),
// connections opened with shard::connect() to the second (clients this shard dials, such as
// derpd's mesh links). Each service sees only its own connections; messages between threads,
// datagrams and the stop go to the first, which owns the thread's protocol, and the loop's
// turn end goes to both.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "ring/service.hh"

namespace derp::ring {

class service_mux final : public service {
public:
    service_mux(std::unique_ptr<service> accepted, std::unique_ptr<service> dialled)
        : _accepted(std::move(accepted)), _dialled(std::move(dialled)) {}

    service& accepted() noexcept { return *_accepted; }
    service& dialled() noexcept { return *_dialled; }

    void on_accept(conn_id conn, const sockaddr_storage& peer) noexcept override {
        if (_accepted_gen.size() <= conn.slot) _accepted_gen.resize(conn.slot + 1);
        _accepted_gen[conn.slot] = conn.gen;
        _accepted->on_accept(conn, peer);
    }
    void on_connect(conn_id conn, int error) noexcept override { of(conn).on_connect(conn, error); }
    std::size_t on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept override {
        return of(conn).on_data(conn, bytes);
    }
    std::size_t on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept override {
        return of(conn).on_writable(conn, out);
    }
    void on_datagram(std::uint32_t socket_index, const sockaddr_storage& from, std::span<const std::uint8_t> payload,
                     bool truncated) noexcept override {
        _accepted->on_datagram(socket_index, from, payload, truncated);
    }
    void on_recv_error(conn_id conn, int error) noexcept override { of(conn).on_recv_error(conn, error); }
    void on_flushed_close(conn_id conn) noexcept override { of(conn).on_flushed_close(conn); }
    void on_recv_paused(conn_id conn) noexcept override { of(conn).on_recv_paused(conn); }
    void on_timer(conn_id conn, std::uint8_t timer_id) noexcept override { of(conn).on_timer(conn, timer_id); }
    void on_closed(conn_id conn, close_cause cause) noexcept override {
        service& s = of(conn);
        if (conn.slot < _accepted_gen.size() && _accepted_gen[conn.slot] == conn.gen) _accepted_gen[conn.slot].reset();
        s.on_closed(conn, cause);
    }
    void on_message(const message& m) noexcept override { _accepted->on_message(m); }
    void discard_message(const message& m) noexcept override { _accepted->discard_message(m); }
    bool on_turn_end() noexcept override {
        const bool a = _accepted->on_turn_end();
        const bool b = _dialled->on_turn_end();
        return a || b;
    }
    void on_drain(std::uint64_t deadline_ns) noexcept override {
        _accepted->on_drain(deadline_ns);
        _dialled->on_drain(deadline_ns);
    }
    void on_stop() noexcept override {
        _accepted->on_stop();
        _dialled->on_stop();
    }

private:
    // Per slot: the generation of the accepted connection in it; none for a slot that is free
    // or holds a dialled connection.
    service& of(conn_id conn) noexcept {
        const bool accepted = conn.slot < _accepted_gen.size() && _accepted_gen[conn.slot] == conn.gen;
        return accepted ? *_accepted : *_dialled;
    }

    std::unique_ptr<service> _accepted;
    std::unique_ptr<service> _dialled;
    std::vector<std::optional<std::uint32_t>> _accepted_gen;
};

}  // namespace derp::ring
