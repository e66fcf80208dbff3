// Implementation of the blocking DERP test client (see derp_test_client.hh).
// Sockets with poll deadlines and the client half of the DERP handshake, built on the pure codecs
// in core/ and the boxes in crypto/.
#include "tests/support/derp_test_client.hh"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "core/client_info.hh"
#include "core/handshake.hh"
#include "crypto/box.hh"

namespace derp::test {

namespace {

using clock_type = std::chrono::steady_clock;

// Milliseconds left until deadline for poll(2), at least 0.
int poll_ms_left(clock_type::time_point deadline) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now()).count();
    return left <= 0 ? 0 : static_cast<int>(left);
}

// Waits for events on fd until deadline; false on timeout.
bool wait_for(int fd, short events, clock_type::time_point deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, poll_ms_left(deadline));
        if (n > 0) return true;
        if (n == 0) return false;
        if (errno != EINTR) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    }
}

bool is_reset_errno(int err) noexcept {
    return err == ECONNRESET || err == EPIPE || err == ECONNABORTED;
}

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(what);
}

void ensure_crypto() {
    if (!crypto_init()) fail("libsodium failed to initialise");
}

}  // namespace

std::string_view to_string(io_status status) noexcept {
    switch (status) {
        case io_status::ok:
            return "ok";
        case io_status::eof:
            return "eof";
        case io_status::reset:
            return "reset";
        case io_status::timeout:
            return "timeout";
    }
    return "?";
}

// ---- tcp_conn ---------------------------------------------------------------------------------

tcp_conn::tcp_conn(tcp_conn&& other) noexcept
    : _fd(std::exchange(other._fd, -1)),
      _tls(std::move(other._tls)),
      _plain(std::move(other._plain)),
      _tls_closed(other._tls_closed),
      _tls_failed(other._tls_failed) {}

tcp_conn& tcp_conn::operator=(tcp_conn&& other) noexcept {
    if (this != &other) {
        close();
        _fd = std::exchange(other._fd, -1);
        _tls = std::move(other._tls);
        _plain = std::move(other._plain);
        _tls_closed = other._tls_closed;
        _tls_failed = other._tls_failed;
    }
    return *this;
}

tcp_conn::~tcp_conn() {
    close();
}

tcp_conn tcp_conn::connect_loopback(std::uint16_t port, int rcvbuf_bytes) {
    return connect_to("127.0.0.1", port, rcvbuf_bytes);
}

tcp_conn tcp_conn::connect_to(std::string_view ipv4, std::uint16_t port, int rcvbuf_bytes,
                              std::shared_ptr<tls::context> tls) {
    const std::string where = std::string(ipv4) + ":" + std::to_string(port);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::inet_pton(AF_INET, std::string(ipv4).c_str(), &addr.sin_addr) != 1)
        fail("connect: not an IPv4 address: " + std::string(ipv4));
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail(std::string("socket: ") + std::strerror(errno));
    tcp_conn conn(fd);
    if (rcvbuf_bytes > 0) ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_bytes, sizeof rcvbuf_bytes);
    // Linux bounds a blocking connect by SO_SNDTIMEO.
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        fail("connect to " + where + ": " + std::strerror(errno));
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    if (!tls) return conn;

    // The handshake, driven as tls_socket does: every flight the session produces is written,
    // then one read is fed back, until the session is open or has failed.
    const auto deadline = clock_type::now() + default_io_timeout;
    conn._tls = std::make_unique<tls::session>(std::move(tls), false);
    std::string out;
    conn._tls->start(out);
    while (conn._tls->state() == tls::status::handshaking) {
        if (!out.empty()) {
            const io_status st =
                conn.write_raw({reinterpret_cast<const std::uint8_t*>(out.data()), out.size()}, deadline);
            if (st != io_status::ok) fail("TLS handshake with " + where + ": write: " + std::string(to_string(st)));
            out.clear();
        }
        const io_status st = conn.pull(deadline);
        if (st != io_status::ok && conn._tls->state() == tls::status::handshaking)
            fail("TLS handshake with " + where + ": " + std::string(to_string(st)));
    }
    if (conn._tls->state() != tls::status::open || !conn._tls->handshake_complete())
        fail("TLS handshake with " + where + " failed: " + conn._tls->error());
    return conn;
}

