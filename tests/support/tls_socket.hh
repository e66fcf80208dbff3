// A blocking TLS client over a plain socket for tests: the project's TLS engine (crypto/tls)
// driven by read/write, so that a test can hold a handshake half-way, put application records
// right behind the Finished, send raw bytes after the handshake, or fetch a page over HTTPS.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "crypto/tls.hh"

namespace derp::test {

class tls_socket {
public:
    ~tls_socket();
    // Connects to 127.0.0.1:port and completes the handshake. `first_write` (if any) is sent as
    // application data in the same write() as the client's Finished. Errors come back as text.
    static result<std::unique_ptr<tls_socket>, std::string> open(std::uint16_t port, std::shared_ptr<tls::context> ctx,
                                                                 std::string_view first_write = {},
                                                                 int timeout_ms = 5000);
    bool send(std::string_view plaintext);
    bool send_raw(std::string_view bytes);  // bytes on the wire as they are
    // Reads until `stop` returns true for what was read, the peer closes, or the timeout.
    template <typename Stop>
    std::string read_until(Stop stop, int timeout_ms = 5000);
    std::string read_available(int timeout_ms);  // one wait, whatever arrived
    // GET path with Connection: close; the whole response.
    std::string http_get(std::string_view path, std::string_view host = "127.0.0.1");
    void close_notify();
    bool peer_closed() const noexcept { return _eof; }
    int fd() const noexcept { return _fd; }
    tls::session& session() noexcept { return *_session; }

private:
    tls_socket() = default;
    int _fd = -1;
    bool _eof = false;
    std::unique_ptr<tls::session> _session;
};

template <typename Stop>
std::string tls_socket::read_until(Stop stop, int timeout_ms) {
    std::string all;
    while (!_eof && !stop(all)) {
        std::string more = read_available(timeout_ms);
        if (more.empty() && !_eof) break;  // timed out
        all += more;
    }
    return all;
}

// A client context that does not verify (the test servers use self-signed certificates).
std::shared_ptr<tls::context> insecure_client_context(int max_version = 0, std::string tls13_suites = {},
                                                      std::string tls12_ciphers = {},
                                                      std::string server_name = "127.0.0.1");

}  // namespace derp::test
