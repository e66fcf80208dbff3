// How derpprobe reaches a DERP node (spec 9.1 step 2, as Tailscale clients do): the node's IPv4
// and IPv6 fields when they hold addresses of their family (IPv4 first), DNS of HostName for an
// empty field when the map gives no address, and nothing for a field set to anything else
// ("none"). Plus a blocking TCP connect bounded by the probe's deadline, whose errors name the
// address and the errno.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "probe/probe_common.hh"
#include "probe/probe_map.hh"
#include "core/result.hh"
#include "ring/listen.hh"

namespace derp::probe {

// Where to dial `port` on `node`, in the order to try. An error when both families are
// disabled or DNS has no answer for the enabled ones.
result<std::vector<ring::socket_address>, std::string> node_addresses(const derp_node& node, std::uint16_t port);

// A literal IPv4 (family AF_INET) or IPv6 (AF_INET6) address; nothing for other text.
bool parse_ip_literal(const std::string& text, int family, ring::socket_address& out, std::uint16_t port);

// Connects a non-blocking TCP socket to one of the addresses (in order) before the deadline.
// Returns the connected socket (still non-blocking) or the error of the last attempt.
result<int, std::string> connect_tcp(const std::vector<ring::socket_address>& addresses, const run_context& ctx);

// Waits until fd is readable (want_write false) or writable; false at the deadline or stop.
bool wait_fd(int fd, bool want_write, const run_context& ctx);

// "12.345ms": a latency as Go prints a Duration, rounded to microseconds.
std::string format_latency(std::int64_t duration_ns);

// Whether the text is an IPv4 or IPv6 literal (TLS: no SNI, verify the IP SAN).
bool is_ip_literal(const std::string& text);

}  // namespace derp::probe
