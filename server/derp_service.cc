// The DERP relay service: see derp_service.hh for the shape, spec sections 1-2 for the rules.
#include "server/derp_service.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "core/bootstrap_dns.hh"
#include "core/derp_upgrade.hh"
#include "core/http_endpoints.hh"
#include "core/http_request.hh"
#include "ring/log.hh"
#include "admin/varz.hh"

namespace derp::server {

namespace {

using ring::conn_id;
using ring::message;
using ring::log_level;

// Message kinds on the rings between shards.
constexpr std::uint16_t kind_packet = ring::message_kind_service_base + 0;
//   ptr = frame bytes in the sender's transfer buffer; u32 = destination slot;
//   u64 = destination gen | frame_bytes << 32 | disco << 63; u64b = buffer index | class << 32
constexpr std::uint16_t kind_buffer_return = ring::message_kind_service_base + 1;
//   ptr = frame bytes; u64b = buffer index | class << 32
constexpr std::uint16_t kind_control = ring::message_kind_service_base + 2;
//   ptr = derp_service::control*, freed by the receiver

constexpr std::size_t small_frame_bytes_max = 2048;
constexpr std::size_t large_frame_bytes_max = recv_packet_frame_bytes(packet_bytes_max);
// Packets waiting for space in a full ring, over all destinations, before new ones are dropped.
constexpr std::uint64_t backlog_packets_max = 8192;
// Payload accepted for frames the server reads (SendPacket/ForwardPacket are the largest).
constexpr std::size_t read_payload_bytes_max = 2 * key_bytes + packet_bytes_max;

std::uint64_t splitmix64(std::uint64_t& state) noexcept {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The value of query parameter `name` (no percent-decoding: DNS names need none).
std::optional<std::string_view> query_value(std::string_view query, std::string_view name) {
    while (!query.empty()) {
        const auto amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        const auto eq = pair.find('=');
        if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    }
    return std::nullopt;
}

std::string format_addr(const ip16& ip, std::uint16_t port) {
    char text[INET6_ADDRSTRLEN] = {};
    static constexpr std::uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(ip.data(), v4_prefix, 12) == 0) {
        inet_ntop(AF_INET, ip.data() + 12, text, sizeof text);
        return fmt::format("{}:{}", text, port);
    }
    inet_ntop(AF_INET6, ip.data(), text, sizeof text);
    return fmt::format("[{}]:{}", text, port);
}

}  // namespace

struct derp_service::control {
    enum class type : std::uint8_t {
        reg,        // conn shard -> owner: a handshake finished
        reg_ack,    // owner -> conn shard: routes are published; send ServerInfo
        unreg,      // conn shard -> owner: the connection ended
        activity,   // conn shard -> owner: a duplicate spoke
        route,      // owner -> every shard: the key's route changed
        dup_flag,   // owner -> conn shard: the connection is (no longer) a duplicate
        watch,      // watcher shard -> every shard: send me your keys, then changes
        unwatch,    // watcher shard -> every shard: the watcher is gone
        presence,   // owner -> watcher shard: PeerPresent / PeerGone for one watcher
        close_key,  // mesh shard -> every shard: ClosePeer
        traffic_request,  // streamer's shard -> every shard: send me your clients' counters
        traffic_reply,    // every shard -> streamer's shard: rows (in `rows`)
    };
    type kind;
    node_key key;
    conn_ref conn;     // the subject connection (or the watcher for watch/unwatch/presence)
    conn_ref active;   // route: the active connection
    route_state state = route_state::gone;
    presence_info info;
    bool flag = false;  // dup_flag: is duplicate; presence: present (else gone)
    std::vector<traffic_row> rows;  // traffic_reply
};

std::uint32_t derp_service::owner_of(const node_key& key, std::uint32_t shard_count) noexcept {
    return static_cast<std::uint32_t>(node_key_hash{}(key) % shard_count);
}

derp_service::derp_service(ring::shard& sh, derp_shared& shared)
    : _shard(sh),
      _shared(shared),
      _settings(shared.settings),
      _counters(shared.counters[sh.index()]),
      _box(shared.settings.server_private),
      _backlog(sh.thread_count()),
      _rng_state(ring::monotonic_ns() ^ (std::uint64_t{sh.index()} << 48)) {
    _shared.ring_counters[sh.index()] = &sh.counters();
    _transfer[0] = std::make_unique<ring::buffer_pool>(_settings.small_transfer_buffers,
                                                       static_cast<std::uint32_t>(small_frame_bytes_max));
    _transfer[1] = std::make_unique<ring::buffer_pool>(
        _settings.large_transfer_buffers, static_cast<std::uint32_t>(large_frame_bytes_max));
}

derp_service::~derp_service() {
    for (auto* c : _local_controls) delete c;
    for (auto& per_shard : _backlog)
        for (const auto& m : per_shard) discard_message(m);
}

derp_service::client* derp_service::find(conn_id conn) noexcept {
    if (conn.slot >= _clients.size()) return nullptr;
    client& c = _clients[conn.slot];
    return c.open && c.gen == conn.gen ? &c : nullptr;
}

derp_service::client* derp_service::find(const conn_ref& ref) noexcept {
    if (ref.shard != _shard.index()) return nullptr;
    return find(conn_id{ref.slot, ref.gen});
}

// ---------------------------------------------------------------------------------------------
// Connection lifecycle.

void derp_service::on_accept(conn_id conn, const sockaddr_storage& peer) noexcept {
    if (_clients.size() <= conn.slot) _clients.resize(conn.slot + 1);
    client& c = _clients[conn.slot];
    c = client{};
    c.gen = conn.gen;
    c.open = true;
    c.connected_ns = _shard.now_ns();
    // The address as derper records it: IPv6 form, IPv4 mapped (PeerPresent, logs).
    if (peer.ss_family == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&peer);
        std::array<std::uint8_t, 4> v4{};
        std::memcpy(v4.data(), &sin->sin_addr, 4);
        c.ip = ipv4_mapped(v4);
        c.port = ntohs(sin->sin_port);
    } else if (peer.ss_family == AF_INET6) {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&peer);
        std::memcpy(c.ip.data(), &sin6->sin6_addr, 16);
        c.port = ntohs(sin6->sin6_port);
    }
    _counters.accepts.add();
    if (_tls == nullptr || !_tls->is_tls(conn)) _counters.plain_accepts.add();
    _shard.arm_timer(conn, timer_deadline,
                     _shard.now_ns() + static_cast<std::uint64_t>(_settings.http_header_timeout_ns));
}

