// The loopback DERP region for the mesh tests (see mesh_region.hh).
#include "tests/support/mesh_region.hh"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "crypto/box.hh"

namespace derp::test {
namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

[[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(what);
}

// Binds ip:port on a plain TCP socket (SO_REUSEADDR, as derpd's own probe) and closes it again;
// port 0 asks the kernel for one. The port bound, or 0 when the bind failed.
std::uint16_t try_bind(const std::string& ip, std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail(std::string("socket: ") + std::strerror(errno));
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1) fail("not an IPv4 address: " + ip);
    std::uint16_t bound = 0;
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
        socklen_t len = sizeof addr;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) bound = ntohs(addr.sin_port);
    }
    ::close(fd);
    return bound;
}

std::filesystem::path make_temp_dir() {
    std::string dir_template = (std::filesystem::temp_directory_path() / "derpd-region-XXXXXX").string();
    if (::mkdtemp(dir_template.data()) == nullptr) fail(std::string("mkdtemp: ") + std::strerror(errno));
    return dir_template;
}

}  // namespace

// ---- /debug/varz --------------------------------------------------------------------------------

std::string http_get_body(std::string_view ip, std::uint16_t port, std::string_view path) {
    const std::string where = "GET " + std::string(path) + " from " + std::string(ip) + ":" + std::to_string(port);
    tcp_conn conn = tcp_conn::connect_to(ip, port);
    const std::string request = "GET " + std::string(path) + " HTTP/1.1\r\nHost: " + std::string(ip) +
                                "\r\nConnection: close\r\n\r\n";
    if (conn.write_all(request) != io_status::ok) fail(where + ": write failed");
    std::string head;
    if (const io_status st = conn.read_http_head(head); st != io_status::ok)
        fail(where + ": reading the response head: " + std::string(to_string(st)));
    if (head.rfind("HTTP/1.1 200", 0) != 0) fail(where + ": " + head.substr(0, head.find('\r')));
    // derpd's admin listener keeps the connection open despite "Connection: close", so the body
    // ends where Content-Length says, not at the close.
    std::string lower = head;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const auto length_at = lower.find("\r\ncontent-length:");
    if (length_at == std::string::npos) {
        const auto closed = conn.wait_closed(default_io_timeout);
        if (closed.status == io_status::timeout) fail(where + ": no Content-Length and no close within 5 s");
        return std::string(closed.data_before.begin(), closed.data_before.end());
    }
    const std::size_t length = std::stoul(head.substr(length_at + 17));
    std::string body(length, '\0');
    if (const io_status st = conn.read_exact({reinterpret_cast<std::uint8_t*>(body.data()), body.size()});
        st != io_status::ok)
        fail(where + ": reading " + std::to_string(length) + " body bytes: " + std::string(to_string(st)));
    return body;
}

std::optional<double> varz_sum(std::string_view page, std::string_view name,
                               const std::vector<std::pair<std::string, std::string>>& labels) {
    std::optional<double> sum;
    std::size_t at = 0;
    while (at < page.size()) {
        auto end = page.find('\n', at);
        if (end == std::string_view::npos) end = page.size();
        const std::string_view line = page.substr(at, end - at);
        at = end + 1;
        if (line.empty() || line[0] == '#' || !line.starts_with(name)) continue;
        std::string_view rest = line.substr(name.size());
        std::vector<std::pair<std::string_view, std::string_view>> have;
        if (!rest.empty() && rest[0] == '{') {
            const auto close = rest.find('}');
            if (close == std::string_view::npos) continue;
            std::string_view list = rest.substr(1, close - 1);
            rest = rest.substr(close + 1);
            while (!list.empty()) {
                const auto eq = list.find("=\"");
                if (eq == std::string_view::npos) break;
                const auto quote = list.find('"', eq + 2);
                if (quote == std::string_view::npos) break;
                have.emplace_back(list.substr(0, eq), list.substr(eq + 2, quote - eq - 2));
                list = list.substr(quote + 1);
                if (!list.empty() && list[0] == ',') list.remove_prefix(1);
            }
        }
        if (rest.empty() || rest[0] != ' ') continue;  // another metric whose name starts with name
        bool match = true;
        for (const auto& [label, want] : labels) {
            bool found = false;
            for (const auto& [k, v] : have) {
                if (k != label) continue;
                found = want.ends_with('*') ? v.starts_with(std::string_view(want).substr(0, want.size() - 1))
                                            : v == want;
            }
            match = match && found;
        }
        if (!match) continue;
        sum = sum.value_or(0) + std::stod(std::string(rest.substr(1)));
    }
    return sum;
}

