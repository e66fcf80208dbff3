// derpd's mesh links: see mesh.hh and spec 5. The link's life: resolve the dial host (names
// asynchronously, never blocking the shard), connect, TLS, upgrade, handshake with the mesh
// key and WatchConns pipelined; then the peer's PeerPresent/PeerGone go to each key's owner
// shard, ForwardPacket frames go out; on any failure every key learned from the peer is
// withdrawn (derper's synthetic MeshConnBroke) and the link dials again 5 s later.
#include "server/mesh.hh"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "server/derp_internal.hh"

namespace derp::server {

namespace {

constexpr std::size_t failure_resolve = 0;
constexpr std::size_t failure_timeout = 8;

std::size_t failure_index(client::client_failure failure) noexcept {
    switch (failure) {
    case client::client_failure::connect_failed: return 1;
    case client::client_failure::tls_handshake: return 2;
    case client::client_failure::http_status: return 3;
    case client::client_failure::bad_server_key: return 4;
    case client::client_failure::bad_server_info: return 5;
    case client::client_failure::protocol: return 6;
    case client::client_failure::closed: return 7;
    }
    return 7;
}

// An IP literal as a socket address, or nothing for a name.
std::optional<ring::socket_address> literal_address(const std::string& host, std::uint16_t port) {
    ring::socket_address a;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        a.length = sizeof(sockaddr_in);
        return a;
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        a.length = sizeof(sockaddr_in6);
        return a;
    }
    return std::nullopt;
}

}  // namespace

result<mesh_config, std::string> make_mesh_config(std::string_view mesh_with) {
    auto entries = parse_mesh_with(mesh_with);
    if (!entries) return unexpected(entries.error());
    mesh_config config;
    config.entries = std::move(entries.value());
    for (const mesh_entry& e : config.entries) {
        tls::context::client_options options;
        options.server_name = e.verify_name;
        options.sni = e.host;  // as written, port included, as derper v1.36's mesh clients
        options.verify = tls::context::verify_mode::system;
        auto ctx = tls::context::make_client(options);
        if (!ctx) return unexpected(fmt::format("-mesh-with {}: {}", e.host, ctx.error()));
        config.contexts.push_back(ctx.value());
    }
    return config;
}

// getaddrinfo_a with no notification: the shard polls gai_error() on its turns.
struct mesh_links::resolving {
    std::string name;
    std::string service;
    addrinfo hints{};
    gaicb request{};
    gaicb* list[1] = {&request};
    bool started = false;
    ~resolving() {
        if (!started) return;
        // A lookup still running is cancelled; if it cannot be, wait for it: glibc writes
        // into this object until it finishes.
        if (gai_cancel(&request) == EAI_NOTCANCELED)
            while (gai_error(&request) == EAI_INPROGRESS) gai_suspend(list, 1, nullptr);
        if (request.ar_result != nullptr) freeaddrinfo(request.ar_result);
    }
};

mesh_links::mesh_links(ring::shard& sh, derp_service& derp, derp_shared& shared, const mesh_config& config)
    : _shard(sh), _derp(derp), _shared(shared), _config(config),
      _rng_state(ring::monotonic_ns() ^ (std::uint64_t{sh.index()} << 40) ^ 0x6d657368) {
    for (std::uint32_t p = 0; p < config.entries.size(); ++p)
        if (derp_service::mesh_shard_of(p, shared.shards) == sh.index()) {
            link l;
            l.peer = p;
            _links.push_back(std::move(l));
        }
}

mesh_links::~mesh_links() = default;

mesh_links::link* mesh_links::find(conn_id conn) noexcept {
    for (link& l : _links)
        if (l.conn && *l.conn == conn) return &l;
    return nullptr;
}

void mesh_links::tell_owner(const node_key& key, std::uint32_t peer, bool present) noexcept {
    auto* m = new derp_service::control{};
    m->kind = present ? derp_service::control::type::mesh_present : derp_service::control::type::mesh_gone;
    m->key = key;
    m->peer = peer;
    _derp.send_control(derp_service::owner_of(key, _shared.shards), m);
}

