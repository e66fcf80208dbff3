// The TLS engine without sockets: handshakes between two in-memory sessions, derper's SNI and
// pinning rules, the meta certificate, and the kTLS key export checked the only way this
// kernel allows: by decrypting real records with the exported keys and sequence numbers.
#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "tests/support/tls_memory_peer.hh"

using namespace derp;
using namespace derp::tls;
using test::open_record;

namespace {

std::string temp_dir() {
    char pattern[] = "/tmp/derpd-tls-unit-XXXXXX";
    const char* dir = mkdtemp(pattern);
    REQUIRE(dir != nullptr);
    return dir;
}

struct pki {
    std::string dir = temp_dir();
    std::string cert = dir + "/127.0.0.1.crt";
    std::string key = dir + "/127.0.0.1.key";
    node_key server_key = public_key_of(generate_private_key());
    pki() { REQUIRE(write_self_signed("127.0.0.1", cert, key)); }
    ~pki() { (void)std::system(("rm -rf " + dir).c_str()); }
    std::shared_ptr<context> server(std::string hostname = "127.0.0.1") const {
        server_identity id{hostname, cert, key, {}};
        auto meta = make_meta_certificate(server_key);
        REQUIRE(meta);
        id.meta_cert_der = meta.value();
        auto ctx = context::make_server(id);
        REQUIRE_MESSAGE(ctx, (ctx ? "" : ctx.error()));
        return ctx.value();
    }
};

std::shared_ptr<context> insecure_client(int max_version = 0, std::string suites = {}, std::string ciphers = {},
                                         std::string name = "127.0.0.1") {
    context::client_options o;
    o.server_name = std::move(name);
    o.verify = context::verify_mode::insecure;
    o.max_version = max_version;
    o.tls13_ciphersuites = std::move(suites);
    o.tls12_ciphers = std::move(ciphers);
    auto ctx = context::make_client(o);
    REQUIRE_MESSAGE(ctx, (ctx ? "" : ctx.error()));
    return ctx.value();
}

std::span<const std::uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Runs the handshake to completion, passing each side's output to the other. `extra` is
// application data the client writes right behind its Finished, in the same flight.
void handshake(session& client, session& server, std::string* client_to_server_tail = nullptr) {
    std::string c2s, s2c, plain;
    REQUIRE(client.start(c2s) != status::failed);
    for (int round = 0; round < 10 && (client.state() == status::handshaking || server.state() == status::handshaking); ++round) {
        std::string out;
        server.feed(bytes_of(c2s), plain, out);
        c2s.clear();
        REQUIRE_MESSAGE(server.state() != status::failed, server.error());
        client.feed(bytes_of(out), plain, c2s);
        REQUIRE_MESSAGE(client.state() != status::failed, client.error());
        if (client.state() == status::open && client_to_server_tail != nullptr) {
            *client_to_server_tail = c2s;  // the Finished flight, fed by the caller
            return;
        }
    }
    if (!c2s.empty()) server.feed(bytes_of(c2s), plain, s2c);
    CHECK(plain.empty());
}

// Passes the flights back and forth for a handshake that may fail (no assertions): the
// caller checks how it ended.
void exchange(session& client, session& server) {
    std::string c2s, s2c, plain;
    client.start(c2s);
    for (int i = 0; i < 4; ++i) {
        server.feed(bytes_of(c2s), plain, s2c);
        c2s.clear();
        client.feed(bytes_of(s2c), plain, c2s);
        s2c.clear();
    }
}

// A self-signed certificate made with the openssl tool in p's directory: `newkey` as `openssl req
// -newkey` takes it, with one subjectAltName. Returns the certificate and key paths.
std::pair<std::string, std::string> openssl_self_signed(const pki& p, const std::string& stem, const std::string& newkey,
                                                         const std::string& cn, const std::string& san) {
    const std::string cert = p.dir + "/" + stem + ".crt", key = p.dir + "/" + stem + ".key";
    const std::string cmd = "openssl req -x509 -newkey " + newkey + " -nodes -days 2 -subj /CN=" + cn +
                            " -addext subjectAltName=" + san + " -keyout " + key + " -out " + cert + " 2>/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    return {cert, key};
}

std::string seal(session& s, const std::string& text) {
    std::string spill;
    std::vector<std::uint8_t> out(64);  // small: most of the record spills, which must work too
    const std::size_t n = s.write(bytes_of(text), out, spill);
    return std::string(reinterpret_cast<const char*>(out.data()), n) + spill;
}

}  // namespace

