// DERP client connections on the runtime (see derp_client.hh): the client half of spec 1.4 and
// 3.3, with the Go client's tolerance for what servers send (spec 9.1).
#include "client/derp_client.hh"

#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "core/client_info.hh"
#include "crypto/box.hh"

namespace derp::client {

const char* to_string(client_failure failure) noexcept {
    switch (failure) {
    case client_failure::connect_failed: return "connect_failed";
    case client_failure::tls_handshake: return "tls_handshake";
    case client_failure::http_status: return "http_status";
    case client_failure::bad_server_key: return "bad_server_key";
    case client_failure::bad_server_info: return "bad_server_info";
    case client_failure::protocol: return "protocol";
    case client_failure::closed: return "closed";
    }
    return "unknown";
}

namespace {
// The Go client treats a frame over 1 MiB as fatal (spec 9.1).
constexpr std::size_t client_frame_payload_max = 1u << 20;
// An HTTP response head longer than this is not a DERP server's 101.
constexpr std::size_t response_head_bytes_max = 8192;
}  // namespace

client_pool::conn_state* client_pool::find(conn_id conn) noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    conn_state& c = _conns[conn.slot];
    return c.open && c.gen == conn.gen ? &c : nullptr;
}

std::optional<conn_id> client_pool::dial(const ring::socket_address& server,
                                         const client_options& options) noexcept {
    auto conn = _shard.connect(server.storage, server.length);
    if (!conn) return std::nullopt;
    if (_tls != nullptr && options.tls_context) _tls->use_context(*conn, options.tls_context);
    if (_conns.size() <= conn->slot) _conns.resize(conn->slot + 1);
    conn_state& c = _conns[conn->slot];
    c = conn_state{};
    c.gen = conn->gen;
    c.open = true;
    c.options = options;
    c.public_key = public_key_of(options.key);
    c.out = fmt::format(
        "GET /derp HTTP/1.1\r\nHost: {}\r\nUser-Agent: derpd-client\r\nConnection: Upgrade\r\n"
        "Upgrade: DERP\r\n\r\n",
        options.host);
    _shard.want_write(*conn);
    return conn;
}

void client_pool::on_connect(conn_id conn, int error) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return;
    if (error != 0) {
        // The TLS layer reports a failed handshake as EPROTO before it closes.
        c->failure = error == EPROTO ? client_failure::tls_handshake : client_failure::connect_failed;
        return;  // the runtime closes it; on_closed reports the failure
    }
    c->stage = phase::http;
}

void client_pool::fail(conn_id conn, conn_state& c, client_failure failure) noexcept {
    if (!c.failure) c.failure = failure;
    _shard.close(conn);
}

void client_pool::on_closed(conn_id conn, ring::close_cause) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return;
    const client_failure failure = c->failure.value_or(client_failure::closed);
    c->open = false;
    _handler.on_closed(conn, failure);
}

std::size_t client_pool::on_writable(conn_id conn, std::span<std::uint8_t> out) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return 0;
    if (c->out_sent < c->out.size()) {
        const std::size_t n = std::min(out.size(), c->out.size() - c->out_sent);
        std::memcpy(out.data(), c->out.data() + c->out_sent, n);
        c->out_sent += n;
        if (c->out_sent == c->out.size()) {
            c->out.clear();
            c->out_sent = 0;
        }
        // The application may also be waiting; give it its turn after the handshake bytes.
        if (c->stage == phase::ready || !c->out.empty()) _shard.want_write(conn);
        return n;
    }
    // As in the Go client, data frames may follow ClientInfo without waiting for ServerInfo;
    // we wait for it anyway so that a benchmark never measures a half-open client.
    if (c->stage != phase::ready) return 0;
    return _handler.fill(conn, out);
}

std::size_t client_pool::on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return bytes.size();
    std::size_t used = 0;
    if (c->stage == phase::http) {
        const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        const auto end = text.find("\r\n\r\n");
        if (end == std::string_view::npos) {
            if (bytes.size() > response_head_bytes_max) fail(conn, *c, client_failure::http_status);
            return 0;
        }
        // The Go client requires exactly 101 (spec 9.1).
        if (text.substr(0, 13) != "HTTP/1.1 101 ") {
            fail(conn, *c, client_failure::http_status);
            return bytes.size();
        }
        used = end + 4;
        c->stage = phase::server_key;
    }
    return used + handle_frames(conn, *c, bytes.subspan(used));
}

