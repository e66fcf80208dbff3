// Blocking DERP test client for the integration tests (sockets, handshake, frames).
// Loopback TCP with poll deadlines (plain, or TLS through the project's engine in crypto/tls), the
// HTTP upgrade and handshake, frame reading, and the frames a client sends. Test code only: it throws std::runtime_error when a step it was asked to
// complete fails, which doctest reports as a failure with the message; steps that a test expects
// to fail return a status instead.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/frame.hh"
#include "core/key.hh"
#include "crypto/tls.hh"
#include "tests/unit/fixture_util.hh"

namespace derp::test {

using std::chrono::milliseconds;

inline constexpr milliseconds default_io_timeout{5000};

// How a socket operation ended.
enum class io_status : std::uint8_t {
    ok,
    eof,      // the peer closed (FIN) before the operation completed
    reset,    // ECONNRESET / EPIPE: the peer reset or is gone
    timeout,  // the deadline passed
};
std::string_view to_string(io_status status) noexcept;

// One non-blocking TCP connection to a loopback address driven with poll(2) deadlines. In TLS mode
// (connect_to with a context) the reads and writes below carry plaintext: the session's records
// are decrypted into a buffer and written sealed, so that the DERP code above is the same.
class tcp_conn {
public:
    tcp_conn() noexcept = default;
    explicit tcp_conn(int fd) noexcept : _fd(fd) {}
    tcp_conn(tcp_conn&& other) noexcept;
    tcp_conn& operator=(tcp_conn&& other) noexcept;
    tcp_conn(const tcp_conn&) = delete;
    tcp_conn& operator=(const tcp_conn&) = delete;
    ~tcp_conn();

    // Connects (TCP_NODELAY); throws when the connect fails or takes over 5 s. A positive
    // rcvbuf_bytes shrinks SO_RCVBUF first, so that a client that never reads fills up quickly.
    static tcp_conn connect_loopback(std::uint16_t port, int rcvbuf_bytes = 0);
    // Connects to ipv4:port the same way; with a TLS context, then completes the handshake
    // (verified as the context says) within 5 s, or throws with the session's error.
    static tcp_conn connect_to(std::string_view ipv4, std::uint16_t port, int rcvbuf_bytes = 0,
                               std::shared_ptr<tls::context> tls = nullptr);

    int fd() const noexcept { return _fd; }
    bool is_tls() const noexcept { return _tls != nullptr; }
    bool is_open() const noexcept { return _fd >= 0; }
    std::uint16_t local_port() const;

    io_status write_all(std::span<const std::uint8_t> data, milliseconds timeout = default_io_timeout);
    io_status write_all(std::string_view text, milliseconds timeout = default_io_timeout);
    // Exactly out.size() bytes, or the reason it could not.
    io_status read_exact(std::span<std::uint8_t> out, milliseconds timeout = default_io_timeout);
    // An HTTP response head up to and including the blank line (at most 16 KiB).
    io_status read_http_head(std::string& head, milliseconds timeout = default_io_timeout);

    struct close_wait {
        io_status status;   // eof or reset: closed; timeout: still open; never ok
        bytes data_before;  // bytes that arrived before the close (kept up to 1 MiB)
        std::size_t bytes_before = 0;
    };
    // Reads until the peer closes the connection or the deadline passes.
    close_wait wait_closed(milliseconds timeout);
    // True when nothing (no byte, no EOF) becomes readable within the timeout.
    bool quiet_for(milliseconds timeout);

    void shutdown_write() noexcept;  // TLS: a close_notify first
    void reset() noexcept;  // SO_LINGER 0, then close: the kernel sends RST
    void close() noexcept;

private:
    // Plain socket I/O; the public calls use these directly or through the TLS session.
    io_status write_raw(std::span<const std::uint8_t> data, std::chrono::steady_clock::time_point deadline);
    // TLS: one read from the socket fed to the session (plaintext to _plain, its answers
    // written back). ok when something was read, even if no plaintext came of it.
    io_status pull(std::chrono::steady_clock::time_point deadline);

