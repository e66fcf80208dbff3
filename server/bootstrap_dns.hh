// The resolver behind /bootstrap-dns (spec 3.5): a background thread resolves the configured
// names at start and every 10 minutes and publishes an immutable snapshot that the shards read
// without locking their loops. Not on any data path: one thread, blocking getaddrinfo and
// res_query calls, as derper's background goroutine.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/bootstrap_dns.hh"

namespace derp::server {

struct bootstrap_snapshot {
    std::string published_json;  // empty until the published names have been resolved
    dns_map published;
    struct rollout {
        std::vector<std::string> addresses;
        int percent = 100;
    };
    std::map<std::string, rollout> unpublished;
};

class bootstrap_resolver {
public:
    bootstrap_resolver(std::vector<std::string> published, std::vector<unpublished_name> unpublished,
                       std::int64_t refresh_ns = 600'000'000'000);
    ~bootstrap_resolver();
    bootstrap_resolver(const bootstrap_resolver&) = delete;
    bootstrap_resolver& operator=(const bootstrap_resolver&) = delete;

    bool configured() const noexcept { return !_published.empty() || !_unpublished.empty(); }
    void start();
    std::shared_ptr<const bootstrap_snapshot> current() const noexcept { return _snapshot.load(); }

private:
    void run();
    std::shared_ptr<const bootstrap_snapshot> resolve_all() const;

    std::vector<std::string> _published;
    std::vector<unpublished_name> _unpublished;
    std::int64_t _refresh_ns;
    std::atomic<std::shared_ptr<const bootstrap_snapshot>> _snapshot;
    std::mutex _mutex;
    std::condition_variable _wake;
    bool _stop = false;
    std::thread _thread;
};

}  // namespace derp::server
