// /debug/varz: the Prometheus text exposition of derper's metric names (spec 7.2-7.3), summed
// over the shards' single-writer counters, plus derpd_* metrics of our own (per shard, runtime,
// process). Read-only: it loads counters with relaxed atomics and never writes shard state.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "admin/derp_counters.hh"

namespace derp::admin {

std::string render_varz(const metric_sources& shared);

// /debug/check (spec 7.1): derper's consistency check. Like derper's it compares registered
// connections with distinct keys, so it reports a problem while duplicate keys are connected;
// with -verify-clients it adds the admission thread's self-check verdict (metric_sources::
// self_check). Returns the status and the body; problems joined with ", " as derper's.
std::pair<int, std::string> render_debug_check(const metric_sources& shared);

// /debug/vars (spec 7.1): Go's expvar JSON with derper's raw names (one object; top-level keys
// sorted, one per line, as expvar writes them). Go-runtime variables (memstats) are absent.
std::string render_debug_vars(const metric_sources& shared);

// The /debug/ index page.
std::string render_debug_index(const metric_sources& shared);

}  // namespace derp::admin