TEST_CASE("tls: handshake, data both ways, meta certificate on TLS 1.3 only") {
    REQUIRE(crypto_init());
    pki p;
    for (int max : {0, TLS1_2_VERSION}) {
        CAPTURE(max);
        session server(p.server(), false);
        session client(insecure_client(max), false);
        handshake(client, server);
        REQUIRE(client.state() == status::open);
        REQUIRE(server.state() == status::open);
        CHECK(server.version() == (max == 0 ? TLS1_3_VERSION : TLS1_2_VERSION));
        CHECK(server.alpn() == "http/1.1");
        std::string plain, out;
        server.feed(bytes_of(seal(client, "GET /derp HTTP/1.1\r\n\r\n")), plain, out);
        CHECK(plain == "GET /derp HTTP/1.1\r\n\r\n");
        plain.clear();
        client.feed(bytes_of(seal(server, std::string(40000, 'x'))), plain, out);
        CHECK(plain == std::string(40000, 'x'));
        if (max == 0) {
            REQUIRE(client.peer_meta_key());
            CHECK(*client.peer_meta_key() == p.server_key);
        } else {
            CHECK(!client.peer_meta_key());  // Go looks only on TLS 1.3 (spec 2.15)
        }
    }
}

TEST_CASE("tls: a DNS hostname requires that SNI; an IP hostname takes any") {
    pki p;
    // A certificate for a DNS name, made with the openssl tool.
    const auto [cert, key] = openssl_self_signed(p, "derp.example.test", "ec -pkeyopt ec_paramgen_curve:P-256",
                                                 "derp.example.test", "DNS:derp.example.test");
    auto server_ctx = context::make_server({"derp.example.test", cert, key, {}});
    REQUIRE(server_ctx);
    {
        session server(server_ctx.value(), false);
        session client(insecure_client(0, {}, {}, "derp.example.test"), false);
        handshake(client, server);
        CHECK(server.sni() == "derp.example.test");
    }
    for (const char* wrong : {"other.example.test", "127.0.0.1"}) {
        CAPTURE(wrong);
        session server(server_ctx.value(), false);
        session client(insecure_client(0, {}, {}, wrong), false);
        std::string c2s, s2c, plain;
        client.start(c2s);
        CHECK(server.feed(bytes_of(c2s), plain, s2c) == status::failed);
        CHECK(server.error().find("SNI") != std::string::npos);
        // The alert reaches the client, which fails too.
        CHECK(client.feed(bytes_of(s2c), plain, c2s) == status::failed);
    }
    // The certificate does not name the hostname: refused at load, as derper refuses to start.
    auto mismatch = context::make_server({"derp.other.test", cert, key, {}});
    REQUIRE(!mismatch);
    CHECK(mismatch.error().find("not valid for hostname") != std::string::npos);
    // A key that is not the certificate's.
    auto wrong_key = context::make_server({"derp.example.test", cert, p.key, {}});
    REQUIRE(!wrong_key);
    CHECK(wrong_key.error().find("does not match") != std::string::npos);
    auto missing = context::make_server({"derp.example.test", p.dir + "/nope.crt", key, {}});
    REQUIRE(!missing);
    CHECK(missing.error().find("nope.crt") != std::string::npos);
}

TEST_CASE("tls: sha256-raw pinning accepts the leaf and ignores the meta certificate") {
    pki p;
    auto server_ctx = p.server();
    for (bool right : {true, false}) {
        context::client_options o;
        o.server_name = "127.0.0.1";
        o.verify = context::verify_mode::pinned;
        o.pinned_sha256 = server_ctx->leaf_sha256();
        if (!right) o.pinned_sha256[0] ^= 1;
        auto client_ctx = context::make_client(o);
        REQUIRE(client_ctx);
        session server(server_ctx, false);
        session client(client_ctx.value(), false);
        exchange(client, server);
        CHECK((client.state() == status::open) == right);
    }
}

