// DERP over WebSocket (spec 3.4) as a byte transform between the TLS layer (or plain TCP) and
// the DERP service, the way crypto/tls_layer sits between the shard and its service: after the
// service recognises a WebSocket upgrade it calls upgrade(), and from then on the connection's
// input is unframed (core/websocket's decoder) before the service sees it, and each buffer the
// service fills leaves as one unmasked binary message. The DERP service above is the same code
// for Upgrade: DERP and WebSocket. Pings are answered here; a close or a protocol error ends
// the connection with a close frame, counted by reason. Server side only: the connections it
// sees are the ones the shard accepted.
//
// Why a layer in server/ and not code in derp_service: the framing is per-connection state
// with its own buffers and control frames, and the service's data path stays unchanged; it
// lives in server/ because only the server speaks it (client/ does not dial WebSocket yet).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "admin/derp_counters.hh"
#include "core/websocket.hh"
#include "ring/log.hh"
#include "ring/service.hh"
#include "ring/shard.hh"

namespace derp::server {

struct ws_layer_config {
    // A binary message whose payload passes this is refused with 1009. Browsers send one DERP
    // frame per message (64 KiB + 5 at most), Go one bufio flush; ClientInfo is < 256 KiB.
    std::uint64_t message_bytes_max = 1u << 20;
    // Unframed bytes the service above left unread (the shard's own input limit, 512 KiB).
    std::size_t plain_buffered_bytes_max = 512 * 1024;
};

class ws_layer final : public ring::service {
public:
    ws_layer(ring::shard& sh, std::unique_ptr<ring::service> inner, admin::derp_counters& counters,
             ws_layer_config config = {});
    ~ws_layer() override;

    // Called by the service from inside its on_data while it answers the upgrade request: the
    // rest of that call's input (after what the service consumed) and everything after it are
    // WebSocket frames; of the service's output, the next `raw_output_bytes` (the 101, and
    // whatever HTTP it had queued before) go out as they are and the rest is framed.
    void upgrade(ring::conn_id conn, std::uint64_t raw_output_bytes) noexcept;
    // Sends a close frame and closes once it has gone (derper's 1008 for a client whose
    // subprotocol is not exactly "derp").
    void close_with(ring::conn_id conn, std::uint16_t status, std::string_view reason,
                    admin::ws_close_kind kind) noexcept;
    bool is_websocket(ring::conn_id conn) const noexcept;

    void on_accept(ring::conn_id conn, const sockaddr_storage& peer) noexcept override { _inner->on_accept(conn, peer); }
    void on_connect(ring::conn_id conn, int error) noexcept override { _inner->on_connect(conn, error); }
    std::size_t on_data(ring::conn_id conn, std::span<const std::uint8_t> bytes) noexcept override;
    std::size_t on_writable(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override;
    void on_datagram(std::uint32_t socket_index, const sockaddr_storage& from, std::span<const std::uint8_t> payload,
                     bool truncated) noexcept override {
        _inner->on_datagram(socket_index, from, payload, truncated);
    }
    void on_timer(ring::conn_id conn, std::uint8_t timer_id) noexcept override;
    void on_closed(ring::conn_id conn, ring::close_cause cause) noexcept override;
    void on_recv_error(ring::conn_id conn, int error) noexcept override { _inner->on_recv_error(conn, error); }
    void on_flushed_close(ring::conn_id conn) noexcept override { _inner->on_flushed_close(conn); }
    void on_recv_paused(ring::conn_id conn) noexcept override { _inner->on_recv_paused(conn); }
    void on_message(const ring::message& m) noexcept override { _inner->on_message(m); }
    void discard_message(const ring::message& m) noexcept override { _inner->discard_message(m); }
    bool on_turn_end() noexcept override { return _inner->on_turn_end(); }
    void on_stop() noexcept override { _inner->on_stop(); }
    void on_drain(std::uint64_t deadline_ns) noexcept override { _inner->on_drain(deadline_ns); }

private:
    struct conn_ws {
        std::uint32_t gen = 0;
        bool active = false;
        bool closing = false;            // our close frame is queued: no more input or data
        bool awaiting_peer_close = false;  // we closed first: the peer's close frame or FIN ends it
        std::uint64_t raw_left_bytes = 0;  // service output still passed through unframed
        std::optional<ws_decoder> decoder;
        // Unframed bytes not yet taken by the service: [0, plain_bytes) of a buffer that is
        // never zero-filled (a std::vector's resize would write every byte once more).
        std::unique_ptr<std::uint8_t[]> plain;
        std::size_t plain_bytes = 0;
        std::size_t plain_capacity_bytes = 0;
        std::string control_out;           // our pongs and close frame, not yet sent
    };

    conn_ws* find(ring::conn_id conn) noexcept;
    const conn_ws* find(ring::conn_id conn) const noexcept;
    void decode(ring::conn_id conn, conn_ws& st, std::span<const std::uint8_t> in) noexcept;
    // Hands the unframed bytes to the service; false when the connection is gone.
    bool offer_plain(ring::conn_id conn, conn_ws& st) noexcept;
    // Room for `more` bytes after plain_bytes.
    static void reserve_plain(conn_ws& st, std::size_t more);
    // Reads what comes after our close frame, looking only for the peer's close.
    void drain_closing(ring::conn_id conn, conn_ws& st, std::span<const std::uint8_t> in) noexcept;
    void queue_close(ring::conn_id conn, conn_ws& st, std::uint16_t status, std::string_view reason,
                     admin::ws_close_kind kind) noexcept;

    // The deadline of a close we started, waiting for the peer's answer: the WebSocket layer's
    // own timer (the DERP service uses 0 and 1, the TLS layer 2).
    static constexpr std::uint8_t timer_close = 3;
    static constexpr std::int64_t close_handshake_timeout_ns = 5'000'000'000;  // coder/websocket's

    ring::shard& _shard;
    std::unique_ptr<ring::service> _inner;
    std::vector<std::uint8_t> _discard;  // where data read while closing is unframed and dropped
    admin::derp_counters& _counters;
    ws_layer_config _config;
    std::vector<conn_ws> _conns;  // by slot
    ring::log_limiter _close_log{100'000'000, 50};
};

}  // namespace derp::server
