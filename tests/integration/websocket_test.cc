// DERP over WebSocket (spec 3.4) against real clients, each exchanging packets through a real
// derpd with a native DERP client of the project: Node's `ws` (tests/integration/ws/edge.js,
// which also drives the edge cases that must end in counted closes) and headless Chromium, which
// loads a page this test serves on loopback, speaks DERP from JavaScript with tweetnacl and
// POSTs its verdict back. Exit 77 (skip) when node, its `ws`/`tweetnacl` modules or chromium are
// missing. Every wait has a deadline far above what it takes; nothing sleeps a fixed time.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "crypto/box.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/mesh_region.hh"
#include "tests/support/skip.hh"

namespace {

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

const char* const node_path = "/usr/share/nodejs";  // Debian's node-ws and node-tweetnacl

fs::path scripts_dir() {
    const char* root = std::getenv("DERP_SOURCE_ROOT");
    REQUIRE(root != nullptr);
    return fs::path(root) / "tests/integration/ws";
}

std::optional<std::string> find_program(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
    for (std::string dir; std::getline(dirs, dir, ':');)
        if (::access((fs::path(dir) / name).c_str(), X_OK) == 0) return (fs::path(dir) / name).string();
    return std::nullopt;
}

std::string hex_of(std::span<const std::uint8_t> bytes) {
    std::string out;
    for (const auto b : bytes) out += fmt::format("{:02x}", b);
    return out;
}

// A child process with stdout and stderr in a file; killed (its process group) if still running
// when it goes.
class child {
public:
    child(std::vector<std::string> argv, const fs::path& output, std::vector<std::string> env_extra = {}) {
        _pid = ::fork();
        REQUIRE(_pid >= 0);
        if (_pid == 0) {
            ::setpgid(0, 0);
            const int fd = ::open(output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) ::dup2(fd, 1), ::dup2(fd, 2);
            for (auto& e : env_extra) ::putenv(e.data());
            std::vector<char*> args;
            for (auto& a : argv) args.push_back(a.data());
            args.push_back(nullptr);
            ::execv(args[0], args.data());
            ::_exit(127);
        }
    }
    ~child() {
        if (_pid > 0 && !_status) {
            ::kill(-_pid, SIGKILL);
            ::waitpid(_pid, nullptr, 0);
        }
    }
    // The exit status once it exits within the timeout.
    std::optional<int> wait(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!_status) {
            int status = 0;
            const pid_t r = ::waitpid(_pid, &status, WNOHANG);
            if (r == _pid) _status = status;
            else if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
            else std::this_thread::sleep_for(20ms);  // polling a deadline, not a guess
        }
        return _status;
    }
    void stop() {
        if (_pid > 0 && !_status) {
            ::kill(-_pid, SIGTERM);
            if (!wait(10s)) ::kill(-_pid, SIGKILL);
            wait(10s);
        }
    }

private:
    pid_t _pid = -1;
    std::optional<int> _status;
};

std::string read_file(const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

double metric(const derpd_process& d, std::string_view name, std::vector<std::pair<std::string, std::string>> labels = {}) {
    return varz_sum(http_get_body("127.0.0.1", d.port(), "/debug/varz"), name, labels).value_or(-1);
}

void require_node() {
    if (!find_program("node")) skip("no node (apt-get install nodejs node-ws node-tweetnacl)");
    for (const char* module : {"ws", "tweetnacl"})
        if (!fs::exists(fs::path(node_path) / module)) skip(fmt::format("no node module {} in {}", module, node_path));
}

TEST_CASE("node ws: relay with a native client, then the edge cases close as derper does") {
    require_node();
    derpd_process d;
    const private_key js_secret = generate_private_key();
    const node_key js_public = public_key_of(js_secret);
    derp_client native = derp_client::connect(d.port(), d.server_public());
    const fs::path out = d.dir() / "node-edge.txt";
    child node({*find_program("node"), (scripts_dir() / "edge.js").string(), std::to_string(d.port()),
                hex_of(js_secret.bytes()), hex_of(native.key().bytes())},
               out, {std::string("NODE_PATH=") + node_path});
    // The node client's first packet, then our answer.
    bytes storage;
    const recv_packet_view got = native.expect_recv_packet(storage, 30s);
    CHECK(got.src == js_public);
    CHECK(std::string(got.packet.begin(), got.packet.end()) == "hello from node");
    const std::string answer = "hello from native";
    native.send_packet(js_public, {reinterpret_cast<const std::uint8_t*>(answer.data()), answer.size()});
    const auto status = node.wait(120s);
    INFO(read_file(out));
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
    // Every refusal was counted by its reason.
    CHECK(metric(d, "derp_websocket_accepts") >= 8);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "unsupported_data"}}) == 1);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "protocol_error"}}) == 2);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "message_too_big"}}) == 1);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "not_derp_subprotocol"}}) == 1);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "peer_close"}}) == 1);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "session_end"}}) == 1);
    // The cut connection may be seen by derpd just after node exits: wait for it.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (metric(d, "derpd_websocket_closes_total", {{"reason", "eof_inside_frame"}}) < 1 &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "eof_inside_frame"}}) == 1);
    // derpd still relays for the native client after all that.
    derp_client other = derp_client::connect(d.port(), d.server_public());
    const std::string ping = "still here";
    other.send_packet(native.key(), {reinterpret_cast<const std::uint8_t*>(ping.data()), ping.size()});
    CHECK(native.expect_recv_packet(storage, 10s).src == other.key());
}

