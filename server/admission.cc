// The admission thread (see admission.hh): a poll(2) loop over every request in flight.
#include "server/admission.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include "core/http_response.hh"
#include "ring/log.hh"

namespace derp::server {
namespace {

using ring::log_level;

std::uint64_t now_ns() noexcept {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

// The client's address as derper sends it in Source: the IP without the port, IPv4 as a.b.c.d.
std::string ip_text(const ip16& ip) {
    char text[INET6_ADDRSTRLEN] = {};
    static constexpr std::uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(ip.data(), v4_prefix, 12) == 0)
        inet_ntop(AF_INET, ip.data() + 12, text, sizeof text);
    else
        inet_ntop(AF_INET6, ip.data(), text, sizeof text);
    return text;
}

// What is kept of an answer: its head and up to this much body. Whois answers with a full
// node and profile are a few KiB; the controller's is read up to 4 KiB as derper does.
constexpr std::size_t answer_body_bytes_max = 64 * 1024;
// Definite answers remembered at most; past it, expired ones go, then all.
constexpr std::size_t cache_entries_max = 65'536;
// How long a resolved controller host name is used before it is looked up again.
constexpr std::uint64_t resolve_ttl_ns = 60'000'000'000;

}  // namespace

const char* to_string(admission_outcome outcome) noexcept {
    switch (outcome) {
    case admission_outcome::allowed: return "allowed";
    case admission_outcome::denied: return "denied";
    case admission_outcome::error_allowed: return "error_allowed";
    case admission_outcome::error_denied: return "error_denied";
    }
    return "unknown";
}

// One HTTP/1.1 exchange (Connection: close) on a non-blocking socket, in TLS for an https://
// controller: the TLS session is the project's in-memory engine, so the same poll loop moves
// its records (handshake first, then the request once the session is open).
struct admission_checker::exchange {
    enum class stage : std::uint8_t { whois, controller, status };  // status: the self-check's first step
    stage kind = stage::whois;
    std::string cache_key;  // the decision it serves
    int fd = -1;
    bool connected = false;
    std::string out;         // the request, plaintext
    bool out_queued = false; // the request is in `wire` (at once in plain HTTP; after the handshake in TLS)
    std::string wire;        // bytes for the socket: the request, or TLS records
    std::size_t sent = 0;    // of wire
    std::string in;          // the answer, plaintext
    std::unique_ptr<tls::session> tls;
    std::uint64_t deadline_ns = 0;
    bool all_sent() const noexcept { return out_queued && sent == wire.size(); }
    ~exchange() {
        if (fd >= 0) ::close(fd);
    }
};

struct admission_checker::pending {
    node_key key;
    ip16 ip{};
    std::vector<conn_ref> waiters;
    bool self_check = false;  // the /debug/check self-check's decision (no waiters, never cached)
};

result<std::unique_ptr<admission_checker>, std::string> admission_checker::make(admission_settings settings,
                                                                                std::uint32_t shard_count) {
    std::unique_ptr<admission_checker> made(new admission_checker(std::move(settings), shard_count));
    const auto& s = made->_settings;
    if (!s.url.empty()) {
        made->_url = parse_http_url(s.url);
        if (!made->_url) return unexpected(fmt::format("-verify-client-url: \"{}\" is not an http:// or https:// URL", s.url));
        if (made->_url->tls) {
            tls::context::client_options options;
            options.server_name = made->_url->host;
            options.verify = tls::context::verify_mode::system;
            auto ctx = tls::context::make_client(options);
            if (!ctx) return unexpected("-verify-client-url: TLS: " + ctx.error());
            made->_tls = std::move(ctx.value());
        }
    }
    if (s.verify_clients && s.socket_path.size() >= sizeof(sockaddr_un{}.sun_path))
        return unexpected(fmt::format("-socket: path \"{}\" is longer than a Unix socket path may be", s.socket_path));
    made->_event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (made->_event_fd < 0) return unexpected(fmt::format("admission: eventfd: {}", std::strerror(errno)));
    return made;
}

admission_checker::admission_checker(admission_settings settings, std::uint32_t shard_count)
    : _settings(std::move(settings)), _shards(shard_count), _inboxes(std::make_unique<inbox[]>(shard_count)) {}

admission_checker::~admission_checker() {
    {
        std::lock_guard lock(_mutex);
        _stop = true;
    }
    const std::uint64_t one = 1;
    if (_event_fd >= 0) [[maybe_unused]] auto n = ::write(_event_fd, &one, sizeof one);
    if (_thread.joinable()) _thread.join();
    if (_event_fd >= 0) ::close(_event_fd);
}

void admission_checker::start(std::function<void(std::uint32_t)> wake) {
    _wake = std::move(wake);
    _thread = std::thread([this] { run(); });
}

void admission_checker::submit(const conn_ref& conn, const node_key& key, const ip16& ip) {
    {
        std::lock_guard lock(_mutex);
        _submitted.push_back({conn, key, ip});
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(_event_fd, &one, sizeof one);
}

std::string admission_checker::self_check_problem() const {
    std::lock_guard lock(_self_mutex);
    if (!_self_done) return "verifyClient self-check: no answer from local tailscaled yet";
    return _self_problem;
}

void admission_checker::take(std::uint32_t shard, std::vector<admission_decision>& out) {
    inbox& box = _inboxes[shard];
    if (!box.ready.load(std::memory_order_acquire)) return;
    std::lock_guard lock(box.mutex);
    box.ready.store(false, std::memory_order_relaxed);
    for (auto& d : box.decisions) out.push_back(std::move(d));
    box.decisions.clear();
}

void admission_checker::deliver(admission_decision decision) {
    const std::uint32_t shard = decision.conn.shard;
    if (shard >= _shards) return;
    {
        std::lock_guard lock(_inboxes[shard].mutex);
        _inboxes[shard].decisions.push_back(std::move(decision));
        _inboxes[shard].ready.store(true, std::memory_order_release);
    }
    if (_wake) _wake(shard);
}

void admission_checker::run() {
    struct cached {
        admission_outcome outcome;
        std::string reason;
        std::uint64_t expires_ns;
    };
    std::unordered_map<std::string, cached> cache;
    std::unordered_map<std::string, pending> deciding;
    std::vector<std::unique_ptr<exchange>> in_flight;
    std::deque<std::unique_ptr<exchange>> waiting;  // over requests_in_flight_max
    std::vector<sockaddr_storage> controller_addresses;
    socklen_t controller_length = 0;
    std::uint64_t resolved_ns = 0;
    std::string resolve_error;

    // The controller's address: an IP literal at once, a name through getaddrinfo (blocking
    // this thread only, at most once a minute).
    auto controller_address = [&](sockaddr_storage& out, socklen_t& length) -> std::string {
        const std::uint64_t now = now_ns();
        if (resolved_ns == 0 || now - resolved_ns > resolve_ttl_ns) {
            resolved_ns = now;
            controller_addresses.clear();
            resolve_error.clear();
            addrinfo hints{};
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;
            hints.ai_flags = AI_NUMERICSERV;
            addrinfo* list = nullptr;
            const std::string port = std::to_string(_url->port);
            if (const int err = getaddrinfo(_url->host.c_str(), port.c_str(), &hints, &list); err != 0) {
                resolve_error = fmt::format("resolving {}: {}", _url->host, gai_strerror(err));
            } else {
                for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
                    sockaddr_storage s{};
                    std::memcpy(&s, a->ai_addr, a->ai_addrlen);
                    controller_addresses.push_back(s);
                    controller_length = a->ai_addrlen;
                    break;  // the first address, as Go's dialer tries first
                }
                freeaddrinfo(list);
            }
        }
        if (controller_addresses.empty()) return resolve_error.empty() ? "no address" : resolve_error;
        out = controller_addresses.front();
        length = controller_length;
        return {};
    };

    // The self-check: one run at a time, the next self_check_interval_ns after the last ended.
    bool self_running = false;
    std::uint64_t self_next_ns = 0;
    auto self_checked = [&](std::string problem) {
        if (!problem.empty()) ring::log(log_level::warn, "admission: /debug/check self-check: {}", problem);
        {
            std::lock_guard lock(_self_mutex);
            _self_done = true;
            _self_problem = std::move(problem);
        }
        self_running = false;
        self_next_ns = now_ns() + self_check_interval_ns;
    };

    auto finish_decision = [&](const std::string& cache_key, admission_outcome outcome, std::string reason) {
        auto it = deciding.find(cache_key);
        if (it == deciding.end()) return;
        if (it->second.self_check) {
            // derper's verifyClient returns no error for an admission, nor for a controller it
            // could not reach with fail-open.
            const bool admitted = outcome == admission_outcome::allowed || outcome == admission_outcome::error_allowed;
            self_checked(admitted ? std::string() : "verifyClient for self nodekey: " + reason);
            deciding.erase(it);
            return;
        }
        if (_settings.cache_ns > 0 && (outcome == admission_outcome::allowed || outcome == admission_outcome::denied)) {
            if (cache.size() >= cache_entries_max) {
                const std::uint64_t now = now_ns();
                std::erase_if(cache, [now](const auto& e) { return e.second.expires_ns <= now; });
                if (cache.size() >= cache_entries_max) cache.clear();
            }
            cache[cache_key] = {outcome, reason, now_ns() + static_cast<std::uint64_t>(_settings.cache_ns)};
        }
        for (const auto& w : it->second.waiters) deliver({w, it->second.key, outcome, false, reason});
        deciding.erase(it);
    };

    // Starts (or queues) the request for one stage of a decision; a failure to even begin is
    // that stage's transport error.
    std::function<void(const std::string&, exchange::stage)> begin;
    std::function<void(exchange&, std::string)> conclude;  // transport error text, or "" for an answer

    auto open_exchange = [&](exchange& x) -> std::string {
        sockaddr_storage address{};
        socklen_t length = 0;
        if (x.kind != exchange::stage::controller) {  // tailscaled's LocalAPI
            auto* un = reinterpret_cast<sockaddr_un*>(&address);
            un->sun_family = AF_UNIX;
            std::memcpy(un->sun_path, _settings.socket_path.data(), _settings.socket_path.size());
            length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + _settings.socket_path.size() + 1);
        } else if (auto problem = controller_address(address, length); !problem.empty()) {
            return problem;
        }
        x.fd = ::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (x.fd < 0) return fmt::format("socket: {}", std::strerror(errno));
        if (address.ss_family != AF_UNIX) {
            const int one = 1;
            ::setsockopt(x.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        if (::connect(x.fd, reinterpret_cast<const sockaddr*>(&address), length) == 0) {
            x.connected = true;
        } else if (errno != EINPROGRESS) {
            return fmt::format("connect: {}", std::strerror(errno));
        }
        return {};
    };

    begin = [&](const std::string& cache_key, exchange::stage kind) {
        const pending& p = deciding.at(cache_key);
        auto x = std::make_unique<exchange>();
        x->kind = kind;
        x->cache_key = cache_key;
        if (kind == exchange::stage::whois) {
            x->out = fmt::format("GET /localapi/v0/whois?addr=nodekey:{} HTTP/1.1\r\nHost: local-tailscaled.sock\r\n"
                                 "User-Agent: derpd\r\nConnection: close\r\n\r\n",
                                 p.key.to_string());
        } else {
            const std::string body = admission_request_json(p.key, ip_text(p.ip));
            const bool v6 = _url->host.find(':') != std::string::npos;
            const std::string host = v6 ? "[" + _url->host + "]" : _url->host;
            x->out = fmt::format("POST {} HTTP/1.1\r\nHost: {}{}\r\nUser-Agent: derpd\r\nContent-Type: application/json\r\n"
                                 "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                                 _url->target, host, _url->port == 80 ? "" : fmt::format(":{}", _url->port),
                                 body.size(), body);
        }
        if (kind == exchange::stage::controller && _tls) {
            x->tls = std::make_unique<tls::session>(_tls, false);
            x->tls->start(x->wire);  // the ClientHello, sent once connected
        } else {
            x->wire = x->out;
            x->out_queued = true;
        }
        if (in_flight.size() >= _settings.requests_in_flight_max) {
            waiting.push_back(std::move(x));
            return;
        }
        x->deadline_ns = now_ns() + static_cast<std::uint64_t>(_settings.timeout_ns);
        if (auto problem = open_exchange(*x); !problem.empty()) {
            conclude(*x, problem);
            return;
        }
        in_flight.push_back(std::move(x));
    };

    // An exchange ended: with an answer in x.in (problem empty) or a transport problem.
    conclude = [&](exchange& x, std::string problem) {
        const std::string cache_key = x.cache_key;
        const auto kind = x.kind;
        http_response_head head;
        std::string body;
        if (problem.empty()) {
            const auto verdict = parse_http_response_head(x.in, head);
            if (verdict.state != http_response_parse::complete) {
                problem = verdict.state == http_response_parse::error ? "malformed answer: " + verdict.error
                                                                      : "connection closed before a whole answer";
            } else {
                const std::string_view rest = std::string_view(x.in).substr(head.head_bytes);
                const auto te = head.field("Transfer-Encoding");
                if (te && te->find("chunked") != std::string_view::npos) {
                    if (decode_chunked(rest, answer_body_bytes_max, body).state != http_response_parse::complete)
                        problem = "malformed chunked answer";
                } else {
                    body = std::string(rest);
                }
            }
        }
        if (kind == exchange::stage::status) {
            std::optional<node_key> self;
            if (problem.empty() && head.status != 200)
                problem = fmt::format("HTTP {}", head.status);
            else if (problem.empty() && !(self = status_self_key(body)))
                problem = "the answer has no Self.PublicKey";
            if (!problem.empty()) {
                self_checked("localClient.Status: " + problem);
                return;
            }
            // A decision of its own (never joined with a client's, never cached), from ::1.
            const std::string self_key = "self|" + self->to_string();
            auto [it, fresh] = deciding.try_emplace(self_key);
            if (!fresh) return;  // still deciding from the last run (cannot outlive its timeout)
            it->second.key = *self;
            it->second.ip = ip16{};
            it->second.ip[15] = 1;
            it->second.self_check = true;
            begin(self_key, exchange::stage::whois);
            return;
        }
        if (kind == exchange::stage::whois) {
            if (!problem.empty()) {
                finish_decision(cache_key, admission_outcome::error_denied,
                                "failed to query local tailscaled status: " + problem);
            } else if (head.status == 404) {
                finish_decision(cache_key, admission_outcome::denied, "not authorized (not found in local tailscaled)");
            } else if (head.status != 200) {
                std::string text = body.substr(0, 200);
                std::erase_if(text, [](char ch) { return ch == '\n' || ch == '\r'; });
                const bool old = text.find("invalid 'addr' parameter") != std::string::npos;
                finish_decision(cache_key, admission_outcome::error_denied,
                                fmt::format("failed to query local tailscaled status{}: HTTP {}: {}",
                                            old ? " (check tailscaled version)" : "", head.status, text));
            } else if (!whois_answer_valid(body)) {
                finish_decision(cache_key, admission_outcome::error_denied,
                                "failed to query local tailscaled status: the whois answer is not valid JSON");
            } else if (_url) {
                begin(cache_key, exchange::stage::controller);
            } else {
                finish_decision(cache_key, admission_outcome::allowed, {});
            }
            return;
        }
        if (!problem.empty()) {
            if (_settings.fail_open)
                finish_decision(cache_key, admission_outcome::error_allowed,
                                "admission controller unreachable (" + problem + "); allowing client");
            else
                finish_decision(cache_key, admission_outcome::error_denied, "admission controller unreachable: " + problem);
            return;
        }
        if (head.status != 200) {
            finish_decision(cache_key, admission_outcome::denied,
                            fmt::format("admission controller: HTTP {}", head.status));
            return;
        }
        switch (parse_admission_answer(std::string_view(body).substr(0, admission_answer_bytes_max))) {
        case admission_answer::allow: finish_decision(cache_key, admission_outcome::allowed, {}); break;
        case admission_answer::deny: finish_decision(cache_key, admission_outcome::denied, "admission controller: not allowed"); break;
        case admission_answer::invalid:
            finish_decision(cache_key, admission_outcome::denied, "admission controller: undecodable answer");
            break;
        }
    };

    std::vector<request> batch;
    std::vector<pollfd> fds;
    for (;;) {
        {
            std::lock_guard lock(_mutex);
            if (_stop) return;
            batch.assign(_submitted.begin(), _submitted.end());
            _submitted.clear();
        }
        std::uint64_t drained = 0;
        [[maybe_unused]] auto n = ::read(_event_fd, &drained, sizeof drained);
        const std::uint64_t now = now_ns();
        for (const auto& r : batch) {
            std::string cache_key(r.key.to_string());
            if (_url) cache_key += "|" + ip_text(r.ip);
            if (auto hit = cache.find(cache_key); hit != cache.end()) {
                if (hit->second.expires_ns > now) {
                    deliver({r.conn, r.key, hit->second.outcome, true, hit->second.reason});
                    continue;
                }
                cache.erase(hit);
            }
            auto [it, fresh] = deciding.try_emplace(cache_key);
            it->second.waiters.push_back(r.conn);
            if (!fresh) continue;  // the same question is already being asked
            it->second.key = r.key;
            it->second.ip = r.ip;
            begin(cache_key, _settings.verify_clients ? exchange::stage::whois : exchange::stage::controller);
        }
        batch.clear();
        if (_settings.verify_clients && !self_running && now >= self_next_ns) {
            self_running = true;
            auto x = std::make_unique<exchange>();
            x->kind = exchange::stage::status;
            x->out = "GET /localapi/v0/status?peers=false HTTP/1.1\r\nHost: local-tailscaled.sock\r\n"
                     "User-Agent: derpd\r\nConnection: close\r\n\r\n";
            x->wire = x->out;
            x->out_queued = true;
            x->deadline_ns = now + static_cast<std::uint64_t>(_settings.timeout_ns);
            if (auto problem = open_exchange(*x); !problem.empty())
                conclude(*x, problem);
            else
                in_flight.push_back(std::move(x));
        }

        fds.clear();
        fds.push_back({_event_fd, POLLIN, 0});
        std::uint64_t next_deadline = now + 1'000'000'000;
        for (const auto& x : in_flight) {
            const bool writing = !x->connected || x->sent < x->wire.size();
            fds.push_back({x->fd, static_cast<short>(writing ? POLLOUT : POLLIN), 0});
            next_deadline = std::min(next_deadline, x->deadline_ns);
        }
        const int wait_ms = next_deadline <= now ? 0 : static_cast<int>((next_deadline - now + 999'999) / 1'000'000);
        if (::poll(fds.data(), fds.size(), wait_ms) < 0 && errno != EINTR) {
            ring::log(log_level::error, "admission: poll: {}", std::strerror(errno));
            return;
        }
        const std::uint64_t after = now_ns();
        // Each exchange: move bytes, then settle the ones that ended or ran out of time.
        std::vector<std::pair<std::size_t, std::string>> ended;  // index, problem ("" = answer complete)
        for (std::size_t i = 0; i < in_flight.size(); ++i) {
            exchange& x = *in_flight[i];
            const short revents = fds[i + 1].revents;
            bool done = false;
            std::string problem;
            if (revents != 0 && !x.connected) {
                int error = 0;
                socklen_t length = sizeof error;
                ::getsockopt(x.fd, SOL_SOCKET, SO_ERROR, &error, &length);
                if (error != 0) {
                    done = true;
                    problem = fmt::format("connect: {}", std::strerror(error));
                } else {
                    x.connected = true;
                }
            }
            bool progress = true;
            while (!done && x.connected && progress) {
                progress = false;
                while (!done && x.sent < x.wire.size()) {
                    const ssize_t w = ::send(x.fd, x.wire.data() + x.sent, x.wire.size() - x.sent, MSG_NOSIGNAL);
                    if (w > 0) {
                        x.sent += static_cast<std::size_t>(w);
                    } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                        break;
                    } else {
                        done = true;
                        problem = fmt::format("send: {}", std::strerror(errno));
                    }
                }
                if (x.sent == x.wire.size()) {
                    x.wire.clear();
                    x.sent = 0;
                }
                if (done || x.sent != 0 || (revents & (POLLIN | POLLHUP | POLLERR)) == 0) break;
                // Readable: the answer (plain), or TLS records (handshake, then the answer).
                char buffer[16384];
                const ssize_t r = ::recv(x.fd, buffer, sizeof buffer, 0);
                if (r > 0) {
                    progress = true;
                    if (x.tls) {
                        std::string plain;
                        const auto before = x.tls->state();
                        x.tls->feed({reinterpret_cast<const std::uint8_t*>(buffer), static_cast<std::size_t>(r)}, plain, x.wire);
                        if (x.tls->state() == tls::status::failed) {
                            done = true;
                            problem = "TLS: " + x.tls->error();
                            break;
                        }
                        if (before == tls::status::handshaking && x.tls->state() == tls::status::open && !x.out_queued) {
                            std::vector<std::uint8_t> records(x.out.size() + 1024);
                            std::string spill;
                            const std::size_t sealed = x.tls->write({reinterpret_cast<const std::uint8_t*>(x.out.data()), x.out.size()}, records, spill);
                            x.wire.append(reinterpret_cast<const char*>(records.data()), sealed);
                            x.wire += spill;
                            x.out_queued = true;
                        }
                        if (plain.empty() && x.tls->state() != tls::status::closed) continue;
                        if (!x.out_queued) {
                            done = true;
                            problem = "TLS: the controller closed during the handshake";
                            break;
                        }
                        x.in += plain;
                        if (x.tls->state() == tls::status::closed) {
                            done = true;  // close_notify: the answer is whole (or the parser says not)
                            break;
                        }
                    } else {
                        x.in.append(buffer, static_cast<std::size_t>(r));
                    }
                    // Enough of an answer: a head plus its declared body, or more than is kept.
                    http_response_head head;
                    if (parse_http_response_head(x.in, head).state == http_response_parse::complete) {
                        const std::size_t body_bytes = x.in.size() - head.head_bytes;
                        if (auto cl = head.field("Content-Length")) {
                            std::size_t declared = 0;
                            for (const char ch : *cl) declared = ch >= '0' && ch <= '9' ? declared * 10 + static_cast<std::size_t>(ch - '0') : declared;
                            if (body_bytes >= declared) done = true;
                        }
                        if (body_bytes >= answer_body_bytes_max) {
                            x.in.resize(head.head_bytes + answer_body_bytes_max);
                            done = true;
                        }
                    } else if (x.in.size() > http_response_head_bytes_max) {
                        done = true;  // the parser reports the oversize head
                    }
                } else if (r == 0) {
                    done = true;
                    if (!x.out_queued) problem = "TLS: the controller closed during the handshake";
                } else if (errno == EAGAIN || errno == EINTR) {
                    break;
                } else {
                    done = true;
                    problem = fmt::format("recv: {}", std::strerror(errno));
                }
            }
            if (!done && after >= x.deadline_ns) {
                done = true;
                problem = fmt::format("no answer within {} ms", _settings.timeout_ns / 1'000'000);
            }
            if (done) ended.emplace_back(i, std::move(problem));
        }
        // Settle from the back so that indices stay valid; conclude may begin new exchanges,
        // which are appended and looked at next turn.
        std::vector<std::unique_ptr<exchange>> finished;
        for (auto it = ended.rbegin(); it != ended.rend(); ++it) {
            finished.push_back(std::move(in_flight[it->first]));
            in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(it->first));
        }
        for (std::size_t k = 0; k < finished.size(); ++k) conclude(*finished[k], ended[ended.size() - 1 - k].second);
        while (!waiting.empty() && in_flight.size() < _settings.requests_in_flight_max) {
            auto x = std::move(waiting.front());
            waiting.pop_front();
            x->deadline_ns = now_ns() + static_cast<std::uint64_t>(_settings.timeout_ns);
            if (auto problem = open_exchange(*x); !problem.empty()) {
                conclude(*x, problem);
                continue;
            }
            in_flight.push_back(std::move(x));
        }
    }
}

}  // namespace derp::server
