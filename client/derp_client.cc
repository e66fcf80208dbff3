// DERP client connections on the runtime (see derp_client.hh): the client half of spec 1.4 and
// 3.3, with the Go client's tolerance for what servers send (spec 9.1).
#include "client/derp_client.hh"

#include <cctype>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "core/client_info.hh"
#include "crypto/box.hh"

#include <sodium.h>

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

// Whether the response head has the field `name` (lowercase; matched ignoring case) with
// exactly `value` (surrounding blanks ignored).
bool head_has_field(std::string_view head, std::string_view name, std::string_view value) {
    std::size_t at = head.find("\r\n");
    while (at != std::string_view::npos && at + 2 < head.size()) {
        const std::size_t line_end = head.find("\r\n", at + 2);
        const std::string_view line = head.substr(at + 2, line_end == std::string_view::npos ? std::string_view::npos : line_end - at - 2);
        const auto colon = line.find(':');
        if (colon == name.size()) {
            bool same = true;
            for (std::size_t i = 0; i < colon; ++i)
                same = same && static_cast<char>(std::tolower(static_cast<unsigned char>(line[i]))) == name[i];
            std::string_view v = line.substr(colon + 1);
            while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
            while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
            if (same && v == value) return true;
        }
        at = line_end;
    }
    return false;
}

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
    if (options.websocket) {
        // RFC 6455 4.1: a fresh random 16-byte key, base64; the 101 must echo its hash.
        std::array<std::uint8_t, 16> key_bytes{};
        randombytes_buf(key_bytes.data(), key_bytes.size());
        std::array<char, 25> key{};
        sodium_bin2base64(key.data(), key.size(), key_bytes.data(), key_bytes.size(), sodium_base64_VARIANT_ORIGINAL);
        const std::string_view key_text(key.data(), 24);
        const auto accept = websocket_accept_value(key_text);
        c.ws_accept.assign(accept.data(), accept.size());
        c.out = fmt::format(
            "GET /derp HTTP/1.1\r\nHost: {}\r\nUser-Agent: derpd-client\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n"
            "Sec-WebSocket-Protocol: derp\r\n\r\n",
            options.host, key_text);
    } else {
        c.out = fmt::format(
            "GET /derp HTTP/1.1\r\nHost: {}\r\nUser-Agent: derpd-client\r\nConnection: Upgrade\r\n"
            "Upgrade: DERP\r\n\r\n",
            options.host);
    }
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
    if (c->ws) return fill_websocket(conn, out);
    return _handler.fill(conn, out);
}

void client_pool::queue_out(conn_state& c, std::span<const std::uint8_t> bytes, ws_opcode opcode) {
    if (!c.ws) {
        c.out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        return;
    }
    std::array<std::uint8_t, 4> mask{};
    randombytes_buf(mask.data(), mask.size());
    std::array<std::uint8_t, ws_header_bytes_max> header{};
    const std::size_t h = encode_ws_header(header, opcode, bytes.size(), true, mask);
    c.out.append(reinterpret_cast<const char*>(header.data()), h);
    const std::size_t at = c.out.size();
    c.out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    apply_ws_mask({reinterpret_cast<std::uint8_t*>(c.out.data() + at), bytes.size()}, mask, 0);
}

// One buffer the application fills is one masked binary message. Its payload stays under
// 64 KiB so that the header (4 bytes of length form + 4 of mask) can be reserved up front and
// the application writes in place; a short message moves its payload 2 bytes down.
std::size_t client_pool::fill_websocket(conn_id conn, std::span<std::uint8_t> out) noexcept {
    constexpr std::size_t reserved = 8;
    if (out.size() <= reserved) {
        _shard.want_write(conn);
        return 0;
    }
    std::uint8_t* payload = out.data() + reserved;
    const std::size_t w = _handler.fill(conn, {payload, std::min<std::size_t>(out.size() - reserved, 0xffff)});
    if (w == 0) return 0;
    std::array<std::uint8_t, 4> mask{};
    randombytes_buf(mask.data(), mask.size());
    const std::size_t h = ws_header_bytes(w, true);
    if (h < reserved) std::memmove(out.data() + h, payload, w);
    encode_ws_header(out, ws_opcode::binary, w, true, mask);
    apply_ws_mask(out.subspan(h, w), mask, 0);
    return h + w;
}

// Unframes the server's messages, answers pings, and parses the DERP bytes they carry.
std::size_t client_pool::handle_websocket(conn_id conn, conn_state& c, std::span<const std::uint8_t> in) noexcept {
    std::size_t at = 0;
    while (at < in.size()) {
        const std::size_t old = c.ws_plain.size();
        c.ws_plain.resize(old + (in.size() - at));
        const ws_step step = c.ws->feed(in.subspan(at), {c.ws_plain.data() + old, in.size() - at});
        c.ws_plain.resize(old + step.produced);
        at += step.consumed;
        if (step.event == ws_event::ping) {
            queue_out(c, {step.control.data(), step.control_bytes}, ws_opcode::pong);
            _shard.want_write(conn);
        } else if (step.event == ws_event::close) {
            fail(conn, c, client_failure::closed);
            return in.size();
        } else if (step.event == ws_event::error) {
            fail(conn, c, client_failure::protocol);
            return in.size();
        }
    }
    const std::size_t used = handle_frames(conn, c, c.ws_plain);
    if (find(conn) == nullptr) return in.size();
    c.ws_plain.erase(c.ws_plain.begin(), c.ws_plain.begin() + static_cast<std::ptrdiff_t>(used));
    if (c.ws_plain.size() > 2 * client_frame_payload_max) fail(conn, c, client_failure::protocol);
    return in.size();
}

std::size_t client_pool::on_data(conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    conn_state* c = find(conn);
    if (c == nullptr) return bytes.size();
    if (c->ws) return handle_websocket(conn, *c, bytes);
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
        if (c->options.websocket) {
            // The server must have hashed our key (RFC 6455 4.1); the rest is its messages.
            if (!head_has_field(text.substr(0, end + 2), "sec-websocket-accept", c->ws_accept)) {
                fail(conn, *c, client_failure::http_status);
                return bytes.size();
            }
            c->ws.emplace(false, client_frame_payload_max + frame_header_bytes);
            return used + handle_websocket(conn, *c, bytes.subspan(used));
        }
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
            queue_out(c, {frame_bytes.data(), at});
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
        case frame_type::restarting: {
            // Shorter than 8 bytes: dropped, as the Go client does (spec 9.1).
            const auto view = decode_restarting(payload);
            if (view) _handler.on_restarting(conn, *view);
            break;
        }
        case frame_type::health:
            _handler.on_health(conn, decode_health(payload));
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
