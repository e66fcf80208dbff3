// The DERP relay service, its core: connection lifecycle, the handshake, the read loop and
// the relay of one packet (spec sections 1-2). The HTTP front (derp_http.cc), a client's output
// (derp_output.cc) and the registry messages between shards (derp_routes.cc) have files of their
// own; derp_service.hh draws the whole.
#include "server/derp_service.hh"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "core/http_request.hh"
#include "server/admission.hh"
#include "server/derp_internal.hh"
#include "server/mesh.hh"
#include "server/ws_layer.hh"

namespace derp::server {

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
    apply_rate_config();
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
    c.out = client_output(_settings.queue_depth_max, std::max(_settings.staged_bytes_max, _settings.staged_burst_bytes_max));
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
    note_unfinished(conn, c);
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
    drop_output(conn, c, drop_reason::gone_disconnected);
    if (c.stage == phase::traffic) _traffic.erase((std::uint64_t{conn.slot} << 32) | conn.gen);
    if (c.is_dup) --_local_dups;
    note_finished(c);
    _pending_server_info.erase(conn.slot);
    c = client{};
}

void derp_service::on_timer(conn_id conn, std::uint8_t timer_id) noexcept {
    client* c = find(conn);
    if (c == nullptr) return;
    if (timer_id == timer_rate && c->stage == phase::relay) {
        if (c->rate_waiting) rate_resume(conn, *c);
        return;
    }
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
        end_connection(conn);
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
    end_connection(conn);
}

void derp_service::end_connection(conn_id conn) noexcept {
    if (_ws != nullptr && _ws->is_websocket(conn)) {
        _ws->close_with(conn, ws_status_internal_error, "closing", admin::ws_close_kind::session_end);
        return;
    }
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
        case phase::admitting:
        case phase::registering:
            // Frames pipelined behind ClientInfo wait until the client is admitted and the
            // owner has registered it (reg_ack replays them): derper registers before it
            // reads (spec 1.4).
            break;
        case phase::relay: n = handle_frames(conn, c, rest); break;
        case phase::traffic: break;  // returned above
        }
        if (n == 0) break;
        used += n;
        if (c.ws_upgraded) {
            // The rest of the input is WebSocket frames: the layer below unframes it.
            c.ws_upgraded = false;
            break;
        }
    }
    if (find(conn) == nullptr) return bytes.size();
    c.partial_input = c.stage != phase::registering && c.stage != phase::admitting &&
                      (used < bytes.size() || c.skip_bytes > 0);
    return used;
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
    c.out.hold_frames();
    _shard.cancel_timer(conn, timer_deadline);
    _shard.set_write_timeout(conn, c.can_mesh ? _settings.mesh_write_timeout_ns : _settings.write_timeout_ns);
    // ServerInfo waits until the owner has published the route (reg_ack): a client that has
    // its ServerInfo is reachable from every shard.
    _pending_server_info[conn.slot] = accepted.server_info_frame;
    if (_shared.admission != nullptr && !c.can_mesh) {
        // Admission (spec 1.4 step 8, 2.11): mesh-key holders skip it; everyone else waits,
        // off this loop, for the admission thread's decision (apply_admissions). The
        // admission thread's own timeout bounds the wait.
        c.stage = phase::admitting;
        _shared.admission->submit(ref_of(conn), c.key, c.ip);
        return accepted.bytes_consumed;
    }
    begin_registration(conn, c);
    return accepted.bytes_consumed;
}

void derp_service::begin_registration(conn_id conn, client& c) noexcept {
    if (refuse_for_backlog("a registration")) {
        // Closed before ServerInfo, as an admission refusal (the ServerKey of this same turn
        // does not go out either); the client dials again later, by when the stalled shard
        // may have caught up.
        _pending_server_info.erase(conn.slot);
        _shard.close(conn);
        return;
    }
    c.stage = phase::registering;
    auto* m = new control{};
    m->kind = control::type::reg;
    m->key = c.key;
    m->conn = ref_of(conn);
    m->info.ip = c.ip;
    m->info.port = c.port;
    m->info.flags = peer_present_flags(c.can_mesh, c.is_prober, c.not_ideal);
    send_control(owner_of(c.key, _shared.shards), m);
}

