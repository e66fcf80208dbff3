// The JSON documents inside the handshake boxes (spec 1.6, 1.7): ClientInfo, decoded with Go
// encoding/json rules and encoded the way the Go client does, and ServerInfo. The boxes
// themselves are crypto/box.hh; the handshake that carries them is core/handshake.hh.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/key.hh"

namespace derp {

struct client_info {
    std::optional<key_mesh> mesh_key;  // "meshKey": present and well-formed (may be all zero)
    std::int64_t version = 0;          // "version": not checked by the server
    bool can_ack_pings = false;        // "CanAckPings"
    bool is_prober = false;            // "IsProber": PeerPresent flag 0x04
    std::string app_name;              // "AppName": an opaque stats label
};

// nullopt where Go's json.Unmarshal into derp.ClientInfo fails: syntax errors, trailing data,
// a non-object, wrong value types ("version" must be an integer literal that fits int64, the
// flags booleans, AppName a string; null leaves a field alone), and a "meshKey" that is not a
// string of exactly 64 hex digits (null and "" included). Unknown keys are ignored.
std::optional<client_info> parse_client_info_json(std::string_view json) noexcept;

// What the Go client sends: meshKey (if set and non-zero), version (if non-zero), CanAckPings
// (always), IsProber (if true), AppName (if non-empty, escaped like Go's encoding/json).
std::string format_client_info_json(const client_info& info);

// The ServerInfo this server sends: exactly these 13 bytes (no token-bucket fields).
inline constexpr std::string_view server_info_json = R"({"version":2})";

struct server_info {
    std::int64_t version = 0;
    std::int64_t token_bucket_bytes_per_second = 0;  // advisory; 0 = none
    std::int64_t token_bucket_bytes_burst = 0;
};
std::optional<server_info> parse_server_info_json(std::string_view json) noexcept;

}  // namespace derp
