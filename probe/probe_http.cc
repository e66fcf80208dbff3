// derpprobe's HTTP listener (see probe_http.hh).
#include "probe/probe_http.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "core/http_request.hh"
#include "ring/listen.hh"

namespace derp::probe {
namespace {

constexpr int io_timeout_secs = 5;

const char* reason_phrase(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

bool send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

}  // namespace

result<std::unique_ptr<http_server>, std::string> http_server::start(const std::string& listen, http_handler handler) {
    auto parsed = ring::parse_listen_address(listen);
    if (!parsed) return unexpected("-listen: " + parsed.error());
    std::unique_ptr<http_server> server(new http_server());
    server->_handler = std::move(handler);
    for (ring::socket_address address : parsed.value()) {
        int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 && errno == EAFNOSUPPORT && address.family() == AF_INET6 &&
            IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&address.storage)->sin6_addr)) {
            // ":port" on a host without IPv6: the IPv4 wildcard, as Go's listener falls back.
            const std::uint16_t port = address.port();
            address = ring::socket_address{};
            auto* sin = reinterpret_cast<sockaddr_in*>(&address.storage);
            sin->sin_family = AF_INET;
            sin->sin_port = htons(port);
            address.length = sizeof(sockaddr_in);
            fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        }
        if (fd < 0) return unexpected(fmt::format("-listen {}: socket: {}", address.to_string(), std::strerror(errno)));
        server->_listen_fds.push_back(fd);
        const int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (address.family() == AF_INET6) {
            // ":port" binds the IPv6 wildcard; let it take IPv4 too, as Go's listener does.
            const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
            const int v6only = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? 0 : 1;
            ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
        }
        if (::bind(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0 ||
            ::listen(fd, 64) != 0)
            return unexpected(fmt::format("-listen {}: {}", address.to_string(), std::strerror(errno)));
        socklen_t length = sizeof address.storage;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address.storage), &length);
        address.length = length;
        server->_addresses.push_back(address.to_string());
    }
    server->_wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (server->_wake_fd < 0) return unexpected(fmt::format("eventfd: {}", std::strerror(errno)));
    server->_thread = std::thread([s = server.get()] { s->serve(); });
    return server;
}

http_server::~http_server() {
    stop();
    for (const int fd : _listen_fds) ::close(fd);
    if (_wake_fd >= 0) ::close(_wake_fd);
}

void http_server::stop() {
    if (!_thread.joinable()) return;
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(_wake_fd, &one, sizeof one);
    _thread.join();
}

void http_server::serve() {
    std::vector<pollfd> fds;
    for (const int fd : _listen_fds) fds.push_back({fd, POLLIN, 0});
    fds.push_back({_wake_fd, POLLIN, 0});
    for (;;) {
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds.back().revents != 0) return;
        for (std::size_t i = 0; i + 1 < fds.size(); ++i) {
            if (fds[i].revents == 0) continue;
            const int client = ::accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (client < 0) continue;  // EAGAIN after a race, or a client gone already
            answer(client);
            ::close(client);
        }
    }
}

void http_server::answer(int fd) {
    const timeval timeout{io_timeout_secs, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    std::string in;
    http_request request;
    http_parse parse{http_parse_status::need_more, 0, {}};
    while (parse.status == http_parse_status::need_more) {
        char chunk[4096];
        const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;  // closed, or silent for 5 s
        in.append(chunk, static_cast<std::size_t>(n));
        parse = parse_http_request({reinterpret_cast<const std::uint8_t*>(in.data()), in.size()}, request);
    }
    http_response response;
    bool head = false;
    if (parse.status == http_parse_status::error) {
        response = {parse.error_status, "text/plain; charset=utf-8", std::string(parse.error_text) + "\n"};
    } else if (request.method != "GET" && request.method != "HEAD") {
        response = {405, "text/plain; charset=utf-8", "method not allowed\n"};
    } else {
        head = request.method == "HEAD";
        response = _handler(request.path);
    }
    std::string out = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
                                  response.status, reason_phrase(response.status), response.content_type,
                                  response.body.size(), response.status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head) out += response.body;
    send_all(fd, out);
}

}  // namespace derp::probe