std::vector<std::pair<std::string, std::string>> peer_label(std::string_view host) {
    return {{"peer", std::string(host) + "*"}};
}

std::chrono::milliseconds wait_until(const std::function<bool()>& done, milliseconds timeout, std::string_view what,
                                     const std::function<std::string()>& describe) {
    const auto start = clock_type::now();
    for (;;) {
        if (done()) return std::chrono::duration_cast<milliseconds>(clock_type::now() - start);
        if (clock_type::now() - start > timeout)
            fail("waited " + std::to_string(timeout.count()) + " ms for " + std::string(what) +
                 (describe ? "\n" + describe() : std::string()));
        std::this_thread::sleep_for(milliseconds(20));
    }
}

namespace {

// Calls each(line) for the lines holding both needle and also, until it returns false.
template <typename Each>
void for_matching_lines(std::string_view log, std::string_view needle, std::string_view also, Each each) {
    std::size_t at = 0;
    while (at < log.size()) {
        auto end = log.find('\n', at);
        if (end == std::string_view::npos) end = log.size();
        const std::string_view line = log.substr(at, end - at);
        at = end + 1;
        if (line.find(needle) != std::string_view::npos && line.find(also) != std::string_view::npos && !each(line))
            return;
    }
}

}  // namespace

std::size_t count_log_lines(std::string_view log, std::string_view needle, std::string_view also) {
    std::size_t count = 0;
    for_matching_lines(log, needle, also, [&](std::string_view) { return ++count, true; });
    return count;
}

std::string first_log_line(std::string_view log, std::string_view needle, std::string_view also) {
    std::string out;
    for_matching_lines(log, needle, also, [&](std::string_view line) { return out = line, false; });
    return out;
}

namespace {

constexpr std::string_view probe_prefix = "mesh-test-probe:";

bool is_recv_packet(const frame& f) {
    return f.type == static_cast<std::uint8_t>(frame_type::recv_packet);
}

// The next frame if one starts within `window` (KeepAlives included), read whole.
std::optional<frame> next_frame_within(derp_client& c, milliseconds window) {
    if (c.conn().quiet_for(window)) return std::nullopt;
    frame_read r = c.next(default_io_timeout, true);
    if (r.status != io_status::ok)
        fail("client " + c.key().to_string() + ": stream ended: " + std::string(to_string(r.status)));
    return std::move(r.f);
}

milliseconds left_until(clock_type::time_point deadline) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now());
    return left.count() > 0 ? left : milliseconds(0);
}

}  // namespace

bool is_probe(std::span<const std::uint8_t> packet) {
    return packet.size() >= probe_prefix.size() &&
           std::equal(probe_prefix.begin(), probe_prefix.end(), packet.begin(),
                      [](char a, std::uint8_t b) { return static_cast<std::uint8_t>(a) == b; });
}

