// The userspace record layer (crypto/tls_record): RFC 8448's TLS 1.3 trace byte for byte, then
// records of OpenSSL itself both ways after a real in-memory handshake whose keys derpd's
// session exports (each cipher, TLS 1.2 and 1.3), KeyUpdate both ways, every close reason, and the
// kernel crypto_info made from the same keys.
#include <doctest/doctest.h>

#include <linux/tls.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "crypto/box.hh"
#include "crypto/ktls.hh"
#include "crypto/tls.hh"
#include "crypto/tls_record.hh"
#include "tests/support/tls_memory_peer.hh"

using namespace derp;
using namespace derp::tls;

namespace {

secret_bytes hex(std::string_view text) {
    secret_bytes out;
    int high = -1;
    for (const char c : text) {
        int v = -1;
        if (c >= '0' && c <= '9') v = c - '0';
        else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        if (v < 0) continue;
        if (high < 0) {
            high = v;
        } else {
            out.push_back(static_cast<std::uint8_t>(high << 4 | v));
            high = -1;
        }
    }
    return out;
}

std::string str(const secret_bytes& b) { return std::string(b.begin(), b.end()); }
std::span<const std::uint8_t> bytes_of(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// RFC 8448 section 3 (Simple 1-RTT Handshake, TLS_AES_128_GCM_SHA256).
const secret_bytes client_ap_secret = hex("9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5");
const secret_bytes server_ap_secret = hex("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43");
const secret_bytes client_ap_key = hex("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51");
const secret_bytes client_ap_iv = hex("5b 78 92 3d ee 08 57 90 33 e5 23 d9");
const secret_bytes server_ap_key = hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56");
const secret_bytes server_ap_iv = hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84");
// {client} send application_data record (client seq 0): the payload 00 01 .. 31.
const secret_bytes client_app_record = hex(
    "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b"
    "98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee"
    "bb 21 69 49 15 e4");
// {server} send application_data record (server seq 1: its NewSessionTicket was seq 0).
const secret_bytes server_app_record = hex(
    "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3"
    "0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0"
    "32 e1 67 c2 95 5d");
// {client} send alert record (seq 1) and {server} send alert record (seq 2): close_notify.
const secret_bytes client_alert_record = hex("17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3");
const secret_bytes server_alert_record = hex("17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9");

std::string payload_0_to_31() {
    std::string p;
    for (int i = 0; i <= 0x31; ++i) p.push_back(static_cast<char>(i));
    return p;
}

std::unique_ptr<record_layer> make_layer(const record_keys& keys) {
    auto r = record_layer::make(keys);
    REQUIRE_MESSAGE(r, (r ? "" : r.error()));
    return std::move(r.value());
}

// Seals `plain` with `layer` into a string.
std::string seal(record_layer& layer, std::string_view plain) {
    std::vector<std::uint8_t> out(layer.sealed_bytes(plain.size()));
    const std::size_t n = layer.seal(bytes_of(plain), out);
    REQUIRE(n > 0);
    return std::string(reinterpret_cast<const char*>(out.data()), n);
}

// Opens every whole record of `in` (in place on a copy), appending application data to
// `plain`; returns the verdict that stopped it (none: all opened, or a partial record left).
record_close open_all(record_layer& layer, std::string_view in, std::string& plain, std::string& to_send,
                      opened* last = nullptr) {
    std::vector<std::uint8_t> buffer(in.begin(), in.end());
    std::size_t at = 0;
    while (at < buffer.size()) {
        const opened o = layer.open_in_place(std::span(buffer).subspan(at), to_send);
        if (last != nullptr) *last = o;
        if (o.close != record_close::none) return o.close;
        if (o.consumed == 0) break;
        plain.append(reinterpret_cast<const char*>(buffer.data() + at + layer.body_offset()), o.plain_bytes);
        at += o.consumed;
    }
    return record_close::none;
}

// Two layers facing each other with fresh random keys: a's TX is b's RX and the other way.
std::pair<std::unique_ptr<record_layer>, std::unique_ptr<record_layer>> twins(std::uint16_t version, aead_cipher cipher) {
    const std::size_t key_bytes = cipher == aead_cipher::aes_128_gcm ? 16 : 32;
    const std::size_t iv_bytes = version == TLS1_2_VERSION && cipher != aead_cipher::chacha20_poly1305 ? 4 : 12;
    auto random = [](std::size_t n) {
        secret_bytes b(n);
        for (auto& x : b) x = static_cast<std::uint8_t>(std::rand());
        return b;
    };
    record_keys a;
    a.version = version;
    a.cipher = cipher;
    a.tx_key = random(key_bytes);
    a.rx_key = random(key_bytes);
    a.tx_iv = random(iv_bytes);
    a.rx_iv = random(iv_bytes);
    if (version == TLS1_3_VERSION) {
        a.tx_secret = random(32);
        a.rx_secret = random(32);
    }
    a.tx_seq = 7;
    a.rx_seq = 3;
    record_keys b = a;
    std::swap(b.tx_key, b.rx_key);
    std::swap(b.tx_iv, b.rx_iv);
    std::swap(b.tx_secret, b.rx_secret);
    std::swap(b.tx_seq, b.rx_seq);
    return {make_layer(a), make_layer(b)};
}

struct variant {
    int max_version;  // 0 = TLS 1.3
    const char* ciphers;
    aead_cipher cipher;
};
constexpr variant all_variants[] = {
    {0, "TLS_AES_128_GCM_SHA256", aead_cipher::aes_128_gcm},
    {0, "TLS_AES_256_GCM_SHA384", aead_cipher::aes_256_gcm},
    {0, "TLS_CHACHA20_POLY1305_SHA256", aead_cipher::chacha20_poly1305},
    {TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", aead_cipher::aes_128_gcm},
    {TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", aead_cipher::aes_256_gcm},
    {TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", aead_cipher::chacha20_poly1305},
};

// derpd's server session against a raw OpenSSL client, handed off to the record layer right
// behind the client's Finished as derpd does. `tail` is what the client sent behind it.
struct handed_off {
    std::string dir;
    std::unique_ptr<test::memory_peer> client;
    std::unique_ptr<session> server;
    std::unique_ptr<record_layer> layer;
    std::string tail;  // client bytes after the Finished, in the same flight

    handed_off(const variant& v, std::string_view early = {}) {
        char pattern[] = "/tmp/derpd-record-unit-XXXXXX";
        REQUIRE(mkdtemp(pattern) != nullptr);
        dir = pattern;
        REQUIRE(write_self_signed("127.0.0.1", dir + "/c.crt", dir + "/c.key"));
        auto ctx = context::make_server(server_identity{"127.0.0.1", dir + "/c.crt", dir + "/c.key", {}});
        REQUIRE(ctx);
        server = std::make_unique<session>(ctx.value(), false);
        server->hand_off_records();
        client = test::memory_peer::client(v.max_version, v.ciphers);
        REQUIRE(client);
        std::string plain, out;
        for (int round = 0; round < 10 && server->state() == status::handshaking; ++round) {
            client->handshake();
            std::string flight = client->take_output();
            if (client->handshake_done() && !early.empty()) {
                REQUIRE(client->write(early));
                flight += client->take_output();
            }
            out.clear();
            server->feed(bytes_of(flight), plain, out);
            REQUIRE_MESSAGE(server->state() != status::failed, server->error());
            if (server->state() == status::open) tail = flight.substr(server->handoff_offset());
            client->receive(out);
        }
        REQUIRE(server->state() == status::open);
        CHECK(plain.empty());
        client->handshake();
        if (tail.empty() && !early.empty()) {
            // TLS 1.2: the client's Finished came before the server's; its data follows.
            REQUIRE(client->write(early));
            tail = client->take_output();
        }
        auto keys = server->record_export();
        REQUIRE(keys);
        CHECK(keys->version == (v.max_version == 0 ? TLS1_3_VERSION : TLS1_2_VERSION));
        CHECK(keys->cipher == v.cipher);
        layer = make_layer(*keys);
    }
    ~handed_off() { (void)std::system(("rm -rf " + dir).c_str()); }
};

}  // namespace

TEST_CASE("tls record: RFC 8448 simple 1-RTT application data and close_notify, both roles") {
    record_keys as_client;
    as_client.version = TLS1_3_VERSION;
    as_client.tx_key = client_ap_key;
    as_client.tx_iv = client_ap_iv;
    as_client.tx_secret = client_ap_secret;
    as_client.rx_key = server_ap_key;
    as_client.rx_iv = server_ap_iv;
    as_client.rx_secret = server_ap_secret;
    as_client.tx_seq = 0;
    as_client.rx_seq = 1;
    auto client = make_layer(as_client);
    const std::string payload = payload_0_to_31();
    CHECK(seal(*client, payload) == str(client_app_record));
    std::string plain, to_send;
    CHECK(open_all(*client, str(server_app_record), plain, to_send) == record_close::none);
    CHECK(plain == payload);
    std::string alert;
    client->seal_alert(1, 0, alert);
    CHECK(alert == str(client_alert_record));
    CHECK(open_all(*client, str(server_alert_record), plain, to_send) == record_close::close_notify);
    CHECK(to_send.empty());

    record_keys as_server = as_client;
    std::swap(as_server.tx_key, as_server.rx_key);
    std::swap(as_server.tx_iv, as_server.rx_iv);
    std::swap(as_server.tx_secret, as_server.rx_secret);
    as_server.tx_seq = 1;
    as_server.rx_seq = 0;
    auto server = make_layer(as_server);
    CHECK(seal(*server, payload) == str(server_app_record));
    // Opened into a separate buffer this time (derpd's path: the receive buffer is read-only).
    std::vector<std::uint8_t> out(record_open_room);
    const opened o = server->open(client_app_record, out.data(), to_send);
    CHECK(o.close == record_close::none);
    CHECK(o.consumed == client_app_record.size());
    CHECK(std::string(reinterpret_cast<const char*>(out.data()), o.plain_bytes) == payload);
    CHECK(server->open(client_alert_record, out.data(), to_send).close == record_close::close_notify);
}

TEST_CASE("tls record: OpenSSL's records open, ours open in OpenSSL, for every cipher and version") {
    for (const variant& v : all_variants) {
        CAPTURE(v.ciphers);
        handed_off h(v, "right behind Finished");
        std::string plain, to_send;
        // The record the client sent in the Finished flight, then more, one of 40,000 bytes
        // (three records from OpenSSL), split at every awkward place.
        CHECK(open_all(*h.layer, h.tail, plain, to_send) == record_close::none);
        CHECK(plain == "right behind Finished");
        const std::string big(40000, 'x');
        REQUIRE(h.client->write("second"));
        REQUIRE(h.client->write(big));
        const std::string wire = h.client->take_output();
        plain.clear();
        CHECK(open_all(*h.layer, wire, plain, to_send) == record_close::none);
        CHECK(plain == "second" + big);
        // Ours: coalesced into 16 KiB records, read by OpenSSL.
        const std::string reply = "reply " + std::string(50000, 'y');
        const std::string sealed = seal(*h.layer, reply);
        CHECK(sealed.size() <= h.layer->sealed_bytes(reply.size()));
        CHECK(sealed.size() == reply.size() + 4 * h.layer->overhead());
        h.client->receive(sealed);
        std::string got;
        CHECK(h.client->read(got));
        CHECK(got == reply);
        // Our close_notify ends OpenSSL's reading cleanly.
        std::string alert;
        h.layer->seal_alert(1, 0, alert);
        h.client->receive(alert);
        CHECK(h.client->read(got));
        CHECK((SSL_get_shutdown(h.client->native()) & SSL_RECEIVED_SHUTDOWN) != 0);
        CHECK(to_send.empty());
    }
}

TEST_CASE("tls record: KeyUpdate both ways against OpenSSL, update_requested answered") {
    for (const variant& v : all_variants) {
        if (v.max_version != 0) continue;
        CAPTURE(v.ciphers);
        handed_off h(v);
        std::string plain, to_send;
        // The client updates and asks for ours: the layer rekeys RX and answers at once.
        REQUIRE(h.client->key_update(true));
        REQUIRE(h.client->write("after client update"));
        CHECK(open_all(*h.layer, h.client->take_output(), plain, to_send) == record_close::none);
        CHECK(plain == "after client update");
        CHECK(h.layer->rx_key_updates() == 1);
        CHECK(h.layer->tx_key_updates() == 1);
        CHECK(h.layer->rx_seq() == 1);
        REQUIRE(!to_send.empty());
        h.client->receive(to_send + seal(*h.layer, "under our new keys"));
        to_send.clear();
        std::string got;
        CHECK(h.client->read(got));
        CHECK(got == "under our new keys");
        // Ours, asking for the client's: OpenSSL answers with its next write.
        REQUIRE(h.layer->update_tx_keys(true, to_send));
        h.client->receive(to_send + seal(*h.layer, "second generation"));
        to_send.clear();
        got.clear();
        CHECK(h.client->read(got));
        CHECK(got == "second generation");
        REQUIRE(h.client->write("client's third generation"));
        plain.clear();
        CHECK(open_all(*h.layer, h.client->take_output(), plain, to_send) == record_close::none);
        CHECK(plain == "client's third generation");
        CHECK(h.layer->rx_key_updates() == 2);
        CHECK(to_send.empty());
        // Past the usage limit the layer updates by itself, in front of the next record.
        h.layer->tx_records_per_key = h.layer->tx_seq() + 1;
        std::string sealed = seal(*h.layer, "one");
        sealed += seal(*h.layer, "two");
        // (ChaCha20-Poly1305 has no such limit.)
        CHECK(h.layer->tx_key_updates() == (v.cipher == aead_cipher::chacha20_poly1305 ? 2u : 3u));
        got.clear();
        h.client->receive(sealed);
        CHECK(h.client->read(got));
        CHECK(got == "onetwo");
    }
}

TEST_CASE("tls record: a TLS 1.2 renegotiation from OpenSSL is refused with a counted reason") {
    handed_off h(all_variants[3]);
    REQUIRE(h.client->renegotiate());
    std::string plain, to_send;
    CHECK(open_all(*h.layer, h.client->take_output(), plain, to_send) == record_close::renegotiation);
    // The no_renegotiation warning reaches OpenSSL, which then fails the renegotiation.
    h.client->receive(to_send);
    std::string got;
    CHECK(!h.client->read(got));
}

TEST_CASE("tls record: TLS 1.3 padding and zero-length application data") {
    auto [a, b] = twins(TLS1_3_VERSION, aead_cipher::aes_256_gcm);
    std::vector<std::uint8_t> out(2000);
    std::string wire;
    const std::string hello = "hello";
    std::size_t n = a->seal_typed(23, bytes_of(hello), out.data(), 300);
    CHECK(n == hello.size() + a->overhead() + 300);
    wire.append(reinterpret_cast<const char*>(out.data()), n);
    n = a->seal_typed(23, {}, out.data(), 0);
    wire.append(reinterpret_cast<const char*>(out.data()), n);
    std::string plain, to_send;
    CHECK(open_all(*b, wire, plain, to_send) == record_close::none);
    CHECK(plain == "hello");
    CHECK(b->rx_seq() == a->tx_seq());
}

TEST_CASE("tls record: every bad record is a distinct close, with the alert the peer is owed") {
    struct bad_case {
        const char* name;
        std::uint16_t version;
        record_close expected;
        std::uint8_t alert_sent;  // 0: none
        std::function<std::string(record_layer&)> make;
    };
    auto typed = [](record_layer& a, std::uint8_t type, std::string_view body, std::size_t padding = 0) {
        std::vector<std::uint8_t> out(body.size() + a.overhead() + padding);
        const std::size_t n = a.seal_typed(type, bytes_of(body), out.data(), padding);
        return std::string(reinterpret_cast<const char*>(out.data()), n);
    };
    const std::vector<bad_case> cases = {
        {"bad tag", TLS1_3_VERSION, record_close::bad_tag, 20,
         [](record_layer& a) {
             std::string r = seal(a, "tampered");
             r[8] ^= 1;
             return r;
         }},
        {"bad tag 1.2", TLS1_2_VERSION, record_close::bad_tag, 20,
         [](record_layer& a) {
             std::string r = seal(a, "tampered");
             r.back() ^= 1;
             return r;
         }},
        {"replayed", TLS1_3_VERSION, record_close::wrong_sequence, 20,
         [](record_layer& a) {
             const std::string r = seal(a, "once");
             return r + r;
         }},
        {"dropped", TLS1_2_VERSION, record_close::wrong_sequence, 20,
         [](record_layer& a) {
             (void)seal(a, "lost");
             return seal(a, "after the lost one");
         }},
        {"oversized header", TLS1_3_VERSION, record_close::oversized, 22,
         [](record_layer&) { return std::string("\x17\x03\x03\x41\x01", 5); }},
        {"oversized plaintext 1.2", TLS1_2_VERSION, record_close::oversized, 22,
         [](record_layer&) { return std::string("\x17\x03\x03\x40\x40", 5); }},
        {"truncated", TLS1_3_VERSION, record_close::truncated, 50,
         [](record_layer&) { return std::string("\x17\x03\x03\x00\x10", 5) + std::string(16, 'a'); }},
        {"bad version", TLS1_3_VERSION, record_close::bad_header, 10,
         [](record_layer& a) {
             std::string r = seal(a, "x");
             r[2] = 1;
             return r;
         }},
        {"unknown outer type", TLS1_2_VERSION, record_close::unknown_content_type, 10,
         [](record_layer&) { return std::string("\x18\x03\x03\x00\x20", 5) + std::string(32, 'a'); }},
        {"change_cipher_spec after the handshake", TLS1_3_VERSION, record_close::unknown_content_type, 10,
         [](record_layer&) { return std::string("\x14\x03\x03\x00\x01\x01", 6); }},
        {"unknown inner type", TLS1_3_VERSION, record_close::unknown_content_type, 10,
         [typed](record_layer& a) { return typed(a, 99, "?"); }},
        {"padding only", TLS1_3_VERSION, record_close::unknown_content_type, 10,
         [typed](record_layer& a) { return typed(a, 0, "", 20); }},
        {"fatal alert", TLS1_3_VERSION, record_close::alert, 0,
         [](record_layer& a) {
             std::string out;
             a.seal_alert(2, 40, out);
             return out;
         }},
        {"warning alert 1.2", TLS1_2_VERSION, record_close::alert, 0,
         [](record_layer& a) {
             std::string out;
             a.seal_alert(1, 90, out);
             return out;
         }},
        {"close_notify", TLS1_2_VERSION, record_close::close_notify, 0,
         [](record_layer& a) {
             std::string out;
             a.seal_alert(1, 0, out);
             return out;
         }},
        {"alert of 3 bytes", TLS1_3_VERSION, record_close::malformed_control, 50,
         [typed](record_layer& a) { return typed(a, 21, std::string("\x02\x28\x00", 3)); }},
        {"renegotiation 1.2", TLS1_2_VERSION, record_close::renegotiation, 100,
         [typed](record_layer& a) { return typed(a, 22, std::string("\x01\x00\x00\x02\x03\x03", 6)); }},
        {"NewSessionTicket to a server", TLS1_3_VERSION, record_close::unexpected_handshake, 10,
         [typed](record_layer& a) { return typed(a, 22, std::string("\x04\x00\x00\x01\x00", 5)); }},
        {"KeyUpdate request_update 2", TLS1_3_VERSION, record_close::bad_key_update, 47,
         [typed](record_layer& a) { return typed(a, 22, std::string("\x18\x00\x00\x01\x02", 5)); }},
        {"KeyUpdate not at the record's end", TLS1_3_VERSION, record_close::bad_key_update, 47,
         [typed](record_layer& a) { return typed(a, 22, std::string("\x18\x00\x00\x01\x00\x18\x00\x00\x01\x00", 10)); }},
        {"fragmented handshake message", TLS1_3_VERSION, record_close::malformed_control, 50,
         [typed](record_layer& a) { return typed(a, 22, std::string("\x18\x00\x00\x01", 4)); }},
        {"empty handshake record", TLS1_3_VERSION, record_close::malformed_control, 50,
         [typed](record_layer& a) { return typed(a, 22, ""); }},
    };
    std::vector<record_close> seen;
    for (const auto& c : cases) {
        for (const aead_cipher cipher : {aead_cipher::aes_128_gcm, aead_cipher::chacha20_poly1305}) {
            CAPTURE(c.name);
            CAPTURE(to_string(cipher));
            auto [a, b] = twins(c.version, cipher);
            const std::string wire = c.make(*a);
            std::string plain, to_send;
            opened last;
            CHECK(open_all(*b, wire, plain, to_send, &last) == c.expected);
            CHECK(to_string(c.expected) != "?");
            CHECK(b->closed() == c.expected);
            // Nothing opens after a close.
            CHECK(open_all(*b, seal(*a, "later"), plain, to_send) == c.expected);
            // The peer (a) opens the alert b sent, if any.
            if (c.alert_sent == 0) {
                CHECK(to_send.empty());
            } else {
                std::string ignored, back;
                opened alert;
                CHECK(open_all(*a, to_send, ignored, back, &alert) == record_close::alert);
                CHECK(alert.alert == c.alert_sent);
            }
            if (c.expected == record_close::alert) CHECK(last.alert != 0);
            seen.push_back(c.expected);
        }
    }
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    CHECK(seen.size() == record_close_count - 2);  // all but none and internal
}

TEST_CASE("tls record: a record arriving in pieces waits for its last byte; the header is judged at once") {
    auto [a, b] = twins(TLS1_2_VERSION, aead_cipher::aes_256_gcm);
    const std::string r = seal(*a, "in pieces");
    std::vector<std::uint8_t> out(record_open_room);
    std::string to_send;
    for (std::size_t cut = 0; cut < r.size(); ++cut) {
        const opened o = b->open(bytes_of(r.substr(0, cut)), out.data(), to_send);
        CHECK(o.close == record_close::none);
        CHECK(o.consumed == 0);
    }
    const opened whole = b->open(bytes_of(r), out.data(), to_send);
    CHECK(whole.consumed == r.size());
    CHECK(std::string(reinterpret_cast<const char*>(out.data()), whole.plain_bytes) == "in pieces");
}

TEST_CASE("tls record: plain_fitting and sealed_bytes agree for every room size") {
    for (const std::uint16_t version : {std::uint16_t{TLS1_2_VERSION}, std::uint16_t{TLS1_3_VERSION}}) {
        auto [a, b] = twins(version, aead_cipher::aes_128_gcm);
        for (std::size_t room = 0; room < 70000; room += 997) {
            const std::size_t plain = a->plain_fitting(room);
            CHECK(a->sealed_bytes(plain) <= room);
            if (plain > 0) CHECK(a->sealed_bytes(plain + 1) > room);
        }
    }
}

TEST_CASE("tls record: make refuses material that does not fit the cipher") {
    record_keys k;
    k.version = TLS1_3_VERSION;
    k.tx_key = k.rx_key = secret_bytes(16);
    k.tx_iv = k.rx_iv = secret_bytes(12);
    CHECK(!record_layer::make(k));  // no traffic secrets
    k.tx_secret = k.rx_secret = secret_bytes(32);
    CHECK(record_layer::make(k));
    k.cipher = aead_cipher::aes_256_gcm;
    CHECK(!record_layer::make(k));  // a 16-byte key for AES-256
    k.version = TLS1_2_VERSION;
    k.cipher = aead_cipher::aes_128_gcm;
    CHECK(!record_layer::make(k));  // 1.2 GCM takes a 4-byte salt
    k.version = 0x0302;
    CHECK(!record_layer::make(k));
}

// The kernel's side of the same material (its records are compared with ours in the VM test
// vm-ktls-records): each field where linux/tls.h puts it; lengths that do not fit refused.
TEST_CASE("tls record: ktls_direction_of fills the kernel's crypto_info from the layer's keys") {
    record_keys k;
    k.version = TLS1_3_VERSION;
    k.tx_key = hex("000102030405060708090a0b0c0d0e0f");
    k.tx_iv = hex("a0a1a2a3 a4a5a6a7a8a9aaab");
    k.rx_key = hex("101112131415161718191a1b1c1d1e1f");
    k.rx_iv = hex("b0b1b2b3 b4b5b6b7b8b9babb");
    k.tx_seq = 0x0102030405060708ULL;
    k.rx_seq = 9;
    const secret_bytes be_tx_seq = hex("0102030405060708"), be_rx_seq = hex("0000000000000009");
    {
        const auto d = ktls_direction_of(k, true);
        REQUIRE(d);
        tls12_crypto_info_aes_gcm_128 info;
        REQUIRE(d.value().crypto_info_bytes == sizeof info);
        std::memcpy(&info, d.value().crypto_info.data(), sizeof info);
        CHECK(info.info.version == TLS_1_3_VERSION);
        CHECK(info.info.cipher_type == TLS_CIPHER_AES_GCM_128);
        CHECK(std::equal(k.tx_key.begin(), k.tx_key.end(), info.key));
        CHECK(std::equal(k.tx_iv.begin(), k.tx_iv.begin() + 4, info.salt));  // 1.3: the IV split 4 + 8
        CHECK(std::equal(k.tx_iv.begin() + 4, k.tx_iv.end(), info.iv));
        CHECK(std::equal(be_tx_seq.begin(), be_tx_seq.end(), info.rec_seq));
    }
    k.version = TLS1_2_VERSION;
    k.tx_iv = hex("a0a1a2a3");
    k.rx_iv = hex("b0b1b2b3");
    {
        const auto d = ktls_direction_of(k, false);
        REQUIRE(d);
        tls12_crypto_info_aes_gcm_128 info;
        std::memcpy(&info, d.value().crypto_info.data(), sizeof info);
        CHECK(info.info.version == TLS_1_2_VERSION);
        CHECK(std::equal(k.rx_key.begin(), k.rx_key.end(), info.key));
        CHECK(std::equal(k.rx_iv.begin(), k.rx_iv.end(), info.salt));
        // 1.2 GCM: the first explicit nonce the kernel writes is the sequence number, as ours.
        CHECK(std::equal(be_rx_seq.begin(), be_rx_seq.end(), info.iv));
        CHECK(std::equal(be_rx_seq.begin(), be_rx_seq.end(), info.rec_seq));
    }
    k.cipher = aead_cipher::chacha20_poly1305;
    CHECK(!ktls_direction_of(k, true));  // a 16-byte key for ChaCha20
    k.tx_key = secret_bytes(32, 0x11);
    CHECK(!ktls_direction_of(k, true));  // 1.2 ChaCha20 takes a 12-byte IV
    k.tx_iv = hex("c0c1c2c3c4c5c6c7c8c9cacb");
    {
        const auto d = ktls_direction_of(k, true);
        REQUIRE(d);
        tls12_crypto_info_chacha20_poly1305 info;
        REQUIRE(d.value().crypto_info_bytes == sizeof info);
        std::memcpy(&info, d.value().crypto_info.data(), sizeof info);
        CHECK(info.info.cipher_type == TLS_CIPHER_CHACHA20_POLY1305);
        CHECK(std::equal(k.tx_iv.begin(), k.tx_iv.end(), info.iv));
        CHECK(std::equal(k.tx_key.begin(), k.tx_key.end(), info.key));
        CHECK(std::equal(be_tx_seq.begin(), be_tx_seq.end(), info.rec_seq));
    }
    k.version = 0x0302;
    CHECK(!ktls_direction_of(k, true));
}

TEST_CASE("tls record: many layers at once share the per-thread key cache and never mix keys") {
    // More layers than the cache has entries, used round-robin, created and destroyed in
    // between: each record must open under its own key whether its schedule was cached or not.
    std::vector<std::pair<std::unique_ptr<record_layer>, std::unique_ptr<record_layer>>> pairs;
    for (int i = 0; i < 200; ++i)
        pairs.push_back(twins(i % 2 == 0 ? TLS1_3_VERSION : TLS1_2_VERSION,
                              i % 3 == 0 ? aead_cipher::chacha20_poly1305 : aead_cipher::aes_256_gcm));
    for (int round = 0; round < 3; ++round) {
        for (std::size_t i = 0; i < pairs.size(); ++i) {
            auto& [a, b] = pairs[i];
            const std::string text = "pair " + std::to_string(i) + " round " + std::to_string(round);
            std::string plain, to_send;
            CHECK(open_all(*b, seal(*a, text), plain, to_send) == record_close::none);
            CHECK(plain == text);
        }
        // Replace a third of them: new keys where old ones were cached.
        for (std::size_t i = static_cast<std::size_t>(round); i < pairs.size(); i += 3)
            pairs[i] = twins(TLS1_3_VERSION, aead_cipher::aes_128_gcm);
    }
}
