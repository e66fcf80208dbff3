// ClientInfo / ServerInfo JSON with Go encoding/json semantics; see client_info.hh.
#include "core/client_info.hh"

#include <array>

#include "core/go_json.hh"

namespace derp {

namespace {

// Go decodes into an int field only from an integer literal that fits; null is a no-op.
bool assign_int(std::int64_t& field, const json_value& v) noexcept {
    if (v.kind == json_kind::null) return true;
    if (v.kind != json_kind::integer || !v.fits_int64) return false;
    field = v.int64;
    return true;
}

bool assign_bool(bool& field, const json_value& v) noexcept {
    if (v.kind == json_kind::null) return true;
    if (v.kind != json_kind::boolean) return false;
    field = v.boolean;
    return true;
}

void append_json_string(std::string& out, std::string_view s) {
    constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else if (c < 0x20 || c == '<' || c == '>' || c == '&') {
            // Go escapes control bytes and, for HTML safety, < > & as \u00XX.
            out += "\\u00";
            out += hex[c >> 4];
            out += hex[c & 0xf];
        } else if (c == 0xe2 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
                   (static_cast<unsigned char>(s[i + 2]) == 0xa8 ||
                    static_cast<unsigned char>(s[i + 2]) == 0xa9)) {
            // U+2028 and U+2029, which Go escapes for JavaScript.
            out += static_cast<unsigned char>(s[i + 2]) == 0xa8 ? "\\u2028" : "\\u2029";
            i += 2;
        } else {
            out += static_cast<char>(c);
        }
    }
    out += '"';
}

}  // namespace

std::optional<client_info> parse_client_info_json(std::string_view json) noexcept {
    static constexpr std::array<std::string_view, 5> fields = {"meshKey", "version", "CanAckPings",
                                                               "IsProber", "AppName"};
    client_info info;
    auto on_field = [&info](std::size_t field, const json_value& v) noexcept -> bool {
        switch (field) {
            case 0: {
                // key.DERPMesh: a string of 64 hex digits; null and "" are errors too.
                if (v.kind != json_kind::string) return false;
                info.mesh_key = key_mesh::from_hex(v.string);
                return info.mesh_key.has_value();
            }
            case 1: return assign_int(info.version, v);
            case 2: return assign_bool(info.can_ack_pings, v);
            case 3: return assign_bool(info.is_prober, v);
            case 4:
                if (v.kind == json_kind::null) return true;
                if (v.kind != json_kind::string) return false;
                info.app_name.assign(v.string);
                return true;
            default: return true;
        }
    };
    if (!decode_json_object(json, fields, on_field)) return std::nullopt;
    return info;
}

std::string format_client_info_json(const client_info& info) {
    std::string out = "{";
    if (info.mesh_key && !info.mesh_key->is_zero()) {
        const auto hex = info.mesh_key->hex();
        out += R"("meshKey":")";
        out.append(hex.data(), hex.size());
        out += "\",";
    }
    if (info.version != 0) {
        out += R"("version":)";
        out += std::to_string(info.version);
        out += ',';
    }
    out += info.can_ack_pings ? R"("CanAckPings":true)" : R"("CanAckPings":false)";
    if (info.is_prober) out += R"(,"IsProber":true)";
    if (!info.app_name.empty()) {
        out += R"(,"AppName":)";
        append_json_string(out, info.app_name);
    }
    out += '}';
    return out;
}

std::optional<server_info> parse_server_info_json(std::string_view json) noexcept {
    static constexpr std::array<std::string_view, 3> fields = {
        "version", "TokenBucketBytesPerSecond", "TokenBucketBytesBurst"};
    server_info info;
    auto on_field = [&info](std::size_t field, const json_value& v) noexcept -> bool {
        switch (field) {
            case 0: return assign_int(info.version, v);
            case 1: return assign_int(info.token_bucket_bytes_per_second, v);
            case 2: return assign_int(info.token_bucket_bytes_burst, v);
            default: return true;
        }
    };
    if (!decode_json_object(json, fields, on_field)) return std::nullopt;
    return info;
}

}  // namespace derp
