// The restart load (see restart_load.hh).
#include "bench/restart_load.hh"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "crypto/box.hh"
#include "ring/runtime.hh"

namespace derp::bench {
namespace {

// A packet's first 24 bytes: its sequence number in its sender's stream, the sender's index
// and the send time (monotonic ns), little-endian as this machine writes them; the rest zero.
constexpr std::size_t stamp_bytes = 24;
constexpr std::uint64_t no_time = ~0ull;

struct shared_state {
    std::atomic<std::uint64_t> ready{0};      // first connections that finished the handshake
    std::atomic<std::uint64_t> failed{0};     // first connections that did not
    std::atomic<bool> sending{false};
};

class restart_load final : public client::handler {
public:
    restart_load(shared_state& shared, const restart_options& o) : _shared(shared), _o(o) {
        _ends.resize(2 * static_cast<std::size_t>(o.pairs));
        for (auto& e : _ends) {
            e.key = generate_private_key();
            e.public_key = public_key_of(e.key);
        }
        _rate_per_end = o.rate_pps / static_cast<double>(_ends.size());
    }
    void attach(client::client_pool& pool) { _pool = &pool; }

    void on_ready(ring::conn_id conn, const node_key&) noexcept override {
        const auto e = end_of(conn);
        if (!e) return;
        end& x = _ends[*e];
        if (!x.current && !x.pending) {  // the first connection
            x.current = conn;
            _shared.ready++;
            return;
        }
        if (!x.pending || !(*x.pending == conn)) return;
        // The move: traffic goes to the new connection from now on; the old one is left.
        const std::uint64_t now = ring::monotonic_ns();
        x.pending.reset();
        if (x.current) {
            // The old connection stops sending but is still read until it has been quiet
            // for a while: packets already on their way through the old process, and those
            // from peers still there, keep arriving on it.
            _leaving.push_back({*x.current, now});
        }
        x.current = conn;
        x.moves_at.push_back(now);
        _result.moves++;
        _result.move_ms_max = std::max(_result.move_ms_max, static_cast<double>(now - x.dialled_at) / 1e6);
        x.reconnect_at = no_time;
        say(fmt::format("client {} moved to a new connection {:.1f} ms after dialling", *e,
                        static_cast<double>(now - x.dialled_at) / 1e6));
    }

    void on_packet(ring::conn_id conn, const node_key&, std::span<const std::uint8_t> packet) noexcept override {
        for (auto& l : _leaving)
            if (l.conn == conn) l.last_packet_ns = ring::monotonic_ns();
        if (packet.size() < stamp_bytes) return;
        std::uint64_t seq = 0, sender = 0;
        std::memcpy(&seq, packet.data(), 8);
        std::memcpy(&sender, packet.data() + 8, 8);
        if (sender >= _ends.size()) return;
        auto& got = _ends[sender].delivered;
        if (seq >= got.size()) got.resize(std::max<std::size_t>(seq + 1, got.size() * 2), 0);
        if (got[seq]) _result.duplicates++;
        got[seq] = 1;
    }

    void on_restarting(ring::conn_id conn, const restarting_view& r) noexcept override {
        const auto e = end_of(conn);
        if (!e) return;
        end& x = _ends[*e];
        if (!x.current || !(*x.current == conn) || x.pending || x.reconnect_at != no_time) return;
        _result.restarting_heard++;
        _result.reconnect_in_ms_max = std::max(_result.reconnect_in_ms_max, static_cast<double>(r.reconnect_in_ms));
        const std::uint64_t now = ring::monotonic_ns();
        x.reconnect_at = now + std::uint64_t{r.reconnect_in_ms} * 1'000'000;
        x.try_until = x.reconnect_at + std::uint64_t{r.try_for_ms} * 1'000'000;
        x.retry_ns = _o.retry_first_ns;
        say(fmt::format("client {} heard Restarting: reconnect in {} ms, try for {} ms", *e, r.reconnect_in_ms,
                        r.try_for_ms));
    }

    void on_health(ring::conn_id conn, std::string_view text) noexcept override {
        const auto e = end_of(conn);
        say(fmt::format("client {} heard Health: {}", e ? static_cast<long>(*e) : -1L,
                        text.empty() ? std::string("healthy again") : std::string(text)));
    }

