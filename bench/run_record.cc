// derpbench's run files (JSON Lines): writing a record, reading a file's records back with
// errors that name the file and line, and the facts of a server's /debug/varz. See run_record.hh.
#include "bench/run_record.hh"

#include <cmath>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace derp::bench {
namespace {

using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

constexpr record_kind all_kinds[] = {record_kind::sweep_point, record_kind::sweep_knee, record_kind::throughput,
                                     record_kind::latency, record_kind::connections};

// Reads fields of one JSON object, remembering the first problem; every getter returns a
// harmless default after a problem so the caller can read on and check once.
class field_reader {
public:
    explicit field_reader(const json& object, std::string where) : _object(object), _where(std::move(where)) {}
    const std::string& error() const { return _error; }

    const json* find(std::string_view key, bool required) {
        const auto it = _object.find(key);
        if (it == _object.end()) {
            if (required) fail(fmt::format("lacks \"{}\"", key));
            return nullptr;
        }
        return &*it;
    }
    std::string text(std::string_view key, bool required = true) {
        const json* v = find(key, required);
        if (v == nullptr) return {};
        if (!v->is_string()) return fail(fmt::format("\"{}\" is not a string", key)), std::string();
        return v->get<std::string>();
    }
    // A finite number in [low, high].
    std::optional<double> number(std::string_view key, bool required = true, double low = 0, double high = 1e18) {
        const json* v = find(key, required);
        if (v == nullptr) return std::nullopt;
        if (!v->is_number()) return fail(fmt::format("\"{}\" is not a number", key)), std::nullopt;
        const double d = v->get<double>();
        if (!std::isfinite(d) || d < low || d > high) {
            fail(fmt::format("\"{}\" is {} (want {} to {})", key, d, low, high));
            return std::nullopt;
        }
        return d;
    }
    double need(std::string_view key, double low = 0, double high = 1e18) { return number(key, true, low, high).value_or(0); }
    std::int64_t whole(std::string_view key, bool required = true, std::int64_t high = std::int64_t{1} << 53) {
        const json* v = find(key, required);
        if (v == nullptr) return 0;
        if (!v->is_number_integer()) return fail(fmt::format("\"{}\" is not a whole number", key)), 0;
        const auto n = v->get<std::int64_t>();
        if (n < 0 || n > high) return fail(fmt::format("\"{}\" is {} (want 0 to {})", key, n, high)), 0;
        return n;
    }
    bool flag(std::string_view key) {
        const json* v = find(key, true);
        if (v == nullptr) return false;
        if (!v->is_boolean()) return fail(fmt::format("\"{}\" is not true or false", key)), false;
        return v->get<bool>();
    }
    const json& object(std::string_view key) {
        static const json empty = json::object();
        const json* v = find(key, true);
        if (v == nullptr) return empty;
        if (!v->is_object()) return fail(fmt::format("\"{}\" is not an object", key)), empty;
        return *v;
    }
    void fail(std::string what) {
        if (_error.empty()) _error = _where.empty() ? std::move(what) : _where + " " + what;
    }

private:
    const json& _object;
    std::string _where;
    std::string _error;
};

void put_optional(ojson& out, const char* key, const std::optional<double>& v) {
    if (v) out[key] = *v;
}

std::optional<record_kind> kind_of(std::string_view name) {
    for (const record_kind k : all_kinds)
        if (to_string(k) == name) return k;
    return std::nullopt;
}

// One line's object into a record; the empty string when it holds, else what is wrong.
std::string read_record(const json& j, run_record& r) {
    field_reader top(j, "");
    const std::string schema = top.text("schema", false);
    if (!top.error().empty() || schema.empty())
        return "not a derpbench run record (no \"schema\":\"derpbench-run/1\"; made by another program?)";
    if (schema != run_schema) return fmt::format("schema \"{}\" is not \"{}\" (a newer derpbench?)", schema, run_schema);
    const std::string workload = top.text("workload");
    const auto kind = kind_of(workload);
    if (top.error().empty() && !kind) return fmt::format("unknown workload \"{}\"", workload);
    r.kind = kind.value_or(record_kind::throughput);
    r.run = top.text("run");
    r.time = top.text("time");
    {
        field_reader m(top.object("machine"), "machine:");
        r.machine.cores = m.whole("cores", true, 1 << 20);
        r.machine.cpu = m.text("cpu");
        r.machine.kernel = m.text("kernel");
        r.machine.load_average = m.number("load_average", false, 0, 1e6).value_or(-1);
        if (!m.error().empty()) top.fail(m.error());
    }
    {
        field_reader s(top.object("server"), "server:");
        r.server.url = s.text("url");
        r.server.version = s.text("version");
        r.server.shards = s.whole("shards", true, 1 << 20);
        r.server.flags = s.text("flags");
        if (!s.error().empty()) top.fail(s.error());
    }
    {
        field_reader l(top.object("load"), "load:");
        r.load.write = l.text("write");
        r.load.frames_per_write = l.whole("frames_per_write", true, 1 << 20);
        r.load.pairs = l.whole("pairs", true, 1 << 20);
        r.load.sizes = l.text("sizes");
        if (!l.error().empty()) top.fail(l.error());
    }
    if (r.run.empty() && top.error().empty()) top.fail("\"run\" is empty");
    r.duration_s = top.number("duration_s", false).value_or(0);
    switch (r.kind) {
        case record_kind::sweep_point:
        case record_kind::sweep_knee:
        case record_kind::throughput:
            r.pairs = top.whole("pairs", true, 1 << 20);
            r.size = top.whole("size", true, 1 << 20);
            r.size_label = top.text("size_label");
            r.offered_pps = top.need("offered_pps");
            r.delivered_pps = top.need("delivered_pps");
            r.delivered_bps = top.need("delivered_bps");
            r.sent_pps = top.number("sent_pps", false).value_or(0);
            if (r.kind == record_kind::sweep_knee) r.limit_reached = top.flag("limit_reached");
            else r.loss = top.need("loss_ratio", 0, 1);
            r.server_cpu_share = top.number("server_cpu_share", false, 0, 1 << 20);
            r.server_cpu_s_per_gbit = top.number("server_cpu_s_per_gbit", false);
            if (const auto rss = top.number("server_rss_bytes", false)) r.server_rss_bytes = static_cast<std::int64_t>(*rss);
            break;
        case record_kind::latency:
            r.pairs = top.whole("pairs", true, 1 << 20);
            r.size = top.whole("size", true, 1 << 20);
            r.size_label = top.text("size_label");
            r.offered_pps = top.need("background_offered_pps");
            r.delivered_pps = top.need("background_delivered_pps");
            r.loss = top.need("background_loss_ratio", 0, 1);
            r.probes_sent = static_cast<std::uint64_t>(top.whole("probes_sent"));
            r.probes_answered = static_cast<std::uint64_t>(top.whole("probes_answered"));
            r.rtt_p50_us = top.need("rtt_p50_us");
            r.rtt_p90_us = top.need("rtt_p90_us");
            r.rtt_p99_us = top.need("rtt_p99_us");
            r.rtt_p999_us = top.need("rtt_p999_us");
            r.rtt_max_us = top.need("rtt_max_us");
            break;
        case record_kind::connections:
            r.connections = top.whole("connections");
            r.connect_failures = top.whole("connect_failures");
            r.server_rss_bytes_per_connection = top.number("server_rss_bytes_per_connection", false);
            break;
    }
    return top.error();
}

}  // namespace