void derp_service::on_closed(conn_id conn, ring::close_cause cause) noexcept {
    client* found = find(conn);
    if (found == nullptr) return;
    client& c = *found;
    if (cause == ring::close_cause::peer_closed && c.partial_input && c.stage != phase::http) {
        // An end of stream between frames is an orderly goodbye; inside one, derper logs it.
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "derp: {}{}: unexpected EOF inside a frame ({} recent)",
                      format_addr(c.ip, c.port),
                      c.stage == phase::relay ? fmt::format(" nodekey:{}", c.key.to_string())
                                              : std::string(" receive client key"),
                      n);
    }
    if (cause == ring::close_cause::write_timeout && c.stage == phase::relay) {
        _counters.sclient_write_timeouts.add();
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "derp client {}: sender failed: write timeout ({} recent)",
                      format_addr(c.ip, c.port), n);
    }
    if (c.stage == phase::relay || c.stage == phase::registering) {
        // Unregister with the key's owner, and stop watching.
        auto* m = new control{};
        m->kind = control::type::unreg;
        m->key = c.key;
        m->conn = ref_of(conn);
        send_control(owner_of(c.key, _shared.shards), m);
        if (c.watcher) {
            for (std::uint32_t s = 0; s < _shared.shards; ++s) {
                auto* w = new control{};
                w->kind = control::type::unwatch;
                w->conn = ref_of(conn);
                send_control(s, w);
            }
            _counters.watchers.sub();
        }
        for (const auto& src : c.seen_sources) {
            auto it = _peer_gone_subscribers.find(src);
            if (it == _peer_gone_subscribers.end()) continue;
            auto& list = it->second;
            list.erase(std::remove(list.begin(), list.end(), ref_of(conn)), list.end());
            if (list.empty()) _peer_gone_subscribers.erase(it);
        }
        if (c.stage == phase::relay) {
            _counters.current_connections.sub();
            if (c.preferred) _counters.current_home_connections.sub();
            if (c.not_ideal) _counters.current_notideal_connections.sub();
        }
    }
    if (c.tls_active != 0) _counters.tls_active_version[c.tls_active - 1].sub();
    drop_queued(c, drop_reason::gone_disconnected);
    if (c.stage == phase::traffic) _traffic.erase((std::uint64_t{conn.slot} << 32) | conn.gen);
    if (c.is_dup) --_local_dups;
    _pending_server_info.erase(conn.slot);
    c = client{};
}

void derp_service::on_timer(conn_id conn, std::uint8_t timer_id) noexcept {
    client* c = find(conn);
    if (c == nullptr) return;
    if (timer_id == timer_deadline && c->stage == phase::http && c->partial_input) {
        // A request head that never finished arriving (a slow or stalled sender): say so.
        _counters.handshake_timeouts.add();
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "http: {}: request head not complete in time; 408 ({} recent)",
                      format_addr(c->ip, c->port), n);
        respond(conn, *c, go_http_error(408, "Request Timeout", static_cast<std::int64_t>(std::time(nullptr))), false);
        return;
    }
    if (timer_id == timer_deadline) {
        _counters.handshake_timeouts.add();
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "derp: {}: {} not complete in time; closing ({} recent)",
                      format_addr(c->ip, c->port),
                      c->stage == phase::http ? "HTTP request" : "handshake", n);
        _shard.close(conn);
        return;
    }
    if (timer_id == timer_keepalive && c->stage == phase::traffic) {
        request_traffic_snapshot(conn);
        return;
    }
    if (timer_id == timer_keepalive) {
        std::array<std::uint8_t, keep_alive_frame_bytes> frame{};
        encode_keep_alive(frame);
        queue_control(conn, *c, frame);
        const std::uint64_t jitter =
            splitmix64(_rng_state) % static_cast<std::uint64_t>(_settings.keepalive_jitter_ns);
        _shard.arm_timer(conn, timer_keepalive,
                         _shard.now_ns() + static_cast<std::uint64_t>(_settings.keepalive_ns) + jitter);
    }
}

void derp_service::protocol_close(conn_id conn, client& c, close_reason reason) noexcept {
    _counters.protocol_closes[static_cast<std::size_t>(reason)].add();
    if (auto n = _close_log.allow(_shard.now_ns()))
        ring::log(log_level::info, "derp: {}{}: closing: {} ({} recent)", format_addr(c.ip, c.port),
                  c.stage == phase::relay ? fmt::format(" nodekey:{}", c.key.to_string()) : "",
                  to_string(reason), n);
    _shard.close(conn);
}

// ---------------------------------------------------------------------------------------------
// Input.

std::size_t derp_service::on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    client* found = find(conn);
    if (found == nullptr) return bytes.size();
    client& c = *found;
    if (c.stage == phase::traffic) return bytes.size();  // a /debug/traffic stream reads nothing
    c.bytes_in += bytes.size();
    std::size_t used = 0;
    // One call may carry the request, ClientInfo and the first frames (fast start pipelines
    // them all in one write): each phase takes what it can and hands the rest on.
    while (used < bytes.size() && find(conn) != nullptr) {
        const auto rest = bytes.subspan(used);
        std::size_t n = 0;
        switch (c.stage) {
        case phase::http: n = handle_http(conn, c, rest); break;
        case phase::handshake: n = handle_handshake(conn, c, rest); break;
        case phase::registering:
            // Frames pipelined behind ClientInfo wait until the owner has registered the
            // client (reg_ack replays them): derper registers before it reads (spec 1.4).
            break;
        case phase::relay: n = handle_frames(conn, c, rest); break;
        case phase::traffic: break;  // returned above
        }
        if (n == 0) break;
        used += n;
    }
    if (find(conn) == nullptr) return bytes.size();
    c.partial_input = c.stage != phase::registering && (used < bytes.size() || c.skip_bytes > 0);
    return used;
}

void derp_service::respond(conn_id conn, client& c, std::string response, bool keep_alive) noexcept {
    c.control_out += response;
    _shard.want_write(conn);
    if (!keep_alive) {
        _shard.close_after_flush(conn);
        return;
    }
    // The next request on this connection gets a fresh deadline, as Go's per-request ReadTimeout.
    _shard.arm_timer(conn, timer_deadline, _shard.now_ns() + static_cast<std::uint64_t>(_settings.http_header_timeout_ns));
}