    void on_closed(ring::conn_id conn, client::client_failure failure) noexcept override {
        const auto e = end_of(conn);
        if (!e) return;
        _by_slot.erase(conn.slot);
        std::erase_if(_leaving, [conn](const leaving& l) { return l.conn == conn; });
        if (_stopping) return;
        end& x = _ends[*e];
        const std::uint64_t now = ring::monotonic_ns();
        if (x.pending && *x.pending == conn) {  // a reconnect that did not make it
            x.pending.reset();
            _result.dial_failures++;
            retry_later(*e, now, failure);
            return;
        }
        if (x.current && *x.current == conn) {
            x.current.reset();
            if (!_shared.sending.load(std::memory_order_relaxed) && x.moves_at.empty()) {
                _shared.failed++;  // the first connection failed
                return;
            }
            if (x.reconnect_at == no_time && !x.pending) {
                // Gone without a Restarting (or before its reconnect-in): reconnect with
                // back-off, as magicsock does after any read error.
                _result.unannounced_closes++;
                x.reconnect_at = now + _o.retry_first_ns;
                x.try_until = now + _o.unannounced_try_for_ns;
                x.retry_ns = _o.retry_first_ns;
                say(fmt::format("client {}: the server closed its connection ({}) without Restarting", *e,
                                client::to_string(failure)));
            } else if (x.reconnect_at != no_time && x.reconnect_at > now) {
                x.reconnect_at = now;  // nothing left to wait for
            }
        }
    }

