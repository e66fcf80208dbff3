// The /derp upgrade decision and derper's 101 and 426 response bytes; see derp_upgrade.hh.
#include "core/derp_upgrade.hh"

#include <cstring>

#include "core/assert.hh"
#include "core/http_date.hh"

namespace derp {

namespace {

class writer {
public:
    explicit writer(std::span<std::uint8_t> out) noexcept : _out(out) {}
    void put(std::string_view s) noexcept {
        DERP_ASSERT(_at + s.size() <= _out.size());
        std::memcpy(_out.data() + _at, s.data(), s.size());
        _at += s.size();
    }
    std::size_t written() const noexcept { return _at; }

private:
    std::span<std::uint8_t> _out;
    std::size_t _at = 0;
};

}  // namespace

derp_upgrade classify_derp_upgrade(const http_request& request) noexcept {
    derp_upgrade up;
    const std::string_view upgrade = request.header("Upgrade").value_or(std::string_view{});
    if (ascii_iequals(upgrade, "websocket")) {
        const std::string_view protocol =
            request.header("Sec-WebSocket-Protocol").value_or(std::string_view{});
        // Legacy clients sent "Upgrade: WebSocket" but spoke raw DERP.
        up.kind = protocol.find("derp") != std::string_view::npos ? upgrade_kind::websocket
                                                                   : upgrade_kind::derp;
    } else if (ascii_iequals(upgrade, "derp")) {
        up.kind = upgrade_kind::derp;
    } else {
        up.weird_upgrade = upgrade;
    }
    up.fast_start = request.header("Derp-Fast-Start").value_or(std::string_view{}) == "1";
    up.not_ideal = !request.header("Ideal-Node").value_or(std::string_view{}).empty();
    return up;
}

std::size_t encode_derp_101(std::span<std::uint8_t> out, const node_key& server) noexcept {
    writer w(out);
    const auto hex = server.hex();
    w.put("HTTP/1.1 101 Switching Protocols\r\n"
          "Upgrade: DERP\r\n"
          "Connection: Upgrade\r\n"
          "Derp-Version: 2\r\n"
          "Derp-Public-Key: ");
    w.put(std::string_view(hex.data(), hex.size()));
    w.put("\r\n\r\n");
    DERP_ASSERT(w.written() == derp_101_response_bytes);
    return w.written();
}

std::size_t encode_derp_426(std::span<std::uint8_t> out, std::int64_t unix_seconds) noexcept {
    writer w(out);
    w.put("HTTP/1.1 426 Upgrade Required\r\n"
          "Content-Type: text/plain; charset=utf-8\r\n"
          "X-Content-Type-Options: nosniff\r\n"
          "Date: ");
    w.put(format_http_date(unix_seconds).view());
    w.put("\r\n"
          "Content-Length: 33\r\n"
          "\r\n"
          "DERP requires connection upgrade\n");
    DERP_ASSERT(w.written() == derp_426_response_bytes);
    return w.written();
}

}  // namespace derp
