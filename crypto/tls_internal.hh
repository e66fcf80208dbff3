// What crypto/tls.cc and crypto/tls_ktls_export.cc share about a session and nothing else
// includes: the window the memory BIO reads and writes during one call, and the per-session
// secrets and record counts the callbacks fill in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "crypto/tls.hh"

namespace derp::tls {

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
};

}  // namespace derp::tls
