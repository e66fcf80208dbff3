// Debian's pebble (Let's Encrypt's ACME test server) as a child process for derpd's ACME tests:
// its own config in a fresh directory, its API certificate from an in-process test CA (SAN
// 127.0.0.1), listening on loopback ports chosen here, validating HTTP-01 and TLS-ALPN-01 at
// the ports given (derpd's). The issuing root is new on every start and is fetched from the
// management API. No pebble installed: the test exits 77 (skip).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace derp::test {

struct pebble_options {
    std::uint16_t http_port = 0;   // where pebble validates HTTP-01 (derpd's -http-port)
    std::uint16_t tls_port = 0;    // where it validates TLS-ALPN-01 (derpd's TLS listener)
    std::optional<std::uint64_t> validity_s = std::nullopt;  // certificateValidityPeriod (pebble's default: 5 years)
    std::vector<std::string> blocklist = {};  // domainBlocklist: names pebble refuses to order
    std::vector<std::string> env = {};        // NAME=value added to pebble's environment
    // A second pebble in the place of a first: the same API ports and certificate (derpd
    // keeps its -acme-directory and -acme-ca), a new CA and no memory of accounts.
    const class pebble_server* replaces = nullptr;
};

// A free loopback TCP port at the moment of asking (bound to port 0 and released).
std::uint16_t free_loopback_port();

class pebble_server {
public:
    // Skips the test (exit 77) when /usr/bin/pebble is missing. Throws when it does not start.
    explicit pebble_server(pebble_options options);
    ~pebble_server();
    pebble_server(const pebble_server&) = delete;
    pebble_server& operator=(const pebble_server&) = delete;

    std::string directory_url() const;
    // The CA file that verifies pebble's own API (derpd's -acme-ca).
    std::string api_ca_file() const { return (_dir / "api-ca.pem").string(); }
    // Pebble's current issuing root, written next to its config; the path.
    std::string fetch_root() const;
    std::string log_text() const;
    std::size_t count_log(std::string_view needle) const;
    const std::filesystem::path& dir() const noexcept { return _dir; }
    std::uint16_t acme_port() const noexcept { return _acme_port; }
    std::uint16_t management_port() const noexcept { return _management_port; }
    void stop();

private:
    pebble_options _options;
    std::filesystem::path _dir;
    std::uint16_t _acme_port = 0, _management_port = 0;
    pid_t _pid = -1;
};

}  // namespace derp::test
