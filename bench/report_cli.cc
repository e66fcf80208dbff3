// derpbench report and derpbench size: flags, run files in, the page, the table or the plan
// out (see report_cli.hh).
#include "bench/report_cli.hh"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "bench/embedded.hh"
#include "bench/pair_load.hh"
#include "core/flags.hh"

namespace derp::bench {
namespace {

// Go's flag package stops at the first argument that is not a flag; these commands take files
// first (`derpbench report A.jsonl B.jsonl -o r.html`), so flags are moved ahead of the files.
// bool_flags take no value; every other flag takes the next argument unless given as -name=value.
std::vector<std::string> flags_first(int argc, char** argv, const std::set<std::string>& bool_flags) {
    std::vector<std::string> flags, files;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--") {
            for (++i; i < argc; ++i) files.emplace_back(argv[i]);
            break;
        }
        if (arg.size() < 2 || arg[0] != '-') {
            files.push_back(arg);
            continue;
        }
        flags.push_back(arg);
        const std::string name = arg.substr(arg.find_first_not_of('-'));
        if (name.find('=') == std::string::npos && !bool_flags.contains(name) && name != "h" && name != "help" && i + 1 < argc)
            flags.emplace_back(argv[++i]);
    }
    flags.emplace_back("--");
    flags.insert(flags.end(), files.begin(), files.end());
    return flags;
}

std::optional<int> parse_command_flags(flag_set& flags, const std::vector<std::string>& args, std::vector<std::string>& files,
                                       const char* usage_line) {
    const std::vector<std::string_view> views(args.begin(), args.end());
    auto parsed = flags.parse(views);
    if (!parsed || parsed->help_requested) {
        std::fprintf(stderr, "%s%s\n%s", parsed ? "" : (parsed.error() + "\n").c_str(), usage_line, flags.usage().c_str());
        return parsed ? 0 : 2;
    }
    files = parsed->positional;
    if (files.empty()) {
        std::fprintf(stderr, "derpbench: no run files given\n%s\n", usage_line);
        return 2;
    }
    return std::nullopt;
}

constexpr const char* default_node = "shards=16,memory-gib=64";

}  // namespace

result<std::vector<run_record>, std::string> read_run_files(const std::vector<std::string>& paths) {
    std::vector<run_record> all;
    for (const auto& path : paths) {
        std::ifstream in(path, std::ios::binary);
        if (!in) return unexpected(fmt::format("{}: {}", path, std::strerror(errno)));
        std::ostringstream text;
        text << in.rdbuf();
        auto records = parse_run_text(text.str(), path);
        if (!records) return unexpected(records.error());
        all.insert(all.end(), records.value().begin(), records.value().end());
    }
    return all;
}

result<bool, std::string> append_run_file(const std::string& path, const std::vector<run_record>& records) {
    std::string text;
    for (const auto& r : records) text += to_json_line(r);
    std::FILE* f = std::fopen(path.c_str(), "a");
    if (f == nullptr) return unexpected(fmt::format("--out {}: {}", path, std::strerror(errno)));
    const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    const bool closed = std::fclose(f) == 0;
    if (!written || !closed) return unexpected(fmt::format("--out {}: write failed: {}", path, std::strerror(errno)));
    return true;
}

result<bool, std::string> write_html_report(const std::string& path, const std::vector<run_record>& records,
                                            const report_options& options) {
    if (embedded::chart_js().size() < 1000)
        return unexpected(std::string("this derpbench was built without Chart.js (install Debian's libjs-chart.js and "
                                      "rebuild); --format markdown and derpbench size still work"));
    const std::string page = render_html(records, options, embedded::chart_js(), embedded::report_page_js());
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return unexpected(fmt::format("{}: {}", path, std::strerror(errno)));
    const bool written = std::fwrite(page.data(), 1, page.size(), f) == page.size();
    if (std::fclose(f) != 0 || !written) return unexpected(fmt::format("{}: write failed", path));
    return true;
}

