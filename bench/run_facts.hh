// What a derpbench run record says it was measured on: this machine (cores, CPU model, kernel),
// the server (its version and shard count from its /debug/varz, its flags from --derpd-flags or
// its command line in /proc) and the time. The I/O behind run_record's context; each fact that
// cannot be learnt stays "unknown" (or 0) rather than failing the measurement.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "bench/run_record.hh"

namespace derp::bench {

machine_facts this_machine();

// varz_url: an http:// URL of the server's /debug/varz (empty: none). server_pid > 0: its
// command line stands for the flags when flags_text is empty.
server_facts server_of(const std::string& urls, const std::string& varz_url, pid_t server_pid, const std::string& flags_text);

// http://host:port/derp or ws://host:port/derp -> http://host:port/debug/varz; "" for TLS URLs
// (derpd's /debug/ over TLS would need the run's certificate setup; --varz-url names it).
std::string varz_url_for(const std::string& derp_url);

// Now, UTC, ISO 8601 to the second.
std::string utc_now_text();

}  // namespace derp::bench
