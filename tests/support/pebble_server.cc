// pebble as a child process for the ACME tests (see pebble_server.hh).
#include "tests/support/pebble_server.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "tests/support/skip.hh"
#include "tests/support/test_ca.hh"
#include "tests/support/tls_socket.hh"

namespace derp::test {

using namespace std::chrono_literals;

std::uint16_t free_loopback_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
        ::close(fd);
        throw std::runtime_error(std::string("free port: ") + std::strerror(errno));
    }
    ::close(fd);
    return ntohs(addr.sin_port);
}

pebble_server::pebble_server(pebble_options options) : _options(std::move(options)) {
    if (::access("/usr/bin/pebble", X_OK) != 0) skip("pebble is not installed (apt-get install pebble)");
    std::string dir_template = (std::filesystem::temp_directory_path() / "pebble-test-XXXXXX").string();
    if (::mkdtemp(dir_template.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    _dir = dir_template;
    if (_options.replaces != nullptr) {
        for (const char* name : {"api-ca.pem", "api.crt", "api.key"})
            std::filesystem::copy_file(_options.replaces->dir() / name, _dir / name);
    } else {
        test_ca ca("pebble API test CA");
        ca.write_cert(_dir / "api-ca.pem");
        ca.issue(_dir, "api", {"127.0.0.1"}, {"localhost"});
    }
    // A port taken between choosing it and pebble binding it shows as "address already in
    // use" in pebble's log: then other ports are chosen, a bounded number of times.
    for (int attempt = 0; attempt < 5; ++attempt) {
        _acme_port = _options.replaces != nullptr ? _options.replaces->acme_port() : free_loopback_port();
        _management_port = _options.replaces != nullptr ? _options.replaces->management_port() : free_loopback_port();
        std::string config = fmt::format(
            R"({{"pebble": {{"listenAddress": "127.0.0.1:{}", "managementListenAddress": "127.0.0.1:{}", )"
            R"("certificate": "{}", "privateKey": "{}", "httpPort": {}, "tlsPort": {}, "ocspResponderURL": "", )"
            R"("externalAccountBindingRequired": false)",
            _acme_port, _management_port, (_dir / "api.crt").string(), (_dir / "api.key").string(),
            _options.http_port, _options.tls_port);
        if (_options.validity_s) config += fmt::format(R"(, "certificateValidityPeriod": {})", *_options.validity_s);
        if (!_options.blocklist.empty()) {
            config += R"(, "domainBlocklist": [)";
            for (std::size_t i = 0; i < _options.blocklist.size(); ++i)
                config += fmt::format(R"({}"{}")", i == 0 ? "" : ", ", _options.blocklist[i]);
            config += "]";
        }
        config += "}}\n";
        std::ofstream(_dir / "pebble.json") << config;
        const std::string log_path = (_dir / "pebble.log").string();
        _pid = ::fork();
        if (_pid < 0) throw std::runtime_error("fork failed");
        if (_pid == 0) {
            const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd >= 0) {
                ::dup2(fd, 1);
                ::dup2(fd, 2);
            }
            ::setenv("PEBBLE_VA_NOSLEEP", "1", 1);
            ::unsetenv("PEBBLE_VA_ALWAYS_VALID");
            for (const auto& e : _options.env) ::putenv(const_cast<char*>(e.c_str()));
            if (::chdir(_dir.c_str()) != 0) ::_exit(127);
            ::execl("/usr/bin/pebble", "pebble", "-config", "pebble.json", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        // Ready once it says where the directory is; a generous deadline, not a guess.
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        bool ready = false, in_use = false;
        while (std::chrono::steady_clock::now() < deadline) {
            const std::string log = log_text();
            if (log.find("ACME directory available at") != std::string::npos &&
                log.find("Root CA certificate available at") != std::string::npos) {
                ready = true;
                break;
            }
            if (log.find("address already in use") != std::string::npos) {
                in_use = true;
                break;
            }
            int status = 0;
            if (::waitpid(_pid, &status, WNOHANG) == _pid) {
                _pid = -1;
                break;
            }
            std::this_thread::sleep_for(20ms);
        }
        if (ready) {
            // The listener is announced just before it accepts: wait for a connection to succeed.
            while (std::chrono::steady_clock::now() < deadline) {
                const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                sockaddr_in addr{};
                addr.sin_family = AF_INET;
                addr.sin_port = htons(_acme_port);
                addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                const bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
                ::close(fd);
                if (connected) return;
                std::this_thread::sleep_for(20ms);
            }
        }
        stop();
        if (!in_use) throw std::runtime_error("pebble did not start: " + log_text());
    }
    throw std::runtime_error("pebble: no free ports after 5 attempts");
}

pebble_server::~pebble_server() {
    stop();
    std::error_code ignored;
    std::filesystem::remove_all(_dir, ignored);
}

void pebble_server::stop() {
    if (_pid <= 0) return;
    ::kill(_pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 500 && ::waitpid(_pid, &status, WNOHANG) == 0; ++i) std::this_thread::sleep_for(20ms);
    if (::waitpid(_pid, &status, WNOHANG) == 0) {
        ::kill(_pid, SIGKILL);
        ::waitpid(_pid, &status, 0);
    }
    _pid = -1;
}

std::string pebble_server::directory_url() const { return fmt::format("https://127.0.0.1:{}/dir", _acme_port); }

std::string pebble_server::fetch_root() const {
    auto socket = tls_socket::open(_management_port, insecure_client_context());
    if (!socket) throw std::runtime_error("pebble management API: " + socket.error());
    const std::string response = socket.value()->http_get("/roots/0");
    const auto body = response.find("-----BEGIN CERTIFICATE-----");
    if (response.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos)
        throw std::runtime_error("pebble /roots/0: " + response.substr(0, 200));
    const std::string path = (_dir / "root.pem").string();
    std::ofstream(path) << response.substr(body);
    return path;
}

std::string pebble_server::log_text() const {
    std::ifstream in(_dir / "pebble.log");
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::size_t pebble_server::count_log(std::string_view needle) const {
    const std::string log = log_text();
    std::size_t count = 0;
    for (auto at = log.find(needle); at != std::string::npos; at = log.find(needle, at + needle.size())) ++count;
    return count;
}

}  // namespace derp::test