std::uint16_t tcp_conn::local_port() const {
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        fail(std::string("getsockname: ") + std::strerror(errno));
    return ntohs(addr.sin_port);
}

io_status tcp_conn::write_raw(std::span<const std::uint8_t> data, clock_type::time_point deadline) {
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::send(_fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_for(_fd, POLLOUT, deadline)) return io_status::timeout;
            continue;
        }
        if (n < 0 && is_reset_errno(errno)) return io_status::reset;
        fail(std::string("send: ") + std::strerror(errno));
    }
    return io_status::ok;
}

io_status tcp_conn::pull(clock_type::time_point deadline) {
    std::array<std::uint8_t, 65536> buf;
    for (;;) {
        const ssize_t n = ::recv(_fd, buf.data(), buf.size(), 0);
        if (n == 0) return io_status::eof;
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!wait_for(_fd, POLLIN, deadline)) return io_status::timeout;
                continue;
            }
            if (is_reset_errno(errno)) return io_status::reset;
            fail(std::string("recv: ") + std::strerror(errno));
        }
        std::string answer;
        const tls::status st = _tls->feed({buf.data(), static_cast<std::size_t>(n)}, _plain, answer);
        if (!answer.empty()) {
            // Alerts or handshake flights; a peer that is gone is seen by the next read.
            (void)write_raw({reinterpret_cast<const std::uint8_t*>(answer.data()), answer.size()}, deadline);
        }
        if (st == tls::status::closed) _tls_closed = true;
        if (st == tls::status::failed) {
            _tls_closed = true;
            _tls_failed = true;
        }
        return io_status::ok;
    }
}

io_status tcp_conn::write_all(std::span<const std::uint8_t> data, milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    if (!_tls) return write_raw(data, deadline);
    if (_tls_failed || _tls->state() != tls::status::open) return io_status::reset;
    // Records of at most 16 KiB plaintext, each with under 256 bytes of header, padding and tag;
    // anything the buffer misses goes to spill and is written right after it.
    std::vector<std::uint8_t> records(data.size() + (data.size() / 16384 + 1) * 256);
    std::string spill;
    const std::size_t n = _tls->write(data, records, spill);
    const io_status st = write_raw({records.data(), n}, deadline);
    if (st != io_status::ok || spill.empty()) return st;
    return write_raw({reinterpret_cast<const std::uint8_t*>(spill.data()), spill.size()}, deadline);
}

io_status tcp_conn::write_all(std::string_view text, milliseconds timeout) {
    return write_all({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}, timeout);
}

io_status tcp_conn::read_exact(std::span<std::uint8_t> out, milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    if (_tls) {
        while (_plain.size() < out.size()) {
            if (_tls_closed) return _tls_failed ? io_status::reset : io_status::eof;
            const io_status st = pull(deadline);
            if (st != io_status::ok) return st;
        }
        if (!out.empty()) std::memcpy(out.data(), _plain.data(), out.size());  // (an empty span's data may be null)
        _plain.erase(0, out.size());
        return io_status::ok;
    }
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = ::recv(_fd, out.data() + done, out.size() - done, 0);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (n == 0) return io_status::eof;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!wait_for(_fd, POLLIN, deadline)) return io_status::timeout;
            continue;
        }
        if (is_reset_errno(errno)) return io_status::reset;
        fail(std::string("recv: ") + std::strerror(errno));
    }
    return io_status::ok;
}

io_status tcp_conn::read_http_head(std::string& head, milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    head.clear();
    while (head.size() < 16384) {
        std::uint8_t byte = 0;
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now());
        const io_status st = read_exact({&byte, 1}, left.count() > 0 ? left : milliseconds(0));
        if (st != io_status::ok) return st;
        head.push_back(static_cast<char>(byte));
        if (head.size() >= 4 && head.compare(head.size() - 4, 4, "\r\n\r\n") == 0) return io_status::ok;
    }
    fail("HTTP response head longer than 16 KiB");
}

