#!/usr/bin/env bash
# How long derpd's orderly stop (SIGTERM) takes with N idle plain-HTTP clients on one shard:
# every connection is closed and its io_uring ops cancelled.
#   bench/stop_time.sh DERPD N        (from the source root, after a build)
set -uo pipefail
bin=$1 n=$2
derpbench=${DERPBENCH:-build/bench/derpbench}
. "$(dirname "$0")/one_derpd.sh"
one_derpd_start "$bin"
"$derpbench" connections --url "http://127.0.0.1:$port/derp" --count "$n" --connect-concurrency 500 --duration 120s \
    --hold 600s --json >"$tmp/load.json" 2>/dev/null &
load=$!
for _ in $(seq 2400); do [ -s "$tmp/load.json" ] && break; sleep 0.05; done
t0=$(date +%s.%N)
kill "$pid"; wait "$pid"
echo "$bin n=$n stop_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }') $(grep -o '"connected":[0-9]*' "$tmp/load.json")"
kill "$load"; wait "$load" 2>/dev/null; rm -rf "$tmp"
