// Replays the recorded derper v1.36.2 sessions (fixtures 01-04) against a real derpd.
// derpd runs on 2 shards; every server byte is compared, modulo the documented differences: the
// ServerInfo box (random nonce), the spec's longer PeerPresent and PeerGone, and the unordered
// PeerPresent snapshot after WatchConns.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/client_info.hh"
#include "core/handshake.hh"
#include "crypto/box.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/unit/fixture_util.hh"

namespace {

using namespace derp;
using namespace derp::test;
using json = nlohmann::json;

constexpr milliseconds read_timeout{10'000};

struct replay_conn {
    tcp_conn conn;
    std::optional<private_key> secret;  // from keys.json
};

// What derpd knows about a client key once its ClientInfo is in: where it connected from and
// whether it presented the mesh key (PeerPresent flags).
struct key_facts {
    std::uint16_t port = 0;
    bool mesh = false;
};

class replayer {
public:
    replayer(std::string folder, const derpd_process& server, const private_key& server_private)
        : _folder(std::move(folder)), _server(server), _server_private(server_private) {
        const json keys = json::parse(read_text(fixtures_dir() / _folder / "keys.json"));
        REQUIRE(keys.at("server").at("public").get<std::string>() == _server.server_public().to_string());
        for (const auto& [letter, entry] : keys.at("clients").items()) {
            const auto secret = private_key::from_hex(entry.at("private").get<std::string>());
            REQUIRE(secret.has_value());
            _conns[letter].secret = *secret;
        }
    }

    void run() {
        const json session = json::parse(read_text(fixtures_dir() / _folder / "session.json"));
        const json& events = session.at("events");
        for (std::size_t i = 0; i < events.size(); ++i) {
            const json& e = events[i];
            const std::string letter = e.at("conn").get<std::string>();
            const std::string kind = e.at("event").get<std::string>();
            const std::string dir = e.value("dir", "");
            const std::string name = e.value("name", "");
            const std::string where =
                _folder + " event " + std::to_string(i) + ": " + letter + " " + kind + " " + dir + " " + name;
            INFO(where);
            replay_conn& rc = _conns[letter];
            if (kind == "connect") {
                rc.conn = tcp_conn::connect_loopback(_server.port());
            } else if (kind == "eof") {
                if (dir == "c2s") {
                    rc.conn.shutdown_write();
                } else {
                    const auto closed = rc.conn.wait_closed(read_timeout);
                    CHECK_MESSAGE(closed.status == io_status::eof,
                                  "want a clean EOF from derpd, got " << to_string(closed.status));
                    CHECK_MESSAGE(closed.bytes_before == 0,
                                  "unexpected bytes before EOF: " << to_hex(closed.data_before));
                }
            } else if (dir == "c2s") {
                const bytes data = from_hex(e.at("hex").get<std::string>());
                if (kind == "frame" && e.at("type").get<int>() == static_cast<int>(frame_type::client_info))
                    note_client_info(rc, data);
                REQUIRE(rc.conn.write_all(data) == io_status::ok);
            } else if (kind == "http") {
                const bytes want = from_hex(e.at("hex").get<std::string>());
                bytes got(want.size());
                REQUIRE(rc.conn.read_exact(got, read_timeout) == io_status::ok);
                CHECK(as_text(got) == as_text(want));
            } else if (name == "PeerPresent") {
                // The snapshot after WatchConns comes from a Go map: compare runs as sets.
                std::size_t j = i;
                std::vector<bytes> want;
                while (j < events.size() && events[j].at("conn") == letter &&
                       events[j].value("dir", "") == "s2c" && events[j].value("name", "") == "PeerPresent")
                    want.push_back(expected_peer_present(from_hex(events[j++].at("hex").get<std::string>())));
                std::vector<bytes> got;
                for (std::size_t k = 0; k < want.size(); ++k) got.push_back(read_one(rc).wire());
                std::sort(want.begin(), want.end());
                std::sort(got.begin(), got.end());
                for (std::size_t k = 0; k < want.size(); ++k) CHECK(to_hex(got[k]) == to_hex(want[k]));
                i = j - 1;
            } else {
                const bytes want = from_hex(e.at("hex").get<std::string>());
                const frame got = read_one(rc);
                if (name == "ServerInfo") {
                    REQUIRE(rc.secret.has_value());
                    const auto plain = open_server_info(got, *rc.secret, _server.server_public());
                    CHECK_MESSAGE(plain.has_value(), "ServerInfo does not open: " << to_hex(got.wire()));
                    if (plain) CHECK(*plain == R"({"version":2})");
                } else if (name == "PeerGone") {
                    // v1.36.2: key only; the spec adds the reason byte (Disconnected here).
                    REQUIRE(want.size() == frame_header_bytes + key_bytes);
                    const node_key key(key_span(want.data() + frame_header_bytes, key_bytes));
                    CHECK(to_hex(got.wire()) == to_hex(peer_gone_frame(key, peer_gone_reason::disconnected)));
                } else {
                    CHECK(to_hex(got.wire()) == to_hex(want));
                }
            }
        }
    }

private:
    frame read_one(replay_conn& rc) {
        frame_read r = read_frame(rc.conn, read_timeout);
        REQUIRE_MESSAGE(r.status == io_status::ok, "reading a frame: " << to_string(r.status));
        return std::move(r.f);
    }

    // The recorded ClientInfo is a valid box to the fixture server key: open it, as derpd will,
    // to learn the key, the port PeerPresent reports and whether it carries the mesh key.
    void note_client_info(replay_conn& rc, const bytes& wire) {
        const auto view = decode_client_info(std::span<const std::uint8_t>(wire).subspan(frame_header_bytes));
        REQUIRE(view.has_value());
        std::string plain(view->sealed.size() - box_overhead_bytes, '\0');
        const auto n = box_open({reinterpret_cast<std::uint8_t*>(plain.data()), plain.size()}, view->sealed,
                                _server_private, view->key);
        REQUIRE_MESSAGE(n.has_value(), "the recorded ClientInfo does not open with the fixture server key");
        plain.resize(*n);
        const auto info = parse_client_info_json(plain);
        REQUIRE(info.has_value());
        key_facts facts;
        facts.port = rc.conn.local_port();
        const auto psk = _server.mesh_key();
        facts.mesh = info->mesh_key && psk && info->mesh_key->equals(*psk);
        _keys[view->key.to_string()] = facts;
    }

    // v1.36.2's 32-byte PeerPresent becomes the spec's 51 bytes: 127.0.0.1 IPv4-mapped, the
    // client's own port, and IsMeshPeer for the mesh key holder, IsRegular otherwise.
    bytes expected_peer_present(const bytes& recorded) {
        REQUIRE(recorded.size() == frame_header_bytes + key_bytes);
        const node_key key(key_span(recorded.data() + frame_header_bytes, key_bytes));
        const auto it = _keys.find(key.to_string());
        REQUIRE_MESSAGE(it != _keys.end(), "PeerPresent for a key that never connected: " << key.to_string());
        return peer_present_frame(key, it->second.port,
                                  it->second.mesh ? peer_present_mesh_peer : peer_present_regular);
    }

    std::string _folder;
    const derpd_process& _server;
    private_key _server_private;
    std::map<std::string, replay_conn> _conns;
    std::map<std::string, key_facts> _keys;
};

void replay(const std::string& folder, bool with_mesh_key, const std::string& keepalive = "60s") {
    const auto server_private = private_key::from_hex(fixture_server_private_hex);
    REQUIRE(server_private.has_value());
    derpd_options options;
    options.server_private = server_private;
    if (with_mesh_key) options.mesh_psk = std::string(fixture_mesh_psk_hex) + "\n";
    options.keepalive_interval = keepalive;
    derpd_process server(options);
    replayer(folder, server, *server_private).run();
    CHECK(server.running());
}

}  // namespace

TEST_CASE("fixture 01: handshake, two clients, packets both ways, PeerGone on leave") {
    replay("01-handshake-two-clients", false);
}

TEST_CASE("fixture 02: Ping/Pong and KeepAlive") {
    // A 3 s interval (jitter up to 1/12 of it) brings the recorded KeepAlive within ~3.3 s, long
    // after the two Pings are answered (the replay would read a KeepAlive in a Pong's place if
    // the interval were shorter than a slow machine's replay), and well inside the read timeout.
    replay("02-ping-pong-keepalive", false, "3s");
}

TEST_CASE("fixture 03: mesh watcher, ForwardPacket, ClosePeer") {
    replay("03-mesh-watcher", true);
}

TEST_CASE("fixture 03b: WatchConns without the mesh key closes the connection") {
    // derper v1.36.2 had the mesh key configured in this recording too.
    replay("03b-watchconns-without-meshkey", true);
}

TEST_CASE("fixture 04: fast start") {
    replay("04-fast-start", false);
}