tcp_conn::close_wait tcp_conn::wait_closed(milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    close_wait out{io_status::timeout, {}, 0};
    const auto keep = [&out](const std::uint8_t* data, std::size_t n) {
        out.bytes_before += n;
        if (out.data_before.size() < (1u << 20)) out.data_before.insert(out.data_before.end(), data, data + n);
    };
    if (_tls) {
        for (;;) {
            keep(reinterpret_cast<const std::uint8_t*>(_plain.data()), _plain.size());
            _plain.clear();
            if (_tls_closed) {
                out.status = _tls_failed ? io_status::reset : io_status::eof;
                return out;
            }
            const io_status st = pull(deadline);
            if (st == io_status::timeout) return out;
            if (st != io_status::ok) {
                keep(reinterpret_cast<const std::uint8_t*>(_plain.data()), _plain.size());
                _plain.clear();
                out.status = st;
                return out;
            }
        }
    }
    std::vector<std::uint8_t> buf(65536);
    for (;;) {
        const ssize_t n = ::recv(_fd, buf.data(), buf.size(), 0);
        if (n > 0) {
            keep(buf.data(), static_cast<std::size_t>(n));
            continue;
        }
        if (n == 0) {
            out.status = io_status::eof;
            return out;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!wait_for(_fd, POLLIN, deadline)) return out;
            continue;
        }
        if (is_reset_errno(errno)) {
            out.status = io_status::reset;
            return out;
        }
        fail(std::string("recv: ") + std::strerror(errno));
    }
}

bool tcp_conn::quiet_for(milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    if (!_tls) return !wait_for(_fd, POLLIN, deadline);
    // Records that carry no plaintext (TLS 1.3 session tickets) do not break the quiet.
    for (;;) {
        if (!_plain.empty() || _tls_closed) return false;
        const io_status st = pull(deadline);
        if (st == io_status::timeout) return true;
        if (st != io_status::ok) return false;
    }
}

void tcp_conn::shutdown_write() noexcept {
    if (_fd < 0) return;
    if (_tls && _tls->state() == tls::status::open) {
        std::string alert;
        _tls->shutdown(alert);
        (void)::send(_fd, alert.data(), alert.size(), MSG_NOSIGNAL);
    }
    ::shutdown(_fd, SHUT_WR);
}

void tcp_conn::reset() noexcept {
    if (_fd < 0) return;
    const linger lg{1, 0};
    ::setsockopt(_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close();
}

void tcp_conn::close() noexcept {
    if (_fd >= 0) ::close(_fd);
    _fd = -1;
    _tls.reset();
    _plain.clear();
    _tls_closed = false;
    _tls_failed = false;
}

// ---- Frames -----------------------------------------------------------------------------------

bytes frame::wire() const {
    bytes out(frame_header_bytes + payload.size());
    encode_frame_header(out, static_cast<frame_type>(type), payload.size());
    std::copy(payload.begin(), payload.end(), out.begin() + frame_header_bytes);
    return out;
}

frame_read read_frame(tcp_conn& conn, milliseconds timeout) {
    const auto deadline = clock_type::now() + timeout;
    frame_read out;
    std::array<std::uint8_t, frame_header_bytes> header{};
    out.status = conn.read_exact(header, timeout);
    if (out.status != io_status::ok) return out;
    const auto parsed = parse_frame_header(header);
    if (parsed->payload_bytes > client_frame_payload_bytes_max)
        fail("server sent a frame of " + std::to_string(parsed->payload_bytes) + " bytes (type " +
             std::to_string(header[0]) + ")");
    out.f.type = header[0];
    out.f.payload.resize(parsed->payload_bytes);
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now());
    out.status = conn.read_exact(out.f.payload, left.count() > 0 ? left : milliseconds(0));
    return out;
}

std::string upgrade_request(bool fast_start, std::string_view extra_headers, std::string_view host) {
    std::string out =
        "GET /derp HTTP/1.1\r\n"
        "Host: " + std::string(host) + "\r\n"
        "User-Agent: Go-http-client/1.1\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: DERP\r\n";
    if (fast_start) out += "Derp-Fast-Start: 1\r\n";
    out += extra_headers;
    out += "\r\n";
    return out;
}

