// Flag registration and validation for derpd (see config.hh).
#include "server/config.hh"

#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "core/flags.hh"
#include "core/mesh_with.hh"

namespace derp::server {

bool listener_serves_tls(std::string_view listen_address, std::string_view certmode) noexcept {
    const auto colon = listen_address.rfind(':');
    const std::string_view port =
        colon == std::string_view::npos ? std::string_view() : listen_address.substr(colon + 1);
    return port == "443" || port == "https" || certmode == "manual";
}

result<parse_outcome, std::string> parse_command_line(std::span<const std::string_view> args) {
    parse_outcome out;
    config& c = out.cfg;
    flag_set flags("derpd");
    flags.add_string("a", &c.listen_address,
                     "server HTTP/HTTPS listen address, in form \":port\", \"ip:port\", or for IPv6 "
                     "\"[ip]:port\". If the IP is omitted, it defaults to all interfaces. Serves "
                     "HTTPS if the port is 443 and/or -certmode is manual, otherwise HTTP.");
    flags.add_bool("dev", &c.dev,
                   "run in localhost development mode: plain HTTP on localhost:3340 with a fresh "
                   "key each start (overrides -a unless -a is given too)");
    flags.add_string("c", &c.config_path, "config file path");
    flags.add_bool("version", &c.print_version, "print version and exit");
    flags.add_bool("derp", &c.serve_derp, "whether to run a DERP server. The only reason to set this false is if you're decommissioning a server but want to keep its bootstrap DNS functionality still running.");
    flags.add_string("certmode", &c.certmode, "mode for getting a cert. possible options: manual, letsencrypt");
    flags.add_string("certdir", &c.certdir, "directory to store LetsEncrypt certs, if addr's port is :443");
    flags.add_string("hostname", &c.hostname, "LetsEncrypt host name, if addr's port is :443. When --certmode=manual, this can be an IP address to avoid SNI checks");
    flags.add_int("http-port", &c.http_port, "The port on which to serve HTTP. Set to -1 to disable. The listener is bound to the same IP (if any) as specified in the -a flag.");
    flags.add_bool("stun", &c.stun, "whether to run a STUN server. It will bind to the same IP (if any) as the --addr flag value.");
    flags.add_int("stun-port", &c.stun_port, "The UDP port on which to serve STUN. The listener is bound to the same IP (if any) as specified in the -a flag.");
    flags.add_string("mesh-psk-file", &c.mesh_psk_file, "if non-empty, path to file containing the mesh pre-shared key file. It should contain some hex string; whitespace is trimmed.");
    flags.add_string("mesh-with", &c.mesh_with, "optional comma-separated list of hostnames to mesh with; the server's own hostname can be in the list. If an entry contains a slash, the second part names a hostname to be used when dialing the target.");
    flags.add_string("bootstrap-dns-names", &c.bootstrap_dns_names, "optional comma-separated list of hostnames to make available at /bootstrap-dns");
    flags.add_string("unpublished-bootstrap-dns-names", &c.unpublished_bootstrap_dns_names, "like --bootstrap-dns-names but not published in the main JSON; each may be name/txtname, whose TXT record gives the percentage of clients that get it");
    flags.add_duration("tcp-keepalive-time", &c.tcp_keepalive_time_ns, "TCP keepalive time");
    flags.add_duration("tcp-user-timeout", &c.tcp_user_timeout_ns, "TCP user timeout");
    flags.add_duration("tcp-write-timeout", &c.tcp_write_timeout_ns, "TCP write timeout; 0 results in no timeout being set on writes");
    flags.add_bool("verify-clients", &c.verify_clients, "verify clients to this DERP server through a local tailscaled instance.");
    flags.add_string("socket", &c.socket, "optional alternate path to tailscaled socket (only relevant when using --verify-clients)");
    flags.add_string("verify-client-url", &c.verify_client_url, "if non-empty, an admission controller URL for permitting client connections; see tailcfg.DERPAdmitClientRequest");
    flags.add_bool("verify-client-url-fail-open", &c.verify_client_url_fail_open, "whether we fail open if --verify-client-url is unreachable");
    flags.add_float("accept-connection-limit", &c.accept_connection_limit, "rate limit for accepting new connections (per second, shared by every DERP listener; derpd resets the excess at once and keeps running)");
    flags.add_int("accept-connection-burst", &c.accept_connection_burst, "burst limit for accepting new connections");
    flags.add_duration("drain-timeout", &c.drain_timeout_ns, "derpd: on SIGTERM/SIGINT, stop accepting, send every client Restarting, keep relaying until they leave or this long has passed, then stop (a second signal stops at once); 0 = stop at once, as derper");
    flags.add_duration("drain-reconnect-spread", &c.drain_reconnect_spread_ns, "derpd: each client's Restarting frame asks it to reconnect after a random delay below this, so that a node's clients do not all come back at once");
    flags.add_bool("takeover", &c.takeover, "derpd: start beside a running derpd on the same ports (SO_REUSEPORT) instead of refusing them as in use: start the new one with -takeover, then send the old one SIGTERM to drain it (a restart without a gap)");
    flags.add_duration("verify-client-timeout", &c.verify_client_timeout_ns, "derpd: deadline for one admission request to tailscaled or the controller, connect to last byte (derper: 5s)");
    flags.add_duration("verify-client-cache", &c.verify_client_cache_ns, "derpd: how long an admission answer (allow or deny, not an error) is reused for the same key and address; 0 = ask every time");
    flags.add_int("shards", &c.shards, "derpd: shard threads, one io_uring each (0 = online cores minus one, at least 1)");
    flags.add_string("log-level", &c.log_level, "derpd: debug, info, warn or error");
    flags.add_int("conns-per-shard", &c.conns_per_shard_max, "derpd: connection slots per shard (0 = share the open-files limit among the shards)");
    flags.add_int("shard-input-max", &c.shard_input_max, "derpd: bytes of unconsumed input (partial frames, request heads) all of a shard's connections may hold together; past it the connections whose input has waited longest are closed");
    flags.add_int("shard-staging-max", &c.shard_staging_max, "derpd: bytes of output all of a shard's clients may stage together beyond their 32-deep queues (slow readers); past it a full queue drops its oldest packet instead");
    flags.add_int("unfinished-per-shard", &c.unfinished_per_shard_max, "derpd: connections per shard that may be unfinished at once (before their DERP handshake completes: HTTP, TLS, ClientInfo, admission); one more closes the oldest, so slow or silent connections cannot take the slots real clients need (0 = three quarters of -conns-per-shard: a reconnect storm's handshakes fit beside the clients already there)");

    flags.add_string("admin-addr", &c.admin_addr, "derpd: serve /debug/varz (also as /metrics), /debug/check and /debug/ on this address from the admin thread, to any client that reaches it; \":port\" means loopback only");
    flags.add_bool("stun-strict", &c.stun_strict, "derpd: answer only Tailscale-style STUN requests (SOFTWARE tailnode + FINGERPRINT), as derper does; by default ordinary RFC 5389 Binding requests are answered too");
    flags.add_duration("handshake-timeout", &c.handshake_timeout_ns, "derpd: time a client has for ClientInfo after the upgrade (derper: 10s); the request head gets 3x this (Go: 30s)");
    flags.add_duration("keepalive-interval", &c.keepalive_interval_ns, "derpd: KeepAlive period; each connection adds a jitter of up to 1/12 of it (derper: 60s + [0,5s))");

    flags.add_string("ktls", &c.ktls, "derpd: kernel TLS offload after the handshake: auto (where the kernel has it), off, or require (refuse to start without it, close connections that cannot use it)");
    flags.add_int("tls-handshakes-per-source", &c.tls_handshakes_per_source, "derpd: TLS handshakes one source address (IPv4, or an IPv6 /64) may run at once on a shard, of the shard's 512; more wait their turn, so that peers stalling after their ClientHello cannot take every place (0 = no bound; behind a proxy that hides client addresses, 0)");
    flags.add_duration("wait-min", &c.wait_min_ns, "derpd: a shard that sleeps waits for -wait-batch completions, or this long once one is there, before it wakes (one wake-up per batch instead of one per completion; costs up to this much latency per hop; needs Linux 6.13+; 0 = wake at the first completion)");
    flags.add_int("wait-batch", &c.wait_batch, "derpd: with -wait-min, the completions that end a shard's sleep at once (1..4096)");
    flags.add_int("recv-buffers", &c.recv_buffers, "derpd: receive buffers (16 KiB each) per shard, a power of two from 8 to 4096; they bound what one loop turn reads, which keeps an overloaded shard sending instead of reading what it would drop");
    flags.add_duration("memory-trim-interval", &c.memory_trim_interval_ns, "derpd: how often freed heap memory is returned to the kernel (malloc_trim); a burst of TLS handshakes frees tens of KiB per connection that RSS would otherwise keep; 0 = never");
    flags.add_bool("pin-threads", &c.pin_threads, "derpd: pin shard i to core i and the admin thread to the last core; false leaves placement to the kernel (several derpd on one machine, a CPU set from taskset or systemd's CPUAffinity)");
    flags.add_duration("mesh-retry-interval", &c.mesh_retry_interval_ns, "derpd: how long a mesh link waits before dialling again after a failure (derper: 5s); up to 1s of jitter is added");
    flags.add_duration("cert-poll-interval", &c.cert_poll_interval_ns, "derpd: how often -certmode manual checks the certificate files for changes and reloads them (SIGHUP reloads at once); 0 = only on SIGHUP");

    flags.add_string("acme-email", &c.acme_email, "optional email address for the ACME account (the CA may write about expiring certificates)");
    flags.add_string("acme-directory", &c.acme_directory, "derpd: the ACME server's directory URL for -certmode letsencrypt (a private ACME CA, or Let's Encrypt's staging server)");
    flags.add_string("acme-ca", &c.acme_ca, "derpd: PEM file of the CA certificates to trust for the ACME server's own HTTPS (default: the system trust store)");
    flags.add_duration("acme-timeout", &c.acme_timeout_ns, "derpd: deadline for one request to the ACME server, connect to last byte");
    flags.add_duration("acme-retry-interval", &c.acme_retry_interval_ns, "derpd: wait after a failed ACME order, doubled after each further failure up to 30m (derper: 1m)");
    flags.add_bool("letsencrypt-any-port", &c.letsencrypt_any_port, "derpd: with -certmode letsencrypt, serve TLS on the -a port even when it is not 443 (behind a port forward from 443); derper serves plain HTTP there");

    flags.add_string("rate-config", &c.rate_config_path, "file containing per-client rate limit configuration (JSON: PerClientRateLimitBytesPerSec, PerClientRateBurstBytes); re-read on SIGHUP. Reading from a client beyond its rate is delayed, never dropped; mesh peers are exempt");
    flags.add_bool("advertise-rate-limit", &c.advertise_rate_limit, "derpd: with -rate-config, tell clients the limit in ServerInfo (TokenBucketBytesPerSecond/Burst; derper never does). Caution: a Go client that is told silently DROPS its own sends beyond that bucket instead of waiting, so only advertise a limit the clients' real traffic fits");
    flags.add_int("cross-shard-backlog", &c.cross_shard_backlog_max, "derpd: messages a shard keeps waiting for another shard's full ring before it refuses new registrations, ClosePeer and repeated WatchConns (counted in derpd_control_backlog_refused_total)");

    auto parsed = flags.parse(args);
    if (!parsed) return unexpected(parsed.error());
    if (parsed->help_requested) {
        out.help = true;
        out.usage = flags.usage();
        return out;
    }
    if (!parsed->positional.empty())
        return unexpected(fmt::format("unexpected argument \"{}\" (derpd takes only flags)",
                                      parsed->positional.front()));

    if (c.dev && !flags.was_set("a")) c.listen_address = "localhost:3340";
    if (c.shards < 0 || c.shards > 1023)
        return unexpected(fmt::format("invalid value {} for flag -shards: want 0..1023", c.shards));
    if (c.shard_input_max < 1 << 20 || c.shard_staging_max < 1 << 20)
        return unexpected(std::string("invalid value for flag -shard-input-max or -shard-staging-max: at least 1048576 bytes"));
    if (c.unfinished_per_shard_max < 0 || c.unfinished_per_shard_max > 1'000'000)
        return unexpected(fmt::format("invalid value {} for flag -unfinished-per-shard: want 0..1000000", c.unfinished_per_shard_max));
    if (c.conns_per_shard_max < 0 || c.conns_per_shard_max > 1'000'000)
        return unexpected(fmt::format("invalid value {} for flag -conns-per-shard: want 0..1000000",
                                      c.conns_per_shard_max));
    if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warn" && c.log_level != "error")
        return unexpected(fmt::format("invalid value \"{}\" for flag -log-level: want debug, info, warn or error",
                                      c.log_level));
    if (c.certmode != "letsencrypt" && c.certmode != "manual" && c.certmode != "gcp")
        return unexpected(fmt::format("invalid value \"{}\" for flag -certmode: want manual or letsencrypt",
                                      c.certmode));
    if (c.ktls != "auto" && c.ktls != "off" && c.ktls != "require")
        return unexpected(fmt::format("invalid value \"{}\" for flag -ktls: want auto, off or require", c.ktls));
    if (c.tls_handshakes_per_source < 0 || c.tls_handshakes_per_source > 512)
        return unexpected(fmt::format("invalid value {} for flag -tls-handshakes-per-source: want 0..512", c.tls_handshakes_per_source));
    if (c.wait_min_ns < 0 || c.wait_min_ns > 1'000'000'000)
        return unexpected(fmt::format("invalid value {} for flag -wait-min: want 0 to 1s", format_go_duration(c.wait_min_ns)));
    if (c.wait_batch < 1 || c.wait_batch > 4096)
        return unexpected(fmt::format("invalid value {} for flag -wait-batch: want 1..4096", c.wait_batch));
    if (c.recv_buffers < 8 || c.recv_buffers > 4096 || (c.recv_buffers & (c.recv_buffers - 1)) != 0)
        return unexpected(fmt::format("invalid value {} for flag -recv-buffers: want a power of two from 8 to 4096", c.recv_buffers));
    if (std::isnan(c.accept_connection_limit) || c.accept_connection_limit <= 0)
        return unexpected(fmt::format("invalid value {} for flag -accept-connection-limit: want a positive rate per second (or +Inf)",
                                      c.accept_connection_limit));
    if (c.accept_connection_burst < 1)
        return unexpected(fmt::format("invalid value {} for flag -accept-connection-burst: want at least 1", c.accept_connection_burst));
    if (c.drain_timeout_ns < 0 || c.drain_reconnect_spread_ns < 0)
        return unexpected(std::string("invalid negative duration for flag -drain-timeout or -drain-reconnect-spread"));
    if (c.memory_trim_interval_ns < 0)
        return unexpected(std::string("invalid negative duration for flag -memory-trim-interval"));
    if (c.cert_poll_interval_ns < 0)
        return unexpected(std::string("invalid negative duration for flag -cert-poll-interval"));
    if (c.stun_port < 0 || c.stun_port > 65535)
        return unexpected(fmt::format("invalid value {} for flag -stun-port", c.stun_port));
    if (c.http_port < -1 || c.http_port > 65535)
        return unexpected(fmt::format("invalid value {} for flag -http-port", c.http_port));
    if (auto mesh = parse_mesh_with(c.mesh_with); !mesh) return unexpected(mesh.error());
    if (c.mesh_retry_interval_ns < 100'000'000)
        return unexpected(std::string("invalid value for flag -mesh-retry-interval: at least 100ms"));
    if (c.handshake_timeout_ns <= 0)
        return unexpected(std::string("invalid value for flag -handshake-timeout: must be positive"));
    if (c.keepalive_interval_ns < 1'000'000'000)
        return unexpected(std::string("invalid value for flag -keepalive-interval: at least 1s"));
    for (auto [name, value] : {std::pair{"tcp-write-timeout", c.tcp_write_timeout_ns},
                               std::pair{"tcp-user-timeout", c.tcp_user_timeout_ns},
                               std::pair{"tcp-keepalive-time", c.tcp_keepalive_time_ns}})
        if (value < 0) return unexpected(fmt::format("invalid negative duration for flag -{}", name));
    if (c.verify_client_timeout_ns < 1'000'000 || c.verify_client_timeout_ns > 60'000'000'000)
        return unexpected(std::string("invalid value for flag -verify-client-timeout: want 1ms to 60s"));
    if (c.verify_client_cache_ns < 0)
        return unexpected(std::string("invalid negative duration for flag -verify-client-cache"));
    if (c.acme_timeout_ns < 1'000'000'000)
        return unexpected(std::string("invalid value for flag -acme-timeout: at least 1s"));
    if (c.acme_retry_interval_ns < 1'000'000'000)
        return unexpected(std::string("invalid value for flag -acme-retry-interval: at least 1s"));
    if (c.advertise_rate_limit && c.rate_config_path.empty())
        return unexpected(std::string("flag -advertise-rate-limit needs -rate-config (there is no limit to advertise)"));
    if (c.cross_shard_backlog_max < 1 || c.cross_shard_backlog_max > 1'000'000'000)
        return unexpected(fmt::format("invalid value {} for flag -cross-shard-backlog: want 1..1000000000",
                                      c.cross_shard_backlog_max));
    c.tls = listener_serves_tls(c.listen_address, c.certmode) || (c.letsencrypt_any_port && c.certmode == "letsencrypt");
    return out;
}

}  // namespace derp::server
