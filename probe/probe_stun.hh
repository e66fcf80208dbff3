// derpprobe's udp probes (spec 8.1 and 6, `derp/<region>/<node>/udp` and `.../udp6`): one
// Tailscale-style STUN Binding request to the node's IPv4 or IPv6 address at STUNPort|3478,
// re-sent every 2 s until the probe's deadline, answered by a success response for our
// transaction id.
#pragma once

#include "probe/probe_common.hh"
#include "probe/probe_map.hh"

namespace derp::probe {

// family: AF_INET (the node's IPv4) or AF_INET6 (its IPv6); the field must be an address.
outcome probe_stun(const derp_node& node, int family, const run_context& ctx);

}  // namespace derp::probe