void mesh_links::enqueue(std::uint32_t peer, const queued_frame& frame) noexcept {
    link* l = nullptr;
    for (link& candidate : _links)
        if (candidate.peer == peer) l = &candidate;
    const auto drop = [&] {
        _derp._counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::mesh_unavailable)].add();
        if (l != nullptr) counters(*l).dropped.add();
        _derp.release_transfer(frame);
    };
    // Forwarding needs a ready link; a frame sent before the peer took our handshake would be
    // read as ours. A queue over its bound means the peer reads slower than we forward.
    if (l == nullptr || !l->ready || l->self || l->out_bytes + frame.frame_bytes > _config.queue_bytes_max) {
        drop();
        return;
    }
    l->out.push_back(frame);
    l->out_bytes += frame.frame_bytes;
    _pool->want_send(*l->conn);
}

std::size_t mesh_links::fill(conn_id conn, std::span<std::uint8_t> out) noexcept {
    link* l = find(conn);
    if (l == nullptr) return 0;
    std::size_t written = 0;
    // As many frames as fit: one send carries many forwards (a frame may straddle two sends).
    while (!l->out.empty() && written < out.size()) {
        const queued_frame& f = l->out.front();
        const std::size_t n = std::min<std::size_t>(f.frame_bytes - l->out_offset, out.size() - written);
        std::memcpy(out.data() + written, f.data + l->out_offset, n);
        written += n;
        l->out_offset += n;
        if (l->out_offset < f.frame_bytes) break;
        counters(*l).forwarded.add();
        l->out_bytes -= f.frame_bytes;
        _derp.release_transfer(f);
        l->out.pop_front();
        l->out_offset = 0;
    }
    if (!l->out.empty()) _pool->want_send(conn);
    return written;
}

void mesh_links::drop_queue(link& l) noexcept {
    for (const queued_frame& f : l.out) {
        _derp._counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::mesh_unavailable)].add();
        counters(l).dropped.add();
        _derp.release_transfer(f);
    }
    l.out.clear();
    l.out_offset = 0;
    l.out_bytes = 0;
}

bool mesh_links::on_turn() noexcept {
    if (_stopping) return false;
    const std::uint64_t now = _shard.now_ns();
    std::uint64_t next_wake = 0;
    const auto wake = [&](std::uint64_t at) {
        if (next_wake == 0 || at < next_wake) next_wake = at;
    };
    for (link& l : _links) {
        if (l.conn) continue;
        if (l.lookup) {
            const int status = gai_error(&l.lookup->request);
            if (status == EAI_INPROGRESS) {
                wake(now + 20'000'000);  // polled: glibc's thread cannot wake this ring
                continue;
            }
            std::optional<ring::socket_address> address;
            for (const addrinfo* ai = status == 0 ? l.lookup->request.ar_result : nullptr; ai != nullptr; ai = ai->ai_next)
                if (ai->ai_addrlen <= sizeof(sockaddr_storage) && (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)) {
                    address.emplace();
                    std::memcpy(&address->storage, ai->ai_addr, ai->ai_addrlen);
                    address->length = ai->ai_addrlen;
                    break;
                }
            l.lookup.reset();
            if (!address) {
                counters(l).failures[failure_resolve].add();
                schedule_retry(l, fmt::format("cannot resolve {}: {}", entry(l).dial_host,
                                              status == 0 ? "no IPv4 or IPv6 address" : gai_strerror(status)));
                wake(l.retry_at_ns);
                continue;
            }
            dial(l, *address);
            continue;
        }
        if (now >= l.retry_at_ns) {
            start_dial(l);
            if (!l.conn) wake(l.lookup ? now + 20'000'000 : l.retry_at_ns);
        } else {
            wake(l.retry_at_ns);
        }
    }
    if (next_wake != 0) _pool->wake_at(next_wake);
    return false;
}

void mesh_links::start_dial(link& l) noexcept {
    const mesh_entry& e = entry(l);
    if (auto address = literal_address(e.dial_host, e.port)) {
        dial(l, *address);
        return;
    }
    auto lookup = std::make_unique<resolving>();
    lookup->name = e.dial_host;
    lookup->service = std::to_string(e.port);
    lookup->hints.ai_socktype = SOCK_STREAM;
    lookup->hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    lookup->request.ar_name = lookup->name.c_str();
    lookup->request.ar_service = lookup->service.c_str();
    lookup->request.ar_request = &lookup->hints;
    if (const int rc = getaddrinfo_a(GAI_NOWAIT, lookup->list, 1, nullptr); rc != 0) {
        counters(l).failures[failure_resolve].add();
        schedule_retry(l, fmt::format("cannot start resolving {}: {}", e.dial_host, gai_strerror(rc)));
        return;
    }
    lookup->started = true;
    l.lookup = std::move(lookup);
}