TEST_CASE("tls: garbage instead of a ClientHello fails the handshake with a reason") {
    pki p;
    session server(p.server(), false);
    std::string plain, out;
    const std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(server.feed(bytes_of(http), plain, out) == status::failed);
    CHECK(!server.error().empty());
}

TEST_CASE("tls: kTLS export decrypts real records, including ones right behind Finished") {
    pki p;
    struct variant {
        int max;
        const char* suites;
        const char* ciphers;
        bool chacha;
    };
    for (const variant v : {variant{0, "TLS_AES_128_GCM_SHA256", "", false}, variant{0, "TLS_AES_256_GCM_SHA384", "", false},
                            variant{0, "TLS_CHACHA20_POLY1305_SHA256", "", true},
                            variant{TLS1_2_VERSION, "", "ECDHE-ECDSA-AES128-GCM-SHA256", false},
                            variant{TLS1_2_VERSION, "", "ECDHE-ECDSA-AES256-GCM-SHA384", false},
                            variant{TLS1_2_VERSION, "", "ECDHE-ECDSA-CHACHA20-POLY1305", true}}) {
        CAPTURE(v.suites);
        CAPTURE(v.ciphers);
        session server(p.server(), true);
        session client(insecure_client(v.max, v.suites, v.ciphers), false);
        std::string finished;
        handshake(client, server, &finished);
        REQUIRE(client.state() == status::open);
        // Two records right behind the client's Finished, in the same read.
        const std::string early1 = seal(client, "early one"), early2 = seal(client, "early two");
        std::string plain, out;
        server.feed(bytes_of(finished + early1 + early2), plain, out);
        REQUIRE(server.state() == status::open);
        CHECK(plain == "early oneearly two");
        CHECK(server.at_record_boundary());
        const auto keys = server.ktls_export();
        REQUIRE(keys);
        CHECK(keys->version == (v.max == 0 ? TLS1_3_VERSION : TLS1_2_VERSION));
        CHECK(keys->rx_seq == (v.max == 0 ? 2u : 3u));
        CHECK(keys->tx_seq == (v.max == 0 ? 0u : 1u));
        CHECK(keys->rx.crypto_info_bytes > 0);
        // The next client record opens with the RX material at rx_seq; the server's first
        // application record with the TX material at tx_seq.
        CHECK(open_record(seal(client, "next"), keys->version, keys->rx_key, keys->rx_iv, keys->rx_seq, v.chacha) == "next");
        std::string server_out;
        std::vector<std::uint8_t> buffer(4096);
        const std::size_t n = server.write(bytes_of(std::string("reply")), buffer, server_out);
        CHECK(open_record(std::string_view(reinterpret_cast<const char*>(buffer.data()), n), keys->version, keys->tx_key,
                          keys->tx_iv, keys->tx_seq, v.chacha) == "reply");
        // A record OpenSSL sent is counted: a later export continues after it.
        const auto later = server.ktls_export();
        REQUIRE(later);
        CHECK(later->tx_seq == keys->tx_seq + 1);
        const std::size_t m = server.write(bytes_of(std::string("again")), buffer, server_out);
        CHECK(open_record(std::string_view(reinterpret_cast<const char*>(buffer.data()), m), later->version, later->tx_key,
                          later->tx_iv, later->tx_seq, v.chacha) == "again");
    }
}

TEST_CASE("tls: a partial record leaves no record boundary") {
    pki p;
    session server(p.server(), true);
    session client(insecure_client(), false);
    std::string finished;
    handshake(client, server, &finished);
    const std::string record = seal(client, "split");
    std::string plain, out;
    server.feed(bytes_of(finished + record.substr(0, 7)), plain, out);
    CHECK(!server.at_record_boundary());
    server.feed(bytes_of(record.substr(7)), plain, out);
    CHECK(server.at_record_boundary());
    CHECK(plain == "split");
    CHECK(server.ktls_export()->rx_seq == 1);
}