int report_command(int argc, char** argv) {
    std::string out = "report.html", format = "html", title = "derpbench capacity report", target_text, node_text = default_node;
    flag_set flags("derpbench report");
    flags.add_string("o", &out, "html: the page to write");
    flags.add_string("format", &format, "html (the page, to -o) or markdown (the capacity table, on stdout)");
    flags.add_string("title", &title, "html: the page's title");
    flags.add_string("target", &target_text,
                     "html: a sizing section for this target, e.g. clients=50000,gbps=20,size=mix,headroom=0.3 (see derpbench size)");
    flags.add_string("node", &node_text, "html: with --target, the node shape: shards=N,memory-gib=G");
    std::vector<std::string> files;
    if (auto status = parse_command_flags(flags, flags_first(argc, argv, {}), files,
                                          "usage: derpbench report RUN.jsonl... [-o report.html | --format markdown]"))
        return *status;
    if (format != "html" && format != "markdown") return std::fprintf(stderr, "derpbench report: --format html or markdown\n"), 2;
    auto records = read_run_files(files);
    if (!records) return std::fprintf(stderr, "derpbench report: %s\n", records.error().c_str()), 1;
    if (format == "markdown") {
        std::fputs(render_markdown(records.value()).c_str(), stdout);
        return 0;
    }
    report_options options;
    options.title = title;
    if (!target_text.empty()) {
        auto target = parse_sizing_target(target_text, mean_size(realistic_size_mix()));
        if (!target) return std::fprintf(stderr, "derpbench report: %s\n", target.error().c_str()), 2;
        auto node = parse_node_shape(node_text);
        if (!node) return std::fprintf(stderr, "derpbench report: %s\n", node.error().c_str()), 2;
        options.target = target.value();
        options.node = node.value();
    }
    auto written = write_html_report(out, records.value(), options);
    if (!written) return std::fprintf(stderr, "derpbench report: %s\n", written.error().c_str()), 1;
    std::fprintf(stderr, "derpbench report: %zu records from %zu file(s) -> %s\n", records.value().size(), files.size(), out.c_str());
    return 0;
}

int size_command(int argc, char** argv) {
    std::string target_text, node_text = default_node, run;
    bool json = false;
    flag_set flags("derpbench size");
    flags.add_string("target", &target_text,
                     "what the region must carry: clients=N and gbps=G (total) or mbps-per-client=M; size=BYTES or mix "
                     "(default mix, 567 B mean); headroom=H (share kept spare, default 0.3)");
    flags.add_string("node", &node_text, "one node: shards=N (cores running derpd shards), memory-gib=G");
    flags.add_string("run", &run, "size from this run (label) only; default: every run in the files");
    flags.add_bool("json", &json, "one JSON object per run, one per line");
    std::vector<std::string> files;
    if (auto status = parse_command_flags(flags, flags_first(argc, argv, {"json"}), files,
                                          "usage: derpbench size RUN.jsonl... --target clients=N,gbps=G [--node shards=N,memory-gib=G]"))
        return *status;
    if (target_text.empty()) return std::fprintf(stderr, "derpbench size: --target is required (e.g. clients=50000,gbps=20)\n"), 2;
    auto target = parse_sizing_target(target_text, mean_size(realistic_size_mix()));
    if (!target) return std::fprintf(stderr, "derpbench size: %s\n", target.error().c_str()), 2;
    auto node = parse_node_shape(node_text);
    if (!node) return std::fprintf(stderr, "derpbench size: %s\n", node.error().c_str()), 2;
    auto records = read_run_files(files);
    if (!records) return std::fprintf(stderr, "derpbench size: %s\n", records.error().c_str()), 1;
    int status = 0, sized = 0;
    for (const auto& summary : summarise_runs(records.value())) {
        if (!run.empty() && summary.run != run) continue;
        auto plan = plan_capacity(target.value(), node.value(), capacity_of(summary));
        ++sized;
        if (!plan) {
            std::fprintf(stderr, "derpbench size: %s\n", plan.error().c_str());
            status = 1;
            continue;
        }
        if (json) std::printf("%s\n", plan_json(plan.value()).c_str());
        else std::printf("run \"%s\": %s", summary.run.c_str(), plan_text(plan.value()).c_str());
    }
    if (sized == 0) return std::fprintf(stderr, "derpbench size: no run \"%s\" in the files\n", run.c_str()), 1;
    return status;
}

}  // namespace derp::bench
