// What crypto/tls.cc, crypto/tls_ktls_export.cc and crypto/tls_wolfssl.cc share about a
// context and a session and nothing else includes: the window the handshake library reads and
// writes during one call, and the per-session secrets and record counts the callbacks fill in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "crypto/tls.hh"
#include "crypto/tls_record.hh"

namespace derp::tls {

struct context::state {
    std::string hostname;
    bool require_sni = false;  // a DNS hostname: the ClientHello must name it exactly
    verify_mode verify = verify_mode::system;
    std::array<std::uint8_t, 32> pinned{};
    bool has_certificate = true;  // false: make_server_pending
    std::shared_ptr<const acme_challenges> acme;
};

struct wolf_handshake;  // crypto/tls_wolfssl.cc: a WOLFSSL object while its handshake runs

// The window the memory BIO works on during one feed() or write(): input it may read, output
// it writes into (a registered buffer), and a spill string for what does not fit.
struct io_window {
    const std::uint8_t* in = nullptr;
    std::size_t in_length = 0;
    std::size_t in_position = 0;
    std::uint8_t* out = nullptr;
    std::size_t out_capacity = 0;
    std::size_t out_length = 0;
    std::string* spill = nullptr;
};

struct session::secrets {
    secret_bytes client_traffic;  // CLIENT_TRAFFIC_SECRET_0
    secret_bytes server_traffic;  // SERVER_TRAFFIC_SECRET_0
    io_window window;
    bool want_ktls = false;
    // The TX sequence number, from the message callback: every record OpenSSL writes is
    // counted, including those it writes on its own (a KeyUpdate answer, an alert), and the
    // count at the switch to the server's application keys is remembered.
    std::uint64_t records_written = 0;
    std::uint64_t tx_epoch_start = 0;
    bool tx_epoch_known = false;
    bool key_update = false;    // a KeyUpdate went either way: the first traffic secrets are stale
    bool key_update_owed = false;  // the peer asked for ours (OpenSSL sends it with its next write)
    bool tx_in_kernel = false;  // session::note_tx_in_kernel()
    std::string refusal;  // why a callback refused the handshake, for the log

    // A server session of -Dtls_library=wolfssl (crypto/tls_wolfssl.cc). wolfSSL does the
    // handshake only: the object is freed the moment it completes, with what it negotiated
    // and the keys at the record boundary behind the client's Finished kept here. Records
    // after that go through `records` (crypto/tls_record.hh), never through wolfSSL.
    bool wolf_engine = false;
    wolf_handshake* wolf = nullptr;
    std::uint16_t wolf_version = 0;
    std::string wolf_cipher, wolf_sni, wolf_alpn;
    std::optional<record_keys> wolf_keys;      // wiped by forget_traffic_secrets()
    std::unique_ptr<record_layer> records;     // when the caller did not take the records
    std::string partial;                       // the record the last feed() ended in
};

}  // namespace derp::tls
