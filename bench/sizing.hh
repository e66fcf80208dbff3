// Capacity sizing: from a target (clients, traffic, packet size, headroom), a node's shape and
// what a run measured (each shard's knee: the highest packet rate relayed with loss under 1 %,
// per packet size; server memory per idle connection), the shards and nodes a region needs,
// with every step of the arithmetic and its assumptions written out for the operator to check.
// Pure: numbers in, a plan or an error out; `derpbench size` and the report's sizing section
// both print what this returns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.hh"

namespace derp::bench {

struct sizing_target {
    std::int64_t clients = 0;
    double total_gbps = -1;       // relayed traffic of the whole region; or:
    double mbps_per_client = -1;  // the mean rate of one client (total = clients x this)
    double packet_bytes = 0;      // mean packet size of the traffic
    std::string packet_label;     // how it was given: "1400" or "mix"
    double headroom = 0.3;        // share of capacity and memory kept spare, 0 <= headroom < 1
};

struct node_shape {
    std::int64_t shards = 0;  // relay shards per node (derpd runs one per core)
    double memory_gib = 0;    // memory a node gives derpd
};

// A shard's knee at one packet size (from a sweep, divided by the server's shard count).
struct knee_point {
    double packet_bytes = 0;
    double pps_per_shard = 0;
    bool limit_reached = true;  // false: a lower bound (no loss up to the sweep's highest rate,
                                // or the load generator could not send more)
};

struct measured_capacity {
    std::string run;                   // the run these figures came from
    std::vector<knee_point> knees;     // any order, at least one
    double bytes_per_connection = 0;   // server RSS per idle connection; 0 = not measured
    std::vector<std::string> notes;    // more assumptions the figures rest on
};

struct sizing_plan {
    sizing_target target;
    node_shape node;
    std::string run;
    double total_bps = 0;
    double packets_pps = 0;              // total_bps / (8 x packet_bytes)
    double knee_pps_per_shard = 0;       // at the target's packet size
    double usable_pps_per_shard = 0;     // x (1 - headroom)
    double shards_exact = 0;             // packets_pps / usable_pps_per_shard
    std::int64_t shards_for_traffic = 0;
    double memory_bytes = 0;             // clients x bytes_per_connection
    double usable_memory_per_node = 0;   // memory_gib x (1 - headroom)
    double nodes_for_cpu_exact = 0, nodes_for_memory_exact = 0;
    std::int64_t nodes_for_cpu = 0, nodes_for_memory = 0;
    std::int64_t nodes = 0;              // at least 1
    std::string bound;                   // "CPU" or "memory": whichever needs more nodes, unrounded
    std::vector<std::string> arithmetic;  // each step, with its numbers
    std::vector<std::string> assumptions;
};

// The knee of one shard at packet_bytes from the measured sizes: the time per packet (1/pps) is
// interpolated linearly between the nearest measured sizes; below the smallest size the rate
// stays the smallest's (per-packet cost does not fall further), above the largest the bytes per
// second stay the largest's (the cost grows with the bytes). `how` says which was used.
double knee_pps_at(const std::vector<knee_point>& knees, double packet_bytes, std::string* how = nullptr);

result<sizing_plan, std::string> plan_capacity(const sizing_target& target, const node_shape& node,
                                               const measured_capacity& measured);

// "clients=50000,gbps=20,size=mix,headroom=0.3" (or mbps-per-client=0.4 for gbps); size is
// bytes or "mix" (the realistic mix's mean, mix_mean_bytes). Keys may come in any order.
result<sizing_target, std::string> parse_sizing_target(std::string_view text, double mix_mean_bytes);
// "shards=16,memory-gib=64".
result<node_shape, std::string> parse_node_shape(std::string_view text);

std::string plan_text(const sizing_plan& plan);
// 4409171.4 -> "4,409,171": the figures an operator reads.
std::string grouped(double v);
std::string plan_json(const sizing_plan& plan);  // one JSON object

}  // namespace derp::bench
