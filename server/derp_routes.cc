// The DERP service's messages between shards: packets handed over the SPSC rings, transfer
// buffers going home, and the registry: each key's owner shard applies derper's duplicate rules
// (core/registry) and the region's mesh forwarders (core/region_table), and publishes routes,
// watcher presence and ClosePeer to every shard.
#include "server/derp_service.hh"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>

#include "server/derp_internal.hh"
#include "server/mesh.hh"

namespace derp::server {

// ---------------------------------------------------------------------------------------------
// Messages between shards.

void derp_service::post_or_backlog(std::uint32_t to_shard, const message& m) noexcept {
    auto& backlog = _backlog[to_shard];
    // Once anything waits for this ring, everything after it waits too: order is kept. Every
    // message that gets here is owed (the bound is applied where work begins: packets in
    // hand_over, new work in refuse_for_backlog), because dropping an unregistration or a
    // route would leave the registry wrong for good. What is owed is bounded all the same:
    // it follows from work that was admitted while the backlogs were under the bound.
    if (backlog.empty() && _shard.post(to_shard, m)) return;
    backlog.push_back(m);
    if (m.kind == kind_packet || m.kind == kind_forward) ++_backlog_packets;
    ++_backlog_messages;
    _counters.control_backlog.set(_backlog_messages);
}

bool derp_service::refuse_for_backlog(std::string_view what) noexcept {
    // Any shard's backlog counts, not only this one's: a registration here makes its owner
    // publish a route to every shard, so one stalled shard fills everybody's backlog.
    std::uint32_t pressed = _shared.shards;
    std::uint64_t depth = 0;
    for (std::uint32_t s = 0; s < _shared.shards && pressed == _shared.shards; ++s) {
        depth = _shared.counters[s].control_backlog.get();
        if (depth >= _settings.cross_shard_backlog_max) pressed = s;
    }
    if (pressed == _shared.shards) return false;
    _counters.control_backlog_refused.add();
    if (auto n = _backlog_log.allow(_shard.now_ns()))
        ring::log(log_level::warn,
                  "shard {}: refused {} ({} refused recently): shard {} has {} messages waiting for full "
                  "rings (bound {})",
                  _shard.index(), what, n, pressed, depth, _settings.cross_shard_backlog_max);
    return true;
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
    apply_rate_config();  // SIGHUP may have stored a new one
    if (_shared.admission != nullptr) apply_admissions();
    notice_health();
    // derper samples every connection's RTT every 10 s (spec 2.13); here on the first loop turn
    // after each 10 s (keepalives guarantee turns on a busy or idle node alike).
    if (_shard.now_ns() >= _next_rtt_sweep_ns) {
        if (_next_rtt_sweep_ns != 0) sweep_tcp_rtt();
        _next_rtt_sweep_ns = _shard.now_ns() + 10'000'000'000;
    }
    _counters.transfer_buffers_in_use.set(_transfer[0]->in_use() + _transfer[1]->in_use());
    _counters.transfer_bytes.set(_transfer[0]->in_use() * small_frame_bytes_max + _transfer[1]->in_use() * large_frame_bytes_max);
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
            if (backlog.front().kind == kind_packet || backlog.front().kind == kind_forward) --_backlog_packets;
            --_backlog_messages;
            backlog.pop_front();
        }
        waiting = waiting || !backlog.empty();
    }
    _counters.control_backlog.set(_backlog_messages);
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
    case kind_forward: {
        queued_frame frame;
        frame.data = static_cast<std::uint8_t*>(m.ptr);
        frame.frame_bytes = static_cast<std::uint32_t>(m.u64 & 0x7fffffff);
        frame.buffer_index = static_cast<std::uint32_t>(m.u64b);
        frame.size_class = static_cast<std::uint8_t>(m.u64b >> 32);
        frame.owner = m.from_thread;
        frame.enqueued_ns = _shard.now_ns();
        if (_mesh) {
            _mesh->enqueue(m.u32, frame);
        } else {
            _counters.derpd_packets_dropped[static_cast<std::size_t>(derpd_drop_reason::mesh_unavailable)].add();
            release_transfer(frame);
        }
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

void derp_service::apply_route(const node_key& key, route_state state, conn_ref active, std::uint32_t peer) noexcept {
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
        _routes[key] = route{state, active, peer};
    }
    // A duplicate on this shard may report activity again after any route change.
    if (_local_dups > 0)
        for (auto& c : _clients)
            if (c.open && c.is_dup && c.key == key) c.activity_reported = false;
}

