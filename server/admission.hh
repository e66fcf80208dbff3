// Client admission (spec 2.11) off the shards: -verify-clients asks the local tailscaled over its
// LocalAPI Unix socket whether a node key is in the tailnet, -verify-client-url POSTs derper's
// admission JSON to a controller and obeys the answer. A shard hands each handshake that needs
// a decision to submit() and carries on; one thread of its own (never a shard) runs every
// request at once on non-blocking sockets with poll(2), each with a deadline, remembers definite
// answers for a short while, and posts decisions back to the asking shard's inbox, waking it.
// A slow or dead controller therefore costs the waiting clients their timeout and nobody else
// anything. https:// controllers are verified against the system trust store (OpenSSL's default
// paths, which honour SSL_CERT_FILE/SSL_CERT_DIR) for the URL's host, as Go's http.Client does.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/admission.hh"
#include "core/frame.hh"
#include "core/key.hh"
#include "core/registry.hh"
#include "core/result.hh"
#include "crypto/tls.hh"

namespace derp::server {

// derper's default for --socket on Linux (paths.DefaultTailscaledSocket).
inline constexpr const char* default_tailscaled_socket = "/var/run/tailscale/tailscaled.sock";

struct admission_settings {
    bool verify_clients = false;     // -verify-clients: ask tailscaled
    std::string socket_path = default_tailscaled_socket;  // -socket
    std::string url;                 // -verify-client-url (http:// or https://)
    bool fail_open = true;           // -verify-client-url-fail-open
    std::int64_t timeout_ns = 5'000'000'000;  // -verify-client-timeout: each request (derper: 5s)
    std::int64_t cache_ns = 10'000'000'000;   // -verify-client-cache: how long an answer is kept; 0 = never
    std::uint32_t requests_in_flight_max = 1024;  // at once; more wait their turn
    bool enabled() const noexcept { return verify_clients || !url.empty(); }
};

// How a decision came about; the label of derpd_client_admissions_total{result}.
// Same order as admin::admission_labels.
enum class admission_outcome : std::uint8_t {
    allowed,        // tailscaled knows the key and/or the controller said Allow
    denied,         // tailscaled said 404 or the controller said no (or non-200, or garbage)
    error_allowed,  // the controller was unreachable or timed out, and fail-open let it in
    error_denied,   // a request failed (tailscaled, or the controller with fail-open off)
};
inline constexpr std::size_t admission_outcome_count = 4;
const char* to_string(admission_outcome outcome) noexcept;

struct admission_decision {
    conn_ref conn;
    node_key key;
    admission_outcome outcome = admission_outcome::denied;
    bool cached = false;
    std::string reason;  // for the log: why (denials and errors)
};

class admission_checker {
public:
    // shard_count inboxes. Start-up errors (a bad URL) come back from make().
    static result<std::unique_ptr<admission_checker>, std::string> make(admission_settings settings,
                                                                        std::uint32_t shard_count);
    ~admission_checker();  // stops the thread; requests in flight are abandoned
    admission_checker(const admission_checker&) = delete;
    admission_checker& operator=(const admission_checker&) = delete;

    const admission_settings& settings() const noexcept { return _settings; }
    // Starts the thread; wake(shard) must make that shard's loop turn (runtime::wake). Requests
    // submitted before are kept and answered once it runs.
    void start(std::function<void(std::uint32_t)> wake);

    // From a shard: decide on key (connected from ip). Never blocks beyond a short lock.
    void submit(const conn_ref& conn, const node_key& key, const ip16& ip);
    // From shard `shard`, once per loop turn: moves its decisions into out (cheap when none).
    void take(std::uint32_t shard, std::vector<admission_decision>& out);

    // derper's /debug/check self-check under -verify-clients: would this node's own key (from
    // tailscaled's /localapi/v0/status, as connecting from ::1) be admitted? derper asks while
    // the HTTP request waits; here the admission thread asks every self_check_interval_ns and
    // this returns the latest verdict at once ("" when admitted), so /debug/check never blocks
    // a shard or the admin thread. Any thread.
    static constexpr std::uint64_t self_check_interval_ns = 10'000'000'000;
    std::string self_check_problem() const;

private:
    admission_checker(admission_settings settings, std::uint32_t shard_count);
    struct request { conn_ref conn; node_key key; ip16 ip; };
    struct exchange;  // one HTTP request in flight (admission.cc)
    struct pending;   // one decision being made, with every connection waiting for it
    void run();
    void deliver(admission_decision decision);

    admission_settings _settings;
    std::optional<http_url> _url;
    std::shared_ptr<tls::context> _tls;  // for an https:// controller
    std::uint32_t _shards;
    std::function<void(std::uint32_t)> _wake;
    int _event_fd = -1;  // written by submit() and the destructor
    std::mutex _mutex;
    std::deque<request> _submitted;
    bool _stop = false;
    struct inbox {
        std::mutex mutex;
        std::vector<admission_decision> decisions;
        std::atomic<bool> ready{false};
    };
    std::unique_ptr<inbox[]> _inboxes;
    mutable std::mutex _self_mutex;
    bool _self_done = false;
    std::string _self_problem;
    std::thread _thread;
};

}  // namespace derp::server
