// derper's -mesh-with list (spec 4, 5): which nodes of the region this one dials, and how. Pure:
// text in, entries or a one-line error out.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"

namespace derp {

// One entry: `host`, `host:port`, or either followed by `/dialhost`. `host` as written (port
// included) is what the mesh client sends as Host and, like derper v1.36's clients, as SNI;
// the certificate is verified against `verify_name` (the host without its port). The TCP
// connection goes to `dial_host` (`host` without port unless `/dialhost` was given) at `port`.
struct mesh_entry {
    std::string host;         // as written before any '/': "derp2.example.com:8443"
    std::string verify_name;  // host without the port (brackets of an IPv6 literal removed)
    std::string dial_host;    // the name or address to connect to
    std::uint16_t port = 443;
    friend bool operator==(const mesh_entry&, const mesh_entry&) = default;
};

// Parses the comma-separated list (spaces around entries are ignored, empty entries skipped).
// Entries naming the same host twice are an error: each peer is one forwarder.
result<std::vector<mesh_entry>, std::string> parse_mesh_with(std::string_view list);

}  // namespace derp
