// The DERP map derpprobe reads (spec 9.4): Tailscale's tailcfg.DERPMap JSON decoded with Go's
// encoding/json rules (field names match case-insensitively, unknown fields are ignored, null
// leaves the zero value, a number where a string belongs is an error), and the few checks
// derpprobe needs before it can name probes after nodes. Fetching (https://, the local
// tailscaled) is probe_fetch's; this file only decides where the text comes from.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"
#include "probe/probe_fetch.hh"

namespace derp::probe {

struct derp_node {
    std::string name;        // unique in the map, e.g. "1b"; not a hostname
    std::int64_t region_id = 0;
    std::string host_name;   // TLS SNI and verification name; DNS when no IP is given
    std::string cert_name;   // "" (verify host_name), "sha256-raw:<hex>" (pin), or another name
    std::string ipv4;        // "" = DNS, an IPv4 literal, or anything else = IPv4 disabled
    std::string ipv6;        // likewise for IPv6
    std::int64_t stun_port = 0;  // 0 = 3478, -1 = no STUN
    bool stun_only = false;
    std::int64_t derp_port = 0;  // 0 = 443
    bool insecure_for_tests = false;
};

struct derp_region {
    std::int64_t region_id = 0;
    std::string region_code;
    std::string region_name;
    std::vector<derp_node> nodes;  // priority order, as in the map
};

struct derp_map {
    std::vector<derp_region> regions;  // by RegionID
};

// Decodes a DERPMap JSON document. Errors say where: "region 900 node 1: STUNPort: ...".
result<derp_map, std::string> parse_derp_map(std::string_view json_text);

// Reads -derp-map: a file path, a file:// URL, an https:// URL, or "local" (the local
// tailscaled's map). http:// is refused with a message that says what to do instead.
result<derp_map, std::string> load_derp_map(const std::string& source, const map_fetch_options& fetch = {});

// The regions -region-code selects (a RegionCode, or a RegionID in decimal; "" = all), with
// derpprobe's rule that a node name names one node in the whole probed map. An empty selection
// is an error (a typo in -region-code must not look like a healthy fleet).
result<std::vector<derp_region>, std::string> select_regions(const derp_map& map, const std::string& region_code);

}  // namespace derp::probe
