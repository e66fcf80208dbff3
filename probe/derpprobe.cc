// derpprobe: monitors DERP servers (derpd or Go's derper) the way Tailscale's cmd/derpprobe does
// (spec 8.1). It reads a DERP map from a file and probes every node of the selected regions:
//   derp/<region>/<node>/tls          TLS handshake, verification, every certificate valid for 7+ days
//   derp/<region>/<node>/udp[6]       a STUN answer from the node's IPv4 (IPv6) at STUNPort|3478
//   derp/<region>/<from>/<to>/mesh    a packet between two fresh clients on from and to (mesh)
//   derpmap-probe                     reading the map (re-read every -interval)
// With -once it runs each probe once, prints good/bad lines and exits 1 if any is bad.
// Otherwise each class runs on its interval, and -listen serves /metrics (Prometheus text,
// derpprobe_ namespace; also at /debug/varz), a status page at / and /healthz; SIGINT or
// SIGTERM stop it with status 0. Nodes are reached and verified as Tailscale clients do
// (IPv4/IPv6 fields, CertName sha256-raw pins, InsecureForTests); -ca-file (derpd) trusts a
// private CA. docs/DERPPROBE.md has the details and the differences from Go's derpprobe.
// Not here (yet): fetching the map over HTTP(S) or from tailscaled, the bw and qd probes, CRL
// revocation checks, /debug/probe-run.
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "probe/probe_http.hh"
#include "probe/probe_map.hh"
#include "probe/probe_mesh.hh"
#include "probe/probe_net.hh"
#include "probe/probe_report.hh"
#include "probe/probe_scheduler.hh"
#include "probe/probe_stun.hh"
#include "probe/probe_tls.hh"
#include "core/flags.hh"
#include "crypto/box.hh"
#include "ring/log.hh"

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif

