// Starting, watching and stopping a real derpd for the integration tests (see derpd_process.hh).
#include "tests/support/derpd_process.hh"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>

#include "crypto/box.hh"
#include "tests/support/skip.hh"

extern char** environ;

namespace derp::test {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds startup_timeout{10000};
constexpr milliseconds stop_timeout{10000};
constexpr milliseconds poll_interval{10};
constexpr std::string_view serving_marker = "derper: serving on ";
constexpr std::string_view admin_marker = "admin listener on ";

std::filesystem::path derpd_binary() {
    const char* root = std::getenv("DERP_BUILD_ROOT");
    if (root == nullptr || *root == '\0')
        throw std::runtime_error("DERP_BUILD_ROOT is not set (run through meson test, or export it)");
    return std::filesystem::path(root) / "server" / "derpd";
}

void write_file(const std::filesystem::path& path, std::string_view contents) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
    return "wait status " + std::to_string(status);
}

}  // namespace

derpd_process::derpd_process(derpd_options options) : _options(std::move(options)), _mesh_psk(_options.mesh_psk) {
    if (!crypto_init()) throw std::runtime_error("libsodium failed to initialise");
    std::string dir_template = (std::filesystem::temp_directory_path() / "derpd-test-XXXXXX").string();
    if (::mkdtemp(dir_template.data()) == nullptr)
        throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    _dir = dir_template;
    _log_path = _dir / "derpd.log";
    _port = _options.port;

    const private_key server_private =
        _options.server_private ? *_options.server_private : generate_private_key();
    _server_public = public_key_of(server_private);
    write_file(_dir / "derper.key", format_key_file(server_private));

    _args = {"-c",
             (_dir / "derper.key").string(),
             "-shards",
             std::to_string(_options.shards),
             "-stun=false",
             "-handshake-timeout",
             _options.handshake_timeout,
             "-keepalive-interval",
             _options.keepalive_interval,
             "-log-level",
             "debug",
             // A stop is a stop unless a test asks for a drain (extra_args come later and win).
             "-drain-timeout=0"};
    if (_options.mesh_psk) {
        write_file(_dir / "mesh.psk", *_options.mesh_psk);
        _args.push_back("-mesh-psk-file");
        _args.push_back((_dir / "mesh.psk").string());
    }
    if (_options.tls)
        for (const std::string& a : {std::string("-certmode"), std::string("manual"), std::string("-hostname"),
                                     std::string("127.0.0.1"), std::string("-certdir"), (_dir / "certs").string(),
                                     std::string("-http-port"), std::string("-1")})
            _args.push_back(a);
    if (_options.certdir) {
        for (const std::string& a : {std::string("-certmode"), std::string("manual"), std::string("-hostname"),
                                     _options.hostname.value_or(_options.listen_ip), std::string("-certdir"),
                                     _options.certdir->string(), std::string("-http-port"), std::string("-1")})
            _args.push_back(a);
    } else if (_options.hostname) {
        _args.push_back("-hostname");
        _args.push_back(*_options.hostname);
    }
    if (_options.admin_addr) {
        _args.push_back("-admin-addr");
        _args.push_back(*_options.admin_addr);
    }
    _args.insert(_args.end(), _options.extra_args.begin(), _options.extra_args.end());
    launch();
}

