// Blocking HTTPS requests for the ACME client and derpprobe (see https_client.hh).
#include "crypto/https_client.hh"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "core/acme.hh"
#include "core/http_request.hh"

namespace derp::tls {
namespace {

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Closes the socket however the request ends.
struct socket_guard {
    int fd = -1;
    ~socket_guard() {
        if (fd >= 0) ::close(fd);
    }
};

enum class wait_result { ready, timeout, stopped, error };

// Waits until fd has `events`, the deadline passes, or the stop descriptor fires.
wait_result wait_for(int fd, short events, std::int64_t deadline_ns, int stop_fd) {
    for (;;) {
        const std::int64_t left_ns = deadline_ns - now_ns();
        if (left_ns <= 0) return wait_result::timeout;
        pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
        const int n = ::poll(fds, stop_fd >= 0 ? 2 : 1, static_cast<int>(std::min<std::int64_t>(left_ns / 1'000'000 + 1, 60'000)));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return wait_result::error;
        if (stop_fd >= 0 && (fds[1].revents & POLLIN) != 0) return wait_result::stopped;
        if (fds[0].revents != 0) return wait_result::ready;
    }
}

std::string waited(wait_result w, const char* step) {
    switch (w) {
        case wait_result::timeout: return fmt::format("timed out ({})", step);
        case wait_result::stopped: return "stopped";
        default: return fmt::format("{}: {}", step, std::strerror(errno));
    }
}

bool send_all(int fd, std::string_view bytes, std::int64_t deadline_ns, int stop_fd, std::string& error) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n > 0) {
            bytes.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (auto w = wait_for(fd, POLLOUT, deadline_ns, stop_fd); w != wait_result::ready) {
                error = waited(w, "sending");
                return false;
            }
            continue;
        }
        error = fmt::format("sending: {}", std::strerror(errno));
        return false;
    }
    return true;
}

// Reads what is there (after waiting for it): "" with eof set when the peer closed.
bool receive(int fd, std::string& into, bool& eof, std::int64_t deadline_ns, int stop_fd, std::string& error) {
    if (auto w = wait_for(fd, POLLIN, deadline_ns, stop_fd); w != wait_result::ready) {
        error = waited(w, "waiting for the response");
        return false;
    }
    char buffer[16384];
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n == 0) {
        eof = true;
        return true;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return true;
        error = fmt::format("receiving: {}", std::strerror(errno));
        return false;
    }
    into.append(buffer, static_cast<std::size_t>(n));
    return true;
}

std::span<const std::uint8_t> bytes_of(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// A non-blocking TCP connection to host:port within the deadline, trying each address.
result<int, std::string> dial(const std::string& host, std::uint16_t port, std::int64_t deadline_ns, int stop_fd) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo* found = nullptr;
    // getaddrinfo has no deadline of its own; the resolver's (resolv.conf timeout x attempts)
    // bounds it. It runs on the ACME thread only.
    const std::string service = std::to_string(port);
    if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0)
        return unexpected(fmt::format("resolving {}: {}", host, ::gai_strerror(rc)));
    std::string last = "no address";
    int result_fd = -1;
    for (addrinfo* a = found; a != nullptr && result_fd < 0; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = std::strerror(errno);
            continue;
        }
        if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            last = std::strerror(errno);
            ::close(fd);
            continue;
        }
        const wait_result w = wait_for(fd, POLLOUT, deadline_ns, stop_fd);
        int error = 0;
        socklen_t length = sizeof error;
        if (w == wait_result::ready) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (w != wait_result::ready || error != 0) {
            last = w == wait_result::ready ? std::strerror(error) : waited(w, "connecting");
            ::close(fd);
            if (w == wait_result::stopped || w == wait_result::timeout) break;
            continue;
        }
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        result_fd = fd;
    }
    ::freeaddrinfo(found);
    if (result_fd < 0) return unexpected(fmt::format("connecting to {}:{}: {}", host, port, last));
    return result_fd;
}

}  // namespace

https_client::https_client(std::string ca_file, std::int64_t request_timeout_ns, int stop_fd)
    : _ca_file(std::move(ca_file)), _request_timeout_ns(request_timeout_ns), _stop_fd(stop_fd) {}

result<std::shared_ptr<tls::context>, std::string> https_client::context_for(const std::string& host) {
    if (auto it = _contexts.find(host); it != _contexts.end()) return it->second;
    tls::context::client_options options;
    options.server_name = host;
    options.verify = tls::context::verify_mode::system;
    options.ca_file = _ca_file;
    auto ctx = tls::context::make_client(options);
    if (!ctx) return unexpected(ctx.error());
    _contexts.emplace(host, ctx.value());
    return ctx.value();
}

