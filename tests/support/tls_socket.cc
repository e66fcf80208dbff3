// The blocking TLS test client (see tls_socket.hh).
#include "tests/support/tls_socket.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace derp::test {
namespace {

bool write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

// One wait for input; "" on timeout, nullopt-like eof flag on close.
std::string read_once(int fd, int timeout_ms, bool& eof) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return {};
    char buffer[65536];
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) {
        eof = true;
        return {};
    }
    return std::string(buffer, static_cast<std::size_t>(n));
}

std::span<const std::uint8_t> bytes_of(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

}  // namespace

tls_socket::~tls_socket() {
    if (_fd >= 0) ::close(_fd);
}

result<std::unique_ptr<tls_socket>, std::string> tls_socket::open(std::uint16_t port, std::shared_ptr<tls::context> ctx,
                                                                  std::string_view first_write, int timeout_ms) {
    std::unique_ptr<tls_socket> s(new tls_socket());
    s->_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s->_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        return unexpected(fmt::format("connect: {}", std::strerror(errno)));
    const int one = 1;
    ::setsockopt(s->_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->_session = std::make_unique<tls::session>(std::move(ctx), false);
    std::string out, plain;
    s->_session->start(out);
    while (s->_session->state() == tls::status::handshaking) {
        if (!out.empty() && !write_all(s->_fd, out)) return unexpected(std::string("write during handshake failed"));
        out.clear();
        std::string in = read_once(s->_fd, timeout_ms, s->_eof);
        if (in.empty()) return unexpected(std::string(s->_eof ? "server closed during the handshake" : "handshake timed out"));
        s->_session->feed(bytes_of(in), plain, out);
    }
    if (s->_session->state() == tls::status::failed) return unexpected("handshake: " + s->_session->error());
    // The Finished (in `out`) and the first application records leave in one write.
    if (!first_write.empty()) {
        std::vector<std::uint8_t> records(first_write.size() + 1024);
        std::string spill;
        const std::size_t n = s->_session->write(bytes_of(first_write), records, spill);
        out.append(reinterpret_cast<const char*>(records.data()), n);
        out += spill;
    }
    if (!out.empty() && !write_all(s->_fd, out)) return unexpected(std::string("write after the handshake failed"));
    return s;
}

bool tls_socket::send(std::string_view plaintext) {
    std::vector<std::uint8_t> records(plaintext.size() + 1024);
    std::string spill;
    const std::size_t n = _session->write(bytes_of(plaintext), records, spill);
    return write_all(_fd, std::string_view(reinterpret_cast<const char*>(records.data()), n)) && write_all(_fd, spill);
}

bool tls_socket::send_raw(std::string_view bytes) { return write_all(_fd, bytes); }

std::string tls_socket::read_available(int timeout_ms) {
    std::string plain, out;
    std::string in = read_once(_fd, timeout_ms, _eof);
    if (!in.empty()) {
        const auto status = _session->feed(bytes_of(in), plain, out);
        if (status == tls::status::closed || status == tls::status::failed) _eof = true;
    }
    return plain;
}

std::string tls_socket::http_get(std::string_view path, std::string_view host) {
    send(fmt::format("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", path, host));
    return read_until([](const std::string&) { return false; });
}

void tls_socket::close_notify() {
    std::string out;
    _session->shutdown(out);
    write_all(_fd, out);
}

std::shared_ptr<tls::context> insecure_client_context(int max_version, std::string tls13_suites, std::string tls12_ciphers,
                                                      std::string server_name) {
    tls::context::client_options o;
    o.server_name = std::move(server_name);
    o.verify = tls::context::verify_mode::insecure;
    o.max_version = max_version;
    o.tls13_ciphersuites = std::move(tls13_suites);
    o.tls12_ciphers = std::move(tls12_ciphers);
    auto ctx = tls::context::make_client(o);
    if (!ctx) throw std::runtime_error(ctx.error());
    return ctx.value();
}

}  // namespace derp::test