TEST_CASE("tls: a pinned certificate must also be valid for the dialled name (spec 4.2)") {
    pki p;
    auto server_ctx = p.server();
    context::client_options o;
    o.server_name = "localhost";  // the pin matches, the name does not (the leaf is for 127.0.0.1)
    o.verify = context::verify_mode::pinned;
    o.pinned_sha256 = server_ctx->leaf_sha256();
    auto client_ctx = context::make_client(o);
    REQUIRE(client_ctx);
    session server(server_ctx, false);
    session client(client_ctx.value(), false);
    exchange(client, server);
    CHECK(client.state() == status::failed);
    CHECK(client.error().find("not valid for localhost") != std::string::npos);
}

namespace {

// A self-signed EC P-256 certificate with this CN (set as a PrintableString, so that a
// 71-character derpkey name fits, as derper writes it), serial, and optionally an IP SAN; PEM
// files. What an attacker can make without anyone's private key.
void write_certificate(const std::string& cert_path, const std::string& key_path, const std::string& cn, long serial,
                       const char* ip_san = nullptr) {
    EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    REQUIRE(key != nullptr);
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), serial);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 2 * 24 * 3600);
    X509_NAME* name = X509_get_subject_name(cert);
    REQUIRE(X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_PRINTABLESTRING,
                                       reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) == 1);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    if (ip_san != nullptr) {
        X509V3_CTX v3{};
        X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
        X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, (std::string("IP:") + ip_san).c_str());
        REQUIRE(ext != nullptr);
        X509_add_ext(cert, ext, -1);
        X509_EXTENSION_free(ext);
    }
    REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
    FILE* c = std::fopen(cert_path.c_str(), "w");
    FILE* k = std::fopen(key_path.c_str(), "w");
    REQUIRE((c != nullptr && k != nullptr));
    CHECK(PEM_write_X509(c, cert) == 1);
    CHECK(PEM_write_PrivateKey(k, key, nullptr, nullptr, 0, nullptr, nullptr) == 1);
    std::fclose(c);
    std::fclose(k);
    X509_free(cert);
    EVP_PKEY_free(key);
}

// derper's meta certificate for `key`, as PEM (its private key is thrown away, as derper does).
void write_meta_certificate(const std::string& path, const node_key& key) {
    auto der = make_meta_certificate(key);
    REQUIRE(der);
    const unsigned char* p = der.value().data();
    X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.value().size()));
    REQUIRE(cert != nullptr);
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    CHECK(PEM_write_X509(f, cert) == 1);
    std::fclose(f);
    X509_free(cert);
}

// A pinned client's handshake against a raw OpenSSL server presenting any chain.
void exchange_with(session& client, test::memory_peer& server) {
    std::string c2s, plain;
    client.start(c2s);
    for (int i = 0; i < 6 && client.state() == status::handshaking; ++i) {
        server.receive(c2s);
        c2s.clear();
        server.handshake();
        client.feed(bytes_of(server.take_output()), plain, c2s);
    }
}

std::shared_ptr<context> pinned_client(const std::array<std::uint8_t, 32>& pin, int max_version = 0) {
    context::client_options o;
    o.server_name = "127.0.0.1";
    o.verify = context::verify_mode::pinned;
    o.pinned_sha256 = pin;
    o.max_version = max_version;
    auto ctx = context::make_client(o);
    REQUIRE_MESSAGE(ctx, (ctx ? "" : ctx.error()));
    return ctx.value();
}

}  // namespace