std::size_t client_pool::handle_frames(conn_id conn, conn_state& c, std::span<const std::uint8_t> in) noexcept {
    std::size_t used = 0;
    while (used < in.size() && find(conn) != nullptr) {
        const frame_parse frame = parse_frame(in.subspan(used), client_frame_payload_max);
        if (frame.status == frame_parse_status::need_more) break;
        if (frame.status == frame_parse_status::too_large) {
            fail(conn, c, client_failure::protocol);
            return in.size();
        }
        used += frame.frame_bytes;
        const auto payload = frame.payload;
        if (c.stage == phase::server_key) {
            const auto key = frame.header.type == frame_type::server_key ? decode_server_key(payload)
                                                                         : std::nullopt;
            if (!key) {
                fail(conn, c, client_failure::bad_server_key);
                return in.size();
            }
            c.server_key = *key;
            // ClientInfo, sealed to the server key, then NotePreferred if asked.
            client_info info;
            info.version = protocol_version;
            info.can_ack_pings = c.options.can_ack_pings;
            info.is_prober = c.options.is_prober;
            info.mesh_key = c.options.mesh_key;
            const std::string json = format_client_info_json(info);
            std::vector<std::uint8_t> sealed(json.size() + nonce_bytes + 16);
            const auto n = box_seal(sealed, {reinterpret_cast<const std::uint8_t*>(json.data()), json.size()},
                                    c.options.key, c.server_key, random_nonce());
            if (!n) {
                fail(conn, c, client_failure::bad_server_key);
                return in.size();
            }
            std::vector<std::uint8_t> frame_bytes(client_info_frame_bytes(*n) + note_preferred_frame_bytes +
                                                  watch_conns_frame_bytes);
            std::size_t at = encode_client_info(frame_bytes, c.public_key, {sealed.data(), *n});
            if (c.options.note_preferred)
                at += encode_note_preferred(std::span(frame_bytes).subspan(at), true);
            // Pipelined behind ClientInfo, as derper's mesh client does (spec 5).
            if (c.options.watch_conns) at += encode_watch_conns(std::span(frame_bytes).subspan(at));
            c.out.append(reinterpret_cast<const char*>(frame_bytes.data()), at);
            c.stage = phase::server_info;
            _shard.want_write(conn);
            continue;
        }
        switch (frame.header.type) {
        case frame_type::server_info: {
            if (c.stage != phase::server_info) break;
            const auto sealed = decode_server_info(payload);
            std::vector<std::uint8_t> plain(sealed && sealed->size() >= 40 ? sealed->size() - 40 : 0);
            if (!sealed || sealed->size() < 40 || !box_open(plain, *sealed, c.options.key, c.server_key)) {
                fail(conn, c, client_failure::bad_server_info);
                return in.size();
            }
            if (!parse_server_info_json({reinterpret_cast<const char*>(plain.data()), plain.size()})) {
                fail(conn, c, client_failure::bad_server_info);
                return in.size();
            }
            c.stage = phase::ready;
            _handler.on_ready(conn, c.server_key);
            break;
        }
        case frame_type::recv_packet: {
            const auto view = decode_recv_packet(payload);
            if (view) _handler.on_packet(conn, view->src, view->packet);
            break;
        }
        case frame_type::peer_gone: {
            const auto view = decode_peer_gone(payload);
            if (view) _handler.on_peer_gone(conn, view->key, view->reason);
            break;
        }
        case frame_type::peer_present: {
            const auto view = decode_peer_present(payload);
            if (view) _handler.on_peer_present_info(conn, *view);
            break;
        }
        case frame_type::pong: {
            const auto data = decode_pong(payload);
            if (data) _handler.on_pong(conn, *data);
            break;
        }
        case frame_type::keep_alive:
            _handler.on_keep_alive(conn);
            break;
        default:
            break;  // unknown frames are skipped, as the Go client does
        }
    }
    return used;
}

result<std::shared_ptr<client_tls>, std::string> make_client_tls(const tls::context::client_options& options,
                                                                 std::uint32_t shards) {
    auto ctx = tls::context::make_client(options);
    if (!ctx) return unexpected(ctx.error());
    auto setup = std::make_shared<client_tls>();
    setup->contexts = std::make_shared<tls::context_slot>();
    setup->contexts->current.store(ctx.value());
    setup->counters = std::make_unique<tls::tls_counters[]>(shards);
    return setup;
}

}  // namespace derp::client