void derp_service::apply_admissions() noexcept {
    _admissions.clear();
    _shared.admission->take(_shard.index(), _admissions);
    for (auto& d : _admissions) {
        _counters.admissions[static_cast<std::size_t>(d.outcome)].add();
        if (d.cached) _counters.admissions_cached.add();
        client* found = find(d.conn);
        if (found == nullptr || found->stage != phase::admitting || !(found->key == d.key)) continue;
        client& c = *found;
        const conn_id conn{d.conn.slot, d.conn.gen};
        if (d.outcome == admission_outcome::allowed || d.outcome == admission_outcome::error_allowed) {
            if (d.outcome == admission_outcome::error_allowed)
                if (auto n = _close_log.allow(_shard.now_ns()))
                    ring::log(log_level::warn, "derp: {}: client nodekey:{}: {} ({} recent)", format_addr(c.ip, c.port),
                              c.key.to_string(), d.reason, n);
            begin_registration(conn, c);
            continue;
        }
        // Rejected: closed after ServerKey, before ServerInfo, with no frame saying why (spec 2.11);
        // over WebSocket with derper's deferred 1011 "closing".
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "derp: {}: client nodekey:{} rejected: {}{} ({} recent)", format_addr(c.ip, c.port),
                      c.key.to_string(), d.reason, d.cached ? " (cached)" : "", n);
        _pending_server_info.erase(conn.slot);
        end_connection(conn);
    }
}

std::size_t derp_service::handle_frames(conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept {
    std::size_t used = 0;
    if (c.rate_waiting) {
        // Bytes the kernel had already delivered when reading stopped: they wait, unread. A
        // layer below (kTLS RX set-up) may have resumed reading meanwhile; stop it again.
        _shard.pause_recv(conn);
        return 0;
    }
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
        if (frame.status == frame_parse_status::need_more) {
            // derper waits for the tokens once the header is read, before the payload (spec
            // 2.12): a frame that has to wait stops the reading of its payload too.
            if (rest.size() >= frame_header_bytes && rate_limits(c))
                (void)rate_admits(conn, c, frame.header.payload_bytes);
            break;
        }
        if (auto checked = check_client_frame(frame.header, c.can_mesh); !checked) {
            protocol_close(conn, c, checked.error());
            return in.size();
        }
        if (rate_limits(c) && !rate_admits(conn, c, frame.header.payload_bytes)) break;
        c.frame_paid = false;  // the frame is consumed below: the next one pays for itself
        c.wait_counted = false;
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
        const bool inactive = it == _routes.end() || !(it->second.conn == ref_of(conn)) ||
                              it->second.state != route_state::active;
        if (inactive && !refuse_for_backlog("a duplicate's activity report")) {
            // (Refused, it is reported again with the client's next frame.)
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
        // The first WatchConns is owed (the watcher would miss keys otherwise); a repeat only
        // asks for the lists again and waits while the shards are behind.
        if (c.watcher && refuse_for_backlog("a repeated WatchConns")) return true;
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
        if (refuse_for_backlog("a ClosePeer")) return true;
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
        if (!c.out.pong_pending()) {
            c.out.set_pong(*data);
            _shard.want_write(conn);
        }
        return true;
    }
    default:
        return true;  // every other frame is read and ignored
    }
}

// ---------------------------------------------------------------------------------------------
// --rate-config (spec 2.12): a token bucket in bytes per client that delays reading, never drops.
// Waiting must not hold a provided receive buffer (the shard has few, shared by every
// connection), so a client out of tokens has its multishot recv cancelled (pause_recv): its
// bytes stay in the kernel, whose full socket buffer closes the TCP window, and the recv is
// armed again by timer_rate once the frame's tokens are there. Bytes already delivered when it
// stopped wait, unread, in the runtime's input buffer.

bool derp_service::rate_admits(conn_id conn, client& c, std::uint32_t payload_bytes) noexcept {
    if (c.frame_paid) return true;
    std::uint64_t ready_ns = 0;
    if (c.bucket.take(rate_frame_cost(payload_bytes), _shard.now_ns(), ready_ns)) {
        c.frame_paid = true;
        return true;
    }
    if (!c.wait_counted) {
        c.wait_counted = true;
        _counters.rate_limit_waited.add();
    }
    c.rate_waiting = true;
    _shard.pause_recv(conn);
    // From now on one receive buffer per recv: what it reads while it waits stays small.
    _shard.set_recv_one_shot(conn, true);
    _shard.arm_timer(conn, timer_rate, ready_ns);
    return false;
}

void derp_service::rate_resume(conn_id conn, client& c) noexcept {
    c.rate_waiting = false;
    // The input that waited first; reading resumes only if its tokens did not run out again.
    _shard.replay_input(conn);
    if (find(conn) == &c && !c.rate_waiting) _shard.resume_recv(conn);
}

void derp_service::apply_rate_config() noexcept {
    if (!_shared.rate_limit.configured) return;
    std::uint64_t sequence = 0;
    const rate_config config = _shared.rate_limit.load(sequence);
    if (sequence == _rate_sequence) return;
    const bool reload = _rate_sequence != 0;
    _rate_sequence = sequence;
    _rate = config;
    // As derper: every connection gets a fresh (full) bucket under the new config; one that
    // was waiting reads on at once (and waits again under the new rate if it must).
    std::uint32_t applied = 0;
    for (std::uint32_t slot = 0; slot < _clients.size(); ++slot) {
        client& c = _clients[slot];
        if (!c.open) continue;
        ++applied;
        c.bucket = byte_bucket(_rate, _shard.now_ns());
        c.frame_paid = false;
        const conn_id conn{slot, c.gen};
        if (!_rate.enabled()) _shard.set_recv_one_shot(conn, false);  // back to multishot
        if (c.rate_waiting) {
            _shard.cancel_timer(conn, timer_rate);
            rate_resume(conn, c);
        }
    }
    if (reload)
        ring::log(log_level::info, "shard {}: rate limit {} bytes/sec applied to {} connection(s)", _shard.index(),
                  _rate.bytes_per_second, applied);
}