void mesh_links::dial(link& l, const ring::socket_address& address) noexcept {
    const mesh_entry& e = entry(l);
    client::client_options options;
    options.key = _shared.settings.server_private;
    options.mesh_key = _shared.settings.mesh_key;
    options.host = e.host;
    options.watch_conns = true;
    options.tls_context = _config.contexts[l.peer];
    auto conn = _pool->dial(address, options);
    if (!conn) {
        counters(l).failures[1].add();
        schedule_retry(l, fmt::format("cannot connect to {}: {}", address.to_string(),
                                      errno != 0 ? std::strerror(errno) : "no free connection slot"));
        return;
    }
    _shard.set_write_timeout(*conn, _config.write_timeout_ns);
    l.conn = conn;
    l.ready = l.accepted = l.self = l.logged_connected = false;
    l.failure.reset();
    l.keys.clear();
    l.dial_deadline_ns = _shard.now_ns() + static_cast<std::uint64_t>(_config.dial_timeout_ns);
    arm(l);
    ring::log(log_level::debug, "mesh {}: dialling {}", e.host, address.to_string());
}

void mesh_links::schedule_retry(link& l, std::string_view why) noexcept {
    ++l.failures_in_row;
    const std::uint64_t jitter = splitmix64(_rng_state) % static_cast<std::uint64_t>(std::max<std::int64_t>(_config.retry_jitter_ns, 1));
    const std::uint64_t delay = static_cast<std::uint64_t>(_config.retry_ns) + jitter;
    l.retry_at_ns = _shard.now_ns() + delay;
    // Every failure is logged (one line per attempt, every 5 s at most): an operator reads
    // what the peer answered.
    ring::log(log_level::warn, "mesh {}: {}; retrying in {:.1f}s{}", entry(l).host, why,
              static_cast<double>(delay) / 1e9,
              l.failures_in_row > 1 ? fmt::format(" (failure {} in a row)", l.failures_in_row) : std::string());
}

void mesh_links::arm(link& l) noexcept {
    if (!l.conn) return;
    std::uint64_t at = l.ready ? l.last_heard_ns + static_cast<std::uint64_t>(_config.silence_timeout_ns)
                               : l.dial_deadline_ns;
    if (l.ready && !l.logged_connected && !l.self) at = std::min(at, l.log_at_ns);
    _pool->arm_tick(*l.conn, at);
}

void mesh_links::heard(conn_id conn) noexcept {
    if (link* l = find(conn)) l->last_heard_ns = _shard.now_ns();
}

void mesh_links::on_ready(conn_id conn, const node_key& server_key) noexcept {
    link* l = find(conn);
    if (l == nullptr) return;
    const std::uint64_t now = _shard.now_ns();
    l->ready = true;
    l->ready_ns = now;
    l->last_heard_ns = now;
    l->failures_in_row = 0;
    l->log_at_ns = now + 2'000'000'000;  // derper: about 2 s after connecting
    auto& c = counters(*l);
    c.connects.add();
    if (l->ever_connected) c.reconnects.add();
    l->ever_connected = true;
    if (server_key == _shared.settings.server_public) {
        // Our own entry: the far end ignores our WatchConns (spec 2.8) and so do we; the
        // connection stays open, unused, as derper's does.
        l->self = true;
        c.up.set(1);
        ring::log(log_level::info, "mesh {}: this is this node (same server key); not watching", entry(*l).host);
    }
    arm(*l);
}

void mesh_links::on_packet(conn_id conn, const node_key&, std::span<const std::uint8_t>) noexcept {
    // Nobody sends packets to a server's key on purpose; the peer's relay may still deliver one.
    heard(conn);
}

void mesh_links::on_keep_alive(conn_id conn) noexcept { heard(conn); }

