// derpd's ACME client thread (see acme_client.hh). The wire exchange, RFC 8555 section 7: every
// request but the directory and newNonce is a POST of a flattened JWS (ES256) whose protected
// header carries the last Replay-Nonce and the URL; newAccount signs with the key's JWK, the
// rest with the account URL ("kid"); reading a resource is a POST of an empty payload.
#include "server/acme_client.hh"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>

#include <fmt/format.h>

#include "core/http_endpoints.hh"
#include "ring/log.hh"
#include "server/acme_store.hh"
#include "server/files.hh"

namespace derp::server {

using ring::log_level;

namespace {

constexpr std::string_view bad_nonce = "urn:ietf:params:acme:error:badNonce";
constexpr int bad_nonce_retries_max = 5;
// A Retry-After longer than this is read as this (a polling delay, or a rate limit's wait).
constexpr std::int64_t poll_retry_after_max_s = 10;
constexpr std::int64_t failure_retry_after_max_s = 24 * 3600;

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::int64_t steady_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// "problem document" or "HTTP 503" for the log, from an error response.
std::string describe_error(const https_response& r, std::optional<acme::problem>& problem) {
    if (auto parsed = acme::parse_problem(r.body)) {
        problem = parsed.value();
        return fmt::format("HTTP {}: {}", r.status, parsed->to_string());
    }
    return fmt::format("HTTP {} without a problem document", r.status);
}

// Publishes a challenge answer for as long as it lives.
struct published_answer {
    tls::acme_challenges& challenges;
    std::string hostname, token;
    bool tls_alpn = false;
    ~published_answer() {
        if (tls_alpn) challenges.clear_tls_alpn(hostname);
        else challenges.clear_http01(token);
    }
};

}  // namespace

std::string letsencrypt_hostname_problem(const std::string& hostname) {
    if (parse_ip(hostname))
        return fmt::format("-certmode letsencrypt: -hostname {} is an IP address; derpd orders certificates for DNS "
                           "names only (use -certmode manual, which makes a self-signed certificate for an IP)", hostname);
    bool ok = !hostname.empty() && hostname.size() <= 253 && hostname.front() != '.' && hostname.front() != '-' &&
              hostname.find("..") == std::string::npos;
    for (char ch : hostname)
        ok = ok && ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-');
    if (!ok) return fmt::format("-certmode letsencrypt: -hostname \"{}\" is not a DNS name", hostname);
    return {};
}

acme_client::acme_client(acme_settings settings, tls::context_slot& slot, std::shared_ptr<tls::acme_challenges> challenges,
                         admin::acme_counters& counters)
    : _settings(std::move(settings)), _slot(slot), _challenges(std::move(challenges)), _counters(counters),
      _stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), _random(std::random_device{}()) {
    _http = std::make_unique<https_client>(_settings.ca_file, _settings.request_timeout_ns, _stop_fd);
}

acme_client::~acme_client() {
    const std::uint64_t one = 1;
    if (_stop_fd >= 0) (void)::write(_stop_fd, &one, sizeof one);
    if (_thread.joinable()) _thread.join();
    if (_stop_fd >= 0) ::close(_stop_fd);
}

double acme_client::random_fraction() { return std::uniform_real_distribution<double>(0.0, 1.0)(_random); }