std::size_t derp_service::handle_http(conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept {
    if (c.http_body_skip > 0) {  // the body of the previous request on this connection
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(c.http_body_skip, in.size()));
        c.http_body_skip -= n;
        return n;
    }
    http_request request;
    const http_parse parsed = parse_http_request(in, request);
    if (parsed.status == http_parse_status::need_more) return 0;
    _counters.http_requests.add();
    if (parsed.status == http_parse_status::error) {
        _counters.http_errors.add();
        std::string response(http_error_response_bytes_max, '\0');
        response.resize(encode_http_error_response(
            {reinterpret_cast<std::uint8_t*>(response.data()), response.size()}, parsed.error_status,
            parsed.error_text));
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "http: {}: {} {} ({} recent)", format_addr(c.ip, c.port),
                      parsed.error_status, parsed.error_text, n);
        respond(conn, c, std::move(response), false);
        return in.size();
    }
    const std::size_t head = request.head_bytes;
    const auto unix_seconds = static_cast<std::int64_t>(std::time(nullptr));
    // Go keeps HTTP/1.1 connections open between requests unless told otherwise; a body we
    // cannot frame (chunked, or a bad length) ends the connection after the answer.
    const http_body body = http_request_body(request);
    const auto connection = request.header("Connection");
    bool keep_alive = request.version_minor >= 1 && !(connection && ascii_iequals(*connection, "close"));
    if (body.kind == http_body_kind::content_length) c.http_body_skip = body.content_length;
    else if (body.kind != http_body_kind::none) keep_alive = false;

    http_route_context context;
    context.unix_seconds = unix_seconds;
    context.serve_derp = _settings.serve_derp;
    context.hostname = _settings.hostname;
    context.debug_allowed = debug_access_allowed(c.ip, request.header("X-Forwarded-For").has_value(),
                                                 _settings.debug_policy, request.method,
                                                 query_value(request.query, "debugkey"));
    if (_settings.tls_mode && _shard.listener_tag(conn) == listener_port80) {
        _counters.port80_requests.add();
        if (auto answer = route_port80(request, context.debug_allowed, unix_seconds)) {
            respond(conn, c, std::move(*answer), keep_alive);
            return keep_alive ? head : in.size();
        }
    }
    // derper counts every request it serves over TLS by the connection's version.
    std::size_t tls_index = 0;
    const bool over_tls = _tls != nullptr && _tls->is_tls(conn);
    if (over_tls) {
        tls_index = tls::version_index(_tls->tls_version(conn));
        _counters.tls_request_version[tls_index].add();
    }
    http_route_result routed = route_http_request(request, context);
    switch (routed.route) {
    case http_route::derp: {
        const derp_upgrade upgrade = classify_derp_upgrade(request);
        if (upgrade.kind == upgrade_kind::derp) {
            c.http_body_skip = 0;  // after the upgrade the stream is DERP frames
            c.not_ideal = upgrade.not_ideal;
            c.stage = phase::handshake;
            if (over_tls) {
                c.tls_active = static_cast<std::uint8_t>(tls_index + 1);
                _counters.tls_active_version[tls_index].add();
            }
            c.handshake = std::make_unique<server_handshake>(_settings.server_public, _settings.mesh_key, _box);
            std::array<std::uint8_t, handshake_start_bytes_max> start{};
            const std::size_t n = c.handshake->start(start, upgrade.fast_start);
            queue_control(conn, c, std::span<const std::uint8_t>(start.data(), n));
            _shard.set_write_timeout(conn, _settings.handshake_timeout_ns);
            _shard.arm_timer(conn, timer_deadline,
                             _shard.now_ns() + static_cast<std::uint64_t>(_settings.handshake_timeout_ns));
            return head;
        }
        // No DERP upgrade (WebSocket DERP comes with its own issue): derper's 426.
        std::string response(derp_426_response_bytes, '\0');
        encode_derp_426({reinterpret_cast<std::uint8_t*>(response.data()), response.size()}, unix_seconds);
        respond(conn, c, std::move(response), keep_alive);
        return keep_alive ? head : in.size();
    }
    case http_route::debug: {
        if (request.path == "/debug/varz") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}}};
            respond(conn, c, go_http_response(200, headers, admin::render_varz(_shared), unix_seconds, request.method == "HEAD"),
                    keep_alive);
        } else if (request.path == "/debug/traffic") {
            // Streams JSON lines every 2 s until the client goes (derper's /debug/traffic).
            // A streamed body: no Content-Length; the end of the connection ends it.
            const std::array<http_header_field, 2> headers = {{{"Connection", "close"},
                                                               {"Content-Type", "text/plain; charset=utf-8"}}};
            std::string head_text = go_http_response(200, headers, "", unix_seconds, true);
            c.control_out += head_text;
            _shard.want_write(conn);
            c.stage = phase::traffic;
            _shard.cancel_timer(conn, timer_deadline);
            request_traffic_snapshot(conn);
            return in.size();
        } else if (request.path == "/debug/vars") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "application/json; charset=utf-8"}}};
            respond(conn, c, go_http_response(200, headers, admin::render_debug_vars(_shared), unix_seconds, request.method == "HEAD"),
                    keep_alive);
        } else if (request.path == "/debug/check") {
            auto [status, text] = admin::render_debug_check(_shared);
            respond(conn, c, status == 200 ? go_http_response(200, {}, text, unix_seconds, request.method == "HEAD", true)
                                           : go_http_error(status, text, unix_seconds, request.method == "HEAD"),
                    keep_alive);
        } else if (request.path == "/debug/" || request.path == "/debug") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/html; charset=utf-8"}}};
            respond(conn, c, go_http_response(200, headers, admin::render_debug_index(_shared), unix_seconds,
                                              request.method == "HEAD"),
                    keep_alive);
        } else {
            respond(conn, c, go_http_error(404, "404 page not found", unix_seconds), keep_alive);
        }
        return keep_alive ? head : in.size();
    }
    case http_route::bootstrap_dns:
        respond(conn, c, answer_bootstrap_dns(request, c, unix_seconds), false);  // Connection: close
        return in.size();
    case http_route::respond:
        respond(conn, c, std::move(routed.response), keep_alive);
        return keep_alive ? head : in.size();
    }
    return in.size();
}


void derp_service::request_traffic_snapshot(conn_id conn) noexcept {
    const conn_ref streamer = ref_of(conn);
    const std::uint64_t id = (std::uint64_t{streamer.slot} << 32) | streamer.gen;
    traffic_collection& t = _traffic[id];
    if (t.pending > 0) return;  // the previous round is still being collected
    t.rows.clear();
    t.pending = _shared.shards;
    for (std::uint32_t s = 0; s < _shared.shards; ++s) {
        auto* m = new control{};
        m->kind = control::type::traffic_request;
        m->conn = streamer;
        send_control(s, m);
    }
}

