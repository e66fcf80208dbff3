// TLS as a layer between the shard and a service: it takes the ciphertext the shard received,
// hands the service plaintext, and encrypts what the service writes straight into the
// registered send buffer. The service above (the DERP server, the client library) is the same
// code over plain TCP and over TLS. After the handshake a server connection moves to kTLS
// where the kernel has it (TX at once, RX at the next record boundary with receiving paused),
// and frees its OpenSSL state once both directions are in the kernel; where it does not, the
// userspace record layer (crypto/tls_record.hh) takes over right behind the client's Finished
// and the SSL object is freed at once.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "crypto/ktls.hh"
#include "crypto/tls.hh"
#include "crypto/tls_places.hh"
#include "crypto/tls_record.hh"
#include "ring/counters.hh"
#include "ring/log.hh"
#include "ring/service.hh"
#include "ring/shard.hh"

namespace derp::tls {

// Per-shard TLS counters (single writer: the shard), read by /debug/varz.
struct alignas(ring::cache_line_bytes) tls_counters {
    ring::counter handshakes_ok;
    ring::counter handshakes_failed;    // bad ClientHello, SNI refused, alert, ...
    ring::counter handshakes_timeout;   // not finished within the deadline
    ring::counter handshakes_in_flight; // gauge: server handshakes holding a place
    ring::counter handshakes_waiting;   // gauge: ClientHellos waiting for a place
    ring::counter path_ktls;            // both directions in the kernel
    ring::counter path_ktls_tx;         // TX in the kernel, RX stayed in userspace
    ring::counter path_userspace;       // OpenSSL records for the whole connection
    ring::counter path_userspace_records;  // the userspace record layer; the SSL object freed
    ring::counter ktls_install_failed;  // setsockopt refused (connection stayed userspace)
    ring::counter ktls_control_records; // alerts/KeyUpdates read under kTLS RX
    ring::counter version_tls12;        // handshakes completed by version
    ring::counter version_tls13;
    ring::counter open_tls12;           // gauges: open TLS connections by version
    ring::counter open_tls13;
    ring::counter records_failed;       // a record that did not decrypt or parse after the handshake
    ring::counter acme_tls_alpn_handshakes;  // TLS-ALPN-01 validations answered (closed after the handshake)
    // Connections on the userspace record layer that ended on a record, by reason
    // (crypto/tls_record.hh record_close; index 0, none, stays 0).
    std::array<ring::counter, record_close_count> record_closes;
};

// The context new connections get. The admin thread swaps it on a certificate reload;
// connections keep the one they started with.
struct context_slot {
    std::atomic<std::shared_ptr<context>> current;
};

struct tls_layer_config {
    bool client = false;                  // outgoing connections (derpbench, derpprobe)
    std::uint8_t tls_listener_tag = 1;    // server: listeners with this tag speak TLS
    std::shared_ptr<const context_slot> contexts;  // kept alive by every shard's layer
    ktls_mode ktls = ktls_mode::automatic;
    bool kernel_has_ktls = false;
    std::int64_t handshake_timeout_ns = 10'000'000'000;
    std::uint32_t plaintext_buffered_max = 1u << 20;  // decrypted bytes the service left unread
    // Server handshakes a shard runs at once, counted from the ClientHello's first whole
    // record (a connection that sends nothing, or only part of it, holds no place and no SSL
    // object). A burst beyond this
    // waits with its ClientHello unread (in the kernel, or the bytes the shard already holds):
    // each handshake in flight holds about 40 KB of OpenSSL state, which otherwise all 10,000
    // of a burst hold together. A peer stalling mid-handshake holds its place until the
    // handshake deadline, as it holds its memory.
    std::uint32_t handshakes_in_flight_max = 512;
    // Of those, at most this many from one source (an IPv4 address, an IPv6 /64); 0 = no
    // bound. Peers that send a whole ClientHello and stall then hold at most this many places
    // per address until the handshake deadline (crypto/tls_places).
    std::uint32_t handshakes_per_source_max = 64;
};

class tls_layer final : public ring::service {
public:
    static constexpr std::uint8_t timer_handshake = 2;  // the service above uses 0 and 1

    tls_layer(ring::shard& sh, std::unique_ptr<ring::service> inner, tls_layer_config config,
              tls_counters& counters);
    ~tls_layer() override;

    ring::service& inner() noexcept { return *_inner; }
    // What the service above may ask about its connection.
    bool is_tls(ring::conn_id conn) const noexcept;
    std::uint16_t tls_version(ring::conn_id conn) const noexcept;  // 0 before the handshake
    std::string_view path(ring::conn_id conn) const noexcept;      // "ktls", "userspace", ...
    // Client side: the server key from the meta certificate (fast start), if any.
    std::optional<node_key> peer_meta_key(ring::conn_id conn) const noexcept;
    std::int64_t peer_leaf_not_after_unix(ring::conn_id conn) const noexcept;
    // Client side: the context an outgoing connection handshakes with instead of the
    // configured one (the mesh dials several names, each its own SNI and verification name).
    // Call right after shard::connect(), before the connection completes.
    void use_context(ring::conn_id conn, std::shared_ptr<context> ctx) noexcept;

