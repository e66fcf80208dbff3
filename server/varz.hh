// /debug/varz: the Prometheus text exposition of derper's metric names (spec 7.2-7.3), summed
// over the shards' single-writer counters, plus derpd_* metrics of our own (per shard, runtime,
// process). Read-only: it loads counters with relaxed atomics and never writes shard state.
#pragma once

#include <cstdint>
#include <string>

#include "server/derp_service.hh"

namespace derp::server {

std::string render_varz(const derp_shared& shared);

// The /debug/ index page.
std::string render_debug_index(const derp_shared& shared);

}  // namespace derp::server
