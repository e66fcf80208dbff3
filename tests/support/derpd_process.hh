// A real derpd child process for the integration tests, started and stopped per test.
// Writes the key and mesh PSK files into a fresh temporary directory, starts
// $DERP_BUILD_ROOT/server/derpd on 127.0.0.1 port 0, learns the port from its "derper: serving
// on" log line, keeps its stderr in a file the test can search, and on destruction stops it with
// SIGTERM and fails the test unless it exited 0. No io_uring here makes the test exit 77 (skip).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/key.hh"

namespace derp::test {

// The recorded fixtures' server key and mesh PSK (fixtures/README.md).
inline constexpr std::string_view fixture_server_private_hex =
    "88dcafdacb0e38f7300bb3c101f20e2b2d6a9efed83ce74918914efd560ee05e";
inline constexpr std::string_view fixture_mesh_psk_hex =
    "fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9";

struct derpd_options {
    std::optional<private_key> server_private;  // a fresh random key when empty
    std::optional<std::string> mesh_psk;        // the -mesh-psk-file contents; none = no mesh key
    int shards = 2;
    std::string handshake_timeout = "1s";
    std::string keepalive_interval = "2s";
    // TLS with -certmode manual for hostname 127.0.0.1: the self-signed certificate lands in
    // dir()/certs (127.0.0.1.crt and .key); no port-80 listener.
    bool tls = false;
    std::vector<std::string> extra_args;
};

class derpd_process {
public:
    explicit derpd_process(derpd_options options = {});
    ~derpd_process();
    derpd_process(const derpd_process&) = delete;
    derpd_process& operator=(const derpd_process&) = delete;

    std::uint16_t port() const noexcept { return _port; }
    // The process's temporary directory (key files; tests put certificates here too).
    const std::filesystem::path& dir() const noexcept { return _dir; }
    pid_t pid() const noexcept { return _pid; }
    const node_key& server_public() const noexcept { return _server_public; }
    std::optional<key_mesh> mesh_key() const;

    // Everything derpd wrote to stderr (and stdout) so far.
    std::string log_text() const;
    // Polls the log until it contains needle (true) or the timeout passes (false).
    bool wait_for_log(std::string_view needle, std::chrono::milliseconds timeout) const;
    std::size_t count_log(std::string_view needle) const;

    // True while the process has not exited (reaps it if it has).
    bool running();
    // SIGTERM, then waits up to 10 s (SIGKILL after that). Returns the wait status; idempotent.
    int stop();
    // The last lines of the log, for failure messages.
    std::string log_tail(std::size_t lines = 40) const;

private:
    std::filesystem::path _dir;
    std::filesystem::path _log_path;
    pid_t _pid = -1;
    std::optional<int> _status;
    std::uint16_t _port = 0;
    node_key _server_public;
    std::optional<std::string> _mesh_psk;
};

}  // namespace derp::test