TEST_CASE("node ws: wss:// relays through derpd's TLS, then the WebSocket layer") {
    require_node();
    REQUIRE(crypto_init());
    derpd_options o;
    o.tls = true;
    derpd_process d(o);
    tls::context::client_options tls_options;
    tls_options.server_name = "127.0.0.1";
    tls_options.verify = tls::context::verify_mode::insecure;  // derpd's self-signed certificate
    auto tls_context = tls::context::make_client(tls_options);
    REQUIRE(tls_context);
    client_options native_options;
    native_options.tls = tls_context.value();
    const private_key js_secret = generate_private_key();
    const node_key js_public = public_key_of(js_secret);
    derp_client native = derp_client::connect(d.port(), d.server_public(), native_options);
    const fs::path out = d.dir() / "node-wss.txt";
    child node({*find_program("node"), (scripts_dir() / "edge.js").string(), std::to_string(d.port()),
                hex_of(js_secret.bytes()), hex_of(native.key().bytes()), "wss", "relay"},
               out, {std::string("NODE_PATH=") + node_path, "NODE_TLS_REJECT_UNAUTHORIZED=0"});
    bytes storage;
    const recv_packet_view got = native.expect_recv_packet(storage, 30s);
    CHECK(got.src == js_public);
    const std::string answer = "hello from native";
    native.send_packet(js_public, {reinterpret_cast<const std::uint8_t*>(answer.data()), answer.size()});
    const auto status = node.wait(60s);
    INFO(read_file(out));
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
}

TEST_CASE("node ws: a client refused by admission sees 1011 \"closing\" after ServerKey, as derper's") {
    require_node();
    derpd_options o;
    // A controller nobody answers at, fail-closed: every client is refused (error_denied).
    o.extra_args = {"-verify-client-url", "http://127.0.0.1:1/admit", "-verify-client-url-fail-open=false"};
    derpd_process d(o);
    const fs::path out = d.dir() / "node-denied.txt";
    child node({*find_program("node"), (scripts_dir() / "edge.js").string(), std::to_string(d.port()),
                hex_of(generate_private_key().bytes()), std::string(64, '0'), "ws", "denied"},
               out, {std::string("NODE_PATH=") + node_path});
    const auto status = node.wait(60s);
    INFO(read_file(out));
    REQUIRE(status.has_value());
    CHECK(WIFEXITED(*status));
    CHECK(WEXITSTATUS(*status) == 0);
    INFO(d.log_tail(20));
    CHECK(d.wait_for_log("rejected: admission controller unreachable: connect: Connection refused", 1000ms));
    CHECK(metric(d, "derpd_client_admissions_total", {{"result", "error_denied"}}) == 1);
    CHECK(metric(d, "derpd_websocket_closes_total", {{"reason", "session_end"}}) == 1);
}