TEST_CASE("tls: a sha256-raw pin binds the certificate whose key signed the handshake (man in the middle)") {
    pki p;
    const auto pin = p.server()->leaf_sha256();
    const std::string meta = p.dir + "/meta.pem";
    write_meta_certificate(meta, p.server_key);
    // The attacker's own certificates and keys: one named like a careless meta check expects
    // ("derpkey" and anything), one named exactly like a genuine meta certificate (derpkey + 64
    // hex of a key, serial 2), and a stray one.
    const std::string att = p.dir + "/att", att_meta = p.dir + "/attmeta", stray = p.dir + "/stray";
    write_certificate(att + ".crt", att + ".key", "derpkey00", 2);
    write_certificate(att_meta + ".crt", att_meta + ".key", "derpkey" + public_key_of(generate_private_key()).to_string(), 2);
    write_certificate(stray + ".crt", stray + ".key", "127.0.0.1", 7, "127.0.0.1");
    struct chain_case {
        const char* what;
        std::string cert, key, chain;
        bool accepted;
    };
    const chain_case cases[] = {
        {"derper's chain: the pinned certificate, then the meta certificate", p.cert, p.key, meta, true},
        {"the pinned certificate alone", p.cert, p.key, "", true},
        {"an attacker's derpkey00 certificate and key, the pinned certificate behind it", att + ".crt", att + ".key", p.cert, false},
        {"an attacker's genuine-looking meta certificate and key, the pinned certificate behind it", att_meta + ".crt",
         att_meta + ".key", p.cert, false},
        {"the pinned certificate, then a certificate that is not meta", p.cert, p.key, stray + ".crt", false},
        {"the pinned certificate, then a derpkey00 certificate (not a genuine meta certificate)", p.cert, p.key,
         att + ".crt", false},
        {"the pinned certificate twice", p.cert, p.key, p.cert, false},
    };
    for (const chain_case& c : cases) {
        for (int max : {0, TLS1_2_VERSION}) {
            CAPTURE(c.what);
            CAPTURE(max);
            auto server = test::memory_peer::server(c.cert, c.key, c.chain, max);
            REQUIRE(server);
            session client(pinned_client(pin, max), false);
            exchange_with(client, *server);
            CHECK((client.state() == status::open) == c.accepted);
            if (!c.accepted) CHECK(!client.error().empty());
            // Fast start only ever takes the key from a meta certificate behind the pinned one.
            if (c.accepted && max == 0 && !c.chain.empty()) CHECK(client.peer_meta_key() == p.server_key);
        }
    }
}

TEST_CASE("tls: the meta certificate test: derpkey and exactly 64 hex digits of a key, serial 1..255") {
    pki p;
    const std::string meta = p.dir + "/meta.pem", other = p.dir + "/other";
    write_meta_certificate(meta, p.server_key);
    auto read_pem = [](const std::string& path) {
        FILE* f = std::fopen(path.c_str(), "r");
        REQUIRE(f != nullptr);
        X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
        std::fclose(f);
        REQUIRE(cert != nullptr);
        return std::unique_ptr<X509, decltype(&X509_free)>(cert, X509_free);
    };
    CHECK(meta_certificate_key(read_pem(meta).get()) == p.server_key);
    const std::string hex = p.server_key.to_string();
    struct named {
        std::string cn;
        long serial;
    };
    for (const named& n : {named{"derpkey00", 2}, named{"derpkey" + hex.substr(0, 63), 2}, named{"derpkey" + hex + "0", 2},
                           named{"derpkey" + hex.substr(0, 62) + "zz", 2}, named{"derpkey" + hex, 0},
                           named{"derpkey" + hex, 256}, named{"Derpkey" + hex, 2}}) {
        CAPTURE(n.cn);
        CAPTURE(n.serial);
        write_certificate(other + ".crt", other + ".key", n.cn, n.serial);
        CHECK(!meta_certificate_key(read_pem(other + ".crt").get()));
    }
}