void derp_service::report_traffic(const conn_ref& streamer, std::vector<traffic_row>& rows) noexcept {
    client* c = find(streamer);
    if (c == nullptr || c->stage != phase::traffic) return;
    const conn_id conn{streamer.slot, streamer.gen};
    std::string lines;
    for (const traffic_row& r : rows) {
        auto& last = c->traffic_last[r.key];
        if (r.sent == last.first && r.recv == last.second) continue;  // only what grew
        last = {r.sent, r.recv};
        lines += fmt::format("{{\"Sent\":{},\"Recv\":{},\"Key\":\"nodekey:{}\"", r.sent, r.recv, r.key.to_string());
        if (r.unique_senders > 0) lines += fmt::format(",\"UniqueSenders\":{}", r.unique_senders);
        lines += "}\n";
    }
    lines += "\n";
    c->control_out += lines;
    _shard.want_write(conn);
    _shard.arm_timer(conn, timer_keepalive, _shard.now_ns() + 2'000'000'000);
}

std::string derp_service::answer_bootstrap_dns(const http_request& request, const client& c, std::int64_t unix_seconds) {
    _counters.bootstrap_dns_requests.add();
    const bool head = request.method == "HEAD";
    std::shared_ptr<const bootstrap_snapshot> snapshot;
    if (_shared.bootstrap != nullptr) snapshot = _shared.bootstrap->current();
    const auto q = query_value(request.query, "q");
    if (q && !q->empty() && snapshot) {
        if (_bootstrap_queried.size() > 500) _bootstrap_queried.clear();
        _bootstrap_queried.emplace(*q);
        _counters.bootstrap_dns_queried_domains.set(_bootstrap_queried.size());
        const std::string name(*q);
        if (auto it = snapshot->unpublished.find(name); it != snapshot->unpublished.end()) {
            _counters.bootstrap_dns_unpublished_hits.add();
            static constexpr std::uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            static constexpr ip16 loopback6 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
            const bool loopback = c.ip == loopback6 ||
                                  (std::equal(c.ip.begin(), c.ip.begin() + 12, std::begin(v4_prefix)) && c.ip[12] == 127);
            const double coin = static_cast<double>(splitmix64(_rng_state) >> 11) / 9007199254740992.0;
            if (rollout_selects(it->second.percent, c.ip, loopback, coin))
                return bootstrap_dns_response(format_bootstrap_json({{name, it->second.addresses}}), unix_seconds, head);
            _counters.bootstrap_dns_unpublished_percent_misses.add();
        }
        if (auto it = snapshot->published.find(name); it != snapshot->published.end()) {
            if (!it->second.empty()) _counters.bootstrap_dns_published_hits.add();
            else _counters.bootstrap_dns_published_misses.add();
        } else if (snapshot->unpublished.find(name) == snapshot->unpublished.end()) {
            _counters.bootstrap_dns_unpublished_misses.add();
        }
    }
    return bootstrap_dns_response(snapshot ? std::string_view(snapshot->published_json) : std::string_view(),
                                  unix_seconds, head);
}

std::size_t derp_service::handle_handshake(conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept {
    const handshake_step step = c.handshake->feed(in);
    if (std::holds_alternative<handshake_need_more>(step)) return 0;
    if (const auto* closed = std::get_if<handshake_close>(&step)) {
        protocol_close(conn, c, closed->reason);
        return in.size();
    }
    const auto& accepted = std::get<handshake_accepted>(step);
    c.key = accepted.client_key;
    c.can_mesh = accepted.can_mesh;
    c.is_prober = accepted.info.is_prober;
    c.handshake.reset();
    c.stage = phase::registering;
    _shard.cancel_timer(conn, timer_deadline);
    _shard.set_write_timeout(conn, c.can_mesh ? _settings.mesh_write_timeout_ns : _settings.write_timeout_ns);
    // ServerInfo waits until the owner has published the route (reg_ack): a client that has
    // its ServerInfo is reachable from every shard.
    _pending_server_info[conn.slot] = accepted.server_info_frame;
    auto* m = new control{};
    m->kind = control::type::reg;
    m->key = c.key;
    m->conn = ref_of(conn);
    m->info.ip = c.ip;
    m->info.port = c.port;
    m->info.flags = peer_present_flags(c.can_mesh, c.is_prober, c.not_ideal);
    send_control(owner_of(c.key, _shared.shards), m);
    return accepted.bytes_consumed;
}

std::size_t derp_service::handle_frames(conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept {
    std::size_t used = 0;
    while (used < in.size()) {
        if (c.skip_bytes > 0) {
            const std::size_t n = static_cast<std::size_t>(
                std::min<std::uint64_t>(c.skip_bytes, in.size() - used));
            c.skip_bytes -= n;
            used += n;
            continue;
        }
        const auto rest = in.subspan(used);
        const frame_parse frame = parse_frame(rest, read_payload_bytes_max);
        if (frame.status == frame_parse_status::need_more) break;
        if (auto checked = check_client_frame(frame.header, c.can_mesh); !checked) {
            protocol_close(conn, c, checked.error());
            return in.size();
        }
        if (frame.status == frame_parse_status::too_large) {
            // check_client_frame accepted it, so it is a frame the server skips unread
            // (unknown types have no size cap in derper): discard it as it streams by.
            _counters.unknown_frames.add();
            c.skip_bytes = frame.header.payload_bytes;
            used += frame_header_bytes;
            continue;
        }
        used += frame.frame_bytes;
        if (!handle_frame(conn, c, frame.header, frame.payload)) return in.size();
    }
    return used;
}

bool derp_service::handle_frame(conn_id conn, client& c, const frame_header& header,
                                std::span<const std::uint8_t> payload) noexcept {
    // A duplicate that speaks while another connection of its key is active tells the owner
    // (spec 2.2, "last writer is active"); once per route change.
    if (c.is_dup && !c.activity_reported && c.stage == phase::relay) {
        auto it = _routes.find(c.key);
        if (it == _routes.end() || !(it->second.conn == ref_of(conn)) ||
            it->second.state != route_state::active) {
            c.activity_reported = true;
            auto* m = new control{};
            m->kind = control::type::activity;
            m->key = c.key;
            m->conn = ref_of(conn);
            send_control(owner_of(c.key, _shared.shards), m);
        }
    }
    switch (header.type) {
    case frame_type::send_packet: {
        auto view = decode_send_packet(payload);
        if (!view) {
            protocol_close(conn, c, view.error());
            return false;
        }
        const packet_kind kind = looks_like_disco(view->packet) ? packet_kind::disco : packet_kind::other;
        _counters.packets_received.add();
        _counters.bytes_received.add(view->packet.size());
        _counters.packets_received_kind[static_cast<std::size_t>(kind)].add();
        relay_packet(c, c.key, view->dst, view->packet, false);
        return find(conn) != nullptr;
    }
    case frame_type::forward_packet: {
        auto view = decode_forward_packet(payload);
        if (!view) {
            protocol_close(conn, c, view.error());
            return false;
        }
        _counters.packets_forwarded_in.add();
        relay_packet(c, view->src, view->dst, view->packet, true);
        return find(conn) != nullptr;
    }
    case frame_type::note_preferred: {
        auto preferred = decode_note_preferred(payload);
        if (!preferred) {
            protocol_close(conn, c, preferred.error());
            return false;
        }
        if (*preferred != c.preferred) {
            c.preferred = *preferred;
            if (c.stage == phase::relay) {
                if (c.preferred) _counters.current_home_connections.add();
                else _counters.current_home_connections.sub();
            }
            if (_shard.now_ns() - c.connected_ns > 5'000'000'000) {
                if (c.preferred) _counters.home_moves_in.add();
                else _counters.home_moves_out.add();
            }
        }
        return true;
    }
    case frame_type::watch_conns: {
        if (auto ok = decode_watch_conns(payload); !ok) {
            protocol_close(conn, c, ok.error());
            return false;
        }
        if (c.key == _settings.server_public) return true;  // the server dialled itself
        if (!c.watcher) {
            c.watcher = true;
            _counters.watchers.add();
        }
        for (std::uint32_t s = 0; s < _shared.shards; ++s) {
            auto* m = new control{};
            m->kind = control::type::watch;
            m->conn = ref_of(conn);
            send_control(s, m);
        }
        return true;
    }
    case frame_type::close_peer: {
        auto target = decode_close_peer(payload);
        if (!target) {
            protocol_close(conn, c, target.error());
            return false;
        }
        ring::log(log_level::info, "derp client {}: frameClosePeer closing peer {}",
                  format_addr(c.ip, c.port), target->to_string());
        for (std::uint32_t s = 0; s < _shared.shards; ++s) {
            auto* m = new control{};
            m->kind = control::type::close_key;
            m->key = *target;
            send_control(s, m);
        }
        return true;
    }
    case frame_type::ping: {
        auto data = decode_ping(payload);
        if (!data) {
            protocol_close(conn, c, data.error());
            return false;
        }
        _counters.got_ping.add();
        // One Pong may be pending; further Pings meanwhile are ignored (spec 2.10).
        if (!c.pending_pong) {
            c.pending_pong = *data;
            _shard.want_write(conn);
        }
        return true;
    }
    default:
        return true;  // every other frame is read and ignored
    }
}

void derp_service::relay_packet(client& from, const node_key& src, const node_key& dst,
                                std::span<const std::uint8_t> packet, bool forwarded) noexcept {
    const packet_kind kind = looks_like_disco(packet) ? packet_kind::disco : packet_kind::other;
    auto it = _routes.find(dst);
    if (it == _routes.end() || it->second.state != route_state::active) {
        const bool dup = it != _routes.end() && it->second.state == route_state::none_active;
        count_drop(dup ? drop_reason::dup_client
                       : forwarded ? drop_reason::unknown_dest_on_fwd : drop_reason::unknown_dest,
                   kind, packet.size());
        if (!dup && kind == packet_kind::disco) {
            // PeerGone(NotHere) to the sender, at most a burst of 3 then 1 per second.
            const std::uint64_t now = _shard.now_ns();
            from.not_here_tokens = std::min(
                3.0, from.not_here_tokens + static_cast<double>(now - from.not_here_refill_ns) / 1e9);
            from.not_here_refill_ns = now;
            if (from.not_here_tokens >= 1.0) {
                from.not_here_tokens -= 1.0;
                const conn_id self{static_cast<std::uint32_t>(&from - _clients.data()), from.gen};
                queue_peer_gone(self, from, dst, peer_gone_reason::not_here);
            }
        }
        return;
    }
    const conn_ref target = it->second.conn;
    const std::size_t frame_bytes = recv_packet_frame_bytes(packet.size());
    const std::uint8_t size_class = frame_bytes <= small_frame_bytes_max ? 0 : 1;
    auto index = _transfer[size_class]->acquire();
    if (!index) {
        _counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::transfer_pool_exhausted)].add();
        return;
    }
    // The one copy: the finished RecvPacket frame, made by the producer.
    std::uint8_t* data = _transfer[size_class]->data(*index).data();
    encode_recv_packet({data, frame_bytes}, src, packet);
    queued_frame frame{data, static_cast<std::uint32_t>(frame_bytes), *index,
                       static_cast<std::uint16_t>(_shard.index()), size_class, _shard.now_ns()};
    if (target.shard == _shard.index()) {
        client* to = find(target);
        if (to == nullptr) {
            count_drop(drop_reason::gone_disconnected, kind, packet.size());
            _transfer[size_class]->release(*index);
            return;
        }
        enqueue(conn_id{target.slot, target.gen}, *to, frame, kind);
        return;
    }
    if (_backlog_packets >= backlog_packets_max && !_backlog[target.shard].empty()) {
        _counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::ring_backlog_full)].add();
        _transfer[size_class]->release(*index);
        return;
    }
    _transfer[size_class]->lend(*index);
    message m;
    m.kind = kind_packet;
    m.u32 = target.slot;
    m.u64 = std::uint64_t{target.gen} | (std::uint64_t{frame.frame_bytes} << 32) |
            (kind == packet_kind::disco ? std::uint64_t{1} << 63 : 0);
    m.u64b = std::uint64_t{*index} | (std::uint64_t{size_class} << 32);
    m.ptr = data;
    _counters.cross_shard_packets.add();
    post_or_backlog(target.shard, m);
}

