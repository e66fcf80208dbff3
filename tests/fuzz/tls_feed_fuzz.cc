// libFuzzer target for the TLS feeding path (crypto/tls): bytes from the network fed to a
// server session (ClientHello parsing, the record layer, SNI and ALPN callbacks, the record
// scanner kTLS relies on; an IP hostname, so every SNI is accepted and parsing goes on) or, with
// the first byte's top bit, to a client session that has sent its ClientHello (what derpbench
// and derpprobe parse from a server). The input is cut into reads of varying size, as the
// socket would deliver it. Invariants: failure is final, nothing decrypts before the
// handshake, and the session never asks to write absurd amounts.
// A first byte of 0x7e selects the scripted mode instead: a real OpenSSL client completes the
// handshake, and the rest of the input is what it does next (application data, KeyUpdate,
// renegotiation, raw bytes, reads of any size, kTLS TX taking over). Invariants there: the
// server reads exactly what the client wrote, the kTLS export is refused or right in both
// directions (checked by decrypting real records with it), and once TX is the kernel's the
// session writes nothing more.
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/assert.hh"
#include "crypto/tls.hh"
#include "tests/support/tls_memory_peer.hh"

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

std::span<const std::uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Byte 1: bit 0 TLS 1.2 (else 1.3), bits 1-2 the cipher. Then ops, one byte each (op % 8), some
// taking the next byte as an argument n:
//   0 n: the client writes n+1 bytes of data       1: KeyUpdate, or a renegotiation in 1.2
//   2: KeyUpdate requested, or renegotiation        3 n: n raw bytes from the input follow
//   4 n: the server reads what is pending, in reads of 1 + 17 n bytes
//   5 n: the server writes n+1 bytes                6: the server reads, then the export check
//   7: kTLS TX takes over (if the export succeeds)
// What the client sends collects until the server reads it: in TLS 1.3 the client's Finished is
// pending first, so that ops before the first read land in the Finished flight.
void run_script(const std::uint8_t* data, std::size_t size, const std::shared_ptr<derp::tls::context>& server_ctx) {
    using derp::tls::status;
    if (size < 2) return;
    const bool tls12 = (data[1] & 1) != 0;
    const int cipher = (data[1] >> 1 & 3) % 3;
    static const char* const suites13[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"};
    static const char* const ciphers12[] = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                            "ECDHE-ECDSA-CHACHA20-POLY1305"};
    const bool chacha = cipher == 2;
    auto client = derp::test::memory_peer::client(tls12 ? TLS1_2_VERSION : 0, tls12 ? ciphers12[cipher] : suites13[cipher]);
    DERP_ASSERT(client != nullptr);
    derp::tls::session server(server_ctx, true);
    std::string pending, plain, wrote, out, to_client;
    for (int round = 0; round < 10 && !client->handshake_done(); ++round) {
        client->handshake();
        std::string c2s = client->take_output();
        if (client->handshake_done()) {
            pending = std::move(c2s);
            break;
        }
        out.clear();
        server.feed(bytes_of(c2s), plain, out);
        client->receive(out);
    }
    DERP_ASSERT(client->handshake_done() && server.state() != status::failed);
    bool raw = false, tx_in_kernel = false;
    std::size_t at = 2;
    auto next = [&]() -> std::uint8_t { return at < size ? data[at++] : 0; };
    // What the server sends reaches the client only before the client's next move, so that the
    // export check sees the server's records before the client reacts to them (in 1.2 a client
    // answers no_renegotiation with a fatal alert).
    auto deliver = [&] {
        client->receive(to_client);
        to_client.clear();
        std::string ignored;
        client->read(ignored);
    };
    auto server_reads = [&](std::size_t chunk) {
        for (std::size_t i = 0; i < pending.size() && server.state() != status::failed && server.state() != status::closed;
             i += chunk) {
            out.clear();
            server.feed(bytes_of(pending.substr(i, chunk)), plain, out);
            if (tx_in_kernel) DERP_ASSERT(out.empty());
            to_client += out;
        }
        pending.clear();
        if (!raw && server.state() == status::open) DERP_ASSERT(plain == wrote);
    };
    auto check_export = [&] {
        if (server.state() != status::open || !server.at_record_boundary()) return;
        const auto keys = server.ktls_export();
        if (!keys) return;
        // Something the client wrote while reading (an alert) goes first, to a later read: the
        // probe record must be the next one the server gets.
        if (std::string earlier = client->take_output(); !earlier.empty()) {
            pending += earlier;
            return;
        }
        // RX: the client's next record (a 1.2 client mid-renegotiation cannot write one).
        if (client->write("probe")) {
            const std::string record = client->take_output();
            const auto opened = derp::test::open_record(derp::test::first_record(record), keys->version, keys->rx_key,
                                                        keys->rx_iv, keys->rx_seq, chacha);
            DERP_ASSERT(opened.has_value() && *opened == "probe");
            wrote += "probe";
            pending += record;
            server_reads(record.size());
        }
        // TX: the server's next record, after whatever OpenSSL wrote by itself.
        if (tx_in_kernel || server.state() != status::open) return;
        std::string spill;
        const std::string reply = "reply";
        const std::size_t n = server.write(bytes_of(reply), {}, spill);
        DERP_ASSERT(n == 0);
        const auto opened = derp::test::open_record(derp::test::first_record(spill), keys->version, keys->tx_key,
                                                    keys->tx_iv, keys->tx_seq, chacha);
        DERP_ASSERT(opened.has_value() && *opened == reply);
        to_client += spill;
    };
    while (at < size && server.state() != status::failed) {
        const std::uint8_t op = next();
        if (op % 8 <= 2) deliver();
        switch (op % 8) {
            case 0: {
                const std::string text(static_cast<std::size_t>(next()) + 1, static_cast<char>('a' + op % 26));
                if (client->write(text)) {
                    wrote += text;
                    pending += client->take_output();
                }
                break;
            }
            case 1:
            case 2:
                if (tls12) client->renegotiate();
                else client->key_update(op % 8 == 2);
                pending += client->take_output();
                break;
            case 3: {
                const std::size_t n = std::min<std::size_t>(next(), size - at);
                pending.append(reinterpret_cast<const char*>(data + at), n);
                at += n;
                raw = true;
                break;
            }
            case 4: server_reads(1 + static_cast<std::size_t>(next()) * 17); break;
            case 5: {
                const std::string text(static_cast<std::size_t>(next()) + 1, 'z');
                if (tx_in_kernel || server.state() != status::open) break;
                std::string spill;
                server.write(bytes_of(text), {}, spill);
                to_client += spill;
                break;
            }
            case 6:
                server_reads(pending.size() + 1);
                check_export();
                break;
            case 7:
                if (!tx_in_kernel && server.state() == status::open && server.ktls_export()) {
                    server.note_tx_in_kernel();
                    tx_in_kernel = true;
                }
                break;
        }
    }
    server_reads(pending.size() + 1);
    check_export();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const auto& ctx = shared_contexts();
    if (data[0] == 0x7e) {
        run_script(data, size, ctx.server);
        return 0;
    }
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