bytes client_info_frame(const private_key& client, const node_key& server, std::string_view json) {
    ensure_crypto();
    bytes sealed(json.size() + box_overhead_bytes);
    const auto n = box_seal(sealed, {reinterpret_cast<const std::uint8_t*>(json.data()), json.size()}, client,
                            server, random_nonce());
    if (!n) fail("box_seal refused the server key");
    sealed.resize(*n);
    bytes out(client_info_frame_bytes(sealed.size()));
    encode_client_info(out, public_key_of(client), sealed);
    return out;
}

std::optional<std::string> open_server_info(const frame& f, const private_key& client,
                                            const node_key& server) {
    if (f.type != static_cast<std::uint8_t>(frame_type::server_info)) return std::nullopt;
    const auto sealed = decode_server_info(f.payload);
    if (!sealed || sealed->size() < box_overhead_bytes) return std::nullopt;
    std::string plain(sealed->size() - box_overhead_bytes, '\0');
    const auto n =
        box_open({reinterpret_cast<std::uint8_t*>(plain.data()), plain.size()}, *sealed, client, server);
    if (!n) return std::nullopt;
    plain.resize(*n);
    return plain;
}

bytes peer_gone_frame(const node_key& key, peer_gone_reason reason) {
    bytes out(peer_gone_frame_bytes);
    encode_peer_gone(out, key, reason);
    return out;
}

bytes peer_present_frame(const node_key& key, std::uint16_t port, std::uint8_t flags) {
    bytes out(peer_present_frame_bytes);
    encode_peer_present(out, key, ipv4_mapped({127, 0, 0, 1}), port, flags);
    return out;
}

bytes recv_packet_frame(const node_key& src, std::span<const std::uint8_t> packet) {
    bytes out(recv_packet_frame_bytes(packet.size()));
    encode_recv_packet(out, src, packet);
    return out;
}

std::string client_info_json(const std::optional<key_mesh>& mesh_key, bool can_ack_pings) {
    client_info info;
    info.mesh_key = mesh_key;
    info.version = 2;
    info.can_ack_pings = can_ack_pings;
    return format_client_info_json(info);
}

// ---- derp_client ------------------------------------------------------------------------------

derp_client::derp_client(tcp_conn conn, const private_key& secret, const node_key& server,
                         client_options options)
    : _conn(std::move(conn)),
      _secret(secret),
      _key(public_key_of(secret)),
      _server(server),
      _options(std::move(options)) {}

derp_client derp_client::begin(std::uint16_t port, const node_key& server, client_options options) {
    ensure_crypto();
    const private_key secret = options.key ? *options.key : generate_private_key();
    derp_client c(tcp_conn::connect_to(options.address, port, options.rcvbuf_bytes, options.tls), secret, server,
                  options);
    std::string request = upgrade_request(options.fast_start, options.extra_headers, options.address);
    bytes out(request.begin(), request.end());
    if (options.fast_start) {
        const bytes info =
            client_info_frame(secret, server, client_info_json(options.mesh_key, options.can_ack_pings));
        out.insert(out.end(), info.begin(), info.end());
    }
    c.send_raw(out);
    return c;
}

void derp_client::finish() {
    if (!_options.fast_start) {
        std::string head;
        const io_status st = _conn.read_http_head(head);
        if (st != io_status::ok) fail("handshake: reading the 101 response: " + std::string(to_string(st)));
        if (head.rfind("HTTP/1.1 101 Switching Protocols\r\n", 0) != 0)
            fail("handshake: not a 101 response: " + head);
    }
    frame_read sk = read_frame(_conn);
    if (sk.status != io_status::ok)
        fail("handshake: reading ServerKey: " + std::string(to_string(sk.status)));
    const auto key = decode_server_key(sk.f.payload);
    if (sk.f.type != static_cast<std::uint8_t>(frame_type::server_key) || !key)
        fail("handshake: first frame is not a ServerKey: " + to_hex(sk.f.wire()));
    if (!_server.is_zero() && *key != _server)
        fail("handshake: ServerKey " + key->to_string() + " is not the server's");
    _server = *key;
    if (!_options.fast_start)
        send_raw(
            client_info_frame(_secret, _server, client_info_json(_options.mesh_key, _options.can_ack_pings)));
    frame_read si = read_frame(_conn);
    if (si.status != io_status::ok)
        fail("handshake: reading ServerInfo: " + std::string(to_string(si.status)));
    const auto json = open_server_info(si.f, _secret, _server);
    if (!json) fail("handshake: ServerInfo does not open: " + to_hex(si.f.wire()));
    if (*json != _options.server_info) fail("handshake: ServerInfo JSON is " + *json);
}

