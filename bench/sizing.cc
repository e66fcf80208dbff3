// Capacity sizing arithmetic and its text and JSON forms (see sizing.hh).
#include "bench/sizing.hh"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/bootstrap_dns.hh"

namespace derp::bench {
namespace {

constexpr double gib = 1024.0 * 1024.0 * 1024.0;

// ceil() that does not turn 4.000000000001 (a quotient that is exactly 4 on paper) into 5.
std::int64_t whole_units(double exact) {
    const double rounded = std::round(exact);
    if (std::fabs(exact - rounded) <= 1e-9 * std::max(1.0, std::fabs(exact))) return static_cast<std::int64_t>(rounded);
    return static_cast<std::int64_t>(std::ceil(exact));
}

std::string bytes_text(double b) {
    if (b >= gib) return fmt::format("{:.1f} GiB", b / gib);
    if (b >= 1024.0 * 1024.0) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024.0));
    return fmt::format("{} B", grouped(b));
}

// One "key=value" list into (key, value) pairs.
result<std::vector<std::pair<std::string, std::string>>, std::string> key_values(std::string_view text, std::string_view what) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const std::string& entry : parse_name_list(text)) {
        const auto eq = entry.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == entry.size())
            return unexpected(fmt::format("{}: \"{}\" is not key=value", what, entry));
        out.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
    }
    return out;
}

std::optional<double> number_of(const std::string& text) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0' || !std::isfinite(v)) return std::nullopt;
    return v;
}

}  // namespace

std::string grouped(double v) {
    const std::string digits = fmt::format("{:.0f}", std::fabs(v));
    std::string out = v <= -0.5 ? "-" : "";
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
        out.push_back(digits[i]);
    }
    return out;
}

double knee_pps_at(const std::vector<knee_point>& knees_in, double packet_bytes, std::string* how) {
    std::vector<knee_point> knees;
    for (const auto& k : knees_in)
        if (k.packet_bytes > 0 && k.pps_per_shard > 0) knees.push_back(k);
    if (knees.empty() || packet_bytes <= 0) return 0;
    std::sort(knees.begin(), knees.end(), [](const knee_point& a, const knee_point& b) { return a.packet_bytes < b.packet_bytes; });
    const auto say = [&](std::string text) {
        if (how != nullptr) *how = std::move(text);
    };
    for (const auto& k : knees)
        if (k.packet_bytes == packet_bytes) {
            say(fmt::format("measured at {:.0f} B", packet_bytes));
            return k.pps_per_shard;
        }
    if (packet_bytes < knees.front().packet_bytes) {
        say(fmt::format("the rate measured at {:.0f} B, the smallest size measured (per-packet cost taken as no lower "
                        "for smaller packets)",
                        knees.front().packet_bytes));
        return knees.front().pps_per_shard;
    }
    if (packet_bytes > knees.back().packet_bytes) {
        const auto& k = knees.back();
        say(fmt::format("the bytes/s measured at {:.0f} B, the largest size measured (cost taken as growing with the "
                        "bytes for larger packets)",
                        k.packet_bytes));
        return k.pps_per_shard * k.packet_bytes / packet_bytes;
    }
    const auto above = std::find_if(knees.begin(), knees.end(), [&](const knee_point& k) { return k.packet_bytes > packet_bytes; });
    const auto& hi = *above;
    const auto& lo = *(above - 1);
    const double f = (packet_bytes - lo.packet_bytes) / (hi.packet_bytes - lo.packet_bytes);
    const double seconds_per_packet = (1 - f) / lo.pps_per_shard + f / hi.pps_per_shard;
    say(fmt::format("interpolated between {:.0f} B and {:.0f} B, time per packet linear in size", lo.packet_bytes,
                    hi.packet_bytes));
    return 1 / seconds_per_packet;
}

