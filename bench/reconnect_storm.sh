#!/usr/bin/env bash
# Reconnect storm, measured: one derpd (one shard) and derpbench opening N idle DERP clients at
# once, then closing them; prints the server CPU time per connection (connect and close, from
# /proc/PID/stat) and how long derpbench took to connect them all.
#   bench/reconnect_storm.sh DERPD N        (from the source root, after ./scripts/build)
set -uo pipefail
bin=$1 n=$2
derpbench=${DERPBENCH:-build/bench/derpbench}
. "$(dirname "$0")/one_derpd.sh"
one_derpd_start "$bin"
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
c0=$(cpu)
out=$("$derpbench" connections --url "http://127.0.0.1:$port/derp" --count "$n" --duration 120s --json 2>/dev/null)
sleep 1
c1=$(cpu)
tck=$(getconf CLK_TCK)
echo "$bin n=$n cpu_us_per_conn=$(( (c1 - c0) * 1000000 / tck / n )) $(grep -o '"connected":[0-9]*,"failed":[0-9]*,"duration_s":[0-9.]*' <<<"$out")"
kill $pid; wait $pid 2>/dev/null; rm -rf "$tmp"