namespace {

// A raw OpenSSL client's handshake with a server session, up to the client's last flight,
// which comes back unfed: in TLS 1.3 its Finished (the server is not open yet), in TLS 1.2
// nothing (its Finished went before the server's, which it has read).
std::string handshake_memory(test::memory_peer& client, session& server) {
    std::string plain;
    for (int round = 0; round < 10; ++round) {
        client.handshake();
        std::string c2s = client.take_output();
        if (client.handshake_done()) return c2s;
        std::string out;
        server.feed(bytes_of(c2s), plain, out);
        REQUIRE_MESSAGE(server.state() != status::failed, server.error());
        client.receive(out);
    }
    FAIL("the handshake did not complete");
    return {};
}

std::string_view view_of(const std::vector<std::uint8_t>& buffer, std::size_t n) {
    return {reinterpret_cast<const char*>(buffer.data()), n};
}

// The kTLS export is refused, or right both ways: the client's next record opens with the RX
// material at rx_seq, and the server's next with the TX material at tx_seq.
void check_export_refused_or_right(session& server, test::memory_peer& client, bool chacha) {
    const auto keys = server.ktls_export();
    if (!keys) return;
    REQUIRE(client.write("next"));
    const std::string record = client.take_output();
    CHECK(open_record(test::first_record(record), keys->version, keys->rx_key, keys->rx_iv, keys->rx_seq, chacha) == "next");
    std::string plain, out;
    server.feed(bytes_of(record), plain, out);
    CHECK(plain == "next");
    std::vector<std::uint8_t> buffer(4096);
    std::string spill;
    const std::size_t n = server.write(bytes_of(std::string("reply")), buffer, spill);
    CHECK(open_record(view_of(buffer, n), keys->version, keys->tx_key, keys->tx_iv, keys->tx_seq, chacha) == "reply");
}

}  // namespace

