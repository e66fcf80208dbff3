// The tests' HTTP stub server (see http_stub_server.hh).
#include "tests/support/http_stub_server.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <list>
#include <stdexcept>

#include "crypto/tls.hh"

namespace derp::test {

std::string stub_request::target() const {
    const auto sp = head.find(' ');
    if (sp == std::string::npos) return {};
    const auto sp2 = head.find(' ', sp + 1);
    return head.substr(sp + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp - 1);
}

std::string http_answer(int status, std::string_view body) {
    return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
}

http_stub_server::http_stub_server(handler h) : http_stub_server(std::move(h), nullptr) {}

http_stub_server::http_stub_server(handler h, std::shared_ptr<tls::context> tls_server)
    : _handler(std::move(h)), _tls(std::move(tls_server)) {
    _listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (_listen_fd < 0 || ::bind(_listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(_listen_fd, 4096) != 0)
        throw std::runtime_error(std::string("http stub: listen: ") + std::strerror(errno));
    socklen_t length = sizeof addr;
    ::getsockname(_listen_fd, reinterpret_cast<sockaddr*>(&addr), &length);
    _port = ntohs(addr.sin_port);
    _stop_fd = eventfd(0, EFD_CLOEXEC);
    _thread = std::thread([this] { run(); });
}

http_stub_server::http_stub_server(const std::string& unix_path, handler h)
    : _handler(std::move(h)), _unix_path(unix_path) {
    ::unlink(unix_path.c_str());
    _listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (unix_path.size() >= sizeof addr.sun_path) throw std::runtime_error("http stub: unix path too long");
    std::memcpy(addr.sun_path, unix_path.data(), unix_path.size());
    if (_listen_fd < 0 || ::bind(_listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(_listen_fd, 4096) != 0)
        throw std::runtime_error(std::string("http stub: listen on unix socket: ") + std::strerror(errno));
    _stop_fd = eventfd(0, EFD_CLOEXEC);
    _thread = std::thread([this] { run(); });
}

http_stub_server::~http_stub_server() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(_stop_fd, &one, sizeof one);
    if (_thread.joinable()) _thread.join();
    ::close(_listen_fd);
    ::close(_stop_fd);
    if (!_unix_path.empty()) ::unlink(_unix_path.c_str());
}

std::string http_stub_server::url(std::string_view path) const {
    return (_tls ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(_port) + std::string(path);
}

std::vector<stub_request> http_stub_server::requests() const {
    std::lock_guard lock(_mutex);
    return _requests;
}

std::size_t http_stub_server::request_count() const {
    std::lock_guard lock(_mutex);
    return _requests.size();
}

void http_stub_server::run() {
    using clock = std::chrono::steady_clock;
    struct conn {
        int fd = -1;
        std::unique_ptr<tls::session> tls;
        std::string in;          // the request, plaintext
        bool answered = false;   // the request is complete and the answer chosen
        stub_answer answer;
        clock::time_point send_at;
        bool answer_queued = false;  // the answer is in `out`
        std::string out;         // bytes for the socket (TLS records, or the answer)
        std::size_t sent = 0;
    };
    std::list<conn> conns;
    std::vector<pollfd> fds;
    std::vector<conn*> order;
    for (;;) {
        fds.clear();
        order.clear();
        fds.push_back({_stop_fd, POLLIN, 0});
        fds.push_back({_listen_fd, POLLIN, 0});
        const auto now = clock::now();
        int wait_ms = 1000;
        for (auto& c : conns) {
            if (c.answered && !c.answer_queued) {
                if (c.send_at <= now) {
                    if (c.tls) {
                        std::vector<std::uint8_t> records(c.answer.bytes.size() + 4096);
                        std::string spill;
                        const std::size_t n = c.tls->write({reinterpret_cast<const std::uint8_t*>(c.answer.bytes.data()), c.answer.bytes.size()}, records, spill);
                        c.out.append(reinterpret_cast<const char*>(records.data()), n);
                        c.out += spill;
                    } else {
                        c.out += c.answer.bytes;
                    }
                    c.answer_queued = true;
                } else {
                    wait_ms = std::min<int>(wait_ms, static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(c.send_at - now).count()) + 1);
                }
            }
            short events = c.answered ? 0 : POLLIN;
            if (c.sent < c.out.size()) events |= POLLOUT;
            fds.push_back({c.fd, events, 0});
            order.push_back(&c);
        }
        if (::poll(fds.data(), fds.size(), wait_ms) < 0 && errno != EINTR) return;
        if (fds[0].revents != 0) break;
        if (fds[1].revents & POLLIN) {
            for (;;) {
                const int fd = ::accept4(_listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) break;
                conn& c = conns.emplace_back();
                c.fd = fd;
                if (_tls) c.tls = std::make_unique<tls::session>(_tls, false);
            }
            if (conns.size() > _open_max.load()) _open_max.store(conns.size());
        }
        std::vector<conn*> done;
        for (std::size_t i = 0; i < order.size(); ++i) {
            conn& c = *order[i];
            const short revents = fds[i + 2].revents;
            if (revents == 0) continue;
            if (c.sent < c.out.size() && (revents & (POLLOUT | POLLHUP | POLLERR))) {
                const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
                if (n > 0) c.sent += static_cast<std::size_t>(n);
                if (n <= 0 || (c.answer_queued && c.sent == c.out.size())) {
                    done.push_back(&c);
                    continue;
                }
            }
            if (!c.answered && (revents & (POLLIN | POLLHUP | POLLERR))) {
                char buffer[16384];
                const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, 0);
                if (n <= 0) {
                    done.push_back(&c);
                    continue;
                }
                if (c.tls) {
                    c.tls->feed({reinterpret_cast<const std::uint8_t*>(buffer), static_cast<std::size_t>(n)}, c.in, c.out);
                    if (c.tls->state() == tls::status::failed) {
                        ++_tls_failures;
                        if (c.sent == c.out.size()) done.push_back(&c);  // else the alert goes first
                        c.answered = true;
                        c.answer_queued = true;
                        continue;
                    }
                } else {
                    c.in.append(buffer, static_cast<std::size_t>(n));
                }
                const auto end = c.in.find("\r\n\r\n");
                if (end == std::string::npos) continue;
                stub_request r;
                r.head = c.in.substr(0, end + 2);
                std::size_t length = 0;
                for (const char* name : {"Content-Length: ", "content-length: "})
                    if (auto at = r.head.find(name); at != std::string::npos)
                        length = std::stoul(r.head.substr(at + std::strlen(name)));
                if (c.in.size() < end + 4 + length) continue;
                r.body = c.in.substr(end + 4, length);
                c.answer = _handler(r);
                c.answered = true;
                c.send_at = clock::now() + c.answer.delay;
                std::lock_guard lock(_mutex);
                _requests.push_back(std::move(r));
            }
        }
        for (conn* c : done) {
            ::close(c->fd);
            conns.remove_if([c](const conn& x) { return &x == c; });
        }
    }
    for (auto& c : conns) ::close(c.fd);
}

}  // namespace derp::test
