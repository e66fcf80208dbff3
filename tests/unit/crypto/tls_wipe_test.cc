// Key material the TLS engine copies out of OpenSSL (TLS 1.3 traffic secrets from the key log,
// the TLS 1.2 key block, the kTLS keys) must be wiped before its memory goes back to the heap.
// This binary replaces operator delete: while a test watches, every block freed through it is
// searched for the watched secrets first. The secrets come from the other end of the
// connection, an OpenSSL client whose key log the test reads.
#include <doctest/doctest.h>

#include <malloc.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <span>
#include <string_view>

#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "tests/support/tls_memory_peer.hh"

namespace {

// Watched byte strings live in static storage, so that watching allocates nothing.
struct watch_list {
    static constexpr std::size_t count_max = 8;
    std::array<std::array<unsigned char, 64>, count_max> bytes{};
    std::array<std::size_t, count_max> length{};
    std::size_t count = 0;
};
watch_list g_watch;
std::atomic<bool> g_watching{false};
std::atomic<int> g_found{0};

void watch(const unsigned char* data, std::size_t length) {
    REQUIRE(g_watch.count < watch_list::count_max);
    REQUIRE((length >= 12 && length <= 64));
    std::memcpy(g_watch.bytes[g_watch.count].data(), data, length);
    g_watch.length[g_watch.count++] = length;
}

void inspect(void* p) noexcept {
    if (p == nullptr || !g_watching.load(std::memory_order_relaxed)) return;
    const std::size_t size = malloc_usable_size(p);
    const auto* block = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < g_watch.count; ++i) {
        const auto* w = g_watch.bytes[i].data();
        if (std::search(block, block + size, w, w + g_watch.length[i]) != block + size) g_found.fetch_add(1);
    }
}

// The client's TLS 1.3 traffic secrets (the same the server holds) and its TLS 1.2 master key.
std::string g_keylog;
void keylog(const SSL*, const char* line) {
    g_keylog += line;
    g_keylog += '\n';
}

std::size_t decode_secret(std::string_view label, unsigned char* out) {
    const auto at = g_keylog.find(std::string(label) + " ");
    REQUIRE(at != std::string::npos);
    const auto end = g_keylog.find('\n', at);
    const std::string_view line(g_keylog.data() + at, end - at);
    const std::string_view hex = line.substr(line.rfind(' ') + 1);
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out[i / 2] = static_cast<unsigned char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
    return hex.size() / 2;
}

std::span<const std::uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

}  // namespace

// Every non-aligned form of new and delete is replaced, so that allocation and release pair up
// through malloc and free (AddressSanitizer reports a replaced delete freeing its own new).
void* operator new(std::size_t n) {
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return std::malloc(n == 0 ? 1 : n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return std::malloc(n == 0 ? 1 : n); }
void operator delete(void* p, const std::nothrow_t&) noexcept {
    inspect(p);
    std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
    inspect(p);
    std::free(p);
}
void operator delete(void* p) noexcept {
    inspect(p);
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    inspect(p);
    std::free(p);
}
void operator delete[](void* p) noexcept {
    inspect(p);
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    inspect(p);
    std::free(p);
}

TEST_CASE("tls: traffic secrets, the key block and kTLS keys are wiped before they are freed") {
    REQUIRE(derp::crypto_init());
    char pattern[] = "/tmp/derpd-tls-wipe-XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    const std::string dir = pattern, cert = dir + "/c.crt", key = dir + "/c.key";
    REQUIRE(derp::tls::write_self_signed("127.0.0.1", cert, key));
    auto ctx = derp::tls::context::make_server({"127.0.0.1", cert, key, {}});
    REQUIRE(ctx);
    for (int max : {0, TLS1_2_VERSION}) {
        CAPTURE(max);
        g_keylog.clear();
        g_watch = {};
        g_found = 0;
        {
            derp::tls::session server(ctx.value(), true);
            auto client = derp::test::memory_peer::client(max);
            REQUIRE(client);
            SSL_CTX_set_keylog_callback(SSL_get_SSL_CTX(client->native()), keylog);
            std::string plain;
            for (int round = 0; round < 10 && server.state() == derp::tls::status::handshaking; ++round) {
                client->handshake();
                std::string out;
                server.feed(bytes_of(client->take_output()), plain, out);
                client->receive(out);
            }
            client->handshake();
            REQUIRE(server.state() == derp::tls::status::open);
            unsigned char secret[64];
            if (max == 0) {
                watch(secret, decode_secret("CLIENT_TRAFFIC_SECRET_0", secret));
                watch(secret, decode_secret("SERVER_TRAFFIC_SECRET_0", secret));
            }
            auto keys = server.ktls_export();
            REQUIRE(keys);
            watch(keys->tx_key.data(), keys->tx_key.size());
            watch(keys->rx_key.data(), keys->rx_key.size());
            g_watching = true;
            keys.reset();
            // The session goes, and with it every copy it made.
        }
        g_watching = false;
        CHECK(g_found.load() == 0);
    }
    std::string().swap(g_keylog);
    (void)std::system(("rm -rf " + dir).c_str());
}
