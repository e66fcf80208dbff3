// derper's per-client receive rate limit (core/rate_limit.hh): the --rate-config file as Go
// decodes it, and the byte bucket's arithmetic.
#include <doctest/doctest.h>

#include "core/rate_limit.hh"

using namespace derp;

TEST_CASE("rate config: derper's two fields as Go's encoding/json fills them") {
    auto both = parse_rate_config(R"({"PerClientRateLimitBytesPerSec": 1000000, "PerClientRateBurstBytes": 2000000})");
    REQUIRE(both);
    CHECK(both->bytes_per_second == 1000000);
    CHECK(both->burst_bytes == 2000000);
    CHECK(both->effective_burst() == 2000000);
    auto folded = parse_rate_config(R"({"perclientratelimitbytespersec":5,"Other":[1,{"a":2}]})");
    REQUIRE(folded);
    CHECK(folded->bytes_per_second == 5);
    CHECK(folded->burst_bytes == 0);
    CHECK(folded->effective_burst() == rate_burst_bytes_min);  // raised to 64 KiB + 32
    auto none = parse_rate_config("null");
    REQUIRE(none);
    CHECK(!none->enabled());
    auto empty = parse_rate_config(" {} \n");
    REQUIRE(empty);
    CHECK(!empty->enabled());
    auto null_field = parse_rate_config(R"({"PerClientRateLimitBytesPerSec": null})");
    REQUIRE(null_field);
    CHECK(!null_field->enabled());
    auto big = parse_rate_config(R"({"PerClientRateLimitBytesPerSec": 18446744073709551615})");
    REQUIRE(big);
    CHECK(big->bytes_per_second == 18446744073709551615ull);
}

TEST_CASE("rate config: what Go refuses is an error that names the problem") {
    for (const char* bad : {R"({"PerClientRateLimitBytesPerSec": -1})", R"({"PerClientRateLimitBytesPerSec": 1.5})",
                            R"({"PerClientRateLimitBytesPerSec": 1e6})", R"({"PerClientRateBurstBytes": "100"})",
                            R"({"PerClientRateLimitBytesPerSec": 18446744073709551616})",
                            R"({"PerClientRateBurstBytes": true})"}) {
        auto r = parse_rate_config(bad);
        REQUIRE_MESSAGE(!r, bad);
        CHECK(r.error().find("whole number") != std::string::npos);
    }
    for (const char* bad : {"", "{", "[1]", "1000", R"({"PerClientRateLimitBytesPerSec": 1} x)", "{'a':1}"}) {
        auto r = parse_rate_config(bad);
        REQUIRE_MESSAGE(!r, bad);
        CHECK(r.error().find("JSON object") != std::string::npos);
    }
    CHECK(!parse_rate_config(std::string(rate_config_bytes_max + 1, ' ')));
}

TEST_CASE("byte bucket: starts full, refills at the rate, says when a frame fits") {
    const rate_config config{100'000, 200'000};  // 100 kB/s, burst 200 kB
    byte_bucket bucket(config, 1'000'000'000);
    std::uint64_t ready = 0;
    CHECK(bucket.take(rate_frame_cost(150'000), 1'000'000'000, ready));  // capped at 65568
    CHECK(bucket.take(65'568, 1'000'000'000, ready));
    CHECK(bucket.take(65'568, 1'000'000'000, ready));  // 3 x 65568 = 196704 <= burst
    CHECK(!bucket.take(65'568, 1'000'000'000, ready));
    // 3296 tokens left; 62272 more take 0.62272 s at 100 kB/s.
    CHECK(ready >= 1'000'000'000 + 622'720'000);
    CHECK(ready <= 1'000'000'000 + 622'720'000 + 2);
    CHECK(!bucket.take(65'568, ready - 1000, ready));
    CHECK(bucket.take(65'568, ready, ready));
    // Refill never exceeds the burst.
    CHECK(bucket.take(100, ready + 100'000'000'000, ready));
    CHECK(bucket.tokens() == doctest::Approx(200'000 - 100));
    // Unlimited admits everything.
    byte_bucket open(rate_config{}, 0);
    CHECK(!open.limited());
    for (int i = 0; i < 1000; ++i) CHECK(open.take(65'568, 0, ready));
}

TEST_CASE("ServerInfo with the bucket: Go's field names, the burst in force, capped for a 32-bit int") {
    CHECK(server_info_json_with_rate(rate_config{1000, 0}) ==
          R"({"version":2,"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":65568})");
    CHECK(server_info_json_with_rate(rate_config{5'000'000'000, 9'000'000'000}) ==
          R"({"version":2,"TokenBucketBytesPerSecond":2147483647,"TokenBucketBytesBurst":2147483647})");
}
