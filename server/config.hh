// derpd's command line: derper's flags in derper's spelling and defaults (spec section 4), plus
// derpd's own (`--shards`, `--log-level`, ...), checked into one validated configuration.
// Pure apart from reading the environment for -dev's mesh key: argv in, config or a one-line
// error naming the flag out.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/key.hh"
#include "core/result.hh"

namespace derp::server {

struct config {
    // derper's flags.
    std::string listen_address = ":443";  // -a
    bool dev = false;                     // -dev
    std::string config_path;              // -c
    bool print_version = false;           // -version
    bool serve_derp = true;               // -derp
    std::string certmode = "letsencrypt"; // -certmode
    std::string certdir;                  // -certdir
    std::string hostname = "derp.tailscale.com";  // -hostname
    std::int64_t http_port = 80;          // -http-port (TLS mode only)
    bool stun = true;                     // -stun
    std::int64_t stun_port = 3478;        // -stun-port
    std::string mesh_psk_file;            // -mesh-psk-file
    std::string mesh_with;                // -mesh-with
    std::string bootstrap_dns_names;      // -bootstrap-dns-names
    std::string unpublished_bootstrap_dns_names;  // -unpublished-bootstrap-dns-names
    std::int64_t tcp_keepalive_time_ns = 600'000'000'000;  // -tcp-keepalive-time (10m)
    std::int64_t tcp_user_timeout_ns = 15'000'000'000;     // -tcp-user-timeout (15s)
    std::int64_t tcp_write_timeout_ns = 2'000'000'000;     // -tcp-write-timeout (2s)
    bool verify_clients = false;          // -verify-clients
    std::string socket;                   // -socket (empty: tailscaled's default path)
    std::string verify_client_url;        // -verify-client-url
    bool verify_client_url_fail_open = true;  // -verify-client-url-fail-open
    double accept_connection_limit = std::numeric_limits<double>::infinity();  // -accept-connection-limit (conns/s)
    std::int64_t accept_connection_burst = std::numeric_limits<std::int64_t>::max();  // -accept-connection-burst
    // derpd's own.
    std::int64_t drain_timeout_ns = 5'000'000'000;          // --drain-timeout: SIGTERM drains this long; 0 = stop
    std::int64_t drain_reconnect_spread_ns = 2'000'000'000; // --drain-reconnect-spread: Restarting's reconnect-in range
    bool takeover = false;                // --takeover: join a running derpd's ports (SO_REUSEPORT)
    std::int64_t verify_client_timeout_ns = 5'000'000'000;  // --verify-client-timeout (derper: 5s)
    std::int64_t verify_client_cache_ns = 10'000'000'000;   // --verify-client-cache: 0 = no cache
    std::int64_t shards = 0;              // --shards; 0 = online cores - 1, at least 1
    std::string log_level = "info";       // --log-level
    std::int64_t conns_per_shard_max = 0; // --conns-per-shard; 0 = from the open-files limit
    std::int64_t unfinished_per_shard_max = 0;  // --unfinished-per-shard; 0 = 3/4 of the slots
    std::int64_t shard_input_max = 64ll << 20;    // --shard-input-max: unconsumed input per shard, bytes
    std::int64_t shard_staging_max = 64ll << 20;  // --shard-staging-max: staged output per shard, bytes
    std::int64_t handshake_timeout_ns = 10'000'000'000;  // --handshake-timeout (spec 1.4)
    std::int64_t keepalive_interval_ns = 60'000'000'000; // --keepalive-interval (spec 2.10)
    std::string admin_addr;               // --admin-addr: operators' HTTP listener; "" = none
    bool stun_strict = false;             // --stun-strict: answer only Tailscale's requests, as derper
    std::string ktls = "auto";            // --ktls: auto, off, require
    std::int64_t tls_handshakes_per_source = 64;  // --tls-handshakes-per-source: 0 = no bound
    std::int64_t wait_min_ns = 0;         // --wait-min: batched sleeps (kernel min-wait); 0 = off
    std::int64_t wait_batch = 16;         // --wait-batch: completions that end a batched sleep
    std::int64_t recv_buffers = 32;       // --recv-buffers: per shard, 16 KiB each, a power of two
    std::int64_t cert_poll_interval_ns = 5'000'000'000;  // --cert-poll-interval: 0 = SIGHUP only
    std::int64_t memory_trim_interval_ns = 10'000'000'000;  // --memory-trim-interval: 0 = never
    std::int64_t mesh_retry_interval_ns = 5'000'000'000;    // --mesh-retry-interval (derper: 5s)
    bool pin_threads = true;              // --pin-threads: shard i on core i, admin on the last
    // -certmode letsencrypt (server/acme_client.hh).
    std::string acme_directory = "https://acme-v02.api.letsencrypt.org/directory";  // --acme-directory
    std::string acme_ca;                  // --acme-ca: PEM bundle trusted for the ACME server
    std::string acme_email;               // -acme-email (derper's)
    std::int64_t acme_timeout_ns = 30'000'000'000;          // --acme-timeout: one ACME request
    std::int64_t acme_retry_interval_ns = 60'000'000'000;   // --acme-retry-interval: first backoff
    bool letsencrypt_any_port = false;    // --letsencrypt-any-port: TLS on -a's port even if not 443
    // Per-client receive rate limit (spec 2.12).
    std::string rate_config_path;         // -rate-config (derper's): "" = no limit
    bool advertise_rate_limit = false;    // --advertise-rate-limit: put the bucket in ServerInfo
    std::int64_t cross_shard_backlog_max = 16384;  // --cross-shard-backlog: see derp_settings

    // Derived by validate().
    bool tls = false;                     // the main listener would serve TLS (spec 3.1)
    std::optional<key_mesh> mesh_key;     // from -mesh-psk-file, or TAILSCALE_DERPER_MESH_KEY in -dev
};

struct parse_outcome {
    config cfg;
    bool help = false;
    std::string usage;
};

// Parses argv (without argv[0]) and validates. Errors are one line, naming the flag.
result<parse_outcome, std::string> parse_command_line(std::span<const std::string_view> args);

// The plain-HTTP rule of spec 3.1: TLS iff the port is 443 (or "https") or certmode is manual.
bool listener_serves_tls(std::string_view listen_address, std::string_view certmode) noexcept;

}  // namespace derp::server
