// derpbench: capacity planning against any DERP server (derpd or Tailscale's derper), built on
// the project's client library and the ring runtime. Workloads:
//   throughput   N sender/receiver pairs, fixed packet size or a realistic mix (--size mix),
//                paced (--rate) or unlimited
//   latency      round trips through the relay (p50..max), beside an optional paced load
//   connections  ramps idle clients to --count; time per connect, server RSS per connection
//   sweep        per packet size, the highest rate delivered with loss under 1 % (--plot: a
//                page of charts, as `derpbench report` draws them)
// and commands on the run files the workloads append to with --out (bench/report_cli):
//   report       RUN.jsonl... -o report.html: charts, table and sizing; --format markdown
//   size         RUN.jsonl... --target clients=N,gbps=G: shards and nodes for a region
//   restart      pairs exchanging numbered packets that follow the server's Restarting frame
//                (bench/restart_load): run it across a node's restart to count what it cost
// Senders write one frame per send by default, as Go's derphttp client does (--write
// per-packet); --write batched packs as many as fit, which costs the server far less per packet.
// Reports sent, delivered and lost packets always, the server's CPU and RSS when --server-pid
// is given, and says when the load generator, not the server, was the bottleneck. Exits 1 when
// clients failed or the server closed them unexpectedly. Targets: http:// or https:// (with
// --insecure, --ca FILE or --cert-name sha256-raw:HEX), --url repeated for a region (pairs are
// spread over its nodes; --cross-node puts each receiver on the next node), --mesh-key; or
// tcp://host:port, the raw forwarder baseline (bench/forwarder, bench/raw_pool.hh): the same
// frames without DERP, for throughput, latency and sweep. On a terminal a progress line shows
// the window as it runs.
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bench/bench_util.hh"
#include "bench/derpbench_clients.hh"
#include "bench/pair_load.hh"
#include "bench/raw_pool.hh"
#include "bench/report_cli.hh"
#include "bench/restart_load.hh"
#include "bench/run_facts.hh"
#include "client/derp_client.hh"
#include "core/key.hh"
#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "ring/runtime.hh"

namespace {

using namespace derp;
using namespace derp::bench;
using clock_type = std::chrono::steady_clock;

struct options {
    std::string workload;
    std::vector<std::string> urls = {"http://127.0.0.1:3340/derp"};
    bool insecure = false, cross_node = false;
    std::string ca, cert_name, mesh_key_hex;
    std::string size_text = "1400";        // bytes, or "mix"
    std::optional<key_mesh> mesh_key;
    std::int64_t pairs = 4, size = 1400, rate = 0, count = 1000, server_pid = -1;
    std::int64_t duration_ns = 5'000'000'000, warmup_ns = 500'000'000, pace_ns = 250'000;
    std::int64_t hold_ns = 0;  // connections: keep the clients open this long after the report
    std::int64_t connect_concurrency = 0;  // connections: dials in flight at most (0 = all at once)
    std::int64_t probe_interval_ns = 1'000'000;
    bool json = false, csv = false;
    std::string sizes = "64,570,1400";     // sweep
    std::string pairs_grid;                // sweep: comma-separated pairs values; empty = --pairs
    std::int64_t start_rate = 50000;       // sweep: first offered rate
    std::int64_t max_rate = 2'000'000;     // sweep: stop doubling here
    std::int64_t rounds = 1;               // sweep: windows per rate; the median loss decides
    std::string plot;                      // sweep: an HTML page of charts
    std::string out;                       // append run records (JSON Lines) here
    std::string label;                     // the run's label in the records; empty: made up
    std::string derpd_flags;               // the server's flags for the records
    std::string varz_url;                  // where the server's version and shards are read
    std::string write = "per-packet";      // per-packet | batched (frames_per_write 1 | 0)
    run_record context;                    // machine, server and load of this run's records
    bool live = false;                     // a progress line on stderr (a terminal)
    std::int64_t stop_reading_after_ns = -1;  // fault injection
    std::int64_t frames_per_write = 1;  // throughput, sweep: 0 = as many as fit (from --write)
    // The core the load runs on: by default the last one, since derpd puts its first shard on
    // core 0 (and only its mostly idle admin thread on the last).
    std::int64_t cpu = static_cast<std::int64_t>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)) - 1);

    client::client_options client_base(const targets& ts) const {
        client::client_options c;
        c.host = ts.list.front().host;
        c.mesh_key = mesh_key;
        c.websocket = ts.list.front().websocket;
        return c;
    }
    // The common pair options of throughput, sweep and latency's background load.
    bench::pair_options pair_base(const targets& ts) const {
        bench::pair_options p;
        p.pairs = static_cast<std::uint32_t>(pairs);
        p.packet_bytes = static_cast<std::size_t>(size);
        if (size_text == "mix") p.sizes = bench::realistic_size_mix();
        p.pacing_interval_ns = static_cast<std::uint64_t>(pace_ns);
        p.warmup_s = static_cast<double>(warmup_ns) / 1e9;
        p.duration_s = static_cast<double>(duration_ns) / 1e9;
        p.server_pid = static_cast<pid_t>(server_pid);
        p.client_cpu_offset = static_cast<std::uint32_t>(cpu);
        p.tls = ts.tls;
        p.host = ts.list.front().host;
        p.mesh_key = mesh_key;
        p.websocket = ts.list.front().websocket;
        p.raw = ts.list.front().raw;
        p.frames_per_write_max = static_cast<std::uint32_t>(frames_per_write);
        p.cross_node = cross_node;
        for (const auto& t : ts.list) {
            p.hosts.push_back(t.host);
            p.contexts.push_back(t.context);
        }
        p.stop_reading_after_s = stop_reading_after_ns < 0 ? -1 : static_cast<double>(stop_reading_after_ns) / 1e9;
        if (live)
            p.progress = [](const bench::pair_progress& g) {
                const double loss = g.sent_packets > 0 ? 1.0 - static_cast<double>(g.delivered_packets) /
                                                                   static_cast<double>(g.sent_packets)
                                                       : 0;
                std::fprintf(stderr, "\r  %5.1f s  sent %-10llu delivered %-10llu in flight/lost %5.2f %%  %.3f Gbit/s   ",
                             g.elapsed_s, static_cast<unsigned long long>(g.sent_packets),
                             static_cast<unsigned long long>(g.delivered_packets), loss * 100, g.delivered_gbps);
                std::fflush(stderr);
            };
        return p;
    }
};

