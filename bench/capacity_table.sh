#!/usr/bin/env bash
# The capacity table of docs/BENCHMARKS.md, made with derpbench against a one-shard derpd on
# this machine: per packet size the highest rate delivered with under 1 % loss (sweep), the
# server's CPU per Gbit there, p99 round-trip latency at half that rate, and memory per idle
# connection. Prints a Markdown table whose every row names the commands that made it.
# usage: bench/capacity_table.sh [BUILD_DIR] [plain|tls]
set -euo pipefail
build=${1:-build}
transport=${2:-plain}
derpd="$build/server/derpd"
bench="$build/bench/derpbench"
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

# derpd's shard goes on core 0 (its own pinning); derpbench pins the load to the last core.
args=(-a 127.0.0.1:0 -c "$tmp/derper.key" -stun=false -shards 1)
[[ "$transport" == tls ]] && args+=(-certmode manual -hostname 127.0.0.1 -certdir "$tmp/certs" -http-port -1)
"$derpd" "${args[@]}" >"$tmp/derpd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/derpd.log" && break; sleep 0.05; done
port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/derpd.log" | head -n 1)
if [[ "$transport" == tls ]]; then
  url="https://127.0.0.1:$port/derp"
  pin=$(grep -o 'sha256-raw:[0-9a-f]*' "$tmp/derpd.log" | head -n 1)
  target=(--url "$url" --cert-name "$pin")
  shown="--url $url --cert-name sha256-raw:..."
else
  url="http://127.0.0.1:$port/derp"
  target=(--url "$url")
  shown="--url $url"
fi
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([0-9.a-z]*\).*/\1/p" <<<"$2" | head -n 1; }

echo "| bytes | delivered pkt/s (<1 % loss) | Gbit/s | server CPU s per Gbit | p99 RTT at half load | commands |"
echo "|---|---|---|---|---|---|"
for size in 64 570 1400; do
  sweep_cmd=(sweep "${target[@]}" --sizes "$size" --pairs 4 --duration 1s --warmup 300ms --start-rate 50000
             --max-rate 6400000 --server-pid "$pid" --json)
  out=$("$bench" "${sweep_cmd[@]}" 2>/dev/null)
  pps=$(field delivered_pps "$out")
  bps=$(field delivered_bps "$out")
  cpu=$(field server_cpu_s_per_gbit "$out")
  rate=$(field max_rate_under_1pct_loss_pps "$out")
  half=$(awk "BEGIN{printf \"%d\", $rate / 2}")
  lat_cmd=(latency "${target[@]}" --size "$size" --rate "$half" --pairs 4 --duration 3s --probe-interval 1ms --json)
  lat=$("$bench" "${lat_cmd[@]}" 2>/dev/null)
  p99=$(field rtt_p99_us "$lat")
  gbps=$(awk "BEGIN{printf \"%.3f\", $bps / 1e9}")
  echo "| $size | $pps | $gbps | $cpu | $p99 us | \`derpbench sweep $shown --sizes $size --pairs 4 --duration 1s --warmup 300ms --start-rate 50000 --max-rate 6400000 --server-pid PID\`; \`derpbench latency $shown --size $size --rate $half --pairs 4 --duration 3s --probe-interval 1ms\` |"
done
conn_cmd=(connections "${target[@]}" --count 10000 --duration 60s --server-pid "$pid" --json)
out=$("$bench" "${conn_cmd[@]}" 2>/dev/null)
echo
echo "Memory per idle connection: $(field server_rss_bytes_per_connection "$out") bytes of derpd RSS over 10,000 connections (\`derpbench connections $shown --count 10000 --duration 60s --server-pid PID\`)."