result<https_response, std::string> https_client::request(std::string_view method, std::string_view url,
                                                          std::string_view content_type, std::string_view body,
                                                          std::size_t body_bytes_max, std::string_view accept) {
    auto target = acme::parse_https_url(url);
    if (!target) return unexpected(target.error());
    const std::int64_t deadline_ns = now_ns() + _request_timeout_ns;
    auto ctx = context_for(target->host);
    if (!ctx) return unexpected(ctx.error());
    auto fd = dial(target->host, target->port, deadline_ns, _stop_fd);
    if (!fd) return unexpected(fd.error());
    socket_guard guard{fd.value()};

    // The TLS handshake.
    tls::session session(ctx.value(), false);
    std::string out, plain, in, error;
    bool eof = false;
    session.start(out);
    while (session.state() == tls::status::handshaking) {
        if (!out.empty() && !send_all(guard.fd, out, deadline_ns, _stop_fd, error)) return unexpected("TLS: " + error);
        out.clear();
        in.clear();
        if (!receive(guard.fd, in, eof, deadline_ns, _stop_fd, error)) return unexpected("TLS: " + error);
        if (eof) return unexpected(std::string("TLS: the server closed during the handshake"));
        session.feed(bytes_of(in), plain, out);
    }
    if (session.state() == tls::status::failed) return unexpected("TLS: " + session.error());

    // The request: HTTP/1.1, one per connection.
    std::string request_text = fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: derpd-acme\r\nConnection: close\r\n",
                                           method, target->target, target->host_header);
    if (!accept.empty()) request_text += fmt::format("Accept: {}\r\n", accept);
    if (method == "POST")
        request_text += fmt::format("Content-Type: {}\r\nContent-Length: {}\r\n", content_type, body.size());
    request_text += "\r\n";
    request_text += body;
    std::vector<std::uint8_t> records(request_text.size() + 1024);
    std::string spill;
    const std::size_t n = session.write(bytes_of(request_text), records, spill);
    out.append(reinterpret_cast<const char*>(records.data()), n);
    out += spill;
    if (!send_all(guard.fd, out, deadline_ns, _stop_fd, error)) return unexpected(error);

    // The response: a head, then a body framed by Content-Length, chunked, or the close.
    https_response response;
    std::string received;
    bool head_done = false;
    std::size_t content_length = 0;
    enum class framing { length, chunked, close } frame = framing::close;
    for (;;) {
        if (!head_done) {
            const auto verdict = parse_http_response_head(received, response.head);
            if (verdict.state == http_response_parse::error) return unexpected("response: " + verdict.error);
            if (verdict.state == http_response_parse::complete) {
                head_done = true;
                response.status = response.head.status;
                received.erase(0, response.head.head_bytes);
                const auto te = response.head.field("Transfer-Encoding");
                const auto cl = response.head.field("Content-Length");
                if (method == "HEAD" || response.status == 204 || response.status == 304) {
                    return response;
                } else if (te && ascii_iequals(*te, "chunked")) {
                    frame = framing::chunked;
                } else if (te) {
                    return unexpected(fmt::format("response: Transfer-Encoding {} not supported", *te));
                } else if (cl) {
                    std::uint64_t length = 0;
                    auto [p, ec] = std::from_chars(cl->data(), cl->data() + cl->size(), length);
                    if (ec != std::errc() || p != cl->data() + cl->size())
                        return unexpected(std::string("response: bad Content-Length"));
                    if (length > body_bytes_max)
                        return unexpected(fmt::format("response: body of {} bytes refused (over {})", length, body_bytes_max));
                    content_length = static_cast<std::size_t>(length);
                    frame = framing::length;
                }
            }
        }
        if (head_done) {
            if (frame == framing::length && received.size() >= content_length) {
                response.body = received.substr(0, content_length);
                return response;
            }
            if (frame == framing::chunked) {
                const auto verdict = decode_chunked(received, body_bytes_max, response.body);
                if (verdict.state == http_response_parse::error) return unexpected("response: " + verdict.error);
                if (verdict.state == http_response_parse::complete) return response;
            }
            if (received.size() > body_bytes_max + 64 * 1024)
                return unexpected(fmt::format("response: body over {} bytes refused", body_bytes_max));
        } else if (received.size() > http_response_head_bytes_max) {
            return unexpected(fmt::format("response: head over {} bytes refused", http_response_head_bytes_max));
        }
        if (eof || session.state() == tls::status::closed) {
            if (head_done && frame == framing::close) {
                if (received.size() > body_bytes_max)
                    return unexpected(fmt::format("response: body over {} bytes refused", body_bytes_max));
                response.body = std::move(received);
                return response;
            }
            return unexpected(std::string(head_done ? "response: the server closed before the whole body"
                                                    : "response: the server closed before answering"));
        }
        in.clear();
        if (!receive(guard.fd, in, eof, deadline_ns, _stop_fd, error)) return unexpected(error);
        out.clear();
        if (!in.empty() && session.feed(bytes_of(in), received, out) == tls::status::failed)
            return unexpected("TLS: " + session.error());
        if (!out.empty() && !send_all(guard.fd, out, deadline_ns, _stop_fd, error)) return unexpected(error);
    }
}

}  // namespace derp::tls