namespace {

using namespace derp;
using namespace derp::probe;

// Probe runs at the same time: each blocks a worker (a mesh run also starts two client
// runtimes), so this bounds threads and sockets; a probe that finds no free worker waits.
constexpr unsigned worker_threads = 16;

struct options {
    std::string derp_map;
    std::string listen = ":8030";
    bool once = false;
    bool spread = true;
    std::int64_t interval_ns = 15'000'000'000;
    std::int64_t mesh_interval_ns = 15'000'000'000;
    std::int64_t stun_interval_ns = 15'000'000'000;
    std::int64_t tls_interval_ns = 15'000'000'000;
    std::string region_code;
    std::string mesh_psk_file;
    std::string ca_file;
    std::string socket = default_tailscaled_socket;
    bool version = false;
};

int usage_error(const std::string& message) {
    std::fprintf(stderr, "derpprobe: %s\n", message.c_str());
    return 2;
}

// The probes one map implies, by derpprobe's rules: tls per node, udp6/udp per address (none
// when STUNPort is -1), mesh for every ordered pair of a region's nodes; an interval of 0 turns
// a class off. STUNOnly nodes are probed like the others, as derpprobe does.
std::vector<probe_definition> probes_for(const std::vector<derp_region>& regions, const options& o,
                                         const mesh_settings& mesh) {
    std::vector<probe_definition> out;
    for (const derp_region& region : regions) {
        for (const derp_node& node : region.nodes) {
            const label_list labels = {{"region", region.region_code},
                                       {"region_id", std::to_string(region.region_id)},
                                       {"hostname", node.host_name}};
            if (o.tls_interval_ns > 0)
                out.push_back({fmt::format("derp/{}/{}/tls", region.region_code, node.name), "tls", labels,
                               o.tls_interval_ns,
                               [node, ca_file = o.ca_file](const run_context& ctx) { return probe_tls(node, ca_file, ctx); }});
            if (o.stun_interval_ns > 0 && node.stun_port != -1) {
                for (const int family : {AF_INET6, AF_INET}) {
                    // An empty field means DNS to a Tailscale client, but derpprobe only probes
                    // STUN at literal addresses; "none" and the like turn the family off.
                    ring::socket_address scratch;
                    if (!parse_ip_literal(family == AF_INET ? node.ipv4 : node.ipv6, family, scratch, 0)) continue;
                    out.push_back({fmt::format("derp/{}/{}/udp{}", region.region_code, node.name,
                                               family == AF_INET6 ? "6" : ""),
                                   "derp_udp", labels, o.stun_interval_ns,
                                   [node, family](const run_context& ctx) { return probe_stun(node, family, ctx); }});
                }
            }
            if (o.mesh_interval_ns > 0) {
                for (const derp_node& to : region.nodes) {
                    label_list mesh_labels = labels;
                    mesh_labels.emplace_back("derp_path", node.name == to.name ? "single" : "mesh");
                    out.push_back({fmt::format("derp/{}/{}/{}/mesh", region.region_code, node.name, to.name),
                                   "derp_mesh", std::move(mesh_labels), o.mesh_interval_ns,
                                   [from = node, to, mesh](const run_context& ctx) {
                                       return probe_mesh(from, to, mesh, ctx);
                                   }});
                }
            }
        }
    }
    return out;
}

result<key_mesh, std::string> read_mesh_key(const std::string& path) {
    std::ifstream in(path);
    if (!in) return unexpected(fmt::format("-mesh-psk-file {}: {}", path, std::strerror(errno)));
    std::stringstream text;
    text << in.rdbuf();
    auto key = key_mesh::from_psk_file(text.str());
    if (!key) return unexpected(fmt::format("-mesh-psk-file {}: want 64 hex digits (whitespace is trimmed)", path));
    return *key;
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    flag_set flags("derpprobe");
    flags.add_string("derp-map", &o.derp_map,
                     "URL to DERP map (https:// or file://) or 'local' to use the local tailscaled's DERP map; "
                     "derpd: a plain file path works too");
    flags.add_string("listen", &o.listen, "HTTP listen address for /metrics, / and /healthz (not with -once)");
    flags.add_bool("once", &o.once, "probe once and print results, then exit (status 1 if any probe failed); ignores -listen");
    flags.add_bool("spread", &o.spread, "whether to spread probing over time");
    flags.add_duration("interval", &o.interval_ns, "how often the DERP map is read again");
    flags.add_duration("mesh-interval", &o.mesh_interval_ns, "mesh probe interval (0 = no mesh probes)");
    flags.add_duration("stun-interval", &o.stun_interval_ns, "STUN probe interval (0 = no STUN probes)");
    flags.add_duration("tls-interval", &o.tls_interval_ns, "TLS probe interval (0 = no TLS probes)");
    flags.add_string("region-code", &o.region_code,
                     "probe only this region, by RegionCode (e.g. 'lax') or RegionID; if left blank, all regions");
    flags.add_string("mesh-psk-file", &o.mesh_psk_file,
                     "if non-empty, path to a file with the mesh pre-shared key (64 hex digits); mesh probes "
                     "authenticate with it");
    flags.add_string("ca-file", &o.ca_file,
                     "derpd: verify nodes without a sha256-raw CertName against the CAs in this PEM file instead "
                     "of the system store");
    flags.add_string("socket", &o.socket, "derpd: tailscaled's LocalAPI socket, for -derp-map local");
    flags.add_bool("version", &o.version, "print version and exit");
    std::vector<std::string_view> args(argv + 1, argv + argc);
    auto parsed = flags.parse(args);
    if (!parsed) return usage_error(parsed.error());
    if (parsed->help_requested) {
        std::fprintf(stderr, "%s", flags.usage().c_str());
        return 0;
    }
    if (o.version) {
        std::printf("derpprobe (derpd %s)\n", DERPD_VERSION);
        return 0;
    }
    if (!parsed->positional.empty()) return usage_error(fmt::format("unexpected argument \"{}\"", parsed->positional[0]));
    if (o.derp_map.empty())
        return usage_error("-derp-map is required: a file, an https:// URL, or 'local'");
    for (const auto& [name, value] : {std::pair{"interval", o.interval_ns}, std::pair{"mesh-interval", o.mesh_interval_ns},
                                      std::pair{"stun-interval", o.stun_interval_ns}, std::pair{"tls-interval", o.tls_interval_ns}})
        if (value < 0) return usage_error(fmt::format("-{} must not be negative", name));
    if (o.interval_ns == 0) return usage_error("-interval must be positive");
    if (!o.ca_file.empty()) {
        std::FILE* f = std::fopen(o.ca_file.c_str(), "r");
        if (f == nullptr) return usage_error(fmt::format("-ca-file {}: {}", o.ca_file, std::strerror(errno)));
        std::fclose(f);
    }
    mesh_settings mesh;
    mesh.ca_file = o.ca_file;
    if (!o.mesh_psk_file.empty()) {
        auto key = read_mesh_key(o.mesh_psk_file);
        if (!key) return usage_error(key.error());
        mesh.mesh_key = *key;
    }
    if (!crypto_init()) {
        std::fprintf(stderr, "derpprobe: libsodium failed to initialise\n");
        return 1;
    }
    // The client runtimes log TLS failures per connection at info; the probes report them.
    ring::set_log_level(ring::log_level::warn);
    ::signal(SIGPIPE, SIG_IGN);
    // Every thread started from here on inherits the mask; the main thread takes the signals.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if (!o.once) pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    scheduler sched(o.once, o.spread);
    std::unique_ptr<http_server> http;
    if (!o.once) {
        auto started = http_server::start(o.listen, [&sched](std::string_view path) -> http_response {
            if (path == "/metrics" || path == "/debug/varz")
                return {200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(sched.snapshot())};
            if (path == "/healthz") return {200, "text/plain", "ok\n"};
            if (path == "/") return {200, "text/html; charset=utf-8", render_status_page(sched.snapshot(), wall_now_secs())};
            return {404, "text/plain; charset=utf-8", "404 page not found\n"};
        });
        if (!started) {
            std::fprintf(stderr, "derpprobe: %s\n", started.error().c_str());
            return 1;
        }
        http = std::move(started).value();
        for (const std::string& address : http->addresses()) std::fprintf(stderr, "derpprobe: listening on %s\n", address.c_str());
    }

    // derpprobe's derpmap-probe: (re)reads the map and makes the probe set follow it. A map that
    // no longer reads fails this probe; the probes of the last good map keep running.
    const std::string map_probe = "derpmap-probe";
    sched.upsert({map_probe, "derp_map", {}, o.interval_ns, [&sched, &o, &mesh, map_probe](const run_context&) {
                      map_fetch_options fetch;
                      fetch.ca_file = o.ca_file;
                      fetch.socket_path = o.socket;
                      auto map = load_derp_map(o.derp_map, fetch);
                      if (!map) return failed(map.error());
                      auto regions = select_regions(*map, o.region_code);
                      if (!regions) return failed(fmt::format("DERP map {}: {}", o.derp_map, regions.error()));
                      std::set<std::string> names{map_probe};
                      std::size_t nodes = 0;
                      for (const derp_region& region : *regions) nodes += region.nodes.size();
                      std::vector<probe_definition> definitions = probes_for(*regions, o, mesh);
                      for (probe_definition& d : definitions) {
                          names.insert(d.name);
                          sched.upsert(std::move(d));
                      }
                      sched.retain(names);
                      return outcome{true,
                                     fmt::format("{} region{}, {} node{}, {} probes", regions->size(),
                                                 regions->size() == 1 ? "" : "s", nodes, nodes == 1 ? "" : "s",
                                                 names.size() - 1),
                                     std::nullopt};
                  }});
    sched.run_now(map_probe);
    sched.start(worker_threads);

    if (o.once) {
        sched.wait_all_ran();
        sched.stop();
        bool any_bad = false;
        for (const std::string& line : render_once_lines(sched.snapshot())) {
            std::printf("%s\n", line.c_str());
            any_bad = any_bad || line.starts_with("bad: ");
        }
        std::fflush(stdout);
        return any_bad ? 1 : 0;
    }

    int signal_number = 0;
    while (sigwait(&stop_signals, &signal_number) != 0) {
    }
    std::fprintf(stderr, "derpprobe: %s: stopping\n", strsignal(signal_number));
    http->stop();
    sched.stop();
    return 0;
}
