// The admin listener's HTTP handling (see admin_service.hh).
#include "admin/admin_service.hh"

#include <array>
#include <cstring>
#include <ctime>

#include "core/http_endpoints.hh"
#include "core/http_request.hh"
#include "admin/varz.hh"

namespace derp::admin {
namespace {
constexpr std::uint8_t timer_idle = 0;
constexpr std::uint64_t idle_timeout_ns = 30'000'000'000;  // Go's ReadTimeout, as the main listener
}  // namespace

admin_service::http_conn* admin_service::find(ring::conn_id conn) noexcept {
    if (conn.slot >= _conns.size()) return nullptr;
    http_conn& c = _conns[conn.slot];
    return c.open && c.gen == conn.gen ? &c : nullptr;
}

void admin_service::on_accept(ring::conn_id conn, const sockaddr_storage&) noexcept {
    if (_conns.size() <= conn.slot) _conns.resize(conn.slot + 1);
    _conns[conn.slot] = http_conn{conn.gen, true, {}, 0};
    _shard.arm_timer(conn, timer_idle, _shard.now_ns() + idle_timeout_ns);
}

void admin_service::on_timer(ring::conn_id conn, std::uint8_t) noexcept { _shard.close(conn); }

void admin_service::on_closed(ring::conn_id conn, ring::close_cause) noexcept {
    if (http_conn* c = find(conn)) *c = http_conn{};
}

std::size_t admin_service::on_data(ring::conn_id conn, std::span<const std::uint8_t> bytes) noexcept {
    http_conn* c = find(conn);
    if (c == nullptr) return bytes.size();
    std::size_t used = 0;
    while (used < bytes.size()) {
        http_request request;
        const http_parse parsed = parse_http_request(bytes.subspan(used), request);
        if (parsed.status == http_parse_status::need_more) break;
        const auto now = static_cast<std::int64_t>(std::time(nullptr));
        if (parsed.status == http_parse_status::error) {
            std::string response(http_error_response_bytes_max, '\0');
            response.resize(encode_http_error_response(
                {reinterpret_cast<std::uint8_t*>(response.data()), response.size()}, parsed.error_status,
                parsed.error_text));
            c->out += response;
            _shard.want_write(conn);
            _shard.close_after_flush(conn);
            return bytes.size();
        }
        used += request.head_bytes;
        const bool head = request.method == "HEAD";
        // The operator chose where this listener lives (loopback by default): no address rule.
        if (request.path == "/debug/varz" || request.path == "/metrics") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}}};
            c->out += go_http_response(200, headers, render_varz(_shared), now, head);
        } else if (request.path == "/debug/vars") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "application/json; charset=utf-8"}}};
            c->out += go_http_response(200, headers, render_debug_vars(_shared), now, head);
        } else if (request.path == "/debug/check") {
            auto [status, text] = render_debug_check(_shared);
            c->out += status == 200 ? go_http_response(200, {}, text, now, head, true) : go_http_error(status, text, now, head);
        } else if (request.path == "/debug/" || request.path == "/") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/html; charset=utf-8"}}};
            c->out += go_http_response(200, headers, render_debug_index(_shared), now, head);
        } else {
            c->out += go_http_error(404, "404 page not found", now, head);
        }
        _shard.want_write(conn);
        _shard.arm_timer(conn, timer_idle, _shard.now_ns() + idle_timeout_ns);
        // As Go's server: HTTP/1.1 stays open unless the client says "Connection: close";
        // HTTP/1.0 closes after the answer.
        const auto connection = request.header("Connection");
        const bool keep_alive =
            request.version_minor >= 1 && !(connection && ascii_iequals(*connection, "close"));
        if (!keep_alive || http_request_body(request).kind != http_body_kind::none) {  // no bodies here: done
            _shard.close_after_flush(conn);
            return bytes.size();
        }
    }
    return used;
}

std::size_t admin_service::on_writable(ring::conn_id conn, std::span<std::uint8_t> out) noexcept {
    http_conn* c = find(conn);
    if (c == nullptr) return 0;
    const std::size_t n = std::min(out.size(), c->out.size() - c->sent);
    std::memcpy(out.data(), c->out.data() + c->sent, n);
    c->sent += n;
    if (c->sent < c->out.size()) {
        _shard.want_write(conn);
    } else {
        c->out.clear();
        c->sent = 0;
    }
    return n;
}

}  // namespace derp::admin