// ---------------------------------------------------------------------------------------------
// Output.

void derp_service::queue_control(conn_id conn, client& c, std::span<const std::uint8_t> frame) noexcept {
    if (c.stage == phase::registering) {
        c.deferred_out.append(reinterpret_cast<const char*>(frame.data()), frame.size());
        return;
    }
    c.control_out.append(reinterpret_cast<const char*>(frame.data()), frame.size());
    _shard.want_write(conn);
}

void derp_service::queue_peer_gone(conn_id conn, client& c, const node_key& peer,
                                   peer_gone_reason reason) noexcept {
    std::array<std::uint8_t, peer_gone_frame_bytes> frame{};
    encode_peer_gone(frame, peer, reason);
    queue_control(conn, c, frame);
    if (reason == peer_gone_reason::not_here) _counters.peer_gone_not_here_frames.add();
    else _counters.peer_gone_disconnected_frames.add();
}

void derp_service::count_drop(drop_reason reason, packet_kind kind, std::size_t packet_bytes) noexcept {
    _counters.packets_dropped[static_cast<std::size_t>(reason)][static_cast<std::size_t>(kind)].add();
    _counters.bytes_dropped[static_cast<std::size_t>(reason)][static_cast<std::size_t>(kind)].add(packet_bytes);
}

void derp_service::release_transfer(const queued_frame& frame) noexcept {
    if (frame.owner == _shard.index()) {
        _transfer[frame.size_class]->release(frame.buffer_index);
        return;
    }
    // Only the owner recycles its buffers: send it home.
    message m;
    m.kind = kind_buffer_return;
    m.u64b = std::uint64_t{frame.buffer_index} | (std::uint64_t{frame.size_class} << 32);
    m.ptr = frame.data;
    post_or_backlog(frame.owner, m);
}