void end_progress_line(const options& o) {
    if (o.live) std::fprintf(stderr, "\r%100s\r", "");
}

// Appends the run's records to --out (when given); false (and says why) when that failed.
bool save_records(const options& o, const std::vector<run_record>& records) {
    if (o.out.empty() || records.empty()) return true;
    auto saved = append_run_file(o.out, records);
    if (!saved) std::fprintf(stderr, "derpbench: %s\n", saved.error().c_str());
    return saved.has_value();
}

// A record of this run with its context, for a measurement of `kind`.
run_record record_of(const options& o, record_kind kind) {
    run_record r = o.context;
    r.kind = kind;
    return r;
}

// A record of one sweep cell (pairs, size) with its window length.
run_record sweep_record(const options& o, record_kind kind, std::int64_t pairs, std::int64_t size, const std::string& label,
                        double duration_s) {
    run_record r = record_of(o, kind);
    r.pairs = pairs;
    r.size = size;
    r.size_label = label;
    r.duration_s = duration_s;
    return r;
}

int run_sweep(const options& o, const targets& ts) {
    std::vector<run_record> records;
    std::string json = "[";
    bool failed = false;
    // The grid: every pairs value (--pairs-grid, else --pairs) x every size x the rates found.
    std::vector<std::int64_t> pairs_values = bench::comma_ints(o.pairs_grid);
    if (pairs_values.empty()) pairs_values.push_back(o.pairs);
    for (const std::int64_t pairs_value : pairs_values) {
    for (const std::string& size_text : bench::comma_list(o.sizes)) {
        bench::pair_options p = o.pair_base(ts);
        p.pairs = static_cast<std::uint32_t>(pairs_value);
        // "mix" sweeps the realistic mix; its row is labelled with the mean size.
        const bool mix = size_text == "mix";
        p.sizes = mix ? bench::realistic_size_mix() : bench::size_mix{};
        const std::int64_t size = mix ? static_cast<std::int64_t>(bench::mean_size(p.sizes)) : std::stoll(size_text);
        p.packet_bytes = static_cast<std::size_t>(size);
        double good_cpu_per_gbit = 0;
        // Double the offered rate until loss reaches 1 %, then bisect three times between the
        // last good and the first bad rate.
        double good = 0, bad = 0, good_delivered = 0, good_sent = 0;
        // Each rate is measured --rounds times and the round with the median loss stands for
        // it: on a shared machine one window in which the load generator was descheduled (its
        // receivers stop reading, the server's 32-deep queues drop) does not end the sweep.
        auto measure = [&](double rate) {
            p.rate_pps = rate;
            std::vector<bench::pair_measurement> rounds;
            for (std::int64_t round = 0; round < o.rounds; ++round) {
                rounds.push_back(bench::measure_pairs(ts.addresses(), p));
                end_progress_line(o);
                if (rounds.back().failures > 0 || !rounds.back().error.empty()) failed = true;
            }
            std::sort(rounds.begin(), rounds.end(), [](const auto& a, const auto& b) { return a.loss < b.loss; });
            const bench::pair_measurement m = rounds[rounds.size() / 2];
            run_record r = sweep_record(o, record_kind::sweep_point, pairs_value, size, size_text, p.duration_s);
            r.offered_pps = rate;
            r.delivered_pps = m.delivered_pps;
            r.delivered_bps = m.delivered_gbps * 1e9;
            r.sent_pps = static_cast<double>(m.sent_packets) / p.duration_s;
            r.loss = m.loss;
            if (m.server_cpu_s > 0) r.server_cpu_share = m.server_cpu_share;
            records.push_back(r);
            if (!o.json) fmt::print(stderr, "  {} pairs, {} B at {:.0f} pkt/s: delivered {:.0f} pkt/s, loss {:.3f} %\n",
                                    pairs_value, size, rate, m.delivered_pps, m.loss * 100);
            return m;
        };
        // One probe: measure at `rate` and move the good/bad bracket; true when under 1 % loss.
        auto probe = [&](double rate) {
            const auto m = measure(rate);
            if (m.loss >= 0.01) {
                bad = rate;
                return false;
            }
            good = rate;
            good_delivered = m.delivered_pps;
            good_sent = static_cast<double>(m.sent_packets) / p.duration_s;
            good_cpu_per_gbit = m.server_cpu_s > 0 && m.delivered_gbps > 0 ? m.server_cpu_share / m.delivered_gbps : 0;
            return true;
        };
        for (double rate = static_cast<double>(o.start_rate); rate <= static_cast<double>(o.max_rate); rate *= 2)
            if (!probe(rate)) break;
        for (int step = 0; step < 3 && bad > 0 && good > 0; ++step) probe((good + bad) / 2);
        const double gbps = good_delivered * (mix ? bench::mean_size(p.sizes) : static_cast<double>(size)) * 8 / 1e9;
        run_record knee = sweep_record(o, record_kind::sweep_knee, pairs_value, size, size_text, p.duration_s);
        knee.offered_pps = good;
        knee.delivered_pps = good_delivered;
        knee.delivered_bps = gbps * 1e9;
        knee.sent_pps = good_sent;
        knee.limit_reached = bad > 0;
        if (good_cpu_per_gbit > 0) knee.server_cpu_s_per_gbit = good_cpu_per_gbit;
        records.push_back(knee);
        if (o.json)
            json += fmt::format("{}{{\"pairs\":{},\"size\":{},\"size_label\":\"{}\",\"max_rate_under_1pct_loss_pps\":{:.0f},"
                                "\"delivered_pps\":{:.0f},\"delivered_bps\":{:.0f},\"limit_reached\":{}{}}}",
                                json.size() > 1 ? "," : "", pairs_value, size, size_text, good, good_delivered, gbps * 1e9,
                                bad > 0 ? "true" : "false",
                                good_cpu_per_gbit > 0 ? fmt::format(",\"server_cpu_s_per_gbit\":{:.4f}", good_cpu_per_gbit)
                                                      : std::string());
        else
            fmt::print("{:>4} pairs {:>6} B{}, {} writes: {:.0f} pkt/s ({:.3f} Gbit/s) delivered with loss under 1 %{}{}\n",
                       pairs_value, size, mix ? " (mix)" : "", o.write, good_delivered, gbps,
                       good_cpu_per_gbit > 0 ? fmt::format(", server {:.3f} CPU s per Gbit", good_cpu_per_gbit) : "",
                       bad > 0 ? "" : fmt::format(" (no loss up to {} pkt/s: raise --max-rate)", o.max_rate));
    }
    }
    if (o.json)
        fmt::print("{{\"workload\":\"sweep\",\"url\":\"{}\",\"write\":\"{}\",\"pairs\":{},\"results\":{}]}}\n", ts.urls(),
                   o.write, o.pairs, json);
    bool saved = save_records(o, records);
    if (!o.plot.empty()) {
        report_options page;
        page.title = fmt::format("derpbench sweep of {} ({} writes)", ts.urls(), o.write);
        if (auto written = write_html_report(o.plot, records, page); !written) {
            std::fprintf(stderr, "derpbench: --plot %s\n", written.error().c_str());
            saved = false;
        }
    }
    if (failed) std::fprintf(stderr, "derpbench: client failures during the sweep\n");
    return failed || !saved ? 1 : 0;
}

