// Fixture 03 from the other side: derpd's mesh link against a TLS "derper" played by this test,
// which answers with what the real derper sent the Go mesh watcher W (fixtures/03-mesh-watcher,
// W/s2c.hex, chunk by chunk as timeline.txt saw it) and checks that derpd sends what the Go
// client sent (W/c2s.hex): the upgrade request, a ClientInfo that opens with the fixture server
// key to W's JSON, WatchConns pipelined behind it, ForwardPacket laid out as W's; then that derpd
// withdraws on PeerGone and on the loss of the link, and dials again.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/frame.hh"
#include "crypto/box.hh"
#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/mesh_region.hh"
#include "tests/support/test_ca.hh"
#include "tests/unit/fixture_util.hh"

namespace {

using namespace derp;
using namespace derp::test;
using namespace std::chrono_literals;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

constexpr std::string_view fixture = "03-mesh-watcher";
constexpr std::string_view far_ip = "127.0.0.23";  // the pretend derper's address
constexpr auto io_deadline = 10s;                   // any read the test waits on
constexpr auto metric_deadline = 20s;               // any varz value the test waits for

// ---- The recording --------------------------------------------------------------------------------

struct recorded_frame {
    std::size_t offset = 0;  // in its stream
    std::uint8_t type = 0;
    bytes wire;  // header + payload
    std::span<const std::uint8_t> payload() const { return std::span(wire).subspan(frame_header_bytes); }
};

// One direction of one connection: the HTTP head, then the frames.
struct recorded_stream {
    bytes raw;
    std::string head;
    std::vector<recorded_frame> frames;

    explicit recorded_stream(const std::string& relative) : raw(read_hex_stream(relative)) {
        const std::string_view text = as_text(raw);
        const auto end = text.find("\r\n\r\n");
        REQUIRE_MESSAGE(end != std::string_view::npos, relative << ": no HTTP head");
        head = std::string(text.substr(0, end + 4));
        for (std::size_t at = head.size(); at < raw.size();) {
            const auto parsed = parse_frame(std::span(raw).subspan(at), 1u << 20);
            REQUIRE_MESSAGE(parsed.status == frame_parse_status::complete, relative << ": no whole frame at " << at);
            recorded_frame f;
            f.offset = at;
            f.type = static_cast<std::uint8_t>(parsed.header.type);
            f.wire.assign(raw.begin() + static_cast<std::ptrdiff_t>(at),
                          raw.begin() + static_cast<std::ptrdiff_t>(at + parsed.frame_bytes));
            frames.push_back(std::move(f));
            at += parsed.frame_bytes;
        }
    }
    const recorded_frame& frame_of_type(frame_type type) const {
        for (const auto& f : frames)
            if (f.type == static_cast<std::uint8_t>(type)) return f;
        throw std::runtime_error("the recording has no " + std::string(to_string(type)) + " frame");
    }
};

// The server's recv() chunks on connection W, as timeline.txt lists them: (offset, length).
std::vector<std::pair<std::size_t, std::size_t>> recorded_s2c_chunks() {
    std::istringstream lines(read_text(fixtures_dir() / fixture / "timeline.txt"));
    std::vector<std::pair<std::size_t, std::size_t>> chunks;
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty() || line[0] != '+' || line.find(" W  s2c off=") == std::string::npos) continue;
        const auto off = line.find("off=");
        const auto len = line.find("len=");
        if (off == std::string::npos || len == std::string::npos) continue;  // the EOF line
        chunks.emplace_back(std::stoul(line.substr(off + 4)), std::stoul(line.substr(len + 4)));
    }
    return chunks;
}

// The HTTP head as (name, value) lines; the request line first with an empty value.
std::vector<std::pair<std::string, std::string>> head_lines(std::string_view head) {
    std::vector<std::pair<std::string, std::string>> out;
    std::size_t at = 0;
    while (at < head.size()) {
        const auto end = head.find("\r\n", at);
        if (end == std::string_view::npos || end == at) break;
        const std::string_view line = head.substr(at, end - at);
        at = end + 2;
        if (out.empty()) {
            out.emplace_back(std::string(line), "");
            continue;
        }
        const auto colon = line.find(':');
        std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        out.emplace_back(std::string(line.substr(0, colon)), std::string(value));
    }
    return out;
}