bool derp_service::enqueue(conn_id conn, client& c, const queued_frame& frame, packet_kind kind) noexcept {
    frame_queue& q = c.queues[static_cast<std::size_t>(kind)];
    if (q.ring.empty()) q.ring.resize(_settings.queue_depth_max);
    const auto depth = static_cast<std::uint32_t>(q.ring.size());
    if (q.count == depth) {
        // Before dropping, let the writer take what it can right now, as derper's concurrent
        // send loop would have: a burst larger than the queue then survives whenever the
        // socket has room.
        _shard.flush_now(conn);
    }
    if (q.count == depth) {
        // A send is in flight: move the oldest frames into the staging buffer, which the next
        // send takes first, instead of dropping them. The queue's 32 slots then bound what
        // waits between two sends, not what one loop turn may receive for a client. A frame
        // partly written already moves first (its remainder), so that the byte stream stays
        // whole: the next send starts with the staging buffer.
        if (c.staged_sent > 0) {
            // Drop what the last sends took, so that the buffer holds only unsent bytes (at
            // most staged_bytes_max plus one frame) however long the receiver stays behind.
            c.staged.erase(c.staged.begin(), c.staged.begin() + static_cast<std::ptrdiff_t>(c.staged_sent));
            c.staged_sent = 0;
        }
        if (c.partial_queue >= 0) {
            frame_queue& pq = c.queues[static_cast<std::size_t>(c.partial_queue)];
            const queued_frame& f = pq.ring[pq.head];
            c.staged.insert(c.staged.end(), f.data + c.partial_sent, f.data + f.frame_bytes);
            note_queue_time(f.enqueued_ns);
            staged_frame_sent(conn, c, f);
            pq.head = (pq.head + 1) % static_cast<std::uint32_t>(pq.ring.size());
            --pq.count;
            _counters.queued_packets.sub();
            c.partial_queue = -1;
            c.partial_sent = 0;
        }
        std::size_t moved = 0;
        while (q.count > 0 && moved < depth / 2) {
            const queued_frame& oldest = q.ring[q.head];
            if (c.staged.size() - c.staged_sent + oldest.frame_bytes > _settings.staged_bytes_max) break;
            c.staged.insert(c.staged.end(), oldest.data, oldest.data + oldest.frame_bytes);
            note_queue_time(oldest.enqueued_ns);
            staged_frame_sent(conn, c, oldest);
            q.head = (q.head + 1) % depth;
            --q.count;
            _counters.queued_packets.sub();
            ++moved;
        }
    }
    if (q.count == depth) {
        // Full: the oldest packet goes (spec 2.5), unless it is being written out right now,
        // in which case the newcomer goes (queue_tail).
        if (c.partial_queue == static_cast<int>(kind)) {
            count_drop(drop_reason::queue_tail, kind, frame.frame_bytes - recv_packet_header_bytes);
            release_transfer(frame);
            return false;
        }
        const queued_frame& oldest = q.ring[q.head];
        note_queue_time(oldest.enqueued_ns);
        count_drop(drop_reason::queue_head, kind, oldest.frame_bytes - recv_packet_header_bytes);
        release_transfer(oldest);
        q.head = (q.head + 1) % depth;
        --q.count;
        _counters.queued_packets.sub();
        q.ring[(q.head + q.count) % depth] = frame;
        ++q.count;
        _counters.queued_packets.add();
        _shard.want_write(conn);
        return false;
    }
    q.ring[(q.head + q.count) % depth] = frame;
    ++q.count;
    _counters.queued_packets.add();
    _shard.want_write(conn);
    return true;
}

// A frame has left its queue for good (into the send buffer, or the staging buffer bound for
// the next send): count it as derper counts a write, subscribe the receiver to the sender's
// departure (spec 2.4), recycle the transfer buffer.
void derp_service::staged_frame_sent(conn_id conn, client& c, const queued_frame& f) noexcept {
    _counters.packets_sent.add();
    _counters.bytes_sent.add(f.frame_bytes - recv_packet_header_bytes);
    node_key src(key_span(f.data + frame_header_bytes, key_bytes));
    if (c.seen_sources.insert(src).second) _peer_gone_subscribers[src].push_back(ref_of(conn));
    release_transfer(f);
}

void derp_service::drop_queued(client& c, drop_reason reason) noexcept {
    for (std::size_t k = 0; k < c.queues.size(); ++k) {
        frame_queue& q = c.queues[k];
        while (q.count > 0) {
            const queued_frame& f = q.ring[q.head];
            count_drop(reason, static_cast<packet_kind>(k), f.frame_bytes - recv_packet_header_bytes);
            release_transfer(f);
            q.head = (q.head + 1) % static_cast<std::uint32_t>(q.ring.size());
            --q.count;
            _counters.queued_packets.sub();
        }
    }
}

std::size_t derp_service::on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept {
    client* found = find(conn);
    if (found == nullptr) return 0;
    client& c = *found;
    std::size_t n = 0;
    std::uint32_t frames_written = 0;
    auto copy_frame_part = [&](frame_queue& q, int which) {
        const queued_frame& f = q.ring[q.head];
        const std::size_t take = std::min<std::size_t>(out.size() - n, f.frame_bytes - c.partial_sent);
        std::memcpy(out.data() + n, f.data + c.partial_sent, take);
        n += take;
        c.partial_sent += static_cast<std::uint32_t>(take);
        if (c.partial_sent < f.frame_bytes) {
            c.partial_queue = which;
            return false;
        }
        // Whole frame handed to the socket buffer: count it, subscribe the receiver to the
        // sender's departure (spec 2.4), recycle the transfer buffer.
        c.partial_queue = -1;
        c.partial_sent = 0;
        ++frames_written;
        note_queue_time(f.enqueued_ns);
        staged_frame_sent(conn, c, f);
        q.head = (q.head + 1) % static_cast<std::uint32_t>(q.ring.size());
        --q.count;
        _counters.queued_packets.sub();
        return true;
    };
    // A frame already partly written goes on first: frames never interleave.
    if (c.partial_queue >= 0) {
        if (!copy_frame_part(c.queues[static_cast<std::size_t>(c.partial_queue)], c.partial_queue)) {
            c.bytes_out += n;
            _shard.want_write(conn);
            return n;
        }
    }
    // Copies what is left of a byte buffer (from `sent` on) into out; true when all of it went.
    auto drain = [&](const auto& pending, std::size_t& sent) {
        const std::size_t take = std::min(out.size() - n, pending.size() - sent);
        std::memcpy(out.data() + n, pending.data() + sent, take);
        n += take;
        sent += take;
        return sent == pending.size();
    };
    // Staged frames next: older than anything still queued, and possibly the rest of a frame
    // begun in the previous send, which nothing may interrupt.
    if (c.staged_sent < c.staged.size()) {
        if (!drain(c.staged, c.staged_sent)) {
            c.bytes_out += n;
            _shard.want_write(conn);
            return n;
        }
        c.staged.clear();
        c.staged_sent = 0;
        if (c.staged.capacity() > 2 * _settings.staged_bytes_max) std::vector<std::uint8_t>().swap(c.staged);
    }
    if (c.pending_pong && c.stage == phase::relay && n + pong_frame_bytes <= out.size()) {
        std::array<std::uint8_t, pong_frame_bytes> frame{};
        encode_pong(frame, *c.pending_pong);
        c.control_out.append(reinterpret_cast<const char*>(frame.data()), frame.size());
        c.pending_pong.reset();
        _counters.sent_pong.add();
    }
    if (c.control_sent < c.control_out.size()) {
        if (!drain(c.control_out, c.control_sent)) {
            c.bytes_out += n;
            _shard.want_write(conn);
            return n;
        }
        c.control_out.clear();
        c.control_out.shrink_to_fit();  // an idle connection keeps no output memory
        c.control_sent = 0;
    }
    // Packets only once the client has its ServerInfo (spec 1.4: it is the first frame).
    if (c.stage == phase::relay) {
        while (n < out.size()) {
            frame_queue& first = c.queues[c.next_queue];
            frame_queue& second = c.queues[c.next_queue ^ 1];
            int which = -1;
            if (first.count > 0) which = c.next_queue;
            else if (second.count > 0) which = c.next_queue ^ 1;
            if (which < 0) break;
            c.next_queue ^= 1;  // take the two queues in turn: no priority, as in derper
            if (!copy_frame_part(c.queues[static_cast<std::size_t>(which)], which)) break;
        }
    }
    c.bytes_out += n;
    if (c.stage == phase::relay && n > 0) {
        // derper's buffered_write_frames: frames per flush (control frames count as one).
        const std::uint32_t frames = frames_written + (n > 0 && frames_written == 0 ? 1u : 0u);
        std::size_t bucket = buffered_write_frames_bounds.size();
        for (std::size_t i = 0; i < buffered_write_frames_bounds.size(); ++i)
            if (frames <= buffered_write_frames_bounds[i]) {
                bucket = i;
                break;
            }
        _counters.buffered_write_frames[bucket].add();
        _counters.buffered_write_frames_sum.add(frames);
    }
    if (c.partial_queue >= 0 || c.queues[0].count > 0 || c.queues[1].count > 0 || c.pending_pong ||
        c.staged_sent < c.staged.size())
        if (c.stage == phase::relay) _shard.want_write(conn);
    return n;
}