std::string_view to_string(record_kind kind) noexcept {
    switch (kind) {
        case record_kind::sweep_point: return "sweep-point";
        case record_kind::sweep_knee: return "sweep-knee";
        case record_kind::throughput: return "throughput";
        case record_kind::latency: return "latency";
        case record_kind::connections: return "connections";
    }
    return "?";
}

std::string to_json_line(const run_record& r) {
    ojson j;
    j["schema"] = run_schema;
    j["run"] = r.run;
    j["time"] = r.time;
    j["machine"] = {{"cores", r.machine.cores}, {"cpu", r.machine.cpu}, {"kernel", r.machine.kernel}};
    if (r.machine.load_average >= 0) j["machine"]["load_average"] = r.machine.load_average;
    j["server"] = {{"url", r.server.url}, {"version", r.server.version}, {"shards", r.server.shards}, {"flags", r.server.flags}};
    j["load"] = {{"write", r.load.write}, {"frames_per_write", r.load.frames_per_write}, {"pairs", r.load.pairs},
                 {"sizes", r.load.sizes}};
    j["workload"] = to_string(r.kind);
    if (r.duration_s > 0) j["duration_s"] = r.duration_s;
    switch (r.kind) {
        case record_kind::sweep_point:
        case record_kind::sweep_knee:
        case record_kind::throughput:
            j["pairs"] = r.pairs;
            j["size"] = r.size;
            j["size_label"] = r.size_label;
            j["offered_pps"] = r.offered_pps;
            j["delivered_pps"] = r.delivered_pps;
            j["delivered_bps"] = r.delivered_bps;
            if (r.sent_pps > 0) j["sent_pps"] = r.sent_pps;
            if (r.kind == record_kind::sweep_knee) j["limit_reached"] = r.limit_reached;
            else j["loss_ratio"] = r.loss;
            put_optional(j, "server_cpu_share", r.server_cpu_share);
            put_optional(j, "server_cpu_s_per_gbit", r.server_cpu_s_per_gbit);
            if (r.server_rss_bytes) j["server_rss_bytes"] = *r.server_rss_bytes;
            break;
        case record_kind::latency:
            j["pairs"] = r.pairs;
            j["size"] = r.size;
            j["size_label"] = r.size_label;
            j["background_offered_pps"] = r.offered_pps;
            j["background_delivered_pps"] = r.delivered_pps;
            j["background_loss_ratio"] = r.loss;
            j["probes_sent"] = r.probes_sent;
            j["probes_answered"] = r.probes_answered;
            j["rtt_p50_us"] = r.rtt_p50_us;
            j["rtt_p90_us"] = r.rtt_p90_us;
            j["rtt_p99_us"] = r.rtt_p99_us;
            j["rtt_p999_us"] = r.rtt_p999_us;
            j["rtt_max_us"] = r.rtt_max_us;
            break;
        case record_kind::connections:
            j["connections"] = r.connections;
            j["connect_failures"] = r.connect_failures;
            put_optional(j, "server_rss_bytes_per_connection", r.server_rss_bytes_per_connection);
            break;
    }
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

result<std::vector<run_record>, std::string> parse_run_text(std::string_view text, std::string_view file) {
    std::vector<run_record> records;
    std::size_t line_number = 0;
    std::size_t at = 0;
    while (at < text.size()) {
        ++line_number;
        const std::size_t end = text.find('\n', at);
        const bool last_without_newline = end == std::string_view::npos;
        std::string_view line = text.substr(at, last_without_newline ? std::string_view::npos : end - at);
        at = last_without_newline ? text.size() : end + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
        if (line.size() > run_line_bytes_max)
            return unexpected(fmt::format("{}:{}: a line of {} bytes (a record is at most {}): not a derpbench run file?",
                                          file, line_number, line.size(), run_line_bytes_max));
        const json j = json::parse(line, nullptr, false);
        if (j.is_discarded()) {
            const bool starts_as_record = line.front() == '{';
            return unexpected(fmt::format(
                "{}:{}: {}", file, line_number,
                starts_as_record && last_without_newline
                    ? "the last line is cut short (truncated JSON: was the run interrupted while writing?)"
                : starts_as_record ? "not valid JSON (truncated or corrupt record)"
                                   : "not JSON: a derpbench run file has one JSON object per line"));
        }
        if (!j.is_object())
            return unexpected(fmt::format("{}:{}: a JSON {} where a run record (an object) belongs", file, line_number,
                                          j.type_name()));
        run_record r;
        r.file = std::string(file);
        r.line = line_number;
        if (std::string why = read_record(j, r); !why.empty())
            return unexpected(fmt::format("{}:{}: {}", file, line_number, why));
        records.push_back(std::move(r));
    }
    if (records.empty())
        return unexpected(fmt::format("{}: {}", file, text.empty() ? "empty file: no run records (did the run write --out?)"
                                                                  : "no run records, only blank lines"));
    return records;
}

varz_facts parse_varz_facts(std::string_view text) {
    varz_facts facts;
    std::set<std::string> shards;
    std::size_t at = 0;
    while (at < text.size()) {
        const std::size_t end = std::min(text.find('\n', at), text.size());
        const std::string_view line = text.substr(at, end - at);
        at = end + 1;
        constexpr std::string_view version_prefix = "version{";
        constexpr std::string_view shard_prefix = "derpd_shard_connections{";
        if (line.substr(0, version_prefix.size()) == version_prefix) {
            constexpr std::string_view key = "version=\"";
            const auto k = line.find(key);
            const auto close = k == std::string_view::npos ? k : line.find('"', k + key.size());
            if (close != std::string_view::npos) {
                const auto value = line.substr(k + key.size(), close - k - key.size());
                if (!value.empty() && value.size() <= 64) facts.version = std::string(value);
            }
        } else if (line.substr(0, shard_prefix.size()) == shard_prefix) {
            constexpr std::string_view key = "shard=\"";
            const auto k = line.find(key);
            const auto close = k == std::string_view::npos ? k : line.find('"', k + key.size());
            if (close != std::string_view::npos && shards.size() < 4096)
                shards.insert(std::string(line.substr(k + key.size(), close - k - key.size())));
        }
    }
    facts.shards = static_cast<std::int64_t>(shards.size());
    return facts;
}

}  // namespace derp::bench
