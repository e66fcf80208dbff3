// derpbench's report (bench/report.hh) from the committed two-run file (tests/data/derpbench):
// runs, knees and latency rows are found, the Markdown table holds them, and the HTML page
// inlines its scripts so that a label cannot end a <script> element early.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "bench/report.hh"

using namespace derp::bench;

namespace {

std::vector<run_record> two_runs() {
    const char* root = std::getenv("DERP_SOURCE_ROOT");
    REQUIRE(root != nullptr);
    const std::string path = std::string(root) + "/tests/data/derpbench/two-runs.jsonl";
    std::ifstream in(path);
    REQUIRE(in.good());  // a missing fixture fails
    std::stringstream text;
    text << in.rdbuf();
    auto records = parse_run_text(text.str(), path);
    REQUIRE(records);
    return records.value();
}

}  // namespace

TEST_CASE("report: the two-run file gives two runs, each with its knees, latency and memory") {
    const auto runs = summarise_runs(two_runs());
    REQUIRE(runs.size() == 2);
    CHECK(runs[0].run == "derpd 0.1.0, per-packet writes, plain");
    CHECK(runs[1].run == "derpd 0.1.0, batched writes, plain");
    CHECK(runs[0].colour != runs[1].colour);
    for (const auto& run : runs) {
        CAPTURE(run.run);
        REQUIRE(run.rows.size() == 2);  // 570 and 1400 B
        CHECK(run.rows[0].size == 570);
        CHECK(run.rows[1].size == 1400);
        for (const auto& row : run.rows) {
            CHECK(row.knee_delivered_pps > 0);
            CHECK(row.knee_offered_pps >= row.knee_delivered_pps * 0.9);
        }
        // Latency was measured at a quarter, half and three quarters of each knee; the table
        // shows the one nearest half of what the knee delivered.
        for (const auto& row : run.rows) {
            REQUIRE(row.latency.has_value());
            CHECK(row.latency->offered_pps == doctest::Approx(row.knee_delivered_pps / 2).epsilon(0.01));
        }
        REQUIRE(run.bytes_per_connection.has_value());
        CHECK(*run.bytes_per_connection > 0);
        const auto capacity = capacity_of(run);
        CHECK(capacity.knees.size() == 2);
        CHECK(capacity.bytes_per_connection == *run.bytes_per_connection);
        CHECK(capacity.notes.empty());  // derpd said its shard count
    }
}

TEST_CASE("report: a knee where the load generator sent well under the offered rate says so") {
    auto records = two_runs();
    for (auto& r : records)
        if (r.kind == record_kind::sweep_knee) r.sent_pps = r.offered_pps * (r.size == 570 ? 0.5 : 0.95);
    const auto runs = summarise_runs(records);
    CHECK(runs[0].rows[0].generator_bound());
    CHECK_FALSE(runs[0].rows[1].generator_bound());
    CHECK(render_markdown(records).find("(load generator bound)") != std::string::npos);
    for (const auto& k : capacity_of(runs[0]).knees)
        if (k.packet_bytes == 570) CHECK_FALSE(k.limit_reached);  // a lower bound in the sizing
}

TEST_CASE("report: a sweep that lost 1 % at its first rate has no knee, and says so") {
    auto records = two_runs();
    for (auto& r : records)
        if (r.kind == record_kind::sweep_knee && r.size == 570) r.offered_pps = r.delivered_pps = r.delivered_bps = 0;
    CHECK(render_markdown(records).find("| 570 B | 4 | 0 (1 % loss or more from the first rate) |") != std::string::npos);
    // The sizing falls back on the sizes that have a knee.
    const auto runs = summarise_runs(records);
    std::string how;
    CHECK(knee_pps_at(capacity_of(runs[0]).knees, 570, &how) > 0);
    CHECK(how.find("1400 B") != std::string::npos);
}

TEST_CASE("report: a server whose shard count is unknown counts as one shard, and the sizing says so") {
    auto records = two_runs();
    for (auto& r : records) r.server.shards = 0;
    const auto capacity = capacity_of(summarise_runs(records)[0]);
    REQUIRE(capacity.notes.size() == 1);
    auto plan = plan_capacity(parse_sizing_target("clients=1000,gbps=1", 567).value(), {4, 8}, capacity);
    REQUIRE(plan);
    bool said = false;
    for (const auto& a : plan->assumptions) said = said || a.find("shard count was not recorded") != std::string::npos;
    CHECK(said);
}

TEST_CASE("report: the Markdown capacity table has a row per run and size, and each run's context") {
    const std::string md = render_markdown(two_runs());
    CHECK(md.rfind("| run | write | packet | pairs | delivered pkt/s at < 1 % loss |", 0) == 0);
    CHECK(md.find("| derpd 0.1.0, per-packet writes, plain | per-packet | 570 B | 4 | ") != std::string::npos);
    CHECK(md.find("| derpd 0.1.0, batched writes, plain | batched | 1400 B | 4 | ") != std::string::npos);
    CHECK(md.find("- derpd 0.1.0, batched writes, plain: ") != std::string::npos);
    CHECK(md.find("memory per idle connection") != std::string::npos);
}

TEST_CASE("report: the page inlines its scripts and data, and escapes what could close them") {
    auto records = two_runs();
    records[0].run = "evil </script><script>alert(1)</script>";
    report_options options;
    options.title = "t <b>";
    const std::string page = render_html(records, options, "/*chart*/ var Chart = 1; '</script>';", "/*page*/");
    CHECK(page.find("<title>t &lt;b&gt;</title>") != std::string::npos);
    CHECK(page.find("/*chart*/ var Chart = 1; '<\\/script>';") != std::string::npos);
    CHECK(page.find("/*page*/") != std::string::npos);
    CHECK(page.find("evil &lt;/script&gt;") != std::string::npos);  // in the table
    CHECK(page.find("evil <\\/script><script>alert(1)<\\/script>") != std::string::npos);  // in the JSON
    CHECK(page.find("alert(1)</script>") == std::string::npos);
    // No address to fetch anything from at view time.
    CHECK(page.find("src=") == std::string::npos);
    CHECK(page.find("href=\"http") == std::string::npos);
    // The sizing section only when a target is given.
    CHECK(page.find("id=\"sizing\"") == std::string::npos);
    options.target = parse_sizing_target("clients=50000,gbps=20", 567).value();
    options.node = parse_node_shape("shards=16,memory-gib=64").value();
    const std::string sized = render_html(two_runs(), options, "", "");
    CHECK(sized.find("id=\"sizing\"") != std::string::npos);
    CHECK(sized.find("-bound</strong>") != std::string::npos);
}
