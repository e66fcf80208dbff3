// derpd's userspace record layer against TLS stacks it did not write, relaying DERP packets:
// `openssl s_client` (TLS 1.3 with each suite and TLS 1.2 with each AEAD cipher, with
// client-initiated KeyUpdates typed as `k` and `K` in TLS 1.3) and curl (its POST body carries
// ClientInfo and SendPacket frames behind the upgrade request; what derpd sends comes back as
// the "response body"), each to and from the project's DERP client, packets of 1 to 65536 bytes;
// and bad records from a real OpenSSL client over a socket (tampered, replayed, dropped,
// oversized, truncated, of unknown type, an alert mid-stream, a TLS 1.2 renegotiation), each a
// counted close with its reason in /debug/varz and a log line.
// s_client treats a read from its stdin that starts with Q, R, k or K as a command, so every
// byte this test sends through it avoids those four (keys are drawn until they do; a command
// is typed only when everything before it has been delivered, and nothing follows it until
// s_client reports it).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/skip.hh"
#include "tests/support/tls_memory_peer.hh"
#include "tests/support/tls_socket.hh"

using namespace derp;
using namespace std::chrono_literals;
using test::bytes;

namespace {

constexpr std::uint8_t frame_server_key = 0x01, frame_server_info = 0x03, frame_send_packet = 0x04,
                       frame_recv_packet = 0x05;

bool clean(std::span<const std::uint8_t> data) {
    for (const std::uint8_t b : data)
        if (b == 'Q' || b == 'R' || b == 'k' || b == 'K') return false;
    return true;
}

// A key whose public half (sent or used as a destination through s_client) is clean.
private_key clean_key() {
    for (;;) {
        private_key k = generate_private_key();
        if (clean(public_key_of(k).bytes())) return k;
    }
}

// Packet contents: bytes 0x80..0xbf in a pattern that shifts with the size.
bytes packet_of(std::size_t size) {
    bytes p(size);
    for (std::size_t i = 0; i < size; ++i) p[i] = static_cast<std::uint8_t>(0x80 | ((i * 7 + size) & 0x3f));
    return p;
}

bytes send_packet_frame(const node_key& dst, std::span<const std::uint8_t> packet) {
    bytes f;
    f.reserve(5 + 32 + packet.size());
    f.push_back(frame_send_packet);
    const std::uint32_t length = static_cast<std::uint32_t>(32 + packet.size());
    for (unsigned shift : {24u, 16u, 8u, 0u}) f.push_back(static_cast<std::uint8_t>(length >> shift));
    f.insert(f.end(), dst.bytes().begin(), dst.bytes().end());
    f.insert(f.end(), packet.begin(), packet.end());
    return f;
}

// 1 to 65536 bytes, across the record boundaries (16 KiB of plaintext) and derper's limit;
// every frame length's bytes are clean too.
const std::vector<std::size_t> sizes = {1, 2, 3, 100, 1200, 4063, 4064, 4065, 16383, 16384, 16385, 40000, 65535, 65536};

// A child process with its stdin and stdout on pipes and its stderr in a file.
class child {
public:
    child(const std::vector<std::string>& argv, std::filesystem::path err_path) : _err(std::move(err_path)) {
        int in[2], out[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        _pid = ::fork();
        REQUIRE(_pid >= 0);
        if (_pid == 0) {
            ::dup2(in[0], 0);
            ::dup2(out[1], 1);
            const int err = ::open(_err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
            ::dup2(err, 2);
            std::vector<char*> args;
            for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            ::execvp(args[0], args.data());
            ::_exit(127);
        }
        ::close(in[0]);
        ::close(out[1]);
        _in = in[1];
        _out = out[0];
    }
    ~child() {
        ::close(_in);
        ::close(_out);
        ::kill(_pid, SIGTERM);
        int status = 0;
        ::waitpid(_pid, &status, 0);
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;

    void write(std::span<const std::uint8_t> data) {
        for (std::size_t done = 0; done < data.size();) {
            const ssize_t n = ::write(_in, data.data() + done, data.size() - done);
            REQUIRE(n > 0);
            done += static_cast<std::size_t>(n);
        }
    }
    void write(std::string_view text) { write({reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}); }
    bool read_exact(std::uint8_t* p, std::size_t n, std::chrono::milliseconds timeout = 10s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (n > 0) {
            pollfd fd{_out, POLLIN, 0};
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || ::poll(&fd, 1, static_cast<int>(left.count())) <= 0) return false;
            const ssize_t got = ::read(_out, p, n);
            if (got <= 0) return false;
            p += got;
            n -= static_cast<std::size_t>(got);
        }
        return true;
    }
    // The next frame of a type in `wanted` (KeepAlives and the rest skipped).
    test::frame next_frame(std::initializer_list<std::uint8_t> wanted) {
        for (int skipped = 0; skipped < 100; ++skipped) {
            std::uint8_t header[5];
            REQUIRE_MESSAGE(read_exact(header, 5), "no frame header; stderr: " << err_text());
            const std::size_t length = std::size_t{header[1]} << 24 | std::size_t{header[2]} << 16 |
                                       std::size_t{header[3]} << 8 | header[4];
            REQUIRE(length <= (1u << 20));
            test::frame f;
            f.type = header[0];
            f.payload.resize(length);
            REQUIRE_MESSAGE(read_exact(f.payload.data(), length), "frame body cut short; stderr: " << err_text());
            for (const auto w : wanted)
                if (f.type == w) return f;
        }
        FAIL("no wanted frame among 100");
        return {};
    }
    std::string err_text() const {
        std::ifstream in(_err);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }
    // Waits until stderr holds `needle` `count` times.
    bool wait_err(std::string_view needle, std::size_t count, std::chrono::milliseconds timeout = 10s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            const std::string text = err_text();
            std::size_t n = 0;
            for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
            if (n >= count) return true;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }

private:
    pid_t _pid = -1;
    int _in = -1, _out = -1;
    std::filesystem::path _err;
};

struct variant {
    bool tls13;
    const char* cipher;  // s_client -ciphersuites / -cipher, curl --tls13-ciphers / --ciphers
};
constexpr variant all_variants[] = {
    {true, "TLS_AES_128_GCM_SHA256"},       {true, "TLS_AES_256_GCM_SHA384"},
    {true, "TLS_CHACHA20_POLY1305_SHA256"}, {false, "ECDHE-ECDSA-AES128-GCM-SHA256"},
    {false, "ECDHE-ECDSA-AES256-GCM-SHA384"}, {false, "ECDHE-ECDSA-CHACHA20-POLY1305"},
};

std::shared_ptr<tls::context> insecure_context() {
    tls::context::client_options o;
    o.server_name = "127.0.0.1";
    o.verify = tls::context::verify_mode::insecure;
    auto ctx = tls::context::make_client(o);
    REQUIRE(ctx);
    return ctx.value();
}

test::derp_client project_client(const test::derpd_process& derpd) {
    test::client_options o;
    o.key = clean_key();
    o.tls = insecure_context();
    return test::derp_client::connect(derpd.port(), derpd.server_public(), o);
}

// The other side receives every size from `a_key`'s sender, then sends each back.
void relay_both_ways(child& a, const node_key& a_key, test::derp_client& b) {
    for (const std::size_t size : sizes) {
        CAPTURE(size);
        const bytes packet = packet_of(size);
        const bytes frame = send_packet_frame(b.key(), packet);
        REQUIRE(clean(frame));
        a.write(frame);
        bytes storage;
        const auto got = b.expect_recv_packet(storage, 10s);
        CHECK(got.src == a_key);
        CHECK(std::equal(got.packet.begin(), got.packet.end(), packet.begin(), packet.end()));
    }
    for (const std::size_t size : sizes) {
        CAPTURE(size);
        const bytes packet = packet_of(size);
        b.send_packet(a_key, packet);
        const test::frame f = a.next_frame({frame_recv_packet});
        CHECK(f.wire() == test::recv_packet_frame(b.key(), packet));
    }
}

std::string tmp_file(const test::derpd_process& derpd, std::string_view name) { return (derpd.dir() / name).string(); }

std::uint64_t varz_value(std::uint16_t port, const std::string& sample) {
    auto s = test::tls_socket::open(port, test::insecure_client_context());
    REQUIRE_MESSAGE(s, (s ? "" : s.error()));
    const std::string page = s.value()->http_get("/debug/varz");
    const auto at = page.find("\n" + sample + " ");
    return at == std::string::npos ? 0 : std::stoull(page.substr(at + sample.size() + 2));
}

// A raw OpenSSL client (tests/support/tls_memory_peer) on a real socket: the test sees and may
// change every byte it sends.
struct raw_tls_client {
    int fd = -1;
    std::unique_ptr<test::memory_peer> peer;

    raw_tls_client(std::uint16_t port, int max_version, std::string_view ciphers) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
        peer = test::memory_peer::client(max_version, ciphers);
        REQUIRE(peer);
        for (int round = 0; round < 50 && !peer->handshake_done(); ++round) {
            peer->handshake();
            send(peer->take_output());
            if (peer->handshake_done()) break;
            pump(2s);
        }
        REQUIRE(peer->handshake_done());
    }
    ~raw_tls_client() { ::close(fd); }
    void send(std::string_view bytes) const {
        if (!bytes.empty()) REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
    }
    // Reads what arrives within `timeout` into the peer; false once the server closed.
    bool pump(std::chrono::milliseconds timeout) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return true;
        char buffer[16384];
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) return false;
        peer->receive({buffer, static_cast<std::size_t>(n)});
        return true;
    }
    std::string sealed(std::string_view plain) {
        REQUIRE(peer->write(plain));
        return peer->take_output();
    }
    bool closed_within(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline)
            if (!pump(50ms)) return true;
        return false;
    }
};

}  // namespace

