// Handshake places per shard and per source (see tls_places.hh).
#include "crypto/tls_places.hh"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace derp::tls {

std::uint64_t handshake_source_of(const sockaddr_storage& peer) noexcept {
    // The family in the top byte keeps an IPv4 address and an IPv6 /64 apart.
    if (peer.ss_family == AF_INET) {
        const auto& v4 = reinterpret_cast<const sockaddr_in&>(peer);
        return (std::uint64_t{4} << 56) | ntohl(v4.sin_addr.s_addr);
    }
    if (peer.ss_family == AF_INET6) {
        const auto& v6 = reinterpret_cast<const sockaddr_in6&>(peer);
        const std::uint8_t* a = v6.sin6_addr.s6_addr;
        static constexpr std::uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(a, mapped_prefix, sizeof mapped_prefix) == 0)
            return (std::uint64_t{4} << 56) | (std::uint64_t{a[12]} << 24) | (std::uint64_t{a[13]} << 16) |
                   (std::uint64_t{a[14]} << 8) | a[15];
        std::uint64_t prefix = 0;  // the /64, marked with the family (a collision only shares a bound)
        for (int i = 0; i < 8; ++i) prefix = prefix << 8 | a[i];
        return prefix ^ (std::uint64_t{6} << 56);
    }
    return 0;
}

bool handshake_places::arrive(ring::conn_id conn, std::uint64_t source) {
    source_state& s = _sources[source];
    if (_in_flight < _total_max && source_has_room(s) && s.queue.empty()) {
        ++s.in_flight;
        ++_in_flight;
        return true;
    }
    s.queue.push_back(conn);
    ++_waiting;
    list_if_ready(source, s);
    return false;
}

void handshake_places::leave(std::uint64_t source) noexcept {
    auto it = _sources.find(source);
    if (it == _sources.end() || it->second.in_flight == 0 || _in_flight == 0) return;
    --it->second.in_flight;
    --_in_flight;
    list_if_ready(source, it->second);
    forget_if_idle(source);
}

std::optional<ring::conn_id> handshake_places::next(const std::function<bool(ring::conn_id)>& still_waiting) {
    while (_in_flight < _total_max && !_ready.empty()) {
        const std::uint64_t source = _ready.front();
        _ready.pop_front();
        auto it = _sources.find(source);
        if (it == _sources.end()) continue;
        source_state& s = it->second;
        s.listed = false;
        while (!s.queue.empty() && source_has_room(s)) {
            const ring::conn_id conn = s.queue.front();
            s.queue.pop_front();
            --_waiting;
            if (!still_waiting(conn)) continue;
            ++s.in_flight;
            ++_in_flight;
            // Its source goes to the back of the turn: one address cannot take every place
            // that frees while others wait.
            list_if_ready(source, s);
            return conn;
        }
        forget_if_idle(source);
    }
    return std::nullopt;
}

void handshake_places::list_if_ready(std::uint64_t source, source_state& s) {
    if (s.listed || s.queue.empty() || !source_has_room(s)) return;
    s.listed = true;
    _ready.push_back(source);
}

void handshake_places::forget_if_idle(std::uint64_t source) {
    auto it = _sources.find(source);
    if (it != _sources.end() && it->second.in_flight == 0 && it->second.queue.empty() && !it->second.listed)
        _sources.erase(it);
}

}  // namespace derp::tls