void derp_service::publish_route(const node_key& key, route_state state, conn_ref active, std::uint32_t peer) noexcept {
    for (std::uint32_t s = 0; s < _shared.shards; ++s) {
        auto* m = new control{};
        m->kind = control::type::route;
        m->key = key;
        m->state = state;
        m->active = active;
        m->peer = peer;
        send_control(s, m);
    }
}

void derp_service::count_region() noexcept {
    const region_counters& rc = _region.counters();
    _counters.clients_remote.set(_region.remote_key_count());
    _counters.multiforwarder_created.set(rc.multiforwarder_created);
    _counters.multiforwarder_deleted.set(rc.multiforwarder_deleted);
    _counters.packet_forwarder_delete_other_value.set(rc.delete_other_value);
}

void derp_service::apply_region(const node_key& key, const region_effects& fx) noexcept {
    // Local clients come first: while the key has a connection here, the registry's route
    // stands and a forwarder is only a fall-back for when it leaves.
    if (fx.route_changed && !_registry.contains(key)) {
        if (fx.forwarder) publish_route(key, route_state::forward, conn_ref{}, *fx.forwarder);
        else if (fx.gone_from_region) publish_route(key, route_state::gone, conn_ref{}, 0);
    }
    count_region();
}

void derp_service::apply_effects(const node_key& key, conn_ref conn, const registry_effects& fx) noexcept {
    if (fx.route) {
        route_state state = *fx.route;
        std::uint32_t peer = 0;
        if (state == route_state::gone) {
            // The last local connection left: a mesh peer that announces the key takes over
            // and nobody hears PeerGone (spec 2.7); else the key leaves the region.
            if (_region.known(key)) {
                _region.set_local(key, false);
                if (const auto forwarder = _region.forwarder_of(key)) {
                    state = route_state::forward;
                    peer = *forwarder;
                }
                count_region();
            }
        } else if (_region.known(key)) {
            _region.set_local(key, true);
            count_region();
        }
        publish_route(key, state, fx.active, peer);
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
        note_finished(*c);
        _counters.current_connections.add();
        if (c->preferred) _counters.current_home_connections.add();
        if (c->not_ideal) _counters.current_notideal_connections.add();
        c->bucket = byte_bucket(_rate, _shard.now_ns());
        if (_settings.advertise_rate_limit && rate_limits(*c)) {
            // -advertise-rate-limit: ServerInfo names the bucket (sealed now, with the config in
            // force now). A Go client then drops its own sends beyond it (spec 1.7).
            const std::string json = server_info_json_with_rate(_rate);
            const auto* json_bytes = reinterpret_cast<const std::uint8_t*>(json.data());
            std::vector<std::uint8_t> sealed(box_overhead_bytes + json.size());
            std::vector<std::uint8_t> frame(server_info_frame_bytes(sealed.size()));
            if (_box.seal_to(c->key, {json_bytes, json.size()}, sealed)) {
                encode_server_info(frame, sealed);
                c->out.open_relay(frame);
            } else {
                c->out.open_relay(pending->second);  // unreachable: the key sealed before
            }
        } else {
            c->out.open_relay(pending->second);  // before the frames held meanwhile (spec 1.4)
        }
        _pending_server_info.erase(pending);
        if (c->out.pending()) _shard.want_write(conn);
        greet(conn, *c);            // Health, Restarting: after ServerInfo, before relayed frames
        _shard.replay_input(conn);  // frames that arrived while registering
        const std::uint64_t jitter =
            splitmix64(_rng_state) % static_cast<std::uint64_t>(_settings.keepalive_jitter_ns);
        _shard.arm_timer(conn, timer_keepalive,
                         _shard.now_ns() + static_cast<std::uint64_t>(_settings.keepalive_ns) + jitter);
        return;
    }
    case control::type::route:
        apply_route(m.key, m.state, m.active, m.peer);
        return;
    case control::type::mesh_present:
        // The table learns that the key is local only when a peer announces it too: keys
        // nobody else announces cost the table nothing.
        if (!_region.known(m.key) && _registry.contains(m.key)) _region.set_local(m.key, true);
        apply_region(m.key, _region.peer_present(m.key, m.peer));
        return;
    case control::type::mesh_gone:
        apply_region(m.key, _region.peer_gone(m.key, m.peer));
        return;
    case control::type::mesh_down:
        for (const auto& [key, fx] : _region.peer_down(m.peer)) apply_region(key, fx);
        count_region();
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
