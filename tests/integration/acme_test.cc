// -certmode letsencrypt end to end against Debian's pebble (a real ACME server with its own CA)
// on loopback: first issuance by TLS-ALPN-01 and by HTTP-01 with DERP clients verifying the
// issued chain against pebble's root, restart reusing the stored account and certificate,
// renewal of a short-lived certificate while DERP clients stay connected and relaying, and
// pebble refusing (a blocked name, a challenge it cannot validate) with the reason logged and
// the old certificate kept. Every wait is for a log line or a counter, with a generous deadline.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <thread>

#include <fmt/format.h>

#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/pebble_server.hh"

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;

namespace {

// A GET on a plain-HTTP loopback port (the admin listener, the port-80 listener): the whole
// response, read until the server closes.
std::string http_get(std::uint16_t port, std::string_view path) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string response;
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
        const std::string request = fmt::format("GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path);
        (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
        char buffer[65536];
        for (;;) {
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 10'000) <= 0) break;
            const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n <= 0) break;
            response.append(buffer, static_cast<std::size_t>(n));
        }
    }
    ::close(fd);
    return response;
}

// The value of one series in the admin listener's /metrics.
std::int64_t metric_value(std::uint16_t admin_port, const std::string& series) {
    const std::string text = http_get(admin_port, "/metrics");
    const auto at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stoll(text.substr(at + series.size() + 2));
}

// derpd in letsencrypt mode for hostname localhost on 127.0.0.1:port, TLS there whatever the
// port, HTTP-01 on http_port (-1: none), ordering from pebble.
derpd_options letsencrypt_node(std::uint16_t port, int http_port, const pebble_server& pebble,
                               const std::filesystem::path& certdir) {
    derpd_options o;
    o.port = port;
    o.hostname = "localhost";
    o.admin_addr = "127.0.0.1:0";
    o.extra_args = {"-certmode", "letsencrypt", "-letsencrypt-any-port", "-certdir", certdir.string(),
                    "-http-port", std::to_string(http_port), "-acme-directory", pebble.directory_url(),
                    "-acme-ca", pebble.api_ca_file(), "-acme-retry-interval", "1s", "-acme-timeout", "10s",
                    "-cert-poll-interval", "0"};
    return o;
}

// A DERP client over TLS that verifies the server's chain for "localhost" with root_file only.
client_options verified_client(const std::string& root_file) {
    tls::context::client_options o;
    o.server_name = "localhost";
    o.verify = tls::context::verify_mode::system;
    o.ca_file = root_file;
    auto ctx = tls::context::make_client(o);
    REQUIRE_MESSAGE(ctx.has_value(), (ctx ? "" : ctx.error()));
    client_options c;
    c.tls = ctx.value();
    return c;
}

std::filesystem::path fresh_dir(const char* name) {
    std::string dir = (std::filesystem::temp_directory_path() / (std::string(name) + "-XXXXXX")).string();
    REQUIRE(::mkdtemp(dir.data()) != nullptr);
    return dir;
}

