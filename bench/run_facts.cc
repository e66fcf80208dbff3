// The machine, server and time facts of a derpbench run record (see run_facts.hh).
#include "bench/run_facts.hh"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "bench/bench_util.hh"

namespace derp::bench {
namespace {

// The body of GET url (plain http://host:port/path) within timeout_ms, or "" on any failure:
// a fact that cannot be had is "unknown", never a failed measurement.
std::string http_get_body(const std::string& url, int timeout_ms) {
    constexpr std::string_view scheme = "http://";
    if (url.rfind(scheme, 0) != 0) return {};
    const std::string rest = url.substr(scheme.size());
    const auto slash = rest.find('/');
    const std::string hostport = rest.substr(0, slash), path = slash == std::string::npos ? "/" : rest.substr(slash);
    const auto split = split_host_port(hostport, "80");
    if (!split) return {};
    const auto& [host, port] = *split;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &list) != 0) return {};
    const int fd = ::socket(list->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    std::string response;
    if (fd >= 0) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        const auto wait = [&](short events) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
            pollfd p{fd, events, 0};
            return left > 0 && ::poll(&p, 1, static_cast<int>(left)) == 1;
        };
        const std::string request = fmt::format("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", path, hostport);
        if ((::connect(fd, list->ai_addr, list->ai_addrlen) == 0 || errno == EINPROGRESS) && wait(POLLOUT) &&
            ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
            char buffer[16384];
            while (response.size() < (8u << 20) && wait(POLLIN)) {
                const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
                if (n <= 0) break;
                response.append(buffer, static_cast<std::size_t>(n));
            }
        }
        ::close(fd);
    }
    freeaddrinfo(list);
    // Only a 200 counts; the body follows the blank line (derpd sends varz with a length).
    if (response.rfind("HTTP/1.1 200", 0) != 0 && response.rfind("HTTP/1.0 200", 0) != 0) return {};
    const auto body = response.find("\r\n\r\n");
    return body == std::string::npos ? std::string() : response.substr(body + 4);
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

machine_facts this_machine() {
    machine_facts m;
    m.cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
    m.cpu = "unknown";
    const std::string cpuinfo = read_text("/proc/cpuinfo");
    constexpr std::string_view key = "model name";
    if (const auto at = cpuinfo.find(key); at != std::string::npos) {
        const auto colon = cpuinfo.find(':', at);
        const auto end = cpuinfo.find('\n', at);
        if (colon != std::string::npos && colon < end) {
            std::string model = cpuinfo.substr(colon + 1, end - colon - 1);
            const auto first = model.find_first_not_of(' ');
            if (first != std::string::npos) m.cpu = model.substr(first);
        }
    }
    // "0.52 0.58 0.59 1/467 12345": the first figure.
    const std::string loadavg = read_text("/proc/loadavg");
    char* end = nullptr;
    const double load = std::strtod(loadavg.c_str(), &end);
    if (end != loadavg.c_str() && load >= 0) m.load_average = load;
    utsname u{};
    m.kernel = ::uname(&u) == 0 ? u.release : "unknown";
    return m;
}

std::string varz_url_for(const std::string& derp_url) {
    for (const std::string_view scheme : {"http://", "ws://"})
        if (derp_url.rfind(scheme, 0) == 0) {
            const std::string rest = derp_url.substr(scheme.size());
            return "http://" + rest.substr(0, rest.find('/')) + "/debug/varz";
        }
    return {};
}

server_facts server_of(const std::string& urls, const std::string& varz_url, pid_t server_pid, const std::string& flags_text) {
    server_facts s;
    s.url = urls;
    const varz_facts v = varz_url.empty() ? varz_facts{} : parse_varz_facts(http_get_body(varz_url, 2000));
    s.version = v.version;
    s.shards = v.shards;
    s.flags = flags_text;
    if (s.flags.empty() && server_pid > 0) {
        // argv after the program's name, NUL-separated in /proc.
        const std::string cmdline = read_text(fmt::format("/proc/{}/cmdline", server_pid));
        std::size_t at = cmdline.find('\0');
        while (at != std::string::npos && at + 1 < cmdline.size()) {
            const auto end = cmdline.find('\0', at + 1);
            s.flags += (s.flags.empty() ? "" : " ") + cmdline.substr(at + 1, end == std::string::npos ? end : end - at - 1);
            at = end;
        }
    }
    return s;
}

std::string utc_now_text() {
    const std::time_t now = std::time(nullptr);
    std::tm utc{};
    gmtime_r(&now, &utc);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
    return text;
}

}  // namespace derp::bench
