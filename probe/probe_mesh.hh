// derpprobe's mesh probe (spec 8.1, `derp/<region>/<from>/<to>/mesh`): two DERP clients of the
// project's client library with fresh keys, IsProber set and the mesh key if one is configured,
// one to each node (both to the same node when from == to). Each must complete the handshake
// with ServerInfo as its first message; then 8 random bytes go from -> to and must arrive as a
// RecvPacket from the sender's key. For from != to that only works when the two nodes are meshed
// (spec 5), which is what the probe is for.
#pragma once

#include <optional>
#include <string>

#include "probe/probe_common.hh"
#include "probe/probe_map.hh"
#include "core/key.hh"

namespace derp::probe {

struct mesh_settings {
    std::string ca_file;               // -ca-file, for nodes verified by chain
    std::optional<key_mesh> mesh_key;  // -mesh-psk-file
};

outcome probe_mesh(const derp_node& from, const derp_node& to, const mesh_settings& settings, const run_context& ctx);

}  // namespace derp::probe
