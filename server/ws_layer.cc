// The WebSocket framing layer between the TLS layer (or plain TCP) and the DERP service; see
// ws_layer.hh for where it sits and why.
#include "server/ws_layer.hh"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "core/assert.hh"

namespace derp::server {

namespace {

// The peer's address for a log line (only on the rate-limited close path).
std::string peer_of(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (fd < 0 || getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
    char text[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
        return fmt::format("{}:{}", text, ntohs(sin->sin_port));
    }
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
    return fmt::format("[{}]:{}", text, ntohs(sin6->sin6_port));
}

// A server-to-client message payload stays under 64 KiB so that its header is at most 4 bytes
// and can be reserved before the service writes: one registered buffer, no copy.
constexpr std::size_t message_payload_bytes_max = 0xffff;
constexpr std::size_t reserved_header_bytes = 4;

}  // namespace

ws_layer::ws_layer(ring::shard& sh, std::unique_ptr<ring::service> inner, admin::derp_counters& counters,
                   ws_layer_config config)
    : _shard(sh), _inner(std::move(inner)), _counters(counters), _config(config) {}

ws_layer::~ws_layer() = default;

ws_layer::conn_ws* ws_layer::find(ring::conn_id conn) noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    conn_ws& st = _conns[conn.slot];
    return st.active && st.gen == conn.gen ? &st : nullptr;
}

const ws_layer::conn_ws* ws_layer::find(ring::conn_id conn) const noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    const conn_ws& st = _conns[conn.slot];
    return st.active && st.gen == conn.gen ? &st : nullptr;
}

bool ws_layer::is_websocket(ring::conn_id conn) const noexcept { return find(conn) != nullptr; }

void ws_layer::upgrade(ring::conn_id conn, std::uint64_t raw_output_bytes) noexcept {
    if (_conns.size() <= conn.slot) _conns.resize(conn.slot + 1);
    conn_ws& st = _conns[conn.slot];
    st = conn_ws{};
    st.gen = conn.gen;
    st.active = true;
    st.raw_left_bytes = raw_output_bytes;
    st.decoder.emplace(true, _config.message_bytes_max);  // client frames are masked
    _counters.websocket_accepts.add();
}

void ws_layer::close_with(ring::conn_id conn, std::uint16_t status, std::string_view reason,
                          admin::ws_close_kind kind) noexcept {
    if (conn_ws* st = find(conn)) queue_close(conn, *st, status, reason, kind);
}

void ws_layer::queue_close(ring::conn_id conn, conn_ws& st, std::uint16_t status, std::string_view reason,
                           admin::ws_close_kind kind) noexcept {
    if (st.closing) return;
    st.closing = true;
    _counters.websocket_closes[static_cast<std::size_t>(kind)].add();
    // The peer's own close is ordinary, and the service has logged why it ended a session.
    if (kind != admin::ws_close_kind::peer_close && kind != admin::ws_close_kind::session_end) {
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(ring::log_level::info, "websocket: {}: closing with {} ({}): {} ({} recent)", peer_of(_shard.fd_of(conn)),
                      status, admin::ws_close_kind_names[static_cast<std::size_t>(kind)], reason, n);
    }
    std::array<std::uint8_t, ws_close_frame_bytes_max> frame{};
    const std::size_t n = encode_ws_close(frame, status, reason, false);
    st.control_out.append(reinterpret_cast<const char*>(frame.data()), n);
    st.plain_bytes = 0;
    _shard.want_write(conn);
    if (kind == admin::ws_close_kind::peer_close) {
        // The peer closed first and sends nothing more: close once our answer has gone.
        _shard.close_after_flush(conn);
        return;
    }
    // We close first: RFC 6455 7.1.1 has the peer answer with its own close frame. Until then
    // its input is read and dropped; closing the socket with unread input would send a reset
    // that can overtake our close frame (the peer would see 1006, not our status).
    st.awaiting_peer_close = true;
    _shard.arm_timer(conn, timer_close, _shard.now_ns() + static_cast<std::uint64_t>(close_handshake_timeout_ns));
}

