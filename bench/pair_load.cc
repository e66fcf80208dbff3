// The pair load (see pair_load.hh).
#include "bench/pair_load.hh"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench/load_pool.hh"
#include "bench/raw_pool.hh"
#include "crypto/box.hh"
#include "ring/runtime.hh"

namespace derp::bench {
namespace {

using clock_type = std::chrono::steady_clock;

struct run_stats {
    std::atomic<std::uint64_t> ready{0};
    std::atomic<std::uint64_t> sent{0};
    std::atomic<std::uint64_t> received{0};
    std::atomic<std::uint64_t> received_bytes{0};
    std::atomic<std::uint64_t> failures{0};
    std::atomic<bool> sending{false};
    std::atomic<bool> stopping{false};  // the runtime is being stopped: closes are ours
};

class pair_load final : public client::handler {
public:
    std::uint64_t pacing_interval_ns = 250'000;

    pair_load(run_stats& stats, const pair_options& options, const std::vector<ring::socket_address>& servers)
        : _stats(stats), _rate_pps(options.rate_pps), _servers(servers), _pairs(options.pairs), _options(options) {
        // The sizes packets take, in a fixed shuffled cycle of 100 drawn by the mix's shares,
        // so that every run offers the same sequence.
        if (options.sizes.empty()) {
            _size_cycle.push_back(options.packet_bytes);
        } else {
            for (const auto& [bytes, share] : options.sizes)
                for (int i = 0; i < static_cast<int>(share * 100 + 0.5); ++i) _size_cycle.push_back(bytes);
            std::uint64_t state = 0x9e3779b97f4a7c15ull;
            for (std::size_t i = _size_cycle.size(); i > 1; --i) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                std::swap(_size_cycle[i - 1], _size_cycle[(state >> 33) % i]);
            }
        }
    }

    template <typename Pool>
    void attach(Pool& pool) {
        _pool = std::make_unique<load_pool_of<Pool>>(pool);
    }