    void on_accept(ring::conn_id conn, const sockaddr_storage& peer) noexcept override;
    void on_connect(ring::conn_id conn, int error) noexcept override;
    std::size_t on_data(ring::conn_id conn, std::span<const std::uint8_t> bytes) noexcept override;
    std::size_t on_writable(ring::conn_id conn, std::span<std::uint8_t> out) noexcept override;
    void on_datagram(std::uint32_t socket_index, const sockaddr_storage& from,
                     std::span<const std::uint8_t> payload, bool truncated) noexcept override {
        _inner->on_datagram(socket_index, from, payload, truncated);
    }
    void on_timer(ring::conn_id conn, std::uint8_t timer_id) noexcept override;
    void on_closed(ring::conn_id conn, ring::close_cause cause) noexcept override;
    void on_recv_error(ring::conn_id conn, int error) noexcept override;
    void on_flushed_close(ring::conn_id conn) noexcept override;
    void on_recv_paused(ring::conn_id conn) noexcept override;
    void on_message(const ring::message& m) noexcept override { _inner->on_message(m); }
    void discard_message(const ring::message& m) noexcept override { _inner->discard_message(m); }
    bool on_turn_end() noexcept override { return _inner->on_turn_end(); }
    void on_stop() noexcept override { _inner->on_stop(); }
    void on_drain(std::uint64_t deadline_ns) noexcept override { _inner->on_drain(deadline_ns); }

private:
    struct conn_tls {
        std::uint32_t gen = 0;
        bool active = false;          // a TLS connection (else: plain, passed through)
        bool ktls_tx = false;
        bool ktls_rx = false;
        bool ktls_tx_pending = false; // install TX once the handshake bytes have left
        bool ulp_attached = false;    // TCP_ULP "tls" is set (once per socket)
        bool rx_pause_pending = false;
        bool path_counted = false;
        bool counted_full = false;
        bool waiting = false;         // server: no session yet (nothing received, or queued)
        bool queued = false;          // waiting in _places: its ClientHello came beyond a bound
        bool waiting_paused = false;  // ... and its receiving is paused until its turn
        bool in_flight = false;       // holds a handshake place (_places)
        std::uint64_t source = 0;     // server: the peer's source, for the per-source bound
        std::uint8_t rx_attempts = 0;
        std::uint16_t version = 0;
        std::unique_ptr<session> tls;  // null once both directions are in the kernel, or records took over
        std::unique_ptr<record_layer> records;  // server without kTLS: records after the handshake
        std::string partial;                    // records: the incomplete record a read ended in
        std::string plain;             // decrypted, not yet taken by the service above
        std::string cipher_out;        // records waiting for a send buffer
        std::shared_ptr<context> connect_context;  // use_context(), until the connect completes
    };

    conn_tls* find(ring::conn_id conn) noexcept;
    const conn_tls* find(ring::conn_id conn) const noexcept;
    void handshake_done(ring::conn_id conn, conn_tls& st) noexcept;
    void offer_plaintext(ring::conn_id conn, conn_tls& st) noexcept;
    void fail(ring::conn_id conn, conn_tls& st, std::string_view what) noexcept;
    bool install_tx(ring::conn_id conn, conn_tls& st) noexcept;
    // Puts one direction into the kernel (attaching the tls ULP first, once per socket):
    // nothing on success, else why not.
    std::string install_direction(ring::conn_id conn, conn_tls& st, const std::optional<ktls_keys>& keys,
                                  bool transmit) noexcept;
    void maybe_release_session(conn_tls& st) noexcept;
    void maybe_forget_secrets(conn_tls& st) noexcept;
    void settle_path(ring::conn_id conn, conn_tls& st) noexcept;
    // Server handshakes in flight: a session for an accepted connection, the count given back
    // when its handshake ends either way, and waiting connections let in behind it.
    void start_handshake(conn_tls& st) noexcept;
    // True while bytes (not empty) are the start of a TLS handshake record not yet whole.
    static bool client_hello_incomplete(std::span<const std::uint8_t> bytes) noexcept;
    void leave_handshake(conn_tls& st) noexcept;
    void admit_waiting() noexcept;
    void publish_places() noexcept;  // the two gauges from _places
    // The SSL object gives way to the record layer (false: the export failed; OpenSSL stays).
    bool start_records(ring::conn_id conn, conn_tls& st) noexcept;
    // Opens the records of `bytes` and hands their plaintext up; a partial record at the end
    // is kept in conn_tls::partial. Returns bytes.size().
    std::size_t records_data(ring::conn_id conn, conn_tls& st, std::span<const std::uint8_t> bytes) noexcept;

    ring::shard& _shard;
    std::unique_ptr<ring::service> _inner;
    tls_layer_config _config;
    tls_counters& _counters;
    std::vector<conn_tls> _conns;          // by slot
    handshake_places _places;  // server handshakes in flight and the connections waiting for a place
    std::size_t _waiting_live = 0;  // connections queued in _places and still open
    bool _admitting = false;
    std::vector<std::uint8_t> _plain_out;  // what the service writes before encryption
    ring::log_limiter _fail_log{1'000'000'000, 20};
};

}  // namespace derp::tls
