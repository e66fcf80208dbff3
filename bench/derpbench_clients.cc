// derpbench's servers (--url parsing) and the percentile of its latency workload (see
// derpbench_clients.hh).
#include "bench/derpbench_clients.hh"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>

#include <fmt/format.h>

#include "bench/bench_util.hh"

namespace derp::bench {

// http(s)://host[:port]/derp or ws(s)://host[:port]/derp -> the address to dial.
result<target, std::string> parse_url(const std::string& url) {
    const bool websocket = url.rfind("ws://", 0) == 0 || url.rfind("wss://", 0) == 0;
    const bool tls = url.rfind("https://", 0) == 0 || url.rfind("wss://", 0) == 0;
    const std::string_view scheme = websocket ? (tls ? "wss://" : "ws://") : (tls ? "https://" : "http://");
    if (url.rfind(scheme, 0) != 0) return unexpected(fmt::format("--url {}: want http(s)://host:port/derp or ws(s)://", url));
    std::string rest = url.substr(scheme.size());
    const auto slash = rest.find('/');
    const std::string path = slash == std::string::npos ? "/" : rest.substr(slash);
    if (path != "/derp") return unexpected(fmt::format("--url {}: the path must be /derp", url));
    const std::string hostport = rest.substr(0, slash);
    const auto split = split_host_port(hostport, tls ? "443" : "80");
    if (!split) return unexpected(fmt::format("--url {}: unclosed [", url));
    const auto& [host, port] = *split;
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

double percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    const auto index = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(index, sorted.size() - 1)];
}

}  // namespace derp::bench
