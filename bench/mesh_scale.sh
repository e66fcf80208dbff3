#!/usr/bin/env bash
# A region at scale on one machine (issue 12): five derpd nodes (127.0.0.1-5, one shard each,
# TLS, fully meshed) and idle DERP clients spread over them, one derpbench process per node
# (open files are capped per process). Measures:
#   1. clients on node 1 only: memory per local client (node 1's RSS) and per remote route (the
#      other nodes' RSS), and the time for every node to learn node 1's keys;
#   2. clients on every node: the time from the last client's handshake until every node knows
#      every remote key;
#   3. node 5 restarts while a cross-node pair (node 1 <-> node 2) keeps sending: its clients'
#      keys leave the region (PeerGone through every watcher), come back when they reconnect;
#      the time to re-converge, the CPU all nodes spent, and the pair's packet loss (must be 0).
#   bench/mesh_scale.sh [CLIENTS_PER_NODE]      (default 18000: 90,000 in all)
set -uo pipefail
per_node=${1:-18000}
nodes=5
derpbench=${DERPBENCH:-build/bench/derpbench}
. "$(dirname "$0")/region_lib.sh"
tmp=$(mktemp -d)
loads=()
storm_cpu=()
cleanup() {
    for p in "${loads[@]}"; do kill "$p" 2>/dev/null; done
    region_stop_all
    for p in "${loads[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
port=$(( 10000 + RANDOM % 20000 ))  # below the ephemeral range
region_init "$tmp" "$nodes" "$port" || exit 1
# The kernel places every thread (five derpd pinning their shard to core 0 would share it).
for i in $(seq $nodes); do region_start "$i" --shards 1 --pin-threads=false || exit 1; done
for i in $(seq $nodes); do region_wait_mesh "$i" || exit 1; done
url() { echo "https://127.0.0.$1:$port/derp"; }

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/${REGION_PID[$1]}/status"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# Waits until every node counts `want` remote keys; prints how long it took from `$2`.
wait_remote() {
    local want_fn=$1 t0=$2 i ok
    for _ in $(seq 6000); do
        ok=1
        for i in $(seq $nodes); do
            [ "$(region_varz "$i" derp_clients_remote)" = "$($want_fn "$i")" ] || { ok=0; break; }
        done
        [ $ok = 1 ] && { since "$t0"; return 0; }
        sleep 0.05
    done
    echo "never converged:"; for i in $(seq $nodes); do echo " node $i remote $(region_varz "$i" derp_clients_remote), want $($want_fn "$i")"; done
    return 1
}
hold() {  # hold NODE: idle clients on the node, in the background
    "${storm_cpu[@]}" "$derpbench" connections --url "$(url "$1")" --ca "$tmp/ca.pem" --count "$per_node" --duration 300s --connect-concurrency 200 \
        --hold 3600s --json >"$tmp/load$1.json" 2>"$tmp/load$1.err" &
    loads[$1]=$!
}
wait_loaded() {  # until derpbench on NODE reported every client connected
    for _ in $(seq 6000); do
        if [ -s "$tmp/load$1.json" ]; then
            grep -q "\"connected\":$per_node," "$tmp/load$1.json" && return 0
            echo "node $1: not every client connected: $(cat "$tmp/load$1.json")"; return 1
        fi
        sleep 0.05
    done
    return 1
}

echo "region: $nodes nodes on port $port, $per_node idle clients per node"
declare -A rss0 heap0
for i in $(seq $nodes); do rss0[$i]=$(rss_kib "$i"); heap0[$i]=$(region_varz "$i" derpd_heap_in_use_bytes); done
# 1. Node 1's clients.
t0=$(now)
hold 1
wait_loaded 1 || { echo "node 1 load failed: $(cat "$tmp/load1.err")"; exit 1; }
echo "phase 1: node 1 clients: $(cat "$tmp/load1.json")"
want1() { [ "$1" = 1 ] && echo 0 || echo "$per_node"; }
echo "phase 1: every node knows node 1's keys $(wait_remote want1 "$t0") s after the first dial"
sleep 12  # past derpd's -memory-trim-interval (10 s): RSS without the handshakes' garbage
local_b=$(( ($(rss_kib 1) - rss0[1]) * 1024 / per_node ))
local_h=$(( ($(region_varz 1 derpd_heap_in_use_bytes) - heap0[1]) / per_node ))
remote_sum=0 remote_heap=0
for i in $(seq 2 $nodes); do
    remote_sum=$(( remote_sum + ($(rss_kib "$i") - rss0[$i]) * 1024 ))
    remote_heap=$(( remote_heap + $(region_varz "$i" derpd_heap_in_use_bytes) - heap0[$i] ))
done
echo "phase 1: per local client (node 1): heap $local_h B, RSS $local_b B; per remote route (nodes 2-$nodes): heap $(( remote_heap / (nodes - 1) / per_node )) B, RSS $(( remote_sum / (nodes - 1) / per_node )) B"
# 2. Everyone's clients.
t0=$(now)
for i in $(seq 2 $nodes); do hold "$i"; done
for i in $(seq 2 $nodes); do wait_loaded "$i" || { echo "node $i load failed: $(cat "$tmp/load$i.err")"; exit 1; }; done
t_loaded=$(now)
# The cross-node pair of phase 3 adds two clients on node 1 and two on node 2: remote keys to
# every node but their own two.
pair_on=0
pair_s=$(( 60 + per_node / 100 ))  # long enough to cover both storms
extra() { [ $pair_on = 1 ] && { [ "$1" -le 2 ] && echo 2 || echo 4; } || echo 0; }
wantall() { echo $(( per_node * (nodes - 1) + $(extra "$1") )); }
conv=$(wait_remote wantall "$t_loaded")
echo "phase 2: $((per_node * nodes)) clients; all dialled in $(awk -v a="$t0" -v b="$t_loaded" 'BEGIN{printf "%.1f", b-a}') s; every node knows every remote key $conv s after the last handshake"
for i in $(seq $nodes); do echo "  node $i: local $(region_varz "$i" derp_clients_local) remote $(region_varz "$i" derp_clients_remote) RSS $(( $(rss_kib "$i") / 1024 )) MiB"; done
# For phase 3, nodes 1 and 2 (the healthy ones) and the pair's load generator get core 0, and
# nodes 3-5 with every idle client's generator core 1: on one machine the storm's TLS
# handshakes would otherwise starve the healthy nodes of CPU, which nodes on machines of their
# own never are. What the healthy nodes still get from the storm is the region's traffic.
taskset -a -p -c 0 "${REGION_PID[1]}" >/dev/null && taskset -a -p -c 0 "${REGION_PID[2]}" >/dev/null || exit 1
for i in 3 4 5; do taskset -a -p -c 1 "${REGION_PID[$i]}" >/dev/null || exit 1; done
for i in $(seq $nodes); do taskset -a -p -c 1 "${loads[$i]}" >/dev/null || exit 1; done
storm_cpu=(taskset -c 1)
# 3. Under a cross-node pair (node 1 <-> node 2): node 5's clients leave and come back (18,000
# PeerGone then PeerPresent through every watcher), then node 5 itself restarts (every link to
# it breaks: its keys are withdrawn at once) and its clients reconnect.
taskset -c 0 "$derpbench" throughput --cpu 0 --url "$(url 1)" --url "$(url 2)" --cross-node --ca "$tmp/ca.pem" --pairs 2 --rate 2000 \
    --size 200 --warmup 1s --duration "$pair_s"s --json >"$tmp/pair.json" 2>"$tmp/pair.err" &
pair=$!
t_pair=$(now)
pair_on=1
t0=$(now)
wait_remote wantall "$t0" >/dev/null || exit 1
cpu_all() { local c=0 i; for i in $(seq $nodes); do c=$(( c + $(region_cpu_ticks "$i") )); done; echo $c; }
secs() { awk -v c="$1" -v t="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", c / t}'; }
want_down() { [ "$1" = 5 ] && wantall 5 || echo $(( per_node * (nodes - 2) + $(extra "$1") )); }
# Idle cost first, to tell the storms' CPU from what 90,000 idle clients cost anyway.
cpu0=$(cpu_all)
sleep 20
echo "phase 3: idle region (with the pair): CPU of all nodes $(secs $(( $(cpu_all) - cpu0 ))) s in 20 s"
cpu0=$(cpu_all)
t0=$(now)
kill "${loads[5]}" 2>/dev/null
# Timed from the moment derpbench starts closing its clients (it takes a while to close
# them all over TLS); the nodes withdraw each key as its connection goes.
down=$(wait_remote want_down "$t0")
wait "${loads[5]}" 2>/dev/null
echo "phase 3a: node 5's clients left; nodes 1-4 dropped their keys $down s after derpbench began closing them (it took $(since "$t0") s to close all)"
rm -f "$tmp/load5.json"
t0=$(now)
hold 5
wait_loaded 5 || { echo "node 5 load failed: $(cat "$tmp/load5.err")"; exit 1; }
echo "phase 3a: they reconnected; region re-converged $(wait_remote wantall "$t0") s after they started dialling; CPU of all nodes $(secs $(( $(cpu_all) - cpu0 ))) s"
cpu14() { local c=0 i; for i in $(seq 4); do c=$(( c + $(region_cpu_ticks "$i") )); done; echo $c; }
c0=$(cpu14)
t0=$(now)
kill "${REGION_PID[5]}"  # SIGTERM: derpd closes every connection, the mesh links among them
want_gone() { echo $(( per_node * 3 + $(extra "$1") )); }
REGION_N=4  # wait_remote and the varz polls look at nodes 1-4 only while node 5 is down
nodes=4
gone=$(wait_remote want_gone "$t0")
nodes=5; REGION_N=5
region_stop 5
echo "phase 3b: node 5 stopped (SIGTERM; it exited after $(since "$t0") s); its keys left nodes 1-4 $gone s after the signal"
kill "${loads[5]}" 2>/dev/null; wait "${loads[5]}" 2>/dev/null
REGION_CPUS=1 region_start 5 --shards 1 --pin-threads=false || exit 1
rm -f "$tmp/load5.json"
t_restart=$(now)
hold 5
wait_loaded 5 || { echo "node 5 reload failed: $(cat "$tmp/load5.err")"; exit 1; }
echo "phase 3b: node 5 back with its $per_node clients; region re-converged $(wait_remote wantall "$t_restart") s after its restart"
echo "phase 3b: CPU over the restart: nodes 1-4 $(secs $(( $(cpu14) - c0 ))) s, the new node 5 $(secs "$(region_cpu_ticks 5)") s"
echo "phase 3: storms over $(since "$t_pair") s after the pair started (it runs $pair_s s)"
wait "$pair"
echo "phase 3: cross-node pair during both storms: $(cat "$tmp/pair.json")"
for i in 1 2; do
    echo "node $i drops (non-zero series):"
    curl -s "http://127.0.0.$i:$((port + 1))/debug/varz" | grep -E '^(derp_packets_dropped|derpd_packets_dropped_total|derpd_mesh_dropped_total)' | grep -v ' 0$' | sed 's/^/  /'
done
# The verdict: the pair lost nothing through both storms.
grep -q '"dropped_packets":0,' "$tmp/pair.json" || { echo "FAIL: the cross-node pair lost packets during the storms"; exit 1; }