bool acme_client::stopping() const {
    pollfd p{_stop_fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

bool acme_client::pause(std::int64_t delay_ns) {
    const std::int64_t until = steady_ns() + std::max<std::int64_t>(0, delay_ns);
    for (;;) {
        const std::int64_t left = until - steady_ns();
        pollfd p{_stop_fd, POLLIN, 0};
        const int n = ::poll(&p, 1, left <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>(left / 1'000'000 + 1, 3'600'000)));
        if (n > 0) return false;
        if (n < 0 && errno != EINTR) return false;
        if (steady_ns() >= until) return true;
    }
}

result<std::string, std::string> acme_client::prepare() {
    if (_stop_fd < 0) return unexpected(std::string("eventfd for the ACME thread failed"));
    if (auto made = make_private_directory(_settings.certdir); !made) return unexpected("-certdir: " + made.error());
    auto account = load_or_create_account_key(_settings.certdir);
    if (!account) return unexpected(account.error());
    _account_key = std::move(account->key);
    _thumbprint = _account_key.thumbprint_b64url();
    std::string line = fmt::format("ACME: account key {} ({})", acme_account_key_path(_settings.certdir),
                                   account->created ? "new" : "stored");
    const std::string path = acme_certificate_path(_settings.certdir, _settings.hostname);
    auto stored = read_acme_file(path, acme::certificate_bytes_max + 64 * 1024);
    std::string problem;
    if (!stored) {
        problem = stored.error();
    } else if (stored.value()) {
        auto installed = install(*stored.value(), false);
        if (installed) {
            const bool good = unix_now() < acme::renewal_time_unix(_not_before_unix, _not_after_unix, 0);
            if (good) _counters.orders_reused.add();
            return fmt::format("{}; certificate {} expires in {} s{}", line, path, _not_after_unix - unix_now(),
                               good ? "" : ", due for renewal now");
        }
        problem = installed.error().what;
    }
    auto pending = tls::context::make_server_pending(_settings.hostname, _challenges);
    if (!pending) return unexpected(pending.error());
    _slot.current.store(pending.value());
    return fmt::format("{}; {}: TLS handshakes are refused until the first certificate is in", line,
                       problem.empty() ? "no certificate yet" : "stored certificate not usable (" + problem + ")");
}

void acme_client::start() {
    _thread = std::thread([this] { run(); });
}

void acme_client::run() {
    std::uint32_t failures = 0;
    for (;;) {
        if (_not_after_unix != 0) {
            const std::int64_t renew_at = acme::renewal_time_unix(_not_before_unix, _not_after_unix, _renewal_jitter);
            const std::int64_t wait_s = renew_at - unix_now();
            if (wait_s > 0) {
                ring::log(log_level::info, "ACME: certificate for {} valid until {} (unix); renewal in {} s",
                          _settings.hostname, _not_after_unix, wait_s);
                // At most an hour at a time: the wall clock may jump under a steady wait.
                if (!pause(std::min<std::int64_t>(wait_s, 3600) * 1'000'000'000)) return;
                if (wait_s > 3600) continue;
            }
        }
        ring::log(log_level::info, "ACME: ordering a certificate for {} from {}", _settings.hostname,
                  _settings.directory_url);
        _retry_after_s = 0;
        auto got = obtain();
        if (got) {
            failures = 0;
            if (_health) _health({});
            continue;
        }
        // derpd stopping cuts a request short: that is no failed order.
        if (stopping()) return;
        _counters.orders_failed.add();
        // The next attempt starts from the directory and the account again: the server may
        // have moved its endpoints or forgotten the account (accountDoesNotExist).
        _directory.reset();
        _kid.clear();
        _nonce.clear();
        ++failures;
        std::int64_t delay_ns = acme::backoff_ns(failures, _settings.retry_base_ns,
                                                 std::max(_settings.retry_base_ns, _settings.retry_cap_ns));
        delay_ns += static_cast<std::int64_t>(random_fraction() * static_cast<double>(delay_ns) / 10.0);
        if (_retry_after_s > 0)
            delay_ns = std::max<std::int64_t>(delay_ns, std::min(_retry_after_s, failure_retry_after_max_s) * 1'000'000'000);
        const std::string keeping =
            _not_after_unix != 0
                ? fmt::format("keeping the current certificate (expires in {} s)", _not_after_unix - unix_now())
                : std::string("no certificate yet: TLS handshakes are refused");
        if (_health) _health(fmt::format("certificate order for {} failing: {}", _settings.hostname, got.error().what));
        ring::log(log_level::warn, "ACME: order for {} failed: {}; {}; next attempt in {} s", _settings.hostname,
                  got.error().what, keeping, (delay_ns + 999'999'999) / 1'000'000'000);
        if (!pause(delay_ns)) return;
    }
}

acme_client::outcome<acme::status> acme_client::obtain() {
    std::vector<std::string> types = {"tls-alpn-01"};
    if (_settings.http01) types.emplace_back("http-01");
    failure last;
    for (std::size_t i = 0; i < types.size(); ++i) {
        const std::size_t index = (_preferred_type + i) % types.size();
        auto done = order_with(types[index]);
        if (done) {
            _preferred_type = index;
            return done;
        }
        last = done.error();
        if (!last.challenge_failed) break;
        if (i + 1 < types.size())
            ring::log(log_level::warn, "ACME: {} failed for {}: {}; trying {} with a new order", types[index],
                      _settings.hostname, last.what, types[(index + 1) % types.size()]);
    }
    return unexpected(std::move(last));
}

acme_client::outcome<acme::status> acme_client::fetch_nonce() {
    auto r = _http->request("HEAD", _directory->new_nonce, {}, {}, 0);
    if (!r) return unexpected(failure{"newNonce: " + r.error()});
    auto nonce = r->head.field("Replay-Nonce");
    if (!nonce || nonce->empty() || nonce->size() > 256)
        return unexpected(failure{fmt::format("newNonce: HTTP {} without a usable Replay-Nonce", r->status)});
    _nonce = std::string(*nonce);
    return acme::status::valid;
}

acme_client::outcome<https_response> acme_client::post(const std::string& url, std::string_view payload, bool with_jwk,
                                                       std::size_t body_bytes_max, std::string_view accept) {
    for (int attempt = 0;; ++attempt) {
        if (_nonce.empty())
            if (auto got = fetch_nonce(); !got) return unexpected(got.error());
        const std::string header =
            acme::protected_header(_nonce, url, with_jwk ? _account_key.jwk_json() : std::string(), _kid);
        _nonce.clear();  // a nonce is good for one request
        auto body = tls::jws_flattened(_account_key, header, payload);
        if (!body) return unexpected(failure{body.error()});
        auto r = _http->request("POST", url, "application/jose+json", body.value(), body_bytes_max, accept);
        if (!r) return unexpected(failure{r.error()});
        if (auto nonce = r->head.field("Replay-Nonce"); nonce && !nonce->empty() && nonce->size() <= 256)
            _nonce = std::string(*nonce);
        if (auto after = r->head.field("Retry-After"))
            _retry_after_s = acme::parse_retry_after(*after, unix_now()).value_or(0);
        if (r->status < 400) return std::move(r.value());
        failure f;
        f.what = describe_error(r.value(), f.problem);
        // RFC 8555 6.5: badNonce is retried with the nonce that came with the error.
        if (f.problem && f.problem->type == bad_nonce && attempt < bad_nonce_retries_max) {
            ring::log(log_level::debug, "ACME: badNonce for {}; retrying", url);
            continue;
        }
        return unexpected(std::move(f));
    }
}

acme_client::outcome<acme::status> acme_client::ensure_account() {
    if (!_directory) {
        auto r = _http->request("GET", _settings.directory_url, {}, {}, acme::document_bytes_max);
        if (!r) return unexpected(failure{"directory " + _settings.directory_url + ": " + r.error()});
        if (r->status != 200)
            return unexpected(failure{fmt::format("directory {}: HTTP {}", _settings.directory_url, r->status)});
        auto dir = acme::parse_directory(r->body);
        if (!dir) return unexpected(failure{"directory " + _settings.directory_url + ": " + dir.error()});
        _directory = std::move(dir.value());
    }
    if (!_kid.empty()) return acme::status::valid;
    // RFC 8555 7.3: a newAccount with a key the server knows answers 200 with that account.
    auto r = post(_directory->new_account, acme::new_account_payload(_settings.email), true);
    if (!r) {
        return unexpected(r.error().prefixed("newAccount: "));
    }
    auto location = r->head.field("Location");
    if (!location || !acme::parse_https_url(*location))
        return unexpected(failure{fmt::format("newAccount: HTTP {} without an account URL (Location)", r->status)});
    auto st = acme::parse_account_status(r->body);
    if (!st) return unexpected(failure{"newAccount: " + st.error()});
    if (st.value() != acme::status::valid)
        return unexpected(failure{fmt::format("newAccount: the account is {}", acme::to_string(st.value()))});
    _kid = std::string(*location);
    ring::log(log_level::info, "ACME: account {} ({})", _kid, r->status == 201 ? "registered now" : "existing");
    return acme::status::valid;
}

acme_client::outcome<acme::status> acme_client::answer_authorization(const std::string& url,
                                                                     const std::string& challenge_type) {
    auto r = post(url, "", false);
    if (!r) return unexpected(r.error());
    auto authz = acme::parse_authorization(r->body);
    if (!authz) return unexpected(failure{authz.error()});
    if (authz->state == acme::status::valid) return acme::status::valid;  // reused by the server
    if (authz->state != acme::status::pending)
        return unexpected(failure{fmt::format("authorization for {} is {}", authz->identifier_value,
                                              acme::to_string(authz->state))});
    if (authz->identifier_type != "dns" || authz->identifier_value != _settings.hostname)
        return unexpected(failure{fmt::format("authorization for {} \"{}\", not for {}", authz->identifier_type,
                                              authz->identifier_value, _settings.hostname)});
    const acme::challenge* chosen = nullptr;
    std::string offered;
    for (const auto& c : authz->challenges) {
        offered += (offered.empty() ? "" : ", ") + c.type;
        if (c.type == challenge_type) chosen = &c;
    }
    if (chosen == nullptr) {
        failure f{fmt::format("the server offers no {} challenge (offered: {})", challenge_type, offered)};
        f.challenge_failed = true;
        return unexpected(std::move(f));
    }
    const std::string key_authorization = acme::key_authorization(chosen->token, _thumbprint);
    published_answer answer{*_challenges, _settings.hostname, chosen->token, challenge_type == "tls-alpn-01"};
    if (answer.tls_alpn) {
        auto ctx = tls::make_tls_alpn_challenge_context(_settings.hostname, key_authorization);
        if (!ctx) return unexpected(failure{ctx.error()});
        _challenges->set_tls_alpn(_settings.hostname, ctx.value());
        _counters.challenges_tls_alpn.add();
    } else {
        _challenges->set_http01(chosen->token, key_authorization);
        _counters.challenges_http01.add();
    }
    // RFC 8555 7.5.1: an empty object tells the server to validate.
    if (auto accepted = post(chosen->url, "{}", false); !accepted) {
        return unexpected(accepted.error().prefixed(challenge_type + " challenge: "));
    }
    const std::int64_t deadline = steady_ns() + _settings.issuance_timeout_ns;
    for (std::uint32_t round = 1;; ++round) {
        std::int64_t delay_ns = acme::backoff_ns(round, 250'000'000, 4'000'000'000);
        if (_retry_after_s > 0) delay_ns = std::min(_retry_after_s, poll_retry_after_max_s) * 1'000'000'000;
        _retry_after_s = 0;
        if (steady_ns() + delay_ns > deadline)
            return unexpected(failure{fmt::format("{} validation of {} not finished within the issuance timeout",
                                                  challenge_type, _settings.hostname)});
        if (!pause(delay_ns)) return unexpected(failure{"stopped"});
        auto polled = post(url, "", false);
        if (!polled) return unexpected(polled.error());
        auto now = acme::parse_authorization(polled->body);
        if (!now) return unexpected(failure{now.error()});
        if (now->state == acme::status::valid) return acme::status::valid;
        if (now->state == acme::status::pending) continue;
        failure f;
        f.challenge_failed = true;
        for (const auto& c : now->challenges)
            if (c.type == challenge_type && c.error) f.problem = c.error;
        f.what = fmt::format("{} validation of {}: authorization {}{}", challenge_type, _settings.hostname,
                             acme::to_string(now->state), f.problem ? ": " + f.problem->to_string() : std::string());
        return unexpected(std::move(f));
    }
}

acme_client::outcome<acme::order> acme_client::poll_order(const std::string& url, bool until_valid) {
    const std::int64_t deadline = steady_ns() + _settings.issuance_timeout_ns;
    for (std::uint32_t round = 1;; ++round) {
        auto r = post(url, "", false);
        if (!r) return unexpected(r.error());
        auto o = acme::parse_order(r->body);
        if (!o) return unexpected(failure{o.error()});
        if (o->state == acme::status::invalid) {
            failure f{fmt::format("order {} is invalid{}", url, o->error ? ": " + o->error->to_string() : std::string())};
            f.problem = o->error;
            return unexpected(std::move(f));
        }
        if (o->state == acme::status::valid || (!until_valid && o->state == acme::status::ready)) return std::move(o.value());
        std::int64_t delay_ns = acme::backoff_ns(round, 250'000'000, 4'000'000'000);
        if (_retry_after_s > 0) delay_ns = std::min(_retry_after_s, poll_retry_after_max_s) * 1'000'000'000;
        _retry_after_s = 0;
        if (steady_ns() + delay_ns > deadline)
            return unexpected(failure{fmt::format("order {} still {} at the issuance timeout", url, acme::to_string(o->state))});
        if (!pause(delay_ns)) return unexpected(failure{"stopped"});
    }
}

acme_client::outcome<acme::status> acme_client::order_with(const std::string& challenge_type) {
    if (auto account = ensure_account(); !account) return account;
    auto r = post(_directory->new_order, acme::new_order_payload(_settings.hostname), false);
    if (!r) {
        return unexpected(r.error().prefixed("newOrder: "));
    }
    auto location = r->head.field("Location");
    if (!location || !acme::parse_https_url(*location))
        return unexpected(failure{fmt::format("newOrder: HTTP {} without an order URL (Location)", r->status)});
    const std::string order_url(*location);
    auto order = acme::parse_order(r->body);
    if (!order) return unexpected(failure{"newOrder: " + order.error()});
    if (order->authorizations.empty()) return unexpected(failure{std::string("newOrder: no authorizations")});
    for (const auto& url : order->authorizations)
        if (auto answered = answer_authorization(url, challenge_type); !answered) return answered;
    auto ready = poll_order(order_url, false);
    if (!ready) return unexpected(ready.error());
    if (ready->state == acme::status::ready) {
        auto key = tls::ec_key::generate();
        if (!key) return unexpected(failure{key.error()});
        auto csr = tls::make_csr_der(key.value(), _settings.hostname);
        if (!csr) return unexpected(failure{csr.error()});
        if (auto finalized = post(ready->finalize, acme::finalize_payload(tls::base64url(csr.value())), false); !finalized) {
            return unexpected(finalized.error().prefixed("finalize: "));
        }
        auto valid = poll_order(order_url, true);
        if (!valid) return unexpected(valid.error());
        auto cert = post(valid->certificate, "", false, acme::certificate_bytes_max, "application/pem-certificate-chain");
        if (!cert) {
            return unexpected(cert.error().prefixed("certificate download: "));
        }
        return install(key->to_pem() + cert->body, true);
    }
    return unexpected(failure{fmt::format("order {} is valid without a key of ours", order_url)});
}

acme_client::outcome<acme::status> acme_client::install(const std::string& pem_file_text, bool fresh) {
    const std::string path = acme_certificate_path(_settings.certdir, _settings.hostname);
    auto key = tls::ec_key::from_pem(pem_file_text);
    if (!key) return unexpected(failure{fmt::format("certificate key in {}: {}", fresh ? "the new certificate" : path, key.error())});
    auto info = tls::check_issued_chain(pem_file_text, key.value(), _settings.hostname);
    if (!info) return unexpected(failure{fmt::format("{}: {}", fresh ? "the issued chain" : path, info.error())});
    if (info->not_after_unix <= unix_now())
        return unexpected(failure{fmt::format("{} expired {} s ago", path, unix_now() - info->not_after_unix)});
    if (fresh)
        if (auto written = write_acme_file(path, pem_file_text); !written) return unexpected(failure{written.error()});
    tls::server_identity identity;
    identity.hostname = _settings.hostname;
    identity.cert_path = path;
    identity.key_path = path;
    identity.meta_cert_der = _settings.meta_cert_der;
    identity.acme = _challenges;
    auto ctx = tls::context::make_server(identity);
    if (!ctx) return unexpected(failure{ctx.error()});
    std::string hex;
    for (auto b : ctx.value()->leaf_sha256()) hex += fmt::format("{:02x}", b);
    _slot.current.store(ctx.value());
    _not_before_unix = info->not_before_unix;
    _not_after_unix = info->not_after_unix;
    _renewal_jitter = random_fraction();
    if (fresh) {
        _counters.orders_ok.add();
        ring::log(log_level::info, "ACME: new certificate for {} installed ({} certificates, valid for {} s, sha256 {}); "
                  "new connections use it", _settings.hostname, info->certificates, info->not_after_unix - unix_now(), hex);
    }
    return acme::status::valid;
}

}  // namespace derp::server
