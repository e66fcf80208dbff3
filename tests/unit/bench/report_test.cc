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
    CHECK(runs[0].run == "derpd 0.1.0, per-packet writes, 2 cores");
    CHECK(runs[1].run == "derpd 0.1.0, batched writes, 2 cores");
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
        // 1400 B has latency records; the one nearest half the knee is chosen.
        REQUIRE(run.rows[1].latency.has_value());
        CHECK_FALSE(run.rows[0].latency.has_value());
        REQUIRE(run.bytes_per_connection.has_value());
        CHECK(*run.bytes_per_connection > 0);
        const auto capacity = capacity_of(run);
        CHECK(capacity.knees.size() == 2);
        CHECK(capacity.bytes_per_connection == *run.bytes_per_connection);
    }
}

TEST_CASE("report: the Markdown capacity table has a row per run and size, and each run's context") {
    const std::string md = render_markdown(two_runs());
    CHECK(md.rfind("| run | write | packet | pairs | delivered pkt/s at < 1 % loss |", 0) == 0);
    CHECK(md.find("| derpd 0.1.0, per-packet writes, 2 cores | per-packet | 570 B | 2 | ") != std::string::npos);
    CHECK(md.find("| derpd 0.1.0, batched writes, 2 cores | batched | 1400 B | 2 | ") != std::string::npos);
    CHECK(md.find("- derpd 0.1.0, batched writes, 2 cores: 2 cores,") != std::string::npos);
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
