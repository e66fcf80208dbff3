// A small HTTP/1.1 server for tests that need a real peer to answer derpd's own requests: the
// admission controller (-verify-client-url) on loopback TCP, or tailscaled's LocalAPI on a Unix
// socket. One thread with poll(2) serves any number of connections at once; each request gets
// the answer the test's handler chooses, after the delay the handler chooses (a slow
// controller), then the connection is closed. With a server TLS context it speaks HTTPS (the
// project's TLS engine, OpenSSL underneath), for an https:// controller. Test code only.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace derp::tls {
class context;
}

namespace derp::test {

struct stub_request {
    std::string head;  // request line and fields, up to the blank line
    std::string body;
    std::string target() const;  // the request target of the request line
};

struct stub_answer {
    std::string bytes;  // written as is: status line, fields, body
    std::chrono::milliseconds delay{0};
};

// "HTTP/1.1 <status> X\r\nContent-Type: application/json\r\nContent-Length: n\r\n\r\n<body>".
std::string http_answer(int status, std::string_view body);

class http_stub_server {
public:
    using handler = std::function<stub_answer(const stub_request&)>;
    // Loopback TCP on a port the kernel picks.
    explicit http_stub_server(handler h);
    // HTTPS on loopback TCP: every connection a TLS server session of `tls_server`.
    http_stub_server(handler h, std::shared_ptr<tls::context> tls_server);
    // A Unix socket at path (an existing file there is replaced).
    http_stub_server(const std::string& unix_path, handler h);
    ~http_stub_server();
    http_stub_server(const http_stub_server&) = delete;
    http_stub_server& operator=(const http_stub_server&) = delete;

    std::uint16_t port() const noexcept { return _port; }
    std::string url(std::string_view path = "/admit") const;  // http:// or https://127.0.0.1:port
    std::size_t tls_failures() const noexcept { return _tls_failures.load(); }  // handshakes that failed
    std::vector<stub_request> requests() const;  // every complete request so far
    std::size_t request_count() const;
    std::size_t connections_open_max() const noexcept { return _open_max.load(); }

private:
    void run();

    handler _handler;
    int _listen_fd = -1;
    int _stop_fd = -1;
    std::uint16_t _port = 0;
    std::string _unix_path;
    std::shared_ptr<tls::context> _tls;
    std::atomic<std::size_t> _tls_failures{0};
    mutable std::mutex _mutex;
    std::vector<stub_request> _requests;
    std::atomic<std::size_t> _open_max{0};
    std::thread _thread;
};

}  // namespace derp::test
