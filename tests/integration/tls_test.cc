// derpd over TLS end to end: a real derpd process with -certmode manual (self-signed for
// 127.0.0.1), the project's client library relaying DERP traffic over TLS 1.3 and 1.2,
// certificate reload seen by new connections while an old one keeps relaying, and bad input
// at the TLS layer (garbage, a stalled or truncated handshake, an oversized record), each
// ending in a counted close and a log line while other clients carry on; and the client
// library's sha256-raw pin against a man in the middle on loopback. This kernel has no kTLS,
// so every connection here must report the userspace record layer's path (the VM suite covers
// kTLS).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "crypto/box.hh"
#include "crypto/ktls.hh"
#include "crypto/tls.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/relay_pair.hh"
#include "tests/support/skip.hh"
#include "tests/support/tls_socket.hh"

using namespace derp;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<client::client_tls> client_tls(int max_version = 0, std::string suites = {}, std::string ciphers = {}) {
    tls::context::client_options o;
    o.server_name = "127.0.0.1";
    o.verify = tls::context::verify_mode::insecure;
    o.max_version = max_version;
    o.tls13_ciphersuites = std::move(suites);
    o.tls12_ciphers = std::move(ciphers);
    auto setup = client::make_client_tls(o, 1);
    REQUIRE_MESSAGE(setup, (setup ? "" : setup.error()));
    return setup.value();
}

std::shared_ptr<client::client_tls> pinned_client_tls(const std::array<std::uint8_t, 32>& sha) {
    tls::context::client_options o;
    o.server_name = "127.0.0.1";
    o.verify = tls::context::verify_mode::pinned;
    o.pinned_sha256 = sha;
    auto setup = client::make_client_tls(o, 1);
    REQUIRE(setup);
    return setup.value();
}

// The value of one sample line of /debug/varz, fetched over TLS.
std::uint64_t varz_value(std::uint16_t port, const std::string& sample) {
    auto s = test::tls_socket::open(port, test::insecure_client_context());
    REQUIRE_MESSAGE(s, (s ? "" : s.error()));
    const std::string page = s.value()->http_get("/debug/varz");
    const auto at = page.find("\n" + sample + " ");
    if (at == std::string::npos) return 0;
    return std::stoull(page.substr(at + sample.size() + 2));
}

std::array<std::uint8_t, 32> cert_sha256(const std::filesystem::path& cert, const std::filesystem::path& key) {
    auto ctx = tls::context::make_server({"127.0.0.1", cert.string(), key.string(), {}});
    REQUIRE_MESSAGE(ctx, (ctx ? "" : ctx.error()));
    return ctx.value()->leaf_sha256();
}

// A raw TCP connection to the TLS port, from 127.0.0.1 or the loopback address given.
int raw_connect(std::uint16_t port, const char* from = nullptr) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (from != nullptr) {
        sockaddr_in local{};
        local.sin_family = AF_INET;
        REQUIRE(::inet_pton(AF_INET, from, &local.sin_addr) == 1);
        REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&local), sizeof local) == 0);
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
    return fd;
}

// Reads until the server closes (true) or the timeout passes (false); what it sent goes to `got`.
bool wait_closed(int fd, std::chrono::milliseconds timeout, std::string* got = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buffer[4096];
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) return true;
        if (got != nullptr) got->append(buffer, static_cast<std::size_t>(n));
    }
    return false;
}

test::derpd_options tls_options() {
    test::derpd_options o;
    o.tls = true;
    o.shards = 2;
    return o;
}

void skip_if_no_io_uring(const test::relay_pair_result& r) {
    if (!r.ok && test::is_missing_io_uring(r.problem)) test::skip(r.problem);
}

}  // namespace