mode_t mode_of(const std::filesystem::path& p) {
    struct stat st{};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

std::string read_all(const std::filesystem::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

constexpr std::string_view installed = "ACME: new certificate for localhost installed";

}  // namespace

TEST_CASE("TLS-ALPN-01: first issuance, DERP over the issued chain, restart reuses account and certificate") {
    const std::uint16_t port = free_loopback_port();
    // pebble rejects 5 % of nonces by default, and derpd retries such a request (RFC 8555 6.5):
    // this test counts order requests, so no rejections here (acme-hostile covers badNonce).
    pebble_server pebble({.http_port = free_loopback_port(), .tls_port = port, .env = {"PEBBLE_WFE_NONCEREJECT=0"}});
    const auto base = fresh_dir("acme-alpn");
    const auto certdir = base / "certs";
    derpd_process derpd(letsencrypt_node(port, -1, pebble, certdir));
    REQUIRE_MESSAGE(derpd.wait_for_log(installed, 60s), derpd.log_tail());
    CHECK(derpd.count_log("TLS-ALPN-01 validation handshake for \"localhost\" answered") >= 1);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_orders_total{result=\"ok\"}") == 1);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_challenges_total{type=\"tls-alpn-01\"}") == 1);
    CHECK(metric_value(derpd.admin_port(), "derpd_cert_expiry_seconds") > 3600);

    const std::string root = pebble.fetch_root();
    auto a = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    auto b = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    expect_relayed(a, b, "over pebble's chain", 10s);

    // What is stored, and how (SECURITY.md): a private directory, files only derpd reads.
    CHECK(mode_of(certdir) == 0700);
    CHECK(mode_of(certdir / "acme_account+key") == 0600);
    CHECK(mode_of(certdir / "localhost") == 0600);
    const std::string account_key = read_all(certdir / "acme_account+key");
    const std::string stored = read_all(certdir / "localhost");
    CHECK(stored.find("PRIVATE KEY-----") != std::string::npos);
    CHECK(stored.find("BEGIN CERTIFICATE") != std::string::npos);

    // Restart: the stored certificate still has most of its life, so no order at all.
    const std::size_t orders_before = pebble.count_log("POST /order-plz");
    derpd.stop();
    derpd.restart();
    CHECK(derpd.current_log_text().find("ACME: account key " + (certdir / "acme_account+key").string() + " (stored)") !=
          std::string::npos);
    CHECK(derpd.current_log_text().find("certificate " + (certdir / "localhost").string() + " expires in") !=
          std::string::npos);
    auto c = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    auto d = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    expect_relayed(c, d, "after the restart", 10s);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_orders_total{result=\"reused\"}") == 1);
    CHECK(pebble.count_log("POST /order-plz") == orders_before);
    CHECK(derpd.current_log_text().find("ordering a certificate") == std::string::npos);
    CHECK(read_all(certdir / "acme_account+key") == account_key);

    // Without the certificate, a new order goes out under the same (existing) account.
    derpd.stop();
    std::filesystem::remove(certdir / "localhost");
    derpd.restart();
    REQUIRE_MESSAGE(derpd.wait_for_log("(existing)", 60s), derpd.log_tail());
    // wait_for_log reads every start's output: the first start's line must not count.
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (derpd.count_log(installed) < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(50ms);
    REQUIRE_MESSAGE(derpd.count_log(installed) == 2, derpd.log_tail());
    CHECK(read_all(certdir / "acme_account+key") == account_key);
    CHECK(pebble.count_log("POST /order-plz") == orders_before + 1);
    std::filesystem::remove_all(base);
}

TEST_CASE("HTTP-01 on the port-80 listener when TLS-ALPN-01 cannot be validated") {
    const std::uint16_t port = free_loopback_port();
    const std::uint16_t http_port = free_loopback_port();
    // Pebble validates TLS-ALPN-01 at a port where nothing listens: that authorization fails,
    // and derpd orders again answering HTTP-01, as derper's autocert does.
    pebble_server pebble({.http_port = http_port, .tls_port = free_loopback_port()});
    const auto base = fresh_dir("acme-http01");
    derpd_process derpd(letsencrypt_node(port, http_port, pebble, base / "certs"));
    REQUIRE_MESSAGE(derpd.wait_for_log(installed, 90s), derpd.log_tail());
    CHECK(derpd.count_log("tls-alpn-01 failed for localhost") == 1);
    CHECK(derpd.count_log("trying http-01 with a new order") == 1);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_challenges_total{type=\"http-01\"}") == 1);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_http01_requests_total{result=\"answered\"}") >= 1);
    // Other tokens are not answered; everything else on port 80 still redirects to HTTPS.
    CHECK(http_get(http_port, "/.well-known/acme-challenge/AAAAAAAAAAAAAAAAAAAAAAAA").rfind("HTTP/1.1 404", 0) == 0);
    CHECK(http_get(http_port, "/derp").rfind("HTTP/1.1 302", 0) == 0);

    const std::string root = pebble.fetch_root();
    auto a = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    auto b = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    expect_relayed(a, b, "issued by HTTP-01", 10s);
    std::filesystem::remove_all(base);
}

