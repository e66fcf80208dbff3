// derpprobe's tls probe (spec 8.1, `derp/<region>/<node>/tls`) and the TLS policy a node's map
// entry implies, which the mesh probe's DERP clients share. The policy follows the Tailscale
// client (spec 9.1 step 3, 4.2): InsecureForTests skips verification; CertName
// "sha256-raw:<hex>" pins the certificate that signed the handshake (that SHA-256, valid for
// HostName, nothing beside it but derper's meta certificate: tls::check_pinned_chain); another
// CertName is the name to verify; otherwise the chain is verified for HostName against the
// system store or -ca-file.
#pragma once

#include <optional>
#include <string>

#include "probe/probe_common.hh"
#include "probe/probe_map.hh"
#include "core/result.hh"
#include "crypto/tls.hh"

namespace derp::probe {

// Certificates that expire sooner than this fail the tls probe (derpprobe's expiresSoon).
inline constexpr std::int64_t cert_expiry_warning_secs = 7 * 24 * 3600;

enum class tls_verify : std::uint8_t { chain, pinned, insecure };

struct tls_policy {
    tls_verify verify = tls_verify::chain;
    std::string sni;          // HostName; not sent when it is an IP literal (as Go)
    std::string verify_name;  // CertName when it names a host, else HostName
    tls::context::client_options options;  // for tls::context::make_client
};

result<tls_policy, std::string> tls_policy_for(const derp_node& node, const std::string& ca_file);

// TLS dial HostName:DERPPort|443 (at the node's addresses), verify per the policy, then check
// every certificate but derper's meta certificate and self-signed non-leaf ones: valid now and
// for at least 7 more days. Revocation (derpprobe fetches the leaf's CRL) is not checked.
outcome probe_tls(const derp_node& node, const std::string& ca_file, const run_context& ctx);

// Why a TLS connection to the node fails (connect, handshake, verification, pin), or nothing
// when it succeeds: the mesh probe asks when its client's connection died before ServerInfo,
// since the client library only sees the close.
std::optional<std::string> tls_handshake_problem(const derp_node& node, const std::string& ca_file,
                                                 const run_context& ctx);

}  // namespace derp::probe
