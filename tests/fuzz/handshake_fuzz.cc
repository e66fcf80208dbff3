// libFuzzer target for the server handshake and the ClientInfo JSON decoder. A fuzzer cannot
// forge Poly1305 tags, so the handshake runs with a null box (the "sealed" bytes are nonce, 16
// ignored tag bytes and the plaintext) to reach JSON decoding; the first input byte picks the
// mode and the server configuration.
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <variant>

#include "core/assert.hh"
#include "core/client_info.hh"
#include "core/handshake.hh"

namespace {

class null_box final : public derp::handshake_box {
public:
    bool open_from(const derp::node_key&, std::span<const std::uint8_t> sealed,
                   std::span<std::uint8_t> plaintext) noexcept override {
        if (sealed.size() < derp::box_overhead_bytes) return false;
        DERP_ASSERT(plaintext.size() == sealed.size() - derp::box_overhead_bytes);
        if (!plaintext.empty()) std::memcpy(plaintext.data(), sealed.data() + derp::box_overhead_bytes, plaintext.size());
        return true;
    }
    bool seal_to(const derp::node_key&, std::span<const std::uint8_t> plaintext,
                 std::span<std::uint8_t> sealed) noexcept override {
        DERP_ASSERT(sealed.size() == plaintext.size() + derp::box_overhead_bytes);
        std::memset(sealed.data(), 0, derp::box_overhead_bytes);
        std::memcpy(sealed.data() + derp::box_overhead_bytes, plaintext.data(), plaintext.size());
        return true;
    }
};

void fuzz_json(std::string_view json) {
    const auto info = derp::parse_client_info_json(json);
    if (!info) return;
    // What we accept re-encodes (Go client style) and decodes to the same values.
    const auto again = derp::parse_client_info_json(derp::format_client_info_json(*info));
    DERP_ASSERT(again.has_value());
    DERP_ASSERT(again->version == info->version && again->can_ack_pings == info->can_ack_pings &&
                again->is_prober == info->is_prober && again->app_name == info->app_name);
    const bool had_key = info->mesh_key && !info->mesh_key->is_zero();
    DERP_ASSERT(had_key == again->mesh_key.has_value());
    if (had_key) DERP_ASSERT(again->mesh_key->equals(*info->mesh_key));
}

}  // namespace

// Declared here (there is no libFuzzer header) to satisfy -Wmissing-declarations.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace derp;
    if (size == 0) return 0;
    const std::uint8_t mode = data[0];
    const std::span<const std::uint8_t> in(data + 1, size - 1);
    if ((mode & 1) != 0) {
        fuzz_json(std::string_view(reinterpret_cast<const char*>(in.data()), in.size()));
        return 0;
    }
    std::array<std::uint8_t, key_bytes> server_bytes{};
    server_bytes.fill(0x42);
    std::optional<key_mesh> mesh;
    if ((mode & 2) != 0) mesh = key_mesh::from_hex("fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9");
    null_box box;
    server_handshake hs(node_key(key_span(server_bytes)), mesh, box);
    std::array<std::uint8_t, handshake_start_bytes_max> first{};
    const std::size_t n = hs.start(first, (mode & 4) != 0);
    DERP_ASSERT(n == server_key_frame_bytes || n == handshake_start_bytes_max);

    const handshake_step step = hs.feed(in);
    if (const auto* more = std::get_if<handshake_need_more>(&step)) {
        DERP_ASSERT(more->bytes_total > in.size());
        DERP_ASSERT(!hs.finished());
    } else if (const auto* accepted = std::get_if<handshake_accepted>(&step)) {
        DERP_ASSERT(hs.finished());
        DERP_ASSERT(accepted->bytes_consumed <= in.size());
        DERP_ASSERT(!accepted->client_key.is_zero());
        DERP_ASSERT(!accepted->can_mesh || mesh.has_value());
        DERP_ASSERT(accepted->server_info_frame[0] == 0x03);
        // One byte less than the ClientInfo frame is need_more on a fresh handshake.
        server_handshake fresh(node_key(key_span(server_bytes)), mesh, box);
        (void)fresh.start(first, true);
        const auto shorter = fresh.feed(in.first(accepted->bytes_consumed - 1));
        DERP_ASSERT(std::holds_alternative<handshake_need_more>(shorter));
        fuzz_json(std::string_view(reinterpret_cast<const char*>(in.data()) + key_bytes + frame_header_bytes + box_overhead_bytes,
                                   accepted->bytes_consumed - frame_header_bytes - key_bytes - box_overhead_bytes));
    } else {
        DERP_ASSERT(hs.finished());
    }
    return 0;
}