    void on_ready(ring::conn_id, const node_key&) noexcept override { _stats.ready++; }
    void on_packet(ring::conn_id, const node_key&, std::span<const std::uint8_t> packet) noexcept override {
        _received_local++;
        _received_bytes_local += packet.size();
        if ((_received_local & 63) == 0) {
            _stats.received.store(_received_local, std::memory_order_relaxed);
            _stats.received_bytes.store(_received_bytes_local, std::memory_order_relaxed);
        }
    }
    void on_closed(ring::conn_id, client::client_failure f) noexcept override {
        // Any close before we stop is a failure: the server refused or hung up on a client.
        (void)f;
        if (_started && !_stats.stopping.load()) _stats.failures++;
    }
    std::size_t fill(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override {
        auto it = std::find_if(_senders.begin(), _senders.end(), [&](const sender& s) { return s.conn == conn; });
        if (it == _senders.end() || !_stats.sending.load(std::memory_order_relaxed)) return 0;
        std::size_t n = 0;
        std::uint64_t budget = _rate_pps > 0 ? static_cast<std::uint64_t>(it->tokens) : ~0ull;
        std::uint32_t frames = 0;
        while (budget > 0 && (_options.frames_per_write_max == 0 || frames < _options.frames_per_write_max)) {
            ++frames;
            const std::size_t packet_bytes = _size_cycle[_sent_local % _size_cycle.size()];
            const std::size_t frame = send_packet_frame_bytes(packet_bytes);
            if (n + frame > out.size()) break;
            encode_frame_header(out.subspan(n), frame_type::send_packet, key_bytes + packet_bytes);
            std::memcpy(out.data() + n + frame_header_bytes, it->dst.bytes().data(), key_bytes);
            std::uint8_t* payload = out.data() + n + frame_header_bytes + key_bytes;
            std::memset(payload, 0, packet_bytes);
            std::memcpy(payload, &_sent_local, std::min<std::size_t>(8, packet_bytes));
            ++_sent_local;
            n += frame;
            --budget;
            if (_rate_pps > 0) it->tokens -= 1;
        }
        _stats.sent.store(_sent_local, std::memory_order_relaxed);
        if (_rate_pps <= 0 || it->tokens >= 1) _pool->want_send(conn);  // more is waiting
        return n;
    }
    bool on_turn() noexcept override {
        if (!_started) start();
        dial_more();
        const bool sending = _stats.sending.load(std::memory_order_relaxed);
        const std::uint64_t now = ring::monotonic_ns();
        if (sending && !_was_sending && !_senders.empty()) {
            _sending_since_ns = now;
            _last_refill_ns = now;
            _next_tick_ns = now;
            if (_rate_pps <= 0)
                for (auto& s : _senders) _pool->want_send(s.conn);
        }
        _was_sending = sending;
        if (sending && _options.stop_reading_after_s >= 0 && !_stopped_reading &&
            static_cast<double>(now - _sending_since_ns) / 1e9 >= _options.stop_reading_after_s) {
            _stopped_reading = true;
            for (auto c : _receivers) _pool->stop_reading(c);
        }
        // After the window the stuck receivers read again, so that a connection the server
        // closed meanwhile is seen (and counted) in the drain.
        if (!sending && _stopped_reading && !_resumed_reading) {
            _resumed_reading = true;
            for (auto c : _receivers) _pool->resume_reading(c);
        }
        _stats.received.store(_received_local, std::memory_order_relaxed);
        _stats.received_bytes.store(_received_bytes_local, std::memory_order_relaxed);
        if (sending && _rate_pps > 0 && !_senders.empty()) {
            if (now >= _next_tick_ns) {
                pace(now);
                _next_tick_ns = now + pacing_interval_ns;
            }
            _pool->wake_at(_next_tick_ns);  // sleep until the next pacing tick
        }
        return false;
    }

    // Paced sending: every pacing interval (-pace, 250 us) each sender may send what it
    // accumulated since, as a client host carrying many flows does, rather than one packet per
    // write. The loop sleeps in between, so the load generator spends its core on sending and
    // receiving. Bursts larger than a client's 32-deep queue would measure the burst, not the
    // relay.
    void pace(std::uint64_t now) noexcept {
        const double add = static_cast<double>(now - _last_refill_ns) / 1e9 * _rate_pps /
                           static_cast<double>(_senders.size());
        _last_refill_ns = now;
        for (auto& s : _senders) {
            // At most four intervals' worth: a sender that could not keep up does not burst.
            s.tokens = std::min(s.tokens + add, std::max(1.0, 4 * _rate_pps / static_cast<double>(_senders.size()) *
                                                                  static_cast<double>(pacing_interval_ns) / 1e9));
            if (s.tokens >= 1) _pool->want_send(s.conn);
        }
    }

private:
    struct sender {
        ring::conn_id conn;
        node_key dst;
        double tokens = 0;
    };
    // The clients to dial, receiver then sender for each pair. Against a raw forwarder (which
    // pairs connections in the order it accepts them) one at a time: the next is dialled only
    // once every earlier one is connected; against a DERP server all at once.
    struct planned_dial {
        client::client_options options;
        std::size_t server;
        bool sender;
        node_key peer;  // a sender's receiver
    };
    void start() {
        _started = true;
        for (std::uint32_t i = 0; i < _pairs; ++i) {
            client::client_options tx, rx;
            tx.key = generate_private_key();
            rx.key = generate_private_key();
            tx.host = rx.host = _options.host;
            tx.websocket = rx.websocket = _options.websocket;
            tx.mesh_key = rx.mesh_key = _options.mesh_key;
            const std::size_t home = i % _servers.size();
            const std::size_t away = _options.cross_node ? (home + 1) % _servers.size() : home;
            if (_options.hosts.size() == _servers.size()) {
                rx.host = _options.hosts[away];
                tx.host = _options.hosts[home];
            }
            if (_options.contexts.size() == _servers.size()) {
                rx.tls_context = _options.contexts[away];
                tx.tls_context = _options.contexts[home];
            }
            const node_key rx_public = public_key_of(rx.key);
            _plan.push_back({std::move(rx), away, false, {}});
            _plan.push_back({std::move(tx), home, true, rx_public});
        }
    }
    void dial_more() {
        while (_next_dial < _plan.size() &&
               (!_options.raw || _stats.ready.load(std::memory_order_relaxed) == _next_dial)) {
            const planned_dial& d = _plan[_next_dial++];
            auto conn = _pool->dial(_servers[d.server], d.options);
            if (!conn) {
                _stats.failures++;
                continue;
            }
            if (d.sender)
                _senders.push_back({*conn, d.peer, 0});
            else
                _receivers.push_back(*conn);
        }
    }

    run_stats& _stats;
    double _rate_pps;
    std::vector<ring::socket_address> _servers;
    std::uint32_t _pairs;
    const pair_options& _options;
    std::vector<std::size_t> _size_cycle;
    std::unique_ptr<load_pool> _pool;
    std::vector<planned_dial> _plan;
    std::size_t _next_dial = 0;
    std::vector<sender> _senders;
    std::vector<ring::conn_id> _receivers;
    bool _stopped_reading = false;
    bool _resumed_reading = false;
    std::uint64_t _sending_since_ns = 0;
    bool _started = false;
    bool _was_sending = false;
    std::uint64_t _last_refill_ns = 0;
    std::uint64_t _next_tick_ns = 0;
    std::uint64_t _sent_local = 0;
    std::uint64_t _received_local = 0;
    std::uint64_t _received_bytes_local = 0;
};

double own_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace

size_mix realistic_size_mix() { return {{64, 0.30}, {96, 0.22}, {400, 0.10}, {1280, 0.38}}; }

double mean_size(const size_mix& mix) {
    double mean = 0;
    for (const auto& [bytes, share] : mix) mean += static_cast<double>(bytes) * share;
    return mean;
}

pair_measurement measure_pairs(const std::vector<ring::socket_address>& servers, const pair_options& options) {
    pair_measurement r;
    const std::uint32_t pairs = options.pairs;
    run_stats stats;
    if (servers.empty()) {
        r.error = "no server to measure";
        r.failures = 1;
        return r;
    }
    pair_load load(stats, options, servers);
    load.pacing_interval_ns = options.pacing_interval_ns;
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.cpu_offset = options.client_cpu_offset;
    cfg.shard_defaults.conn_slots = 2 * pairs + 16;
    cfg.shard_defaults.send_buffer_count = 256;
    cfg.shard_defaults.send_buffer_bytes = 65536;
    auto rt = options.raw ? start_raw_runtime(cfg, load) : client::start_client_runtime(cfg, load, options.tls);
    if (!rt) {
        r.error = fmt::format("client runtime: {}", rt.error());
        r.failures = 1;
        return r;
    }
    const auto ready_deadline = clock_type::now() + std::chrono::seconds(10);
    while (stats.ready.load() < 2 * pairs && clock_type::now() < ready_deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (stats.ready.load() < 2 * pairs) {
        r.error = fmt::format("only {} of {} clients finished the handshake", stats.ready.load(), 2 * pairs);
        r.failures = 1;
    }
    // Warm up, then measure.
    stats.sending = true;
    rt.value()->wake_all();
    std::this_thread::sleep_for(std::chrono::duration<double>(options.warmup_s));
    const bool sample = options.server_pid > 0;
    const std::uint64_t sent0 = stats.sent.load(), received0 = stats.received.load();
    const std::uint64_t bytes0 = stats.received_bytes.load();
    const double server_cpu0 = sample ? process_cpu_seconds(options.server_pid) : 0, own_cpu0 = own_cpu_seconds();
    const auto t0 = clock_type::now();
    const auto window_end = t0 + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(options.duration_s));
    while (clock_type::now() < window_end) {
        const auto next = std::min(window_end, clock_type::now() + std::chrono::milliseconds(250));
        std::this_thread::sleep_until(next);
        if (options.progress) {
            pair_progress p;
            p.elapsed_s = std::chrono::duration<double>(clock_type::now() - t0).count();
            p.sent_packets = stats.sent.load() - sent0;
            p.delivered_packets = stats.received.load() - received0;
            p.delivered_gbps = p.elapsed_s > 0 ? static_cast<double>(stats.received_bytes.load() - bytes0) * 8 / 1e9 / p.elapsed_s : 0;
            options.progress(p);
        }
    }
    const double elapsed = std::chrono::duration<double>(clock_type::now() - t0).count();
    const std::uint64_t sent1 = stats.sent.load(), received1 = stats.received.load();
    const std::uint64_t bytes1 = stats.received_bytes.load();
    const double server_cpu = sample ? process_cpu_seconds(options.server_pid) - server_cpu0 : -1;
    const double own_cpu = own_cpu_seconds() - own_cpu0;
    if (sample) r.server_rss_bytes = process_rss_bytes(options.server_pid);
    stats.sending = false;
    rt.value()->wake_all();
    // Loss over the window: what was sent in it and not delivered by the end of a short drain.
    // After a stuck receiver (fault injection) the drain is longer: a connection the server
    // closed meanwhile still has data queued on the server's orphaned socket, which TCP
    // delivers (zero-window probes, backing off) before the FIN that shows the close.
    // A raw forwarder drops nothing (TCP, and it stops reading rather than drop): there the
    // drain lasts until everything sent has arrived (at most 5 s), so that a count short of
    // what was sent is a fault, not a slow turn of this machine.
    std::this_thread::sleep_for(std::chrono::milliseconds(options.stop_reading_after_s >= 0 ? 3000 : 300));
    for (const auto drain_end = clock_type::now() + std::chrono::seconds(5);
         options.raw && stats.received.load() < stats.sent.load() && clock_type::now() < drain_end;)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const std::uint64_t received_drained = stats.received.load();
    r.sent_packets = sent1 - sent0;
    r.delivered_packets = std::min(r.sent_packets, received_drained - received0);
    r.late_packets = r.delivered_packets > received1 - received0 ? r.delivered_packets - (received1 - received0) : 0;
    const double received_window = static_cast<double>(received1 - received0);
    r.delivered_pps = received_window / elapsed;
    r.delivered_gbps = static_cast<double>(bytes1 - bytes0) * 8 / 1e9 / elapsed;
    r.loss = r.sent_packets > 0 ? 1.0 - static_cast<double>(r.delivered_packets) / static_cast<double>(r.sent_packets) : 0;
    r.server_cpu_s = server_cpu;
    r.server_cpu_us_per_packet = sample && received_window > 0 ? server_cpu * 1e6 / received_window : 0;
    r.server_cpu_share = sample ? server_cpu / elapsed : 0;
    r.client_cpu_share = own_cpu / elapsed;
    r.failures += stats.failures.load();
    stats.stopping = true;
    rt.value()->request_stop();
    rt.value()->wait();
    return r;
}

}  // namespace derp::bench
