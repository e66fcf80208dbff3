// DERP frame parsing, derper's length rules and frame encoders; see frame.hh.
#include "core/frame.hh"

#include <algorithm>
#include <cstring>

#include "core/assert.hh"

namespace derp {

namespace {

std::uint32_t load_u32_be(const std::uint8_t* p) noexcept {
    return (static_cast<std::uint32_t>(p[0]) << 24) | (static_cast<std::uint32_t>(p[1]) << 16) |
           (static_cast<std::uint32_t>(p[2]) << 8) | static_cast<std::uint32_t>(p[3]);
}

void store_u32_be(std::uint8_t* p, std::uint32_t v) noexcept {
    p[0] = static_cast<std::uint8_t>(v >> 24);
    p[1] = static_cast<std::uint8_t>(v >> 16);
    p[2] = static_cast<std::uint8_t>(v >> 8);
    p[3] = static_cast<std::uint8_t>(v);
}

node_key key_at(std::span<const std::uint8_t> payload, std::size_t offset) noexcept {
    DERP_ASSERT(payload.size() >= offset + key_bytes);
    return node_key(payload.subspan(offset).first<key_bytes>());
}

// Writes header + the given payload pieces; returns the frame size.
std::size_t write_frame(std::span<std::uint8_t> out, frame_type type,
                        std::initializer_list<std::span<const std::uint8_t>> parts) noexcept {
    std::size_t payload_bytes = 0;
    for (auto part : parts) payload_bytes += part.size();
    std::size_t at = encode_frame_header(out, type, payload_bytes);
    for (auto part : parts) {
        if (!part.empty()) std::memcpy(out.data() + at, part.data(), part.size());
        at += part.size();
    }
    return at;
}

}  // namespace

bool is_known_frame_type(std::uint8_t type) noexcept {
    return (type >= 0x01 && type <= 0x0a) || (type >= 0x10 && type <= 0x15);
}

std::string_view to_string(frame_type type) noexcept {
    switch (type) {
        case frame_type::server_key: return "ServerKey";
        case frame_type::client_info: return "ClientInfo";
        case frame_type::server_info: return "ServerInfo";
        case frame_type::send_packet: return "SendPacket";
        case frame_type::recv_packet: return "RecvPacket";
        case frame_type::keep_alive: return "KeepAlive";
        case frame_type::note_preferred: return "NotePreferred";
        case frame_type::peer_gone: return "PeerGone";
        case frame_type::peer_present: return "PeerPresent";
        case frame_type::forward_packet: return "ForwardPacket";
        case frame_type::watch_conns: return "WatchConns";
        case frame_type::close_peer: return "ClosePeer";
        case frame_type::ping: return "Ping";
        case frame_type::pong: return "Pong";
        case frame_type::health: return "Health";
        case frame_type::restarting: return "Restarting";
    }
    return "unknown";
}

std::uint8_t peer_present_flags(bool mesh_peer, bool prober, bool not_ideal) noexcept {
    std::uint8_t flags = 0;
    if (mesh_peer) flags |= peer_present_mesh_peer;
    if (prober) flags |= peer_present_prober;
    if (not_ideal) flags |= peer_present_not_ideal;
    return flags == 0 ? peer_present_regular : flags;
}

ip16 ipv4_mapped(std::array<std::uint8_t, 4> ipv4) noexcept {
    ip16 ip{};
    ip[10] = 0xff;
    ip[11] = 0xff;
    std::copy(ipv4.begin(), ipv4.end(), ip.begin() + 12);
    return ip;
}

bool looks_like_disco(std::span<const std::uint8_t> packet) noexcept {
    return packet.size() >= disco_packet_bytes_min &&
           std::equal(disco_magic.begin(), disco_magic.end(), packet.begin());
}

std::optional<frame_header> parse_frame_header(std::span<const std::uint8_t> in) noexcept {
    if (in.size() < frame_header_bytes) return std::nullopt;
    return frame_header{static_cast<frame_type>(in[0]), load_u32_be(in.data() + 1)};
}

frame_parse parse_frame(std::span<const std::uint8_t> in, std::size_t payload_bytes_max) noexcept {
    const auto header = parse_frame_header(in);
    if (!header) {
        return {frame_parse_status::need_more, frame_header{}, {}, frame_header_bytes};
    }
    const std::size_t frame_bytes = frame_header_bytes + header->payload_bytes;
    if (header->payload_bytes > payload_bytes_max) {
        return {frame_parse_status::too_large, *header, {}, frame_bytes};
    }
    if (in.size() < frame_bytes) {
        return {frame_parse_status::need_more, *header, {}, frame_bytes};
    }
    return {frame_parse_status::complete, *header,
            in.subspan(frame_header_bytes, header->payload_bytes), frame_bytes};
}

result<void, close_reason> check_client_frame(const frame_header& header,
                                              bool sender_can_mesh) noexcept {
    const std::size_t n = header.payload_bytes;
    switch (header.type) {
        case frame_type::note_preferred:
            if (n != 1) return unexpected(close_reason::note_preferred_length);
            return {};
        case frame_type::send_packet:
            if (n < key_bytes) return unexpected(close_reason::packet_frame_too_short);
            if (n - key_bytes > packet_bytes_max) return unexpected(close_reason::frame_too_large);
            return {};
        case frame_type::forward_packet:
            // derper checks the permission before it reads anything of the payload.
            if (!sender_can_mesh) return unexpected(close_reason::not_mesh);
            if (n < 2 * key_bytes) return unexpected(close_reason::packet_frame_too_short);
            if (n - 2 * key_bytes > packet_bytes_max) {
                return unexpected(close_reason::frame_too_large);
            }
            return {};
        case frame_type::watch_conns:
            if (n != 0) return unexpected(close_reason::watch_conns_length);
            if (!sender_can_mesh) return unexpected(close_reason::not_mesh);
            return {};
        case frame_type::close_peer:
            if (n != key_bytes) return unexpected(close_reason::close_peer_length);
            if (!sender_can_mesh) return unexpected(close_reason::not_mesh);
            return {};
        case frame_type::ping:
            if (n < ping_data_bytes) return unexpected(close_reason::ping_too_short);
            if (n > ping_payload_bytes_max) return unexpected(close_reason::ping_too_large);
            return {};
        default:
            return {};
    }
}

result<send_packet_view, close_reason> decode_send_packet(
    std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < key_bytes) return unexpected(close_reason::packet_frame_too_short);
    if (payload.size() - key_bytes > packet_bytes_max) {
        return unexpected(close_reason::frame_too_large);
    }
    return send_packet_view{key_at(payload, 0), payload.subspan(key_bytes)};
}

