// derpd's ACME client against a hostile ACME server run by the test (HTTPS on loopback with a
// test CA, given to derpd with -acme-ca): a directory, order or challenge answer that is
// malformed, oversized or never comes. Each must end the attempt with a log line that says
// what was wrong, count a failed order, and leave relaying on the main listener alone: derpd
// starts with a stored certificate that is due for renewal, so DERP clients relay over TLS
// while the ACME thread fails. The fake server ignores the JWS: only derpd's reading is tested.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/test_ca.hh"

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;

namespace {

enum class hostile {
    malformed_directory,   // not JSON
    oversized_directory,   // a body with no length that never ends within the limit
    slow_directory,        // the request is read and never answered
    malformed_order,       // newOrder answers half a JSON object
    oversized_order,       // newOrder declares a 100 MB body
    slow_order,
    bad_challenge_token,   // an authorization whose token would be a path on port 80
    slow_challenge,        // the challenge POST is never answered
    rate_limited,          // newOrder answers 429 rateLimited with Retry-After (what pebble cannot do)
};

// An HTTPS server on 127.0.0.1 answering one request per connection, in order, on one thread.
class fake_acme_server {
public:
    fake_acme_server(const std::filesystem::path& dir, hostile mode) : _mode(mode) {
        _fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof addr;
        REQUIRE(::bind(_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(_fd, 16) == 0);
        REQUIRE(::getsockname(_fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0);
        _port = ntohs(addr.sin_port);
        auto ctx = tls::context::make_server({"127.0.0.1", (dir / "fake.crt").string(), (dir / "fake.key").string(), {}});
        REQUIRE_MESSAGE(ctx.has_value(), (ctx ? "" : ctx.error()));
        _ctx = ctx.value();
        _thread = std::thread([this] { serve(); });
    }
    ~fake_acme_server() {
        _stop = true;
        ::shutdown(_fd, SHUT_RDWR);
        _thread.join();
        ::close(_fd);
        for (int fd : _held) ::close(fd);
    }
    std::string url(std::string_view path) const { return fmt::format("https://127.0.0.1:{}{}", _port, path); }

private:
    void serve() {
        while (!_stop) {
            pollfd p{_fd, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            const int fd = ::accept4(_fd, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) continue;
            handle(fd);
        }
    }

    // Reads until the whole request (head and Content-Length body) is in; "" if it never is.
    static std::string read_request(int fd, tls::session& s, std::string& out) {
        std::string plain;
        for (;;) {
            const auto end = plain.find("\r\n\r\n");
            if (end != std::string::npos) {
                std::size_t body = 0;
                if (const auto cl = plain.find("Content-Length: "); cl != std::string::npos && cl < end)
                    body = std::stoul(plain.substr(cl + 16));
                if (plain.size() >= end + 4 + body) return plain;
            }
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 5000) <= 0) return {};
            char buffer[16384];
            const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
            if (n <= 0) return {};
            out.clear();
            s.feed({reinterpret_cast<const std::uint8_t*>(buffer), static_cast<std::size_t>(n)}, plain, out);
            if (!out.empty()) (void)::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
            if (s.state() == tls::status::failed) return {};
        }
    }

    static void send_plain(int fd, tls::session& s, std::string_view text) {
        std::vector<std::uint8_t> records(text.size() + 4096);
        std::string spill;
        const std::size_t n = s.write({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}, records, spill);
        (void)::send(fd, records.data(), n, MSG_NOSIGNAL);
        if (!spill.empty()) (void)::send(fd, spill.data(), spill.size(), MSG_NOSIGNAL);
    }

    static std::string answer(int status, std::string_view extra_headers, std::string_view body) {
        return fmt::format("HTTP/1.1 {} X\r\nReplay-Nonce: nonce{}\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                           status, status, extra_headers, body.size(), body);
    }

    void handle(int fd) {
        tls::session s(_ctx, false);
        std::string out;
        const std::string request = read_request(fd, s, out);
        const std::string line = request.substr(0, request.find("\r\n"));
        auto hold = [&] { _held.push_back(fd); };  // never answered, never closed until the end
        std::string response;
        if (line.starts_with("GET /dir ")) {
            if (_mode == hostile::slow_directory) return hold();
            if (_mode == hostile::malformed_directory) {
                response = answer(200, "", "<html>this is not an ACME directory</html>");
            } else if (_mode == hostile::oversized_directory) {
                send_plain(fd, s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                const std::string chunk(16384, ' ');
                for (int i = 0; i < 64 && !_stop; ++i) send_plain(fd, s, chunk);  // 1 MiB, no length
                ::close(fd);
                return;
            } else {
                response = answer(200, "", fmt::format(R"({{"newNonce":"{}","newAccount":"{}","newOrder":"{}"}})",
                                                       url("/nonce"), url("/acct"), url("/order")));
            }
        } else if (line.starts_with("HEAD /nonce ")) {
            response = "HTTP/1.1 200 OK\r\nReplay-Nonce: first\r\nContent-Length: 0\r\n\r\n";
        } else if (line.starts_with("POST /acct ")) {
            response = answer(201, fmt::format("Location: {}\r\n", url("/acct/1")), R"({"status":"valid"})");
        } else if (line.starts_with("POST /order ")) {
            if (_mode == hostile::slow_order) return hold();
            if (_mode == hostile::rate_limited) {
                // As Let's Encrypt answers past its limits (RFC 8555 6.6): 429, a problem
                // document and when to come back.
                send_plain(fd, s, answer(429, "Retry-After: 7200\r\nContent-Type: application/problem+json\r\n",
                                         R"({"type":"urn:ietf:params:acme:error:rateLimited",)"
                                         R"("detail":"too many certificates already issued for localhost"})"));
                ::close(fd);
                return;
            }
            const std::string location = fmt::format("Location: {}\r\n", url("/order/1"));
            if (_mode == hostile::malformed_order) {
                response = answer(201, location, R"({"status":"pending","authorizations":[)");
            } else if (_mode == hostile::oversized_order) {
                response = "HTTP/1.1 201 Created\r\nReplay-Nonce: n\r\n" + location + "Content-Length: 104857600\r\n\r\n{";
            } else {
                response = answer(201, location,
                                  fmt::format(R"({{"status":"pending","authorizations":["{}"],"finalize":"{}"}})",
                                              url("/authz/1"), url("/finalize/1")));
            }
        } else if (line.starts_with("POST /authz/1 ")) {
            const char* token = _mode == hostile::bad_challenge_token ? "../../../../etc/passwd" : "DGyRejmCefe7v4NfDGDKfA0123456789";
            response = answer(200, "", fmt::format(R"({{"status":"pending","identifier":{{"type":"dns","value":"localhost"}},)"
                                                   R"("challenges":[{{"type":"tls-alpn-01","url":"{}","status":"pending","token":"{}"}}]}})",
                                                   url("/chall/1"), token));
        } else if (line.starts_with("POST /chall/1 ")) {
            if (_mode == hostile::slow_challenge) return hold();
            response = answer(200, "", R"({"type":"tls-alpn-01","url":"https://127.0.0.1/chall/1","status":"processing"})");
        } else {
            response = answer(404, "Content-Type: application/problem+json\r\n",
                              R"({"type":"urn:ietf:params:acme:error:malformed","detail":"no such resource"})");
        }
        send_plain(fd, s, response);
        ::close(fd);
    }

    hostile _mode;
    int _fd = -1;
    std::uint16_t _port = 0;
    std::shared_ptr<tls::context> _ctx;
    std::atomic<bool> _stop{false};
    std::vector<int> _held;
    std::thread _thread;
};

// <certdir>/localhost as derpd stores it: a P-256 key and a self-signed certificate for
// localhost from 10 days ago until tomorrow, so that renewal is due at once.
void write_due_certificate(const std::filesystem::path& certdir) {
    std::filesystem::create_directories(certdir);
    std::filesystem::permissions(certdir, std::filesystem::perms::owner_all);
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 7);
    X509_gmtime_adj(X509_getm_notBefore(cert), -10L * 24 * 3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 24L * 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
    X509_set_issuer_name(cert, X509_get_subject_name(cert));
    X509_set_pubkey(cert, key);
    X509V3_CTX v3{};
    X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "DNS:localhost");
    X509_add_ext(cert, san, -1);
    X509_EXTENSION_free(san);
    REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
    const std::string path = (certdir / "localhost").string();
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    PEM_write_X509(f, cert);
    std::fclose(f);
    std::filesystem::permissions(path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    X509_free(cert);
    EVP_PKEY_free(key);
}

client_options insecure_tls() {
    tls::context::client_options o;
    o.server_name = "localhost";
    o.verify = tls::context::verify_mode::insecure;
    client_options c;
    c.tls = tls::context::make_client(o).value();
    return c;
}

}  // namespace

TEST_CASE("a hostile ACME server is refused with a clear log line while relaying carries on") {
    const auto base = std::filesystem::temp_directory_path() /
                      fmt::format("acme-hostile-{}", static_cast<long>(::getpid()));
    std::filesystem::create_directories(base);
    test_ca ca("fake ACME server CA");
    ca.write_cert(base / "fake-ca.pem");
    ca.issue(base, "fake", {"127.0.0.1"});

    const std::pair<hostile, std::string_view> cases[] = {
        {hostile::malformed_directory, "directory: not JSON"},
        {hostile::oversized_directory, "body over 65536 bytes refused"},
        {hostile::slow_directory, "timed out (waiting for the response)"},
        {hostile::malformed_order, "newOrder: order: not JSON"},
        {hostile::oversized_order, "newOrder: response: body of 104857600 bytes refused (over 65536)"},
        {hostile::slow_order, "newOrder: timed out (waiting for the response)"},
        {hostile::bad_challenge_token, "challenge tls-alpn-01: token is not 16..256 base64url characters"},
        {hostile::slow_challenge, "tls-alpn-01 challenge: timed out (waiting for the response)"},
        {hostile::rate_limited, "urn:ietf:params:acme:error:rateLimited: too many certificates already issued for localhost"},
    };
    for (const auto& [mode, expected] : cases) {
        CAPTURE(expected);
        const auto certdir = base / fmt::format("certs-{}", static_cast<int>(mode));
        write_due_certificate(certdir);
        fake_acme_server server(base, mode);
        derpd_options o;
        o.hostname = "localhost";
        o.admin_addr = "127.0.0.1:0";
        o.extra_args = {"-certmode", "letsencrypt", "-letsencrypt-any-port", "-certdir", certdir.string(),
                        "-http-port", "-1", "-acme-directory", server.url("/dir"), "-acme-ca",
                        (base / "fake-ca.pem").string(), "-acme-timeout", "2s", "-acme-retry-interval", "30s"};
        derpd_process derpd(o);
        CHECK(derpd.current_log_text().find("due for renewal now") != std::string::npos);
        auto a = derp_client::connect(derpd.port(), derpd.server_public(), insecure_tls());
        auto b = derp_client::connect(derpd.port(), derpd.server_public(), insecure_tls());
        const std::string failed = std::string("ACME: order for localhost failed: ");
        const std::vector<std::uint8_t> first = {0};
        a.send_packet(b.key(), first);
        bytes first_storage;
        CHECK(b.expect_recv_packet(first_storage, 5s).src == a.key());
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        std::uint32_t relayed = 0;
        while (derpd.count_log(failed) == 0 && std::chrono::steady_clock::now() < deadline) {
            const std::vector<std::uint8_t> packet = {1, 2, 3, static_cast<std::uint8_t>(relayed)};
            a.send_packet(b.key(), packet);
            bytes storage;
            CHECK(b.expect_recv_packet(storage, 5s).src == a.key());
            ++relayed;
            std::this_thread::sleep_for(50ms);
        }
        REQUIRE_MESSAGE(derpd.count_log(failed) == 1, derpd.log_tail());
        const std::string log = derpd.log_text();
        const std::string line = log.substr(log.find(failed), log.find('\n', log.find(failed)) - log.find(failed));
        CHECK_MESSAGE(line.find(expected) != std::string::npos, line);
        CHECK(line.find("keeping the current certificate") != std::string::npos);
        // A rate limit's Retry-After is obeyed: the next attempt waits that long, not the 30 s backoff.
        if (mode == hostile::rate_limited) CHECK_MESSAGE(line.find("next attempt in 7200 s") != std::string::npos, line);
        // Relaying after the failure too, on the stored certificate.
        const std::vector<std::uint8_t> after = {9, 9};
        b.send_packet(a.key(), after);
        bytes storage;
        CHECK(a.expect_recv_packet(storage, 5s).src == b.key());
    }
    std::filesystem::remove_all(base);
}
