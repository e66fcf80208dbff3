// derpbench's run files: one JSON object per line (JSON Lines), appended by `--out FILE` after
// each measurement and read back by `derpbench report` and `derpbench size`. Each line carries
// the measurement and what it was measured on (machine, server version and flags, load shape),
// so lines from several machines, versions and write modes can share one file and be compared.
// Pure: records in, text out, and text in, records or an error naming the file and line out.
//
// A line, wrapped here (keys of the measurement differ per workload, see run_record):
//   {"schema":"derpbench-run/1","run":"derpd 0.1.0, per-packet","time":"2026-12-06T10:00:00Z",
//    "machine":{"cores":2,"cpu":"AMD EPYC 7B13","kernel":"6.1.0-27-amd64"},
//    "server":{"url":"http://127.0.0.1:3340/derp","version":"0.1.0","shards":1,"flags":"-shards 1"},
//    "load":{"write":"per-packet","frames_per_write":1,"pairs":4,"sizes":"1400"},
//    "workload":"sweep-point","pairs":4,"size":1400,"size_label":"1400","offered_pps":50000,...}
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"

namespace derp::bench {

inline constexpr std::string_view run_schema = "derpbench-run/1";
// A line longer than this is refused (a record is a few hundred bytes; this bounds the parser).
inline constexpr std::size_t run_line_bytes_max = 64 * 1024;

struct machine_facts {
    std::int64_t cores = 0;
    std::string cpu;     // /proc/cpuinfo "model name"
    std::string kernel;  // uname -r
    // /proc/loadavg's 1-minute figure when the run started (-1 = not recorded): on a shared
    // machine, how busy the cores were with others' work.
    double load_average = -1;
};

struct server_facts {
    std::string url;      // the --url values, comma-separated
    std::string version;  // from the server's /debug/varz, or "unknown"
    std::int64_t shards = 0;  // derpd's shard count from /debug/varz; 0 = unknown
    std::string flags;    // --derpd-flags, else the server's command line from /proc, else ""
};

// How the load was offered. write: "per-packet" (one frame per send, as Go's derphttp client
// and browsers write), "batched" (as many frames as fit in one send) or "N-frames" (at most N).
struct load_shape {
    std::string write = "per-packet";
    std::int64_t frames_per_write = 1;  // 0 = as many as fit
    std::int64_t pairs = 0;
    std::string sizes;  // the size flag as given: "1400", "64,570,1400", "mix"
};

enum class record_kind : std::uint8_t { sweep_point, sweep_knee, throughput, latency, connections };
std::string_view to_string(record_kind kind) noexcept;

// One measurement. Which fields mean something depends on kind:
//   sweep_point  one probe of a sweep: pairs, size, offered/delivered, loss, server CPU
//   sweep_knee   the sweep's answer for (pairs, size): the highest offered rate delivered with
//                loss under 1 % (offered_pps), what was delivered there, limit_reached
//   throughput   one window at a fixed offered rate (0 = unpaced)
//   latency      round trips (rtt_*) beside a background load of offered_pps
//   connections  idle clients opened, server memory per connection
struct run_record {
    std::string file;       // where it was read from (empty when made here)
    std::size_t line = 0;   // 1-based line in that file
    std::string run;        // the run's label: records with one label are one series colour
    std::string time;       // UTC, ISO 8601
    machine_facts machine;
    server_facts server;
    load_shape load;
    record_kind kind = record_kind::throughput;

    std::int64_t pairs = 0;
    std::int64_t size = 0;    // bytes (the mean for the realistic mix)
    std::string size_label;   // "1400" or "mix"
    double duration_s = 0;
    double offered_pps = 0;   // 0 = unpaced (throughput) or no background (latency)
    double delivered_pps = 0;
    double delivered_bps = 0;
    double sent_pps = 0;      // what the load generator managed to send (0 = not recorded);
                              // well under offered_pps: the generator, not the server, was the limit
    double loss = 0;          // 0..1
    bool limit_reached = false;                  // sweep_knee: a rate with >= 1 % loss was found
    std::optional<double> server_cpu_share;      // server CPU seconds per wall second
    std::optional<double> server_cpu_s_per_gbit;  // server CPU seconds per Gbit delivered
    std::optional<std::int64_t> server_rss_bytes;
    // latency
    std::uint64_t probes_sent = 0, probes_answered = 0;
    double rtt_p50_us = 0, rtt_p90_us = 0, rtt_p99_us = 0, rtt_p999_us = 0, rtt_max_us = 0;
    // connections
    std::int64_t connections = 0, connect_failures = 0;
    std::optional<double> server_rss_bytes_per_connection;
};

// The record as one line of JSON (with the trailing newline).
std::string to_json_line(const run_record& record);

// Every record of a run file's text. Blank lines are skipped; anything else that is not a
// derpbench run record (invalid or truncated JSON, another program's JSON, a field missing or of
// the wrong type, a number out of range) is an error "FILE:LINE: what"; so is a file with no
// record at all.
result<std::vector<run_record>, std::string> parse_run_text(std::string_view text, std::string_view file);

// What derpbench can learn from a server's /debug/varz (Prometheus text): derpd's version from
// `version{version="X",...} 1` and its shard count from the distinct shard="N" labels of
// derpd_shard_connections. Missing facts stay unknown ("unknown", 0).
struct varz_facts {
    std::string version = "unknown";
    std::int64_t shards = 0;
};
varz_facts parse_varz_facts(std::string_view varz_text);

}  // namespace derp::bench