    int _fd = -1;
    std::unique_ptr<tls::session> _tls;
    std::string _plain;           // TLS: decrypted bytes not yet consumed
    bool _tls_closed = false;     // TLS: close_notify came, or the session failed
    bool _tls_failed = false;
};

struct frame {
    std::uint8_t type = 0;
    bytes payload;
    bytes wire() const;  // header + payload
};

struct frame_read {
    io_status status = io_status::ok;
    frame f;
};

// Frames larger than this are treated as a broken stream (the Go client's 1 MiB limit).
frame_read read_frame(tcp_conn& conn, milliseconds timeout = default_io_timeout);

// The upgrade request a Go client sends; extra_headers is "Name: value\r\n" lines.
std::string upgrade_request(bool fast_start = false, std::string_view extra_headers = {},
                            std::string_view host = "127.0.0.1");
// A ClientInfo frame sealing json from client to server with a fresh random nonce.
bytes client_info_frame(const private_key& client, const node_key& server, std::string_view json);
// The plaintext of a ServerInfo frame, or nullopt when it is not one or does not open.
std::optional<std::string> open_server_info(const frame& f, const private_key& client,
                                            const node_key& server);
// The expected s2c frames, built with the core encoders.
bytes peer_gone_frame(const node_key& key, peer_gone_reason reason);
bytes peer_present_frame(const node_key& key, std::uint16_t port, std::uint8_t flags);  // 127.0.0.1
bytes recv_packet_frame(const node_key& src, std::span<const std::uint8_t> packet);

struct client_options {
    std::optional<private_key> key;  // a fresh random key when empty
    std::optional<key_mesh> mesh_key;
    bool can_ack_pings = false;
    bool fast_start = false;
    std::string extra_headers;
    int rcvbuf_bytes = 0;
    std::string address = "127.0.0.1";   // the server's IPv4 address (also the Host header)
    std::shared_ptr<tls::context> tls;   // TLS (made with tls::context::make_client) when set
    std::string server_info = R"({"version":2})";  // the ServerInfo JSON the handshake expects
};

// A DERP client after a complete handshake.
class derp_client {
public:
    // Connects and completes the handshake (101, ServerKey = server, ServerInfo that opens to
    // {"version":2}); throws with the failing step otherwise.
    static derp_client connect(std::uint16_t port, const node_key& server, client_options options = {});

    // Split form for tests that pipeline many handshakes: begin() connects and sends the
    // request (and ClientInfo in fast-start), then finish() reads the rest.
    static derp_client begin(std::uint16_t port, const node_key& server, client_options options = {});
    void finish();

    const node_key& key() const noexcept { return _key; }
    const private_key& secret() const noexcept { return _secret; }
    tcp_conn& conn() noexcept { return _conn; }
    std::uint16_t local_port() const { return _conn.local_port(); }

    void send_raw(std::span<const std::uint8_t> data);  // throws unless all bytes were written
    void send_packet(const node_key& dst, std::span<const std::uint8_t> packet);
    void send_forward_packet(const node_key& src, const node_key& dst, std::span<const std::uint8_t> packet);
    void send_ping(const ping_data& data);
    void send_watch_conns();
    void send_close_peer(const node_key& peer);
    void send_note_preferred(bool preferred);

    // The next frame; KeepAlives are skipped (and counted) unless keep_alives is true.
    frame_read next(milliseconds timeout = default_io_timeout, bool keep_alives = false);
    // Reads frames until one satisfies match; the others are appended to skipped (if given).
    // Throws when the stream ends or the deadline passes first.
    frame expect(const std::function<bool(const frame&)>& match, std::string_view what,
                 milliseconds timeout = default_io_timeout, std::vector<frame>* skipped = nullptr);
    // The next RecvPacket (other frames are skipped into skipped); throws on timeout.
    recv_packet_view expect_recv_packet(bytes& storage, milliseconds timeout = default_io_timeout,
                                        std::vector<frame>* skipped = nullptr);

    std::size_t keep_alives_seen() const noexcept { return _keep_alives; }

private:
    derp_client(tcp_conn conn, const private_key& secret, const node_key& server, client_options options);

    tcp_conn _conn;
    private_key _secret;
    node_key _key;
    node_key _server;
    client_options _options;
    std::size_t _keep_alives = 0;
};

// Sends text from `from` to `to` and checks (doctest CHECKs) that `to` receives exactly it,
// from `from`, within the timeout.
void expect_relayed(derp_client& from, derp_client& to, std::string_view text, milliseconds timeout = milliseconds(5000));

// A client-info JSON as the Go client writes it.
std::string client_info_json(const std::optional<key_mesh>& mesh_key = std::nullopt,
                             bool can_ack_pings = false);

}  // namespace derp::test
