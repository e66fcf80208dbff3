// An in-memory TLS peer on raw OpenSSL, for tests of crypto/tls without sockets: it does what
// derpd's own sessions never do (a KeyUpdate or a renegotiation request behind the Finished, a
// chain of an attacker's choosing), and open_record() reads a record the way the kernel would
// with exported kTLS keys. Used by the unit tests and the tls_feed fuzz target, so it reports
// through return values, never through a test framework.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

struct ssl_ctx_st;
struct ssl_st;
struct bio_st;

namespace derp::test {

class memory_peer {
public:
    // A client that verifies nothing; max_version 0 = TLS 1.3, else e.g. TLS1_2_VERSION.
    // `ciphers`: TLS 1.3 suites or TLS 1.2 cipher list (by version), empty = OpenSSL's default.
    static std::unique_ptr<memory_peer> client(int max_version = 0, std::string_view ciphers = {});
    // A server presenting cert_pem's first certificate with key_pem's key, then every
    // certificate in chain_pem as its chain, in that order (PEM file paths). Nothing on error.
    static std::unique_ptr<memory_peer> server(const std::string& cert_pem, const std::string& key_pem,
                                               const std::string& chain_pem, int max_version = 0);
    ~memory_peer();
    memory_peer(const memory_peer&) = delete;
    memory_peer& operator=(const memory_peer&) = delete;

    void receive(std::string_view bytes);  // what the other side sent
    std::string take_output();             // what this side wrote since the last call
    // One handshake step; true once this side's handshake is complete.
    bool handshake();
    bool handshake_done() const;
    // Queues a KeyUpdate (TLS 1.3) and writes it out; false when OpenSSL refuses.
    bool key_update(bool update_requested);
    // TLS 1.2: starts a renegotiation (a ClientHello from a client, a HelloRequest from a
    // server) and writes it out; false when OpenSSL refuses.
    bool renegotiate();
    // Encrypts application data (false when OpenSSL cannot write now, e.g. mid-renegotiation).
    bool write(std::string_view plain);
    // Decrypts whatever has been received; false once the connection failed.
    bool read(std::string& plain);
    ssl_st* native() const noexcept { return _ssl; }

private:
    memory_peer() = default;
    ssl_ctx_st* _ctx = nullptr;
    ssl_st* _ssl = nullptr;
    bio_st* _in = nullptr;   // owned by _ssl
    bio_st* _out = nullptr;  // owned by _ssl
};

// Decrypts one whole record with kTLS material the way the kernel would: key, IV (the 4-byte
// salt for TLS 1.2 AES-GCM, else the 12-byte static IV) and sequence number. The plaintext
// (for TLS 1.3 without its inner content type, which must be application data), or nothing
// when the record is malformed or does not authenticate.
std::optional<std::string> open_record(std::string_view record, std::uint16_t version,
                                       std::span<const std::uint8_t> key, std::span<const std::uint8_t> iv,
                                       std::uint64_t seq, bool chacha);

// The first whole record in `bytes` (header included), or empty.
std::string_view first_record(std::string_view bytes);

}  // namespace derp::test
