// Metrics text, status page and -once lines for derpprobe (see probe_report.hh).
#include "probe/probe_report.hh"

#include <algorithm>
#include <cmath>
#include <functional>

#include <fmt/format.h>

#include "core/http_endpoints.hh"
#include "probe/probe_net.hh"
#include "core/flags.hh"

namespace derp::probe {
namespace {

// Prometheus text exposition: \ " and newline escaped in label values.
std::string escape_label(std::string_view value) {
    std::string out;
    for (const char c : value) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string format_value(double value) {
    if (std::isfinite(value) && value == std::floor(value) && std::fabs(value) < 1e15)
        return std::to_string(static_cast<std::int64_t>(value));
    return fmt::format("{}", value);
}

// Label names in alphabetical order, as client_golang writes them.
std::string label_set(label_list labels, const char* extra_name = nullptr, const char* extra_value = nullptr) {
    if (extra_name != nullptr) labels.emplace_back(extra_name, extra_value);
    std::sort(labels.begin(), labels.end());
    std::string out = "{";
    for (const auto& [name, value] : labels) {
        if (out.size() > 1) out += ',';
        out += fmt::format("{}=\"{}\"", name, escape_label(value));
    }
    return out + "}";
}

std::string label_of(const probe_status& p, std::string_view name) {
    for (const auto& [k, v] : p.labels)
        if (k == name) return v;
    return {};
}

}  // namespace

std::string render_metrics(const std::vector<probe_status>& probes) {
    std::string out;
    // One family at a time: HELP and TYPE once, then every probe's sample.
    const auto family = [&](const char* name, const char* type, const char* help,
                            const std::function<void(const probe_status&, const std::string&)>& samples) {
        const std::size_t family_start = out.size();
        out += fmt::format("# HELP derpprobe_{} {}\n# TYPE derpprobe_{} {}\n", name, help, name, type);
        const std::size_t header_end = out.size();
        for (const probe_status& p : probes) samples(p, fmt::format("derpprobe_{}", name));
        // An empty family (nothing has ended yet) is left out entirely.
        if (out.size() == header_end) out.resize(family_start);
    };
    family("interval_secs", "gauge", "Probe interval in seconds", [&](const probe_status& p, const std::string& m) {
        out += fmt::format("{}{} {}\n", m, label_set(p.labels), format_value(static_cast<double>(p.interval_ns) / 1e9));
    });
    family("start_secs", "gauge", "Latest probe start time (seconds since epoch)",
           [&](const probe_status& p, const std::string& m) {
               if (p.started) out += fmt::format("{}{} {}\n", m, label_set(p.labels), format_value(std::floor(p.start_secs)));
           });
    family("end_secs", "gauge", "Latest probe end time (seconds since epoch)", [&](const probe_status& p, const std::string& m) {
        if (p.ended) out += fmt::format("{}{} {}\n", m, label_set(p.labels), format_value(std::floor(p.end_secs)));
    });
    family("result", "gauge", "Latest probe result (1 = success, 0 = failure)", [&](const probe_status& p, const std::string& m) {
        if (p.ended) out += fmt::format("{}{} {}\n", m, label_set(p.labels), p.succeeded ? 1 : 0);
    });
    family("latency_millis", "gauge", "Latest probe latency (ms)", [&](const probe_status& p, const std::string& m) {
        if (p.ended && p.succeeded)
            out += fmt::format("{}{} {}\n", m, label_set(p.labels), format_value(static_cast<double>(p.latency_ns) / 1e6));
    });
    // Tailscale's prober labels outcomes "ok" and "fail" and creates both with the first run.
    family("attempts_total", "counter", "Total number of probing attempts", [&](const probe_status& p, const std::string& m) {
        if (!p.ended) return;
        out += fmt::format("{}{} {}\n", m, label_set(p.labels, "status", "fail"), p.attempts_fail);
        out += fmt::format("{}{} {}\n", m, label_set(p.labels, "status", "ok"), p.attempts_ok);
    });
    family("seconds_total", "counter", "Total amount of time spent executing the probe",
           [&](const probe_status& p, const std::string& m) {
               if (!p.ended) return;
               out += fmt::format("{}{} {}\n", m, label_set(p.labels, "status", "fail"), format_value(p.seconds_fail));
               out += fmt::format("{}{} {}\n", m, label_set(p.labels, "status", "ok"), format_value(p.seconds_ok));
           });
    // derpd additions.
    family("in_flight", "gauge", "Whether the probe is running now (1) or not (0)", [&](const probe_status& p, const std::string& m) {
        out += fmt::format("{}{} {}\n", m, label_set(p.labels), p.in_flight ? 1 : 0);
    });
    // Seconds, the Prometheus base unit (promtool flags "days"), in the prober's _secs spelling.
    family("cert_expiry_secs", "gauge",
           "Seconds until the leaf certificate of the latest TLS handshake of this probe expires (negative: expired)",
           [&](const probe_status& p, const std::string& m) {
               if (p.cert_expiry_secs)
                   out += fmt::format("{}{} {}\n", m, label_set(p.labels), *p.cert_expiry_secs);
           });
    return out;
}

std::string render_status_page(const std::vector<probe_status>& probes, double now_secs) {
    std::size_t good = 0, bad = 0, pending = 0;
    for (const probe_status& p : probes) {
        if (!p.ended) ++pending;
        else if (p.succeeded) ++good;
        else ++bad;
    }
    std::string out =
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>DERP Prober</title>\n"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:left;vertical-align:top}.good{background:#dfd}.bad{background:#fdd}"
        ".pending{background:#eee}</style></head><body>\n<h1>DERP Prober</h1>\n";
    out += fmt::format("<p>{} good, {} bad, {} not run yet. <a href=\"/metrics\">Prober metrics</a></p>\n", good, bad,
                       pending);
    out += "<table>\n<tr><th>Probe</th><th>Class</th><th>Region</th><th>Host</th><th>Status</th><th>Latency</th>"
           "<th>Last run</th><th>Runs ok/fail</th><th>Detail</th></tr>\n";
    for (const probe_status& p : probes) {
        const char* css = !p.ended ? "pending" : p.succeeded ? "good" : "bad";
        const char* status = p.in_flight && !p.ended ? "running" : !p.ended ? "pending" : p.succeeded ? "good" : "bad";
        const std::string latency = p.ended && p.succeeded ? format_latency(p.latency_ns) : "";
        const std::string when =
            p.ended ? fmt::format("{:.0f}s ago", std::max(0.0, now_secs - p.end_secs)) : std::string("never");
        out += fmt::format(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td>"
            "<td>{}/{}</td><td>{}</td></tr>\n",
            css, html_escape(p.name), html_escape(p.probe_class), html_escape(label_of(p, "region")),
            html_escape(label_of(p, "hostname")), status, p.in_flight && p.ended ? " (running)" : "", latency, when,
            p.attempts_ok, p.attempts_fail, html_escape(p.text));
    }
    out += "</table>\n</body></html>\n";
    return out;
}

std::vector<std::string> render_once_lines(const std::vector<probe_status>& probes) {
    std::vector<std::string> good, bad;
    for (const probe_status& p : probes) {
        if (!p.ended) continue;
        if (p.succeeded)
            good.push_back(fmt::format("good: {}: {}{}{}", p.name, format_latency(p.latency_ns), p.text.empty() ? "" : ", ",
                                       p.text));
        else
            bad.push_back(fmt::format("bad: {}: {}", p.name, p.text));
    }
    std::sort(good.begin(), good.end());
    std::sort(bad.begin(), bad.end());
    good.insert(good.end(), bad.begin(), bad.end());
    return good;
}

}  // namespace derp::probe