result<forward_packet_view, close_reason> decode_forward_packet(
    std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < 2 * key_bytes) return unexpected(close_reason::packet_frame_too_short);
    if (payload.size() - 2 * key_bytes > packet_bytes_max) {
        return unexpected(close_reason::frame_too_large);
    }
    return forward_packet_view{key_at(payload, 0), key_at(payload, key_bytes),
                               payload.subspan(2 * key_bytes)};
}

result<bool, close_reason> decode_note_preferred(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() != 1) return unexpected(close_reason::note_preferred_length);
    return payload[0] != 0;
}

result<node_key, close_reason> decode_close_peer(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() != key_bytes) return unexpected(close_reason::close_peer_length);
    return key_at(payload, 0);
}

result<ping_data, close_reason> decode_ping(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < ping_data_bytes) return unexpected(close_reason::ping_too_short);
    if (payload.size() > ping_payload_bytes_max) return unexpected(close_reason::ping_too_large);
    ping_data data{};
    std::copy_n(payload.begin(), ping_data_bytes, data.begin());
    return data;
}

result<void, close_reason> decode_watch_conns(std::span<const std::uint8_t> payload) noexcept {
    if (!payload.empty()) return unexpected(close_reason::watch_conns_length);
    return {};
}

std::optional<node_key> decode_server_key(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < derp_magic.size() + key_bytes) return std::nullopt;
    if (payload.size() > server_key_payload_bytes_max) return std::nullopt;
    if (!std::equal(derp_magic.begin(), derp_magic.end(), payload.begin())) return std::nullopt;
    return key_at(payload, derp_magic.size());
}

