// Raw TCP load connections for the forwarder baseline (see raw_pool.hh).
#include "bench/raw_pool.hh"

#include "core/frame.hh"
#include "crypto/box.hh"

namespace derp::bench {
namespace {
// Frames up to DERP's own packet limit (64 KiB packets, spec 2.3) plus the key.
constexpr std::size_t raw_frame_payload_max = key_bytes + (64u << 10);
}  // namespace

raw_pool::conn_state* raw_pool::find(conn_id conn) noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    conn_state& c = _conns[conn.slot];
    return c.open && c.gen == conn.gen ? &c : nullptr;
}

std::optional<conn_id> raw_pool::dial(const ring::socket_address& server, const client::client_options& options) noexcept {
    auto conn = _shard.connect(server.storage, server.length);
    if (!conn) return std::nullopt;
    if (_conns.size() <= conn->slot) _conns.resize(conn->slot + 1);
    conn_state& c = _conns[conn->slot];
    c = conn_state{};
    c.gen = conn->gen;
    c.open = true;
    c.public_key = public_key_of(options.key);
    return conn;
}

void raw_pool::on_connect(conn_id conn, int error) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return;
    if (error != 0) {
        c->failure = client::client_failure::connect_failed;
        return;  // the runtime closes it; on_closed reports the failure
    }
    _handler.on_ready(conn, node_key{});
}

void raw_pool::fail(conn_id conn, conn_state& c, client::client_failure failure) noexcept {
    if (!c.failure) c.failure = failure;
    _shard.close(conn);
}

void raw_pool::on_closed(conn_id conn, ring::close_cause) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return;
    const client::client_failure failure = c->failure.value_or(client::client_failure::closed);
    c->open = false;
    _handler.on_closed(conn, failure);
}

std::size_t raw_pool::on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    std::size_t used = 0;
    while (used < bytes.size()) {
        conn_state* c = find(conn);
        if (c == nullptr) return bytes.size();
        const frame_parse frame = parse_frame(bytes.subspan(used), raw_frame_payload_max);
        if (frame.status == frame_parse_status::need_more) break;
        // Only SendPacket frames addressed to this connection: anything else means the
        // forwarder paired it with the wrong partner, or the stream is corrupt.
        const bool send_packet = frame.status == frame_parse_status::complete && frame.header.type == frame_type::send_packet;
        result<send_packet_view, close_reason> packet = unexpected(close_reason::bad_frame_type);
        if (send_packet) packet = decode_send_packet(frame.payload);
        if (!packet || packet->dst != c->public_key) {
            fail(conn, *c, client::client_failure::protocol);
            return bytes.size();
        }
        used += frame.frame_bytes;
        _handler.on_packet(conn, packet->dst, packet->packet);
    }
    return used;
}

}  // namespace derp::bench
