// Unit tests of ClientInfo / ServerInfo JSON with Go encoding/json rules (spec 1.6, 1.7) and of
// the go_json decoder underneath: case folding, unknown keys, null, types, trailing data.
#include "core/client_info.hh"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/go_json.hh"

namespace derp {
namespace {

using namespace std::literals;

constexpr std::string_view psk = "fefe1cc5dc5fc24d94beca6eea7930fdc7d6ad1fc59bb46a135f2fa7046c9dd9";

TEST_CASE("the JSON Go clients send") {
    auto tailscaled = parse_client_info_json(R"({"version":2,"CanAckPings":true})");
    REQUIRE(tailscaled.has_value());
    CHECK(tailscaled->version == 2);
    CHECK(tailscaled->can_ack_pings);
    CHECK_FALSE(tailscaled->is_prober);
    CHECK_FALSE(tailscaled->mesh_key.has_value());
    CHECK(tailscaled->app_name.empty());

    // v1.36.2 mesh client order (fixture 03) and the current order.
    for (std::string json : {R"({"version":2,"meshKey":")" + std::string(psk) + R"(","CanAckPings":false})",
                             R"({"meshKey":")" + std::string(psk) + R"(","version":2,"CanAckPings":false})"}) {
        CAPTURE(json);
        auto mesh = parse_client_info_json(json);
        REQUIRE(mesh.has_value());
        REQUIRE(mesh->mesh_key.has_value());
        CHECK(mesh->mesh_key->equals(*key_mesh::from_hex(psk)));
        CHECK_FALSE(mesh->can_ack_pings);
    }
    auto prober = parse_client_info_json(R"({"version":2,"CanAckPings":false,"IsProber":true,"AppName":"derpprobe"})");
    REQUIRE(prober.has_value());
    CHECK(prober->is_prober);
    CHECK(prober->app_name == "derpprobe");
}

TEST_CASE("Go's lenient rules") {
    // Case-insensitive keys, including Go's non-ASCII folds (U+017F ~ s, U+212A ~ k).
    auto folded = parse_client_info_json(R"({"VERSION":3,"canackpings":true,"iSpRoBeR":true,"appname":"x","MESHKEY":")" +
                                         std::string(psk) + R"("})");
    REQUIRE(folded.has_value());
    CHECK(folded->version == 3);
    CHECK(folded->can_ack_pings);
    CHECK(folded->is_prober);
    CHECK(folded->app_name == "x");
    CHECK(folded->mesh_key.has_value());
    auto kelvin = parse_client_info_json("{\"me\xc5\xbfh\xe2\x84\xaa" "ey\":\"" + std::string(psk) + "\"}");
    REQUIRE(kelvin.has_value());
    CHECK(kelvin->mesh_key.has_value());
    CHECK(parse_client_info_json(R"({"ver\u017fion":5})")->version == 5);
    CHECK(parse_client_info_json("{\"vers\xc4\xb1on\":5}")->version == 0);  // dotless i is not i
    // Unknown keys of any shape are ignored; null is a no-op; the last duplicate wins.
    auto unknown = parse_client_info_json(R"({"x":{"a":[1,{"version":9}]},"y":[],"version":2,"z":null})");
    REQUIRE(unknown.has_value());
    CHECK(unknown->version == 2);
    auto nulls = parse_client_info_json(R"({"version":null,"CanAckPings":null,"IsProber":null,"AppName":null})");
    REQUIRE(nulls.has_value());
    CHECK(nulls->version == 0);
    CHECK(parse_client_info_json(R"({"version":1,"version":2})")->version == 2);
    CHECK(parse_client_info_json(R"({"version":1,"VERSION":3})")->version == 3);
    CHECK(parse_client_info_json(R"({"version":-7})")->version == -7);
    CHECK(parse_client_info_json(R"({"version":-9223372036854775808})")->version == INT64_MIN);
    CHECK(parse_client_info_json(R"({"AppName":"a\u00e9\n"})")->app_name == "a\xc3\xa9\n");
    // A top-level null decodes to an empty ClientInfo; surrounding whitespace is fine.
    CHECK(parse_client_info_json("null").has_value());
    CHECK(parse_client_info_json(" \n{} \t\r\n").has_value());
    // An all-zero mesh key is well-formed (it just never grants mesh rights).
    CHECK(parse_client_info_json(R"({"meshKey":")" + std::string(64, '0') + R"("})")->mesh_key->is_zero());
    CHECK(parse_client_info_json(R"({"meshKey":"FEFE1CC5DC5FC24D94BECA6EEA7930FDC7D6AD1FC59BB46A135F2FA7046C9DD9"})")
              ->mesh_key.has_value());
}

