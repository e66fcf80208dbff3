// derpprobe's own HTTP listener (-listen): a blocking accept loop on one thread that answers
// GET/HEAD with one response per connection (Connection: close). It serves a monitoring
// scraper and an operator's browser, not the internet: requests are handled one at a time with
// 5 s socket timeouts, which bounds what a slow client can hold up. Deliberately not here:
// keep-alive, TLS, request bodies.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/result.hh"

namespace derp::probe {

struct http_response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
};

// Called on the server thread with the request path (no query).
using http_handler = std::function<http_response(std::string_view path)>;

class http_server {
public:
    // Binds `listen` (":8030", "127.0.0.1:0", "[::1]:8030", "localhost:8030") and starts serving.
    static result<std::unique_ptr<http_server>, std::string> start(const std::string& listen, http_handler handler);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // The bound addresses (port 0 resolved), for the log.
    const std::vector<std::string>& addresses() const noexcept { return _addresses; }
    void stop();

private:
    http_server() = default;
    void serve();
    void answer(int fd);

    std::vector<int> _listen_fds;
    std::vector<std::string> _addresses;
    int _wake_fd = -1;  // eventfd: stop() wakes the poll
    http_handler _handler;
    std::thread _thread;
};

}  // namespace derp::probe