// The page's server: GET / is the page, GET /nacl-fast.js and /derp_ws.js the scripts, POST
// /result the verdict (then it stops).
class page_server {
public:
    explicit page_server(std::string page) : _page(std::move(page)) {
        _fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(_fd, 16) == 0);
        socklen_t len = sizeof a;
        ::getsockname(_fd, reinterpret_cast<sockaddr*>(&a), &len);
        _port = ntohs(a.sin_port);
    }
    ~page_server() { ::close(_fd); }
    std::uint16_t port() const { return _port; }

    // Serves until the result arrives or the deadline passes.
    std::optional<std::string> serve_until_result(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left <= 0ms) return std::nullopt;
            pollfd p{_fd, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            const int c = ::accept4(_fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) continue;
            std::string request;
            char buf[4096];
            std::size_t body_at = std::string::npos;
            std::size_t body_bytes = 0;
            while (body_at == std::string::npos || request.size() < body_at + body_bytes) {
                pollfd q{c, POLLIN, 0};
                if (::poll(&q, 1, 10'000) <= 0) break;
                const ssize_t n = ::read(c, buf, sizeof buf);
                if (n <= 0) break;
                request.append(buf, static_cast<std::size_t>(n));
                if (body_at == std::string::npos && (body_at = request.find("\r\n\r\n")) != std::string::npos) {
                    body_at += 4;
                    const auto cl = request.find("Content-Length: ");
                    if (cl != std::string::npos && cl < body_at) body_bytes = std::stoul(request.substr(cl + 16));
                }
            }
            std::string body = "not found";
            std::string type = "text/plain";
            int status = 404;
            std::optional<std::string> result;
            if (request.starts_with("GET / ")) body = _page, type = "text/html", status = 200;
            else if (request.starts_with("GET /nacl-fast.js ")) body = read_file(fs::path(node_path) / "tweetnacl/nacl-fast.js"), type = "text/javascript", status = 200;
            else if (request.starts_with("GET /derp_ws.js ")) body = read_file(scripts_dir() / "derp_ws.js"), type = "text/javascript", status = 200;
            else if (request.starts_with("POST /result ") && body_at != std::string::npos) result = request.substr(body_at), body = "thanks", status = 200;
            const std::string response = fmt::format("HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                                                     status, type, body.size(), body);
            (void)::write(c, response.data(), response.size());
            ::close(c);
            if (result) return result;
        }
    }

private:
    int _fd = -1;
    std::uint16_t _port = 0;
    std::string _page;
};

TEST_CASE("chromium: new WebSocket(url, \"derp\") relays with a native client") {
    const auto chromium = find_program("chromium");
    if (!chromium) skip("no chromium (apt-get install chromium)");
    if (!fs::exists(fs::path(node_path) / "tweetnacl/nacl-fast.js")) skip("no tweetnacl (apt-get install node-tweetnacl)");
    derpd_process d;
    const private_key js_secret = generate_private_key();
    const node_key js_public = public_key_of(js_secret);
    derp_client native = derp_client::connect(d.port(), d.server_public());
    const std::string page = fmt::format(R"(<!doctype html><title>derp over websocket</title>
<script src="/nacl-fast.js"></script><script src="/derp_ws.js"></script>
<script>
function report(text) {{ fetch('/result', {{method: 'POST', body: text}}); }}
const ws = new WebSocket('ws://127.0.0.1:{}/derp', 'derp');
ws.binaryType = 'arraybuffer';
ws.onerror = () => report('FAIL websocket error');
ws.onopen = () => derpWs.derpConnect(nacl, ws, derpWs.unhex('{}'), 60000).then((d) => {{
  d.send(derpWs.unhex('{}'), new TextEncoder().encode('hello from chromium'));
  return d.next(0x05).then((p) => {{
    const text = new TextDecoder().decode(p.slice(32));
    report((derpWs.hex(p.slice(0, 32)) === '{}' && text === 'hello from native' ? 'ok ' : 'FAIL ') +
           ws.protocol + ' ' + d.serverInfo + ' ' + text);
  }});
}}).catch((e) => report('FAIL ' + e.message));
</script>)",
                                         d.port(), hex_of(js_secret.bytes()), hex_of(native.key().bytes()),
                                         hex_of(native.key().bytes()));
    page_server server(page);
    const fs::path profile = d.dir() / "chromium-profile";
    child browser({*chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--user-data-dir=" + profile.string(), fmt::format("http://127.0.0.1:{}/", server.port())},
                  d.dir() / "chromium.txt");
    // The page's packet first (the page is served meanwhile from another thread).
    std::optional<std::string> result;
    std::thread serving([&] { result = server.serve_until_result(120s); });
    bytes storage;
    bool relayed = false;
    try {
        const recv_packet_view got = native.expect_recv_packet(storage, 120s);
        CHECK(got.src == js_public);
        CHECK(std::string(got.packet.begin(), got.packet.end()) == "hello from chromium");
        const std::string answer = "hello from native";
        native.send_packet(js_public, {reinterpret_cast<const std::uint8_t*>(answer.data()), answer.size()});
        relayed = true;
    } catch (const std::exception& e) {
        FAIL_CHECK(e.what());
    }
    serving.join();
    browser.stop();
    INFO(read_file(d.dir() / "chromium.txt"));
    REQUIRE(relayed);
    REQUIRE(result.has_value());
    CHECK(*result == "ok derp {\"version\":2} hello from native");
    CHECK(metric(d, "derp_websocket_accepts") == 1);
}

}  // namespace
