// Where derpprobe's DERP map comes from when it is not a file: an https:// URL (fetched with
// crypto/https_client, verified like every other tool's TLS: the system store, or -ca-file), or
// "local", the local tailscaled's current map from its LocalAPI (GET /localapi/v0/derpmap over
// its Unix socket, as Tailscale's derpprobe asks it). Blocking with a deadline: it runs on a
// probe worker, never on a client runtime. Not here: http:// URLs (unverified maps are refused).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/result.hh"

namespace derp::probe {

inline constexpr const char* default_tailscaled_socket = "/var/run/tailscale/tailscaled.sock";

struct map_fetch_options {
    std::string ca_file;  // -ca-file: trust these CAs for https:// instead of the system store
    std::string socket_path = default_tailscaled_socket;  // -socket: tailscaled's LocalAPI
    std::int64_t timeout_ns = 30'000'000'000;  // one fetch, connect to last byte
    std::size_t body_bytes_max = 16u << 20;
};

// The 200 body of GET url (https:// only); errors name the step and, for another status, it.
result<std::string, std::string> fetch_https_text(const std::string& url, const map_fetch_options& options);
// The 200 body of GET target from tailscaled's LocalAPI at options.socket_path.
result<std::string, std::string> fetch_localapi_text(const std::string& target, const map_fetch_options& options);

}  // namespace derp::probe
