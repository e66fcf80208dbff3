// The DERP service's HTTP front door (spec 3): requests before the upgrade, the Upgrade: DERP
// answer and the handshake start, the side doors, /debug/ pages on the main listener,
// /bootstrap-dns and the /debug/traffic stream.
#include "server/derp_service.hh"

#include <ctime>

#include "admin/varz.hh"
#include "core/bootstrap_dns.hh"
#include "core/derp_upgrade.hh"
#include "core/http_endpoints.hh"
#include "core/http_request.hh"
#include "core/websocket.hh"
#include "crypto/acme_crypto.hh"
#include "server/derp_internal.hh"
#include "server/ws_layer.hh"

namespace derp::server {

void derp_service::respond(conn_id conn, client& c, std::string response, bool keep_alive) noexcept {
    queue_http(conn, c, response);
    if (!keep_alive) {
        _shard.close_after_flush(conn);
        return;
    }
    // The next request on this connection gets a fresh deadline, as Go's per-request ReadTimeout.
    _shard.arm_timer(conn, timer_deadline, _shard.now_ns() + static_cast<std::uint64_t>(_settings.http_header_timeout_ns));
}

std::size_t derp_service::handle_http(conn_id conn, client& c, std::span<const std::uint8_t> in) noexcept {
    if (c.http_body_skip > 0) {  // the body of the previous request on this connection
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(c.http_body_skip, in.size()));
        c.http_body_skip -= n;
        return n;
    }
    http_request request;
    const http_parse parsed = parse_http_request(in, request);
    if (parsed.status == http_parse_status::need_more) return 0;
    _counters.http_requests.add();
    if (parsed.status == http_parse_status::error) {
        _counters.http_errors.add();
        std::string response(http_error_response_bytes_max, '\0');
        response.resize(encode_http_error_response(
            {reinterpret_cast<std::uint8_t*>(response.data()), response.size()}, parsed.error_status,
            parsed.error_text));
        if (auto n = _close_log.allow(_shard.now_ns()))
            ring::log(log_level::info, "http: {}: {} {} ({} recent)", format_addr(c.ip, c.port),
                      parsed.error_status, parsed.error_text, n);
        respond(conn, c, std::move(response), false);
        return in.size();
    }
    const std::size_t head = request.head_bytes;
    const auto unix_seconds = static_cast<std::int64_t>(std::time(nullptr));
    // Go keeps HTTP/1.1 connections open between requests unless told otherwise; a body we
    // cannot frame (chunked, or a bad length) ends the connection after the answer.
    const http_body body = http_request_body(request);
    const auto connection = request.header("Connection");
    bool keep_alive = request.version_minor >= 1 && !(connection && ascii_iequals(*connection, "close"));
    if (body.kind == http_body_kind::content_length) c.http_body_skip = body.content_length;
    else if (body.kind != http_body_kind::none) keep_alive = false;