TEST_CASE("tls: a KeyUpdate in the client's Finished flight: the kTLS export refuses, or is right") {
    pki p;
    for (const char* suite : {"TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}) {
        for (bool requested : {false, true}) {
            CAPTURE(suite);
            CAPTURE(requested);
            session server(p.server(), true);
            auto client = test::memory_peer::client(0, suite);
            REQUIRE(client);
            std::string flight = handshake_memory(*client, server);
            REQUIRE(!flight.empty());
            // Finished, KeyUpdate and a record under the client's next keys, in one read.
            REQUIRE(client->key_update(requested));
            REQUIRE(client->write("behind the KeyUpdate"));
            flight += client->take_output();
            std::string plain, out;
            REQUIRE(server.feed(bytes_of(flight), plain, out) == status::open);
            CHECK(plain == "behind the KeyUpdate");
            CHECK(server.at_record_boundary());
            // OpenSSL answers a requested update with its next write (check_export_... makes one).
            client->receive(out);
            check_export_refused_or_right(server, *client, std::string_view(suite).find("CHACHA") != std::string_view::npos);
        }
    }
}

TEST_CASE("tls: a TLS 1.2 renegotiation request before the export: the alert the server answers with is counted") {
    pki p;
    for (const char* cipher : {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"}) {
        CAPTURE(cipher);
        const bool chacha = std::string_view(cipher).find("CHACHA") != std::string_view::npos;
        session server(p.server(), true);
        auto client = test::memory_peer::client(TLS1_2_VERSION, cipher);
        REQUIRE(client);
        CHECK(handshake_memory(*client, server).empty());
        REQUIRE(server.state() == status::open);
        REQUIRE(client->renegotiate());
        std::string plain, out;
        if (handshake_library().starts_with("wolfSSL")) {
            // Records after a wolfSSL handshake are the record layer's, which answers with the
            // same no_renegotiation warning but then closes (a counted close in derpd).
            const auto before = server.ktls_export();
            REQUIRE(before);
            CHECK(before->tx_seq == 1);  // the server's Finished
            CHECK(before->rx_seq == 1);  // the client's Finished
            CHECK(server.feed(bytes_of(client->take_output()), plain, out) == status::failed);
            CHECK(server.error().find("renegotiation") != std::string::npos);
            CHECK(open_record(test::first_record(out), before->version, before->tx_key, before->tx_iv, 1, chacha) ==
                  std::string("\x01\x64", 2));
            continue;
        }
        CHECK(server.feed(bytes_of(client->take_output()), plain, out) == status::open);
        // The no_renegotiation warning (level 1, description 100) under the application keys,
        // right after the server's Finished.
        const auto keys = server.ktls_export();
        REQUIRE(keys);
        CHECK(keys->tx_seq == 2);  // the server's Finished and the alert
        CHECK(keys->rx_seq == 2);  // the client's Finished and its ClientHello
        CHECK(open_record(test::first_record(out), keys->version, keys->tx_key, keys->tx_iv, 1, chacha) ==
              std::string("\x01\x64", 2));
        std::vector<std::uint8_t> buffer(4096);
        std::string spill;
        const std::size_t n = server.write(bytes_of(std::string("reply")), buffer, spill);
        CHECK(open_record(view_of(buffer, n), keys->version, keys->tx_key, keys->tx_iv, keys->tx_seq, chacha) == "reply");
    }
}

TEST_CASE("tls: once TX is in the kernel, a record OpenSSL would still write is dropped and the session fails") {
    pki p;
    struct variant {
        const char* what;
        int max;
        int action;  // 0: KeyUpdate not requested, 1: KeyUpdate requested, 2: renegotiation
        bool fails;
    };
    for (const variant v : {variant{"KeyUpdate, no answer wanted", 0, 0, false}, variant{"KeyUpdate requested", 0, 1, true},
                            variant{"renegotiation (TLS 1.2)", TLS1_2_VERSION, 2, true}}) {
        CAPTURE(v.what);
        session server(p.server(), true);
        auto client = test::memory_peer::client(v.max);
        REQUIRE(client);
        std::string plain, out;
        server.feed(bytes_of(handshake_memory(*client, server)), plain, out);
        REQUIRE(server.state() == status::open);
        REQUIRE(server.ktls_export());
        server.note_tx_in_kernel();
        REQUIRE((v.action == 2 ? client->renegotiate() : client->key_update(v.action == 1)));
        const status s = server.feed(bytes_of(client->take_output()), plain, out);
        CHECK(out.empty());  // nothing for the socket: the kernel would send it as data
        CHECK((s == status::failed) == v.fails);
        if (v.fails) CHECK(server.error().find("kernel") != std::string::npos);
        // The client's keys changed: RX stays in userspace.
        if (v.action == 0) CHECK(!server.ktls_export());
    }
}

TEST_CASE("tls: TLS 1.2 takes forward-secret AEAD suites only, on both sides, with an RSA certificate too") {
    pki p;
    const auto [cert, key] = openssl_self_signed(p, "rsa", "rsa:2048", "127.0.0.1", "IP:127.0.0.1");
    auto server_ctx = context::make_server({"127.0.0.1", cert, key, {}});
    REQUIRE_MESSAGE(server_ctx, (server_ctx ? "" : server_ctx.error()));
    struct offer {
        const char* cipher;
        bool accepted;
    };
    for (const offer o : {offer{"AES128-GCM-SHA256", false}, offer{"AES256-SHA", false}, offer{"ECDHE-RSA-AES128-SHA", false},
                          offer{"ECDHE-RSA-AES256-SHA384", false}, offer{"DHE-RSA-AES128-GCM-SHA256", false},
                          offer{"ECDHE-RSA-AES128-GCM-SHA256", true}, offer{"ECDHE-RSA-CHACHA20-POLY1305", true}}) {
        CAPTURE(o.cipher);
        session server(server_ctx.value(), false);
        session client(insecure_client(TLS1_2_VERSION, {}, o.cipher), false);
        exchange(client, server);
        CHECK((server.state() == status::open) == o.accepted);
    }
    // What each side's context offers or takes in TLS 1.2, whatever the certificate.
    const auto client_ctx = insecure_client(TLS1_2_VERSION);
    for (SSL_CTX* ctx : {server_ctx.value()->native(), client_ctx->native()}) {
        // Null for a server context whose handshakes wolfSSL does: the offers above cover it.
        if (ctx == nullptr) continue;
        STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx);
        REQUIRE(ciphers != nullptr);
        for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
            const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
            if (SSL_CIPHER_get_kx_nid(c) == NID_kx_any) continue;  // a TLS 1.3 suite
            CAPTURE(SSL_CIPHER_get_name(c));
            CHECK(SSL_CIPHER_is_aead(c) == 1);
            CHECK(SSL_CIPHER_get_kx_nid(c) == NID_kx_ecdhe);
        }
    }
}

