#!/usr/bin/env bash
# The capacity run behind docs/BENCHMARKS.md's capacity table: derpbench against a one-shard
# derpd on this machine, once per write mode (per-packet: one frame per send, as Go's derphttp
# client writes; batched: as many frames as fit), each on a fresh derpd: memory per idle
# connection (10,000 clients), per packet size the highest rate delivered with under 1 % loss
# (sweep) with the server's CPU, and round trips at a quarter, half and three quarters of it. Every measurement is
# appended to RUN_FILE as run records; the table is `derpbench report RUN_FILE --format
# markdown`, printed at the end (and the page: `derpbench report RUN_FILE -o report.html`).
# usage: bench/capacity_table.sh [BUILD_DIR] [plain|tls] [RUN_FILE] [SIZES]
set -euo pipefail
build=${1:-build}
transport=${2:-plain}
run_file=${3:-capacity.jsonl}
sizes=${4:-64,570,1400}
derpd="$build/server/derpd"
bench="$build/bench/derpbench"
tmp=$(mktemp -d)
pid=
trap '[[ -n "$pid" ]] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$tmp"' EXIT
version=$("$derpd" -version)

# derpd's shard goes on core 0 (its own pinning); derpbench pins the load to the last core.
start_derpd() {
  args=(-a 127.0.0.1:0 -c "$tmp/derper.key" -stun=false -shards 1 -http-port -1)
  [[ "$transport" == tls ]] && args+=(-certmode manual -hostname 127.0.0.1 -certdir "$tmp/certs")
  : >"$tmp/derpd.log"
  "$derpd" "${args[@]}" >"$tmp/derpd.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "serving on" "$tmp/derpd.log" && break; sleep 0.05; done
  port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/derpd.log" | head -n 1)
  if [[ "$transport" == tls ]]; then
    target=(--url "https://127.0.0.1:$port/derp" --cert-name "$(grep -o 'sha256-raw:[0-9a-f]*' "$tmp/derpd.log" | head -n 1)")
  else
    target=(--url "http://127.0.0.1:$port/derp")
  fi
}
stop_derpd() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

for mode in per-packet batched; do
  start_derpd
  # The flags go into the records as typed here (the temporary paths of the real ones are noise).
  common=("${target[@]}" --write "$mode" --label "derpd $version, $mode writes, $transport" --derpd-flags "-shards 1"
          --out "$run_file")
  # Memory first, on the fresh process: RSS growth per idle client.
  echo "$mode: connections" >&2
  "$bench" connections "${common[@]}" --count 10000 --duration 60s --server-pid "$pid" >&2
  for size in ${sizes//,/ }; do
    echo "$mode: sweep $size B" >&2
    out=$("$bench" sweep "${common[@]}" --sizes "$size" --pairs 4 --rounds 3 --duration 700ms --warmup 300ms \
      --start-rate 20000 --max-rate 6400000 --server-pid "$pid" --json 2>/dev/null)
    # Half of what was delivered at the knee (the offered rate may be more than the load
    # generator could send).
    rate=$(sed -n 's/.*"max_rate_under_1pct_loss_pps":[0-9]*,"delivered_pps":\([0-9]*\).*/\1/p' <<<"$out")
    for quarters in 1 2 3; do
      load=$((rate * quarters / 4))
      ((load > 0)) || continue
      echo "$mode: latency $size B at $load pkt/s" >&2
      "$bench" latency "${common[@]}" --size "$size" --rate "$load" --pairs 4 --duration 2s --probe-interval 1ms >&2
    done
  done
  stop_derpd
done
"$bench" report "$run_file" --format markdown