void derp_service::relay_packet(client& from, const node_key& src, const node_key& dst,
                                std::span<const std::uint8_t> packet, bool forwarded) noexcept {
    const packet_kind kind = looks_like_disco(packet) ? packet_kind::disco : packet_kind::other;
    auto it = _routes.find(dst);
    // A key only a mesh peer holds: forwarded, one hop only (a ForwardPacket is never
    // forwarded again: spec 2.5, 5).
    if (!forwarded && it != _routes.end() && it->second.state == route_state::forward) {
        forward_packet(src, dst, packet, it->second.peer, kind);
        return;
    }
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
    auto frame = take_transfer(recv_packet_frame_bytes(packet.size()));
    if (!frame) return;
    // The one copy: the finished RecvPacket frame, made by the producer.
    encode_recv_packet({const_cast<std::uint8_t*>(frame->data), frame->frame_bytes}, src, packet);
    if (target.shard == _shard.index()) {
        client* to = find(target);
        if (to == nullptr) {
            count_drop(drop_reason::gone_disconnected, kind, packet.size());
            _transfer[frame->size_class]->release(frame->buffer_index);
            return;
        }
        enqueue(conn_id{target.slot, target.gen}, *to, *frame, kind);
        return;
    }
    message m;
    m.kind = kind_packet;
    m.u32 = target.slot;
    m.u64 = std::uint64_t{target.gen} | (std::uint64_t{frame->frame_bytes} << 32) |
            (kind == packet_kind::disco ? std::uint64_t{1} << 63 : 0);
    hand_over(target.shard, *frame, m);
}

std::optional<queued_frame> derp_service::take_transfer(std::size_t frame_bytes) noexcept {
    const std::uint8_t size_class = frame_bytes <= small_frame_bytes_max ? 0 : 1;
    auto index = _transfer[size_class]->acquire();
    if (!index) {
        _counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::transfer_pool_exhausted)].add();
        return std::nullopt;
    }
    return queued_frame{_transfer[size_class]->data(*index).data(), static_cast<std::uint32_t>(frame_bytes), *index,
                        static_cast<std::uint16_t>(_shard.index()), size_class, _shard.now_ns()};
}

void derp_service::hand_over(std::uint32_t to_shard, const queued_frame& frame, message m) noexcept {
    if (_backlog_packets >= backlog_packets_max && !_backlog[to_shard].empty()) {
        _counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::ring_backlog_full)].add();
        _transfer[frame.size_class]->release(frame.buffer_index);
        return;
    }
    _transfer[frame.size_class]->lend(frame.buffer_index);
    m.u64b = std::uint64_t{frame.buffer_index} | (std::uint64_t{frame.size_class} << 32);
    m.ptr = const_cast<std::uint8_t*>(frame.data);
    _counters.cross_shard_packets.add();
    post_or_backlog(to_shard, m);
}

void derp_service::forward_packet(const node_key& src, const node_key& dst, std::span<const std::uint8_t> packet,
                                  std::uint32_t peer, packet_kind kind) noexcept {
    _counters.packets_forwarded_out.add();
    auto frame = take_transfer(forward_packet_frame_bytes(packet.size()));
    if (!frame) return;
    // The one copy, as for local delivery: the finished ForwardPacket frame.
    encode_forward_packet({const_cast<std::uint8_t*>(frame->data), frame->frame_bytes}, src, dst, packet);
    const std::uint32_t host = mesh_shard_of(peer, _shared.shards);
    if (host == _shard.index()) {
        if (_mesh) {
            _mesh->enqueue(peer, *frame);
        } else {
            _counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::mesh_unavailable)].add();
            _transfer[frame->size_class]->release(frame->buffer_index);
        }
        return;
    }
    message m;
    m.kind = kind_forward;
    m.u32 = peer;
    m.u64 = std::uint64_t{frame->frame_bytes} | (kind == packet_kind::disco ? std::uint64_t{1} << 63 : 0);
    hand_over(host, *frame, m);
}

void derp_service::adopt_mesh(std::unique_ptr<mesh_links> links) noexcept { _mesh = std::move(links); }

void derp_service::on_stop() noexcept {
    if (_mesh) _mesh->stop();
}

}  // namespace derp::server
