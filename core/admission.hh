// Client admission's wire formats (spec 2.11): the JSON derper POSTs to -verify-client-url and
// the answer it obeys, the URL itself, and the check of a tailscaled LocalAPI whois answer
// (-verify-clients). Pure: bytes in, verdict out. The requests themselves are made by
// server/admission.cc on a thread of its own, never a shard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/key.hh"

namespace derp {

// derper reads the first 4 KiB of the controller's answer (io.LimitReader) and decodes that.
inline constexpr std::size_t admission_answer_bytes_max = 4 * 1024;

// {"NodePublic":"nodekey:<64 hex>","Source":"<client IP>"} (tailcfg.DERPAdmitClientRequest).
std::string admission_request_json(const node_key& key, std::string_view source_ip);

enum class admission_answer : std::uint8_t {
    allow,    // {"Allow": true}
    deny,     // {"Allow": false}, null, or an object without Allow
    invalid,  // not a JSON object, or Allow not a boolean: derper rejects (decode error)
};
// The controller's 200 body, already cut to admission_answer_bytes_max. Keys match Go's way
// (case-insensitive), unknown keys are ignored.
admission_answer parse_admission_answer(std::string_view body) noexcept;

// A 200 answer of /localapi/v0/whois decodes as tailscaled's apitype.WhoIsResponse: a JSON
// object (or null) whose Node, UserProfile and CapMap, when present, are objects or null.
// derper admits on any answer that decodes; this says whether it does.
bool whois_answer_valid(std::string_view body) noexcept;

// The node's own key in a 200 answer of /localapi/v0/status?peers=false (ipnstate.Status):
// Self.PublicKey, "nodekey:<64 hex>" as key.NodePublic marshals it; keys matched as Go matches
// them. Nothing when the body does not decode that way (derper's self-check then fails).
std::optional<node_key> status_self_key(std::string_view body) noexcept;

// An http:// URL split for a request: host (brackets removed from an IPv6 literal), port
// (80 unless given) and the request target (path and query, "/" when empty).
struct http_url {
    bool tls = false;  // https://
    std::string host;
    std::uint16_t port = 80;  // 443 for https:// unless given
    std::string target;
};
// Nothing for anything but a well-formed http:// or https:// URL (user info, a bad port, ...).
std::optional<http_url> parse_http_url(std::string_view url);

}  // namespace derp