void derpd_process::launch() {
    std::vector<std::string> args = {derpd_binary().string(), "-a",
                                     _options.listen_ip + ":" + std::to_string(_port)};
    args.insert(args.end(), _args.begin(), _args.end());

    // HOME points into the temp directory so that derpd finds no ~/keys/derp-mesh.key; the
    // test's own variables replace any of the same name.
    const auto name_of = [](std::string_view entry) { return entry.substr(0, entry.find('=') + 1); };
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view entry(*e);
        bool replaced = entry.starts_with("HOME=");
        for (const auto& mine : _options.env) replaced = replaced || name_of(mine) == name_of(entry);
        if (!replaced) env.emplace_back(entry);
    }
    env.push_back("HOME=" + _dir.string());
    env.insert(env.end(), _options.env.begin(), _options.env.end());

    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    const std::string log_path = _log_path.string();
    const pid_t parent = ::getpid();
    _log_start = log_text().size();
    _status.reset();
    _killed = false;
    _admin_port = 0;

    _pid = ::fork();
    if (_pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (_pid == 0) {
        // Only async-signal-safe calls from here to execve.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a crashed test must not leave derpd running
        if (::getppid() != parent) ::_exit(127);
        const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        const int null_fd = ::open("/dev/null", O_RDONLY);
        if (log_fd < 0 || null_fd < 0) ::_exit(127);
        ::dup2(null_fd, 0);
        ::dup2(log_fd, 1);
        ::dup2(log_fd, 2);
        ::execve(argv[0], argv.data(), envp.data());
        ::_exit(127);
    }

    // The port at the end of the address that follows the marker on its first line, or 0.
    const auto port_after = [](const std::string& log, std::string_view marker) -> std::uint16_t {
        const auto at = log.find(marker);
        if (at == std::string::npos) return 0;
        const auto end = log.find('\n', at);
        if (end == std::string::npos) return 0;
        const std::string line = log.substr(at, end - at);
        const auto space = line.find(' ', marker.size());
        const std::string address = line.substr(marker.size(), space == std::string::npos ? std::string::npos
                                                                                          : space - marker.size());
        const auto colon = address.rfind(':');  // "127.0.0.2:4242", or the port alone
        const std::string port = colon == std::string::npos ? address : address.substr(colon + 1);
        if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos) return 0;
        return static_cast<std::uint16_t>(std::stoul(port));
    };
    const std::string serving = std::string(serving_marker) + _options.listen_ip + ":";
    const auto deadline = clock_type::now() + startup_timeout;
    for (;;) {
        const std::string log = current_log_text();
        if (const std::uint16_t port = port_after(log, serving); port != 0) {
            _port = port;
            if (_options.admin_addr) _admin_port = port_after(log, admin_marker);
            return;
        }
        if (!running()) {
            if (is_missing_io_uring(log)) skip("derpd cannot use io_uring here: " + log);
            throw std::runtime_error("derpd exited during start-up (" + describe_status(*_status) + "):\n" +
                                     log);
        }
        if (clock_type::now() > deadline) {
            stop();
            throw std::runtime_error("derpd did not log \"derper: serving on\" within 10 s:\n" + log);
        }
        std::this_thread::sleep_for(poll_interval);
    }
}

derpd_process::~derpd_process() {
    const int status = stop();
    if (!_killed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        const std::string message = "derpd did not stop cleanly on SIGTERM: " + describe_status(status) +
                                    "\n--- derpd log tail ---\n" + log_tail();
        FAIL_CHECK(message);
    }
    std::error_code ec;
    std::filesystem::remove_all(_dir, ec);
}

void derpd_process::kill() {
    if (!running()) return;
    ::kill(_pid, SIGKILL);
    int status = 0;
    while (::waitpid(_pid, &status, 0) < 0 && errno == EINTR) {
    }
    _status = status;
    _killed = true;
}

void derpd_process::restart() {
    if (running()) {
        const int status = stop();
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            const std::string message = "derpd did not stop cleanly on SIGTERM before a restart: " +
                                        describe_status(status) + "\n--- derpd log tail ---\n" + log_tail();
            FAIL_CHECK(message);
        }
    }
    launch();
}

std::optional<key_mesh> derpd_process::mesh_key() const {
    if (!_mesh_psk) return std::nullopt;
    return key_mesh::from_psk_file(*_mesh_psk);
}

std::string derpd_process::log_text() const {
    std::ifstream in(_log_path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string derpd_process::current_log_text() const {
    std::string log = log_text();
    return _log_start <= log.size() ? log.substr(_log_start) : std::string();
}

bool derpd_process::wait_for_log(std::string_view needle, milliseconds timeout) const {
    const auto deadline = clock_type::now() + timeout;
    for (;;) {
        if (log_text().find(needle) != std::string::npos) return true;
        if (clock_type::now() > deadline) return false;
        std::this_thread::sleep_for(poll_interval);
    }
}

std::size_t derpd_process::count_log(std::string_view needle) const {
    const std::string log = log_text();
    std::size_t count = 0;
    for (auto at = log.find(needle); at != std::string::npos; at = log.find(needle, at + needle.size()))
        ++count;
    return count;
}

bool derpd_process::running() {
    if (_status) return false;
    if (_pid <= 0) return false;
    int status = 0;
    const pid_t r = ::waitpid(_pid, &status, WNOHANG);
    if (r == _pid) {
        _status = status;
        return false;
    }
    return true;
}

int derpd_process::stop() {
    if (_status) return *_status;
    if (!running()) return *_status;
    ::kill(_pid, SIGTERM);
    const auto deadline = clock_type::now() + stop_timeout;
    while (running()) {
        if (clock_type::now() > deadline) {
            ::kill(_pid, SIGKILL);
            int status = 0;
            ::waitpid(_pid, &status, 0);
            _status = status;
            FAIL_CHECK(std::string("derpd did not exit within 10 s of SIGTERM; killed it"));
            break;
        }
        std::this_thread::sleep_for(poll_interval);
    }
    return *_status;
}

std::string derpd_process::log_tail(std::size_t lines) const {
    const std::string log = log_text();
    std::size_t at = log.size();
    for (std::size_t n = 0; n <= lines && at > 0; ++n) {
        const auto nl = log.rfind('\n', at - 1);
        if (nl == std::string::npos) return log;
        at = nl;
    }
    return log.substr(at);
}

}  // namespace derp::test
