// The region's mesh forwarding table: see region_table.hh and spec 2.9.
#include "core/region_table.hh"

#include <algorithm>

namespace derp {

std::optional<mesh_peer> region_table::preferred(const entry& e) const {
    // Local clients come first: a key connected here is never forwarded.
    if (e.local || e.forwarders.empty()) return std::nullopt;
    return e.forwarders.front();
}

region_effects region_table::finish(const node_key& key, entry& e, std::optional<mesh_peer> before,
                                    bool was_known) {
    region_effects fx;
    if (!e.local && e.forwarders.empty()) {
        _entries.erase(key);
        fx.gone_from_region = was_known;
        fx.route_changed = was_known;
        return fx;
    }
    fx.forwarder = preferred(e);
    fx.route_changed = !was_known || fx.forwarder != before;
    return fx;
}

bool region_table::remote(const node_key& key) const {
    const auto it = _entries.find(key);
    return it != _entries.end() && !it->second.local && !it->second.forwarders.empty();
}

void region_table::recount(bool was_remote, const node_key& key) {
    const bool now_remote = remote(key);
    if (now_remote && !was_remote) ++_remote_keys;
    if (!now_remote && was_remote) --_remote_keys;
}

region_effects region_table::peer_present(const node_key& key, mesh_peer peer) {
    const bool was_remote = remote(key);
    const region_effects fx = peer_present_inner(key, peer);
    recount(was_remote, key);
    return fx;
}

region_effects region_table::peer_gone(const node_key& key, mesh_peer peer) {
    const bool was_remote = remote(key);
    const region_effects fx = peer_gone_inner(key, peer);
    recount(was_remote, key);
    return fx;
}

region_effects region_table::set_local(const node_key& key, bool local) {
    const bool was_remote = remote(key);
    const region_effects fx = set_local_inner(key, local);
    recount(was_remote, key);
    return fx;
}

region_effects region_table::peer_present_inner(const node_key& key, mesh_peer peer) {
    const auto [it, inserted] = _entries.try_emplace(key);
    entry& e = it->second;
    if (std::find(e.forwarders.begin(), e.forwarders.end(), peer) != e.forwarders.end()) return {};  // again: ignored
    const std::optional<mesh_peer> before = preferred(e);
    e.forwarders.push_back(peer);
    if (e.forwarders.size() == 2) ++_counters.multiforwarder_created;  // a single forwarder becomes multi
    _announced[peer].insert(key);
    return finish(key, e, before, !inserted);
}

region_effects region_table::peer_gone_inner(const node_key& key, mesh_peer peer) {
    auto it = _entries.find(key);
    if (it == _entries.end()) return {};
    entry& e = it->second;
    const auto pos = std::find(e.forwarders.begin(), e.forwarders.end(), peer);
    if (pos == e.forwarders.end()) {
        // derper: a single forwarder that is another peer's stays; counted.
        if (e.forwarders.size() == 1) ++_counters.delete_other_value;
        return {};
    }
    const std::optional<mesh_peer> before = preferred(e);
    const bool was_multi = e.forwarders.size() > 1;
    e.forwarders.erase(pos);  // the next in announcement order becomes preferred
    if (was_multi && e.forwarders.size() == 1) ++_counters.multiforwarder_deleted;
    if (auto a = _announced.find(peer); a != _announced.end()) {
        a->second.erase(key);
        if (a->second.empty()) _announced.erase(a);
    }
    return finish(key, e, before, true);
}

std::vector<std::pair<node_key, region_effects>> region_table::peer_down(mesh_peer peer) {
    std::vector<std::pair<node_key, region_effects>> out;
    auto a = _announced.find(peer);
    if (a == _announced.end()) return out;
    const std::vector<node_key> keys(a->second.begin(), a->second.end());
    out.reserve(keys.size());
    for (const node_key& key : keys) out.emplace_back(key, peer_gone(key, peer));
    return out;
}

region_effects region_table::set_local_inner(const node_key& key, bool local) {
    if (!local) {
        auto it = _entries.find(key);
        if (it == _entries.end() || !it->second.local) return {};
        it->second.local = false;
        return finish(key, it->second, std::nullopt, true);
    }
    const auto [it, inserted] = _entries.try_emplace(key);
    entry& e = it->second;
    if (e.local) return {};
    const std::optional<mesh_peer> before = preferred(e);
    e.local = true;
    region_effects fx;
    fx.route_changed = !inserted && before.has_value();  // from a forwarder to the local client
    return fx;
}

std::optional<mesh_peer> region_table::forwarder_of(const node_key& key) const {
    const auto it = _entries.find(key);
    if (it == _entries.end() || it->second.forwarders.empty()) return std::nullopt;
    return it->second.forwarders.front();
}

bool region_table::is_local(const node_key& key) const {
    const auto it = _entries.find(key);
    return it != _entries.end() && it->second.local;
}


}  // namespace derp