// ---------------------------------------------------------------------------------------------
// Messages between shards.

void derp_service::post_or_backlog(std::uint32_t to_shard, const message& m) noexcept {
    auto& backlog = _backlog[to_shard];
    // Once anything waits for this ring, everything after it waits too: order is kept.
    if (backlog.empty() && _shard.post(to_shard, m)) return;
    backlog.push_back(m);
    if (m.kind == kind_packet) ++_backlog_packets;
    _counters.control_backlog.set(backlog.size());
}

void derp_service::send_control(std::uint32_t to_shard, control* c) noexcept {
    if (to_shard == _shard.index()) {
        _local_controls.push_back(c);
        return;
    }
    message m;
    m.kind = kind_control;
    m.ptr = c;
    post_or_backlog(to_shard, m);
}

void derp_service::note_queue_time(std::uint64_t enqueued_ns) noexcept {
    const double sample_ms = static_cast<double>(_shard.now_ns() - std::min(enqueued_ns, _shard.now_ns())) / 1e6;
    _queue_ema_ms = _queue_ema_ms * 0.9 + sample_ms * 0.1;  // derper's alpha
    _counters.average_queue_duration_us.set(static_cast<std::uint64_t>(_queue_ema_ms * 1000.0));
}

void derp_service::sweep_tcp_rtt() noexcept {
    for (std::uint32_t slot = 0; slot < _clients.size(); ++slot) {
        const client& c = _clients[slot];
        if (!c.open || c.stage != phase::relay) continue;
        tcp_info info{};
        socklen_t length = sizeof info;
        const int fd = _shard.fd_of(conn_id{slot, c.gen});
        if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) {
            _counters.tcp_rtt[tcp_rtt_labels.size() - 1].add();  // le="error"
            continue;
        }
        for (std::size_t b = 0; b < tcp_rtt_bounds_us.size(); ++b)
            if (info.tcpi_rtt <= tcp_rtt_bounds_us[b]) {
                _counters.tcp_rtt[b].add();
                break;
            }
    }
}

bool derp_service::on_turn_end() noexcept {
    // derper samples every connection's RTT every 10 s (spec 2.13); here on the first loop turn
    // after each 10 s (keepalives guarantee turns on a busy or idle node alike).
    if (_shard.now_ns() >= _next_rtt_sweep_ns) {
        if (_next_rtt_sweep_ns != 0) sweep_tcp_rtt();
        _next_rtt_sweep_ns = _shard.now_ns() + 10'000'000'000;
    }
    _counters.transfer_buffers_in_use.set(_transfer[0]->in_use() + _transfer[1]->in_use());
    // Controls to ourselves run here, outside any handler, in the order they were made.
    while (!_local_controls.empty()) {
        control* c = _local_controls.front();
        _local_controls.pop_front();
        handle_control(*c);
        delete c;
    }
    bool waiting = false;
    for (std::uint32_t to = 0; to < _backlog.size(); ++to) {
        auto& backlog = _backlog[to];
        while (!backlog.empty() && _shard.post(to, backlog.front())) {
            if (backlog.front().kind == kind_packet) --_backlog_packets;
            backlog.pop_front();
        }
        waiting = waiting || !backlog.empty();
    }
    return waiting;
}

void derp_service::on_message(const message& m) noexcept {
    switch (m.kind) {
    case kind_packet: {
        const conn_id target{m.u32, static_cast<std::uint32_t>(m.u64)};
        queued_frame frame;
        frame.data = static_cast<std::uint8_t*>(m.ptr);
        frame.frame_bytes = static_cast<std::uint32_t>((m.u64 >> 32) & 0x7fffffff);
        frame.buffer_index = static_cast<std::uint32_t>(m.u64b);
        frame.size_class = static_cast<std::uint8_t>(m.u64b >> 32);
        frame.owner = m.from_thread;
        frame.enqueued_ns = _shard.now_ns();
        const packet_kind kind = (m.u64 >> 63) != 0 ? packet_kind::disco : packet_kind::other;
        client* to = find(target);
        if (to == nullptr) {
            count_drop(drop_reason::gone_disconnected, kind, frame.frame_bytes - recv_packet_header_bytes);
            release_transfer(frame);
            return;
        }
        enqueue(target, *to, frame, kind);
        return;
    }
    case kind_buffer_return: {
        const auto size_class = static_cast<std::uint8_t>(m.u64b >> 32);
        _transfer[size_class]->release(static_cast<std::uint32_t>(m.u64b));
        return;
    }
    case kind_control: {
        auto* c = static_cast<control*>(m.ptr);
        handle_control(*c);
        delete c;
        return;
    }
    default:
        return;
    }
}

void derp_service::discard_message(const message& m) noexcept {
    // The runtime stopped with this message undelivered: free what it carries. Transfer
    // buffers need no return: every pool is freed with its shard.
    if (m.kind == kind_control) delete static_cast<control*>(m.ptr);
}

