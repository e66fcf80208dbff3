#!/usr/bin/env bash
# A restart under load (issue 16): `derpbench restart` pairs carry the load (one frame per
# write, numbered packets) through an old derpd; a new derpd joins the port with -takeover;
# SIGTERM makes the old one drain: every client hears Restarting, reconnects after its
# reconnect-in (drawn below -drain-reconnect-spread), moves its traffic to the new process and
# leaves the old one, which exits when the last client has gone. derpbench classes every lost
# packet by its send time: inside the interval during which its pair's two ends sat on
# different processes (the price of spreading the reconnects) or beyond it (should be 0).
# Usage: bench/restart_under_load.sh [BUILD_DIR] [PAIRS] [RATE_PPS] [SIZE] [SPREADS...]
set -euo pipefail
build=${1:-build}
pairs=${2:-100}
rate=${3:-40000}
size=${4:-1400}
shift $(($# < 4 ? $# : 4))
spreads=("$@")
((${#spreads[@]})) || spreads=(2s 200ms)
derpd="$build/server/derpd"
bench="$build/bench/derpbench"
for spread in "${spreads[@]}"; do
  tmp=$(mktemp -d)
  "$derpd" -a 127.0.0.1:0 -c "$tmp/key" -stun=false -shards 1 -http-port -1 --pin-threads=false \
    -drain-timeout 20s -drain-reconnect-spread "$spread" >"$tmp/old.log" 2>&1 &
  old=$!
  for _ in $(seq 100); do grep -qs "serving on" "$tmp/old.log" && break; sleep 0.05; done
  port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/old.log" | head -n 1)
  "$bench" restart --url "http://127.0.0.1:$port/derp" --pairs "$pairs" --rate "$rate" --size "$size" \
    --duration 8s >"$tmp/bench.out" 2>"$tmp/bench.err" &
  load=$!
  sleep 3
  "$derpd" -a "127.0.0.1:$port" -c "$tmp/key" -stun=false -shards 1 -http-port -1 --pin-threads=false \
    -takeover -drain-timeout 0 >"$tmp/new.log" 2>&1 &
  new=$!
  for _ in $(seq 100); do grep -qs "serving on" "$tmp/new.log" && break; sleep 0.05; done
  t0=$(date +%s%N)
  kill -TERM "$old"
  wait "$old" && old_rc=0 || old_rc=$?
  t1=$(date +%s%N)
  wait "$load" && load_rc=0 || load_rc=$?
  kill -TERM "$new"
  wait "$new" || true
  echo "== spread $spread: old node exited ($old_rc) $(((t1 - t0) / 1000000)) ms after SIGTERM; derpbench exit $load_rc"
  cat "$tmp/bench.out"
  grep -h "dropped:" "$tmp/old.log" "$tmp/new.log" | sed 's/^/  /'
  rm -rf "$tmp"
done
