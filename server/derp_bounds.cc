// What keeps a shard's unfinished connections bounded (see derp_settings::unfinished_conns_max):
// connections are remembered in accept order until they finish the DERP handshake (or close);
// when one more arrives than the bound allows, the oldest still unfinished is closed. A real
// client is unfinished for the few milliseconds of its handshake, a slowloris connection for as
// long as the deadlines let it (30 s for the request head, 10 s for ClientInfo), so the ones
// that go are the attacker's, and the slots stay free for real clients.
#include "server/derp_service.hh"

namespace derp::server {

using ring::conn_id;
using ring::log_level;

void derp_service::note_unfinished(conn_id conn, client& c) noexcept {
    c.unfinished = true;
    ++_unfinished;
    _counters.unfinished.add();
    _unfinished_order.push_back(conn);
    if (_settings.unfinished_conns_max == 0) return;
    std::uint32_t evicted = 0;
    while (_unfinished > _settings.unfinished_conns_max && !_unfinished_order.empty()) {
        const conn_id oldest = _unfinished_order.front();
        _unfinished_order.pop_front();
        client* o = find(oldest);
        if (o == nullptr || !o->unfinished) continue;  // finished or closed since: skip
        note_finished(*o);
        _counters.unfinished_evictions.add();
        ++evicted;
        _shard.close(oldest);
    }
    if (evicted > 0) {
        if (auto n = _eviction_log.allow(_shard.now_ns()))
            ring::log(log_level::warn, "shard {}: {} unfinished connections (the most allowed); closed the oldest, "
                      "{} time(s) lately (a slowloris, or raise -unfinished-per-shard)",
                      _shard.index(), _settings.unfinished_conns_max, n);
    }
    // Finished entries are skipped lazily; keep the queue from growing with them.
    if (_unfinished_order.size() > 4 * std::size_t{_unfinished} + 1024) {
        std::erase_if(_unfinished_order, [this](conn_id id) {
            const client* x = find(id);
            return x == nullptr || !x->unfinished;
        });
    }
}

void derp_service::note_finished(client& c) noexcept {
    if (!c.unfinished) return;
    c.unfinished = false;
    --_unfinished;
    _counters.unfinished.sub();
}

}  // namespace derp::server
