// derpprobe's DERP map over https:// and from tailscaled's LocalAPI (see probe_fetch.hh).
#include "probe/probe_fetch.hh"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "core/http_response.hh"
#include "crypto/https_client.hh"

namespace derp::probe {
namespace {

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Closes the descriptor on every path out.
struct fd_guard {
    int fd = -1;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

// Waits until fd is ready for events or the deadline passes (false).
bool wait_ready(int fd, short events, std::int64_t deadline_ns) {
    for (;;) {
        const std::int64_t left_ns = deadline_ns - now_ns();
        if (left_ns <= 0) return false;
        pollfd p{fd, events, 0};
        const int n = ::poll(&p, 1, static_cast<int>(left_ns / 1'000'000 + 1));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return false;
        if (n > 0) return true;
    }
}

}  // namespace

result<std::string, std::string> fetch_https_text(const std::string& url, const map_fetch_options& options) {
    tls::https_client client(options.ca_file, options.timeout_ns, -1);
    auto r = client.request("GET", url, {}, {}, options.body_bytes_max, "application/json");
    if (!r) return unexpected(r.error());
    if (r->status != 200) return unexpected(fmt::format("HTTP {}", r->status));
    return std::move(r->body);
}

result<std::string, std::string> fetch_localapi_text(const std::string& target, const map_fetch_options& options) {
    const std::string& path = options.socket_path;
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof address.sun_path)
        return unexpected(fmt::format("tailscaled socket \"{}\": not a usable Unix socket path", path));
    std::memcpy(address.sun_path, path.data(), path.size());
    const std::int64_t deadline_ns = now_ns() + options.timeout_ns;
    fd_guard guard{::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
    if (guard.fd < 0) return unexpected(fmt::format("socket: {}", std::strerror(errno)));
    if (::connect(guard.fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
        if (errno != EINPROGRESS && errno != EAGAIN)
            return unexpected(fmt::format("connecting to tailscaled at {}: {} (is tailscaled running? -socket names another path)",
                                          path, std::strerror(errno)));
        if (!wait_ready(guard.fd, POLLOUT, deadline_ns)) return unexpected(fmt::format("connecting to tailscaled at {}: timed out", path));
    }
    const std::string request =
        fmt::format("GET {} HTTP/1.1\r\nHost: local-tailscaled.sock\r\nUser-Agent: derpprobe\r\nConnection: close\r\n\r\n", target);
    for (std::size_t sent = 0; sent < request.size();) {
        const ssize_t n = ::send(guard.fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_ready(guard.fd, POLLOUT, deadline_ns)) return unexpected(std::string("sending to tailscaled: timed out"));
        } else {
            return unexpected(fmt::format("sending to tailscaled: {}", std::strerror(errno)));
        }
    }
    std::string in;
    http_response_head head;
    bool have_head = false;
    for (;;) {
        if (!have_head) {
            const auto verdict = parse_http_response_head(in, head);
            if (verdict.state == http_response_parse::error) return unexpected("tailscaled's answer: " + verdict.error);
            have_head = verdict.state == http_response_parse::complete;
        }
        if (have_head) {
            const std::string_view rest = std::string_view(in).substr(head.head_bytes);
            const auto te = head.field("Transfer-Encoding");
            const auto cl = head.field("Content-Length");
            if (te && te->find("chunked") != std::string_view::npos) {
                std::string body;
                const auto verdict = decode_chunked(rest, options.body_bytes_max, body);
                if (verdict.state == http_response_parse::error) return unexpected("tailscaled's answer: " + verdict.error);
                if (verdict.state == http_response_parse::complete) {
                    if (head.status != 200) return unexpected(fmt::format("tailscaled answered HTTP {}: {}", head.status, body.substr(0, 200)));
                    return body;
                }
            } else if (cl) {
                std::size_t declared = 0;
                for (const char ch : *cl) {
                    if (ch < '0' || ch > '9') return unexpected(std::string("tailscaled's answer: bad Content-Length"));
                    declared = declared * 10 + static_cast<std::size_t>(ch - '0');
                    if (declared > options.body_bytes_max) return unexpected(std::string("tailscaled's answer is too large"));
                }
                if (rest.size() >= declared) {
                    std::string body(rest.substr(0, declared));
                    if (head.status != 200) return unexpected(fmt::format("tailscaled answered HTTP {}: {}", head.status, body.substr(0, 200)));
                    return body;
                }
            }
        }
        if (in.size() > options.body_bytes_max + http_response_head_bytes_max)
            return unexpected(std::string("tailscaled's answer is too large"));
        if (!wait_ready(guard.fd, POLLIN, deadline_ns)) return unexpected(std::string("reading tailscaled's answer: timed out"));
        char buffer[65536];
        const ssize_t n = ::recv(guard.fd, buffer, sizeof buffer, 0);
        if (n > 0) {
            in.append(buffer, static_cast<std::size_t>(n));
        } else if (n == 0) {
            // The end of the stream ends a body that had no length.
            if (!have_head) return unexpected(std::string("tailscaled closed the connection before answering"));
            if (head.field("Content-Length") || head.field("Transfer-Encoding"))
                return unexpected(std::string("tailscaled closed the connection inside its answer"));
            if (head.status != 200) return unexpected(fmt::format("tailscaled answered HTTP {}", head.status));
            return in.substr(head.head_bytes);
        } else if (errno != EAGAIN && errno != EINTR) {
            return unexpected(fmt::format("reading tailscaled's answer: {}", std::strerror(errno)));
        }
    }
}

}  // namespace derp::probe
