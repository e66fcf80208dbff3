// The server side of the DERP handshake (spec 1.4) for one connection after the HTTP upgrade,
// as a state machine: start() yields the bytes of the first flush (the 101 unless fast-start,
// then ServerKey); feed() takes the client's bytes until one whole ClientInfo frame and yields
// need_more, close{reason} or accepted{...} with the sealed ServerInfo frame ready to send. It
// never consumes bytes after ClientInfo (pipelined frames stay with the caller). Not here:
// deadlines, admission control, registration, and the NaCl box, which comes in through the
// handshake_box interface (crypto/box.hh implements it with libsodium) so core/ does not depend
// on crypto/ and tests and fuzzers can substitute it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <variant>

#include "core/client_info.hh"
#include "core/close_reason.hh"
#include "core/derp_upgrade.hh"
#include "core/frame.hh"
#include "core/key.hh"

namespace derp {

inline constexpr std::size_t box_tag_bytes = 16;  // Poly1305
inline constexpr std::size_t box_overhead_bytes = nonce_bytes + box_tag_bytes;  // 40 on the wire

// The NaCl box operations of the server's handshake, keyed by the server private key.
class handshake_box {
public:
    virtual ~handshake_box() = default;
    // Opens sealed = nonce(24) + tag(16) + ciphertext from client into plaintext, which has
    // exactly sealed.size() - 40 bytes. False when sealed is shorter than 40 bytes or the box
    // does not open (wrong key, forged tag, or a low-order client key).
    virtual bool open_from(const node_key& client, std::span<const std::uint8_t> sealed,
                           std::span<std::uint8_t> plaintext) noexcept = 0;
    // Seals plaintext to client with a fresh nonce into sealed (plaintext.size() + 40 bytes).
    // False if the client key is unusable (low order).
    virtual bool seal_to(const node_key& client, std::span<const std::uint8_t> plaintext,
                         std::span<std::uint8_t> sealed) noexcept = 0;
};

// ServerInfo frame: header + nonce + tag + {"version":2} = 5 + 24 + 16 + 13 = 58 bytes.
inline constexpr std::size_t server_info_frame_bytes_v2 =
    server_info_frame_bytes(box_overhead_bytes + server_info_json.size());
// The first flush: the 101 response (unless fast-start) and ServerKey.
inline constexpr std::size_t handshake_start_bytes_max = derp_101_response_bytes + server_key_frame_bytes;

struct handshake_need_more {
    std::size_t bytes_total;  // feed() needs at least this many bytes in total
};
struct handshake_close {
    close_reason reason;
};
struct handshake_accepted {
    node_key client_key;
    client_info info;
    bool can_mesh;              // a mesh key is configured and the client presented it
    std::size_t bytes_consumed; // the ClientInfo frame; later bytes belong to the read loop
    std::array<std::uint8_t, server_info_frame_bytes_v2> server_info_frame;  // send after admission
};
using handshake_step = std::variant<handshake_need_more, handshake_close, handshake_accepted>;

class server_handshake {
public:
    // mesh_key: the server's configured mesh key, or nullopt (then nobody can mesh). The box
    // must outlive the handshake.
    server_handshake(const node_key& server_public, std::optional<key_mesh> mesh_key,
                     handshake_box& box) noexcept;

    // Writes the 101 response (unless fast_start) followed by the ServerKey frame into out
    // (at least handshake_start_bytes_max bytes) and returns the bytes written. Called once.
    std::size_t start(std::span<std::uint8_t> out, bool fast_start) noexcept;

    // in = every client byte after the HTTP request head not yet consumed (the same bytes
    // again plus new ones on the next call). A close or accepted step ends the handshake.
    handshake_step feed(std::span<const std::uint8_t> in) noexcept;

    bool finished() const noexcept { return _state == state::finished; }

private:
    enum class state : std::uint8_t { created, awaiting_client_info, finished };

    node_key _server_public;
    std::optional<key_mesh> _mesh_key;
    handshake_box& _box;
    state _state = state::created;
};

}  // namespace derp
