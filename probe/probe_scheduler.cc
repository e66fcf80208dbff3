// The prober's scheduling and bookkeeping (see probe_scheduler.hh).
#include "probe/probe_scheduler.hh"

#include <algorithm>
#include <climits>

namespace derp::probe {
namespace {

constexpr std::int64_t never_ns = INT64_MAX;

// Tailscale's initialDelay: a pseudorandom point in [0, interval) that depends only on the
// probe's name, so that restarts keep the spread (FNV-1a 64 here; the exact points differ from
// Go's, which seeds math/rand with FNV-1 64).
std::int64_t initial_delay_ns(const std::string& name, std::int64_t interval_ns) {
    std::uint64_t h = 14695981039346656037ull;
    for (const char c : name) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    const double fraction = static_cast<double>(h >> 11) / static_cast<double>(1ull << 53);
    return static_cast<std::int64_t>(static_cast<double>(interval_ns) * fraction);
}

}  // namespace

void scheduler::upsert(probe_definition definition) {
    {
        std::lock_guard lock(_mutex);
        const std::string name = definition.name;
        auto [it, added] = _entries.try_emplace(name);
        entry& e = it->second;
        e.removed = false;
        e.status.name = name;
        e.status.probe_class = definition.probe_class;
        e.status.interval_ns = definition.interval_ns;
        e.status.labels = {{"name", name}, {"class", definition.probe_class}};
        e.status.labels.insert(e.status.labels.end(), definition.labels.begin(), definition.labels.end());
        e.definition = std::move(definition);
        if (added) {
            const bool delay = _spread && !_once;
            e.next_run_ns = monotonic_now_ns() + (delay ? initial_delay_ns(name, e.definition.interval_ns) : 0);
        }
    }
    _changed.notify_all();
}

void scheduler::retain(const std::set<std::string>& keep) {
    {
        std::lock_guard lock(_mutex);
        for (auto it = _entries.begin(); it != _entries.end();) {
            if (keep.contains(it->first)) {
                ++it;
            } else if (it->second.status.in_flight) {
                it->second.removed = true;
                ++it;
            } else {
                it = _entries.erase(it);
            }
        }
    }
    _changed.notify_all();
}

void scheduler::execute(std::unique_lock<std::mutex>& lock, const std::string& name) {
    entry& e = _entries.at(name);
    e.status.in_flight = true;
    e.status.started = true;
    e.status.start_secs = wall_now_secs();
    const probe_definition definition = e.definition;  // the map probe may upsert this one
    lock.unlock();

    // Tailscale's prober: the run gets 80 % of the interval, so that it ends before the next.
    const std::int64_t started_ns = monotonic_now_ns();
    run_context ctx;
    ctx.deadline_ns = started_ns + definition.interval_ns / 5 * 4;
    ctx.stop = &_stop;
    outcome result = definition.run(ctx);
    const std::int64_t ended_ns = monotonic_now_ns();

    lock.lock();
    auto it = _entries.find(name);
    if (it == _entries.end()) return;
    entry& done = it->second;
    probe_status& s = done.status;
    s.in_flight = false;
    s.ended = true;
    s.end_secs = wall_now_secs();
    s.succeeded = result.ok;
    s.text = std::move(result.text);
    const double seconds = static_cast<double>(ended_ns - started_ns) / 1e9;
    if (result.ok) {
        s.latency_ns = ended_ns - started_ns;
        ++s.attempts_ok;
        s.seconds_ok += seconds;
    } else {
        s.latency_ns = 0;
        ++s.attempts_fail;
        s.seconds_fail += seconds;
    }
    if (result.cert_expiry_secs) s.cert_expiry_secs = result.cert_expiry_secs;
    done.ran = true;
    // The next run is due one interval after this one started (a ticker), or at once if this
    // run overran it; in -once mode there is none.
    done.next_run_ns = _once ? never_ns : std::max(started_ns + definition.interval_ns, ended_ns);
    if (done.removed) _entries.erase(it);
}

void scheduler::run_now(const std::string& name) {
    std::unique_lock lock(_mutex);
    auto it = _entries.find(name);
    if (it == _entries.end() || it->second.status.in_flight) return;
    execute(lock, name);
    lock.unlock();
    _changed.notify_all();
}

void scheduler::worker() {
    std::unique_lock lock(_mutex);
    while (!_stop.load()) {
        const std::int64_t now_ns = monotonic_now_ns();
        std::string due;
        std::int64_t earliest_ns = never_ns;
        for (auto& [name, e] : _entries) {
            if (e.status.in_flight || e.removed) continue;
            if (e.next_run_ns <= now_ns && (due.empty() || e.next_run_ns < _entries.at(due).next_run_ns)) due = name;
            earliest_ns = std::min(earliest_ns, e.next_run_ns);
        }
        if (due.empty()) {
            if (earliest_ns == never_ns) {
                _changed.wait(lock);
            } else {
                _changed.wait_for(lock, std::chrono::nanoseconds(earliest_ns - now_ns));
            }
            continue;
        }
        execute(lock, due);
        _changed.notify_all();  // -once waiters, and workers that may now take this probe
    }
}

void scheduler::start(unsigned workers) {
    for (unsigned i = 0; i < workers; ++i) _workers.emplace_back([this] { worker(); });
}

void scheduler::wait_all_ran() {
    std::unique_lock lock(_mutex);
    _changed.wait(lock, [this] {
        return _stop.load() || std::all_of(_entries.begin(), _entries.end(), [](const auto& kv) {
                   return kv.second.ran && !kv.second.status.in_flight;
               });
    });
}

void scheduler::stop() {
    {
        std::lock_guard lock(_mutex);
        _stop.store(true);
    }
    _changed.notify_all();
    for (std::thread& t : _workers) t.join();
    _workers.clear();
}

std::vector<probe_status> scheduler::snapshot() const {
    std::lock_guard lock(_mutex);
    std::vector<probe_status> out;
    out.reserve(_entries.size());
    for (const auto& [name, e] : _entries) out.push_back(e.status);
    return out;
}

}  // namespace derp::probe
