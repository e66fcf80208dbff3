// Unit tests of the /derp upgrade decision and derper's exact 101 and 426 response bytes,
// against spec 3.3 / 11.1 and the recorded fixtures.
#include "core/derp_upgrade.hh"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/http_date.hh"
#include "tests/unit/fixture_util.hh"

namespace derp {
namespace {

using test::bytes;

TEST_CASE("classify_derp_upgrade follows derper's handler") {
    struct row {
        std::string_view headers;
        upgrade_kind kind;
        bool fast_start;
        bool not_ideal;
        std::string_view weird;
    };
    const std::vector<row> rows = {
        {"Upgrade: DERP\r\nConnection: Upgrade\r\n", upgrade_kind::derp, false, false, ""},
        {"Upgrade: derp\r\n", upgrade_kind::derp, false, false, ""},
        {"upgrade: DeRp\r\n", upgrade_kind::derp, false, false, ""},
        {"Upgrade: websocket\r\nSec-WebSocket-Protocol: derp\r\n", upgrade_kind::websocket, false, false, ""},
        {"Upgrade: WebSocket\r\nSec-Websocket-Protocol: x, derp\r\n", upgrade_kind::websocket, false, false, ""},
        {"Upgrade: WebSocket\r\n", upgrade_kind::derp, false, false, ""},  // legacy raw DERP
        {"Upgrade: websocket\r\nSec-WebSocket-Protocol: DERP\r\n", upgrade_kind::derp, false, false, ""},
        {"", upgrade_kind::none, false, false, ""},
        {"Upgrade:\r\n", upgrade_kind::none, false, false, ""},
        {"Upgrade: h2c\r\n", upgrade_kind::none, false, false, "h2c"},
        {"Upgrade: foo\r\nUpgrade: derp\r\n", upgrade_kind::none, false, false, "foo"},  // first value only
        {"Upgrade: DERP\r\nDerp-Fast-Start: 1\r\n", upgrade_kind::derp, true, false, ""},
        {"Upgrade: DERP\r\nderp-fast-start:  1 \r\n", upgrade_kind::derp, true, false, ""},
        {"Upgrade: DERP\r\nDerp-Fast-Start: true\r\n", upgrade_kind::derp, false, false, ""},
        {"Upgrade: DERP\r\nDerp-Fast-Start: 01\r\n", upgrade_kind::derp, false, false, ""},
        {"Upgrade: DERP\r\nIdeal-Node: 1b\r\n", upgrade_kind::derp, false, true, ""},
        {"Upgrade: DERP\r\nIdeal-Node:\r\n", upgrade_kind::derp, false, false, ""},
        {"Derp-Fast-Start: 1\r\nIdeal-Node: x\r\n", upgrade_kind::none, true, true, ""},
    };
    for (const auto& r : rows) {
        CAPTURE(r.headers);
        const std::string text = "GET /derp HTTP/1.1\r\nHost: h\r\n" + std::string(r.headers) + "\r\n";
        const bytes input = test::to_bytes(text);  // the request's views point into it
        http_request req;
        REQUIRE(parse_http_request(input, req).status == http_parse_status::complete);
        const auto up = classify_derp_upgrade(req);
        CHECK(up.kind == r.kind);
        CHECK(up.fast_start == r.fast_start);
        CHECK(up.not_ideal == r.not_ideal);
        CHECK(up.weird_upgrade == r.weird);
    }
}

TEST_CASE("the 101 response is byte-exact") {
    const auto spec_key = *node_key::from_hex("d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526");
    bytes out(derp_101_response_bytes);
    REQUIRE(encode_derp_101(out, spec_key) == derp_101_response_bytes);
    CHECK(test::as_text(out) ==
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n"
          "Derp-Public-Key: d934d6cc4aa36eb88ae522b9f408da1931a6ea30ca115a353c7b121d00724526\r\n\r\n");

    // The recorded derper response for the fixture server key.
    const auto fixture_key = *node_key::from_hex("286071d6e94ae5b18f2f0c047acb3d01d0c64848cd3164e60c797c8a6cbcd548");
    REQUIRE(encode_derp_101(out, fixture_key) == derp_101_response_bytes);
    for (const char* path : {"01-handshake-two-clients/A/s2c.hex", "01-handshake-two-clients/B/s2c.hex",
                             "03-mesh-watcher/W/s2c.hex", "02-ping-pong-keepalive/P/s2c.hex"}) {
        CAPTURE(path);
        const bytes recorded = test::read_hex_stream(path);
        REQUIRE(recorded.size() > derp_101_response_bytes);
        CHECK(bytes(recorded.begin(), recorded.begin() + derp_101_response_bytes) == out);
        CHECK(recorded[derp_101_response_bytes] == 0x01);  // ServerKey follows in the same flush
    }
}

TEST_CASE("the 426 response matches the recording with its Date") {
    const bytes recorded = test::read_binary("06-http/derp-no-upgrade/response.bin");
    bytes out(derp_426_response_bytes);
    REQUIRE(encode_derp_426(out, 1795607041) == derp_426_response_bytes);  // 2026-11-25 11:44:01 UTC
    CHECK(test::as_text(out) == test::as_text(recorded));
    // A different time changes only the Date line.
    bytes other(derp_426_response_bytes);
    REQUIRE(encode_derp_426(other, 0) == derp_426_response_bytes);
    CHECK(test::as_text(other).find("Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n") != std::string_view::npos);
    CHECK(test::as_text(other).ends_with("\r\n\r\nDERP requires connection upgrade\n"));
}

TEST_CASE("format_http_date") {
    struct row {
        std::int64_t seconds;
        std::string_view text;
    };
    const std::vector<row> rows = {
        {0, "Thu, 01 Jan 1970 00:00:00 GMT"},
        {-1, "Wed, 31 Dec 1969 23:59:59 GMT"},
        {951825600, "Tue, 29 Feb 2000 12:00:00 GMT"},
        {4107542400, "Mon, 01 Mar 2100 00:00:00 GMT"},
        {1795607041, "Wed, 25 Nov 2026 11:44:01 GMT"},
        {253402300799, "Fri, 31 Dec 9999 23:59:59 GMT"},
    };
    for (const auto& r : rows) {
        CAPTURE(r.seconds);
        CHECK(format_http_date(r.seconds).view() == r.text);
    }
}

}  // namespace
}  // namespace derp
