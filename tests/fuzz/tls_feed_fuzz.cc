// libFuzzer target for the TLS feeding path (crypto/tls): bytes from the network fed to a
// server session (ClientHello parsing, the record layer, SNI and ALPN callbacks, the record
// scanner kTLS relies on; an IP hostname, so every SNI is accepted and parsing goes on) or, with the first byte's top bit, to a client session that has sent
// its ClientHello (what derpbench and derpprobe parse from a server). The input is cut into
// reads of varying size, as the socket would deliver it. Invariants: failure is final, nothing
// decrypts before the handshake, and the session never asks to write absurd amounts.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/assert.hh"
#include "crypto/tls.hh"

namespace {

struct contexts {
    std::shared_ptr<derp::tls::context> server, client;
};

const contexts& shared_contexts() {
    static const contexts c = [] {
        contexts made;
        char dir[] = "/tmp/derpd-tls-fuzz-XXXXXX";
        DERP_ASSERT(mkdtemp(dir) != nullptr);
        const std::string cert = std::string(dir) + "/c.crt", key = std::string(dir) + "/c.key";
        DERP_ASSERT(derp::tls::write_self_signed("127.0.0.1", cert, key).has_value());
        auto server = derp::tls::context::make_server({"127.0.0.1", cert, key, {}});
        DERP_ASSERT(server.has_value());
        made.server = server.value();
        derp::tls::context::client_options o;
        o.server_name = "derp.example.test";
        o.verify = derp::tls::context::verify_mode::insecure;
        auto client = derp::tls::context::make_client(o);
        DERP_ASSERT(client.has_value());
        made.client = client.value();
        ::unlink(cert.c_str());
        ::unlink(key.c_str());
        ::rmdir(dir);
        return made;
    }();
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const auto& ctx = shared_contexts();
    const bool as_client = (data[0] & 0x80) != 0;
    const std::size_t chunk = 1 + static_cast<std::size_t>(data[0] & 0x7f) * 37;  // 1 .. 4700 bytes per read
    derp::tls::session s(as_client ? ctx.client : ctx.server, true);
    std::string plain, out;
    if (as_client) s.start(out);
    bool failed = false;
    for (std::size_t at = 1; at < size; at += chunk) {
        const std::size_t n = std::min(chunk, size - at);
        const auto status = s.feed({data + at, n}, plain, out);
        if (failed) DERP_ASSERT(status == derp::tls::status::failed);
        if (status == derp::tls::status::failed) {
            failed = true;
            DERP_ASSERT(!s.error().empty());
        }
        // Without a peer that completes the handshake, nothing can decrypt as application data
        // (a fuzzer cannot forge the Finished MAC).
        DERP_ASSERT(plain.empty());
        DERP_ASSERT(out.size() < (1u << 20));
        out.clear();
    }
    (void)s.at_record_boundary();
    (void)s.ktls_export();
    return 0;
}
