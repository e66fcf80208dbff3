#!/usr/bin/env bash
# Relay across a region against relay on one node, on the same machine in the same run: two
# derpd nodes (one shard each, TLS, meshed), derpbench pairs at a fixed offered rate either with
# both ends of every pair on one node, one frame per write as real clients send (same-node) or with each receiver on the other node
# (cross-node: every packet is a ForwardPacket between the nodes). Prints, per round, the CPU
# both derpd processes spent per delivered packet (from /proc/PID/stat) and its ratio, then
# medians; and the round-trip latency of one probe pair (p50, p99), same-node and cross-node.
#   bench/mesh_relay.sh [ROUNDS] [RATE_PPS] [SIZE]      (from the source root, after a build)
set -uo pipefail
rounds=${1:-5} rate=${2:-20000} size=${3:-1400}
derpbench=${DERPBENCH:-build/bench/derpbench}
. "$(dirname "$0")/region_lib.sh"
tmp=$(mktemp -d)
trap 'region_stop_all; rm -rf "$tmp"' EXIT
port=$(( 10000 + RANDOM % 20000 ))  # below the ephemeral range (32768-)
region_init "$tmp" 2 "$port" || exit 1
region_start 1 --shards 1 && region_start 2 --shards 1 || exit 1
region_wait_mesh 1 && region_wait_mesh 2 || exit 1
a="https://127.0.0.1:$port/derp" b="https://127.0.0.2:$port/derp"
tck=$(getconf CLK_TCK)
run() {  # run MODE: prints "cpu_us_per_packet delivered loss"
    local extra=() c0 c1 out delivered
    [ "$1" = cross ] && extra=(--cross-node)
    c0=$(( $(region_cpu_ticks 1) + $(region_cpu_ticks 2) ))
    out=$("$derpbench" throughput --url "$a" --url "$b" "${extra[@]}" --ca "$tmp/ca.pem" --pairs 4 --frames-per-write 1 \
          --rate "$rate" --size "$size" --duration 4s --json 2>/dev/null)
    c1=$(( $(region_cpu_ticks 1) + $(region_cpu_ticks 2) ))
    delivered=$(grep -o '"delivered_packets":[0-9]*' <<<"$out" | cut -d: -f2)
    loss=$(grep -o '"loss_ratio":[0-9.]*' <<<"$out" | cut -d: -f2)
    # CPU over the whole run (warm-up included) against the packets of the measured window,
    # scaled by the window's share of the run (4 s of 4.5 s): the same for both modes.
    awk -v c=$((c1 - c0)) -v t="$tck" -v d="${delivered:-0}" -v l="$loss" \
        'BEGIN { if (d == 0) { print "nan 0 " l; exit } printf "%.2f %d %s\n", c / t * 1e6 * (4 / 4.5) / d, d, l }'
}
same=() cross=() ratios=()
echo "round  same-node us/pkt  cross-node us/pkt  ratio   (rate $rate pkt/s, $size B, 4 pairs)"
for r in $(seq "$rounds"); do
    read -r s sd sl < <(run same)
    read -r c cd cl < <(run cross)
    ratio=$(awk -v s="$s" -v c="$c" 'BEGIN { printf "%.2f", c / s }')
    same+=("$s") cross+=("$c") ratios+=("$ratio")
    echo "$r      $s (loss $sl)        $c (loss $cl)        $ratio"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "median same-node $(median "${same[@]}") us/pkt, cross-node $(median "${cross[@]}") us/pkt, ratio $(median "${ratios[@]}")"
for mode in same cross; do
    extra=()
    [ "$mode" = cross ] && extra=(--cross-node)
    out=$("$derpbench" latency --url "$a" --url "$b" "${extra[@]}" --ca "$tmp/ca.pem" --size "$size" --duration 5s --json 2>/dev/null)
    echo "latency $mode-node: p50 $(grep -o '"rtt_p50_us":[0-9.]*' <<<"$out" | cut -d: -f2) us, p99 $(grep -o '"rtt_p99_us":[0-9.]*' <<<"$out" | cut -d: -f2) us"
done
echo "forwarded: node 1 out $(region_varz 1 derp_packets_forwarded_out), in $(region_varz 1 derp_packets_forwarded_in)"
[ "$(region_varz 1 derp_packets_forwarded_out)" -gt 0 ] 2>/dev/null || { echo "FAIL: nothing was forwarded"; exit 1; }
