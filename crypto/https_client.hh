// A blocking HTTPS client for threads that may block (derpd's ACME client, derpprobe's map
// fetch; never a shard): one request per connection (Connection: close) on a plain socket driven
// with poll(2) deadlines, TLS through the project's engine (crypto/tls) verifying the server
// with the system store or a given CA file. Every step has a deadline and every response a size
// bound, so a slow or hostile server costs at most one request timeout and a bounded buffer. A
// stop descriptor (eventfd; -1 for none) cuts any wait short when the program stops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "core/http_response.hh"
#include "core/result.hh"
#include "crypto/tls.hh"

namespace derp::tls {

struct https_response {
    int status = 0;
    http_response_head head;
    std::string body;
};

class https_client {
public:
    // ca_file: trust only this PEM bundle (empty: the system store). stop_fd: readable = stop.
    https_client(std::string ca_file, std::int64_t request_timeout_ns, int stop_fd);

    // method GET, HEAD or POST; a POST's body goes with content_type. A body over
    // body_bytes_max (or a head over http_response_head_bytes_max) fails the request. Errors
    // say which step failed: resolve, connect, TLS, send, response, timeout, stopped.
    result<https_response, std::string> request(std::string_view method, std::string_view url,
                                                std::string_view content_type, std::string_view body,
                                                std::size_t body_bytes_max, std::string_view accept = {});

private:
    result<std::shared_ptr<tls::context>, std::string> context_for(const std::string& host);

    std::string _ca_file;
    std::int64_t _request_timeout_ns;
    int _stop_fd;
    std::map<std::string, std::shared_ptr<tls::context>> _contexts;  // by host name
};

}  // namespace derp::tls
