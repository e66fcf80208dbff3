// Bootstrap DNS: Go's indented JSON, the flag lists, the TXT percentage, and the rollout rule.
#include <doctest/doctest.h>

#include "core/bootstrap_dns.hh"

using namespace derp;

TEST_CASE("bootstrap DNS JSON is json.MarshalIndent with a tab") {
    CHECK(format_bootstrap_json({}) == "{}");
    const dns_map names = {{"derp1.example.com", {"192.0.2.1", "2001:db8::1"}}, {"a.example", {}}};
    CHECK(format_bootstrap_json(names) ==
          "{\n\t\"a.example\": [],\n\t\"derp1.example.com\": [\n\t\t\"192.0.2.1\",\n\t\t\"2001:db8::1\"\n\t]\n}");
    CHECK(format_bootstrap_json({{"x<y", {"1"}}}).find("\"x\\u003cy\"") != std::string::npos);
}

TEST_CASE("bootstrap DNS flag lists") {
    CHECK(parse_name_list(" a.example, b.example ,,") == std::vector<std::string>{"a.example", "b.example"});
    const auto u = parse_unpublished_names("a.example/rollout.example,b.example");
    REQUIRE(u.size() == 2);
    CHECK(u[0].name == "a.example");
    CHECK(u[0].txt_name == "rollout.example");
    CHECK(u[1].txt_name.empty());
    CHECK(parse_unpublished_names("/, /txt.example").empty());  // no name: nothing to resolve
}

TEST_CASE("rollout percentage from a TXT record") {
    CHECK(parse_rollout_percent("0") == 0);
    CHECK(parse_rollout_percent("37") == 37);
    CHECK(parse_rollout_percent(" 100 ") == 100);
    for (const char* bad : {"", "101", "-1", "50%", "abc", "1.5"}) {
        CAPTURE(bad);
        CHECK(parse_rollout_percent(bad) == 0);
    }
}

TEST_CASE("rollout: 0 never, 100 always, loopback by coin, others stable per address") {
    const ip16 a = ipv4_mapped({192, 0, 2, 1});
    CHECK_FALSE(rollout_selects(0, a, false, 0.0));
    CHECK(rollout_selects(100, a, false, 0.99));
    CHECK(rollout_selects(50, a, true, 0.25));
    CHECK_FALSE(rollout_selects(50, a, true, 0.75));
    // Stable: the same address gets the same answer whatever the coin.
    CHECK(rollout_selects(37, a, false, 0.0) == rollout_selects(37, a, false, 0.9));
    // Roughly the percentage over many addresses.
    int selected = 0;
    for (int i = 0; i < 2000; ++i)
        selected += rollout_selects(30, ipv4_mapped({10, static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i), 7}),
                                    false, 0.0)
                        ? 1
                        : 0;
    CHECK(selected > 450);
    CHECK(selected < 750);
}
