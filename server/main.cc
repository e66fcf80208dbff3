// derpd: the DERP relay daemon. Parses derper's flags, loads the server key, starts the shard
// runtime with the DERP service on every shard, and runs until SIGINT or SIGTERM.
#include <cmath>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "crypto/box.hh"
#include "ring/log.hh"
#include "ring/runtime.hh"
#include "ring/service_mux.hh"
#include "server/config.hh"
#include "server/mesh.hh"
#include "server/derp_internal.hh"
#include "server/derp_service.hh"
#include "admin/admin_service.hh"
#include "server/files.hh"
#include "server/certificates.hh"
#include "server/acme_client.hh"
#include "server/admission.hh"
#include "crypto/ktls.hh"
#include "crypto/tls_layer.hh"
#include "server/ws_layer.hh"
#include "core/bootstrap_dns.hh"
#include "core/http_endpoints.hh"

#ifndef DERPD_VERSION
#define DERPD_VERSION "unknown"
#endif

namespace {

using namespace derp;
using ring::log_level;

// File descriptors kept back from the connection slots: listeners, rings, eventfds, key files,
// and the admin plane's own sockets.
constexpr std::uint64_t reserved_fds = 64;
// Below this many slots per shard derpd is not a relay worth running.
constexpr std::uint64_t conns_per_shard_min = 16;

int fail(const std::string& message) {
    std::fprintf(stderr, "derpd: %s\n", message.c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    // The admin thread reads SIGINT/SIGTERM/SIGHUP from a signalfd; every thread must have them
    // blocked, including those started before the runtime (bootstrap DNS, certificate poller),
    // or the kernel delivers the signal to one of those and its default action kills derpd.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::vector<std::string_view> args(argv + 1, argv + argc);
    auto parsed = server::parse_command_line(args);
    if (!parsed) return fail(parsed.error() + " (see derpd -h)");
    if (parsed->help) {
        std::fputs(parsed->usage.c_str(), stderr);
        return 0;
    }
    server::config cfg = parsed->cfg;
    if (cfg.print_version) {
        std::printf("%s\n", DERPD_VERSION);
        return 0;
    }
    ring::log_level level{};
    ring::parse_log_level(cfg.log_level, &level);
    ring::set_log_level(level);

    if (cfg.tls && cfg.certmode == "gcp")
        return fail("-certmode gcp (Google's ACME CA with External Account Binding) is not available in derpd. "
                    "Use -certmode letsencrypt (any ACME CA without EAB through -acme-directory) or -certmode manual");
    if (cfg.tls && cfg.certmode == "letsencrypt") {
        if (auto bad = server::letsencrypt_hostname_problem(cfg.hostname); !bad.empty()) return fail(bad);
    }
    if (!crypto_init()) return fail("libsodium failed to initialise (no randomness source?)");

    // The server key: -dev makes a fresh one each start, as derper -dev does.
    private_key server_private;
    if (cfg.dev) {
        server_private = generate_private_key();
    } else {
        std::string path = cfg.config_path;
        if (path.empty()) {
            if (geteuid() != 0) return fail("derper: -c <config path> not specified");
            path = "/var/lib/derper/derper.key";
            ring::log(log_level::info, "no config path specified; using {}", path);
        }
        auto key = server::load_or_create_key_file(path);
        if (!key) return fail(key.error());
        if (key->created) ring::log(log_level::info, "wrote a new server key to {}", path);
        server_private = key->key;
    }

    // The mesh key: -dev from the environment, else the PSK file (derper's default paths).
    if (cfg.dev) {
        if (const char* env = std::getenv("TAILSCALE_DERPER_MESH_KEY"); env != nullptr && *env) {
            auto key = key_mesh::from_psk_file(env);
            if (!key) return fail("invalid mesh key in TAILSCALE_DERPER_MESH_KEY (want 64 hex digits)");
            cfg.mesh_key = *key;
        }
    } else {
        std::string path = cfg.mesh_psk_file.empty() ? server::default_mesh_psk_path() : cfg.mesh_psk_file;
        if (!path.empty()) {
            auto key = server::load_mesh_key_file(path);
            if (!key) return fail(key.error());
            cfg.mesh_key = *key;
            ring::log(log_level::info, "Got mesh key from static file");
        }
    }
    ring::log(log_level::info, "{}", cfg.mesh_key ? "DERP mesh key configured" : "No mesh key configured");

    auto addresses = ring::parse_listen_address(cfg.listen_address);
    if (!addresses) return fail(addresses.error() + " (flag -a)");

    // TLS (spec 3.1, 4.2): the certificate, kTLS, and the port-80 listener.
    auto tls_contexts = std::make_shared<tls::context_slot>();
    std::unique_ptr<server::certificate_reloader> reloader;
    tls::ktls_mode ktls_mode = tls::ktls_mode::automatic;
    tls::parse_ktls_mode(cfg.ktls, &ktls_mode);
    tls::ktls_support ktls;
    std::vector<ring::socket_address> port80_addresses;
    // -certmode letsencrypt: the ACME client, the challenge answers the listeners serve, its counters.
    std::unique_ptr<server::acme_client> acme;
    auto acme_challenges = std::make_shared<tls::acme_challenges>();
    admin::acme_counters acme_counters;
    if (cfg.tls && cfg.certmode == "letsencrypt") {
        const std::string certdir = cfg.certdir.empty() ? server::default_certdir() : cfg.certdir;
        if (certdir.empty()) return fail("-certdir is required with -certmode letsencrypt (no HOME or XDG_CACHE_HOME for the default)");
        server::acme_settings as;
        as.hostname = cfg.hostname;
        as.certdir = certdir;
        as.directory_url = cfg.acme_directory;
        as.ca_file = cfg.acme_ca;
        as.email = cfg.acme_email;
        as.request_timeout_ns = cfg.acme_timeout_ns;
        as.retry_base_ns = cfg.acme_retry_interval_ns;
        as.http01 = cfg.http_port >= 0;
        auto meta = tls::make_meta_certificate(public_key_of(server_private));
        if (!meta) return fail(meta.error());
        as.meta_cert_der = std::move(meta.value());
        acme = std::make_unique<server::acme_client>(std::move(as), *tls_contexts, acme_challenges, acme_counters);
        auto prepared = acme->prepare();
        if (!prepared) return fail(prepared.error());
        ring::log(log_level::info, "{}", prepared.value());
    }
    std::string cert_path;
    if (cfg.tls && !acme) {
        const std::string certdir = cfg.certdir.empty() ? server::default_certdir() : cfg.certdir;
        if (certdir.empty()) return fail("-certdir is required with -certmode manual (no HOME or XDG_CACHE_HOME for the default)");
        auto setup = server::load_manual_certificate(certdir, cfg.hostname, public_key_of(server_private));
        if (!setup) return fail(setup.error());
        if (setup->self_signed_written)
            ring::log(log_level::info, "wrote a self-signed certificate for {} to {}", cfg.hostname,
                      setup->identity.cert_path);
        if (!setup->derpmap_node.empty())
            ring::log(log_level::info, "Using self-signed certificate for IP address {}. Configure it in DERPMap using: {}",
                      cfg.hostname, setup->derpmap_node);
        tls_contexts->current.store(setup->context);
        reloader = std::make_unique<server::certificate_reloader>(setup->identity, *tls_contexts);
        if (cfg.cert_poll_interval_ns > 0) reloader->start_polling(cfg.cert_poll_interval_ns);
        cert_path = setup->identity.cert_path;
    }
    if (cfg.tls) {
        ktls = ktls_mode == tls::ktls_mode::off ? tls::ktls_support{false, "off (-ktls=off)"} : tls::probe_ktls();
        if (ktls_mode == tls::ktls_mode::require && !ktls.available)
            return fail("-ktls=require, but " + ktls.detail);
        ring::log(log_level::info, "TLS: certificate {} for {}; handshakes by {}; kTLS {}",
                  acme ? "from ACME (" + cfg.acme_directory + ")" : cert_path, cfg.hostname,
                  acme ? std::string("OpenSSL") : tls::handshake_library(),
                  ktls.available ? "available: connections move to the kernel after the handshake"
                                 : "not used (" + ktls.detail + "): userspace records");
        if (cfg.http_port >= 0) {
            const auto colon = cfg.listen_address.rfind(':');
            auto port80 = ring::parse_listen_address(
                fmt::format("{}:{}", cfg.listen_address.substr(0, colon), cfg.http_port));
            if (!port80) return fail(port80.error() + " (flag -http-port)");
            port80_addresses = port80.value();
        }
    }

    const std::uint32_t shards =
        cfg.shards > 0 ? static_cast<std::uint32_t>(cfg.shards) : ring::default_shard_count();
    // Connection slots: the open-files limit shared among the shards, unless given.
    const std::uint64_t nofile = ring::raise_open_files_limit();
    const std::uint64_t usable = nofile > reserved_fds ? nofile - reserved_fds : 0;
    std::uint64_t per_shard = cfg.conns_per_shard_max > 0
                                  ? static_cast<std::uint64_t>(cfg.conns_per_shard_max)
                                  : usable / shards;
    if (per_shard * shards > usable || per_shard < conns_per_shard_min)
        return fail(fmt::format(
            "too few file descriptors: the open-files limit is {}, and {} shard(s) x {} "
            "connections need {}. Raise it (LimitNOFILE=1048576 in the systemd unit, or ulimit -n) "
            "or lower -conns-per-shard",
            nofile, shards, std::max(per_shard, conns_per_shard_min),
            std::max(per_shard, conns_per_shard_min) * shards + reserved_fds));

    server::derp_settings settings;
    settings.server_private = server_private;
    settings.server_public = public_key_of(server_private);
    settings.mesh_key = cfg.mesh_key;
    settings.serve_derp = cfg.serve_derp;
    settings.hostname = cfg.hostname;
    settings.tls_mode = cfg.tls;
    // tsweb's debug access knobs (spec 3.8), read once at start.
    if (const char* path = std::getenv("TS_DEBUG_KEY_PATH"); path != nullptr && *path) {
        std::ifstream in(path);
        std::string key((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
        while (!key.empty() && std::isspace(static_cast<unsigned char>(key.front()))) key.erase(key.begin());
        if (!in && key.empty()) return fail(fmt::format("TS_DEBUG_KEY_PATH {}: cannot read it", path));
        settings.debug_policy.debug_key = key;
    }
    if (const char* ip = std::getenv("TS_ALLOW_DEBUG_IP"); ip != nullptr && *ip) {
        settings.debug_policy.allow_ip = parse_ip(ip);
        if (!settings.debug_policy.allow_ip)
            ring::log(log_level::warn, "TS_ALLOW_DEBUG_IP={} is not an IP address; ignored", ip);
    }
    if (const char* cidrs = std::getenv("TS_DEBUG_TRUSTED_CIDRS"); cidrs != nullptr && *cidrs) {
        for (const auto& entry : parse_name_list(cidrs)) {
            auto prefix = parse_ip_prefix(entry);
            if (!prefix) return fail(fmt::format("TS_DEBUG_TRUSTED_CIDRS: invalid CIDR \"{}\"", entry));
            settings.debug_policy.trusted_prefixes.push_back(*prefix);
        }
    }
    settings.unfinished_conns_max = static_cast<std::uint32_t>(
        cfg.unfinished_per_shard_max > 0 ? std::min<std::uint64_t>(static_cast<std::uint64_t>(cfg.unfinished_per_shard_max), per_shard)
                                         : std::max<std::uint64_t>(per_shard * 3 / 4, 1));
    settings.staged_total_max = static_cast<std::uint64_t>(cfg.shard_staging_max);
    settings.write_timeout_ns = cfg.tcp_write_timeout_ns;
    settings.handshake_timeout_ns = cfg.handshake_timeout_ns;
    // Go's 30 s ReadTimeout for the request head, kept at 3x the handshake deadline so that
    // one flag shortens both in tests.
    settings.http_header_timeout_ns = 3 * cfg.handshake_timeout_ns;
    settings.keepalive_ns = cfg.keepalive_interval_ns;
    settings.keepalive_jitter_ns = cfg.keepalive_interval_ns / 12;
    settings.advertise_rate_limit = cfg.advertise_rate_limit;
    settings.cross_shard_backlog_max = static_cast<std::uint64_t>(cfg.cross_shard_backlog_max);
    // A receiver whose socket keeps up may have to absorb what one loop turn reads.
    settings.staged_burst_bytes_max = static_cast<std::uint32_t>(
        std::max<std::int64_t>(settings.staged_bytes_max, cfg.recv_buffers * 16 * 1024));
    // Clients told to reconnect should be back before the drain ends: at most half of it.
    settings.drain_reconnect_spread_ns = std::min(cfg.drain_reconnect_spread_ns, cfg.drain_timeout_ns / 2);
    server::derp_shared shared(settings, shards);
    // --rate-config (spec 2.12): a bad file refuses the start; on SIGHUP it keeps the old limit.
    const auto apply_rate = [&shared](const rate_config& rate) {
        shared.rate_limit.store(rate);
        ring::log(log_level::info, "rate config applied: client-rate={} bytes/sec, client-burst={} bytes",
                  rate.bytes_per_second, rate.enabled() ? rate.effective_burst() : 0);
    };
    if (!cfg.rate_config_path.empty()) {
        auto rate = server::load_rate_config_file(cfg.rate_config_path);
        if (!rate) return fail(rate.error());
        shared.rate_limit.configured = true;
        apply_rate(*rate);
    }
    // The region (spec 5): one link per -mesh-with entry, spread over the shards.
    std::optional<server::mesh_config> mesh;
    if (!cfg.mesh_with.empty()) {
        if (!cfg.mesh_key) return fail("-mesh-with needs the region's mesh key (-mesh-psk-file)");
        auto made = server::make_mesh_config(cfg.mesh_with);
        if (!made) return fail(made.error());
        mesh = std::move(made.value());
        mesh->retry_ns = cfg.mesh_retry_interval_ns;
        shared.mesh = &*mesh;
        std::string names;
        for (const auto& e : mesh->entries) {
            shared.mesh_peer_names.push_back(e.host);
            names += (names.empty() ? "" : ", ") + e.host;
        }
        shared.mesh_peers = std::make_unique<admin::mesh_peer_counters[]>(mesh->entries.size());
        ring::log(log_level::info, "mesh: {} peer(s): {}", mesh->entries.size(), names);
    }
    auto mesh_tls_counters = std::make_unique<tls::tls_counters[]>(shards);
    auto tls_counters = std::make_unique<tls::tls_counters[]>(shards);
    if (cfg.tls) {
        shared.tls = tls_counters.get();
        shared.tls_contexts = tls_contexts.get();
    }
    // Whoever looks after the certificate says when the node is degraded (Health frames).
    if (reloader) reloader->set_health_sink([&shared](std::string problem) { shared.health.set(std::move(problem)); });
    if (acme) acme->set_health_sink([&shared](std::string problem) { shared.health.set(std::move(problem)); });
    if (acme) {
        shared.acme = &acme_counters;
        shared.acme_challenges = acme_challenges.get();
    }
    shared.cmdline.assign(argv, argv + argc);
    // Admission (spec 2.11): decided on a thread of its own, started once the runtime runs.
    std::unique_ptr<server::admission_checker> admission;
    if (cfg.verify_clients || !cfg.verify_client_url.empty()) {
        server::admission_settings as;
        as.verify_clients = cfg.verify_clients;
        if (!cfg.socket.empty()) as.socket_path = cfg.socket;
        as.url = cfg.verify_client_url;
        as.fail_open = cfg.verify_client_url_fail_open;
        as.timeout_ns = cfg.verify_client_timeout_ns;
        as.cache_ns = cfg.verify_client_cache_ns;
        auto made = server::admission_checker::make(std::move(as), shards);
        if (!made) return fail(made.error());
        admission = std::move(made.value());
        shared.admission = admission.get();
        if (cfg.verify_clients) shared.self_check = [a = admission.get()] { return a->self_check_problem(); };
        ring::log(log_level::info, "admission: {}{}{} (timeout {} ms, answers kept {} ms)",
                  cfg.verify_clients ? "tailscaled at " + admission->settings().socket_path : "",
                  cfg.verify_clients && !cfg.verify_client_url.empty() ? ", then " : "",
                  cfg.verify_client_url.empty() ? "" : fmt::format("controller {} (fail-{})", cfg.verify_client_url,
                                                                   cfg.verify_client_url_fail_open ? "open" : "closed"),
                  cfg.verify_client_timeout_ns / 1'000'000, cfg.verify_client_cache_ns / 1'000'000);
    }
    server::bootstrap_resolver bootstrap(parse_name_list(cfg.bootstrap_dns_names),
                                         parse_unpublished_names(cfg.unpublished_bootstrap_dns_names));
    if (bootstrap.configured()) {
        bootstrap.start();
        shared.bootstrap = &bootstrap;
    }

    ring::runtime_config rc;
    rc.shard_count = shards;
    rc.pin_threads = cfg.pin_threads;
    rc.listen = addresses.value();
    const std::size_t port80_first = rc.listen.size();
    rc.listen_tags.assign(rc.listen.size(), cfg.tls ? server::derp_service::listener_main_tls
                                                    : server::derp_service::listener_main_plain);
    for (const auto& address : port80_addresses) {
        rc.listen.push_back(address);
        rc.listen_tags.push_back(server::derp_service::listener_port80);
    }
    ring::runtime* running = nullptr;  // for on_reload, set once the runtime has started
    if (reloader || !cfg.rate_config_path.empty())
        rc.on_reload = [&reloader, &cfg, &apply_rate, &running] {
            if (reloader) reloader->reload("SIGHUP");
            if (cfg.rate_config_path.empty()) return;
            auto rate = server::load_rate_config_file(cfg.rate_config_path);
            if (!rate) {
                ring::log(log_level::warn, "rate config reload (SIGHUP) failed, keeping the current limit: {}",
                          rate.error());
                return;
            }
            apply_rate(*rate);
            if (running != nullptr) running->wake_all();  // each shard applies it on its next turn
        };
    rc.listen_options.join_existing = cfg.takeover;
    rc.drain_timeout_ns = cfg.drain_timeout_ns;
    // -accept-connection-limit: one bucket for the process, on the DERP listeners (derper: the
    // TLS listener; derpd's plain one too), not the port-80 listener of ACME and redirects.
    std::unique_ptr<ring::accept_limiter> accept_limit;
    if (std::isfinite(cfg.accept_connection_limit)) {
        accept_limit = std::make_unique<ring::accept_limiter>(cfg.accept_connection_limit, cfg.accept_connection_burst);
        rc.shard_defaults.accept_limit = accept_limit.get();
        rc.shard_defaults.accept_limit_tags = 1u << server::derp_service::listener_main_plain |
                                              1u << server::derp_service::listener_main_tls;
        ring::log(log_level::info, "accepting at most {} connections/s (burst {}) on the DERP listeners",
                  cfg.accept_connection_limit, cfg.accept_connection_burst);
    }
    rc.listen_options.user_timeout_ns = cfg.tcp_user_timeout_ns;
    rc.listen_options.keepalive_idle_ns = cfg.tcp_keepalive_time_ns;
    rc.shard_defaults.conn_slots = static_cast<std::uint32_t>(per_shard);
    rc.shard_defaults.input_buffered_total_max = static_cast<std::uint64_t>(cfg.shard_input_max);
    // Input kept per connection beyond a whole frame: ClientInfo may be 256 KiB (spec 1.1).
    rc.shard_defaults.input_buffered_bytes_max = 512 * 1024;
    // Send buffers of 64 KiB hold 45 full-size RecvPacket frames: a client's whole queue
    // (32 + 32) leaves in one or two sends.
    rc.shard_defaults.send_buffer_bytes = 64 * 1024;
    rc.shard_defaults.send_buffer_count = 256;
    // Few receive buffers on purpose: they bound what one loop turn reads (32 x 16 KiB), so
    // that under overload derpd sends between reads instead of reading megabytes per turn
    // only to drop them at full queues (docs/BENCHMARKS.md: the unlimited rows). Connections
    // that find the ring empty are re-armed the next turn.
    rc.shard_defaults.recv_buffer_count = static_cast<std::uint32_t>(cfg.recv_buffers);
    rc.shard_defaults.wait_min_ns = cfg.wait_min_ns;
    rc.shard_defaults.wait_batch_cqes = static_cast<std::uint32_t>(cfg.wait_batch);
    rc.handle_signals = true;
    // What each shard may hold, for /debug/varz (derpd_memory_ceiling_bytes).
    shared.memory.send_buffer_bytes = rc.shard_defaults.send_buffer_bytes;
    shared.memory.send_buffers = std::uint64_t{rc.shard_defaults.send_buffer_count} * rc.shard_defaults.send_buffer_bytes;
    shared.memory.transfer_buffers = std::uint64_t{shared.settings.small_transfer_buffers} * server::small_frame_bytes_max +
                                     std::uint64_t{shared.settings.large_transfer_buffers} * server::large_frame_bytes_max;
    shared.memory.input = rc.shard_defaults.input_buffered_total_max;
    shared.memory.staging = shared.settings.staged_total_max;
    // STUN on the admin core: UDP on the host of -a at -stun-port (spec 3.1).
    stun::stun_counters stun_counters;
    if (cfg.stun) {
        const auto colon = cfg.listen_address.rfind(':');
        auto stun_addresses = ring::parse_listen_address(
            fmt::format("{}:{}", cfg.listen_address.substr(0, colon), cfg.stun_port));
        if (!stun_addresses) return fail(stun_addresses.error() + " (flag -stun-port)");
        rc.udp_listen = stun_addresses.value();
        shared.stun = &stun_counters;
    }
    if (!cfg.admin_addr.empty()) {
        // ":port" binds loopback only: an admin endpoint is not for the world unless asked.
        const std::string admin = cfg.admin_addr.front() == ':' ? "localhost" + cfg.admin_addr : cfg.admin_addr;
        auto admin_addresses = ring::parse_listen_address(admin);
        if (!admin_addresses) return fail(admin_addresses.error() + " (flag -admin-addr)");
        rc.admin_listen = admin_addresses.value();
    }
    const bool stun_accept_standard = !cfg.stun_strict;
    auto rt = ring::runtime::start(
        std::move(rc),
        [&](ring::shard& sh) -> std::unique_ptr<ring::service> {
            auto derp = std::make_unique<server::derp_service>(sh, shared);
            server::derp_service* derp_view = derp.get();
            // Framing for DERP over WebSocket sits below the service and above TLS (spec 3.4).
            auto ws = std::make_unique<server::ws_layer>(sh, std::move(derp), shared.counters[sh.index()]);
            derp_view->set_ws_layer(ws.get());
            std::unique_ptr<ring::service> server_side = std::move(ws);
            if (cfg.tls) {
                tls::tls_layer_config layer;
                layer.tls_listener_tag = server::derp_service::listener_main_tls;
                layer.contexts = tls_contexts;
                layer.ktls = ktls_mode;
                layer.kernel_has_ktls = ktls.available;
                layer.handshake_timeout_ns = cfg.handshake_timeout_ns;
                layer.handshakes_per_source_max = static_cast<std::uint32_t>(cfg.tls_handshakes_per_source);
                auto wrapped = std::make_unique<tls::tls_layer>(sh, std::move(server_side), layer, tls_counters[sh.index()]);
                derp_view->set_tls_layer(wrapped.get());
                server_side = std::move(wrapped);
            }
            if (!mesh) return server_side;
            // The mesh links this shard dials sit beside the server: service_mux gives them
            // the connections this shard opened, the server those it accepted.
            auto links = std::make_unique<server::mesh_links>(sh, *derp_view, shared, *mesh);
            auto pool = std::make_unique<client::client_pool>(sh, *links);
            links->attach(*pool);
            client::client_pool* pool_view = pool.get();
            tls::tls_layer_config client_layer;
            client_layer.client = true;
            // The link's own dial deadline covers TLS too and names the failure a timeout; the
            // layer's deadline is only a backstop behind it.
            client_layer.handshake_timeout_ns = mesh->dial_timeout_ns + 1'000'000'000;
            auto client_side = std::make_unique<tls::tls_layer>(sh, std::move(pool), client_layer,
                                                                mesh_tls_counters[sh.index()]);
            pool_view->set_tls_layer(client_side.get());
            derp_view->adopt_mesh(std::move(links));
            return std::make_unique<ring::service_mux>(std::move(server_side), std::move(client_side));
        },
        [&shared, &stun_counters, stun_accept_standard](ring::shard& sh) -> std::unique_ptr<ring::service> {
            return std::make_unique<admin::admin_service>(sh, shared, stun_counters, stun_accept_standard);
        });
    if (!rt) return fail(rt.error());
    running = rt.value().get();
    for (const auto& address : rt.value()->bound_admin_addresses())
        ring::log(log_level::info, "admin listener on {}", address.to_string());
    for (const auto& address : rt.value()->bound_udp_addresses())
        ring::log(log_level::info, "STUN server listening on {}", address.to_string());

    const auto& bound = rt.value()->bound_addresses();
    for (std::size_t i = 0; i < bound.size(); ++i) {
        if (i < port80_first)
            ring::log(log_level::info, "derper: serving on {}{}", bound[i].to_string(), cfg.tls ? " with TLS" : "");
        else
            ring::log(log_level::info, "derper: port-80 listener (redirects to HTTPS) on {}", bound[i].to_string());
    }
    ring::log(log_level::info, "derpd {}: {} shard(s), {} connections each, io_uring {}; server key {}",
              DERPD_VERSION, shards, per_shard, rt.value()->ring_setup_note(0),
              settings.server_public.to_string());
    // Freed memory goes back to the kernel now and then: glibc keeps what a burst of TLS
    // handshakes (about 40 KiB each while in flight) freed in its per-thread arenas, and an
    // operator reads RSS. malloc_trim locks one arena at a time; shards allocate only when
    // connections come and go, so the pause is not on the packet path.
    std::mutex trim_mutex;
    std::condition_variable trim_wake;
    bool trim_stop = false;
    std::thread trimmer;
    if (cfg.memory_trim_interval_ns > 0)
        trimmer = std::thread([&] {
            std::unique_lock lock(trim_mutex);
            while (!trim_wake.wait_for(lock, std::chrono::nanoseconds(cfg.memory_trim_interval_ns), [&] { return trim_stop; }))
                malloc_trim(0);
        });
    // The ACME client starts once the listeners are up: its challenges are answered there.
    if (acme) acme->start();
    if (admission) admission->start([r = rt.value().get()](std::uint32_t shard) { r->wake(shard); });
    rt.value()->wait();
    // The threads that hold references to `shared` (health sinks, the admission checker) go
    // before it does.
    acme.reset();
    reloader.reset();
    admission.reset();
    if (trimmer.joinable()) {
        {
            std::lock_guard lock(trim_mutex);
            trim_stop = true;
        }
        trim_wake.notify_all();
        trimmer.join();
    }
    // What this run relayed and dropped, summed over the shards, for the operator's log.
    std::uint64_t received = 0, sent = 0;
    std::array<std::uint64_t, drop_reason_count> dropped{};
    for (std::uint32_t s = 0; s < shards; ++s) {
        const auto& c = shared.counters[s];
        received += c.packets_received.get();
        sent += c.packets_sent.get();
        for (std::size_t r = 0; r < drop_reason_count; ++r)
            dropped[r] += c.packets_dropped[r][0].get() + c.packets_dropped[r][1].get();
    }
    std::string drops;
    for (std::size_t r = 0; r < drop_reason_count; ++r)
        if (dropped[r] > 0)
            drops += fmt::format(" {}={}", to_string(static_cast<drop_reason>(r)), dropped[r]);
    ring::log(log_level::info, "derpd: stopped; packets received {}, sent {}, dropped:{}", received, sent,
              drops.empty() ? " none" : drops);
    return 0;
}