    http_route_context context;
    context.unix_seconds = unix_seconds;
    context.serve_derp = _settings.serve_derp;
    context.hostname = _settings.hostname;
    context.debug_allowed = debug_access_allowed(c.ip, request.header("X-Forwarded-For").has_value(),
                                                 _settings.debug_policy, request.method,
                                                 query_value(request.query, "debugkey"));
    if (_settings.tls_mode && _shard.listener_tag(conn) == listener_port80) {
        _counters.port80_requests.add();
        // HTTP-01 (RFC 8555 8.3), ahead of the redirect as autocert's HTTPHandler: the key
        // authorization for a token of a challenge in flight, 404 for any other token.
        constexpr std::string_view challenge_prefix = "/.well-known/acme-challenge/";
        if (_shared.acme_challenges != nullptr && request.path.starts_with(challenge_prefix)) {
            const auto answer = _shared.acme_challenges->http01(request.path.substr(challenge_prefix.size()));
            if (_shared.acme != nullptr) (answer ? _shared.acme->http01_answers : _shared.acme->http01_unknown).fetch_add(1, std::memory_order_relaxed);
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/plain; charset=utf-8"}}};
            respond(conn, c,
                    answer ? go_http_response(200, headers, *answer, unix_seconds, request.method == "HEAD")
                           : go_http_error(404, "acme/autocert: no challenge for this token", unix_seconds,
                                           request.method == "HEAD"),
                    keep_alive);
            return keep_alive ? head : in.size();
        }
        if (auto answer = route_port80(request, context.debug_allowed, unix_seconds)) {
            respond(conn, c, std::move(*answer), keep_alive);
            return keep_alive ? head : in.size();
        }
    }
    // derper counts every request it serves over TLS by the connection's version.
    std::size_t tls_index = 0;
    const bool over_tls = _tls != nullptr && _tls->is_tls(conn);
    if (over_tls) {
        tls_index = tls::version_index(_tls->tls_version(conn));
        _counters.tls_request_version[tls_index].add();
    }
    http_route_result routed = route_http_request(request, context);
    switch (routed.route) {
    case http_route::derp: {
        const derp_upgrade upgrade = classify_derp_upgrade(request);
        bool websocket = false;
        if (upgrade.kind == upgrade_kind::websocket && _ws != nullptr) {
            // derper: coder/websocket's Accept (its own HTTP errors), then 1008 unless the
            // selected subprotocol is exactly "derp", then DERP inside binary messages.
            ws_handshake_answer answer = answer_websocket_handshake(request, unix_seconds);
            if (!answer.upgraded) {
                respond(conn, c, std::move(answer.response), keep_alive);
                return keep_alive ? head : in.size();
            }
            queue_http(conn, c, answer.response);
            c.http_body_skip = 0;
            c.ws_upgraded = true;
            _ws->upgrade(conn, c.out.http_bytes() - c.bytes_out);
            if (!answer.derp_subprotocol) {
                _ws->close_with(conn, ws_status_policy_violation, "client must speak the derp subprotocol",
                                admin::ws_close_kind::not_derp_subprotocol);
                return head;
            }
            websocket = true;
        }
        if (upgrade.kind == upgrade_kind::derp || websocket) {
            c.http_body_skip = 0;  // after the upgrade the stream is DERP frames
            c.not_ideal = upgrade.not_ideal;
            c.stage = phase::handshake;
            if (over_tls) {
                c.tls_active = static_cast<std::uint8_t>(tls_index + 1);
                _counters.tls_active_version[tls_index].add();
            }
            c.handshake = std::make_unique<server_handshake>(_settings.server_public, _settings.mesh_key, _box);
            std::array<std::uint8_t, handshake_start_bytes_max> start{};
            // Over WebSocket the 101 went out above: ServerKey is the first message.
            const std::size_t n = c.handshake->start(start, upgrade.fast_start || websocket);
            // The 101 (none in fast start) is HTTP; ServerKey, at the end, the first frame.
            const std::size_t http_bytes = n - server_key_frame_bytes;
            queue_http(conn, c, {reinterpret_cast<const char*>(start.data()), http_bytes});
            queue_control(conn, c, std::span<const std::uint8_t>(start.data() + http_bytes, server_key_frame_bytes));
            _shard.set_write_timeout(conn, _settings.handshake_timeout_ns);
            _shard.arm_timer(conn, timer_deadline,
                             _shard.now_ns() + static_cast<std::uint64_t>(_settings.handshake_timeout_ns));
            return head;
        }
        // No DERP upgrade: derper's 426.
        std::string response(derp_426_response_bytes, '\0');
        encode_derp_426({reinterpret_cast<std::uint8_t*>(response.data()), response.size()}, unix_seconds);
        respond(conn, c, std::move(response), keep_alive);
        return keep_alive ? head : in.size();
    }
    case http_route::debug: {
        if (request.path == "/debug/varz") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}}};
            respond(conn, c, go_http_response(200, headers, admin::render_varz(_shared), unix_seconds, request.method == "HEAD"),
                    keep_alive);
        } else if (request.path == "/debug/traffic") {
            // Streams JSON lines every 2 s until the client goes (derper's /debug/traffic).
            // A streamed body: no Content-Length; the end of the connection ends it.
            const std::array<http_header_field, 2> headers = {{{"Connection", "close"},
                                                               {"Content-Type", "text/plain; charset=utf-8"}}};
            std::string head_text = go_http_response(200, headers, "", unix_seconds, true);
            queue_http(conn, c, head_text);
            c.stage = phase::traffic;
            note_finished(c);  // an operator's stream, not a handshake
            _shard.cancel_timer(conn, timer_deadline);
            request_traffic_snapshot(conn);
            return in.size();
        } else if (request.path == "/debug/vars") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "application/json; charset=utf-8"}}};
            respond(conn, c, go_http_response(200, headers, admin::render_debug_vars(_shared), unix_seconds, request.method == "HEAD"),
                    keep_alive);
        } else if (request.path == "/debug/check") {
            auto [status, text] = admin::render_debug_check(_shared);
            respond(conn, c, status == 200 ? go_http_response(200, {}, text, unix_seconds, request.method == "HEAD", true)
                                           : go_http_error(status, text, unix_seconds, request.method == "HEAD"),
                    keep_alive);
        } else if (request.path == "/debug/" || request.path == "/debug") {
            const std::array<http_header_field, 1> headers = {{{"Content-Type", "text/html; charset=utf-8"}}};
            respond(conn, c, go_http_response(200, headers, admin::render_debug_index(_shared), unix_seconds,
                                              request.method == "HEAD"),
                    keep_alive);
        } else {
            respond(conn, c, go_http_error(404, "404 page not found", unix_seconds), keep_alive);
        }
        return keep_alive ? head : in.size();
    }
    case http_route::bootstrap_dns:
        respond(conn, c, answer_bootstrap_dns(request, c, unix_seconds), false);  // Connection: close
        return in.size();
    case http_route::respond:
        respond(conn, c, std::move(routed.response), keep_alive);
        return keep_alive ? head : in.size();
    }
    return in.size();
}