TEST_CASE("tls: an encrypted key file is refused with a clear error, not a passphrase prompt") {
    pki p;
    const std::string cert = p.dir + "/enc.crt", key = p.dir + "/enc.key";
    const std::string cmd = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-256-cbc -pass pass:secret -out " +
                            key + " 2>/dev/null && openssl req -x509 -key " + key + " -passin pass:secret -days 2 "
                            "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -out " + cert + " 2>/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    auto ctx = context::make_server({"127.0.0.1", cert, key, {}});
    REQUIRE(!ctx);
    CHECK(ctx.error().find(key + " is encrypted") != std::string::npos);
}

TEST_CASE("tls: a verifying client context needs the name to verify for") {
    context::client_options o;
    o.verify = context::verify_mode::system;
    auto nameless = context::make_client(o);
    REQUIRE(!nameless);
    CHECK(nameless.error().find("server name") != std::string::npos);
    o.server_name = "derp.example.test";
    CHECK(context::make_client(o));
}

TEST_CASE("tls: a client answers a server's HelloRequest with no_renegotiation, not a new ClientHello") {
    pki p;
    auto server = test::memory_peer::server(p.cert, p.key, "", TLS1_2_VERSION);
    REQUIRE(server);
    session client(insecure_client(TLS1_2_VERSION), false);
    exchange_with(client, *server);
    REQUIRE(client.state() == status::open);
    struct seen {
        bool no_renegotiation = false;
        bool client_hello = false;
    } got;
    SSL_set_msg_callback(server->native(), [](int write_p, int, int type, const void* buf, std::size_t length, SSL*, void* arg) {
        auto* g = static_cast<seen*>(arg);
        const auto* b = static_cast<const unsigned char*>(buf);
        if (write_p != 0 || length < 2) return;
        if (type == SSL3_RT_ALERT && b[1] == SSL_AD_NO_RENEGOTIATION) g->no_renegotiation = true;
        if (type == SSL3_RT_HANDSHAKE && b[0] == SSL3_MT_CLIENT_HELLO) g->client_hello = true;
    });
    SSL_set_msg_callback_arg(server->native(), &got);
    REQUIRE(server->renegotiate());
    std::string plain, out;
    const std::string hello_request = server->take_output();
    REQUIRE(!hello_request.empty());
    client.feed(bytes_of(hello_request), plain, out);
    server->receive(out);
    std::string ignored;
    server->read(ignored);  // the server reads the answer as it reads data (it is not in a handshake)
    CHECK(got.no_renegotiation);
    CHECK(!got.client_hello);
}

TEST_CASE("tls: server handshakes go through the library the build names, and only certificates from files") {
    pki p;
    const bool wolf = handshake_library().starts_with("wolfSSL");
    CHECK((wolf || handshake_library().starts_with("OpenSSL")));
    auto files = p.server();
    // -Dtls_library=wolfssl: wolfSSL's context alone (OpenSSL only checked the files).
    CHECK((files->wolf_native() != nullptr) == wolf);
    CHECK((files->native() == nullptr) == wolf);
    // ACME's contexts stay OpenSSL's in either build (the TLS-ALPN-01 switch needs its
    // ClientHello callback).
    auto pending = context::make_server_pending("derp.example.test", nullptr);
    REQUIRE(pending);
    CHECK(pending.value()->native() != nullptr);
    CHECK(pending.value()->wolf_native() == nullptr);
    // Either way the same session interface: a TLS 1.3 handshake with records after it.
    session server(files, false);
    session client(insecure_client(0), false);
    handshake(client, server);
    REQUIRE(server.state() == status::open);
    CHECK(server.version() == TLS1_3_VERSION);
    CHECK(server.cipher_name().starts_with("TLS_"));
    CHECK(server.alpn() == "http/1.1");
    std::vector<std::uint8_t> out(256);
    std::string spill, plain, back;
    const std::size_t n = server.write(bytes_of(std::string("from the server")), out, spill);
    CHECK(client.feed(std::span<const std::uint8_t>(out.data(), n), plain, back) == status::open);
    CHECK(plain == "from the server");
}
