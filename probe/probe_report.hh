// What derpprobe shows of its probes: Prometheus text under the derpprobe_ namespace with
// Tailscale prober's metric names, help texts and labels (spec 8.1), the HTML status page, and
// the -once good/bad lines. Pure: a snapshot in, text out.
#pragma once

#include <string>
#include <vector>

#include "probe/probe_scheduler.hh"

namespace derp::probe {

std::string render_metrics(const std::vector<probe_status>& probes);
std::string render_status_page(const std::vector<probe_status>& probes, double now_secs);
// "good: <name>: <latency>, <detail>" sorted, then "bad: <name>: <error>" sorted; probes that
// never ended are left out, as derpprobe does.
std::vector<std::string> render_once_lines(const std::vector<probe_status>& probes);

}  // namespace derp::probe
