// A real derpd child process for the integration tests, started and stopped per test.
// Writes the key and mesh PSK files into a fresh temporary directory, starts
// $DERP_BUILD_ROOT/server/derpd (on 127.0.0.1 port 0 unless told otherwise), learns the port
// from its "derper: serving on" log line (and the admin port from "admin listener on"), keeps its
// stderr in a file the test can search, and on destruction stops it with SIGTERM and fails the
// test unless it exited 0. A test may kill it (SIGKILL) and start the same node again: same key,
// same arguments, same port. No io_uring here makes the test exit 77 (skip).
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
    // Where to listen (-a listen_ip:port); port 0 lets the kernel choose.
    std::string listen_ip = "127.0.0.1";
    std::uint16_t port = 0;
    // -hostname; with certdir, TLS with -certmode manual from certdir/<hostname>.crt and .key
    // (no port-80 listener). certdir needs a hostname (listen_ip when none is given).
    std::optional<std::string> hostname;
    std::optional<std::filesystem::path> certdir;
    // -admin-addr (e.g. "127.0.0.2:0"); admin_port() is learned from the log.
    std::optional<std::string> admin_addr;
    // "NAME=value" entries added to derpd's environment, replacing a variable of that name.
    std::vector<std::string> env;
    std::vector<std::string> extra_args;
};

class derpd_process {
public:
    explicit derpd_process(derpd_options options = {});
    ~derpd_process();
    derpd_process(const derpd_process&) = delete;
    derpd_process& operator=(const derpd_process&) = delete;

    std::uint16_t port() const noexcept { return _port; }
    const std::string& listen_ip() const noexcept { return _options.listen_ip; }
    // The admin listener's port (0 without admin_addr).
    std::uint16_t admin_port() const noexcept { return _admin_port; }
    // The process's temporary directory (key files; tests put certificates here too).
    const std::filesystem::path& dir() const noexcept { return _dir; }
    pid_t pid() const noexcept { return _pid; }
    const node_key& server_public() const noexcept { return _server_public; }
    std::optional<key_mesh> mesh_key() const;

    // Everything derpd wrote to stderr (and stdout) so far, over every start in order.
    std::string log_text() const;
    // What the current (or last) start wrote.
    std::string current_log_text() const;
    // Polls the log until it contains needle (true) or the timeout passes (false).
    bool wait_for_log(std::string_view needle, std::chrono::milliseconds timeout) const;
    std::size_t count_log(std::string_view needle) const;

    // True while the process has not exited (reaps it if it has).
    bool running();
    // SIGTERM, then waits up to 10 s (SIGKILL after that). Returns the wait status; idempotent.
    int stop();
    // SIGKILL, and reaps it: a crash as the kernel sees it (sockets closed without a goodbye).
    // The destructor does not count this as an unclean stop.
    void kill();
    // Starts the node again after stop() or kill() (stopping it first if it is running): same
    // key, same arguments, the port it listened on before. Throws as the constructor does.
    void restart();
    // The last lines of the log, for failure messages.
    std::string log_tail(std::size_t lines = 40) const;

private:
    void launch();  // fork, exec, and wait for the serving line

    derpd_options _options;
    std::vector<std::string> _args;  // every argument but the listen address
    std::filesystem::path _dir;
    std::filesystem::path _log_path;
    std::size_t _log_start = 0;  // where the current start's output begins in the log
    pid_t _pid = -1;
    std::optional<int> _status;
    bool _killed = false;
    std::uint16_t _port = 0;
    std::uint16_t _admin_port = 0;
    node_key _server_public;
    std::optional<std::string> _mesh_psk;
};

}  // namespace derp::test