TEST_CASE("DERP over TLS 1.3 and 1.2: packets of 1, 1200 and 65536 bytes both ways, userspace records") {
    REQUIRE(crypto_init());
    test::derpd_process derpd(tls_options());
    CHECK(derpd.wait_for_log("Configure it in DERPMap using: {\"Name\":\"custom\",\"RegionID\":900,\"HostName\":\"127.0.0.1\",\"CertName\":\"sha256-raw:", 2s));
    if (!tls::probe_ktls().available) CHECK(derpd.wait_for_log("kTLS not used", 2s));
    struct variant {
        int max;
        const char* suites;
        const char* ciphers;
    };
    for (const variant v : {variant{0, "", ""}, variant{0, "TLS_CHACHA20_POLY1305_SHA256", ""},
                            variant{TLS1_2_VERSION, "", "ECDHE-ECDSA-AES128-GCM-SHA256"},
                            variant{TLS1_2_VERSION, "", "ECDHE-ECDSA-CHACHA20-POLY1305"}}) {
        CAPTURE(v.max);
        CAPTURE(v.suites);
        CAPTURE(v.ciphers);
        const auto r = test::run_relay_pair(derpd.port(), client_tls(v.max, v.suites, v.ciphers), {1, 1200, 65536}, 20);
        skip_if_no_io_uring(r);
        CHECK_MESSAGE(r.ok, r.problem << "\n" << derpd.log_tail());
    }
    CHECK(varz_value(derpd.port(), "derper_tls_request_version{version=\"1.3\"}") >= 4);  // 2 pairs + varz fetches
    CHECK(varz_value(derpd.port(), "derper_tls_request_version{version=\"1.2\"}") == 4);
    CHECK(varz_value(derpd.port(), "derpd_tls_handshakes_total{result=\"ok\"}") >= 8);
    if (!tls::probe_ktls().available) {
        CHECK(varz_value(derpd.port(), "derpd_connections_by_tls_path_total{path=\"ktls\"}") == 0);
        // The userspace record layer carries them all; no connection keeps OpenSSL's.
        CHECK(varz_value(derpd.port(), "derpd_connections_by_tls_path_total{path=\"userspace_records\"}") >= 8);
        CHECK(varz_value(derpd.port(), "derpd_connections_by_tls_path_total{path=\"userspace\"}") == 0);
        CHECK(derpd.wait_for_log("TLS path userspace-records", 1s));
    }
    // The same server refuses plain HTTP on its TLS port: it is not a ClientHello.
    const int fd = raw_connect(derpd.port());
    const std::string request = "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n";
    REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) > 0);
    std::string got;
    CHECK(wait_closed(fd, 2s, &got));
    CHECK(got.find("HTTP/1.1") == std::string::npos);  // never answered as HTTP
    ::close(fd);
    CHECK(derpd.wait_for_log("TLS handshake failed", 2s));
}