TEST_CASE("openssl s_client relays DERP packets of 1..65536 bytes over each TLS 1.3 suite and 1.2 cipher, KeyUpdate k/K") {
    REQUIRE(crypto_init());
    if (std::system("command -v openssl >/dev/null 2>&1") != 0) test::skip("openssl not installed");
    test::derpd_options options;
    options.tls = true;
    options.shards = 1;
    test::derpd_process derpd(options);
    for (const variant& v : all_variants) {
        CAPTURE(v.cipher);
        auto b = project_client(derpd);
        child a({"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(derpd.port()), "-brief",
                 v.tls13 ? "-tls1_3" : "-tls1_2", v.tls13 ? "-ciphersuites" : "-cipher", v.cipher},
                tmp_file(derpd, "s_client.err"));
        a.write("GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n");
        std::string head;
        while (head.find("\r\n\r\n") == std::string::npos && head.size() < 4096) {
            std::uint8_t c = 0;
            REQUIRE_MESSAGE(a.read_exact(&c, 1), "no 101; s_client: " << a.err_text() << "\nderpd: " << derpd.log_tail());
            head.push_back(static_cast<char>(c));
        }
        REQUIRE(head.starts_with("HTTP/1.1 101 "));
        CHECK(a.err_text().find(v.cipher) != std::string::npos);
        REQUIRE(a.next_frame({frame_server_key}).payload.size() == 40);
        // ClientInfo sealed to the server; drawn again until its random bytes are clean.
        const private_key a_secret = clean_key();
        const node_key a_key = public_key_of(a_secret);
        bytes info;
        do info = test::client_info_frame(a_secret, derpd.server_public(), R"({"version":2})");
        while (!clean(info));
        a.write(info);
        a.next_frame({frame_server_info});
        relay_both_ways(a, a_key, b);
        if (v.tls13) {
            // k: the client's keys change; K: ours must change too (update_requested).
            for (const char* command : {"k\n", "K\n"}) {
                const std::size_t updates = command[0] == 'k' ? 1 : 2;
                a.write(command);
                REQUIRE_MESSAGE(a.wait_err("KEYUPDATE", updates), a.err_text());
                relay_both_ways(a, a_key, b);
            }
        }
    }
    CHECK(derpd.count_log("TLS path userspace-records") >= 12);
    CHECK(derpd.count_log("TLS connection failed") == 0);
}