    std::size_t fill(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override {
        const auto e = end_of(conn);
        if (!e || _stopping) return 0;
        end& x = _ends[*e];
        if (!x.current || !(*x.current == conn) || x.tokens < 1) return 0;
        // One frame per write, as Go's derphttp client writes.
        const std::size_t frame = send_packet_frame_bytes(_o.packet_bytes);
        if (out.size() < frame) return 0;
        encode_frame_header(out, frame_type::send_packet, key_bytes + _o.packet_bytes);
        std::memcpy(out.data() + frame_header_bytes, _ends[*e ^ 1].public_key.bytes().data(), key_bytes);
        std::uint8_t* payload = out.data() + frame_header_bytes + key_bytes;
        std::memset(payload, 0, _o.packet_bytes);
        const std::uint64_t seq = x.sent_at.size(), sender = *e, now = ring::monotonic_ns();
        std::memcpy(payload, &seq, 8);
        std::memcpy(payload + 8, &sender, 8);
        std::memcpy(payload + 16, &now, 8);
        x.sent_at.push_back(now);
        x.tokens -= 1;
        if (x.tokens >= 1) _pool->want_send(conn);
        return frame;
    }

    bool on_turn() noexcept override {
        if (!_started) start();
        const std::uint64_t now = ring::monotonic_ns();
        const bool sending = _shared.sending.load(std::memory_order_relaxed) && !_stopping;
        if (sending) {
            if (_last_refill_ns == 0) _last_refill_ns = now;
            const double add = static_cast<double>(now - _last_refill_ns) / 1e9 * _rate_per_end;
            _last_refill_ns = now;
            // At most 4 ms of packets at once: a client with no connection for a while does
            // not burst when it has one again (what it could not send, it never sent).
            const double cap = std::max(1.0, _rate_per_end * 0.004);
            for (auto& x : _ends) {
                x.tokens = std::min(x.tokens + add, cap);
                if (x.tokens >= 1 && x.current) _pool->want_send(*x.current);
            }
        }
        std::uint64_t next = now + 1'000'000;  // the pacing tick
        // Old connections that have been quiet long enough are left.
        std::erase_if(_leaving, [&](const leaving& l) {
            if (now - l.last_packet_ns < _o.linger_quiet_ns) return false;
            leave(l.conn);
            return true;
        });
        for (std::size_t i = 0; i < _ends.size(); ++i) {
            end& x = _ends[i];
            if (_stopping || x.reconnect_at == no_time || x.pending) continue;
            if (x.reconnect_at <= now) {
                dial_again(i, now);
            } else {
                next = std::min(next, x.reconnect_at);
            }
        }
        _pool->wake_at(next);
        return false;
    }

    // The results, read after the runtime stopped.
    restart_measurement finish(std::uint64_t in_flight_ns) {
        restart_measurement r = _result;
        for (std::size_t p = 0; p + 1 < _ends.size(); p += 2) {
            const end& a = _ends[p];
            const end& b = _ends[p + 1];
            // The k-th move of one end and the k-th of the other bound the k-th interval in
            // which the two sat on different processes.
            std::vector<std::pair<std::uint64_t, std::uint64_t>> windows;
            const std::size_t k_max = std::min(a.moves_at.size(), b.moves_at.size());
            if (a.moves_at.size() != b.moves_at.size()) r.pairs_split++;
            for (std::size_t k = 0; k < k_max; ++k) {
                const std::uint64_t lo = std::min(a.moves_at[k], b.moves_at[k]);
                const std::uint64_t hi = std::max(a.moves_at[k], b.moves_at[k]);
                windows.emplace_back(lo - in_flight_ns, hi + in_flight_ns);
                const double ms = static_cast<double>(hi - lo) / 1e6;
                r.interval_ms_max = std::max(r.interval_ms_max, ms);
                r.interval_ms_sum += ms;
                r.pair_moves++;
            }
            for (const end* x : {&a, &b}) {
                r.sent += x->sent_at.size();
                for (std::size_t seq = 0; seq < x->sent_at.size(); ++seq) {
                    if (seq < x->delivered.size() && x->delivered[seq]) {
                        r.delivered++;
                        continue;
                    }
                    const std::uint64_t t = x->sent_at[seq];
                    const bool inside = std::any_of(windows.begin(), windows.end(),
                                                    [t](const auto& w) { return t >= w.first && t <= w.second; });
                    (inside ? r.lost_in_interval : r.lost_beyond)++;
                }
            }
        }
        return r;
    }

    void stop() noexcept { _stopping.store(true); }

private:
    struct end {
        private_key key;
        node_key public_key;  // its peer addresses packets to it
        std::optional<ring::conn_id> current;  // where this client sends and listens
        std::optional<ring::conn_id> pending;  // a reconnect not yet ready
        std::uint64_t reconnect_at = no_time;  // dial again at this time
        std::uint64_t try_until = 0;
        std::uint64_t retry_ns = 0;
        std::uint64_t dialled_at = 0;
        double tokens = 0;
        std::vector<std::uint64_t> sent_at;     // by sequence number
        std::vector<std::uint8_t> delivered;    // by sequence number: this client's packets that arrived
        std::vector<std::uint64_t> moves_at;
    };

    struct leaving {
        ring::conn_id conn;
        std::uint64_t last_packet_ns;
    };

    std::optional<std::size_t> end_of(ring::conn_id conn) const noexcept {
        const auto it = _by_slot.find(conn.slot);
        if (it == _by_slot.end() || !(it->second.first == conn)) return std::nullopt;
        return it->second.second;
    }
    void say(const std::string& line) {
        if (_o.event) _o.event(line);
    }
    std::optional<ring::conn_id> dial(std::size_t e) {
        client::client_options c = _o.base;
        c.key = _ends[e].key;
        const auto conn = _pool->dial(_o.server, c);
        if (conn) _by_slot[conn->slot] = {*conn, e};
        return conn;
    }
    void start() {
        _started = true;
        for (std::size_t e = 0; e < _ends.size(); ++e)
            if (!dial(e)) _shared.failed++;
    }
    void dial_again(std::size_t e, std::uint64_t now) {
        end& x = _ends[e];
        x.dialled_at = now;
        x.pending = dial(e);
        if (!x.pending) {
            _result.dial_failures++;
            retry_later(e, now, client::client_failure::connect_failed);
        }
    }
    void retry_later(std::size_t e, std::uint64_t now, client::client_failure failure) {
        end& x = _ends[e];
        if (now >= x.try_until) {
            _result.gave_up++;
            x.reconnect_at = no_time;
            say(fmt::format("client {} gave up reconnecting ({})", e, client::to_string(failure)));
            return;
        }
        x.reconnect_at = now + x.retry_ns;
        x.retry_ns = std::min<std::uint64_t>(x.retry_ns * 2, 5'000'000'000);
    }
    void leave(ring::conn_id conn) {
        _by_slot.erase(conn.slot);
        _pool->close(conn);
    }

    shared_state& _shared;
    const restart_options& _o;
    client::client_pool* _pool = nullptr;
    std::vector<end> _ends;
    std::unordered_map<std::uint32_t, std::pair<ring::conn_id, std::size_t>> _by_slot;
    std::vector<leaving> _leaving;  // connections moved away from, still read
    restart_measurement _result;
    double _rate_per_end = 0;
    std::uint64_t _last_refill_ns = 0;
    bool _started = false;
    std::atomic<bool> _stopping{false};  // set by the thread that stops the runtime
};

}  // namespace

restart_measurement measure_restart(const restart_options& options) {
    restart_measurement r;
    if (options.packet_bytes < stamp_bytes || options.packet_bytes > 65536) {
        r.error = fmt::format("packets must be {}..65536 bytes (sequence, sender and send time)", stamp_bytes);
        return r;
    }
    shared_state shared;
    restart_load load(shared, options);
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.cpu_offset = options.client_cpu;
    cfg.shard_defaults.conn_slots = 4 * options.pairs + 16;  // each client may hold two connections
    auto rt = client::start_client_runtime(cfg, load, options.tls);
    if (!rt) {
        r.error = fmt::format("client runtime: {}", rt.error());
        return r;
    }
    const std::uint64_t clients = 2 * std::uint64_t{options.pairs};
    const auto ready_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (shared.ready.load() + shared.failed.load() < clients && std::chrono::steady_clock::now() < ready_deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (shared.ready.load() < clients) {
        r.error = fmt::format("only {} of {} clients finished the handshake", shared.ready.load(), clients);
        rt.value()->request_stop();
        rt.value()->wait();
        return r;
    }
    shared.sending = true;
    rt.value()->wake_all();
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(options.duration_s);
    while (std::chrono::steady_clock::now() < end && !(options.stop_early && options.stop_early()))
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    shared.sending = false;
    rt.value()->wake_all();
    std::this_thread::sleep_for(std::chrono::duration<double>(options.drain_s));
    load.stop();  // the closes that follow are ours
    rt.value()->request_stop();
    rt.value()->wait();
    return load.finish(options.in_flight_ns);
}

}  // namespace derp::bench
