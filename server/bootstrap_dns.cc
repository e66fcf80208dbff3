// The /bootstrap-dns resolver thread (see bootstrap_dns.hh).
#include "server/bootstrap_dns.hh"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <resolv.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "ring/log.hh"

namespace derp::server {
namespace {

std::vector<std::string> resolve(const std::string& name) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    if (const int err = getaddrinfo(name.c_str(), nullptr, &hints, &list); err != 0) {
        ring::log(ring::log_level::warn, "bootstrap DNS: resolving {}: {}", name, gai_strerror(err));
        return {};
    }
    std::vector<std::string> out;
    for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
        char text[INET6_ADDRSTRLEN] = {};
        if (a->ai_family == AF_INET)
            inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr, text, sizeof text);
        else if (a->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr, text, sizeof text);
        else
            continue;
        if (std::find(out.begin(), out.end(), text) == out.end()) out.emplace_back(text);
    }
    freeaddrinfo(list);
    return out;
}

// The first string of txt_name's TXT record as a percentage; 0 when missing or bad.
int rollout_percent(const std::string& txt_name) {
    unsigned char answer[1024];
    const int n = res_query(txt_name.c_str(), ns_c_in, ns_t_txt, answer, sizeof answer);
    if (n < 0) {
        ring::log(ring::log_level::warn, "bootstrap DNS: no TXT record for {}: rollout 0%", txt_name);
        return 0;
    }
    ns_msg message;
    if (ns_initparse(answer, n, &message) != 0) return 0;
    for (int i = 0; i < ns_msg_count(message, ns_s_an); ++i) {
        ns_rr record;
        if (ns_parserr(&message, ns_s_an, i, &record) != 0 || ns_rr_type(record) != ns_t_txt) continue;
        const unsigned char* data = ns_rr_rdata(record);
        const std::size_t length = std::min<std::size_t>(data[0], static_cast<std::size_t>(ns_rr_rdlen(record)) - 1);
        return parse_rollout_percent({reinterpret_cast<const char*>(data + 1), length});
    }
    return 0;
}

}  // namespace

bootstrap_resolver::bootstrap_resolver(std::vector<std::string> published, std::vector<unpublished_name> unpublished,
                                       std::int64_t refresh_ns)
    : _published(std::move(published)), _unpublished(std::move(unpublished)), _refresh_ns(refresh_ns),
      _snapshot(std::make_shared<const bootstrap_snapshot>()) {}

bootstrap_resolver::~bootstrap_resolver() {
    {
        std::lock_guard lock(_mutex);
        _stop = true;
    }
    _wake.notify_all();
    if (_thread.joinable()) _thread.join();
}

void bootstrap_resolver::start() {
    if (configured()) _thread = std::thread([this] { run(); });
}

std::shared_ptr<const bootstrap_snapshot> bootstrap_resolver::resolve_all() const {
    auto snapshot = std::make_shared<bootstrap_snapshot>();
    std::mt19937_64 shuffle(std::random_device{}());
    for (const auto& name : _published) {
        auto addresses = resolve(name);
        if (addresses.empty()) continue;  // failed lookups are left out (and logged)
        std::shuffle(addresses.begin(), addresses.end(), shuffle);
        snapshot->published[name] = std::move(addresses);
    }
    if (!_published.empty()) snapshot->published_json = format_bootstrap_json(snapshot->published);
    for (const auto& entry : _unpublished) {
        bootstrap_snapshot::rollout r;
        r.addresses = resolve(entry.name);
        r.percent = entry.txt_name.empty() ? 100 : rollout_percent(entry.txt_name);
        if (!r.addresses.empty()) snapshot->unpublished[entry.name] = std::move(r);
    }
    return snapshot;
}

void bootstrap_resolver::run() {
    for (;;) {
        auto snapshot = resolve_all();
        ring::log(ring::log_level::info, "bootstrap DNS: resolved {} of {} published and {} of {} unpublished name(s)",
                  snapshot->published.size(), _published.size(), snapshot->unpublished.size(), _unpublished.size());
        _snapshot.store(std::move(snapshot));
        std::unique_lock lock(_mutex);
        if (_wake.wait_for(lock, std::chrono::nanoseconds(_refresh_ns), [this] { return _stop; })) return;
    }
}

}  // namespace derp::server
