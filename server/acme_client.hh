// -certmode letsencrypt (spec 4.2): derpd's ACME client (RFC 8555) on a thread of its own,
// never a shard. At start it takes a stored certificate that still has more than a third of
// its lifetime left; otherwise, and whenever a third is left, it orders one: account (the
// stored key), order, one authorization answered by TLS-ALPN-01 on the TLS listener (RFC 8737)
// or HTTP-01 on the port-80 listener, finalize with a fresh key's CSR, download, store in
// -certdir, and swap a new context into the slot (new connections take it, open ones keep
// theirs). A failure is logged with what the ACME server answered and retried with
// exponential backoff while the old certificate keeps serving.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "admin/derp_counters.hh"
#include "core/acme.hh"
#include "core/result.hh"
#include "crypto/acme_crypto.hh"
#include "crypto/tls_layer.hh"
#include "crypto/https_client.hh"

namespace derp::server {

using tls::https_client;
using tls::https_response;

// Why -hostname cannot be ordered in -certmode letsencrypt (an IP address, not a DNS name), as a
// start-up error; empty when it can.
std::string letsencrypt_hostname_problem(const std::string& hostname);

inline constexpr const char* letsencrypt_directory_url = "https://acme-v02.api.letsencrypt.org/directory";

struct acme_settings {
    std::string hostname;        // -hostname: a DNS name
    std::string certdir;         // -certdir
    std::string directory_url = letsencrypt_directory_url;  // -acme-directory
    std::string ca_file;         // -acme-ca: trust only this bundle for the ACME server
    std::string email;           // -acme-email: the account's contact, if any
    std::int64_t request_timeout_ns = 30'000'000'000;  // -acme-timeout: one HTTPS request, all of it
    std::int64_t retry_base_ns = 60'000'000'000;       // -acme-retry-interval: first backoff (derper: 1 min)
    std::int64_t retry_cap_ns = 1'800'000'000'000;     // backoff doubles up to this (derper: 30 min)
    std::int64_t issuance_timeout_ns = 180'000'000'000;  // one order, polling included (derper: 3 min)
    bool http01 = false;         // the port-80 listener is there to answer HTTP-01
    std::vector<std::uint8_t> meta_cert_der;  // appended to the chain (spec 2.15)
};

class acme_client {
public:
    acme_client(acme_settings settings, tls::context_slot& slot, std::shared_ptr<tls::acme_challenges> challenges,
                admin::acme_counters& counters);
    ~acme_client();  // stops the thread: a request in flight is cut short
    acme_client(const acme_client&) = delete;
    acme_client& operator=(const acme_client&) = delete;

    // At start-up, before the listeners: the certificate directory (0700), the account key
    // (made on first start), and a stored certificate if it is still good, which goes into the
    // slot; otherwise the slot gets a context without one (handshakes refused with an alert,
    // TLS-ALPN-01 answered). Returns a line for the log; errors stop start-up.
    result<std::string, std::string> prepare();
    // Starts the thread: orders a certificate now if there is none worth keeping, else sleeps
    // until renewal time.
    void start();
    // Told why while orders fail and "" once one succeeds (the node's Health); before start().
    void set_health_sink(std::function<void(std::string)> sink) { _health = std::move(sink); }

private:
    struct failure {
        failure() = default;
        explicit failure(std::string text) : what(std::move(text)) {}
        // The same failure, its text behind the step that met it.
        failure prefixed(std::string_view step) const {
            failure f = *this;
            f.what = std::string(step) + what;
            return f;
        }
        std::string what;              // for the log: the step, and the server's problem document
        std::optional<acme::problem> problem;
        bool challenge_failed = false;  // the authorization went invalid: another type may work
    };
    template <typename T>
    using outcome = result<T, failure>;

    void run();
    // One attempt: a new order, tried with each challenge type in turn if validation fails.
    outcome<acme::status> obtain();
    outcome<acme::status> order_with(const std::string& challenge_type);
    outcome<acme::status> ensure_account();
    outcome<https_response> post(const std::string& url, std::string_view payload, bool with_jwk,
                                 std::size_t body_bytes_max = acme::document_bytes_max, std::string_view accept = {});
    outcome<acme::status> fetch_nonce();
    outcome<acme::status> answer_authorization(const std::string& url, const std::string& challenge_type);
    outcome<acme::order> poll_order(const std::string& url, bool until_valid);
    outcome<acme::status> install(const std::string& pem_file_text, bool fresh);
    bool stopping() const;  // derpd is stopping (the stop descriptor is readable)
    // Waits delay_ns unless derpd stops (false).
    bool pause(std::int64_t delay_ns);
    double random_fraction();

    acme_settings _settings;
    tls::context_slot& _slot;
    std::shared_ptr<tls::acme_challenges> _challenges;
    admin::acme_counters& _counters;
    int _stop_fd = -1;  // eventfd: readable once derpd stops
    std::unique_ptr<https_client> _http;
    tls::ec_key _account_key;
    std::string _thumbprint;
    std::optional<acme::directory> _directory;
    std::string _kid;     // the account URL, once known
    std::string _nonce;   // the freshest Replay-Nonce
    std::int64_t _retry_after_s = 0;  // the last Retry-After an error carried
    std::int64_t _not_before_unix = 0, _not_after_unix = 0;  // the certificate in the slot, if any
    double _renewal_jitter = 0;  // drawn once per certificate
    std::function<void(std::string)> _health;
    std::size_t _preferred_type = 0;  // index into the challenge types: the last that worked
    std::mt19937_64 _random;
    std::thread _thread;
};

}  // namespace derp::server