derp_client derp_client::connect(std::uint16_t port, const node_key& server, client_options options) {
    derp_client c = begin(port, server, std::move(options));
    c.finish();
    return c;
}

void derp_client::send_raw(std::span<const std::uint8_t> data) {
    const io_status st = _conn.write_all(data);
    if (st != io_status::ok) fail("send: " + std::string(to_string(st)));
}

void derp_client::send_packet(const node_key& dst, std::span<const std::uint8_t> packet) {
    bytes out(send_packet_frame_bytes(packet.size()));
    encode_send_packet(out, dst, packet);
    send_raw(out);
}

void derp_client::send_forward_packet(const node_key& src, const node_key& dst,
                                      std::span<const std::uint8_t> packet) {
    bytes out(forward_packet_frame_bytes(packet.size()));
    encode_forward_packet(out, src, dst, packet);
    send_raw(out);
}

void derp_client::send_ping(const ping_data& data) {
    std::array<std::uint8_t, ping_frame_bytes> out{};
    encode_ping(out, data);
    send_raw(out);
}

void derp_client::send_watch_conns() {
    std::array<std::uint8_t, watch_conns_frame_bytes> out{};
    encode_watch_conns(out);
    send_raw(out);
}

void derp_client::send_close_peer(const node_key& peer) {
    std::array<std::uint8_t, close_peer_frame_bytes> out{};
    encode_close_peer(out, peer);
    send_raw(out);
}

void derp_client::send_note_preferred(bool preferred) {
    std::array<std::uint8_t, note_preferred_frame_bytes> out{};
    encode_note_preferred(out, preferred);
    send_raw(out);
}

frame_read derp_client::next(milliseconds timeout, bool keep_alives) {
    const auto deadline = clock_type::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now());
        frame_read r = read_frame(_conn, left.count() > 0 ? left : milliseconds(0));
        if (r.status == io_status::ok && !keep_alives &&
            r.f.type == static_cast<std::uint8_t>(frame_type::keep_alive) && r.f.payload.empty()) {
            ++_keep_alives;
            continue;
        }
        return r;
    }
}

frame derp_client::expect(const std::function<bool(const frame&)>& match, std::string_view what,
                          milliseconds timeout, std::vector<frame>* skipped) {
    const auto deadline = clock_type::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now());
        frame_read r = next(left.count() > 0 ? left : milliseconds(0));
        if (r.status != io_status::ok)
            fail("waiting for " + std::string(what) + ": " + std::string(to_string(r.status)));
        if (match(r.f)) return std::move(r.f);
        if (skipped != nullptr) skipped->push_back(std::move(r.f));
    }
}

recv_packet_view derp_client::expect_recv_packet(bytes& storage, milliseconds timeout,
                                                 std::vector<frame>* skipped) {
    frame f =
        expect([](const frame& x) { return x.type == static_cast<std::uint8_t>(frame_type::recv_packet); },
               "RecvPacket", timeout, skipped);
    storage = std::move(f.payload);
    const auto view = decode_recv_packet(storage);
    if (!view) fail("malformed RecvPacket: " + to_hex(storage));
    return *view;
}

void expect_relayed(derp_client& from, derp_client& to, std::string_view text, milliseconds timeout) {
    from.send_packet(to.key(), {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    bytes storage;
    const auto got = to.expect_recv_packet(storage, timeout);
    CHECK(got.src == from.key());
    CHECK(std::string(got.packet.begin(), got.packet.end()) == text);
}

}  // namespace derp::test
