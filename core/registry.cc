// The duplicate-key and presence rules of derper's registry (see registry.hh).
#include "core/registry.hh"

#include <algorithm>

namespace derp {

std::optional<std::size_t> key_registry::index_of(const entry& e, conn_ref conn) {
    for (std::size_t i = 0; i < e.conns.size(); ++i)
        if (e.conns[i].conn == conn) return i;
    return std::nullopt;
}

registry_effects key_registry::add(const node_key& key, conn_ref conn, const presence_info& info) {
    registry_effects fx;
    entry& e = _entries[key];
    DERP_ASSERT(!index_of(e, conn));  // a connection registers once
    const bool had_active = e.active.has_value();
    e.conns.push_back({conn, info});
    ++_conn_count;
    // Duplicate counts kept as they change: a registration must not walk every key (a
    // reconnect storm of N clients would cost O(N^2)).
    if (e.conns.size() == 2) {
        ++_dup_keys;
        _dup_conns += 2;
    } else if (e.conns.size() > 2) {
        ++_dup_conns;
    }
    if (e.conns.size() == 2) {
        // First duplicate: both become duplicates; history starts with the old one.
        e.send_history = {e.conns[0].conn};
    }
    if (e.conns.size() >= 2) {
        e.send_history.push_back(conn);
        e.last = conn;
        // Spec 2.2 step 2: the old active connection and the new one are flagged; a new
        // connection joining a set with no active member is not.
        if (had_active) {
            fx.dup_flags.emplace_back(e.conns[*e.active].conn, true);
            fx.dup_flags.emplace_back(conn, true);
        }
    }
    e.active = e.conns.size() - 1;  // the new connection is the one that receives packets
    fx.route = route_state::active;
    fx.active = conn;
    fx.presence = registry_effects::presence_event::present;
    fx.present = info;
    return fx;
}

registry_effects key_registry::remove(const node_key& key, conn_ref conn) {
    registry_effects fx;
    auto it = _entries.find(key);
    if (it == _entries.end()) return fx;
    entry& e = it->second;
    const auto index = index_of(e, conn);
    if (!index) return fx;
    --_conn_count;
    if (e.conns.size() == 1) {
        _entries.erase(it);
        fx.route = route_state::gone;
        fx.presence = registry_effects::presence_event::gone;
        return fx;
    }
    const std::optional<conn_ref> previous_active =
        e.active ? std::optional<conn_ref>(e.conns[*e.active].conn) : std::nullopt;
    e.conns.erase(e.conns.begin() + static_cast<std::ptrdiff_t>(*index));
    if (e.conns.size() == 1) {
        --_dup_keys;
        _dup_conns -= 2;
    } else {
        --_dup_conns;
    }
    // Drop it from the history and collapse runs that became adjacent.
    std::vector<conn_ref> history;
    for (const auto& h : e.send_history)
        if (!(h == conn) && (history.empty() || !(history.back() == h))) history.push_back(h);
    e.send_history = std::move(history);
    if (e.last && *e.last == conn)
        e.last = e.send_history.empty() ? std::nullopt : std::optional<conn_ref>(e.send_history.back());
    e.active.reset();
    if (e.conns.size() == 1) {
        // The set dissolves: the survivor is no longer a duplicate and becomes active.
        fx.dup_flags.emplace_back(e.conns[0].conn, false);
        e.send_history.clear();
        e.last.reset();
        e.active = 0;
    } else if (e.last) {
        e.active = index_of(e, *e.last);
    }
    const std::optional<conn_ref> now_active =
        e.active ? std::optional<conn_ref>(e.conns[*e.active].conn) : std::nullopt;
    if (now_active != previous_active) {
        fx.route = now_active ? route_state::active : route_state::none_active;
        if (now_active) fx.active = *now_active;
    }
    return fx;  // no watcher event when a non-final duplicate leaves (spec 2.2)
}

registry_effects key_registry::activity(const node_key& key, conn_ref conn) {
    registry_effects fx;
    auto it = _entries.find(key);
    if (it == _entries.end()) return fx;
    entry& e = it->second;
    if (e.conns.size() < 2) return fx;
    const auto index = index_of(e, conn);
    if (!index) return fx;
    if (e.send_history.empty() || !(e.send_history.back() == conn)) e.send_history.push_back(conn);
    e.last = conn;
    if (e.active != index) {
        e.active = index;
        fx.route = route_state::active;
        fx.active = conn;
    }
    return fx;
}

std::optional<conn_ref> key_registry::active_of(const node_key& key) const {
    auto it = _entries.find(key);
    if (it == _entries.end() || !it->second.active) return std::nullopt;
    return it->second.conns[*it->second.active].conn;
}

}  // namespace derp
