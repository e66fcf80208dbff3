// Which accepted TLS connections may run their handshake now: at most total_max at once on a
// shard (each holds an SSL object of about 40 KB until it ends), at most per_source_max of
// them from one source address, the rest waiting in arrival order per source, the sources
// served in turn. Without the per-source bound, peers that send a whole ClientHello and then
// stall take every place until the handshake deadline and real clients wait behind them; with
// it, one address (an IPv4 address, an IPv6 /64) holds at most its share. Pure bookkeeping:
// no I/O, no clock; crypto/tls_layer asks it and keeps the connections.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <unordered_map>

#include "ring/service.hh"

struct sockaddr_storage;

namespace derp::tls {

// The source a connection is counted under: an IPv4 address (also when IPv4-mapped), or the
// /64 of an IPv6 address; 0 for anything else.
std::uint64_t handshake_source_of(const sockaddr_storage& peer) noexcept;

class handshake_places {
public:
    // per_source_max 0: no per-source bound.
    handshake_places(std::uint32_t total_max, std::uint32_t per_source_max) noexcept
        : _total_max(total_max), _per_source_max(per_source_max) {}

    // A connection whose ClientHello is here: true when it may start now (its place is
    // counted); false when it waits (in arrival order within its source).
    bool arrive(ring::conn_id conn, std::uint64_t source);
    // A handshake that held a place ended (either way): its place is free again.
    void leave(std::uint64_t source) noexcept;
    // The next waiting connection that may start now (its place counted), skipping those for
    // which still_waiting says no (closed while they waited); nothing when none may.
    std::optional<ring::conn_id> next(const std::function<bool(ring::conn_id)>& still_waiting);

    std::uint32_t in_flight() const noexcept { return _in_flight; }
    std::size_t waiting() const noexcept { return _waiting; }  // including entries gone stale

private:
    struct source_state {
        std::uint32_t in_flight = 0;
        std::deque<ring::conn_id> queue;
        bool listed = false;  // in _ready
    };
    bool source_has_room(const source_state& s) const noexcept {
        return _per_source_max == 0 || s.in_flight < _per_source_max;
    }
    void list_if_ready(std::uint64_t source, source_state& s);
    void forget_if_idle(std::uint64_t source);

    std::uint32_t _total_max;
    std::uint32_t _per_source_max;
    std::uint32_t _in_flight = 0;
    std::size_t _waiting = 0;
    std::unordered_map<std::uint64_t, source_state> _sources;
    std::deque<std::uint64_t> _ready;  // sources with waiting connections and room, in turn
};

}  // namespace derp::tls