int run_latency(const options& o, const targets& ts) {
    latency_stats st;
    const auto servers = ts.addresses();
    const std::size_t node_b = o.cross_node ? 1 % servers.size() : 0;
    latency_probe probe(st, servers.front(), servers[node_b], static_cast<std::size_t>(o.size),
                        static_cast<std::uint64_t>(o.probe_interval_ns), ts.for_node(o.client_base(ts), 0),
                        ts.for_node(o.client_base(ts), node_b));
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.shard_defaults.conn_slots = 16;
    auto rt = ts.list.front().raw ? bench::start_raw_runtime(cfg, probe) : client::start_client_runtime(cfg, probe, ts.tls);
    if (!rt) {
        std::fprintf(stderr, "derpbench: client runtime: %s\n", rt.error().c_str());
        return 1;
    }
    const auto ready_deadline = clock_type::now() + std::chrono::seconds(10);
    while (st.ready.load() < 2 && clock_type::now() < ready_deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (st.ready.load() < 2) {
        std::fprintf(stderr, "derpbench: the probe clients did not finish the handshake\n");
        return 1;
    }
    // Background load (when --rate > 0) on its own runtime, for the same time.
    bench::pair_measurement background;
    std::thread load_thread;
    // Declared out here: the load thread reads these options for the whole window (they were
    // once scoped to the if below, and the thread read a destroyed object).
    bench::pair_options background_options = o.pair_base(ts);
    if (o.rate > 0) {
        background_options.rate_pps = static_cast<double>(o.rate);
        background_options.warmup_s = 0;
        background_options.progress = nullptr;
        load_thread = std::thread([&] { background = bench::measure_pairs(servers, background_options); });
    }
    st.running = true;
    rt.value()->wake_all();
    std::this_thread::sleep_for(std::chrono::nanoseconds(o.duration_ns));
    st.running = false;
    if (load_thread.joinable()) load_thread.join();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // last echoes
    rt.value()->request_stop();
    rt.value()->wait();
    std::vector<double>& rtts = probe.rtts_us();
    std::sort(rtts.begin(), rtts.end());
    const std::uint64_t sent = st.sent.load();
    const double loss = sent > 0 ? 1.0 - static_cast<double>(rtts.size()) / static_cast<double>(sent) : 0;
    const double p50 = percentile(rtts, 0.5), p90 = percentile(rtts, 0.9), p99 = percentile(rtts, 0.99),
                 p999 = percentile(rtts, 0.999), max = rtts.empty() ? 0 : rtts.back();
    run_record r = record_of(o, record_kind::latency);
    r.pairs = o.rate > 0 ? o.pairs : 0;
    r.size = o.size;
    r.size_label = o.size_text;
    r.duration_s = static_cast<double>(o.duration_ns) / 1e9;
    r.offered_pps = static_cast<double>(o.rate);
    r.delivered_pps = o.rate > 0 ? background.delivered_pps : 0;
    r.loss = o.rate > 0 ? background.loss : 0;
    r.probes_sent = sent;
    r.probes_answered = rtts.size();
    r.rtt_p50_us = p50;
    r.rtt_p90_us = p90;
    r.rtt_p99_us = p99;
    r.rtt_p999_us = p999;
    r.rtt_max_us = max;
    const bool saved = save_records(o, {r});
    // With a background load and --server-pid: the server's CPU per packet it relayed in the
    // background's window, the probes counted too (each crosses the server twice).
    const double relayed_pps = background.delivered_pps + 2e9 / static_cast<double>(o.probe_interval_ns);
    const std::string server_cpu = o.rate > 0 && background.server_cpu_s >= 0 && o.server_pid > 0
        ? fmt::format(",\"server_cpu_s\":{:.3f},\"server_cpu_us_per_packet\":{:.3f}", background.server_cpu_s,
                      background.server_cpu_share * 1e6 / relayed_pps)
        : std::string();
    if (o.json) {
        fmt::print("{{\"workload\":\"latency\",\"url\":\"{}\",\"write\":\"{}\",\"pairs\":{},\"size\":{},\"background_rate_pps\":{},"
                   "\"duration_s\":{:.3f},\"sent_packets\":{},\"delivered_packets\":{},\"loss_ratio\":{:.6f},"
                   "\"rtt_p50_us\":{:.1f},\"rtt_p90_us\":{:.1f},\"rtt_p99_us\":{:.1f},\"rtt_p999_us\":{:.1f},\"rtt_max_us\":{:.1f}"
                   "{}}}\n",
                   ts.urls(), o.write, o.rate > 0 ? o.pairs : 0, o.size, o.rate, static_cast<double>(o.duration_ns) / 1e9, sent,
                   rtts.size(), loss, p50, p90, p99, p999, max,
                   o.rate > 0 ? fmt::format(",\"background_delivered_pps\":{:.0f},\"background_loss_ratio\":{:.6f}{}",
                                            background.delivered_pps, background.loss, server_cpu)
                              : std::string());
    } else {
        fmt::print("latency through {}: {} probes of {} B, {} answered ({:.3f} % lost)\n", ts.urls(), sent, o.size,
                   rtts.size(), loss * 100);
        fmt::print("  round trip: p50 {:.1f} us  p90 {:.1f} us  p99 {:.1f} us  p99.9 {:.1f} us  max {:.1f} us\n", p50,
                   p90, p99, p999, max);
        if (o.rate > 0)
            fmt::print("  background: {} pairs offering {} pkt/s ({} writes), delivered {:.0f} pkt/s ({:.3f} % lost)\n",
                       o.pairs, o.rate, o.write, background.delivered_pps, background.loss * 100);
        if (!server_cpu.empty())
            fmt::print("  server: {:.0f} % of a core, {:.3f} us per relayed packet (probes included)\n",
                       background.server_cpu_share * 100, background.server_cpu_share * 1e6 / relayed_pps);
    }
    const std::uint64_t failures = st.failures.load() + background.failures;
    if (failures > 0) {
        std::fprintf(stderr, "derpbench: %llu client failure(s)\n", static_cast<unsigned long long>(failures));
        return 1;
    }
    return rtts.empty() || !saved ? 1 : 0;
}

int run_throughput(const options& o, const targets& ts) {
    bench::pair_options p = o.pair_base(ts);
    p.rate_pps = static_cast<double>(o.rate);
    const bench::pair_measurement m = bench::measure_pairs(ts.addresses(), p);
    end_progress_line(o);
    if (!m.error.empty()) std::fprintf(stderr, "derpbench: %s\n", m.error.c_str());
    const bool sampled = o.server_pid > 0;
    const double delivered_bps = m.delivered_gbps * 1e9;
    const std::string size_label = o.size_text == "mix" ? fmt::format("\"mix\",\"size_mean\":{:.0f}", bench::mean_size(p.sizes))
                                                        : std::to_string(o.size);
    run_record r = record_of(o, record_kind::throughput);
    r.pairs = o.pairs;
    r.size = o.size;
    r.size_label = o.size_text;
    r.duration_s = p.duration_s;
    r.offered_pps = static_cast<double>(o.rate);
    r.delivered_pps = m.delivered_pps;
    r.delivered_bps = delivered_bps;
    r.sent_pps = static_cast<double>(m.sent_packets) / p.duration_s;
    r.loss = m.loss;
    if (sampled) {
        r.server_cpu_share = m.server_cpu_share;
        r.server_rss_bytes = static_cast<std::int64_t>(m.server_rss_bytes);
    }
    const bool saved = save_records(o, {r});
    if (o.json) {
        std::string extra;
        if (sampled)
            extra = fmt::format(",\"server_cpu_s\":{:.3f},\"server_cpu_us_per_packet\":{:.3f},\"server_rss_bytes\":{}",
                                m.server_cpu_s, m.server_cpu_us_per_packet, m.server_rss_bytes);
        fmt::print("{{\"workload\":\"throughput\",\"url\":\"{}\",\"write\":\"{}\",\"pairs\":{},\"size\":{},\"rate_offered_pps\":{},"
                   "\"duration_s\":{:.3f},\"sent_packets\":{},\"delivered_packets\":{},\"dropped_packets\":{},"
                   "\"late_packets\":{},\"loss_ratio\":{:.6f},"
                   "\"delivered_bps\":{:.0f},\"delivered_pps\":{:.0f},\"client_cpu_share\":{:.3f},\"failures\":{}{}}}\n",
                   ts.urls(), o.write, o.pairs, size_label, o.rate, p.duration_s, m.sent_packets, m.delivered_packets,
                   m.sent_packets - m.delivered_packets, m.late_packets, m.loss, delivered_bps, m.delivered_pps,
                   m.client_cpu_share, m.failures, extra);
    } else if (o.csv) {
        fmt::print("workload,url,write,pairs,size,rate_offered_pps,duration_s,sent_packets,delivered_packets,dropped_packets,"
                   "late_packets,loss_ratio,delivered_bps,delivered_pps,server_cpu_s,server_rss_bytes,failures\n");
        fmt::print("throughput,{},{},{},{},{},{:.3f},{},{},{},{},{:.6f},{:.0f},{:.0f},{},{},{}\n", ts.urls(), o.write, o.pairs,
                   o.size_text == "mix" ? std::string("mix") : std::to_string(o.size), o.rate, p.duration_s,
                   m.sent_packets, m.delivered_packets, m.sent_packets - m.delivered_packets, m.late_packets, m.loss,
                   delivered_bps, m.delivered_pps,
                   sampled ? fmt::format("{:.3f}", m.server_cpu_s) : "", sampled ? std::to_string(m.server_rss_bytes) : "",
                   m.failures);
    } else {
        fmt::print("throughput to {}: {} pairs, {} packets, offered {}, {} writes\n", ts.urls(), o.pairs,
                   o.size_text == "mix" ? fmt::format("a realistic mix (mean {:.0f} B) of", bench::mean_size(p.sizes))
                                        : fmt::format("{} B", o.size),
                   o.rate > 0 ? fmt::format("{} pkt/s", o.rate) : std::string("as fast as possible"), o.write);
        fmt::print("  sent {}  delivered {}  dropped {} ({:.3f} %)  late {}\n", m.sent_packets, m.delivered_packets,
                   m.sent_packets - m.delivered_packets, m.loss * 100, m.late_packets);
        fmt::print("  delivered {:.0f} pkt/s = {:.3f} Gbit/s\n", m.delivered_pps, delivered_bps / 1e9);
        if (sampled)
            fmt::print("  server: {:.3f} CPU s ({:.0f} % of a core), {:.3f} us/packet, {:.2f} CPU s per Gbit, RSS {} MiB\n",
                       m.server_cpu_s, m.server_cpu_share * 100, m.server_cpu_us_per_packet,
                       delivered_bps > 0 ? m.server_cpu_s / p.duration_s / (delivered_bps / 1e9) : 0.0,
                       m.server_rss_bytes >> 20);
        fmt::print("  load generator: {:.0f} % of a core\n", m.client_cpu_share * 100);
    }
    // Never hide who was the limit.
    if (m.client_cpu_share > 0.9 && (!sampled || m.server_cpu_share < 0.9))
        std::fprintf(stderr, "derpbench: note: the load generator used %.0f%% of its core%s: it, not the server, "
                             "was probably the bottleneck\n",
                     m.client_cpu_share * 100, sampled ? " while the server had room" : "");
    if (m.failures > 0) {
        std::fprintf(stderr, "derpbench: %llu client failure(s): the server refused or closed clients\n",
                     static_cast<unsigned long long>(m.failures));
        return 1;
    }
    return m.error.empty() && saved ? 0 : 1;
}

int run_connections(const options& o, const targets& ts) {
    idle_stats st;
    std::vector<client::client_options> per_server;
    for (std::size_t i = 0; i < ts.list.size(); ++i) per_server.push_back(ts.for_node(o.client_base(ts), i));
    idle_clients load(st, ts.addresses(), static_cast<std::uint64_t>(o.count), std::move(per_server),
                      static_cast<std::uint64_t>(o.connect_concurrency));
    ring::runtime_config cfg;
    cfg.shard_count = 1;
    cfg.pin_threads = false;
    cfg.shard_defaults.conn_slots = static_cast<std::uint32_t>(o.count) + 16;
    const std::uint64_t rss_before = o.server_pid > 0 ? bench::process_rss_bytes(static_cast<pid_t>(o.server_pid)) : 0;
    const auto start = clock_type::now();
    auto rt = client::start_client_runtime(cfg, load, ts.tls);
    if (!rt) {
        std::fprintf(stderr, "derpbench: client runtime: %s\n", rt.error().c_str());
        return 1;
    }
    const auto deadline = start + std::chrono::duration<double>(static_cast<double>(o.duration_ns) / 1e9);
    auto last_line = clock_type::now();
    while (clock_type::now() < deadline && (!st.dialled.load() || st.ready.load() + st.failed.load() < static_cast<std::uint64_t>(o.count))) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (o.live && clock_type::now() - last_line > std::chrono::milliseconds(250)) {
            last_line = clock_type::now();
            std::fprintf(stderr, "\r  %llu of %lld connected, %llu failed   ", static_cast<unsigned long long>(st.ready.load()),
                         static_cast<long long>(o.count), static_cast<unsigned long long>(st.failed.load()));
            std::fflush(stderr);
        }
    }
    end_progress_line(o);
    const double elapsed = std::chrono::duration<double>(clock_type::now() - start).count();
    const std::uint64_t ready = st.ready.load(), failed = st.failed.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the server's RSS settle
    const std::uint64_t rss_after = o.server_pid > 0 ? bench::process_rss_bytes(static_cast<pid_t>(o.server_pid)) : 0;
    const double per_conn = ready > 0 && rss_after > rss_before
                                ? static_cast<double>(rss_after - rss_before) / static_cast<double>(ready)
                                : 0;
    run_record r = record_of(o, record_kind::connections);
    r.duration_s = elapsed;
    r.connections = static_cast<std::int64_t>(ready);
    r.connect_failures = static_cast<std::int64_t>(failed);
    if (o.server_pid > 0 && per_conn > 0) r.server_rss_bytes_per_connection = per_conn;
    const bool saved = save_records(o, {r});
    if (o.json) {
        fmt::print("{{\"workload\":\"connections\",\"url\":\"{}\",\"target\":{},\"connected\":{},\"failed\":{},"
                   "\"duration_s\":{:.3f},\"connect_us_mean\":{:.1f}{}}}\n",
                   ts.urls(), o.count, ready, failed, elapsed, ready > 0 ? elapsed * 1e6 / static_cast<double>(ready) : 0.0,
                   o.server_pid > 0 ? fmt::format(",\"server_rss_bytes\":{},\"server_rss_bytes_per_connection\":{:.0f}",
                                                  rss_after, per_conn)
                                    : std::string());
    } else {
        fmt::print("connections to {}: {} of {} connected, {} failed, in {:.2f} s ({:.1f} us per connect)\n", ts.urls(),
                   ready, o.count, failed, elapsed, ready > 0 ? elapsed * 1e6 / static_cast<double>(ready) : 0.0);
        if (o.server_pid > 0)
            fmt::print("  server RSS {} KiB -> {} KiB: {:.0f} bytes per connection\n", rss_before >> 10, rss_after >> 10,
                       per_conn);
    }
    if (o.hold_ns > 0) {
        std::fflush(stdout);
        static volatile std::sig_atomic_t stop_holding = 0;
        std::signal(SIGTERM, [](int) { stop_holding = 1; });
        std::signal(SIGINT, [](int) { stop_holding = 1; });
        const auto until = clock_type::now() + std::chrono::nanoseconds(o.hold_ns);
        while (stop_holding == 0 && clock_type::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    rt.value()->request_stop();
    rt.value()->wait();
    return failed > 0 || ready < static_cast<std::uint64_t>(o.count) || !saved ? 1 : 0;
}

// restart: the pairs run for --duration (or until SIGTERM/SIGINT) while the operator or a
// script restarts the server; then what the restart cost. Exits 1 when a client gave up, a
// pair did not move together, or packets were lost beyond the interval its ends sat apart.
int run_restart(const options& o, const targets& ts) {
    restart_options r;
    r.server = ts.list.front().address;
    r.base = ts.for_node(o.client_base(ts), 0);
    r.tls = ts.tls;
    r.pairs = static_cast<std::uint32_t>(o.pairs);
    r.packet_bytes = static_cast<std::size_t>(o.size);
    r.rate_pps = o.rate > 0 ? static_cast<double>(o.rate) : 2000;
    r.duration_s = static_cast<double>(o.duration_ns) / 1e9;
    r.client_cpu = static_cast<std::uint32_t>(o.cpu);
    r.event = [](std::string_view line) {
        std::fprintf(stderr, "derpbench: %.*s\n", static_cast<int>(line.size()), line.data());
    };
    static volatile std::sig_atomic_t stop_now = 0;
    std::signal(SIGTERM, [](int) { stop_now = 1; });
    std::signal(SIGINT, [](int) { stop_now = 1; });
    r.stop_early = [] { return stop_now != 0; };
    const restart_measurement m = measure_restart(r);
    if (!m.error.empty()) return std::fprintf(stderr, "derpbench: %s\n", m.error.c_str()), 1;
    const double interval_mean = m.pair_moves > 0 ? m.interval_ms_sum / static_cast<double>(m.pair_moves) : 0;
    if (o.json) {
        fmt::print("{{\"workload\":\"restart\",\"url\":\"{}\",\"pairs\":{},\"rate_pps\":{:.0f},\"size\":{},"
                   "\"sent\":{},\"delivered\":{},\"lost_in_interval\":{},\"lost_beyond\":{},\"duplicates\":{},"
                   "\"restarting_heard\":{},\"moves\":{},\"unannounced_closes\":{},\"dial_failures\":{},"
                   "\"gave_up\":{},\"pairs_split\":{},\"interval_ms_max\":{:.1f},\"interval_ms_mean\":{:.1f},"
                   "\"reconnect_in_ms_max\":{:.0f},\"move_ms_max\":{:.1f}}}\n",
                   ts.urls(), o.pairs, r.rate_pps, o.size, m.sent, m.delivered, m.lost_in_interval, m.lost_beyond,
                   m.duplicates, m.restarting_heard, m.moves, m.unannounced_closes, m.dial_failures, m.gave_up,
                   m.pairs_split, m.interval_ms_max, interval_mean, m.reconnect_in_ms_max, m.move_ms_max);
    } else {
        fmt::print("restart at {}: {} pairs, {:.0f} pkt/s of {} B, one frame per write\n", ts.urls(), o.pairs, r.rate_pps,
                   o.size);
        fmt::print("  sent {}, delivered {}, lost {} while a pair's ends sat on different processes, {} beyond that, "
                   "{} duplicates\n",
                   m.sent, m.delivered, m.lost_in_interval, m.lost_beyond, m.duplicates);
        fmt::print("  Restarting heard {}, moves {} (longest dial to ready {:.1f} ms), closes without Restarting {}, "
                   "failed dials {}, gave up {}\n",
                   m.restarting_heard, m.moves, m.move_ms_max, m.unannounced_closes, m.dial_failures, m.gave_up);
        fmt::print("  ends apart: {:.1f} ms mean, {:.1f} ms longest (reconnect-in up to {:.0f} ms); pairs that did not "
                   "move together {}\n",
                   interval_mean, m.interval_ms_max, m.reconnect_in_ms_max, m.pairs_split);
    }
    return m.gave_up > 0 || m.pairs_split > 0 || m.lost_beyond > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    derp::flag_set flags("derpbench");
    flags.add_string_list("url", &o.urls, "DERP server, http(s)://host:port/derp, or ws(s)://host:port/derp for DERP over WebSocket; repeat for the nodes of a region; or tcp://host:port, a raw forwarder (bench/forwarder)");
    flags.add_string("write", &o.write, "throughput, sweep, latency's load: per-packet (one frame per send, as Go's derphttp client and browsers write) or batched (as many frames as fit in one send)");
    flags.add_int("frames-per-write", &o.frames_per_write, "throughput, sweep: at most this many frames per send, instead of --write (1 = per-packet, 0 = batched)");
    flags.add_string("out", &o.out, "append this run's results to this file as JSON lines (run records for derpbench report and size)");
    flags.add_string("label", &o.label, "--out: the run's name in the records and the report (default: server version, write mode, machine)");
    flags.add_string("derpd-flags", &o.derpd_flags, "--out: the server's flags, for the records (default: its command line, with --server-pid)");
    flags.add_string("varz-url", &o.varz_url, "--out: the server's /debug/varz, where its version and shard count are read (default: from an http:// or ws:// --url)");
    flags.add_bool("insecure", &o.insecure, "https: do not verify the server's certificate");
    flags.add_string("ca", &o.ca, "https: trust only this PEM CA bundle");
    flags.add_string("cert-name", &o.cert_name, "https: a DERPMap CertName, sha256-raw:<64 hex> pins the server certificate");
    flags.add_string("mesh-key", &o.mesh_key_hex, "the region's mesh key (64 hex digits), for servers that want it");
    flags.add_bool("cross-node", &o.cross_node, "with several --url: each receiver on the next node (traffic crosses the mesh)");
    flags.add_duration("stop-reading-after", &o.stop_reading_after_ns, "throughput, fault injection: receivers stop reading this long into the run (a stuck client); the server's drops and disconnects then show");
    flags.add_int("cpu", &o.cpu, "the core the load generator is pinned to (default: the last one; derpd's first shard is on core 0)");
    flags.add_int("pairs", &o.pairs, "throughput, restart: sender/receiver client pairs");
    flags.add_string("size", &o.size_text, "throughput, latency: packet bytes (1..65536), or \"mix\" (throughput): a realistic mix, mean 567 B");
    flags.add_int("rate", &o.rate, "throughput: offered packets/s over all senders (0 = as fast as possible); restart: over all clients (default 2000)");
    flags.add_duration("pace", &o.pace_ns, "throughput: each sender sends its accumulated packets this often");
    flags.add_duration("duration", &o.duration_ns, "measured time (connections: the time allowed; restart: sending time, SIGTERM or SIGINT ends it early)");
    flags.add_int("connect-concurrency", &o.connect_concurrency, "connections: at most this many clients between dial and handshake at once (0 = dial them all at once)");
    flags.add_duration("hold", &o.hold_ns, "connections: after the report, keep the clients connected this long (SIGTERM or SIGINT ends it early): load for a region's scale test");
    flags.add_duration("warmup", &o.warmup_ns, "throughput: sending time before the measured window");
    flags.add_int("count", &o.count, "connections: idle clients to open");
    flags.add_string("sizes", &o.sizes, "sweep: comma-separated packet sizes (\"mix\" for the realistic mix)");
    flags.add_string("pairs-grid", &o.pairs_grid, "sweep: comma-separated pair counts to sweep (default: --pairs)");
    flags.add_int("start-rate", &o.start_rate, "sweep: first offered packets/s");
    flags.add_int("max-rate", &o.max_rate, "sweep: highest offered packets/s");
    flags.add_int("rounds", &o.rounds, "sweep: windows per offered rate; the one with the median loss counts (1..15)");
    flags.add_string("plot", &o.plot, "sweep: write an HTML page of charts (delivered and loss against offered load, the knees) here");
    flags.add_duration("probe-interval", &o.probe_interval_ns, "latency: time between probes");
    flags.add_int("server-pid", &o.server_pid, "sample this process's CPU and RSS from /proc");
    flags.add_bool("json", &o.json, "one JSON object on stdout");
    std::string log_level = "warn";
    flags.add_string("log-level", &log_level, "client runtime log: debug, info, warn or error (debug shows why a TLS handshake failed)");
    flags.add_bool("csv", &o.csv, "a CSV header and row on stdout");
    if (argc < 2 || argv[1][0] == '-') {
        std::fprintf(stderr, "usage: derpbench throughput|latency|connections|sweep|restart [flags]\n"
                             "       derpbench report RUN.jsonl... [-o report.html | --format markdown] (-h for more)\n"
                             "       derpbench size RUN.jsonl... --target clients=N,gbps=G (-h for more)\n%s",
                     flags.usage().c_str());
        return 2;
    }
    o.workload = argv[1];
    if (o.workload == "report") return report_command(argc - 1, argv + 1);
    if (o.workload == "size") return size_command(argc - 1, argv + 1);
    if (auto exit_status = derp::bench::parse_flags(flags, argc - 1, argv + 1)) return *exit_status;
    // --write names the mode; --frames-per-write (kept for scripts) gives the number itself.
    if (o.write != "per-packet" && o.write != "batched")
        return std::fprintf(stderr, "derpbench: --write: want per-packet or batched\n"), 2;
    if (flags.was_set("frames-per-write")) {
        if (o.frames_per_write < 0 || o.frames_per_write > 65536)
            return std::fprintf(stderr, "derpbench: --frames-per-write must be 0..65536\n"), 2;
        const std::string implied = o.frames_per_write == 1   ? "per-packet"
                                    : o.frames_per_write == 0 ? "batched"
                                                              : fmt::format("{}-frames", o.frames_per_write);
        if (flags.was_set("write") && implied != o.write)
            return std::fprintf(stderr, "derpbench: --write %s and --frames-per-write %lld disagree\n", o.write.c_str(),
                                static_cast<long long>(o.frames_per_write)), 2;
        o.write = implied;
    } else {
        o.frames_per_write = o.write == "per-packet" ? 1 : 0;
    }
    if (o.size_text == "mix") {
        o.size = static_cast<std::int64_t>(bench::mean_size(bench::realistic_size_mix()));
    } else {
        char* end = nullptr;
        o.size = std::strtoll(o.size_text.c_str(), &end, 10);
        if (end == o.size_text.c_str() || *end != '\0') o.size = 0;
    }
    if (o.size < 1 || o.size > 65536) return std::fprintf(stderr, "derpbench: -size must be 1..65536 or mix\n"), 2;
    if (!o.mesh_key_hex.empty()) {
        o.mesh_key = key_mesh::from_psk_file(o.mesh_key_hex);
        if (!o.mesh_key) return std::fprintf(stderr, "derpbench: -mesh-key: want 64 hex digits\n"), 2;
    }
    // The progress line only where someone watches it.
    o.live = isatty(STDERR_FILENO) == 1 && !o.json && !o.csv;
    if (o.rounds < 1 || o.rounds > 15) return std::fprintf(stderr, "derpbench: -rounds must be 1..15\n"), 2;
    if (o.pairs < 1 || o.pairs > 4096) return std::fprintf(stderr, "derpbench: -pairs must be 1..4096\n"), 2;
    if (o.count < 1 || o.count > 100000) return std::fprintf(stderr, "derpbench: -count must be 1..100000\n"), 2;
    if (!crypto_init()) return 1;
    ring::log_level level = ring::log_level::warn;
    if (!ring::parse_log_level(log_level, &level)) return std::fprintf(stderr, "derpbench: -log-level: want debug, info, warn or error\n"), 2;
    ring::set_log_level(level);
    targets ts;
    for (const auto& url : o.urls) {
        auto t = parse_url(url);
        if (!t) return std::fprintf(stderr, "derpbench: %s\n", t.error().c_str()), 2;
        ts.list.push_back(t.value());
    }
    if (ts.list.empty()) return std::fprintf(stderr, "derpbench: no --url\n"), 2;
    const bool tls = ts.list.front().tls;
    if (ts.list.front().raw && (ts.list.size() > 1 || o.workload == "connections"))
        return std::fprintf(stderr, "derpbench: a tcp:// forwarder takes one --url and no connections workload\n"), 2;
    for (const auto& t : ts.list)
        if (t.tls != tls || t.websocket != ts.list.front().websocket || t.raw != ts.list.front().raw) return std::fprintf(stderr, "derpbench: every --url must use the same scheme\n"), 2;
    if (tls) {
        tls::context::client_options c;
        c.server_name = ts.list.front().host;
        c.ca_file = o.ca;
        if (o.insecure) {
            c.verify = tls::context::verify_mode::insecure;
        } else if (!o.cert_name.empty()) {
            const std::string prefix = "sha256-raw:";
            if (o.cert_name.rfind(prefix, 0) != 0 || !parse_hex(std::string_view(o.cert_name).substr(prefix.size()), c.pinned_sha256))
                return std::fprintf(stderr, "derpbench: -cert-name: want sha256-raw:<64 hex digits>\n"), 2;
            c.verify = tls::context::verify_mode::pinned;
        }
        auto setup = client::make_client_tls(c, 1);
        if (!setup) return std::fprintf(stderr, "derpbench: TLS: %s\n", setup.error().c_str()), 2;
        ts.tls = setup.value();
        // Each node of a region is verified (and named in SNI) by its own name.
        for (auto& t : ts.list) {
            c.server_name = t.host;
            auto ctx = tls::context::make_client(c);
            if (!ctx) return std::fprintf(stderr, "derpbench: TLS for %s: %s\n", t.host.c_str(), ctx.error().c_str()), 2;
            t.context = ctx.value();
        }
    }
    // What the records say this run was measured on (asked once, before any load).
    o.context.machine = this_machine();
    o.context.server = server_of(ts.urls(), o.varz_url.empty() ? varz_url_for(ts.list.front().url) : o.varz_url,
                                 static_cast<pid_t>(o.server_pid), o.derpd_flags);
    o.context.load.write = o.write;
    o.context.load.frames_per_write = o.frames_per_write;
    o.context.load.pairs = o.pairs;
    o.context.load.sizes = o.workload == "sweep" ? o.sizes : o.size_text;
    o.context.time = utc_now_text();
    o.context.run = !o.label.empty() ? o.label
                                     : fmt::format("{}, {} writes, {} cores",
                                                   o.context.server.version == "unknown" ? "server of unknown version"
                                                                                         : "derpd " + o.context.server.version,
                                                   o.write, o.context.machine.cores);
    if (o.workload == "throughput") return run_throughput(o, ts);
    if (o.workload == "connections") return run_connections(o, ts);
    if (o.workload == "latency") return run_latency(o, ts);
    if (o.workload == "sweep") return run_sweep(o, ts);
    if (o.workload == "restart") return run_restart(o, ts);
    std::fprintf(stderr, "derpbench: unknown workload \"%s\" (want throughput, latency, connections, sweep or restart)\n", o.workload.c_str());
    return 2;
}
