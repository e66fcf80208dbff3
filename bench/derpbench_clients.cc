// derpbench's servers (--url parsing) and the percentile of its latency workload (see
// derpbench_clients.hh).
#include "bench/derpbench_clients.hh"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>

#include <fmt/format.h>

#include "bench/bench_util.hh"

namespace derp::bench {
namespace {

// The target `url` names, at host:port (getaddrinfo).
result<target, std::string> resolve_target(const std::string& url, const std::string& host, const std::string& port,
                                           bool tls, bool websocket) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    if (const int err = getaddrinfo(host.c_str(), port.c_str(), &hints, &list); err != 0)
        return unexpected(fmt::format("--url {}: {}", url, gai_strerror(err)));
    target t;
    t.url = url;
    t.host = host;
    t.tls = tls;
    t.websocket = websocket;
    std::memcpy(&t.address.storage, list->ai_addr, list->ai_addrlen);
    t.address.length = list->ai_addrlen;
    freeaddrinfo(list);
    return t;
}

}  // namespace

// http(s)://host[:port]/derp, ws(s)://host[:port]/derp or tcp://host:port -> the address to dial.
result<target, std::string> parse_url(const std::string& url) {
    if (url.rfind("tcp://", 0) == 0) {
        // A raw forwarder: no path, no TLS; the port is required (there is no default).
        const auto split = split_host_port(url.substr(6), "");
        if (!split || split->second.empty() || split->first.empty())
            return unexpected(fmt::format("--url {}: want tcp://host:port", url));
        auto t = resolve_target(url, split->first, split->second, false, false);
        if (t) t->raw = true;
        return t;
    }
    const bool websocket = url.rfind("ws://", 0) == 0 || url.rfind("wss://", 0) == 0;
    const bool tls = url.rfind("https://", 0) == 0 || url.rfind("wss://", 0) == 0;
    const std::string_view scheme = websocket ? (tls ? "wss://" : "ws://") : (tls ? "https://" : "http://");
    if (url.rfind(scheme, 0) != 0) return unexpected(fmt::format("--url {}: want http(s)://host:port/derp, ws(s):// or tcp://host:port", url));
    std::string rest = url.substr(scheme.size());
    const auto slash = rest.find('/');
    const std::string path = slash == std::string::npos ? "/" : rest.substr(slash);
    if (path != "/derp") return unexpected(fmt::format("--url {}: the path must be /derp", url));
    const std::string hostport = rest.substr(0, slash);
    const auto split = split_host_port(hostport, tls ? "443" : "80");
    if (!split) return unexpected(fmt::format("--url {}: unclosed [", url));
    const auto& [host, port] = *split;
    return resolve_target(url, host, port, tls, websocket);
}

double percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    const auto index = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(index, sorted.size() - 1)];
}

}  // namespace derp::bench
