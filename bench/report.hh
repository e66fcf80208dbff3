// derpbench's capacity report: run records (run_record.hh) in, and out one self-contained HTML
// page (Chart.js and the page's script inlined, the data as JSON; nothing fetched at view time),
// or the capacity table as Markdown (the one docs/BENCHMARKS.md shows), or a sizing plan per run.
// Pure: records in, text out. A run is every record with one label; each run gets one colour.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bench/run_record.hh"
#include "bench/sizing.hh"

namespace derp::bench {

// What one run measured, condensed: per (pairs, size) its sweep's knee, and the figures the
// table and the sizing take from the other workloads.
struct capacity_row {
    std::string run;
    std::string write;
    std::int64_t pairs = 0;
    std::int64_t size = 0;
    std::string size_label;
    double knee_offered_pps = 0;
    double knee_delivered_pps = 0;
    double knee_delivered_bps = 0;
    double knee_sent_pps = 0;  // 0 = not recorded
    bool limit_reached = false;
    std::optional<double> server_cpu_s_per_gbit;
    // The load generator sent well under the offered rate at the knee: it was the limit.
    bool generator_bound() const { return knee_sent_pps > 0 && knee_sent_pps < 0.9 * knee_offered_pps; }
    // The latency record of this run and size whose background load is nearest half the knee
    // (half of what was delivered there).
    std::optional<run_record> latency;
};

struct run_summary {
    std::string run;
    std::string colour;  // CSS colour, one per run
    run_record first;    // the context (machine, server, load) of the run's first record
    std::vector<capacity_row> rows;
    std::optional<double> bytes_per_connection;  // median over the run's connections records
};

// The runs in the order they first appear in the records.
std::vector<run_summary> summarise_runs(const std::vector<run_record>& records);

// The sizing inputs of one run: its knees per shard and its memory per connection.
measured_capacity capacity_of(const run_summary& run);

struct report_options {
    std::string title = "derpbench capacity report";
    std::optional<sizing_target> target;  // the sizing section; none = left out
    node_shape node;
};

// The whole page. chart_js is Chart.js's UMD bundle, page_js the page's own script
// (bench/report_page.js); both are inlined.
std::string render_html(const std::vector<run_record>& records, const report_options& options, std::string_view chart_js,
                        std::string_view page_js);

// The capacity table (Markdown), one row per run and (pairs, size), then memory per connection.
std::string render_markdown(const std::vector<run_record>& records);

}  // namespace derp::bench