result<sizing_plan, std::string> plan_capacity(const sizing_target& t, const node_shape& node, const measured_capacity& m) {
    if (t.clients <= 0) return unexpected(std::string("target: clients must be at least 1"));
    if (!(t.headroom >= 0 && t.headroom < 1)) return unexpected(fmt::format("target: headroom {} must be 0 to below 1", t.headroom));
    if ((t.total_gbps >= 0) == (t.mbps_per_client >= 0))
        return unexpected(std::string("target: give exactly one of gbps (the region's total) and mbps-per-client"));
    if (!(t.packet_bytes >= 1 && t.packet_bytes <= 65536)) return unexpected(std::string("target: size must be 1..65536 bytes or mix"));
    if (node.shards < 1) return unexpected(std::string("node: shards must be at least 1"));
    if (!(node.memory_gib > 0)) return unexpected(std::string("node: memory-gib must be above 0"));
    sizing_plan p;
    p.target = t;
    p.node = node;
    p.run = m.run;
    std::string how;
    p.knee_pps_per_shard = knee_pps_at(m.knees, t.packet_bytes, &how);
    if (p.knee_pps_per_shard <= 0) return unexpected(fmt::format("run \"{}\": no sweep knee to size from (run a sweep with --out)", m.run));
    if (m.bytes_per_connection <= 0)
        return unexpected(fmt::format("run \"{}\": no memory per connection to size from (run connections with --server-pid and --out)", m.run));
    const double usable = 1 - t.headroom;
    p.total_bps = t.total_gbps >= 0 ? t.total_gbps * 1e9 : static_cast<double>(t.clients) * t.mbps_per_client * 1e6;
    p.packets_pps = p.total_bps / (8 * t.packet_bytes);
    p.usable_pps_per_shard = p.knee_pps_per_shard * usable;
    p.shards_exact = p.packets_pps / p.usable_pps_per_shard;
    p.shards_for_traffic = whole_units(p.shards_exact);
    p.nodes_for_cpu_exact = p.shards_exact / static_cast<double>(node.shards);
    p.nodes_for_cpu = whole_units(p.nodes_for_cpu_exact);
    p.memory_bytes = static_cast<double>(t.clients) * m.bytes_per_connection;
    p.usable_memory_per_node = node.memory_gib * gib * usable;
    p.nodes_for_memory_exact = p.memory_bytes / p.usable_memory_per_node;
    p.nodes_for_memory = whole_units(p.nodes_for_memory_exact);
    p.nodes = std::max<std::int64_t>({p.nodes_for_cpu, p.nodes_for_memory, 1});
    p.bound = p.nodes_for_memory_exact > p.nodes_for_cpu_exact ? "memory" : "CPU";

    const std::string pct = fmt::format("{:.0f} %", t.headroom * 100);
    auto& a = p.arithmetic;
    a.push_back(t.total_gbps >= 0 ? fmt::format("traffic: {} Gbit/s", t.total_gbps)
                                  : fmt::format("traffic: {} clients x {} Mbit/s = {:.3f} Gbit/s", grouped(static_cast<double>(t.clients)),
                                                t.mbps_per_client, p.total_bps / 1e9));
    a.push_back(fmt::format("packets: {:.3f} Gbit/s / (8 x {:.0f} B) = {} pkt/s", p.total_bps / 1e9, t.packet_bytes,
                            grouped(p.packets_pps)));
    a.push_back(fmt::format("one shard at {:.0f} B: {} pkt/s at the knee ({}); with {} headroom: {} pkt/s usable",
                            t.packet_bytes, grouped(p.knee_pps_per_shard), how, pct, grouped(p.usable_pps_per_shard)));
    a.push_back(fmt::format("shards for the traffic: {} / {} = {:.2f} -> {}", grouped(p.packets_pps),
                            grouped(p.usable_pps_per_shard), p.shards_exact, p.shards_for_traffic));
    a.push_back(fmt::format("nodes for CPU: {:.2f} shards / {} shards per node = {:.2f} -> {}", p.shards_exact, node.shards,
                            p.nodes_for_cpu_exact, p.nodes_for_cpu));
    a.push_back(fmt::format("memory: {} clients x {:.0f} B per connection = {}; a node's {} GiB with {} headroom: {}",
                            grouped(static_cast<double>(t.clients)), m.bytes_per_connection, bytes_text(p.memory_bytes),
                            node.memory_gib, pct, bytes_text(p.usable_memory_per_node)));
    a.push_back(fmt::format("nodes for memory: {} / {} = {:.2f} -> {}", bytes_text(p.memory_bytes),
                            bytes_text(p.usable_memory_per_node), p.nodes_for_memory_exact, p.nodes_for_memory));
    a.push_back(fmt::format("nodes: the larger of {} (CPU) and {} (memory), at least 1 = {}: {}-bound", p.nodes_for_cpu,
                            p.nodes_for_memory, p.nodes, p.bound));

    auto& s = p.assumptions;
    s.push_back(fmt::format("capacity is run \"{}\"'s knee: the highest offered rate its sweep delivered with loss under "
                            "1 %, divided by the server's shards; shards scale linearly (one per core, no shared limit)",
                            m.run));
    for (const auto& k : m.knees)
        if (!k.limit_reached)
            s.push_back(fmt::format("at {:.0f} B the knee is a lower bound (the sweep found no loss up to its highest rate, "
                                    "or the load generator could not send more)",
                                    k.packet_bytes));
    s.insert(s.end(), m.notes.begin(), m.notes.end());
    s.push_back("the knee was measured with the load generator on the same machine, so a node serving remote clients "
                "has at least that much room");
    s.push_back("traffic spreads evenly over shards and nodes (a region's clients pick nodes by the DERP map)");
    s.push_back(fmt::format("memory per client is the idle figure ({:.0f} B of server RSS per connection); queued packets "
                            "under load and the process's base memory come out of the {} headroom",
                            m.bytes_per_connection, pct));
    return p;
}

