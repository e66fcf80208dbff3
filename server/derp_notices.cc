// What a node tells its clients about itself (spec 1.x, frames derper defines and never sends):
// Restarting{reconnect in, try for} when it drains before a restart, and Health{problem} while
// it is degraded (an empty problem: healthy again). See derp_service.hh.
#include <algorithm>

#include "core/frame.hh"
#include "server/derp_internal.hh"
#include "server/derp_service.hh"

namespace derp::server {

using ring::conn_id;

void node_health::set(std::string problem) {
    if (problem.size() > problem_bytes_max) problem.resize(problem_bytes_max);
    std::lock_guard lock(_mutex);
    if (problem == _problem) return;
    _problem = std::move(problem);
    _generation.fetch_add(1, std::memory_order_acq_rel);
}

std::string node_health::problem() const {
    std::lock_guard lock(_mutex);
    return _problem;
}

void derp_service::on_drain(std::uint64_t deadline_ns) noexcept {
    _draining = true;
    _drain_deadline_ns = deadline_ns;
    // Every client past ServerInfo hears it now; the ones still in their handshake after their
    // ServerInfo (greet). Mesh peers too: a derper peer ignores the frame, and its link closes
    // at the end of the drain as at any stop.
    for (std::uint32_t slot = 0; slot < _clients.size(); ++slot) {
        client& c = _clients[slot];
        if (c.open && c.stage == phase::relay) queue_restarting(conn_id{slot, c.gen}, c);
    }
}

void derp_service::queue_restarting(conn_id conn, client& c) noexcept {
    const auto spread_ms = static_cast<std::uint64_t>(std::max<std::int64_t>(_settings.drain_reconnect_spread_ns / 1'000'000, 0));
    const auto reconnect_in_ms = spread_ms == 0 ? 0 : static_cast<std::uint32_t>(splitmix64(_rng_state) % spread_ms);
    const auto try_for_ms = static_cast<std::uint32_t>(std::clamp<std::int64_t>(_settings.restart_try_for_ns / 1'000'000, 0, UINT32_MAX));
    std::array<std::uint8_t, restarting_frame_bytes> frame{};
    encode_restarting(frame, reconnect_in_ms, try_for_ms);
    queue_control(conn, c, frame);
    _counters.restarting_frames.add();
}

void derp_service::queue_health(conn_id conn, client& c) noexcept {
    std::array<std::uint8_t, health_frame_bytes(node_health::problem_bytes_max)> frame{};
    const std::size_t n = encode_health(frame, _health_problem);
    queue_control(conn, c, std::span<const std::uint8_t>(frame.data(), n));
    _counters.health_frames.add();
}

void derp_service::greet(conn_id conn, client& c) noexcept {
    if (!_health_problem.empty()) queue_health(conn, c);
    if (_draining) queue_restarting(conn, c);
}

void derp_service::notice_health() noexcept {
    const std::uint64_t generation = _shared.health.generation();
    if (generation == _health_generation) return;  // one atomic load per turn
    _health_generation = generation;
    std::string problem = _shared.health.problem();
    if (problem == _health_problem) return;
    _health_problem = std::move(problem);
    for (std::uint32_t slot = 0; slot < _clients.size(); ++slot) {
        client& c = _clients[slot];
        if (c.open && c.stage == phase::relay) queue_health(conn_id{slot, c.gen}, c);
    }
}

}  // namespace derp::server