// A ClientInfo payload opened with the fixture server's private key: its JSON.
std::string open_client_info(std::span<const std::uint8_t> payload, const private_key& server_private,
                             const node_key& expected_client) {
    const auto view = decode_client_info(payload);
    REQUIRE_MESSAGE(view.has_value(), "not a ClientInfo payload: " << to_hex(payload));
    CHECK_MESSAGE(view->key == expected_client, "ClientInfo names key " << view->key.to_string());
    std::string plain(view->sealed.size() - box_overhead_bytes, '\0');
    const auto n = box_open({reinterpret_cast<std::uint8_t*>(plain.data()), plain.size()}, view->sealed,
                            server_private, view->key);
    REQUIRE_MESSAGE(n.has_value(), "the ClientInfo box does not open with the fixture server key");
    plain.resize(*n);
    return plain;
}

// ---- The pretend derper: a TLS listener and its connections ---------------------------------------

milliseconds left_until(clock_type::time_point deadline) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_type::now());
    return std::max(left, 0ms);
}

// One accepted TLS connection, driven with poll deadlines; reads and writes carry plaintext.
class tls_peer {
public:
    tls_peer(int fd, std::shared_ptr<tls::context> ctx) : _fd(fd), _session(std::move(ctx), false) {}
    ~tls_peer() { close(); }
    tls_peer(const tls_peer&) = delete;
    tls_peer& operator=(const tls_peer&) = delete;

    // The server side of the handshake; "" when it completed, else what went wrong.
    std::string handshake(milliseconds timeout) {
        const auto deadline = clock_type::now() + timeout;
        while (_session.state() == tls::status::handshaking)
            if (!pull(deadline)) return _eof ? "the client closed during the TLS handshake" : "TLS handshake timed out";
        if (_session.state() == tls::status::failed) return "TLS handshake failed: " + _session.error();
        return {};
    }
    const tls::session& session() const noexcept { return _session; }
    bool eof() const noexcept { return _eof; }

