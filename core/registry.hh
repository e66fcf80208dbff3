// derper's client registry rules (spec 2.2, 2.8) for the keys one owner shard arbitrates: which
// connection of a key is active, who is a duplicate, when a key leaves the region, and what the
// watchers are told. Pure: connections are opaque references, and every call returns the
// effects for the shard to carry out (route broadcasts, duplicate flags, presence events).
// Not here: queues, sockets, the mesh forwarders of other nodes.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "core/frame.hh"
#include "core/key.hh"

namespace derp {

// A connection anywhere in the process: the shard that owns it and its slot there.
struct conn_ref {
    std::uint32_t shard = 0;
    std::uint32_t slot = 0;
    std::uint32_t gen = 0;
    friend bool operator==(const conn_ref&, const conn_ref&) noexcept = default;
};

// What watchers learn about a connection (PeerPresent fields).
struct presence_info {
    ip16 ip{};
    std::uint16_t port = 0;
    std::uint8_t flags = peer_present_regular;
};

enum class route_state : std::uint8_t {
    active,       // packets for the key go to `active`
    none_active,  // duplicates exist but none is active: drop as dup_client
    gone,         // the key's last connection left: drop as unknown_dest; PeerGone to senders
    forward,      // no local connection; a mesh peer announced it: ForwardPacket to that peer
};

struct registry_effects {
    // A new route for the key, to be published to every shard (including the owner's own).
    std::optional<route_state> route;
    conn_ref active{};
    // Connections whose duplicate flag changed (the shard that owns each is told).
    std::vector<std::pair<conn_ref, bool>> dup_flags;
    // For the watchers: PeerPresent(key, presence) or PeerGone(key, Disconnected).
    enum class presence_event : std::uint8_t { none, present, gone } presence = presence_event::none;
    presence_info present{};
};

class key_registry {
public:
    // A connection of `key` finished its handshake (spec 2.2 Register): it becomes active;
    // the previous active connection and it are both flagged duplicates.
    registry_effects add(const node_key& key, conn_ref conn, const presence_info& info);
    // A connection of `key` ended (spec 2.2 Unregister).
    registry_effects remove(const node_key& key, conn_ref conn);
    // A frame arrived from a duplicate connection: under "last writer is active" it becomes
    // the active one (spec 2.2 Activity on a duplicate).
    registry_effects activity(const node_key& key, conn_ref conn);

    // Every key with an active connection, with that connection's presence (for WatchConns).
    template <typename Each>
    void for_each_active(Each&& each) const {
        for (const auto& [key, e] : _entries)
            if (e.active) each(key, e.conns[*e.active].info);
    }

    std::size_t key_count() const noexcept { return _entries.size(); }
    std::size_t conn_count() const noexcept { return _conn_count; }
    std::size_t dup_key_count() const noexcept { return _dup_keys; }   // keys with more than one connection
    std::size_t dup_conn_count() const noexcept { return _dup_conns; }  // connections of those keys
    std::optional<conn_ref> active_of(const node_key& key) const;
    bool contains(const node_key& key) const { return _entries.count(key) != 0; }  // any connection

private:
    struct member {
        conn_ref conn;
        presence_info info;
    };
    struct entry {
        std::vector<member> conns;  // registration order
        std::optional<std::size_t> active;
        std::vector<conn_ref> send_history;  // duplicates only
        std::optional<conn_ref> last;
    };
    static std::optional<std::size_t> index_of(const entry& e, conn_ref conn);

    std::unordered_map<node_key, entry> _entries;
    std::size_t _conn_count = 0;
    std::size_t _dup_keys = 0;   // kept by add and remove: O(1) per registration
    std::size_t _dup_conns = 0;
};

}  // namespace derp