void ws_layer::drain_closing(ring::conn_id conn, conn_ws& st, std::span<const std::uint8_t> in) noexcept {
    if (!st.awaiting_peer_close || st.decoder->finished()) return;  // after an error: until FIN or the deadline
    std::size_t at = 0;
    while (at < in.size()) {
        if (_discard.empty()) _discard.resize(64 * 1024);
        const ws_step step = st.decoder->feed(in.subspan(at), _discard);
        at += step.consumed;
        if (step.event == ws_event::close || step.event == ws_event::error) {
            st.awaiting_peer_close = false;
            _shard.close_after_flush(conn);
            return;
        }
    }
}

void ws_layer::on_timer(ring::conn_id conn, std::uint8_t timer_id) noexcept {
    if (timer_id == timer_close) {
        const conn_ws* st = find(conn);
        if (st != nullptr && st->awaiting_peer_close) _shard.close(conn);  // the peer never answered our close
        return;
    }
    _inner->on_timer(conn, timer_id);
}

void ws_layer::reserve_plain(conn_ws& st, std::size_t more) {
    if (st.plain_bytes + more <= st.plain_capacity_bytes) return;
    const std::size_t capacity = std::max<std::size_t>({st.plain_bytes + more, 2 * st.plain_capacity_bytes, 4096});
    auto grown = std::make_unique_for_overwrite<std::uint8_t[]>(capacity);
    if (st.plain_bytes > 0) std::memcpy(grown.get(), st.plain.get(), st.plain_bytes);
    st.plain = std::move(grown);
    st.plain_capacity_bytes = capacity;
}

bool ws_layer::offer_plain(ring::conn_id conn, conn_ws& st) noexcept {
    if (st.plain_bytes == 0 || st.closing) return true;
    const std::size_t taken = _inner->on_data(conn, {st.plain.get(), st.plain_bytes});
    if (find(conn) != &st || !_shard.is_open(conn)) return false;  // the service closed it
    if (st.closing) return false;  // the service ended the session (close_with): input is dropped
    const std::size_t used = std::min(taken, st.plain_bytes);
    // What the service left (the start of a frame) moves to the front.
    if (used > 0 && used < st.plain_bytes) std::memmove(st.plain.get(), st.plain.get() + used, st.plain_bytes - used);
    st.plain_bytes -= used;
    if (st.plain_bytes > _config.plain_buffered_bytes_max) {
        queue_close(conn, st, ws_status_policy_violation, "input not read", admin::ws_close_kind::input_overflow);
        return false;
    }
    return true;
}

void ws_layer::decode(ring::conn_id conn, conn_ws& st, std::span<const std::uint8_t> in) noexcept {
    std::size_t at = 0;
    while (at < in.size()) {
        if (st.closing) {
            drain_closing(conn, st, in.subspan(at));
            return;
        }
        // Payload never outgrows the bytes that carry it: the rest of `in` is room enough.
        reserve_plain(st, in.size() - at);
        const ws_step step = st.decoder->feed(in.subspan(at), {st.plain.get() + st.plain_bytes, in.size() - at});
        st.plain_bytes += step.produced;
        at += step.consumed;
        DERP_ASSERT(step.consumed > 0 || step.produced > 0 || step.event != ws_event::none);
        switch (step.event) {
        case ws_event::none:
        case ws_event::pong:
            break;
        case ws_event::ping: {
            // RFC 6455 5.5.2: a pong with the ping's payload, ahead of queued data.
            std::array<std::uint8_t, ws_header_bytes_max + ws_control_payload_bytes_max> frame{};
            const std::size_t h = encode_ws_header(frame, ws_opcode::pong, step.control_bytes, false);
            std::memcpy(frame.data() + h, step.control.data(), step.control_bytes);
            st.control_out.append(reinterpret_cast<const char*>(frame.data()), h + step.control_bytes);
            _shard.want_write(conn);
            break;
        }
        case ws_event::close:
            // The data before the close still reaches the service; then, as derper, a close
            // from the peer is the end of the stream, answered with the peer's status.
            if (!offer_plain(conn, st)) return;
            queue_close(conn, st, step.status == ws_status_no_status ? ws_status_normal : step.status, "",
                        admin::ws_close_kind::peer_close);
            return;
        case ws_event::error: {
            if (!offer_plain(conn, st)) return;
            const auto kind = step.status == ws_status_unsupported_data ? admin::ws_close_kind::unsupported_data
                              : step.status == ws_status_message_too_big ? admin::ws_close_kind::message_too_big
                                                                          : admin::ws_close_kind::protocol_error;
            queue_close(conn, st, step.status, step.error_text, kind);
            return;
        }
        }
    }
    offer_plain(conn, st);
}