    std::optional<std::string> read_http_head(milliseconds timeout) {
        const auto deadline = clock_type::now() + timeout;
        for (;;) {
            if (const auto end = _plain.find("\r\n\r\n"); end != std::string::npos) {
                std::string head = _plain.substr(0, end + 4);
                _plain.erase(0, end + 4);
                return head;
            }
            if (!pull(deadline)) return std::nullopt;
        }
    }
    std::optional<bytes> read_exact(std::size_t n, milliseconds timeout) {
        const auto deadline = clock_type::now() + timeout;
        while (_plain.size() < n)
            if (!pull(deadline)) return std::nullopt;
        bytes out(_plain.begin(), _plain.begin() + static_cast<std::ptrdiff_t>(n));
        _plain.erase(0, n);
        return out;
    }
    // A whole frame (header and payload), or nothing when the deadline passes or the stream ends.
    std::optional<bytes> read_frame(milliseconds timeout) {
        const auto deadline = clock_type::now() + timeout;
        auto header = read_exact(frame_header_bytes, left_until(deadline));
        if (!header) return std::nullopt;
        const auto parsed = parse_frame_header(*header);
        if (!parsed) return std::nullopt;
        auto payload = read_exact(parsed->payload_bytes, left_until(deadline));
        if (!payload) return std::nullopt;
        header->insert(header->end(), payload->begin(), payload->end());
        return header;
    }
    // Plaintext waiting, after at most one wait of `window` for more.
    std::size_t buffered_after(milliseconds window) {
        if (_plain.empty() && !_eof) pull(clock_type::now() + window);
        return _plain.size();
    }
    bool send(std::span<const std::uint8_t> plain) {
        std::vector<std::uint8_t> records(plain.size() + 1024);
        std::string spill;
        const std::size_t n = _session.write(plain, records, spill);
        return write_raw({reinterpret_cast<const char*>(records.data()), n}) && write_raw(spill);
    }
    // close_notify, then the socket is closed: the link sees an orderly close.
    void close() {
        if (_fd < 0) return;
        if (_session.state() == tls::status::open) {
            std::string out;
            _session.shutdown(out);
            write_raw(out);
        }
        ::close(_fd);
        _fd = -1;
    }

private:
    // One read (waiting until deadline) fed to the session: plaintext to _plain, its answers
    // written back. False on timeout or end of stream.
    bool pull(clock_type::time_point deadline) {
        if (_fd < 0 || _eof) return false;
        pollfd p{_fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left_until(deadline).count())) <= 0) return false;
        char buffer[65536];
        const ssize_t n = ::recv(_fd, buffer, sizeof buffer, 0);
        if (n <= 0) {
            _eof = true;
            return false;
        }
        std::string out;
        const auto st = _session.feed({reinterpret_cast<const std::uint8_t*>(buffer), static_cast<std::size_t>(n)},
                                      _plain, out);
        write_raw(out);
        if (st == tls::status::closed || st == tls::status::failed) _eof = true;
        return true;
    }
    bool write_raw(std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::send(_fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    int _fd = -1;
    tls::session _session;
    std::string _plain;
    bool _eof = false;
};

class tls_listener {
public:
    tls_listener(std::string_view ip, std::shared_ptr<tls::context> ctx) : _ctx(std::move(ctx)) {
        _fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        ::inet_pton(AF_INET, std::string(ip).c_str(), &addr.sin_addr);
        if (::bind(_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(_fd, 16) != 0)
            throw std::runtime_error("listening on " + std::string(ip) + ": " + std::strerror(errno));
        socklen_t len = sizeof addr;
        ::getsockname(_fd, reinterpret_cast<sockaddr*>(&addr), &len);
        _port = ntohs(addr.sin_port);
    }
    ~tls_listener() { ::close(_fd); }
    tls_listener(const tls_listener&) = delete;
    tls_listener& operator=(const tls_listener&) = delete;

    std::uint16_t port() const noexcept { return _port; }
    // The next connection, or nullptr when none comes within the timeout.
    std::unique_ptr<tls_peer> accept(milliseconds timeout) {
        pollfd p{_fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return nullptr;
        const int fd = ::accept4(_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return nullptr;
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return std::make_unique<tls_peer>(fd, _ctx);
    }

private:
    int _fd = -1;
    std::uint16_t _port = 0;
    std::shared_ptr<tls::context> _ctx;
};

std::filesystem::path make_scratch() {
    std::string dir = (std::filesystem::temp_directory_path() / "derpd-meshfix-XXXXXX").string();
    if (::mkdtemp(dir.data()) == nullptr) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    return dir;
}

// ---- derpd as the mesh client ---------------------------------------------------------------------

struct node_under_test {
    derpd_process& derpd;
    std::string peer;  // the -mesh-with entry, as derpd labels it

    std::string varz() { return http_get_body("127.0.0.1", derpd.admin_port(), "/debug/varz"); }
    double metric(std::string_view name, const std::vector<std::pair<std::string, std::string>>& labels = {}) {
        return varz_sum(varz(), name, labels).value_or(-1);
    }
    double peer_metric(std::string_view name) { return metric(name, {{"peer", peer}}); }
    double unknown_dest() { return metric("derp_packets_dropped", {{"reason", "unknown_dest"}, {"kind", "other"}}); }

    // Waits until the link's up gauge, its key gauge and derp_clients_remote read as given.
    void wait_link(double up, double keys, double remote, std::string_view what) {
        std::string seen;
        wait_until(
            [&] {
                const std::string page = varz();
                const double u = varz_sum(page, "derpd_mesh_peer_up", {{"peer", peer}}).value_or(-1);
                const double k = varz_sum(page, "derpd_mesh_peer_keys", {{"peer", peer}}).value_or(-1);
                const double r = varz_sum(page, "derp_clients_remote").value_or(-1);
                seen = "derpd_mesh_peer_up " + std::to_string(u) + ", derpd_mesh_peer_keys " + std::to_string(k) +
                       ", derp_clients_remote " + std::to_string(r);
                return u == up && k == keys && r == remote;
            },
            metric_deadline, what, [&] { return "last seen: " + seen + "\n--- derpd log tail ---\n" + derpd.log_tail(40); });
    }
};

}  // namespace

TEST_SUITE("integration") {

TEST_CASE("derpd's mesh link says what the Go mesh client said to derper (fixture 03, W's side)") {
    REQUIRE(crypto_init());
    const json keys = json::parse(read_text(fixtures_dir() / fixture / "keys.json"));
    const auto key_of = [&](const char* who, const char* which) {
        const auto k = node_key::from_hex(keys.at("clients").at(who).at(which).get<std::string>());
        REQUIRE(k.has_value());
        return *k;
    };
    const auto fixture_server_private = private_key::from_hex(fixture_server_private_hex);
    const auto w_private = private_key::from_hex(keys.at("clients").at("W").at("private").get<std::string>());
    REQUIRE(fixture_server_private.has_value());
    REQUIRE(w_private.has_value());
    const node_key w_public = key_of("W", "public");
    const node_key a_public = key_of("A", "public");
    const node_key b_public = key_of("B", "public");
    const node_key c_public = key_of("C", "public");
    REQUIRE(public_key_of(*w_private) == w_public);
    REQUIRE(keys.at("meshPSK").at("value").get<std::string>() == fixture_mesh_psk_hex);

    const recorded_stream c2s(std::string(fixture) + "/W/c2s.hex");
    const recorded_stream s2c(std::string(fixture) + "/W/s2c.hex");
    const auto chunks = recorded_s2c_chunks();
    // What the timeline says the server sent, and when (the test replays it in this order).
    REQUIRE(chunks.size() == 8);
    const auto chunk = [&](std::size_t i) {
        return std::span<const std::uint8_t>(s2c.raw).subspan(chunks[i].first, chunks[i].second);
    };
    const auto key_in_chunk = [&](std::size_t i) {
        return node_key(key_span(chunk(i).data() + frame_header_bytes, key_bytes));
    };
    REQUIRE(chunks[0] == std::pair<std::size_t, std::size_t>{0, s2c.head.size() + server_key_frame_bytes});
    REQUIRE(chunk(1)[0] == static_cast<std::uint8_t>(frame_type::server_info));
    REQUIRE(chunks[2].second == 2 * (frame_header_bytes + key_bytes));  // the snapshot: A and W
    for (std::size_t i = 2; i < 8; ++i)
        REQUIRE(chunk(i)[0] == static_cast<std::uint8_t>(i < 5 ? frame_type::peer_present : frame_type::peer_gone));
    REQUIRE(key_in_chunk(2) == a_public);
    REQUIRE(node_key(key_span(chunk(2).data() + 2 * frame_header_bytes + key_bytes, key_bytes)) == w_public);
    REQUIRE(key_in_chunk(3) == b_public);
    REQUIRE(key_in_chunk(4) == c_public);
    REQUIRE(key_in_chunk(5) == c_public);
    REQUIRE(key_in_chunk(6) == b_public);
    REQUIRE(key_in_chunk(7) == a_public);

    // The pretend derper: a certificate for its address from a CA that derpd trusts.
    const std::filesystem::path scratch = make_scratch();
    test_ca ca;
    ca.write_cert(scratch / "ca.pem");
    const std::string ip(far_ip);
    ca.issue(scratch, ip, {ip});
    auto server_ctx = tls::context::make_server(
        {ip, (scratch / (ip + ".crt")).string(), (scratch / (ip + ".key")).string(), {}});
    REQUIRE_MESSAGE(server_ctx.has_value(), (server_ctx ? "" : server_ctx.error()));
    tls_listener listener(far_ip, server_ctx.value());
    const std::string entry = ip + ":" + std::to_string(listener.port());

    // derpd plays the Go watcher: W's key is its server key, the fixture's mesh key is its own.
    derpd_options options;
    options.server_private = *w_private;
    options.mesh_psk = std::string(fixture_mesh_psk_hex) + "\n";
    options.admin_addr = "127.0.0.1:0";
    options.env = {"SSL_CERT_FILE=" + (scratch / "ca.pem").string()};
    options.extra_args = {"-mesh-with", entry, "-mesh-retry-interval", "1s"};
    derpd_process derpd(options);
    node_under_test node{derpd, entry};
    const auto log_tail = [&] { return "\n--- derpd log tail ---\n" + derpd.log_tail(40); };

    // ---- The request --------------------------------------------------------------------------------
    std::unique_ptr<tls_peer> link = listener.accept(15s);
    REQUIRE_MESSAGE(link != nullptr, "derpd did not dial " << entry << " within 15 s" << log_tail());
    const std::string tls_error = link->handshake(io_deadline);
    REQUIRE_MESSAGE(tls_error.empty(), tls_error << log_tail());
    MESSAGE("derpd's link: TLS " << link->session().version_name() << ", SNI \"" << link->session().sni()
                                 << "\" (the entry as written, port included, as derper v1.36's mesh clients send it)");
    const auto head = link->read_http_head(io_deadline);
    REQUIRE_MESSAGE(head.has_value(), "no HTTP request head from derpd" << log_tail());
    MESSAGE("derpd's request:\n" << *head << "W's (Go) request:\n" << c2s.head);
    const auto got_lines = head_lines(*head);
    const auto want_lines = head_lines(c2s.head);
    REQUIRE(got_lines.size() == want_lines.size());
    for (std::size_t i = 0; i < got_lines.size(); ++i) {
        CHECK(got_lines[i].first == want_lines[i].first);  // the request line, then each header name in order
        if (got_lines[i].first == "Host") {
            CHECK(got_lines[i].second == entry);  // Go's is the URL's host: the entry as written
        } else if (got_lines[i].first == "User-Agent") {
            if (got_lines[i].second != want_lines[i].second)
                MESSAGE("User-Agent differs: derpd \"" << got_lines[i].second << "\", Go \"" << want_lines[i].second
                                                       << "\" (derper's /derp handler does not read it)");
        } else {
            CHECK(got_lines[i].second == want_lines[i].second);
        }
    }

    // ---- 101 and ServerKey, then ClientInfo and WatchConns before any ServerInfo ----------------------
    REQUIRE(link->send(chunk(0)));
    const auto client_info = link->read_frame(io_deadline);
    REQUIRE_MESSAGE(client_info.has_value(), "no ClientInfo from derpd after 101 and ServerKey" << log_tail());
    const recorded_frame& w_client_info = c2s.frame_of_type(frame_type::client_info);
    REQUIRE((*client_info)[0] == static_cast<std::uint8_t>(frame_type::client_info));
    CHECK(client_info->size() == w_client_info.wire.size());
    // Bytes 0..36 are the header and W's key, the same for both; the rest is a box with a random nonce.
    CHECK(to_hex(std::span(*client_info).first(frame_header_bytes + key_bytes)) ==
          to_hex(std::span(w_client_info.wire).first(frame_header_bytes + key_bytes)));
    const std::string derpd_json = open_client_info(std::span(*client_info).subspan(frame_header_bytes),
                                                    *fixture_server_private, w_public);
    const std::string go_json = open_client_info(w_client_info.payload(), *fixture_server_private, w_public);
    CHECK(json::parse(derpd_json) == json::parse(go_json));
    // derpd writes the fields in the current Go struct's order (spec 1.6: meshKey first); v1.36.2,
    // which recorded W, wrote version first. derper reads either with encoding/json.
    CHECK(derpd_json == R"({"meshKey":")" + std::string(fixture_mesh_psk_hex) + R"(","version":2,"CanAckPings":false})");
    if (derpd_json != go_json) MESSAGE("ClientInfo JSON bytes differ:\n derpd: " << derpd_json << "\n Go:    " << go_json);

    const auto watch = link->read_frame(io_deadline);
    REQUIRE_MESSAGE(watch.has_value(), "no WatchConns behind ClientInfo (before ServerInfo)" << log_tail());
    CHECK(to_hex(*watch) == to_hex(c2s.frame_of_type(frame_type::watch_conns).wire));  // 1000000000

    // ---- ServerInfo, the snapshot (A and W itself), PeerPresent(B) --------------------------------------
    REQUIRE(link->send(chunk(1)));
    REQUIRE(link->send(chunk(2)));
    // derper counts W's own key among the remote ones too (its forwarder table holds it).
    node.wait_link(1, 2, 2, "the link up with the snapshot's 2 keys");
    CHECK_MESSAGE(derpd.wait_for_log("mesh " + entry + ": connected; 2 peers", io_deadline), log_tail());
    REQUIRE(link->send(chunk(3)));
    node.wait_link(1, 3, 3, "PeerPresent(B) counted");

    // ---- A local client's packet to B leaves as ForwardPacket, laid out as W's ------------------------
    derp_client local = derp_client::connect(derpd.port(), w_public);
    const recorded_frame& w_forward = c2s.frame_of_type(frame_type::forward_packet);
    const auto w_view = decode_forward_packet(w_forward.payload());
    REQUIRE(w_view.has_value());
    REQUIRE(w_view->dst == b_public);
    const bytes packet(w_view->packet.begin(), w_view->packet.end());  // "forwarded via mesh to B"
    bytes want_forward = w_forward.wire;  // W's frame with the local client as the source
    std::copy(local.key().span().begin(), local.key().span().end(), want_forward.begin() + frame_header_bytes);
    // The route to B reaches the local client's shard through the shards' rings; a packet sent
    // before it arrived is counted unknown_dest, and only then is it sent again.
    double dropped_before = node.unknown_dest();
    local.send_packet(b_public, packet);
    wait_until(
        [&] {
            if (link->buffered_after(20ms) > 0) return true;
            if (const double d = node.unknown_dest(); d > dropped_before) {
                MESSAGE("the packet to B was counted unknown_dest before B's route reached its shard; sending again");
                dropped_before = d;
                local.send_packet(b_public, packet);
            }
            return false;
        },
        metric_deadline, "a ForwardPacket from derpd's link", log_tail);
    const auto forward = link->read_frame(io_deadline);
    REQUIRE_MESSAGE(forward.has_value(), "the ForwardPacket did not arrive whole" << log_tail());
    CHECK(to_hex(*forward) == to_hex(want_forward));
    wait_until([&] { return node.peer_metric("derpd_mesh_forwarded_total") == 1; }, metric_deadline,
               "derpd_mesh_forwarded_total 1", log_tail);

    // ---- C comes and goes, then B goes: the next packet to B is not forwarded --------------------------
    REQUIRE(link->send(chunk(4)));
    node.wait_link(1, 4, 4, "PeerPresent(C) counted");
    REQUIRE(link->send(chunk(5)));
    node.wait_link(1, 3, 3, "PeerGone(C) counted");
    REQUIRE(link->send(chunk(6)));
    node.wait_link(1, 2, 2, "PeerGone(B) counted");
    // Every shard hears of B's departure on its ring; a forward still on its way would arrive
    // before the drop is counted, so packets are sent until one is counted unknown_dest.
    std::size_t late_forwards = 0;
    dropped_before = node.unknown_dest();
    local.send_packet(b_public, packet);
    wait_until(
        [&] {
            if (node.unknown_dest() > dropped_before) return true;
            if (link->buffered_after(20ms) > 0) {
                const auto late = link->read_frame(io_deadline);
                REQUIRE(late.has_value());
                CHECK(to_hex(*late) == to_hex(want_forward));
                ++late_forwards;
                local.send_packet(b_public, packet);
            }
            return false;
        },
        metric_deadline, "the packet to B counted unknown_dest after PeerGone(B)", log_tail);
    if (late_forwards > 0) MESSAGE(late_forwards << " packet(s) to B still forwarded just after PeerGone(B) was counted");
    CHECK(node.unknown_dest() == dropped_before + 1);
    CHECK(link->buffered_after(300ms) == 0);  // nothing else went to the far derper
    // The local client never heard from B: no PeerGone for it (spec 2.7), nor anything else.
    for (const auto deadline = clock_type::now() + 500ms; clock_type::now() < deadline;) {
        if (local.conn().quiet_for(left_until(deadline))) break;
        const frame_read r = local.next(io_deadline, true);
        REQUIRE(r.status == io_status::ok);
        if (r.f.type == static_cast<std::uint8_t>(frame_type::keep_alive)) continue;
        CHECK_MESSAGE(false, "the local client got a frame of type " << int(r.f.type) << ": " << to_hex(r.f.payload));
    }

    // ---- A goes; W's own key stays until the link is lost ---------------------------------------------
    REQUIRE(link->send(chunk(7)));
    node.wait_link(1, 1, 1, "PeerGone(A) counted");

    // ---- The far derper closes: derpd withdraws and dials again ---------------------------------------
    const double failures_before = node.metric("derpd_mesh_failures_total", {{"peer", entry}});
    link->close();
    node.wait_link(0, 0, 0, "the link down and its keys withdrawn");
    CHECK_MESSAGE(derpd.wait_for_log("mesh " + entry + ": connection lost", io_deadline), log_tail());
    const std::string lost = first_log_line(derpd.log_text(), "mesh " + entry + ": connection lost");
    MESSAGE("derpd: " << lost);
    CHECK(lost.find("1 keys withdrawn") != std::string::npos);
    CHECK(lost.find("retrying in") != std::string::npos);
    CHECK(node.metric("derpd_mesh_failures_total", {{"peer", entry}}) == failures_before + 1);

    std::unique_ptr<tls_peer> again = listener.accept(15s);
    REQUIRE_MESSAGE(again != nullptr, "derpd did not dial " << entry << " again within 15 s" << log_tail());
    const std::string again_error = again->handshake(io_deadline);
    REQUIRE_MESSAGE(again_error.empty(), again_error << log_tail());
    const auto again_head = again->read_http_head(io_deadline);
    REQUIRE(again_head.has_value());
    CHECK(*again_head == *head);

    derpd.stop();
    std::error_code ec;
    std::filesystem::remove_all(scratch, ec);
}

}  // TEST_SUITE