result<sizing_target, std::string> parse_sizing_target(std::string_view text, double mix_mean_bytes) {
    auto pairs = key_values(text, "--target");
    if (!pairs) return unexpected(pairs.error());
    sizing_target t;
    t.packet_bytes = mix_mean_bytes;
    t.packet_label = "mix";
    for (const auto& [key, value] : pairs.value()) {
        if (key == "size") {
            if (value == "mix") {
                t.packet_bytes = mix_mean_bytes;
                t.packet_label = "mix";
                continue;
            }
        }
        const auto v = number_of(value);
        if (!v) return unexpected(fmt::format("--target: {}={} is not a number", key, value));
        if (key == "clients") {
            if (*v < 1 || *v > 1e12 || std::floor(*v) != *v) return unexpected(fmt::format("--target: clients={} (want a whole number >= 1)", value));
            t.clients = static_cast<std::int64_t>(*v);
        } else if (key == "gbps") {
            if (*v < 0 || *v > 1e9) return unexpected(fmt::format("--target: gbps={} (want 0 or more)", value));
            t.total_gbps = *v;
        } else if (key == "mbps-per-client") {
            if (*v < 0 || *v > 1e9) return unexpected(fmt::format("--target: mbps-per-client={} (want 0 or more)", value));
            t.mbps_per_client = *v;
        } else if (key == "size") {
            if (*v < 1 || *v > 65536) return unexpected(fmt::format("--target: size={} (want 1..65536 bytes or mix)", value));
            t.packet_bytes = *v;
            t.packet_label = value;
        } else if (key == "headroom") {
            if (!(*v >= 0 && *v < 1)) return unexpected(fmt::format("--target: headroom={} (want 0 to below 1, e.g. 0.3)", value));
            t.headroom = *v;
        } else {
            return unexpected(fmt::format("--target: unknown key \"{}\" (want clients, gbps or mbps-per-client, size, headroom)", key));
        }
    }
    if (t.clients == 0) return unexpected(std::string("--target: clients=N is required"));
    if ((t.total_gbps >= 0) == (t.mbps_per_client >= 0))
        return unexpected(std::string("--target: give exactly one of gbps=G (the region's total) and mbps-per-client=M"));
    return t;
}

result<node_shape, std::string> parse_node_shape(std::string_view text) {
    auto pairs = key_values(text, "--node");
    if (!pairs) return unexpected(pairs.error());
    node_shape n;
    for (const auto& [key, value] : pairs.value()) {
        const auto v = number_of(value);
        if (!v) return unexpected(fmt::format("--node: {}={} is not a number", key, value));
        if (key == "shards") {
            if (*v < 1 || *v > 4096 || std::floor(*v) != *v) return unexpected(fmt::format("--node: shards={} (want 1..4096)", value));
            n.shards = static_cast<std::int64_t>(*v);
        } else if (key == "memory-gib") {
            if (!(*v > 0 && *v <= 1 << 20)) return unexpected(fmt::format("--node: memory-gib={} (want above 0)", value));
            n.memory_gib = *v;
        } else {
            return unexpected(fmt::format("--node: unknown key \"{}\" (want shards, memory-gib)", key));
        }
    }
    if (n.shards == 0 || n.memory_gib == 0) return unexpected(std::string("--node: want shards=N,memory-gib=G"));
    return n;
}

std::string plan_text(const sizing_plan& p) {
    std::string out = fmt::format(
        "{} nodes ({} shards each, {} GiB) for {} clients and {:.3f} Gbit/s of {} packets, {:.0f} % headroom: {}-bound\n",
        p.nodes, p.node.shards, p.node.memory_gib, grouped(static_cast<double>(p.target.clients)), p.total_bps / 1e9,
        p.target.packet_label == "mix" ? fmt::format("mixed ({:.0f} B mean)", p.target.packet_bytes)
                                       : fmt::format("{:.0f} B", p.target.packet_bytes),
        p.target.headroom * 100, p.bound);
    out += fmt::format("  shards needed for the traffic: {} (from run \"{}\")\n", p.shards_for_traffic, p.run);
    out += "arithmetic:\n";
    for (const auto& line : p.arithmetic) out += "  " + line + "\n";
    out += "assumptions:\n";
    for (const auto& line : p.assumptions) out += "  - " + line + "\n";
    return out;
}

std::string plan_json(const sizing_plan& p) {
    nlohmann::ordered_json j;
    j["run"] = p.run;
    j["target"] = {{"clients", p.target.clients},
                   {"total_bps", p.total_bps},
                   {"packet_bytes", p.target.packet_bytes},
                   {"packet_label", p.target.packet_label},
                   {"headroom", p.target.headroom}};
    j["node"] = {{"shards", p.node.shards}, {"memory_gib", p.node.memory_gib}};
    j["packets_pps"] = p.packets_pps;
    j["knee_pps_per_shard"] = p.knee_pps_per_shard;
    j["usable_pps_per_shard"] = p.usable_pps_per_shard;
    j["shards_for_traffic"] = p.shards_for_traffic;
    j["memory_bytes"] = p.memory_bytes;
    j["usable_memory_bytes_per_node"] = p.usable_memory_per_node;
    j["nodes_for_cpu"] = p.nodes_for_cpu;
    j["nodes_for_memory"] = p.nodes_for_memory;
    j["nodes"] = p.nodes;
    j["bound"] = p.bound;
    j["arithmetic"] = p.arithmetic;
    j["assumptions"] = p.assumptions;
    return j.dump();
}

}  // namespace derp::bench
