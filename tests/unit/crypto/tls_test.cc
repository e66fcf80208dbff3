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

std::string seal(session& s, const std::string& text) {
    std::string spill;
    std::vector<std::uint8_t> out(64);  // small: most of the record spills, which must work too
    const std::size_t n = s.write(bytes_of(text), out, spill);
    return std::string(reinterpret_cast<const char*>(out.data()), n) + spill;
}

// Decrypts one record with kTLS material the way the kernel would; returns the plaintext
// (content type byte stripped for TLS 1.3).
std::string open_record(const std::string& record, std::uint16_t version, const std::vector<std::uint8_t>& key,
                        const std::vector<std::uint8_t>& iv, std::uint64_t seq, bool chacha) {
    REQUIRE(record.size() > 5 + 16);
    const auto* r = reinterpret_cast<const unsigned char*>(record.data());
    const std::size_t length = static_cast<std::size_t>(r[3]) << 8 | r[4];
    REQUIRE(record.size() == 5 + length);
    const EVP_CIPHER* cipher = chacha ? EVP_chacha20_poly1305() : key.size() == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
    std::array<unsigned char, 12> nonce{};
    const unsigned char* body = r + 5;
    std::size_t body_bytes = length - 16;
    std::vector<unsigned char> aad;
    unsigned char seq_be[8];
    for (int i = 0; i < 8; ++i) seq_be[i] = static_cast<unsigned char>(seq >> (56 - 8 * i));
    if (version == TLS1_2_VERSION && !chacha) {
        REQUIRE(iv.size() == 4);
        std::memcpy(nonce.data(), iv.data(), 4);
        std::memcpy(nonce.data() + 4, body, 8);  // explicit nonce
        body += 8;
        body_bytes -= 8;
    } else {
        REQUIRE(iv.size() == 12);
        std::memcpy(nonce.data(), iv.data(), 12);
        for (int i = 0; i < 8; ++i) nonce[4 + static_cast<std::size_t>(i)] ^= seq_be[i];
    }
    if (version == TLS1_3_VERSION) {
        aad.assign(r, r + 5);
    } else {
        aad.assign(seq_be, seq_be + 8);
        aad.push_back(r[0]);
        aad.push_back(r[1]);
        aad.push_back(r[2]);
        aad.push_back(static_cast<unsigned char>(body_bytes >> 8));
        aad.push_back(static_cast<unsigned char>(body_bytes));
    }
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    REQUIRE(EVP_DecryptInit_ex(ctx, cipher, nullptr, key.data(), nonce.data()) == 1);
    int n = 0;
    REQUIRE(EVP_DecryptUpdate(ctx, nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1);
    std::string plain(body_bytes, '\0');
    REQUIRE(EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char*>(plain.data()), &n, body, static_cast<int>(body_bytes)) == 1);
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, const_cast<unsigned char*>(body + body_bytes));
    int tail = 0;
    const bool ok = EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char*>(plain.data()) + n, &tail) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) return "<tag mismatch>";
    if (version == TLS1_3_VERSION) {
        REQUIRE(!plain.empty());
        CHECK(plain.back() == 23);  // inner content type: application data
        plain.pop_back();
    }
    return plain;
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
    const std::string cert = p.dir + "/derp.example.test.crt", key = p.dir + "/derp.example.test.key";
    const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=derp.example.test "
                            "-addext subjectAltName=DNS:derp.example.test -keyout " + key + " -out " + cert + " 2>/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
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
        CHECK(keys->tx_valid);
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
        CHECK(open_record(std::string(reinterpret_cast<const char*>(buffer.data()), n), keys->version, keys->tx_key,
                          keys->tx_iv, keys->tx_seq, v.chacha) == "reply");
        CHECK(!server.ktls_export()->tx_valid);  // OpenSSL has sent a record: TX is no longer ours to count
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