void derp_service::request_traffic_snapshot(conn_id conn) noexcept {
    const conn_ref streamer = ref_of(conn);
    const std::uint64_t id = (std::uint64_t{streamer.slot} << 32) | streamer.gen;
    traffic_collection& t = _traffic[id];
    if (t.pending > 0) return;  // the previous round is still being collected
    t.rows.clear();
    t.pending = _shared.shards;
    for (std::uint32_t s = 0; s < _shared.shards; ++s) {
        auto* m = new control{};
        m->kind = control::type::traffic_request;
        m->conn = streamer;
        send_control(s, m);
    }
}

void derp_service::report_traffic(const conn_ref& streamer, std::vector<traffic_row>& rows) noexcept {
    client* c = find(streamer);
    if (c == nullptr || c->stage != phase::traffic) return;
    const conn_id conn{streamer.slot, streamer.gen};
    std::string lines;
    for (const traffic_row& r : rows) {
        auto& last = c->traffic_last[r.key];
        if (r.sent == last.first && r.recv == last.second) continue;  // only what grew
        last = {r.sent, r.recv};
        lines += fmt::format("{{\"Sent\":{},\"Recv\":{},\"Key\":\"nodekey:{}\"", r.sent, r.recv, r.key.to_string());
        if (r.unique_senders > 0) lines += fmt::format(",\"UniqueSenders\":{}", r.unique_senders);
        lines += "}\n";
    }
    lines += "\n";
    queue_http(conn, *c, lines);
    _shard.arm_timer(conn, timer_keepalive, _shard.now_ns() + 2'000'000'000);
}

std::string derp_service::answer_bootstrap_dns(const http_request& request, const client& c, std::int64_t unix_seconds) {
    _counters.bootstrap_dns_requests.add();
    const bool head = request.method == "HEAD";
    std::shared_ptr<const bootstrap_snapshot> snapshot;
    if (_shared.bootstrap != nullptr) snapshot = _shared.bootstrap->current();
    const auto q = query_value(request.query, "q");
    if (q && !q->empty() && snapshot) {
        if (_bootstrap_queried.size() > 500) _bootstrap_queried.clear();
        _bootstrap_queried.emplace(*q);
        _counters.bootstrap_dns_queried_domains.set(_bootstrap_queried.size());
        const std::string name(*q);
        if (auto it = snapshot->unpublished.find(name); it != snapshot->unpublished.end()) {
            _counters.bootstrap_dns_unpublished_hits.add();
            static constexpr std::uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            static constexpr ip16 loopback6 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
            const bool loopback = c.ip == loopback6 ||
                                  (std::equal(c.ip.begin(), c.ip.begin() + 12, std::begin(v4_prefix)) && c.ip[12] == 127);
            const double coin = static_cast<double>(splitmix64(_rng_state) >> 11) / 9007199254740992.0;
            if (rollout_selects(it->second.percent, c.ip, loopback, coin))
                return bootstrap_dns_response(format_bootstrap_json({{name, it->second.addresses}}), unix_seconds, head);
            _counters.bootstrap_dns_unpublished_percent_misses.add();
        }
        if (auto it = snapshot->published.find(name); it != snapshot->published.end()) {
            if (!it->second.empty()) _counters.bootstrap_dns_published_hits.add();
            else _counters.bootstrap_dns_published_misses.add();
        } else if (snapshot->unpublished.find(name) == snapshot->unpublished.end()) {
            _counters.bootstrap_dns_unpublished_misses.add();
        }
    }
    return bootstrap_dns_response(snapshot ? std::string_view(snapshot->published_json) : std::string_view(),
                                  unix_seconds, head);
}

}  // namespace derp::server
