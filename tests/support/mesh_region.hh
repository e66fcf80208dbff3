// A DERP region of real derpd nodes on loopback for the mesh tests: 127.0.0.N addresses sharing
// one port, certificates from an in-process test CA that every node trusts (SSL_CERT_FILE), a
// mesh PSK and -mesh-with list per node, an admin listener per node for /debug/varz, and TLS
// test clients that verify each node against the CA. Also the varz scraping and the polling
// helpers the tests wait with. Test code only: failures throw std::runtime_error.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/tls.hh"
#include "tests/support/derp_test_client.hh"
#include "tests/support/derpd_process.hh"
#include "tests/support/test_ca.hh"

namespace derp::test {

// ---- /debug/varz --------------------------------------------------------------------------------

// GET path over plain HTTP/1.1 from ip:port (Connection: close); the body, or throws.
std::string http_get_body(std::string_view ip, std::uint16_t port, std::string_view path);

// The sum of the samples of metric `name` in a Prometheus text page whose labels include every
// (label, value) in `labels`, where a value ending in '*' matches as a prefix; nothing when no
// sample matches.
std::optional<double> varz_sum(std::string_view page, std::string_view name,
                               const std::vector<std::pair<std::string, std::string>>& labels = {});

// The label value derpd's mesh metrics use for an entry may be the host or host:port: this
// matches both ("127.0.0.2" matches peer="127.0.0.2" and peer="127.0.0.2:4242").
std::vector<std::pair<std::string, std::string>> peer_label(std::string_view host);

// Polls `done` every 20 ms until it is true (returns the time it took) or `timeout` passes
// (throws with `what` and the text `describe` returns at that moment).
std::chrono::milliseconds wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout,
                                     std::string_view what, const std::function<std::string()>& describe = {});

// The lines of a log that contain both needle and also.
std::size_t count_log_lines(std::string_view log, std::string_view needle, std::string_view also = {});
// The first such line, or "".
std::string first_log_line(std::string_view log, std::string_view needle, std::string_view also = {});

// ---- Packets between test clients ---------------------------------------------------------------
// These wait for readable input first and then read a whole frame with a 5 s deadline, so that a
// short window never ends inside a frame and leaves the stream out of step.

// Sends a probe packet from `from` to `to` every 50 ms until `to` receives one of them; the time
// from the first send until then. Frames other than the probes are appended to `others` (when
// given). Throws when the stream ends or `timeout` passes.
std::chrono::milliseconds probe_until_delivered(derp_client& from, derp_client& to, std::chrono::milliseconds timeout,
                                                std::vector<frame>* others = nullptr);
// True for a packet probe_until_delivered sent.
bool is_probe(std::span<const std::uint8_t> packet);
// Reads until a RecvPacket from src carrying exactly payload; other frames are skipped (into
// `others` when given). Throws when the stream ends or `timeout` passes.
void expect_payload(derp_client& c, const node_key& src, const bytes& payload, std::chrono::milliseconds timeout,
                    std::vector<frame>* others = nullptr);
// Reads for `window` and counts the RecvPackets from src; other frames go to `others` (when given).
std::size_t packets_from_within(derp_client& c, const node_key& src, std::chrono::milliseconds window,
                                std::vector<frame>* others = nullptr);

// ---- The region ---------------------------------------------------------------------------------

struct mesh_node_spec {
    std::string ip;                           // 127.0.0.N: -a ip:P, -hostname ip, certificate for ip
    std::string mesh_psk;                     // the -mesh-psk-file contents (64 hex digits)
    std::vector<std::string> mesh_with_ips;   // -mesh-with entries ip:P, in this order
    std::vector<std::string> mesh_with_raw;   // further entries as written (hostile peers)
};

class mesh_region {
public:
    // Makes the CA, ca.pem and a certificate per node in a fresh temporary directory. Nothing runs
    // until start().
    explicit mesh_region(std::vector<mesh_node_spec> nodes, int shards = 2);
    ~mesh_region();
    mesh_region(const mesh_region&) = delete;
    mesh_region& operator=(const mesh_region&) = delete;

    // Picks a port P that binds on every node's address, and starts every node on it. When a
    // node cannot bind P after all (something took it meanwhile: derpd then says "address already
    // in use"), every node is stopped and the region starts again on a new port, up to 20 times:
    // the verdict never rests on a port staying free by luck.
    void start();

    std::uint16_t port() const noexcept { return _port; }
    std::size_t size() const noexcept { return _specs.size(); }
    derpd_process& node(std::size_t i) { return *_nodes.at(i); }
    const std::string& ip(std::size_t i) const { return _specs.at(i).ip; }
    const std::filesystem::path& dir() const noexcept { return _dir; }
    const std::filesystem::path& ca_file() const noexcept { return _ca_file; }

    // A TLS client context that trusts only the region's CA and verifies the name ip.
    std::shared_ptr<tls::context> client_context(const std::string& ip);
    // A DERP client of node i over TLS, verified against the CA and the node's server key.
    derp_client connect(std::size_t i, client_options options = {});

    // Node i's /debug/varz from its admin listener.
    std::string varz(std::size_t i);
    // One metric of node i (see varz_sum); 0 when no sample matches.
    double metric(std::size_t i, std::string_view name,
                  const std::vector<std::pair<std::string, std::string>>& labels = {});
    // Waits until node i's metric satisfies ok; returns the time it took.
    std::chrono::milliseconds wait_metric(std::size_t i, std::string_view name,
                                          const std::vector<std::pair<std::string, std::string>>& labels,
                                          const std::function<bool(double)>& ok, std::chrono::milliseconds timeout,
                                          std::string_view what);
    // Waits until every node reports derpd_mesh_peer_up == 1 for every other node in its
    // mesh_with_ips; `only` limits the nodes checked (all when empty).
    std::chrono::milliseconds wait_converged(std::chrono::milliseconds timeout, std::vector<std::size_t> only = {});
    // Every node's log tail, for failure messages.
    std::string logs(std::size_t lines = 30) const;

private:
    derpd_options options_for(std::size_t i) const;

    std::vector<mesh_node_spec> _specs;
    int _shards;
    std::filesystem::path _dir;
    std::filesystem::path _ca_file;
    test_ca _ca;
    std::uint16_t _port = 0;
    std::vector<std::unique_ptr<derpd_process>> _nodes;
    std::vector<std::pair<std::string, std::shared_ptr<tls::context>>> _contexts;
};

// A mesh PSK of 64 hex digits derived from seed (distinct seeds, distinct keys).
std::string mesh_psk_for(std::uint8_t seed);

}  // namespace derp::test
