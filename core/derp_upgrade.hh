// The /derp HTTP upgrade decision (spec 3.3, 3.4) and derper's exact response bytes: the 101
// that precedes ServerKey and the 426 for requests without a usable Upgrade header. Pure: the
// Date header comes from a caller-supplied Unix time. Not here: routing other paths, the
// WebSocket handshake itself, the DERP handshake that follows (core/handshake.hh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "core/http_request.hh"
#include "core/key.hh"

namespace derp {

enum class upgrade_kind : std::uint8_t {
    none,       // no accepted Upgrade value: answer 426
    derp,       // raw DERP over this connection ("derp", or "websocket" without the subprotocol)
    websocket,  // RFC 6455 with subprotocol "derp": DERP inside binary messages
};

struct derp_upgrade {
    upgrade_kind kind = upgrade_kind::none;
    bool fast_start = false;  // Derp-Fast-Start is exactly "1": no 101, ServerKey comes first
    bool not_ideal = false;   // a non-empty Ideal-Node header: PeerPresent flag 0x08
    // derper logs `Weird upgrade: "<v>"` (lowercased) when Upgrade is non-empty and not
    // accepted; this is the value as sent, empty otherwise.
    std::string_view weird_upgrade;
};

// derper's handler: only the first Upgrade value is inspected, case-insensitively. Method and
// Connection are not checked. WebSocket needs Sec-WebSocket-Protocol to contain "derp"
// (case-sensitive substring, as Go's strings.Contains).
derp_upgrade classify_derp_upgrade(const http_request& request) noexcept;

// HTTP/1.1 101 Switching Protocols\r\n
// Upgrade: DERP\r\n
// Connection: Upgrade\r\n
// Derp-Version: 2\r\n
// Derp-Public-Key: <64 lowercase hex>\r\n
// \r\n
inline constexpr std::size_t derp_101_response_bytes = 172;
std::size_t encode_derp_101(std::span<std::uint8_t> out, const node_key& server) noexcept;

// Go http.Error(w, "DERP requires connection upgrade", 426) on HTTP/1.1:
// HTTP/1.1 426 Upgrade Required\r\n
// Content-Type: text/plain; charset=utf-8\r\n
// X-Content-Type-Options: nosniff\r\n
// Date: <IMF-fixdate>\r\n
// Content-Length: 33\r\n
// \r\n
// DERP requires connection upgrade\n
inline constexpr std::size_t derp_426_response_bytes = 197;
std::size_t encode_derp_426(std::span<std::uint8_t> out, std::int64_t unix_seconds) noexcept;

}  // namespace derp
