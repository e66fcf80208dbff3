// derpbench's run files (bench/run_record.hh): every record survives writing and reading back,
// and empty, truncated, foreign and malformed input is refused with the file and line named;
// the facts read from a server's /debug/varz.
#include <doctest/doctest.h>

#include <string>

#include "bench/run_record.hh"

using namespace derp::bench;

namespace {

run_record context() {
    run_record r;
    r.run = "derpd 0.1.0, per-packet writes";
    r.time = "2026-12-06T10:00:00Z";
    r.machine = {2, "AMD EPYC \"quoted\"", "6.1.0", 3.5};
    r.server = {"http://127.0.0.1:3340/derp", "0.1.0", 1, "-shards 1"};
    r.load = {"per-packet", 1, 4, "570,1400"};
    return r;
}

run_record knee() {
    run_record r = context();
    r.kind = record_kind::sweep_knee;
    r.pairs = 4;
    r.size = 1400;
    r.size_label = "1400";
    r.offered_pps = 400'000;
    r.delivered_pps = 397'823;
    r.delivered_bps = 4.456e9;
    r.limit_reached = true;
    r.server_cpu_s_per_gbit = 0.1055;
    return r;
}

}  // namespace

TEST_CASE("run records: every workload's record reads back as written") {
    run_record point = knee();
    point.kind = record_kind::sweep_point;
    point.loss = 0.004;
    point.server_cpu_share = 0.47;
    run_record latency = context();
    latency.kind = record_kind::latency;
    latency.pairs = 4;
    latency.size = 1400;
    latency.size_label = "1400";
    latency.offered_pps = 200'000;
    latency.delivered_pps = 199'000;
    latency.loss = 0.005;
    latency.probes_sent = 3000;
    latency.probes_answered = 2999;
    latency.rtt_p50_us = 132;
    latency.rtt_p99_us = 1600;
    latency.rtt_max_us = 7100;
    run_record conns = context();
    conns.kind = record_kind::connections;
    conns.connections = 10'000;
    conns.server_rss_bytes_per_connection = 707;
    const std::string text = to_json_line(knee()) + to_json_line(point) + "\n" + to_json_line(latency) + to_json_line(conns);
    auto records = parse_run_text(text, "runs.jsonl");
    REQUIRE(records);
    REQUIRE(records->size() == 4);
    const auto& k = records->at(0);
    CHECK(k.kind == record_kind::sweep_knee);
    CHECK(k.file == "runs.jsonl");
    CHECK(k.line == 1);
    CHECK(k.run == "derpd 0.1.0, per-packet writes");
    CHECK(k.machine.cpu == "AMD EPYC \"quoted\"");
    CHECK(k.machine.load_average == 3.5);
    CHECK(k.server.shards == 1);
    CHECK(k.load.write == "per-packet");
    CHECK(k.load.sizes == "570,1400");
    CHECK(k.delivered_pps == 397'823);
    CHECK(k.limit_reached);
    CHECK(k.server_cpu_s_per_gbit == doctest::Approx(0.1055));
    CHECK_FALSE(k.server_cpu_share.has_value());
    CHECK(records->at(1).loss == doctest::Approx(0.004));
    CHECK(records->at(1).server_cpu_share == doctest::Approx(0.47));
    CHECK(records->at(2).line == 4);  // the blank line counts
    CHECK(records->at(2).rtt_p99_us == 1600);
    CHECK(records->at(2).probes_answered == 2999);
    CHECK(records->at(3).server_rss_bytes_per_connection == doctest::Approx(707));
    // Optional facts stay optional: a record without them reads as "not recorded".
    run_record bare = conns;
    bare.machine.load_average = -1;
    auto plain = parse_run_text(to_json_line(bare), "bare.jsonl");
    REQUIRE(plain);
    CHECK(to_json_line(bare).find("load_average") == std::string::npos);
    CHECK(plain->at(0).machine.load_average == -1);
}

TEST_CASE("run records: empty, truncated and foreign files name the file and the line") {
    auto empty = parse_run_text("", "a.jsonl");
    REQUIRE_FALSE(empty);
    CHECK(empty.error() == "a.jsonl: empty file: no run records (did the run write --out?)");
    auto blank = parse_run_text("\n  \n", "b.jsonl");
    REQUIRE_FALSE(blank);
    CHECK(blank.error().rfind("b.jsonl: no run records", 0) == 0);

    const std::string good = to_json_line(knee());
    // A run interrupted mid-write: the last line stops half way.
    auto cut = parse_run_text(good + good.substr(0, good.size() / 2), "c.jsonl");
    REQUIRE_FALSE(cut);
    CHECK(cut.error().rfind("c.jsonl:2: the last line is cut short (truncated JSON", 0) == 0);
    auto middle = parse_run_text(good.substr(0, 40) + "\n" + good, "d.jsonl");
    REQUIRE_FALSE(middle);
    CHECK(middle.error().rfind("d.jsonl:1: not valid JSON", 0) == 0);

    auto foreign = parse_run_text(good + "{\"name\":\"left-pad\",\"version\":\"1.3.0\"}\n", "e.jsonl");
    REQUIRE_FALSE(foreign);
    CHECK(foreign.error().rfind("e.jsonl:2: not a derpbench run record (no \"schema\":\"derpbench-run/1\"", 0) == 0);
    auto csv = parse_run_text("workload,url,pairs\nthroughput,x,1\n", "f.csv");
    REQUIRE_FALSE(csv);
    CHECK(csv.error().rfind("f.csv:1: not JSON", 0) == 0);
    auto array = parse_run_text("[1,2]\n", "g.jsonl");
    REQUIRE_FALSE(array);
    CHECK(array.error().rfind("g.jsonl:1: a JSON array", 0) == 0);
    auto newer = parse_run_text("{\"schema\":\"derpbench-run/2\"}\n", "h.jsonl");
    REQUIRE_FALSE(newer);
    CHECK(newer.error().find("h.jsonl:1: schema \"derpbench-run/2\"") == 0);
}

TEST_CASE("run records: a missing or wrong field is named with its line") {
    const std::string good = to_json_line(knee());
    const auto replace = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    struct bad_case {
        std::string text;
        std::string error;
    };
    const bad_case cases[] = {
        {replace("\"delivered_pps\":", "\"delivered\":"), "x:2: lacks \"delivered_pps\""},
        {replace("\"pairs\":4,\"size\"", "\"pairs\":\"4\",\"size\""), "x:2: \"pairs\" is not a whole number"},
        {replace("\"workload\":\"sweep-knee\"", "\"workload\":\"soak\""), "x:2: unknown workload \"soak\""},
        {replace("\"limit_reached\":true", "\"limit_reached\":1"), "x:2: \"limit_reached\" is not true or false"},
        {replace("\"offered_pps\":400000.0", "\"offered_pps\":-5"), "x:2: \"offered_pps\" is -5"},
        {replace("\"cores\":2", "\"cores\":2.5"), "x:2: machine: \"cores\" is not a whole number"},
        {replace("\"server\":{", "\"server\":[],\"x\":{"), "x:2: \"server\" is not an object"},
        {replace("\"run\":\"derpd 0.1.0, per-packet writes\"", "\"run\":\"\""), "x:2: \"run\" is empty"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto parsed = parse_run_text(good + c.text, "x");
        REQUIRE_FALSE(parsed);
        CHECK(parsed.error().rfind(c.error, 0) == 0);
    }
    // A loss ratio is 0..1.
    run_record point = knee();
    point.kind = record_kind::sweep_point;
    point.loss = 0.5;
    std::string line = to_json_line(point);
    line.replace(line.find("\"loss_ratio\":0.5"), 16, "\"loss_ratio\":1.5");
    auto loss = parse_run_text(line, "y");
    REQUIRE_FALSE(loss);
    CHECK(loss.error().rfind("y:1: \"loss_ratio\" is 1.5", 0) == 0);
}

TEST_CASE("run records: a server's version and shards from its /debug/varz") {
    const auto facts = parse_varz_facts(
        "# HELP version ...\nversion{version=\"0.1.0\",binary=\"derpd\"} 1\n"
        "derpd_shard_connections{shard=\"0\"} 5\nderpd_shard_connections{shard=\"1\"} 7\n"
        "derpd_shard_accepts_total{shard=\"2\"} 1\n");
    CHECK(facts.version == "0.1.0");
    CHECK(facts.shards == 2);
    const auto none = parse_varz_facts("");
    CHECK(none.version == "unknown");
    CHECK(none.shards == 0);
    CHECK(parse_varz_facts("version{version=\"\"} 1\nversion{broken\n").version == "unknown");
}