TEST_CASE("curl relays DERP packets of 1..65536 bytes both ways over each TLS 1.3 suite and 1.2 cipher") {
    REQUIRE(crypto_init());
    if (std::system("command -v curl >/dev/null 2>&1") != 0) test::skip("curl not installed");
    test::derpd_options options;
    options.tls = true;
    options.shards = 1;
    test::derpd_process derpd(options);
    for (const variant& v : all_variants) {
        CAPTURE(v.cipher);
        auto b = project_client(derpd);
        // The body: ClientInfo, then a SendPacket of every size to b.
        const private_key a_secret = generate_private_key();
        const node_key a_key = public_key_of(a_secret);
        bytes body = test::client_info_frame(a_secret, derpd.server_public(), R"({"version":2})");
        for (const std::size_t size : sizes) {
            const bytes f = send_packet_frame(b.key(), packet_of(size));
            body.insert(body.end(), f.begin(), f.end());
        }
        const std::string body_path = tmp_file(derpd, "curl.body");
        std::ofstream(body_path, std::ios::binary).write(reinterpret_cast<const char*>(body.data()),
                                                        static_cast<std::streamsize>(body.size()));
        std::vector<std::string> argv = {"curl", "-sSk", "-N", "--http1.1", "-H", "Upgrade: DERP", "-H",
                                         "Connection: Upgrade", "-H", "Expect:", "--data-binary", "@" + body_path,
                                         "--max-time", "60"};
        if (v.tls13) {
            argv.insert(argv.end(), {"--tlsv1.3", "--tls13-ciphers", v.cipher});
        } else {
            argv.insert(argv.end(), {"--tlsv1.2", "--tls-max", "1.2", "--ciphers", v.cipher});
        }
        argv.push_back("https://127.0.0.1:" + std::to_string(derpd.port()) + "/derp");
        child a(argv, tmp_file(derpd, "curl.err"));
        INFO("derpd: " << derpd.log_tail(15) << "\ncurl: " << a.err_text());
        REQUIRE(a.next_frame({frame_server_key}).payload.size() == 40);
        a.next_frame({frame_server_info});
        for (const std::size_t size : sizes) {
            CAPTURE(size);
            const bytes packet = packet_of(size);
            bytes storage;
            const auto got = b.expect_recv_packet(storage, 10s);
            CHECK(got.src == a_key);
            CHECK(std::equal(got.packet.begin(), got.packet.end(), packet.begin(), packet.end()));
        }
        for (const std::size_t size : sizes) {
            CAPTURE(size);
            const bytes packet = packet_of(size);
            b.send_packet(a_key, packet);
            CHECK(a.next_frame({frame_recv_packet}).wire() == test::recv_packet_frame(b.key(), packet));
        }
    }
    CHECK(derpd.count_log("TLS path userspace-records") >= 12);
}

