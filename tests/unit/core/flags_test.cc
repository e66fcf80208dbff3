// Flag parsing in Go's spelling: good and bad input, durations both ways.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/flags.hh"

namespace {

struct flags_under_test {
    bool dev = false;
    bool stun = true;
    std::string addr = ":443";
    std::int64_t shards = 0;
    std::int64_t write_timeout_ns = 2'000'000'000;
    derp::flag_set set{"derpd"};

    flags_under_test() {
        set.add_bool("dev", &dev, "dev mode");
        set.add_bool("stun", &stun, "run STUN");
        set.add_string("a", &addr, "listen address");
        set.add_int("shards", &shards, "shard count");
        set.add_duration("tcp-write-timeout", &write_timeout_ns, "write timeout");
    }
    auto parse(std::vector<std::string_view> args) { return set.parse(args); }
};

}  // namespace

TEST_CASE("flags: every spelling Go accepts") {
    flags_under_test f;
    auto r = f.parse({"-dev", "--a", "127.0.0.1:3340", "-shards=3", "--tcp-write-timeout=1m30s",
                      "-stun=false", "rest", "-notaflag"});
    REQUIRE(r.has_value());
    CHECK(f.dev);
    CHECK_FALSE(f.stun);
    CHECK(f.addr == "127.0.0.1:3340");
    CHECK(f.shards == 3);
    CHECK(f.write_timeout_ns == 90'000'000'000);
    CHECK(f.set.was_set("a"));
    CHECK(r->positional == std::vector<std::string>{"rest", "-notaflag"});
}

TEST_CASE("flags: defaults stay when not given, and -- ends the flags") {
    flags_under_test f;
    auto r = f.parse({"--", "-dev"});
    REQUIRE(r.has_value());
    CHECK_FALSE(f.dev);
    CHECK(f.stun);
    CHECK(f.addr == ":443");
    CHECK_FALSE(f.set.was_set("dev"));
    CHECK(r->positional == std::vector<std::string>{"-dev"});
}

TEST_CASE("flags: a boolean never eats the next argument") {
    flags_under_test f;
    auto r = f.parse({"-stun", "false"});
    REQUIRE(r.has_value());
    CHECK(f.stun);
    CHECK(r->positional == std::vector<std::string>{"false"});
}

TEST_CASE("flags: integers take Go's base prefixes and reject junk") {
    flags_under_test f;
    REQUIRE(f.parse({"-shards", "0x10"}).has_value());
    CHECK(f.shards == 16);
    REQUIRE(f.parse({"-shards", "-7"}).has_value());
    CHECK(f.shards == -7);
    CHECK_FALSE(f.parse({"-shards", "7x"}).has_value());
    CHECK_FALSE(f.parse({"-shards", "99999999999999999999"}).has_value());
}

TEST_CASE("flags: bad input names the flag") {
    struct bad_case {
        std::vector<std::string_view> args;
        std::string expected;
    };
    const std::vector<bad_case> cases = {
        {{"-nosuch"}, "flag provided but not defined: -nosuch"},
        {{"--nosuch=1"}, "flag provided but not defined: -nosuch"},
        {{"-a"}, "flag needs an argument: -a"},
        {{"-shards", "many"}, "invalid integer value \"many\" for flag -shards"},
        {{"-dev=maybe"}, "invalid boolean value \"maybe\" for flag -dev"},
        {{"-tcp-write-timeout", "5"}, "invalid duration \"5\" for flag -tcp-write-timeout"},
        {{"---a", "x"}, "bad flag syntax: ---a"},
        {{"-=x"}, "bad flag syntax: -=x"},
    };
    for (const auto& c : cases) {
        flags_under_test f;
        auto r = f.parse(c.args);
        REQUIRE_FALSE(r.has_value());
        CAPTURE(r.error());
        CHECK(r.error().find(c.expected) == 0);
    }
}

TEST_CASE("flags: help is reported, usage lists flags with defaults") {
    flags_under_test f;
    auto r = f.parse({"-h"});
    REQUIRE(r.has_value());
    CHECK(r->help_requested);
    const std::string usage = f.set.usage();
    CHECK(usage.find("-a string") != std::string::npos);
    CHECK(usage.find("(default \":443\")") != std::string::npos);
    CHECK(usage.find("(default 2s)") != std::string::npos);
}

TEST_CASE("go durations parse as time.ParseDuration does") {
    struct d_case {
        const char* text;
        std::int64_t ns;
    };
    const d_case good[] = {
        {"0", 0},          {"5s", 5'000'000'000},     {"10m", 600'000'000'000},
        {"1h30m", 5'400'000'000'000}, {"300ms", 300'000'000}, {"1.5s", 1'500'000'000},
        {"-2s", -2'000'000'000}, {"+1us", 1000},       {"1\xc2\xb5s", 1000},
        {"7ns", 7},        {".5s", 500'000'000},     {"2h45m3.5s", 9'903'500'000'000},
    };
    for (const auto& c : good) {
        CAPTURE(c.text);
        auto v = derp::parse_go_duration_ns(c.text);
        REQUIRE(v.has_value());
        CHECK(*v == c.ns);
    }
    for (const char* bad : {"", "5", "s", "1x", "1..2s", "-", "3000000h", ".s", "1s2"}) {
        CAPTURE(bad);
        CHECK_FALSE(derp::parse_go_duration_ns(bad).has_value());
    }
}

TEST_CASE("go durations format as Duration.String does") {
    CHECK(derp::format_go_duration(0) == "0s");
    CHECK(derp::format_go_duration(2'000'000'000) == "2s");
    CHECK(derp::format_go_duration(600'000'000'000) == "10m0s");
    CHECK(derp::format_go_duration(5'400'000'000'000) == "1h30m0s");
    CHECK(derp::format_go_duration(1'500'000'000) == "1.5s");
    CHECK(derp::format_go_duration(300'000'000) == "300ms");
    CHECK(derp::format_go_duration(1'500) == "1.5\xc2\xb5s");
    CHECK(derp::format_go_duration(-15'000'000'000) == "-15s");
}

TEST_CASE("a repeatable flag appends; the first occurrence replaces the default") {
    std::vector<std::string> urls = {"http://127.0.0.1:3340/derp"};
    derp::flag_set flags("t");
    flags.add_string_list("url", &urls, "servers");
    {
        std::vector<std::string> untouched = urls;
        derp::flag_set none("t");
        none.add_string_list("url", &untouched, "servers");
        const std::vector<std::string_view> args = {};
        REQUIRE(none.parse(args));
        CHECK(untouched == std::vector<std::string>{"http://127.0.0.1:3340/derp"});
    }
    const std::vector<std::string_view> args = {"--url", "https://a:443/derp", "-url=https://b:443/derp"};
    REQUIRE(flags.parse(args));
    CHECK(urls == std::vector<std::string>{"https://a:443/derp", "https://b:443/derp"});
    CHECK(flags.was_set("url"));
    CHECK(flags.usage().find("-url value (repeatable)") != std::string::npos);
}

TEST_CASE("flags: float64 as Go's strconv.ParseFloat, +Inf default shown as Go shows it") {
    double limit = std::numeric_limits<double>::infinity();
    derp::flag_set set{"derpd"};
    set.add_float("accept-connection-limit", &limit, "rate");
    CHECK(set.usage().find("-accept-connection-limit float\n    \trate (default +Inf)") != std::string::npos);
    std::vector<std::string_view> args = {"-accept-connection-limit=2.5e2"};
    REQUIRE(set.parse(args).has_value());
    CHECK(limit == 250.0);
    for (const auto& [text, want] : std::vector<std::pair<std::string_view, double>>{
             {"100", 100.0}, {"+1.5", 1.5}, {"-3", -3.0}, {".5", 0.5}, {"inf", INFINITY}, {"+Inf", INFINITY},
             {"-Infinity", -INFINITY}}) {
        CAPTURE(text);
        const auto got = derp::parse_go_float(text);
        REQUIRE(got);
        CHECK(*got == want);
    }
    CHECK(std::isnan(*derp::parse_go_float("NaN")));
    for (std::string_view bad : {"", "+", "1.5x", "++1", "+-1", "0x", "one", " 1"}) {
        CAPTURE(bad);
        CHECK_FALSE(derp::parse_go_float(bad));
    }
    args = {"-accept-connection-limit", "fast"};
    const auto r = set.parse(args);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == "invalid float value \"fast\" for flag -accept-connection-limit");
}
