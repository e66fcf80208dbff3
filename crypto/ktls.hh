// Kernel TLS (kTLS): the start-up probe, installing the traffic keys on a connected socket, and
// reading a non-data record the kernel holds back (an alert or a KeyUpdate arrives as a control
// message; a plain recv fails with EIO). Socket options only; io_uring stays in ring/.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"
#include "crypto/tls.hh"
#include "crypto/tls_record.hh"

namespace derp::tls {

enum class ktls_mode : std::uint8_t { automatic, off, require };
std::string_view to_string(ktls_mode mode) noexcept;
bool parse_ktls_mode(std::string_view text, ktls_mode* out) noexcept;

struct ktls_support {
    bool available = false;
    std::string detail;  // why not, in words an operator can act on
};
// setsockopt(TCP_ULP, "tls") on an unconnected TCP socket: ENOTCONN means the ULP exists (it
// only attaches to established sockets), ENOENT that the kernel has no tls module.
ktls_support probe_ktls() noexcept;

// Attaches the tls ULP (once per socket) and installs one direction.
result<void, std::string> ktls_attach(int fd) noexcept;
result<void, std::string> ktls_install(int fd, bool transmit, const ktls_direction& direction) noexcept;
// The kernel's crypto_info for one direction of `keys` (TX: tx_key, tx_iv, tx_seq), the same
// material the userspace record layer starts from; defined beside the export
// (crypto/tls_ktls_export.cc). Fails when a key or IV length does not fit the cipher.
result<ktls_direction, std::string> ktls_direction_of(const record_keys& keys, bool transmit) noexcept;

// A record that kTLS RX did not turn into data, read with its record type.
struct control_record {
    std::uint8_t type = 0;  // 21 alert, 22 handshake
    std::vector<std::uint8_t> body;
};
result<control_record, std::string> read_control_record(int fd) noexcept;
// Sends a close_notify alert through kTLS TX (a record of type 21 via TLS_SET_RECORD_TYPE).
result<void, std::string> ktls_send_close_notify(int fd) noexcept;
// What a control record means, for the log: "close_notify alert", "KeyUpdate", ...
std::string describe(const control_record& record);

}  // namespace derp::tls