void mesh_links::on_peer_present_info(conn_id conn, const peer_present_view& view) noexcept {
    link* l = find(conn);
    if (l == nullptr || l->self) return;
    const std::uint64_t now = _shard.now_ns();
    l->last_heard_ns = now;
    if (!l->accepted) {
        // The snapshot starts: the peer took our WatchConns, so it took our mesh key.
        l->accepted = true;
        counters(*l).up.set(1);
    }
    l->keys.insert(view.key);
    counters(*l).keys.set(l->keys.size());
    tell_owner(view.key, l->peer, true);
    if (!l->logged_connected) {
        // derper logs 200 ms after the last announcement of the snapshot, 2 s at the latest.
        l->log_at_ns = std::min(l->ready_ns + 2'000'000'000, now + 200'000'000);
        arm(*l);
    }
}

void mesh_links::on_peer_gone(conn_id conn, const node_key& key, peer_gone_reason reason) noexcept {
    link* l = find(conn);
    if (l == nullptr || l->self) return;
    l->last_heard_ns = _shard.now_ns();
    if (reason != peer_gone_reason::disconnected && reason != peer_gone_reason::not_here)
        ring::log(log_level::info, "mesh {}: PeerGone for {} with unknown reason {}", entry(*l).host,
                  key.to_string(), static_cast<unsigned>(reason));
    // NotHere comes back for a forward to a key the peer no longer has: withdraw it as well.
    l->keys.erase(key);
    counters(*l).keys.set(l->keys.size());
    tell_owner(key, l->peer, false);
}

void mesh_links::on_tick(conn_id conn) noexcept {
    link* l = find(conn);
    if (l == nullptr) return;
    const std::uint64_t now = _shard.now_ns();
    if (!l->ready) {
        if (now >= l->dial_deadline_ns) {
            l->failure = failure_timeout;
            _pool->close(conn);
            return;
        }
    } else {
        if (!l->self && !l->logged_connected && now >= l->log_at_ns) {
            l->logged_connected = true;
            ring::log(log_level::info, "mesh {}: connected; {} peers", entry(*l).host, l->keys.size());
        }
        if (now >= l->last_heard_ns + static_cast<std::uint64_t>(_config.silence_timeout_ns)) {
            l->failure = failure_timeout;
            _pool->close(conn);
            return;
        }
    }
    arm(*l);
}

void mesh_links::on_closed(conn_id conn, client::client_failure failure) noexcept {
    link* l = find(conn);
    if (l == nullptr) return;
    // A dial that ran out of time is a timeout, whichever layer's deadline closed it.
    if (!l->ready && !l->failure && _shard.now_ns() >= l->dial_deadline_ns) l->failure = failure_timeout;
    const std::size_t reason = l->failure.value_or(failure_index(failure));
    auto& c = counters(*l);
    c.failures[reason].add();
    c.up.set(0);
    c.keys.set(0);
    const bool was_ready = l->ready;
    const bool was_accepted = l->accepted;
    const std::size_t keys = l->keys.size();
    l->keys.clear();
    l->conn.reset();
    l->ready = l->accepted = false;
    drop_queue(*l);
    if (was_ready && !l->self) {
        // Every key learned from this peer is withdrawn (derper's MeshConnBroke, 0xf0): each
        // owner shard walks its own table for the peer.
        for (std::uint32_t s = 0; s < _shared.shards; ++s) {
            auto* m = new derp_service::control{};
            m->kind = derp_service::control::type::mesh_down;
            m->peer = l->peer;
            _derp.send_control(s, m);
        }
    }
    const char* label = admin::mesh_failure_labels[reason].data();
    std::string why;
    if (reason == failure_timeout)
        why = was_ready ? "nothing heard from the peer in time" : "connection not ready in time";
    else if (reason == 7 && !was_accepted && !l->self)
        // A peer without our mesh key closes at our WatchConns (spec 2.8): say so.
        why = fmt::format("closed by the peer {} the handshake ({}): does it have the same mesh key?",
                          was_ready ? "right after" : "during", label);
    else
        why = fmt::format("{} ({})", was_ready ? "connection lost" : "connection failed", label);
    if (was_ready && !l->self) why += fmt::format("; {} keys withdrawn", keys);
    l->self = false;
    if (_stopping) return;
    schedule_retry(*l, why);
}

}  // namespace derp::server
