// derpprobe's prober (Tailscale's prober package, spec 8.1): named probes, each run on its own
// interval with a timeout of 80 % of it, never two runs of one probe at a time, the first run
// spread over the interval by a hash of the name (-spread), the latest result and the counters
// the metrics and the status page show. Runs happen on a small pool of worker threads, as a
// probe blocks its thread; in -once mode each probe runs exactly once, at once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "probe/probe_common.hh"

namespace derp::probe {

using label_list = std::vector<std::pair<std::string, std::string>>;
using probe_function = std::function<outcome(const run_context&)>;

struct probe_definition {
    std::string name;         // e.g. derp/fra/1b/tls
    std::string probe_class;  // tls, derp_udp, derp_mesh, derp_map (derpprobe's class label)
    label_list labels;        // region, region_id, hostname (and derp_path for mesh)
    std::int64_t interval_ns = 0;
    probe_function run;
};

// One probe's state, copied out for the metrics and the status page.
struct probe_status {
    std::string name;
    std::string probe_class;
    label_list labels;  // name and class first, then the definition's labels
    std::int64_t interval_ns = 0;
    bool in_flight = false;
    bool started = false;
    bool ended = false;
    double start_secs = 0;  // wall clock, seconds since the epoch
    double end_secs = 0;
    bool succeeded = false;
    std::int64_t latency_ns = 0;  // of the latest run, when it succeeded
    std::string text;             // its detail or error
    std::uint64_t attempts_ok = 0;
    std::uint64_t attempts_fail = 0;
    double seconds_ok = 0;
    double seconds_fail = 0;
    std::optional<std::int64_t> cert_expiry_secs;
};

class scheduler {
public:
    scheduler(bool once, bool spread) : _once(once), _spread(spread) {}
    ~scheduler() { stop(); }
    scheduler(const scheduler&) = delete;
    scheduler& operator=(const scheduler&) = delete;

    // Adds a probe, or replaces the definition of the one of that name (its history stays).
    void upsert(probe_definition definition);
    // Removes every probe whose name is not in `keep` (a running one goes when its run ends).
    void retain(const std::set<std::string>& keep);
    // Runs one probe on the calling thread now (the map probe, before the workers start).
    void run_now(const std::string& name);
    void start(unsigned workers);
    // -once: waits until every probe, including those added meanwhile, has run.
    void wait_all_ran();
    // Raises the stop flag (running probes give up within ~100 ms) and joins the workers.
    void stop();
    std::vector<probe_status> snapshot() const;  // by name

private:
    struct entry {
        probe_definition definition;
        probe_status status;
        std::int64_t next_run_ns = 0;  // monotonic
        bool removed = false;
        bool ran = false;
    };
    void worker();
    // Runs e (marked in flight by the caller) without the lock and records the result.
    void execute(std::unique_lock<std::mutex>& lock, const std::string& name);

    const bool _once;
    const bool _spread;
    mutable std::mutex _mutex;
    std::condition_variable _changed;
    std::map<std::string, entry> _entries;
    std::atomic<bool> _stop{false};
    std::vector<std::thread> _workers;
};

}  // namespace derp::probe