TEST_CASE("bad records from a real OpenSSL client: each a counted close with its reason, logged") {
    REQUIRE(crypto_init());
    test::derpd_options options;
    options.tls = true;
    options.shards = 1;
    test::derpd_process derpd(options);
    struct bad_case {
        const char* reason;
        int max_version;
        std::function<std::string(raw_tls_client&)> wire;
    };
    const std::vector<bad_case> cases = {
        {"bad_tag", 0, [](raw_tls_client& c) {
             std::string r = c.sealed("tampered");
             r.back() ^= 1;
             return r;
         }},
        {"wrong_sequence", 0, [](raw_tls_client& c) {
             const std::string r = c.sealed("twice");
             return r + r;
         }},
        {"wrong_sequence", TLS1_2_VERSION, [](raw_tls_client& c) {
             (void)c.sealed("dropped");
             return c.sealed("after the dropped one");
         }},
        {"oversized", 0, [](raw_tls_client&) { return std::string("\x17\x03\x03\x41\x01", 5); }},
        {"truncated", TLS1_2_VERSION, [](raw_tls_client&) { return std::string("\x17\x03\x03\x00\x05hello", 10); }},
        {"unknown_content_type", 0, [](raw_tls_client&) { return std::string("\x18\x03\x03\x00\x20", 5) + std::string(32, 'x'); }},
        {"alert", 0, [](raw_tls_client& c) {
             // OpenSSL's own fatal alert: it gets a record it cannot open and says so.
             c.peer->receive(std::string("\x17\x03\x03\x00\x20", 5) + std::string(32, 'x'));
             std::string ignored;
             CHECK(!c.peer->read(ignored));
             return c.peer->take_output();
         }},
        {"close_notify", TLS1_2_VERSION, [](raw_tls_client& c) {
             SSL_shutdown(c.peer->native());
             return c.peer->take_output();
         }},
        {"renegotiation", TLS1_2_VERSION, [](raw_tls_client& c) {
             REQUIRE(c.peer->renegotiate());
             return c.peer->take_output();
         }},
    };
    for (const auto& bad : cases) {
        CAPTURE(bad.reason);
        CAPTURE(bad.max_version);
        const std::string sample = std::string("derpd_tls_record_closes_total{reason=\"") + bad.reason + "\"}";
        const std::uint64_t before = varz_value(derpd.port(), sample);
        raw_tls_client c(derpd.port(), bad.max_version, {});
        const std::string wire = bad.wire(c);
        REQUIRE(!wire.empty());
        c.send(wire);
        CHECK(c.closed_within(5s));
        CHECK(varz_value(derpd.port(), sample) == before + 1);
    }
    for (const char* logged : {": bad_tag", ": wrong_sequence", ": oversized", ": truncated", ": unknown_content_type",
                               "the peer sent alert 20", ": renegotiation"})
        CHECK_MESSAGE(derpd.count_log(logged) >= 1, logged << "\n" << derpd.log_tail());
    // derpd kept serving: a client relays after all that.
    auto b = project_client(derpd);
    auto a = project_client(derpd);
    a.send_packet(b.key(), packet_of(100));
    bytes storage;
    CHECK(b.expect_recv_packet(storage, 5s).src == a.key());
}

TEST_CASE("connections that send nothing hold no handshake place: a client gets through 600 of them") {
    REQUIRE(crypto_init());
    test::derpd_options options;
    options.tls = true;
    options.shards = 1;
    options.handshake_timeout = "60s";  // the silent ones stay for the whole test
    test::derpd_process derpd(options);
    std::vector<int> silent;
    for (int i = 0; i < 600; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(derpd.port());
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
        silent.push_back(fd);
    }
    // More than the 512 handshakes a shard runs at once, none started: these two handshake
    // and relay at once (well within the 60 s the silent ones could hold a place).
    auto b = project_client(derpd);
    auto a = project_client(derpd);
    a.send_packet(b.key(), packet_of(1400));
    bytes storage;
    CHECK(b.expect_recv_packet(storage, 5s).src == a.key());
    for (const int fd : silent) ::close(fd);
}
