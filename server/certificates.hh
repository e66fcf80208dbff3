// derper's certificate modes for derpd's TLS listener (spec 4.2): manual certificates from
// -certdir, a self-signed one written there for an IP -hostname, and their reload without
// dropping connections (SIGHUP, or the files changing), keeping the old certificate when the
// new files do not load.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "core/key.hh"
#include "core/result.hh"
#include "crypto/tls_layer.hh"

namespace derp::server {

// derper's default -certdir: <user cache dir>/tailscale/derper-certs.
std::string default_certdir();
// <certdir>/<H>.crt and .key, H = hostname without characters outside [A-Za-z0-9.-].
std::string manual_cert_path(const std::string& certdir, const std::string& hostname, const char* extension);

struct certificate_setup {
    tls::server_identity identity;
    std::shared_ptr<tls::context> context;
    bool self_signed_written = false;
    std::string derpmap_node;  // for an IP hostname: the DERPMap node line derper logs
};

// Loads (or for an IP hostname first writes) the manual certificate and builds the context
// with the meta certificate for `server_key`. Errors say which file and why.
result<certificate_setup, std::string> load_manual_certificate(const std::string& certdir, const std::string& hostname,
                                                               const node_key& server_key);

// Swaps a fresh context into the slot when asked (SIGHUP) or when the files change (polled).
class certificate_reloader {
public:
    certificate_reloader(tls::server_identity identity, tls::context_slot& slot);
    ~certificate_reloader();
    // Loads the files again; on success new connections get the new certificate; on failure
    // the old one stays and the log says why. Safe from any thread.
    bool reload(const char* why) noexcept;
    // Checks the files' identity (inode, size, mtime) every interval and reloads on a change.
    void start_polling(std::int64_t interval_ns);
    std::uint64_t reloads() const noexcept { return _reloads.load(std::memory_order_relaxed); }
    // Told "" after a good reload and the reason after a failed one (the node's Health, spec
    // 1.x): clients hear that the node is degraded while its certificate files are broken.
    // Set before the first reload that may fail (before the runtime starts).
    void set_health_sink(std::function<void(std::string)> sink) { _health = std::move(sink); }

private:
    std::string stamp() const;

    tls::server_identity _identity;
    tls::context_slot& _slot;
    std::mutex _mutex;
    std::string _last_stamp;
    std::atomic<std::uint64_t> _reloads{0};
    std::function<void(std::string)> _health;
    std::thread _poller;
    std::condition_variable _wake;
    bool _stopping = false;
};

}  // namespace derp::server