std::optional<client_info_view> decode_client_info(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < client_info_payload_bytes_min) return std::nullopt;
    if (payload.size() > client_info_payload_bytes_max) return std::nullopt;
    return client_info_view{key_at(payload, 0), payload.subspan(key_bytes)};
}

std::optional<std::span<const std::uint8_t>> decode_server_info(
    std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < nonce_bytes) return std::nullopt;
    if (payload.size() > nonce_bytes + client_frame_payload_bytes_max) return std::nullopt;
    return payload;
}

std::optional<recv_packet_view> decode_recv_packet(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < key_bytes) return std::nullopt;
    return recv_packet_view{key_at(payload, 0), payload.subspan(key_bytes)};
}

std::optional<peer_gone_view> decode_peer_gone(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < key_bytes) return std::nullopt;
    const auto reason = payload.size() > key_bytes ? static_cast<peer_gone_reason>(payload[key_bytes])
                                                   : peer_gone_reason::disconnected;
    return peer_gone_view{key_at(payload, 0), reason};
}

std::optional<peer_present_view> decode_peer_present(
    std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < key_bytes) return std::nullopt;
    peer_present_view view{key_at(payload, 0)};
    // Like the Go client: IP and port only when all 18 bytes are there, flags when byte 51 is.
    if (payload.size() >= key_bytes + 18) {
        std::copy_n(payload.begin() + key_bytes, view.ip.size(), view.ip.begin());
        view.port = static_cast<std::uint16_t>((payload[key_bytes + 16] << 8) | payload[key_bytes + 17]);
    }
    if (payload.size() >= peer_present_payload_bytes) view.flags = payload[key_bytes + 18];
    return view;
}

std::optional<ping_data> decode_pong(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < ping_data_bytes) return std::nullopt;
    ping_data data{};
    std::copy_n(payload.begin(), ping_data_bytes, data.begin());
    return data;
}

std::optional<restarting_view> decode_restarting(std::span<const std::uint8_t> payload) noexcept {
    if (payload.size() < 8) return std::nullopt;
    return restarting_view{load_u32_be(payload.data()), load_u32_be(payload.data() + 4)};
}

std::string_view decode_health(std::span<const std::uint8_t> payload) noexcept {
    return {reinterpret_cast<const char*>(payload.data()), payload.size()};
}

std::size_t encode_frame_header(std::span<std::uint8_t> out, frame_type type,
                                std::size_t payload_bytes) noexcept {
    DERP_ASSERT(payload_bytes <= UINT32_MAX);
    DERP_ASSERT(out.size() >= frame_header_bytes + payload_bytes);
    out[0] = static_cast<std::uint8_t>(type);
    store_u32_be(out.data() + 1, static_cast<std::uint32_t>(payload_bytes));
    return frame_header_bytes;
}

std::size_t encode_server_key(std::span<std::uint8_t> out, const node_key& server) noexcept {
    return write_frame(out, frame_type::server_key, {derp_magic, server.span()});
}

std::size_t encode_client_info(std::span<std::uint8_t> out, const node_key& client,
                               std::span<const std::uint8_t> sealed) noexcept {
    DERP_ASSERT(key_bytes + sealed.size() >= client_info_payload_bytes_min);
    DERP_ASSERT(key_bytes + sealed.size() <= client_info_payload_bytes_max);
    return write_frame(out, frame_type::client_info, {client.span(), sealed});
}

std::size_t encode_server_info(std::span<std::uint8_t> out,
                               std::span<const std::uint8_t> sealed) noexcept {
    DERP_ASSERT(sealed.size() >= nonce_bytes);
    DERP_ASSERT(sealed.size() <= nonce_bytes + client_frame_payload_bytes_max);
    return write_frame(out, frame_type::server_info, {sealed});
}

std::size_t encode_send_packet(std::span<std::uint8_t> out, const node_key& dst,
                               std::span<const std::uint8_t> packet) noexcept {
    DERP_ASSERT(packet.size() <= packet_bytes_max);
    return write_frame(out, frame_type::send_packet, {dst.span(), packet});
}