std::size_t ws_layer::on_data(ring::conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    conn_ws* st = find(conn);
    if (st == nullptr) {
        const std::size_t used = _inner->on_data(conn, bytes);
        st = find(conn);
        if (st == nullptr || !_shard.is_open(conn)) return used;
        // The service answered a WebSocket upgrade in this call: the rest is frames.
        decode(conn, *st, bytes.subspan(std::min(used, bytes.size())));
        return bytes.size();
    }
    if (st->closing) drain_closing(conn, *st, bytes);
    else if (bytes.empty()) offer_plain(conn, *st);  // replay_input: the service is ready again
    else decode(conn, *st, bytes);
    return bytes.size();
}

std::size_t ws_layer::on_writable(ring::conn_id conn, std::span<std::uint8_t> out) noexcept {
    conn_ws* st = find(conn);
    if (st == nullptr) return _inner->on_writable(conn, out);
    std::size_t n = 0;
    if (st->raw_left_bytes > 0) {
        // The 101 (and any HTTP answer queued before it) leaves unframed.
        const auto limit = static_cast<std::size_t>(std::min<std::uint64_t>(st->raw_left_bytes, out.size()));
        n = _inner->on_writable(conn, out.first(limit));
        if (find(conn) != st) return n;
        st->raw_left_bytes -= n;
        if (st->raw_left_bytes > 0) return n;  // the service asks again for the rest
    }
    if (!st->control_out.empty()) {
        // Our own frames go whole before the next data message; a partial one finishes first.
        const std::size_t k = std::min(st->control_out.size(), out.size() - n);
        std::memcpy(out.data() + n, st->control_out.data(), k);
        st->control_out.erase(0, k);
        n += k;
        if (!st->control_out.empty()) {
            _shard.want_write(conn);
            return n;
        }
    }
    if (st->closing) return n;  // the close frame was the last thing sent
    if (out.size() - n <= reserved_header_bytes) {
        _shard.want_write(conn);
        return n;
    }
    const std::size_t payload_max = std::min(out.size() - n - reserved_header_bytes, message_payload_bytes_max);
    std::uint8_t* payload = out.data() + n + reserved_header_bytes;
    const std::size_t w = _inner->on_writable(conn, {payload, payload_max});
    if (w == 0 || find(conn) != st) return n;
    // One buffer the service filled is one binary message (spec 3.4: one flush, one message).
    const std::size_t h = ws_header_bytes(w, false);
    if (h < reserved_header_bytes) std::memmove(out.data() + n + h, payload, w);
    encode_ws_header(out.subspan(n), ws_opcode::binary, w, false);
    return n + h + w;
}

void ws_layer::on_closed(ring::conn_id conn, ring::close_cause cause) noexcept {
    if (conn_ws* st = find(conn)) {
        if (cause == ring::close_cause::peer_closed && !st->closing && st->decoder->inside_frame()) {
            _counters.websocket_closes[static_cast<std::size_t>(admin::ws_close_kind::eof_inside_frame)].add();
            if (auto n = _close_log.allow(_shard.now_ns()))
                ring::log(ring::log_level::info, "websocket: connection ended inside a frame ({} recent)", n);
        }
        *st = conn_ws{};
    }
    _inner->on_closed(conn, cause);
}

}  // namespace derp::server