TEST_CASE("invalid ClientInfo JSON") {
    const std::string good_mesh = R"("meshKey":")" + std::string(psk) + R"(")";
    const std::vector<std::string> rows = {
        "",
        " ",
        "[]",
        "2",
        R"("str")",
        "true",
        "{",
        R"({"version":2,})",
        R"({"version":2} x)",
        "{}{}",
        R"({"version":2.0})",
        R"({"version":1e2})",
        R"({"version":"2"})",
        R"({"version":9223372036854775808})",
        R"({"version":99999999999999999999999})",
        R"({"version":true})",
        R"({"version":[2]})",
        R"({"CanAckPings":1})",
        R"({"CanAckPings":"true"})",
        R"({"IsProber":{}})",
        R"({"AppName":5})",
        R"({"AppName":["a"]})",
        R"({"meshKey":""})",
        R"({"meshKey":null})",
        R"({"meshKey":5})",
        R"({"meshKey":"abc"})",
        R"({"meshKey":")" + std::string(psk.substr(1)) + R"("})",
        R"({"meshKey":")" + std::string(psk) + R"(0"})",
        R"({"meshKey":"nodekey:)" + std::string(psk) + R"("})",
        R"({"meshKey":")" + std::string(63, '0') + R"(g"})",
        R"({"meshKey":"bad",)" + good_mesh + "}",  // an error anywhere fails the whole decode
        "{" + good_mesh + R"(,"meshKey":"bad"})",
        "{\"AppName\":\"\x01\"}",                   // raw control byte in a string
        "{\"version\":2}\0"s,                      // trailing NUL
    };
    for (const auto& json : rows) {
        CAPTURE(json);
        CHECK_FALSE(parse_client_info_json(json).has_value());
    }
}

TEST_CASE("format_client_info_json writes what the Go client writes") {
    client_info info;
    info.version = 2;
    info.can_ack_pings = true;
    CHECK(format_client_info_json(info) == R"({"version":2,"CanAckPings":true})");
    info.can_ack_pings = false;
    info.mesh_key = key_mesh::from_hex(psk);
    CHECK(format_client_info_json(info) == R"({"meshKey":")" + std::string(psk) + R"(","version":2,"CanAckPings":false})");
    info.mesh_key = key_mesh{};  // zero: omitted
    info.is_prober = true;
    CHECK(format_client_info_json(info) == R"({"version":2,"CanAckPings":false,"IsProber":true})");
    info.is_prober = false;
    info.version = 0;
    info.app_name = "a<b>&\"\\\n\x01\xe2\x80\xa8z";
    const std::string json = format_client_info_json(info);
    CHECK(json == R"({"CanAckPings":false,"AppName":"a\u003cb\u003e\u0026\"\\\n\u0001\u2028z"})");
    const auto back = parse_client_info_json(json);
    REQUIRE(back.has_value());
    CHECK(back->app_name == info.app_name);
}

TEST_CASE("ServerInfo JSON") {
    CHECK(server_info_json.size() == 13);
    auto ours = parse_server_info_json(server_info_json);
    REQUIRE(ours.has_value());
    CHECK(ours->version == 2);
    CHECK(ours->token_bucket_bytes_per_second == 0);
    auto tb = parse_server_info_json(R"({"version":2,"tokenbucketbytespersecond":1000,"TokenBucketBytesBurst":5000})");
    REQUIRE(tb.has_value());
    CHECK(tb->token_bucket_bytes_per_second == 1000);
    CHECK(tb->token_bucket_bytes_burst == 5000);
    CHECK_FALSE(parse_server_info_json(R"({"version":"2"})").has_value());
}

TEST_CASE("go_json reports values and fields precisely") {
    static constexpr std::array<std::string_view, 2> fields = {"A", "B"};
    std::vector<std::pair<std::size_t, json_kind>> seen;
    std::uint64_t big = 0;
    auto record = [&](std::size_t field, const json_value& v) noexcept {
        seen.emplace_back(field, v.kind);
        if (v.kind == json_kind::integer && v.fits_uint64) big = v.uint64;
        return true;
    };
    REQUIRE(decode_json_object(R"({"a":18446744073709551615,"c":1,"b":"s","A":[1],"B":1.5,"a":null})", fields, record));
    const std::vector<std::pair<std::size_t, json_kind>> expected = {
        {0, json_kind::integer}, {1, json_kind::string}, {0, json_kind::aggregate},
        {1, json_kind::floating}, {0, json_kind::null}};
    CHECK(seen == expected);
    CHECK(big == UINT64_MAX);
    auto refuse = [](std::size_t, const json_value&) noexcept { return false; };
    CHECK_FALSE(decode_json_object(R"({"a":1})", fields, refuse));
    CHECK(decode_json_object(R"({"c":1})", fields, refuse));  // never called for unknown keys
    CHECK(match_go_json_field("b", fields) == 1);
    CHECK(match_go_json_field("bb", fields) == 2);
    CHECK(match_go_json_field("", fields) == 2);
}

}  // namespace
}  // namespace derp