void derp_service::apply_route(const node_key& key, route_state state, conn_ref active) noexcept {
    if (state == route_state::gone) {
        _routes.erase(key);
        // The key left the region: every local client it sent packets to hears PeerGone.
        auto it = _peer_gone_subscribers.find(key);
        if (it != _peer_gone_subscribers.end()) {
            for (const conn_ref& ref : it->second) {
                client* c = find(ref);
                if (c == nullptr) continue;
                c->seen_sources.erase(key);
                queue_peer_gone(conn_id{ref.slot, ref.gen}, *c, key, peer_gone_reason::disconnected);
            }
            _peer_gone_subscribers.erase(it);
        }
    } else {
        _routes[key] = route{state, active};
    }
    // A duplicate on this shard may report activity again after any route change.
    if (_local_dups > 0)
        for (auto& c : _clients)
            if (c.open && c.is_dup && c.key == key) c.activity_reported = false;
}

void derp_service::apply_effects(const node_key& key, conn_ref conn, const registry_effects& fx) noexcept {
    if (fx.route) {
        for (std::uint32_t s = 0; s < _shared.shards; ++s) {
            auto* m = new control{};
            m->kind = control::type::route;
            m->key = key;
            m->state = *fx.route;
            m->active = fx.active;
            send_control(s, m);
        }
    }
    for (const auto& [ref, is_dup] : fx.dup_flags) {
        auto* m = new control{};
        m->kind = control::type::dup_flag;
        m->conn = ref;
        m->flag = is_dup;
        send_control(ref.shard, m);
    }
    if (fx.presence != registry_effects::presence_event::none) {
        for (const conn_ref& w : _watchers) {
            auto* m = new control{};
            m->kind = control::type::presence;
            m->key = key;
            m->conn = w;
            m->flag = fx.presence == registry_effects::presence_event::present;
            m->info = fx.present;
            send_control(w.shard, m);
        }
    }
    _counters.clients_local.set(_registry.key_count());
    (void)conn;
}

void derp_service::handle_control(control& m) noexcept {
    switch (m.kind) {
    case control::type::reg: {
        const std::size_t dup_keys_before = _registry.dup_key_count();
        const registry_effects fx = _registry.add(m.key, m.conn, m.info);
        if (!fx.dup_flags.empty() || _registry.dup_key_count() != dup_keys_before)
            _counters.total_dup_client_conns.add();
        _counters.current_dup_client_keys.set(_registry.dup_key_count());
        _counters.current_dup_client_conns.set(_registry.dup_conn_count());
        apply_effects(m.key, m.conn, fx);
        auto* ack = new control{};
        ack->kind = control::type::reg_ack;
        ack->conn = m.conn;
        send_control(m.conn.shard, ack);
        return;
    }
    case control::type::unreg: {
        const registry_effects fx = _registry.remove(m.key, m.conn);
        _counters.current_dup_client_keys.set(_registry.dup_key_count());
        _counters.current_dup_client_conns.set(_registry.dup_conn_count());
        apply_effects(m.key, m.conn, fx);
        return;
    }
    case control::type::activity: {
        apply_effects(m.key, m.conn, _registry.activity(m.key, m.conn));
        return;
    }
    case control::type::reg_ack: {
        client* c = find(m.conn);
        auto pending = _pending_server_info.find(m.conn.slot);
        if (c == nullptr || pending == _pending_server_info.end()) return;
        const conn_id conn{m.conn.slot, m.conn.gen};
        c->stage = phase::relay;
        _counters.current_connections.add();
        if (c->preferred) _counters.current_home_connections.add();
        if (c->not_ideal) _counters.current_notideal_connections.add();
        queue_control(conn, *c, pending->second);
        _pending_server_info.erase(pending);
        c->control_out += c->deferred_out;
        std::string().swap(c->deferred_out);
        if (c->pending_pong || c->queues[0].count > 0 || c->queues[1].count > 0) _shard.want_write(conn);
        _shard.replay_input(conn);  // frames that arrived while registering
        const std::uint64_t jitter =
            splitmix64(_rng_state) % static_cast<std::uint64_t>(_settings.keepalive_jitter_ns);
        _shard.arm_timer(conn, timer_keepalive,
                         _shard.now_ns() + static_cast<std::uint64_t>(_settings.keepalive_ns) + jitter);
        return;
    }
    case control::type::route:
        apply_route(m.key, m.state, m.active);
        return;
    case control::type::dup_flag: {
        if (client* c = find(m.conn)) {
            if (c->is_dup != m.flag) {
                if (m.flag) ++_local_dups;
                else --_local_dups;
            }
            c->is_dup = m.flag;
            c->activity_reported = false;
        }
        return;
    }
    case control::type::watch: {
        if (std::find(_watchers.begin(), _watchers.end(), m.conn) == _watchers.end())
            _watchers.push_back(m.conn);
        // The snapshot: every key this shard owns with an active connection.
        _registry.for_each_active([&](const node_key& key, const presence_info& info) {
            auto* p = new control{};
            p->kind = control::type::presence;
            p->key = key;
            p->conn = m.conn;
            p->flag = true;
            p->info = info;
            send_control(m.conn.shard, p);
        });
        return;
    }
    case control::type::unwatch:
        _watchers.erase(std::remove(_watchers.begin(), _watchers.end(), m.conn), _watchers.end());
        return;
    case control::type::presence: {
        client* w = find(m.conn);
        if (w == nullptr) return;
        const conn_id conn{m.conn.slot, m.conn.gen};
        if (m.flag) {
            std::array<std::uint8_t, peer_present_frame_bytes> frame{};
            encode_peer_present(frame, m.key, m.info.ip, m.info.port, m.info.flags);
            queue_control(conn, *w, frame);
        } else {
            queue_peer_gone(conn, *w, m.key, peer_gone_reason::disconnected);
        }
        return;
    }
    case control::type::traffic_request: {
        auto* reply = new control{};
        reply->kind = control::type::traffic_reply;
        reply->conn = m.conn;
        for (const auto& c : _clients)
            if (c.open && c.stage == phase::relay)
                reply->rows.push_back({c.key, c.bytes_out, c.bytes_in, c.seen_sources.size()});
        send_control(m.conn.shard, reply);
        return;
    }
    case control::type::traffic_reply: {
        const std::uint64_t id = (std::uint64_t{m.conn.slot} << 32) | m.conn.gen;
        auto it = _traffic.find(id);
        if (it == _traffic.end()) return;
        auto& t = it->second;
        t.rows.insert(t.rows.end(), m.rows.begin(), m.rows.end());
        if (--t.pending > 0) return;
        if (find(m.conn) == nullptr) {
            _traffic.erase(it);
            return;
        }
        report_traffic(m.conn, t.rows);
        return;
    }
    case control::type::close_key: {
        for (std::uint32_t slot = 0; slot < _clients.size(); ++slot) {
            client& c = _clients[slot];
            if (c.open && (c.stage == phase::relay || c.stage == phase::registering) && c.key == m.key)
                _shard.close(conn_id{slot, c.gen});  // no frame to the closed peer (fixture 03)
        }
        return;
    }
    }
}

}  // namespace derp::server