std::size_t encode_recv_packet(std::span<std::uint8_t> out, const node_key& src,
                               std::span<const std::uint8_t> packet) noexcept {
    DERP_ASSERT(packet.size() <= packet_bytes_max);
    return write_frame(out, frame_type::recv_packet, {src.span(), packet});
}

std::size_t encode_recv_packet_header(std::span<std::uint8_t> out, const node_key& src,
                                      std::size_t packet_bytes) noexcept {
    DERP_ASSERT(packet_bytes <= packet_bytes_max);
    DERP_ASSERT(out.size() >= recv_packet_header_bytes);
    out[0] = static_cast<std::uint8_t>(frame_type::recv_packet);
    store_u32_be(out.data() + 1, static_cast<std::uint32_t>(key_bytes + packet_bytes));
    std::copy(src.bytes().begin(), src.bytes().end(), out.begin() + frame_header_bytes);
    return recv_packet_header_bytes;
}

std::size_t encode_forward_packet(std::span<std::uint8_t> out, const node_key& src,
                                  const node_key& dst, std::span<const std::uint8_t> packet) noexcept {
    DERP_ASSERT(packet.size() <= packet_bytes_max);
    return write_frame(out, frame_type::forward_packet, {src.span(), dst.span(), packet});
}

std::size_t encode_keep_alive(std::span<std::uint8_t> out) noexcept {
    return write_frame(out, frame_type::keep_alive, {});
}

std::size_t encode_note_preferred(std::span<std::uint8_t> out, bool preferred) noexcept {
    const std::array<std::uint8_t, 1> payload = {static_cast<std::uint8_t>(preferred ? 1 : 0)};
    return write_frame(out, frame_type::note_preferred, {payload});
}

std::size_t encode_peer_gone(std::span<std::uint8_t> out, const node_key& peer,
                             peer_gone_reason reason) noexcept {
    DERP_ASSERT(reason != peer_gone_reason::mesh_conn_broke);  // never on the wire
    const std::array<std::uint8_t, 1> tail = {static_cast<std::uint8_t>(reason)};
    return write_frame(out, frame_type::peer_gone, {peer.span(), tail});
}

std::size_t encode_peer_present(std::span<std::uint8_t> out, const node_key& peer, const ip16& ip,
                                std::uint16_t port, std::uint8_t flags) noexcept {
    const std::array<std::uint8_t, 3> tail = {static_cast<std::uint8_t>(port >> 8),
                                              static_cast<std::uint8_t>(port), flags};
    const std::size_t n = write_frame(out, frame_type::peer_present, {peer.span(), ip, tail});
    DERP_ASSERT(n == peer_present_frame_bytes);
    return n;
}

std::size_t encode_watch_conns(std::span<std::uint8_t> out) noexcept {
    return write_frame(out, frame_type::watch_conns, {});
}

std::size_t encode_close_peer(std::span<std::uint8_t> out, const node_key& peer) noexcept {
    return write_frame(out, frame_type::close_peer, {peer.span()});
}

std::size_t encode_ping(std::span<std::uint8_t> out, const ping_data& data) noexcept {
    return write_frame(out, frame_type::ping, {data});
}

std::size_t encode_pong(std::span<std::uint8_t> out, const ping_data& data) noexcept {
    return write_frame(out, frame_type::pong, {data});
}

std::size_t encode_health(std::span<std::uint8_t> out, std::string_view problem) noexcept {
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(problem.data());
    return write_frame(out, frame_type::health, {std::span<const std::uint8_t>(bytes, problem.size())});
}

std::size_t encode_restarting(std::span<std::uint8_t> out, std::uint32_t reconnect_in_ms,
                              std::uint32_t try_for_ms) noexcept {
    std::array<std::uint8_t, 8> payload{};
    store_u32_be(payload.data(), reconnect_in_ms);
    store_u32_be(payload.data() + 4, try_for_ms);
    return write_frame(out, frame_type::restarting, {payload});
}

}  // namespace derp
