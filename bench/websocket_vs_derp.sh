#!/usr/bin/env bash
# docs/BENCHMARKS.md, "DERP over WebSocket": relay throughput and server CPU per packet over
# WebSocket (ws://) against Upgrade: DERP (http://), both against the same derpd in the same run,
# rounds alternating between the two so that drift on the shared machine hits both. The load
# writes as real clients do: one DERP frame per send (--frames-per-write 1), which over
# WebSocket is one masked message per frame, as browsers and Go's wsconn send. Prints one line
# per run and then the medians and ratios. Usage: bench/websocket_vs_derp.sh [BUILD] [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
tmp=$(mktemp -d)
"$build/server/derpd" -a 127.0.0.1:0 -c "$tmp/k" -stun=false -http-port -1 -shards 1 >"$tmp/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do grep -q "serving on" "$tmp/log" && break; sleep 0.05; done
port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/log" | head -n 1)
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# size:rate pairs, paced below what one load-generator core sends one frame per write (about
# 90k frames/s here), so that both transports carry the same packets and CPU per packet compares.
cases=${CASES:-"64:50000 1400:50000"}
for c in $cases; do
  size=${c%%:*}; rate=${c##*:}
  for r in $(seq "$rounds"); do
    order="http ws"; ((r % 2 == 0)) && order="ws http"
    for scheme in $order; do
      cmd=("$build/bench/derpbench" throughput --url "$scheme://127.0.0.1:$port/derp" --pairs 4 --size "$size"
           --rate "$rate" --frames-per-write 1 --duration 2s --warmup 300ms --server-pid "$pid" --json)
      out=$("${cmd[@]}")
      pps=$(field delivered_pps "$out"); us=$(field server_cpu_us_per_packet "$out"); loss=$(field loss_ratio "$out")
      echo "size=$size rate=$rate round=$r $scheme delivered_pps=$pps server_us_per_packet=$us loss=$loss"
      echo "$pps" >>"$tmp/$c.$scheme.pps"; echo "$us" >>"$tmp/$c.$scheme.us"
    done
  done
  hp=$(median <"$tmp/$c.http.pps"); wp=$(median <"$tmp/$c.ws.pps")
  hu=$(median <"$tmp/$c.http.us"); wu=$(median <"$tmp/$c.ws.us")
  awk -v s="$size" -v r="$rate" -v hp="$hp" -v wp="$wp" -v hu="$hu" -v wu="$wu" 'BEGIN {
    printf "MEDIAN size=%s rate=%s  delivered pkt/s: DERP %.0f, WebSocket %.0f (%.2fx)  server us/packet: DERP %.3f, WebSocket %.3f (%.2fx)\n",
      s, r, hp, wp, wp / hp, hu, wu, wu / hu }'
done
echo "command: derpbench throughput --url {http,ws}://127.0.0.1:$port/derp --pairs 4 --size SIZE --rate RATE --frames-per-write 1 --duration 2s --warmup 300ms --server-pid PID"
