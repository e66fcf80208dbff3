// The mesh forwarding table of one region (spec 2.9, 5), for the keys one owner shard
// arbitrates: which mesh peer (another node of the region) forwards packets for a key that has
// no local connection, derper's multi-forwarder rule (the first announcer stays preferred, later
// ones are fall-backs), and when a key leaves the region. Pure: peers are small numbers (the
// index of a -mesh-with entry), and every call says what changed for the shard to carry out.
// Local connections are the key_registry's business; this table is told when a key gains its
// first or loses its last local connection, because local clients come first.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/key.hh"

namespace derp {

using mesh_peer = std::uint32_t;  // index of a -mesh-with entry

// derper's counters for the table (spec 7.2 names: multiforwarder_created, _deleted,
// packet_forwarder_delete_other_value).
struct region_counters {
    std::uint64_t multiforwarder_created = 0;
    std::uint64_t multiforwarder_deleted = 0;
    std::uint64_t delete_other_value = 0;
};

// What one call changed for one key.
struct region_effects {
    // Where packets for the key go now, if that changed: a forwarder, or none (local only, or
    // unknown when `gone_from_region`).
    bool route_changed = false;
    std::optional<mesh_peer> forwarder;
    // The key has no local connection and no forwarder left: local clients that received from
    // it get PeerGone(Disconnected) (spec 2.7).
    bool gone_from_region = false;
};

class region_table {
public:
    // Peer announced the key (PeerPresent on our outgoing mesh connection to it).
    region_effects peer_present(const node_key& key, mesh_peer peer);
    // Peer withdrew the key (PeerGone of any reason, or the synthetic 0xf0 when the mesh
    // connection to it broke: see peer_down).
    region_effects peer_gone(const node_key& key, mesh_peer peer);
    // The mesh connection to peer broke: every key it announced is withdrawn.
    std::vector<std::pair<node_key, region_effects>> peer_down(mesh_peer peer);
    // The key gained its first local connection, or lost its last one.
    region_effects set_local(const node_key& key, bool local);

    // The forwarder for a key without a local connection, if any (the preferred one).
    std::optional<mesh_peer> forwarder_of(const node_key& key) const;
    bool is_local(const node_key& key) const;
    bool known(const node_key& key) const { return _entries.count(key) != 0; }
    std::size_t remote_key_count() const noexcept { return _remote_keys; }  // reachable only through a forwarder
    std::size_t key_count() const noexcept { return _entries.size(); }
    const region_counters& counters() const noexcept { return _counters; }

private:
    struct entry {
        bool local = false;
        // Forwarders in announcement order: the first is preferred (derper's multiForwarder
        // keeps the lowest insertion index).
        std::vector<mesh_peer> forwarders;
    };
    std::optional<mesh_peer> preferred(const entry& e) const;
    region_effects peer_present_inner(const node_key& key, mesh_peer peer);
    region_effects peer_gone_inner(const node_key& key, mesh_peer peer);
    region_effects set_local_inner(const node_key& key, bool local);
    bool remote(const node_key& key) const;
    void recount(bool was_remote, const node_key& key);  // keeps _remote_keys: O(1) per change
    region_effects finish(const node_key& key, entry& e, std::optional<mesh_peer> before, bool was_known);

    std::unordered_map<node_key, entry> _entries;
    std::unordered_map<mesh_peer, std::unordered_set<node_key>> _announced;  // by peer, for peer_down
    region_counters _counters;
    std::size_t _remote_keys = 0;
};

}  // namespace derp