TEST_CASE("certificate reload: new connections get the new certificate, an old one keeps relaying") {
    REQUIRE(crypto_init());
    auto options = tls_options();
    options.extra_args = {"-cert-poll-interval", "200ms"};
    // The old connection sends its request only after the reload and two relay pairs: its
    // request deadline (3x this) must not depend on how fast those run.
    options.handshake_timeout = "20s";
    test::derpd_process derpd(options);
    const auto certs = derpd.dir() / "certs";
    const auto old_sha = cert_sha256(certs / "127.0.0.1.crt", certs / "127.0.0.1.key");
    {
        const auto r = test::run_relay_pair(derpd.port(), pinned_client_tls(old_sha), {100}, 5);
        skip_if_no_io_uring(r);
        REQUIRE_MESSAGE(r.ok, r.problem);
    }
    // An old connection: handshake now, used after the reload.
    auto old_conn = test::tls_socket::open(derpd.port(), test::insecure_client_context());
    REQUIRE(old_conn);

    // A new certificate, written beside and renamed into place (key first, as an operator's
    // tooling would; each rename is atomic).
    const auto fresh = derpd.dir() / "fresh";
    std::filesystem::create_directories(fresh);
    REQUIRE(tls::write_self_signed("127.0.0.1", (fresh / "c.crt").string(), (fresh / "c.key").string()));
    const auto new_sha = cert_sha256(fresh / "c.crt", fresh / "c.key");
    REQUIRE(new_sha != old_sha);
    std::filesystem::rename(fresh / "c.key", certs / "127.0.0.1.key");
    std::filesystem::rename(fresh / "c.crt", certs / "127.0.0.1.crt");
    REQUIRE(derpd.wait_for_log("certificate reloaded (the files changed)", 5s));

    const auto r_new = test::run_relay_pair(derpd.port(), pinned_client_tls(new_sha), {100}, 5);
    CHECK_MESSAGE(r_new.ok, r_new.problem);
    const auto r_old = test::run_relay_pair(derpd.port(), pinned_client_tls(old_sha), {100}, 5, 3000);
    CHECK(!r_old.ok);  // the old pin no longer matches
    // The connection from before the reload still works: a full HTTP exchange on it.
    const std::string page = old_conn.value()->http_get("/derp/probe");
    CHECK(page.starts_with("HTTP/1.1 200 OK\r\n"));

    // A broken certificate file: the reload fails, the log says why, the current one stays.
    { std::ofstream(certs / "127.0.0.1.crt") << "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"; }
    REQUIRE(derpd.wait_for_log("failed, keeping the current certificate", 5s));
    const auto r_kept = test::run_relay_pair(derpd.port(), pinned_client_tls(new_sha), {100}, 5);
    CHECK_MESSAGE(r_kept.ok, r_kept.problem);

    // SIGHUP reloads at once (here: still broken, so it fails again and keeps the current one).
    const auto failures_before = derpd.count_log("failed, keeping the current certificate");
    ::kill(derpd.pid(), SIGHUP);
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    while (derpd.count_log("certificate reload (SIGHUP) failed") == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    CHECK(derpd.count_log("certificate reload (SIGHUP) failed") >= 1);
    CHECK(derpd.count_log("failed, keeping the current certificate") > failures_before);
}

TEST_CASE("bad TLS input: each a counted close with a log line; a good client is unaffected") {
    REQUIRE(crypto_init());
    test::derpd_process derpd(tls_options());  // handshake deadline 1 s (derpd_options)
    std::vector<int> bad;

    // Garbage instead of a ClientHello.
    const int garbage = raw_connect(derpd.port());
    const std::string junk(300, '\x42');
    REQUIRE(::send(garbage, junk.data(), junk.size(), MSG_NOSIGNAL) > 0);
    CHECK(wait_closed(garbage, 2s));
    ::close(garbage);

    // A handshake that never completes: connected, silent; closed at the deadline.
    const int silent = raw_connect(derpd.port());
    const auto start = std::chrono::steady_clock::now();
    CHECK(wait_closed(silent, 5s));
    const auto waited = std::chrono::steady_clock::now() - start;
    CHECK(waited >= 900ms);
    ::close(silent);
    CHECK(derpd.wait_for_log("TLS handshake on slot", 1s));

    // A truncated handshake: the first half of a real ClientHello, then the client goes.
    {
        tls::session hello(test::insecure_client_context(), false);
        std::string first;
        hello.start(first);
        const int fd = raw_connect(derpd.port());
        REQUIRE(::send(fd, first.data(), first.size() / 2, MSG_NOSIGNAL) > 0);
        std::this_thread::sleep_for(50ms);
        ::close(fd);
    }

    // An oversized record after a good handshake: a header announcing 0xffff bytes.
    auto s = test::tls_socket::open(derpd.port(), test::insecure_client_context());
    REQUIRE_MESSAGE(s, (s ? "" : s.error()));
    std::string header = "\x17\x03\x03\xff\xff";
    header += std::string(0xffff, '\0');
    s.value()->send_raw(header);
    CHECK(wait_closed(s.value()->fd(), 3s));
    CHECK(derpd.wait_for_log("TLS connection failed", 2s));

    // Everyone else is fine.
    const auto r = test::run_relay_pair(derpd.port(), client_tls(), {1200}, 20);
    skip_if_no_io_uring(r);
    CHECK_MESSAGE(r.ok, r.problem);
    CHECK(varz_value(derpd.port(), "derpd_tls_handshakes_total{result=\"failed\"}") >= 1);
    CHECK(varz_value(derpd.port(), "derpd_tls_handshakes_total{result=\"timeout\"}") >= 1);
    CHECK(varz_value(derpd.port(), "derpd_tls_record_failures_total") >= 1);
    CHECK(derpd.running());
}

TEST_CASE("TLS stalls after a whole ClientHello, from one address: it holds its share of the places, real clients get theirs") {
    REQUIRE(crypto_init());
    test::derpd_options o = tls_options();
    o.shards = 1;
    o.handshake_timeout = "60s";
    test::derpd_process derpd(o);
    // 600 connections from 127.0.0.2, each sending a whole ClientHello and then nothing (the
    // server's flight goes unanswered): without -tls-handshakes-per-source they took all 512
    // places of the shard until the deadline; with it (64 by default) they hold 64.
    tls::session hello(test::insecure_client_context(), false);
    std::string client_hello;
    hello.start(client_hello);
    std::vector<int> stalled;
    for (int i = 0; i < 600; ++i) {
        const int fd = raw_connect(derpd.port(), "127.0.0.2");
        REQUIRE(::send(fd, client_hello.data(), client_hello.size(), MSG_NOSIGNAL) ==
                static_cast<ssize_t>(client_hello.size()));
        stalled.push_back(fd);
    }
    // Once derpd has read every one of them: 64 hold a place, the rest wait for one of theirs.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (varz_value(derpd.port(), "derpd_tls_handshakes_in_flight") +
                   varz_value(derpd.port(), "derpd_tls_handshakes_waiting") < 600 &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    CHECK(varz_value(derpd.port(), "derpd_tls_handshakes_in_flight") == 64);
    CHECK(varz_value(derpd.port(), "derpd_tls_handshakes_waiting") == 536);
    const auto r = test::run_relay_pair(derpd.port(), client_tls(), {1200}, 5, 20000);
    skip_if_no_io_uring(r);
    CHECK_MESSAGE(r.ok, r.problem);
    int open = 0;
    for (int fd : stalled) {
        char b[4096];
        // Open: either unanswered yet (EAGAIN) or holding the server's flight (bytes).
        if (::recv(fd, b, sizeof b, MSG_DONTWAIT) != 0) ++open;
        ::close(fd);
    }
    CHECK(open == 600);
}

TEST_CASE("TLS slowloris: partial ClientHellos on more connections than a shard has handshake places do not hold real clients") {
    REQUIRE(crypto_init());
    test::derpd_options o = tls_options();
    o.shards = 1;
    o.handshake_timeout = "60s";  // the trickling connections stay for the whole test
    test::derpd_process derpd(o);
    // 600 connections (a shard runs 512 handshakes at once), each sending the first 100
    // bytes of a real ClientHello and then nothing: before, each took a handshake place with
    // its first byte, and a real client waited for one until the deadline (60 s) freed it.
    tls::session hello(test::insecure_client_context(), false);
    std::string client_hello;
    hello.start(client_hello);
    REQUIRE(client_hello.size() > 100);
    std::vector<int> stalled;
    for (int i = 0; i < 600; ++i) {
        const int fd = raw_connect(derpd.port());
        REQUIRE(fd >= 0);
        REQUIRE(::send(fd, client_hello.data(), 100, MSG_NOSIGNAL) == 100);
        stalled.push_back(fd);
    }
    // A real client's handshake and relay now: well within the stalled ones' deadline.
    const auto start = std::chrono::steady_clock::now();
    const auto r = test::run_relay_pair(derpd.port(), client_tls(), {1200}, 5, 20000);
    skip_if_no_io_uring(r);
    CHECK_MESSAGE(r.ok, r.problem);
    const auto took = std::chrono::steady_clock::now() - start;
    MESSAGE("a real client's handshake and relay beside 600 partial ClientHellos: "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took < 30s);
    // The trickling connections are all still open (nobody was closed to make room).
    int open = 0;
    for (int fd : stalled) {
        char b;
        if (::recv(fd, &b, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN) ++open;
        ::close(fd);
    }
    CHECK(open == 600);
}

TEST_CASE("fast start over TLS 1.3: the meta certificate carries the server key") {
    REQUIRE(crypto_init());
    test::derpd_process derpd(tls_options());
    auto s = test::tls_socket::open(derpd.port(), test::insecure_client_context());
    REQUIRE(s);
    const auto meta = s.value()->session().peer_meta_key();
    REQUIRE(meta);
    CHECK(*meta == derpd.server_public());
    auto s12 = test::tls_socket::open(derpd.port(), test::insecure_client_context(TLS1_2_VERSION));
    REQUIRE(s12);
    CHECK(!s12.value()->session().peer_meta_key());
}

namespace {

// A TLS server on loopback made of raw OpenSSL: it presents `cert` (signing with `key`) and
// then `chain`, completes handshakes one connection at a time, reads what a client sends for
// a moment and answers nothing. With an attacker's certificate first and the pinned one as the
// chain, it is the man in the middle a pin must stop before the client writes anything.
class chain_server {
public:
    chain_server(const std::string& cert, const std::string& key, const std::string& chain) {
        _ctx = SSL_CTX_new(TLS_server_method());
        REQUIRE(_ctx != nullptr);
        REQUIRE(SSL_CTX_use_certificate_file(_ctx, cert.c_str(), SSL_FILETYPE_PEM) == 1);
        REQUIRE(SSL_CTX_use_PrivateKey_file(_ctx, key.c_str(), SSL_FILETYPE_PEM) == 1);
        if (!chain.empty()) REQUIRE(add_chain_file(chain));
        _fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(_fd, 16) == 0);
        socklen_t length = sizeof addr;
        REQUIRE(::getsockname(_fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0);
        _port = ntohs(addr.sin_port);
        _thread = std::thread([this] { run(); });
    }
    ~chain_server() {
        _stop = true;
        _thread.join();
        ::close(_fd);
        SSL_CTX_free(_ctx);
    }
    chain_server(const chain_server&) = delete;
    chain_server& operator=(const chain_server&) = delete;
    std::uint16_t port() const noexcept { return _port; }

private:
    bool add_chain_file(const std::string& path) {
        FILE* f = std::fopen(path.c_str(), "r");
        if (f == nullptr) return false;
        X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
        std::fclose(f);
        return cert != nullptr && SSL_CTX_add0_chain_cert(_ctx, cert) == 1;
    }
    void run() {
        while (!_stop) {
            pollfd p{_fd, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            const int conn = ::accept4(_fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (conn < 0) continue;
            timeval timeout{0, 100'000};
            ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
            SSL* ssl = SSL_new(_ctx);
            SSL_set_fd(ssl, conn);
            if (SSL_accept(ssl) == 1) {
                char buffer[4096];
                for (int i = 0; i < 10 && !_stop; ++i)
                    if (SSL_read(ssl, buffer, sizeof buffer) <= 0 && SSL_get_error(ssl, -1) != SSL_ERROR_WANT_READ) break;
            }
            SSL_free(ssl);
            ::close(conn);
            ERR_clear_error();
        }
    }

    SSL_CTX* _ctx = nullptr;
    int _fd = -1;
    std::uint16_t _port = 0;
    std::atomic<bool> _stop{false};
    std::thread _thread;
};

}  // namespace

TEST_CASE("client library: a sha256-raw pin refuses a man in the middle whose own certificate comes first") {
    REQUIRE(crypto_init());
    if (std::system("command -v openssl >/dev/null") != 0) test::skip("openssl not installed");
    char pattern[] = "/tmp/derpd-tls-mitm-XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    const std::filesystem::path dir = pattern;
    const auto real_crt = (dir / "real.crt").string(), real_key = (dir / "real.key").string();
    const auto att_crt = (dir / "att.crt").string(), att_key = (dir / "att.key").string();
    // The pinned certificate is derpd's kind; the attacker's is self-made and named like a
    // meta certificate to a check that looks only at the "derpkey" prefix.
    REQUIRE(tls::write_self_signed("127.0.0.1", real_crt, real_key));
    const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=derpkey00 "
                            "-keyout " + att_key + " -out " + att_crt + " 2>/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    const auto pin = cert_sha256(real_crt, real_key);
    for (int max : {0, TLS1_2_VERSION}) {
        CAPTURE(max);
        tls::context::client_options o;
        o.server_name = "127.0.0.1";
        o.verify = tls::context::verify_mode::pinned;
        o.pinned_sha256 = pin;
        o.max_version = max;
        auto setup = client::make_client_tls(o, 1);
        REQUIRE(setup);
        {
            chain_server mitm(att_crt, att_key, real_crt);
            const auto r = test::run_relay_pair(mitm.port(), setup.value(), {100}, 1, 3000);
            skip_if_no_io_uring(r);
            CHECK(!r.ok);
            CHECK_MESSAGE(r.problem.find("tls_handshake") != std::string::npos, r.problem);
        }
        {
            // The control: the pinned certificate itself passes TLS (the relay then fails at
            // HTTP, since this server is not DERP).
            chain_server genuine(real_crt, real_key, "");
            const auto r = test::run_relay_pair(genuine.port(), setup.value(), {100}, 1, 3000);
            CHECK(!r.ok);
            CHECK_MESSAGE(r.problem.find("tls_handshake") == std::string::npos, r.problem);
        }
    }
    std::filesystem::remove_all(dir);
}
