// /bootstrap-dns (spec 3.5): the pure parts. derper answers clients that cannot resolve DNS
// with addresses it resolved itself: the published map as Go's indented JSON, and, for
// unpublished names, a per-client rollout decision from a TXT percentage. Resolving is the
// server's (server/bootstrap_dns); this module formats and decides.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/frame.hh"

namespace derp {

// name -> addresses, in the order they should be written.
using dns_map = std::map<std::string, std::vector<std::string>>;

// json.MarshalIndent(map, "", "\t"): keys sorted, tab indentation, no trailing newline.
std::string format_bootstrap_json(const dns_map& names);

// A `-unpublished-bootstrap-dns-names` entry: "name" (100 %) or "name/txtname" (percentage
// from txtname's TXT record).
struct unpublished_name {
    std::string name;
    std::string txt_name;  // empty: 100 %
};
std::vector<unpublished_name> parse_unpublished_names(std::string_view flag_value);
std::vector<std::string> parse_name_list(std::string_view flag_value);  // comma-separated, trimmed

// A TXT record's text as a rollout percentage: an integer 0..100; anything else is 0.
int parse_rollout_percent(std::string_view txt) noexcept;

// Whether a client gets an unpublished name (spec 3.5): 0 % never, 100 % always, loopback
// clients by coin flip (`coin` in [0,1)), others stably by their address. derper draws from
// Go's PCG seeded with the address; derpd uses its own stable hash of the address, so the same
// client always gets the same answer, but not necessarily the same one derper would give.
bool rollout_selects(int percent, const ip16& client, bool loopback, double coin) noexcept;

}  // namespace derp
