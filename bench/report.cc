// derpbench's capacity report as HTML (charts drawn by Chart.js from the data embedded as JSON,
// tables and the sizing written here) and as the Markdown capacity table. See report.hh.
#include "bench/report.hh"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace derp::bench {
namespace {

using ojson = nlohmann::ordered_json;

// Colour-blind-safe (Okabe and Ito), dark enough on white.
constexpr const char* run_colours[] = {"#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#8c564b"};

double median_of(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::string html_escape(std::string_view text) {
    std::string out;
    for (const char c : text) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

// Markdown table cells: a '|' would end the cell.
std::string md_cell(std::string_view text) {
    std::string out;
    for (const char c : text) out += c == '|' ? std::string("\\|") : std::string(1, c);
    return out;
}

std::string size_text(std::int64_t size, const std::string& label) {
    return label == "mix" ? fmt::format("mix ({} B mean)", size) : fmt::format("{} B", size);
}

std::string series_name(std::int64_t pairs, std::int64_t size, const std::string& label) {
    return fmt::format("{}, {} pairs", size_text(size, label), pairs);
}

std::string rtt_text(const capacity_row& row) {
    if (!row.latency) return "not measured";
    return fmt::format("{:.0f} / {:.0f} us at {} pkt/s", row.latency->rtt_p50_us, row.latency->rtt_p99_us,
                       grouped(row.latency->offered_pps));
}

std::string machine_text(const run_record& r) {
    return fmt::format("{} cores, {}, Linux {}{}", r.machine.cores, r.machine.cpu, r.machine.kernel,
                       r.machine.load_average >= 0 ? fmt::format(", load average {:.2f} at the start", r.machine.load_average)
                                                   : std::string());
}

std::string server_text(const run_record& r) {
    return fmt::format("version {}, {} shard{}{}", r.server.version, r.server.shards == 0 ? std::string("?") : std::to_string(r.server.shards),
                       r.server.shards == 1 ? "" : "s", r.server.flags.empty() ? "" : ", flags: " + r.server.flags);
}

// The JSON the page's script draws from (see report_page.js for how each field is used).
ojson page_data(const std::vector<run_record>& records, const std::vector<run_summary>& runs, const std::string& title) {
    ojson data;
    data["title"] = title;
    data["runs"] = ojson::array();
    for (const auto& run : runs) {
        ojson r;
        r["label"] = run.run;
        r["colour"] = run.colour;
        r["write"] = run.first.load.write;
        // Series: sweep probes and fixed-rate windows, one per (pairs, size), by offered rate.
        std::map<std::tuple<std::int64_t, std::int64_t, std::string>, std::vector<const run_record*>> by_series;
        for (const auto& rec : records)
            if (rec.run == run.run && (rec.kind == record_kind::sweep_point || rec.kind == record_kind::throughput) &&
                rec.offered_pps > 0)
                by_series[{rec.pairs, rec.size, rec.size_label}].push_back(&rec);
        r["series"] = ojson::array();
        for (auto& [key, points] : by_series) {
            const auto& [pairs, size, label] = key;
            std::sort(points.begin(), points.end(), [](const run_record* a, const run_record* b) { return a->offered_pps < b->offered_pps; });
            ojson s;
            s["name"] = series_name(pairs, size, label);
            s["points"] = ojson::array();
            for (const run_record* p : points) {
                const double gbps = p->delivered_bps / 1e9;
                ojson point = {{"offered_pps", p->offered_pps},
                               {"delivered_pps", p->delivered_pps},
                               {"offered_gbps", p->offered_pps * static_cast<double>(p->size) * 8 / 1e9},
                               {"delivered_gbps", gbps},
                               {"loss_pct", p->loss * 100}};
                if (p->server_cpu_share && gbps > 0) point["cpu_s_per_gbit"] = *p->server_cpu_share / gbps;
                s["points"].push_back(point);
            }
            for (const auto& row : run.rows)
                if (row.pairs == pairs && row.size == size && row.size_label == label)
                    s["knee"] = {{"offered_pps", row.knee_offered_pps},
                                 {"delivered_pps", row.knee_delivered_pps},
                                 {"offered_gbps", row.knee_offered_pps * static_cast<double>(size) * 8 / 1e9},
                                 {"delivered_gbps", row.knee_delivered_bps / 1e9},
                                 {"limit_reached", row.limit_reached}};
            r["series"].push_back(s);
        }
        r["latency"] = ojson::array();
        for (const auto& rec : records)
            if (rec.run == run.run && rec.kind == record_kind::latency)
                r["latency"].push_back({{"size", size_text(rec.size, rec.size_label)},
                                        {"background_pps", rec.delivered_pps},
                                        {"p50_us", rec.rtt_p50_us},
                                        {"p99_us", rec.rtt_p99_us},
                                        {"p999_us", rec.rtt_p999_us}});
        r["bytes_per_connection"] = run.bytes_per_connection ? ojson(*run.bytes_per_connection) : ojson(nullptr);
        data["runs"].push_back(r);
    }
    return data;
}

std::string sizing_html(const std::vector<run_summary>& runs, const report_options& options) {
    if (!options.target) return {};
    std::string out = "<h2 id=\"sizing\">Sizing</h2>\n";
    const auto& t = *options.target;
    out += fmt::format("<p>Target: {} clients, {}, packets of {}, {:.0f} % headroom; nodes of {} shards and {} GiB "
                       "(<code>derpbench report --target ... --node ...</code>, or <code>derpbench size</code>).</p>\n",
                       grouped(static_cast<double>(t.clients)),
                       t.total_gbps >= 0 ? fmt::format("{} Gbit/s in total", t.total_gbps)
                                         : fmt::format("{} Mbit/s per client", t.mbps_per_client),
                       t.packet_label == "mix" ? fmt::format("the realistic mix ({:.0f} B mean)", t.packet_bytes)
                                               : fmt::format("{:.0f} B", t.packet_bytes),
                       t.headroom * 100, options.node.shards, options.node.memory_gib);
    for (const auto& run : runs) {
        auto plan = plan_capacity(t, options.node, capacity_of(run));
        out += fmt::format("<h3 style=\"color:{}\">{}</h3>\n", run.colour, html_escape(run.run));
        if (!plan) {
            out += fmt::format("<p class=\"note\">Not sized: {}</p>\n", html_escape(plan.error()));
            continue;
        }
        const auto& p = plan.value();
        out += fmt::format("<p class=\"answer\"><strong>{} node{}</strong> ({} shards for the traffic), <strong>{}-bound</strong>.</p>\n",
                           p.nodes, p.nodes == 1 ? "" : "s", p.shards_for_traffic, p.bound);
        out += "<ol class=\"arithmetic\">\n";
        for (const auto& line : p.arithmetic) out += "<li>" + html_escape(line) + "</li>\n";
        out += "</ol>\n<p>Assumptions:</p>\n<ul>\n";
        for (const auto& line : p.assumptions) out += "<li>" + html_escape(line) + "</li>\n";
        out += "</ul>\n";
    }
    return out;
}

std::string table_html(const std::vector<run_summary>& runs) {
    std::string out =
        "<table id=\"figures\">\n<thead><tr><th>run</th><th>write</th><th>packet</th><th>pairs</th>"
        "<th>knee: offered pkt/s (&lt; 1 % loss)</th><th>delivered pkt/s</th><th>Gbit/s</th><th>server CPU s per Gbit</th>"
        "<th>round trip p50 / p99 (background load)</th><th>memory per idle connection</th></tr></thead>\n<tbody>\n";
    for (const auto& run : runs) {
        const std::string memory = run.bytes_per_connection ? fmt::format("{:.0f} B", *run.bytes_per_connection) : "not measured";
        if (run.rows.empty())
            out += fmt::format("<tr><td style=\"color:{}\">{}</td><td>{}</td><td colspan=\"7\">no sweep</td><td>{}</td></tr>\n",
                               run.colour, html_escape(run.run), html_escape(run.first.load.write), memory);
        for (const auto& row : run.rows)
            out += fmt::format(
                "<tr><td style=\"color:{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{:.3f}</td>"
                "<td>{}</td><td>{}</td><td>{}</td></tr>\n",
                run.colour, html_escape(run.run), html_escape(row.write), size_text(row.size, row.size_label), row.pairs,
                grouped(row.knee_offered_pps),
                row.knee_offered_pps <= 0 ? std::string(" (1 % loss or more from the sweep's first rate)")
                : row.generator_bound()   ? fmt::format(" (the load generator sent only {}: it was the limit)", grouped(row.knee_sent_pps))
                : row.limit_reached   ? ""
                                      : " (no loss seen: a lower bound)",
                grouped(row.knee_delivered_pps), row.knee_delivered_bps / 1e9,
                row.server_cpu_s_per_gbit ? fmt::format("{:.4f}", *row.server_cpu_s_per_gbit) : "not measured", rtt_text(row),
                memory);
    }
    out += "</tbody>\n</table>\n<h3>Runs</h3>\n<ul class=\"runs\">\n";
    for (const auto& run : runs)
        out += fmt::format("<li><span style=\"color:{}\">&#9632;</span> <strong>{}</strong>: {}; server {} at {}; load: {} "
                           "writes, {} pairs, sizes {}; from {} (first record {})</li>\n",
                           run.colour, html_escape(run.run), html_escape(machine_text(run.first)),
                           html_escape(server_text(run.first)), html_escape(run.first.server.url),
                           html_escape(run.first.load.write), run.first.load.pairs, html_escape(run.first.load.sizes),
                           html_escape(run.first.file), html_escape(run.first.time));
    return out + "</ul>\n";
}

// Inline text must not close its <script> element early.
std::string script_safe(std::string_view text) {
    std::string out(text);
    for (std::size_t at = out.find("</"); at != std::string::npos; at = out.find("</", at + 3)) out.replace(at, 2, "<\\/");
    return out;
}

}  // namespace

std::vector<run_summary> summarise_runs(const std::vector<run_record>& records) {
    std::vector<run_summary> runs;
    for (const auto& rec : records) {
        auto it = std::find_if(runs.begin(), runs.end(), [&](const run_summary& r) { return r.run == rec.run; });
        if (it == runs.end()) {
            run_summary s;
            s.run = rec.run;
            s.colour = run_colours[runs.size() % std::size(run_colours)];
            s.first = rec;
            runs.push_back(std::move(s));
        }
    }
    for (auto& run : runs) {
        std::vector<double> per_connection;
        for (const auto& rec : records) {
            if (rec.run != run.run) continue;
            if (rec.kind == record_kind::connections && rec.server_rss_bytes_per_connection && *rec.server_rss_bytes_per_connection > 0)
                per_connection.push_back(*rec.server_rss_bytes_per_connection);
            if (rec.kind != record_kind::sweep_knee) continue;
            // A later sweep of the same (pairs, size) replaces an earlier one in the table.
            capacity_row row;
            row.run = run.run;
            row.write = rec.load.write;
            row.pairs = rec.pairs;
            row.size = rec.size;
            row.size_label = rec.size_label;
            row.knee_offered_pps = rec.offered_pps;
            row.knee_delivered_pps = rec.delivered_pps;
            row.knee_delivered_bps = rec.delivered_bps;
            row.knee_sent_pps = rec.sent_pps;
            row.limit_reached = rec.limit_reached;
            row.server_cpu_s_per_gbit = rec.server_cpu_s_per_gbit;
            auto same = std::find_if(run.rows.begin(), run.rows.end(), [&](const capacity_row& r) {
                return r.pairs == row.pairs && r.size == row.size && r.size_label == row.size_label;
            });
            if (same != run.rows.end()) *same = row;
            else run.rows.push_back(row);
        }
        for (auto& row : run.rows)
            for (const auto& rec : records)
                if (rec.run == run.run && rec.kind == record_kind::latency && rec.size == row.size && rec.size_label == row.size_label &&
                    (!row.latency || std::fabs(rec.offered_pps - row.knee_delivered_pps / 2) <
                                         std::fabs(row.latency->offered_pps - row.knee_delivered_pps / 2)))
                    row.latency = rec;
        if (!per_connection.empty()) run.bytes_per_connection = median_of(per_connection);
    }
    return runs;
}

measured_capacity capacity_of(const run_summary& run) {
    measured_capacity m;
    m.run = run.run;
    // Several knees at one size (several pair counts): the median, as for repeated rounds.
    std::map<std::int64_t, std::vector<const capacity_row*>> by_size;
    for (const auto& row : run.rows) by_size[row.size].push_back(&row);
    const double shards = static_cast<double>(std::max<std::int64_t>(run.first.server.shards, 1));
    for (const auto& [size, rows] : by_size) {
        std::vector<double> pps;
        bool reached = true;
        for (const capacity_row* r : rows) {
            pps.push_back(r->knee_delivered_pps / shards);
            reached = reached && r->limit_reached && !r->generator_bound();
        }
        m.knees.push_back({static_cast<double>(size), median_of(pps), reached});
    }
    m.bytes_per_connection = run.bytes_per_connection.value_or(0);
    if (run.first.server.shards == 0)
        m.notes.push_back("the server's shard count was not recorded (no /debug/varz reached: not derpd, or TLS without "
                          "--varz-url): its whole knee is taken as one shard's");
    return m;
}

std::string render_html(const std::vector<run_record>& records, const report_options& options, std::string_view chart_js,
                        std::string_view page_js) {
    const auto runs = summarise_runs(records);
    std::string out = fmt::format(R"(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{0}</title>
<meta name="generator" content="derpbench report">
<style>
body {{ font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }}
.charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }}
figure {{ margin: 0; }} figure.wide {{ grid-column: 1 / span 2; }}
.chart-box {{ position: relative; height: 380px; }}
figcaption {{ font-size: 0.85em; color: #555; }}
details.twin {{ font-size: 0.8em; color: #444; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin-top: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
.note {{ color: #a33; }} .answer {{ font-size: 1.1em; }} ol.arithmetic {{ font-family: monospace; font-size: 0.9em; }}
</style></head>
<body>
<h1>{0}</h1>
<p>{1} record{2} in {3} run{4}. Each run has one colour in every chart; within a run, marker shapes tell packet sizes apart.
The knee (a star, labelled with the packets/s delivered there) is the highest offered rate that a sweep delivered with loss under 1 %. The figures are in the table below the charts.</p>
<div class="charts" id="charts"></div>
<p id="no-script" class="note">The charts need JavaScript (they are drawn in the page, with nothing fetched); the table below has every figure.</p>
<h2 id="table">Figures</h2>
)",
                                  html_escape(options.title), records.size(), records.size() == 1 ? "" : "s", runs.size(),
                                  runs.size() == 1 ? "" : "s");
    out += table_html(runs);
    out += sizing_html(runs, options);
    out += "<script type=\"application/json\" id=\"derpbench-data\">" +
           script_safe(page_data(records, runs, options.title).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)) +
           "</script>\n";
    out += "<script>/* Chart.js, MIT licence (Debian's libjs-chart.js), inlined by derpbench */\n" + script_safe(chart_js) +
           "\n</script>\n";
    out += "<script>\n" + script_safe(page_js) + "\n</script>\n</body></html>\n";
    return out;
}

std::string render_markdown(const std::vector<run_record>& records) {
    const auto runs = summarise_runs(records);
    std::string out =
        "| run | write | packet | pairs | delivered pkt/s at < 1 % loss | Gbit/s | server CPU s per Gbit | round trip p50 / p99 "
        "(background load) |\n|---|---|---|---|---|---|---|---|\n";
    for (const auto& run : runs)
        for (const auto& row : run.rows)
            out += fmt::format("| {} | {} | {} | {} | {}{} | {:.3f} | {} | {} |\n", md_cell(run.run), md_cell(row.write),
                               size_text(row.size, row.size_label), row.pairs, grouped(row.knee_delivered_pps),
                               row.knee_offered_pps <= 0 ? " (1 % loss or more from the first rate)"
                               : row.generator_bound()   ? " (load generator bound)"
                               : row.limit_reached       ? ""
                                                         : " (no loss seen)",
                               row.knee_delivered_bps / 1e9,
                               row.server_cpu_s_per_gbit ? fmt::format("{:.4f}", *row.server_cpu_s_per_gbit) : "-",
                               rtt_text(row));
    out += "\n";
    for (const auto& run : runs) {
        out += fmt::format("- {}: {}; server {}", md_cell(run.run), machine_text(run.first), server_text(run.first));
        out += run.bytes_per_connection ? fmt::format("; memory per idle connection {:.0f} B of server RSS.\n", *run.bytes_per_connection)
                                        : "; memory per idle connection not measured.\n";
    }
    return out;
}

}  // namespace derp::bench
