// Prometheus text rendering of derpd's counters (see varz.hh).
#include "admin/varz.hh"

#include <malloc.h>
#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <tuple>

#include <fmt/format.h>

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif

namespace derp::admin {
namespace {

using ring::shard_counters;

template <typename Get>
std::uint64_t sum_derp(const metric_sources& shared, Get get) {
    std::uint64_t total = 0;
    for (std::uint32_t s = 0; s < shared.shards; ++s) total += get(shared.counters[s]);
    return total;
}

void metric(std::string& out, std::string_view name, std::string_view type, std::uint64_t value) {
    out += fmt::format("# TYPE {} {}\n{} {}\n", name, type, name, value);
}

// derpd's own metrics carry HELP (derper's do not, and keep derper's exact lines).
void metric(std::string& out, std::string_view name, std::string_view type, std::string_view help,
            std::uint64_t value) {
    out += fmt::format("# HELP {} {}\n", name, help);
    metric(out, name, type, value);
}

struct process_stats {
    double cpu_seconds = 0;
    std::uint64_t rss_bytes = 0;
    std::uint64_t open_fds = 0;
};

process_stats read_process_stats() {
    process_stats p;
    std::ifstream stat("/proc/self/stat");
    const std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto close = text.rfind(')');
    if (close != std::string::npos && close + 2 < text.size()) {
        std::istringstream in(text.substr(close + 2));
        std::string field;
        unsigned long long utime = 0, stime = 0, rss_pages = 0;
        // Fields from 3 (state) on, as proc(5) numbers them: 14 utime, 15 stime, 24 rss.
        for (int i = 3; i <= 24 && (in >> field); ++i) {
            if (i == 14) utime = std::stoull(field);
            if (i == 15) stime = std::stoull(field);
            if (i == 24) rss_pages = std::stoull(field);
        }
        p.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
        p.rss_bytes = rss_pages * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    }
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
        ++p.open_fds;
    return p;
}

}  // namespace

std::string render_varz(const metric_sources& shared) {
    std::string out;
    out.reserve(16384);
    const auto derp_sum = [&](auto member) {
        return sum_derp(shared, [&](const derp_counters& c) { return (c.*member).get(); });
    };
    // bootstrap_dns_* sort first, as derper emits names in order.
    metric(out, "bootstrap_dns_published_hits", "counter", derp_sum(&derp_counters::bootstrap_dns_published_hits));
    metric(out, "bootstrap_dns_published_misses", "counter", derp_sum(&derp_counters::bootstrap_dns_published_misses));
    metric(out, "bootstrap_dns_queried_domains", "gauge", derp_sum(&derp_counters::bootstrap_dns_queried_domains));
    metric(out, "bootstrap_dns_requests", "counter", derp_sum(&derp_counters::bootstrap_dns_requests));
    metric(out, "bootstrap_dns_unpublished_hits", "counter", derp_sum(&derp_counters::bootstrap_dns_unpublished_hits));
    metric(out, "bootstrap_dns_unpublished_misses", "counter", derp_sum(&derp_counters::bootstrap_dns_unpublished_misses));
    metric(out, "bootstrap_dns_unpublished_percent_misses", "counter",
           derp_sum(&derp_counters::bootstrap_dns_unpublished_percent_misses));
    // derper's names and types (spec 7.3), in derper's name order.
    metric(out, "derp_accepts", "counter", derp_sum(&derp_counters::accepts));
    {
        // The mean of the shards' EMAs, over shards that have relayed anything.
        double sum = 0;
        int active = 0;
        for (std::uint32_t s = 0; s < shared.shards; ++s)
            if (shared.counters[s].packets_sent.get() > 0) {
                sum += static_cast<double>(shared.counters[s].average_queue_duration_us.get()) / 1000.0;
                ++active;
            }
        out += fmt::format("derp_average_queue_duration_ms {}\n", active > 0 ? sum / active : 0.0);
    }
    out += "# TYPE derp_buffered_write_frames histogram\n";
    {
        std::uint64_t cumulative = 0;
        for (std::size_t b = 0; b <= buffered_write_frames_bounds.size(); ++b) {
            cumulative += sum_derp(shared, [&](const derp_counters& c) { return c.buffered_write_frames[b].get(); });
            if (b < buffered_write_frames_bounds.size())
                out += fmt::format("derp_buffered_write_frames_bucket{{le=\"{}\"}} {}\n", buffered_write_frames_bounds[b], cumulative);
            else
                out += fmt::format("derp_buffered_write_frames_bucket{{le=\"+Inf\"}} {}\n", cumulative);
        }
        out += fmt::format("derp_buffered_write_frames_sum {}\nderp_buffered_write_frames_count {}\n",
                           derp_sum(&derp_counters::buffered_write_frames_sum), cumulative);
    }
    metric(out, "derp_bytes_received", "counter", derp_sum(&derp_counters::bytes_received));
    metric(out, "derp_bytes_sent", "counter", derp_sum(&derp_counters::bytes_sent));
    const std::uint64_t local_keys = derp_sum(&derp_counters::clients_local);
    metric(out, "derp_clients_local", "gauge", local_keys);
    const std::uint64_t remote_keys = derp_sum(&derp_counters::clients_remote);
    metric(out, "derp_clients_remote", "gauge", remote_keys);
    metric(out, "derp_clients_total", "gauge", local_keys + remote_keys);
    metric(out, "derp_current_connections", "gauge", derp_sum(&derp_counters::current_connections));
    metric(out, "derp_current_dup_client_conns", "gauge", derp_sum(&derp_counters::current_dup_client_conns));
    metric(out, "derp_current_dup_client_keys", "gauge", derp_sum(&derp_counters::current_dup_client_keys));
    metric(out, "derp_current_file_descriptors", "gauge", read_process_stats().open_fds);
    metric(out, "derp_current_home_connections", "gauge", derp_sum(&derp_counters::current_home_connections));
    metric(out, "derp_current_notideal_connections", "gauge",
           derp_sum(&derp_counters::current_notideal_connections));
    metric(out, "derp_got_ping", "counter", derp_sum(&derp_counters::got_ping));
    metric(out, "derp_home_moves_in", "counter", derp_sum(&derp_counters::home_moves_in));
    metric(out, "derp_home_moves_out", "counter", derp_sum(&derp_counters::home_moves_out));
    metric(out, "derp_multiforwarder_created", "counter", derp_sum(&derp_counters::multiforwarder_created));
    metric(out, "derp_multiforwarder_deleted", "counter", derp_sum(&derp_counters::multiforwarder_deleted));
    metric(out, "derp_packet_forwarder_delete_other_value", "counter",
           derp_sum(&derp_counters::packet_forwarder_delete_other_value));
    metric(out, "derp_packets_forwarded_in", "counter", derp_sum(&derp_counters::packets_forwarded_in));
    metric(out, "derp_packets_forwarded_out", "counter", derp_sum(&derp_counters::packets_forwarded_out));
    metric(out, "derp_packets_received", "counter", derp_sum(&derp_counters::packets_received));
    out += "# TYPE derp_packets_received_kind counter\n";
    // (No structured bindings inside the lambdas: clang 14 cannot capture them.)
    for (const auto& entry : {std::pair{"disco", packet_kind::disco}, std::pair{"other", packet_kind::other}}) {
        const auto kind = static_cast<std::size_t>(entry.second);
        out += fmt::format("derp_packets_received_kind{{kind=\"{}\"}} {}\n", entry.first,
                           sum_derp(shared, [&](const derp_counters& c) { return c.packets_received_kind[kind].get(); }));
    }
    metric(out, "derp_packets_sent", "counter", derp_sum(&derp_counters::packets_sent));
    metric(out, "derp_peer_gone_disconnected_frames", "counter",
           derp_sum(&derp_counters::peer_gone_disconnected_frames));
    metric(out, "derp_peer_gone_not_here_frames", "counter", derp_sum(&derp_counters::peer_gone_not_here_frames));
    if (shared.rate_limit.configured) {
        // derper's three, only with --rate-config (spec 7.3). The burst is the one in force
        // (raised to 64 KiB + 32, spec 2.12).
        std::uint64_t sequence = 0;
        const rate_config rate = shared.rate_limit.load(sequence);
        metric(out, "derp_rate_limit_per_client_burst_bytes", "untyped", rate.enabled() ? rate.effective_burst() : 0);
        metric(out, "derp_rate_limit_per_client_bytes_per_second", "untyped", rate.bytes_per_second);
        metric(out, "derp_rate_limit_per_client_waited", "counter", derp_sum(&derp_counters::rate_limit_waited));
    }
    metric(out, "derp_sclient_write_timeouts", "counter", derp_sum(&derp_counters::sclient_write_timeouts));
    out += "# TYPE derp_tcp_rtt counter\n";
    for (std::size_t b = 0; b < tcp_rtt_labels.size(); ++b)
        out += fmt::format("derp_tcp_rtt{{le=\"{}\"}} {}\n", tcp_rtt_labels[b],
                           sum_derp(shared, [&](const derp_counters& c) { return c.tcp_rtt[b].get(); }));
    metric(out, "derp_total_dup_client_conns", "counter", derp_sum(&derp_counters::total_dup_client_conns));
    metric(out, "derp_unknown_frames", "counter", derp_sum(&derp_counters::unknown_frames));
    metric(out, "derp_watchers", "gauge", derp_sum(&derp_counters::watchers));
    metric(out, "derp_websocket_accepts", "counter", derp_sum(&derp_counters::websocket_accepts));
    for (const auto& family : {std::tuple{"derp_bytes_dropped", "DERP bytes dropped by reason and by kind", false},
                               std::tuple{"derp_packets_dropped", "DERP packets dropped by reason and by kind", true}}) {
        const char* name = std::get<0>(family);
        const bool packets = std::get<2>(family);
        out += fmt::format("# TYPE {} counter\n# HELP {} {}\n", name, name, std::get<1>(family));
        for (std::size_t r = 0; r < drop_reason_count; ++r)
            for (const auto& entry : {std::pair{"disco", std::size_t{0}}, std::pair{"other", std::size_t{1}}}) {
                const std::size_t kind = entry.second;
                out += fmt::format("{}{{reason=\"{}\",kind=\"{}\"}} {}\n", name,
                                   to_string(static_cast<drop_reason>(r)), entry.first,
                                   sum_derp(shared, [&](const derp_counters& c) {
                                       return packets ? c.packets_dropped[r][kind].get() : c.bytes_dropped[r][kind].get();
                                   }));
            }
    }
    if (shared.stun != nullptr) {
        out += "# TYPE stun_addrfamily counter\n";
        out += fmt::format("stun_addrfamily{{family=\"ipv4\"}} {}\n", shared.stun->family_ipv4.get());
        out += fmt::format("stun_addrfamily{{family=\"ipv6\"}} {}\n", shared.stun->family_ipv6.get());
        out += "# TYPE stun_requests counter\n";
        for (const auto d : stun::all_dispositions)
            out += fmt::format("stun_requests{{disposition=\"{}\"}} {}\n", stun::to_string(d),
                               shared.stun->requests[static_cast<std::size_t>(d)].get());
        metric(out, "derpd_stun_standard_requests_total", "counter",
               "STUN Binding requests answered that were not Tailscale-style (no SOFTWARE tailnode).",
               shared.stun->standard_requests.get());
    }
    // derper's TLS-mode metrics (spec 7.3): the label map has no type and lists the versions
    // seen so far, as Go's map does; the active gauge lists them too.
    if (shared.tls != nullptr) {
        const auto& labels = tls::version_labels;
        std::string request_lines, active_lines;
        for (std::size_t v = 0; v < labels.size(); ++v) {
            const auto requests = sum_derp(shared, [&](const derp_counters& c) { return c.tls_request_version[v].get(); });
            const auto active = sum_derp(shared, [&](const derp_counters& c) { return c.tls_active_version[v].get(); });
            if (requests > 0) request_lines += fmt::format("derper_tls_request_version{{version=\"{}\"}} {}\n", labels[v], requests);
            if (requests > 0) active_lines += fmt::format("derper_tls_active_version{{version=\"{}\"}} {}\n", labels[v], active);
        }
        out += request_lines;
        if (!active_lines.empty()) out += "# TYPE derper_tls_active_version gauge\n" + active_lines;
        std::uint64_t tls_accepts = 0;
        for (std::uint32_t s = 0; s < shared.shards; ++s)
            tls_accepts += shared.tls[s].handshakes_ok.get() + shared.tls[s].handshakes_failed.get() +
                           shared.tls[s].handshakes_timeout.get();
        metric(out, "tls_listener_accepted_connections", "counter", tls_accepts);
        // derper's accept-rate limiter (-accept-connection-limit); derpd applies it to its plain
        // DERP listener too, and counts those here as well.
        std::uint64_t rejected = 0;
        for (std::uint32_t s = 0; s < shared.shards; ++s)
            if (shared.ring_counters[s] != nullptr) rejected += shared.ring_counters[s]->accepts_rate_limited.get();
        metric(out, "tls_listener_rejected_connections", "counter", rejected);
    }
    const auto now = static_cast<std::uint64_t>(std::time(nullptr));
    metric(out, "process_start_unix_time", "gauge", static_cast<std::uint64_t>(shared.start_unix_seconds));
    metric(out, "uptime_sec", "counter", now - static_cast<std::uint64_t>(shared.start_unix_seconds));
    out += fmt::format("version{{version=\"{}\",binary=\"derpd\"}} 1\n", DERPD_VERSION);

    // derpd's own: per shard, the runtime, the process.
    const process_stats proc = read_process_stats();
    out += "# HELP derpd_process_cpu_seconds_total User and system CPU time of the derpd process.\n";
    out += fmt::format("# TYPE derpd_process_cpu_seconds_total counter\nderpd_process_cpu_seconds_total {:.2f}\n",
                       proc.cpu_seconds);
    out += "# HELP derpd_process_resident_memory_bytes Resident set size of the derpd process.\n";
    metric(out, "derpd_process_resident_memory_bytes", "gauge", proc.rss_bytes);
    {
        // Live heap (all malloc arenas): what connections hold now, unlike RSS, which keeps
        // what a burst of handshakes freed until the next trim (-memory-trim-interval).
        const struct mallinfo2 heap = mallinfo2();
        metric(out, "derpd_heap_in_use_bytes", "gauge", "Bytes allocated from the heap (all malloc arenas) and not freed.",
               heap.uordblks + heap.hblkhd);
    }
    out += "# HELP derpd_connections_by_tls_path_total Accepted connections by how their bytes are carried.\n";
    out += "# TYPE derpd_connections_by_tls_path_total counter\n";
    out += fmt::format("derpd_connections_by_tls_path_total{{path=\"plain\"}} {}\n",
                       derp_sum(&derp_counters::plain_accepts));
    const auto tls_sum = [&](auto member) {
        std::uint64_t total = 0;
        for (std::uint32_t s = 0; shared.tls != nullptr && s < shared.shards; ++s) total += (shared.tls[s].*member).get();
        return total;
    };
    out += fmt::format("derpd_connections_by_tls_path_total{{path=\"userspace\"}} {}\n",
                       tls_sum(&tls::tls_counters::path_userspace));
    out += fmt::format("derpd_connections_by_tls_path_total{{path=\"userspace_records\"}} {}\n",
                       tls_sum(&tls::tls_counters::path_userspace_records));
    out += fmt::format("derpd_connections_by_tls_path_total{{path=\"ktls\"}} {}\n", tls_sum(&tls::tls_counters::path_ktls));
    out += fmt::format("derpd_connections_by_tls_path_total{{path=\"ktls_tx\"}} {}\n",
                       tls_sum(&tls::tls_counters::path_ktls_tx));
    if (shared.tls != nullptr) {
        out += "# HELP derpd_tls_handshakes_total TLS handshakes by outcome.\n# TYPE derpd_tls_handshakes_total counter\n";
        for (const auto& [label, member] : {std::pair{"ok", &tls::tls_counters::handshakes_ok},
                                            std::pair{"failed", &tls::tls_counters::handshakes_failed},
                                            std::pair{"timeout", &tls::tls_counters::handshakes_timeout}})
            out += fmt::format("derpd_tls_handshakes_total{{result=\"{}\"}} {}\n", label, tls_sum(member));
        metric(out, "derpd_tls_handshakes_in_flight", "gauge",
               "Server TLS handshakes holding one of a shard's places (at most 512 a shard, -tls-handshakes-per-source from one address).",
               tls_sum(&tls::tls_counters::handshakes_in_flight));
        metric(out, "derpd_tls_handshakes_waiting", "gauge",
               "Connections whose ClientHello waits for a handshake place.", tls_sum(&tls::tls_counters::handshakes_waiting));
        metric(out, "derpd_tls_ktls_install_failures_total", "counter",
               "kTLS installs the kernel refused (the connection stayed on userspace records).",
               tls_sum(&tls::tls_counters::ktls_install_failed));
        metric(out, "derpd_tls_ktls_control_records_total", "counter",
               "Alerts and other non-data records read under kTLS RX.", tls_sum(&tls::tls_counters::ktls_control_records));
        metric(out, "derpd_tls_record_failures_total", "counter",
               "Established TLS connections closed for a record that did not decrypt or parse.",
               tls_sum(&tls::tls_counters::records_failed));
        out += "# HELP derpd_tls_record_closes_total Connections on the userspace record layer ended by a record, by "
               "reason.\n# TYPE derpd_tls_record_closes_total counter\n";
        for (std::size_t r = 1; r < tls::record_close_count; ++r) {
            std::uint64_t total = 0;
            for (std::uint32_t s = 0; s < shared.shards; ++s) total += shared.tls[s].record_closes[r].get();
            out += fmt::format("derpd_tls_record_closes_total{{reason=\"{}\"}} {}\n",
                               tls::to_string(static_cast<tls::record_close>(r)), total);
        }
        out += "# HELP derpd_tls_open_connections Open TLS connections by version.\n# TYPE derpd_tls_open_connections gauge\n";
        out += fmt::format("derpd_tls_open_connections{{version=\"1.2\"}} {}\n", tls_sum(&tls::tls_counters::open_tls12));
        out += fmt::format("derpd_tls_open_connections{{version=\"1.3\"}} {}\n", tls_sum(&tls::tls_counters::open_tls13));
    }
    if (shared.tls_contexts != nullptr) {
        // Seconds until the leaf new connections are served expires; absent while there is
        // none (-certmode letsencrypt before the first certificate).
        const auto ctx = shared.tls_contexts->current.load();
        if (ctx != nullptr && ctx->leaf_not_after_unix() != 0)
            out += fmt::format("# HELP derpd_cert_expiry_seconds Seconds until the served TLS certificate expires "
                               "(negative: expired).\n# TYPE derpd_cert_expiry_seconds gauge\nderpd_cert_expiry_seconds {}\n",
                               ctx->leaf_not_after_unix() - static_cast<std::int64_t>(std::time(nullptr)));
    }
    if (shared.acme != nullptr) {
        const acme_counters& a = *shared.acme;
        out += "# HELP derpd_acme_orders_total ACME certificate orders by outcome (reused: a stored certificate was still good at start).\n";
        out += "# TYPE derpd_acme_orders_total counter\n";
        out += fmt::format("derpd_acme_orders_total{{result=\"ok\"}} {}\n", a.orders_ok.get());
        out += fmt::format("derpd_acme_orders_total{{result=\"failed\"}} {}\n", a.orders_failed.get());
        out += fmt::format("derpd_acme_orders_total{{result=\"reused\"}} {}\n", a.orders_reused.get());
        out += "# HELP derpd_acme_challenges_total ACME authorizations answered, by challenge type.\n";
        out += "# TYPE derpd_acme_challenges_total counter\n";
        out += fmt::format("derpd_acme_challenges_total{{type=\"tls-alpn-01\"}} {}\n", a.challenges_tls_alpn.get());
        out += fmt::format("derpd_acme_challenges_total{{type=\"http-01\"}} {}\n", a.challenges_http01.get());
        out += "# HELP derpd_acme_http01_requests_total Requests for /.well-known/acme-challenge/ on the port-80 listener.\n";
        out += "# TYPE derpd_acme_http01_requests_total counter\n";
        out += fmt::format("derpd_acme_http01_requests_total{{result=\"answered\"}} {}\n", a.http01_answers.load(std::memory_order_relaxed));
        out += fmt::format("derpd_acme_http01_requests_total{{result=\"unknown_token\"}} {}\n", a.http01_unknown.load(std::memory_order_relaxed));
        metric(out, "derpd_acme_tls_alpn_handshakes_total", "counter",
               "TLS-ALPN-01 validation handshakes answered with the challenge certificate.",
               tls_sum(&tls::tls_counters::acme_tls_alpn_handshakes));
    }
    out += "# HELP derpd_websocket_closes_total WebSocket connections whose framing ended, by how.\n";
    out += "# TYPE derpd_websocket_closes_total counter\n";
    for (std::size_t k = 0; k < ws_close_kind_names.size(); ++k)
        out += fmt::format("derpd_websocket_closes_total{{reason=\"{}\"}} {}\n", ws_close_kind_names[k],
                           sum_derp(shared, [&](const derp_counters& c) { return c.websocket_closes[k].get(); }));
    out += "# HELP derpd_protocol_closes_total DERP connections closed for what the peer sent, by reason.\n";
    out += "# TYPE derpd_protocol_closes_total counter\n";
    for (std::size_t r = 0; r < close_reason_count; ++r)
        out += fmt::format("derpd_protocol_closes_total{{reason=\"{}\"}} {}\n",
                           to_string(static_cast<close_reason>(r)),
                           sum_derp(shared, [&](const derp_counters& c) { return c.protocol_closes[r].get(); }));
    out += "# HELP derpd_packets_dropped_total Packets dropped for derpd-only reasons.\n";
    out += "# TYPE derpd_packets_dropped_total counter\n";
    for (const auto& entry : {std::pair{"transfer_pool_exhausted", derpd_drop_reason::transfer_pool_exhausted},
                              std::pair{"ring_backlog_full", derpd_drop_reason::ring_backlog_full},
                              std::pair{"mesh_unavailable", derpd_drop_reason::mesh_unavailable}}) {
        const auto reason = static_cast<std::size_t>(entry.second);
        out += fmt::format("derpd_packets_dropped_total{{reason=\"{}\"}} {}\n", entry.first,
                           sum_derp(shared, [&](const derp_counters& c) { return c.derpd_packets_dropped[reason].get(); }));
    }
    if (!shared.mesh_peer_names.empty()) {
        // One series per -mesh-with entry, labelled with the entry as written (names are
        // checked to hold only host characters, so no label escaping is needed).
        const auto& names = shared.mesh_peer_names;
        const auto per_peer = [&](const char* name, const char* type, const char* help, auto member) {
            out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
            for (std::size_t p = 0; p < names.size(); ++p)
                out += fmt::format("{}{{peer=\"{}\"}} {}\n", name, names[p], (shared.mesh_peers[p].*member).get());
        };
        per_peer("derpd_mesh_peer_up", "gauge", "1 while the mesh link to the peer is connected.",
                 &mesh_peer_counters::up);
        per_peer("derpd_mesh_connects_total", "counter", "Mesh link handshakes completed.",
                 &mesh_peer_counters::connects);
        per_peer("derpd_mesh_reconnects_total", "counter", "Mesh link handshakes after an earlier connection.",
                 &mesh_peer_counters::reconnects);
        per_peer("derpd_mesh_peer_keys", "gauge", "Keys the peer announces (its local clients).",
                 &mesh_peer_counters::keys);
        per_peer("derpd_mesh_forwarded_total", "counter", "ForwardPacket frames written to the peer.",
                 &mesh_peer_counters::forwarded);
        per_peer("derpd_mesh_dropped_total", "counter", "Packets for the peer dropped: link down or queue full.",
                 &mesh_peer_counters::dropped);
        out += "# HELP derpd_mesh_failures_total Mesh link failures by reason.\n# TYPE derpd_mesh_failures_total counter\n";
        for (std::size_t p = 0; p < names.size(); ++p)
            for (std::size_t r = 0; r < mesh_failure_labels.size(); ++r)
                out += fmt::format("derpd_mesh_failures_total{{peer=\"{}\",reason=\"{}\"}} {}\n", names[p],
                                   mesh_failure_labels[r], shared.mesh_peers[p].failures[r].get());
    }
    metric(out, "derpd_http_requests_total", "counter", "HTTP requests parsed on the main listener.",
           derp_sum(&derp_counters::http_requests));
    metric(out, "derpd_http_errors_total", "counter", "Malformed HTTP requests answered with an error and closed.",
           derp_sum(&derp_counters::http_errors));
    metric(out, "derpd_handshake_timeouts_total", "counter",
           "Connections closed for not finishing the request or the DERP handshake in time.",
           derp_sum(&derp_counters::handshake_timeouts));
    out += "# HELP derpd_client_admissions_total Admission decisions (-verify-clients, -verify-client-url) by result; "
           "error_allowed: the controller failed and fail-open let the client in.\n"
           "# TYPE derpd_client_admissions_total counter\n";
    for (std::size_t r = 0; r < admission_labels.size(); ++r)
        out += fmt::format("derpd_client_admissions_total{{result=\"{}\"}} {}\n", admission_labels[r],
                           sum_derp(shared, [r](const derp_counters& c) { return c.admissions[r].get(); }));
    metric(out, "derpd_client_admissions_cached_total", "counter", "Admission decisions answered from the short cache.",
           derp_sum(&derp_counters::admissions_cached));
    metric(out, "derpd_restarting_frames_total", "counter", "Restarting frames sent to clients while draining.",
           derp_sum(&derp_counters::restarting_frames));
    metric(out, "derpd_unfinished_connections", "gauge", "Connections that have not finished the DERP handshake (HTTP, TLS, ClientInfo, admission).",
           derp_sum(&derp_counters::unfinished));
    metric(out, "derpd_unfinished_evictions_total", "counter", "Unfinished connections closed because a shard held its maximum of them (-unfinished-per-shard): the oldest goes.",
           derp_sum(&derp_counters::unfinished_evictions));
    metric(out, "derpd_health_frames_total", "counter", "Health frames sent to clients (a problem, or the all-clear).",
           derp_sum(&derp_counters::health_frames));
    metric(out, "derpd_cross_shard_packets_total", "counter", "Packets relayed through a ring to another shard.",
           derp_sum(&derp_counters::cross_shard_packets));
    metric(out, "derpd_control_backlog_refused_total", "counter",
           "Messages between shards refused because the backlog waiting for a full ring was at its bound.",
           derp_sum(&derp_counters::control_backlog_refused));
    for (const auto& g : {std::tuple{"derpd_shard_queued_packets", "Packets waiting in the send queues of the shard's clients.",
                                     &derp_counters::queued_packets},
                          std::tuple{"derpd_shard_cross_backlog",
                                     "Messages to other shards waiting for space in a full ring (bounded by -cross-shard-backlog).",
                                     &derp_counters::control_backlog},
                          std::tuple{"derpd_shard_transfer_buffers_in_use",
                                     "Transfer buffers of the shard holding a frame (on any shard).",
                                     &derp_counters::transfer_buffers_in_use}}) {
        out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n", std::get<0>(g), std::get<1>(g), std::get<0>(g));
        const auto member = std::get<2>(g);
        for (std::uint32_t s = 0; s < shared.shards; ++s)
            out += fmt::format("{}{{shard=\"{}\"}} {}\n", std::get<0>(g), s, (shared.counters[s].*member).get());
    }

    // Memory by pool: what is held now and the most it may be (every shard together). The
    // fixed pools are allocated whole at start; input and staging grow up to their ceilings,
    // past which new work is refused (stalest input closed, packets dropped, not staged).
    {
        std::uint64_t send_in_use = 0, input_in_use = 0;
        for (std::uint32_t s = 0; s < shared.shards; ++s)
            if (const shard_counters* c = shared.ring_counters[s]) {
                send_in_use += c->send_buffers_in_use.get();
                input_in_use += c->input_buffered_bytes.get();
            }
        const auto& m = shared.memory;
        out += "# HELP derpd_memory_bytes Bytes held now, by pool, over every shard.\n# TYPE derpd_memory_bytes gauge\n";
        out += fmt::format("derpd_memory_bytes{{pool=\"send_buffers\"}} {}\n", send_in_use * m.send_buffer_bytes);
        out += fmt::format("derpd_memory_bytes{{pool=\"transfer_buffers\"}} {}\n", derp_sum(&derp_counters::transfer_bytes));
        out += fmt::format("derpd_memory_bytes{{pool=\"input\"}} {}\n", input_in_use);
        out += fmt::format("derpd_memory_bytes{{pool=\"staging\"}} {}\n", derp_sum(&derp_counters::staged_bytes));
        out += "# HELP derpd_memory_ceiling_bytes The most each pool may hold, over every shard.\n"
               "# TYPE derpd_memory_ceiling_bytes gauge\n";
        for (const auto& [pool, bytes] : {std::pair{"send_buffers", m.send_buffers}, std::pair{"transfer_buffers", m.transfer_buffers},
                                          std::pair{"input", m.input}, std::pair{"staging", m.staging}})
            out += fmt::format("derpd_memory_ceiling_bytes{{pool=\"{}\"}} {}\n", pool, bytes * shared.shards);
    }

    // Runtime counters, per shard (label shard="N").
    struct ring_metric {
        const char* name;
        const char* type;
        const char* help;
        ring::counter shard_counters::*member;
    };
    static constexpr ring_metric ring_metrics[] = {
        {"derpd_shard_connections", "gauge", "Connections in the shard's slot table.", &shard_counters::conns_open},
        {"derpd_shard_accepts_total", "counter", "Connections accepted by the shard.", &shard_counters::accepts},
        {"derpd_shard_accept_errors_total", "counter", "Accept completions with an error.", &shard_counters::accept_errors},
        {"derpd_shard_accepts_refused_full_total", "counter", "Connections refused: slot table full.",
         &shard_counters::accepts_refused_full},
        {"derpd_shard_accepts_rate_limited_total", "counter", "Connections reset at once: over -accept-connection-limit.",
         &shard_counters::accepts_rate_limited},
        {"derpd_shard_input_shed_closes_total", "counter",
         "Connections closed because the shard's unconsumed input passed its ceiling (the stalest holders go).",
         &shard_counters::input_shed_closes},
        {"derpd_shard_recv_bytes_total", "counter", "Bytes received.", &shard_counters::recv_bytes},
        {"derpd_shard_send_bytes_total", "counter", "Bytes sent.", &shard_counters::send_bytes},
        {"derpd_shard_recv_no_buffers_total", "counter", "Multishot recvs stopped by an empty buffer ring.",
         &shard_counters::recv_no_buffers},
        {"derpd_shard_send_pool_exhausted_total", "counter", "Sends delayed: no registered send buffer free.",
         &shard_counters::send_pool_exhausted},
        {"derpd_shard_send_partial_total", "counter", "Sends the kernel completed short.", &shard_counters::send_partial},
        {"derpd_shard_ring_messages_posted_total", "counter", "Messages pushed onto SPSC rings.",
         &shard_counters::messages_posted},
        {"derpd_shard_ring_messages_received_total", "counter", "Messages taken from SPSC rings.",
         &shard_counters::messages_received},
        {"derpd_shard_ring_full_total", "counter", "Posts that found the destination ring full (backpressure).",
         &shard_counters::ring_full},
        {"derpd_shard_wakeups_sent_total", "counter", "MSG_RING wake-ups sent to sleeping threads.",
         &shard_counters::wakeups_sent},
        {"derpd_shard_io_uring_enters_total", "counter", "io_uring_enter calls.", &shard_counters::submits},
        {"derpd_shard_io_uring_sqes_total", "counter", "Submission queue entries prepared.", &shard_counters::sqes},
        {"derpd_shard_io_uring_cqes_total", "counter", "Completions handled.", &shard_counters::cqes},
        {"derpd_shard_loop_iterations_total", "counter", "Turns of the shard loop.", &shard_counters::loop_iterations},
        {"derpd_shard_send_buffers_in_use", "gauge", "Registered send buffers holding output.",
         &shard_counters::send_buffers_in_use},
        {"derpd_shard_ring_backlog", "gauge", "Messages waiting in the shard's inbound SPSC rings.",
         &shard_counters::inbound_backlog},
    };
    for (const auto& m : ring_metrics) {
        out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", m.name, m.help, m.name, m.type);
        for (std::uint32_t s = 0; s < shared.shards; ++s)
            if (const shard_counters* c = shared.ring_counters[s])
                out += fmt::format("{}{{shard=\"{}\"}} {}\n", m.name, s, (c->*m.member).get());
    }
    out += "# HELP derpd_shard_closes_total Connections closed, by shard and by what the runtime saw.\n";
    out += "# TYPE derpd_shard_closes_total counter\n";
    for (std::uint32_t s = 0; s < shared.shards; ++s)
        if (const shard_counters* c = shared.ring_counters[s])
            for (std::size_t k = 0; k < ring::close_cause_count; ++k)
                out += fmt::format("derpd_shard_closes_total{{shard=\"{}\",cause=\"{}\"}} {}\n", s,
                                   ring::close_cause_name(static_cast<ring::close_cause>(k)), c->closes[k].get());
    return out;
}

std::string render_debug_vars(const metric_sources& shared) {
    const auto derp_sum = [&](auto member) {
        return sum_derp(shared, [&](const derp_counters& c) { return (c.*member).get(); });
    };
    const auto json_string = [](std::string_view text) {
        std::string out = "\"";
        for (const char ch : text) {
            if (ch == '"' || ch == '\\') out += '\\';
            if (static_cast<unsigned char>(ch) < 0x20) out += fmt::format("\\u{:04x}", static_cast<unsigned>(ch));
            else out += ch;
        }
        return out + "\"";
    };
    std::map<std::string, std::string> vars;  // sorted, as expvar.Do visits them
    std::string cmdline = "[";
    for (std::size_t i = 0; i < shared.cmdline.size(); ++i)
        cmdline += (i ? "," : "") + json_string(shared.cmdline[i]);
    vars["cmdline"] = cmdline + "]";
    // The "derp" set: an expvar.Map, {"key": value, ...} in key order.
    std::map<std::string, std::string> derp;
    const std::uint64_t keys = derp_sum(&derp_counters::clients_local);
    derp["accepts"] = std::to_string(derp_sum(&derp_counters::accepts));
    derp["bytes_received"] = std::to_string(derp_sum(&derp_counters::bytes_received));
    derp["bytes_sent"] = std::to_string(derp_sum(&derp_counters::bytes_sent));
    derp["counter_packets_received_kind"] = fmt::format(
        "{{\"disco\": {}, \"other\": {}}}",
        sum_derp(shared, [](const derp_counters& c) { return c.packets_received_kind[0].get(); }),
        sum_derp(shared, [](const derp_counters& c) { return c.packets_received_kind[1].get(); }));
    derp["counter_total_dup_client_conns"] = std::to_string(derp_sum(&derp_counters::total_dup_client_conns));
    derp["gauge_clients_local"] = std::to_string(keys);
    const std::uint64_t remote = derp_sum(&derp_counters::clients_remote);
    derp["gauge_clients_remote"] = std::to_string(remote);
    derp["gauge_clients_total"] = std::to_string(keys + remote);
    derp["gauge_current_connections"] = std::to_string(derp_sum(&derp_counters::current_connections));
    derp["gauge_current_dup_client_conns"] = std::to_string(derp_sum(&derp_counters::current_dup_client_conns));
    derp["gauge_current_dup_client_keys"] = std::to_string(derp_sum(&derp_counters::current_dup_client_keys));
    derp["gauge_current_home_connections"] = std::to_string(derp_sum(&derp_counters::current_home_connections));
    derp["gauge_current_notideal_connections"] = std::to_string(derp_sum(&derp_counters::current_notideal_connections));
    derp["gauge_watchers"] = std::to_string(derp_sum(&derp_counters::watchers));
    derp["got_ping"] = std::to_string(derp_sum(&derp_counters::got_ping));
    derp["home_moves_in"] = std::to_string(derp_sum(&derp_counters::home_moves_in));
    derp["home_moves_out"] = std::to_string(derp_sum(&derp_counters::home_moves_out));
    derp["multiforwarder_created"] = std::to_string(derp_sum(&derp_counters::multiforwarder_created));
    derp["multiforwarder_deleted"] = std::to_string(derp_sum(&derp_counters::multiforwarder_deleted));
    derp["packet_forwarder_delete_other_value"] =
        std::to_string(derp_sum(&derp_counters::packet_forwarder_delete_other_value));
    derp["packets_forwarded_in"] = std::to_string(derp_sum(&derp_counters::packets_forwarded_in));
    derp["packets_forwarded_out"] = std::to_string(derp_sum(&derp_counters::packets_forwarded_out));
    derp["packets_received"] = std::to_string(derp_sum(&derp_counters::packets_received));
    derp["packets_sent"] = std::to_string(derp_sum(&derp_counters::packets_sent));
    derp["peer_gone_disconnected_frames"] = std::to_string(derp_sum(&derp_counters::peer_gone_disconnected_frames));
    derp["peer_gone_not_here_frames"] = std::to_string(derp_sum(&derp_counters::peer_gone_not_here_frames));
    derp["sclient_write_timeouts"] = std::to_string(derp_sum(&derp_counters::sclient_write_timeouts));
    derp["sent_pong"] = std::to_string(derp_sum(&derp_counters::sent_pong));
    derp["unknown_frames"] = std::to_string(derp_sum(&derp_counters::unknown_frames));
    derp["version"] = json_string(DERPD_VERSION);
    std::string set = "{";
    for (const auto& [k, v] : derp) set += (set.size() > 1 ? ", " : "") + json_string(k) + ": " + v;
    vars["derp"] = set + "}";
    for (const auto& [name, packets] : {std::pair{"derp_bytes_dropped", false}, std::pair{"derp_packets_dropped", true}}) {
        std::string map = "{";
        for (std::size_t r = 0; r < drop_reason_count; ++r)
            for (std::size_t k = 0; k < 2; ++k) {
                const bool as_packets = packets;
                const std::uint64_t n = sum_derp(shared, [&](const derp_counters& c) {
                    return as_packets ? c.packets_dropped[r][k].get() : c.bytes_dropped[r][k].get();
                });
                map += fmt::format("{}\"reason={},kind={}\": {}", map.size() > 1 ? ", " : "",
                                   to_string(static_cast<drop_reason>(r)), k == 0 ? "disco" : "other", n);
            }
        vars[name] = map + "}";
    }
    if (shared.stun != nullptr) {
        std::string requests;
        for (const auto d : stun::all_dispositions)
            requests += fmt::format("{}\"{}\": {}", requests.empty() ? "" : ", ", stun::to_string(d),
                                    shared.stun->requests[static_cast<std::size_t>(d)].get());
        vars["stun"] = fmt::format("{{\"counter_addrfamily\": {{\"ipv4\": {}, \"ipv6\": {}}}, \"counter_requests\": {{{}}}}}",
                                   shared.stun->family_ipv4.get(), shared.stun->family_ipv6.get(), requests);
    }
    vars["counter_bootstrap_dns_requests"] = std::to_string(derp_sum(&derp_counters::bootstrap_dns_requests));
    vars["derp_websocket_accepts"] = std::to_string(derp_sum(&derp_counters::websocket_accepts));
    const auto now = static_cast<std::uint64_t>(std::time(nullptr));
    vars["counter_uptime_sec"] = std::to_string(now - static_cast<std::uint64_t>(shared.start_unix_seconds));
    vars["process_start_unix_time"] = std::to_string(shared.start_unix_seconds);
    vars["version"] = json_string(DERPD_VERSION);
    std::string out = "{\n";
    bool first = true;
    for (const auto& [k, v] : vars) {
        out += (first ? "" : ",\n") + json_string(k) + ": " + v;
        first = false;
    }
    return out + "\n}\n";
}

std::pair<int, std::string> render_debug_check(const metric_sources& shared) {
    std::uint64_t connections = 0, keys = 0;
    for (std::uint32_t s = 0; s < shared.shards; ++s) {
        connections += shared.counters[s].current_connections.get();
        keys += shared.counters[s].clients_local.get();
    }
    // The shards update these as they go: a check during a burst of connects can see a moment
    // between a registration and its route; derper's check has the same window.
    std::string problems;  // derper joins them with ", "
    if (connections != keys) problems = fmt::format("expvar connections = {} != clients map says of {}", connections, keys);
    if (shared.self_check) {
        if (std::string self = shared.self_check(); !self.empty()) problems += (problems.empty() ? "" : ", ") + self;
    }
    if (!problems.empty()) return {500, problems};
    return {200, "derp.Server ConsistencyCheck okay"};
}

std::string render_debug_index(const metric_sources& shared) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    const auto uptime = static_cast<std::uint64_t>(std::time(nullptr)) - static_cast<std::uint64_t>(shared.start_unix_seconds);
    return fmt::format(
        "<html><body>\n<h1>derpd debug</h1>\n<ul>\n"
        "<li><b>Uptime:</b> {}s</li>\n"
        "<li><b>Version:</b> {}</li>\n"
        "<li><b>Machine:</b> {}</li>\n"
        "<li><b>Mesh key:</b> {}</li>\n"
        "<li><b>Shards:</b> {}</li>\n"
        "</ul>\n<ul>\n"
        "<li><a href=\"/debug/varz\">/debug/varz</a> (Prometheus)</li>\n"
        "<li><a href=\"/debug/check\">/debug/check</a></li>\n"
        "<li><a href=\"/debug/vars\">/debug/vars</a> (JSON)</li>\n"
        "</ul>\n</body></html>\n",
        uptime, DERPD_VERSION, host, shared.mesh_key ? "true" : "false", shared.shards);
}

}  // namespace derp::admin
