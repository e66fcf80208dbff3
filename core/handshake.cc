// The server-side DERP handshake state machine; see handshake.hh.
#include "core/handshake.hh"

#include <vector>

#include "core/assert.hh"

namespace derp {

server_handshake::server_handshake(const node_key& server_public, std::optional<key_mesh> mesh_key,
                                   handshake_box& box) noexcept
    : _server_public(server_public), _mesh_key(mesh_key), _box(box) {}

std::size_t server_handshake::start(std::span<std::uint8_t> out, bool fast_start) noexcept {
    DERP_ASSERT(_state == state::created);
    DERP_ASSERT(out.size() >= handshake_start_bytes_max);
    std::size_t at = 0;
    if (!fast_start) at += encode_derp_101(out, _server_public);
    at += encode_server_key(out.subspan(at), _server_public);
    _state = state::awaiting_client_info;
    return at;
}

handshake_step server_handshake::feed(std::span<const std::uint8_t> in) noexcept {
    DERP_ASSERT(_state == state::awaiting_client_info);
    auto close = [this](close_reason reason) noexcept -> handshake_step {
        _state = state::finished;
        return handshake_close{reason};
    };

    // derper reads the header and judges type and length before it reads the payload.
    const auto header = parse_frame_header(in);
    if (!header) return handshake_need_more{frame_header_bytes};
    if (header->type != frame_type::client_info) return close(close_reason::bad_frame_type);
    if (header->payload_bytes < client_info_payload_bytes_min) {
        return close(close_reason::client_info_too_short);
    }
    if (header->payload_bytes > client_info_payload_bytes_max) {
        return close(close_reason::client_info_too_long);
    }
    const frame_parse frame = parse_frame(in, client_info_payload_bytes_max);
    if (frame.status == frame_parse_status::need_more) return handshake_need_more{frame.frame_bytes};
    DERP_ASSERT(frame.status == frame_parse_status::complete);

    const auto view = decode_client_info(frame.payload);
    DERP_ASSERT(view.has_value());  // the length was checked above
    if (view->key.is_zero()) return close(close_reason::client_key_zero);
    if (view->sealed.size() < box_overhead_bytes) return close(close_reason::client_info_box_open);

    // At most 256 KiB - 72 bytes, once per connection: a heap buffer is fine here.
    std::vector<std::uint8_t> plaintext(view->sealed.size() - box_overhead_bytes);
    if (!_box.open_from(view->key, view->sealed, plaintext)) {
        return close(close_reason::client_info_box_open);
    }
    const std::string_view json(reinterpret_cast<const char*>(plaintext.data()), plaintext.size());
    auto info = parse_client_info_json(json);
    if (!info) return close(close_reason::client_info_bad_json);

    const bool can_mesh = _mesh_key && !_mesh_key->is_zero() && info->mesh_key &&
                          _mesh_key->equals(*info->mesh_key);

    handshake_accepted accepted{view->key, std::move(*info), can_mesh, frame.frame_bytes, {}};
    std::array<std::uint8_t, box_overhead_bytes + server_info_json.size()> sealed{};
    const auto* json_bytes = reinterpret_cast<const std::uint8_t*>(server_info_json.data());
    if (!_box.seal_to(view->key, std::span<const std::uint8_t>(json_bytes, server_info_json.size()),
                      sealed)) {
        // Unreachable after the box opened with this key; treated like a failed open.
        return close(close_reason::client_info_box_open);
    }
    const std::size_t n = encode_server_info(accepted.server_info_frame, sealed);
    DERP_ASSERT(n == server_info_frame_bytes_v2);
    _state = state::finished;
    return accepted;
}

}  // namespace derp
