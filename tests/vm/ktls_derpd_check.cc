// Runs inside the test VM (kernel with kTLS) against a derpd started by ktls_derpd_vm.sh with
// -ktls=require: DERP traffic both ways over TLS 1.3 and 1.2 with AES-128/256-GCM and
// ChaCha20-Poly1305, an HTTP request sent in the same write as the client's Finished (so the
// server must decrypt it in userspace and start kernel RX at the next record), a close_notify
// read as a control record, and derpd's counters saying every connection went to the kernel.
// usage: ktls_derpd_check PORT
#include <openssl/ssl.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#include "crypto/box.hh"
#include "tests/support/relay_pair.hh"
#include "tests/support/tls_socket.hh"

using namespace derp;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAIL", what.c_str());
    std::fflush(stdout);
    if (!ok) ++failures;
}

std::uint64_t varz_value(std::uint16_t port, const std::string& sample) {
    auto s = test::tls_socket::open(port, test::insecure_client_context(), {}, 20000);
    if (!s) return 0;
    const std::string page = s.value()->http_get("/debug/varz");
    const auto at = page.find("\n" + sample + " ");
    if (at == std::string::npos) return 0;
    return std::stoull(page.substr(at + sample.size() + 2));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: ktls_derpd_check PORT\n");
        return 2;
    }
    const auto port = static_cast<std::uint16_t>(std::atoi(argv[1]));
    if (!crypto_init()) return 1;
    struct variant {
        const char* name;
        int max;
        const char* suites;
        const char* ciphers;
    };
    const variant variants[] = {
        {"TLS 1.3 AES-128-GCM", 0, "TLS_AES_128_GCM_SHA256", ""},
        {"TLS 1.3 AES-256-GCM", 0, "TLS_AES_256_GCM_SHA384", ""},
        {"TLS 1.3 ChaCha20-Poly1305", 0, "TLS_CHACHA20_POLY1305_SHA256", ""},
        {"TLS 1.2 AES-128-GCM", TLS1_2_VERSION, "", "ECDHE-ECDSA-AES128-GCM-SHA256"},
        {"TLS 1.2 AES-256-GCM", TLS1_2_VERSION, "", "ECDHE-ECDSA-AES256-GCM-SHA384"},
        {"TLS 1.2 ChaCha20-Poly1305", TLS1_2_VERSION, "", "ECDHE-ECDSA-CHACHA20-POLY1305"},
    };
    std::uint64_t tls_connections = 0;
    for (const auto& v : variants) {
        tls::context::client_options o;
        o.server_name = "127.0.0.1";
        o.verify = tls::context::verify_mode::insecure;
        o.max_version = v.max;
        o.tls13_ciphersuites = v.suites;
        o.tls12_ciphers = v.ciphers;
        auto setup = client::make_client_tls(o, 1);
        if (!setup) {
            check(false, std::string(v.name) + ": " + setup.error());
            continue;
        }
        const auto r = test::run_relay_pair(port, setup.value(), {1, 1200, 16384, 65536}, 8, 60000);
        check(r.ok, std::string(v.name) + ": DERP packets of 1, 1200, 16384 and 65536 bytes both ways" +
                        (r.ok ? "" : " (" + r.problem + ")"));
        tls_connections += 2;

        // A request right behind the client's Finished, then a second one on the same
        // connection after the kernel has taken over both directions.
        auto s = test::tls_socket::open(port, test::insecure_client_context(v.max, v.suites, v.ciphers),
                                        "GET /derp/probe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 20000);
        if (!s) {
            check(false, std::string(v.name) + ": request behind Finished: " + s.error());
            continue;
        }
        std::string first = s.value()->read_until(
            [](const std::string& got) { return got.find("\r\n\r\n") != std::string::npos; }, 20000);
        check(first.starts_with("HTTP/1.1 200 OK\r\n"), std::string(v.name) + ": answer to a request sent with the Finished");
        const std::string second = s.value()->http_get("/derp/probe");
        check(second.starts_with("HTTP/1.1 200 OK\r\n"), std::string(v.name) + ": second request on the kTLS connection");
        tls_connections += 1;
    }
    // An orderly close_notify reaches the server as a control record under kTLS RX.
    {
        auto s = test::tls_socket::open(port, test::insecure_client_context(), {}, 20000);
        if (s) {
            std::this_thread::sleep_for(std::chrono::milliseconds(300));  // RX installed by now
            s.value()->close_notify();
            s.value()->read_until([](const std::string&) { return false; }, 5000);
            check(s.value()->peer_closed(), "close_notify: the server closed the connection");
            tls_connections += 1;
        }
    }
    // Idle kTLS connections: once both directions are in the kernel the SSL object is freed;
    // what derpd's heap still holds per connection is its own state.
    constexpr int idle_count = 500;
    const auto heap_before = varz_value(port, "derpd_heap_in_use_bytes");
    std::vector<std::unique_ptr<test::tls_socket>> idle;
    for (int i = 0; i < idle_count; ++i) {
        auto s = test::tls_socket::open(port, test::insecure_client_context(), "GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n", 20000);
        if (!s) break;
        s.value()->read_until([](const std::string& got) { return got.find("\r\n\r\n") != std::string::npos; }, 20000);
        idle.push_back(std::move(s.value()));
    }
    // Not counted: the connections that fetch /debug/varz, whose own path may still be settling
    // (RX goes to the kernel after their request) when the page is rendered.
    tls_connections += idle.size();
    check(idle.size() == idle_count, "500 idle kTLS connections opened");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const auto heap_after = varz_value(port, "derpd_heap_in_use_bytes");
    const double per_connection = (static_cast<double>(heap_after) - static_cast<double>(heap_before)) / idle_count;
    std::printf("idle kTLS connection: %.0f bytes of derpd heap each (500 connections, keep-alive after one request)\n",
                per_connection);
    // The target is 2 KiB with kTLS; the bound catches an SSL object kept after the move to
    // the kernel (about 14 KiB).
    check(per_connection < 6144, "an idle kTLS connection holds no OpenSSL state");
    idle.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto ktls = varz_value(port, "derpd_connections_by_tls_path_total{path=\"ktls\"}");
    const auto userspace = varz_value(port, "derpd_connections_by_tls_path_total{path=\"userspace\"}");
    const auto install_failures = varz_value(port, "derpd_tls_ktls_install_failures_total");
    const auto control = varz_value(port, "derpd_tls_ktls_control_records_total");
    std::printf("varz: ktls=%llu userspace=%llu install_failures=%llu control_records=%llu (%llu TLS connections made)\n",
                static_cast<unsigned long long>(ktls), static_cast<unsigned long long>(userspace),
                static_cast<unsigned long long>(install_failures), static_cast<unsigned long long>(control),
                static_cast<unsigned long long>(tls_connections));
    check(ktls >= tls_connections, "every TLS connection went to kTLS in both directions");
    // (userspace == 0 below covers the varz fetches too: none of them may stay on userspace.)
    check(userspace == 0, "no connection stayed on userspace records");
    check(install_failures == 0, "the kernel accepted every kTLS install");
    check(control >= 1, "the close_notify was read as a kTLS control record");
    std::printf("%s\n", failures == 0 ? "ktls_derpd_check: all passed" : "ktls_derpd_check: FAILED");
    return failures == 0 ? 0 : 1;
}