milliseconds probe_until_delivered(derp_client& from, derp_client& to, milliseconds timeout,
                                   std::vector<frame>* others) {
    const auto start = clock_type::now();
    const auto deadline = start + timeout;
    for (std::uint64_t n = 0;; ++n) {
        const std::string text = std::string(probe_prefix) + std::to_string(n);
        from.send_packet(to.key(), {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
        const auto round_end = clock_type::now() + milliseconds(50);
        while (clock_type::now() < round_end) {
            auto f = next_frame_within(to, left_until(round_end));
            if (!f) break;
            if (is_recv_packet(*f)) {
                const auto view = decode_recv_packet(f->payload);
                if (view && view->src == from.key() && is_probe(view->packet))
                    return std::chrono::duration_cast<milliseconds>(clock_type::now() - start);
            }
            if (others != nullptr) others->push_back(std::move(*f));
        }
        if (clock_type::now() > deadline)
            fail("no probe from " + from.key().to_string() + " reached " + to.key().to_string() + " in " +
                 std::to_string(timeout.count()) + " ms (" + std::to_string(n + 1) + " sent)");
    }
}

void expect_payload(derp_client& c, const node_key& src, const bytes& payload, milliseconds timeout,
                    std::vector<frame>* others) {
    const auto deadline = clock_type::now() + timeout;
    for (;;) {
        auto f = next_frame_within(c, left_until(deadline));
        if (!f)
            fail("no packet of " + std::to_string(payload.size()) + " bytes from " + src.to_string() + " reached " +
                 c.key().to_string() + " in " + std::to_string(timeout.count()) + " ms");
        if (is_recv_packet(*f)) {
            const auto view = decode_recv_packet(f->payload);
            if (view && view->src == src && std::equal(view->packet.begin(), view->packet.end(), payload.begin(),
                                                       payload.end()))
                return;
        }
        if (others != nullptr) others->push_back(std::move(*f));
    }
}

std::size_t packets_from_within(derp_client& c, const node_key& src, milliseconds window, std::vector<frame>* others) {
    const auto deadline = clock_type::now() + window;
    std::size_t count = 0;
    while (auto f = next_frame_within(c, left_until(deadline))) {
        if (is_recv_packet(*f)) {
            const auto view = decode_recv_packet(f->payload);
            if (view && view->src == src) {
                ++count;
                continue;
            }
        }
        if (others != nullptr) others->push_back(std::move(*f));
    }
    return count;
}

std::string mesh_psk_for(std::uint8_t seed) {
    std::string out;
    for (int i = 0; i < 32; ++i) {
        char hex[3];
        std::snprintf(hex, sizeof hex, "%02x", (seed * 37 + i * 11 + 5) & 0xff);
        out += hex;
    }
    return out + "\n";
}

// ---- The region ---------------------------------------------------------------------------------

mesh_region::mesh_region(std::vector<mesh_node_spec> nodes, int shards)
    : _specs(std::move(nodes)), _shards(shards), _dir(make_temp_dir()), _ca_file(_dir / "ca.pem") {
    _ca.write_cert(_ca_file);
    std::filesystem::create_directory(_dir / "certs");
    for (const auto& spec : _specs) _ca.issue(_dir / "certs", spec.ip, {spec.ip});
}

mesh_region::~mesh_region() {
    _nodes.clear();  // each stops its derpd (and fails the test if one does not stop cleanly)
    std::error_code ec;
    std::filesystem::remove_all(_dir, ec);
}

derpd_options mesh_region::options_for(std::size_t i) const {
    const mesh_node_spec& spec = _specs.at(i);
    derpd_options o;
    o.shards = _shards;
    o.mesh_psk = spec.mesh_psk;
    o.listen_ip = spec.ip;
    o.port = _port;
    o.hostname = spec.ip;
    o.certdir = _dir / "certs";
    o.admin_addr = spec.ip + ":0";
    o.env = {"SSL_CERT_FILE=" + _ca_file.string()};
    std::string list;
    for (const auto& ip : spec.mesh_with_ips) list += (list.empty() ? "" : ",") + ip + ":" + std::to_string(_port);
    for (const auto& raw : spec.mesh_with_raw) list += (list.empty() ? "" : ",") + raw;
    if (!list.empty()) o.extra_args = {"-mesh-with", list};
    return o;
}

void mesh_region::start() {
    constexpr int attempts_max = 20;
    std::string last_error;
    for (int attempt = 0; attempt < attempts_max; ++attempt) {
        _nodes.clear();
        _port = try_bind(_specs.front().ip, 0);
        if (_port == 0) fail("cannot bind " + _specs.front().ip + ":0");
        bool free_everywhere = true;
        for (const auto& spec : _specs) free_everywhere = free_everywhere && try_bind(spec.ip, _port) == _port;
        if (!free_everywhere) continue;
        try {
            for (std::size_t i = 0; i < _specs.size(); ++i)
                _nodes.push_back(std::make_unique<derpd_process>(options_for(i)));
            return;
        } catch (const std::runtime_error& e) {
            last_error = e.what();
            if (last_error.find("address already in use") == std::string::npos) throw;
        }
    }
    fail("no port bound on every node's address in " + std::to_string(attempts_max) + " tries; last: " + last_error);
}

std::shared_ptr<tls::context> mesh_region::client_context(const std::string& ip) {
    for (const auto& [name, ctx] : _contexts)
        if (name == ip) return ctx;
    tls::context::client_options o;
    o.server_name = ip;
    o.verify = tls::context::verify_mode::system;
    o.ca_file = _ca_file.string();
    auto ctx = tls::context::make_client(o);
    if (!ctx) fail("client TLS context for " + ip + ": " + ctx.error());
    _contexts.emplace_back(ip, ctx.value());
    return ctx.value();
}

derp_client mesh_region::connect(std::size_t i, client_options options) {
    options.address = ip(i);
    options.tls = client_context(ip(i));
    return derp_client::connect(_port, node(i).server_public(), std::move(options));
}

std::string mesh_region::varz(std::size_t i) {
    try {
        return http_get_body(ip(i), node(i).admin_port(), "/debug/varz");
    } catch (const std::runtime_error& e) {
        const bool up = node(i).running();
        fail("node " + ip(i) + " (" + (up ? "running" : "exited") + "): /debug/varz: " + e.what() + "\n--- node " +
             ip(i) + " log tail ---\n" + node(i).log_tail(60));
    }
}

double mesh_region::metric(std::size_t i, std::string_view name,
                           const std::vector<std::pair<std::string, std::string>>& labels) {
    return varz_sum(varz(i), name, labels).value_or(0);
}

milliseconds mesh_region::wait_metric(std::size_t i, std::string_view name,
                                      const std::vector<std::pair<std::string, std::string>>& labels,
                                      const std::function<bool(double)>& ok, milliseconds timeout,
                                      std::string_view what) {
    std::optional<double> last;
    return wait_until(
        [&] {
            last = varz_sum(varz(i), name, labels);
            return ok(last.value_or(0));
        },
        timeout, what, [&] {
            return "node " + ip(i) + ": " + std::string(name) + " = " +
                   (last ? std::to_string(*last) : std::string("(no sample)")) + "\n" + logs();
        });
}

milliseconds mesh_region::wait_converged(milliseconds timeout, std::vector<std::size_t> only) {
    if (only.empty())
        for (std::size_t i = 0; i < size(); ++i) only.push_back(i);
    std::string missing;
    return wait_until(
        [&] {
            missing.clear();
            for (std::size_t i : only) {
                const std::string page = varz(i);
                for (const auto& peer : _specs[i].mesh_with_ips) {
                    if (peer == ip(i)) continue;
                    if (varz_sum(page, "derpd_mesh_peer_up", peer_label(peer)).value_or(0) != 1)
                        missing += " " + ip(i) + "->" + peer;
                }
            }
            return missing.empty();
        },
        timeout, "the region to converge (derpd_mesh_peer_up == 1 everywhere)",
        [&] { return "not up:" + missing + "\n" + logs(); });
}

std::string mesh_region::logs(std::size_t lines) const {
    std::string out;
    for (std::size_t i = 0; i < _nodes.size(); ++i)
        out += "--- node " + _specs[i].ip + " log tail ---\n" + _nodes[i]->log_tail(lines) + "\n";
    return out;
}

}  // namespace derp::test
