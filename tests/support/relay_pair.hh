// Two DERP clients of the project's client library (plain or over TLS) exchanging packets
// through a server both ways, with every byte checked: the shared traffic check of the TLS
// integration test and of the kTLS test inside the VM.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "client/derp_client.hh"

namespace derp::test {

struct relay_pair_result {
    bool ok = false;
    std::string problem;        // what went wrong, for the failure message
    std::uint64_t delivered = 0;  // packets that arrived intact (both directions)
    std::uint64_t expected = 0;
};

// Each client sends `per_size` packets of every size in `sizes` to the other and waits until
// all have arrived intact (or `timeout_ms` passes).
relay_pair_result run_relay_pair(std::uint16_t port, std::shared_ptr<client::client_tls> tls,
                                 const std::vector<std::size_t>& sizes, std::uint32_t per_size, int timeout_ms = 20000);

}  // namespace derp::test