TEST_CASE("renewal of a short-lived certificate while DERP clients stay connected and relay") {
    const std::uint16_t port = free_loopback_port();
    // 30 s of validity: renewal when 10 s are left (less up to 3 s of jitter).
    pebble_server pebble({.http_port = free_loopback_port(), .tls_port = port, .validity_s = 30});
    const auto base = fresh_dir("acme-renew");
    derpd_process derpd(letsencrypt_node(port, -1, pebble, base / "certs"));
    REQUIRE_MESSAGE(derpd.wait_for_log(installed, 60s), derpd.log_tail());
    const std::string root = pebble.fetch_root();
    auto a = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    auto b = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    expect_relayed(a, b, "before the renewal", 10s);
    const auto deadline = std::chrono::steady_clock::now() + 90s;
    while (derpd.count_log(installed) < 2 && std::chrono::steady_clock::now() < deadline) {
        expect_relayed(a, b, "during the renewal", 10s);
        std::this_thread::sleep_for(200ms);
    }
    REQUIRE_MESSAGE(derpd.count_log(installed) >= 2, derpd.log_tail());
    // The connections made under the old certificate carry on; new ones get the new one.
    expect_relayed(b, a, "after the renewal", 10s);
    auto c = derp_client::connect(derpd.port(), derpd.server_public(), verified_client(root));
    expect_relayed(c, a, "a new connection", 10s);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_orders_total{result=\"ok\"}") >= 2);
    std::filesystem::remove_all(base);
}

TEST_CASE("pebble refusing: a blocked name is logged with its problem document and the old certificate kept") {
    const std::uint16_t port = free_loopback_port();
    const std::uint16_t http_port = free_loopback_port();
    auto first = std::make_unique<pebble_server>(pebble_options{.http_port = http_port, .tls_port = port, .validity_s = 30});
    const auto base = fresh_dir("acme-refused");
    derpd_process derpd(letsencrypt_node(port, -1, *first, base / "certs"));
    REQUIRE_MESSAGE(derpd.wait_for_log(installed, 60s), derpd.log_tail());
    const std::string root = first->fetch_root();
    std::filesystem::copy_file(root, base / "root.pem");
    auto a = derp_client::connect(derpd.port(), derpd.server_public(), verified_client((base / "root.pem").string()));

    // The same ACME endpoint now refuses the name: renewal fails, the reason is quoted, and
    // derpd keeps serving the certificate it has while it retries.
    first->stop();
    pebble_server second({.http_port = http_port, .tls_port = port, .blocklist = {"localhost"}, .replaces = first.get()});
    REQUIRE_MESSAGE(derpd.wait_for_log("urn:ietf:params:acme:error:rejectedIdentifier", 60s), derpd.log_tail());
    CHECK(derpd.count_log("keeping the current certificate") >= 1);
    CHECK(metric_value(derpd.admin_port(), "derpd_acme_orders_total{result=\"failed\"}") >= 1);
    auto b = derp_client::connect(derpd.port(), derpd.server_public(), verified_client((base / "root.pem").string()));
    expect_relayed(a, b, "on the old certificate", 10s);
    std::filesystem::remove_all(base);
}

TEST_CASE("a challenge pebble cannot validate: the problem is logged, TLS refused with an alert, derpd keeps running") {
    const std::uint16_t port = free_loopback_port();
    pebble_server pebble({.http_port = free_loopback_port(), .tls_port = free_loopback_port()});
    const auto base = fresh_dir("acme-invalid");
    derpd_process derpd(letsencrypt_node(port, -1, pebble, base / "certs"));
    REQUIRE_MESSAGE(derpd.wait_for_log("tls-alpn-01 validation of localhost: authorization invalid: urn:ietf:params:acme:error:", 60s),
                    derpd.log_tail());
    REQUIRE_MESSAGE(derpd.wait_for_log("no certificate yet: TLS handshakes are refused; next attempt in", 30s), derpd.log_tail());
    // A client meets a clear refusal, logged with the reason, and derpd stays up.
    tls::context::client_options o;
    o.server_name = "localhost";
    o.verify = tls::context::verify_mode::insecure;
    client_options insecure;
    insecure.tls = tls::context::make_client(o).value();
    bool refused = false;
    try {
        auto c = derp_client::connect(derpd.port(), derpd.server_public(), insecure);
    } catch (const std::exception&) {
        refused = true;
    }
    CHECK(refused);
    CHECK(derpd.wait_for_log("no certificate for localhost yet (the ACME order is in progress)", 10s));
    CHECK(derpd.running());
    std::filesystem::remove_all(base);
}
