#!/usr/bin/env bash
# Issue 17: derpd's CPU per relayed packet against a raw io_uring forwarder (bench/forwarder,
# "the least any relay could spend on this machine"), both measured in the same run by the same
# load (derpbench latency with a background load: N pairs paced to an offered rate, plus one
# probe pair timing round trips every 2 ms), for offered load (low, medium, high) x write mode
# (per-packet: one frame per send, as Go's client writes; batched: what a sender accumulated in
# 250 us in one send) x packet size (570, 1400). Each server is alone on cpu 0 (taskset; derpd
# with -pin-threads=false, one shard), the load on cpu 1. Rounds alternate which server goes
# first; every figure is the median of the rounds, the ratio the median of each round's ratio.
# Prints one line per run, then a Markdown table.
#   bash bench/per_packet_matrix.sh [BUILD] [ROUNDS]      (from the source root; about 6 minutes)
# Loads (pkt/s over all senders), chosen so that the table meets the issue's figures:
#   low     5,000 for both sizes: many clients at modest rates;
#   medium  27,000 at 1400 B and 66,000 at 570 B: 300 Mbit/s, the issue's measurement;
#   high    80,000 for both sizes: 900 Mbit/s at 1400 B, where the issue saw derpd drop 1.8 %, and
#           near the per-packet ceiling of the load generator's one core here (about 90k frames
#           a second), so near saturation of whichever side gives first (the CPU columns say).
# LOADS="low:5000:5000 ..." (name:pps at 570:pps at 1400), SIZES, WRITES, DURATION override;
# DERPD_FLAGS adds flags to derpd's command line (a candidate measured against the forwarder).
set -uo pipefail
build=${1:-build}
rounds=${2:-3}
loads=${LOADS:-"low:5000:5000 medium:66000:27000 high:80000:80000"}
sizes=${SIZES:-"570 1400"}
writes=${WRITES:-"per-packet batched"}
duration=${DURATION:-3s}
pairs=${PAIRS:-4}
probe_interval=2ms
derpbench="$build/bench/derpbench"
for bin in "$build/server/derpd" "$build/bench/forwarder" "$derpbench"; do
  [[ -x "$bin" ]] || { echo "per_packet_matrix: no $bin (build first)"; exit 1; }
done
command -v taskset >/dev/null || { echo "per_packet_matrix: taskset missing (util-linux)"; exit 77; }
(($(nproc) >= 2)) || { echo "per_packet_matrix: needs 2 cores (server on 0, load on 1)"; exit 77; }
tmp=$(mktemp -d)
derpd_pid= fwd_pid=
trap 'kill $derpd_pid $fwd_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

taskset -c 0 "$build/server/derpd" -a 127.0.0.1:0 -c "$tmp/k" -stun=false -shards 1 -http-port -1 \
  -pin-threads=false -drain-timeout=0 ${DERPD_FLAGS:-} >"$tmp/derpd.log" 2>&1 &
derpd_pid=$!
taskset -c 0 "$build/bench/forwarder" --listen 127.0.0.1:0 >"$tmp/fwd.log" 2>&1 &
fwd_pid=$!
for _ in $(seq 200); do grep -q "serving on" "$tmp/derpd.log" && grep -q "listening on" "$tmp/fwd.log" && break; sleep 0.05; done
derpd_port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/derpd.log" | head -n 1)
fwd_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/fwd.log" | head -n 1)
[[ -n "$derpd_port" && -n "$fwd_port" ]] || { echo "per_packet_matrix: a server did not start"; cat "$tmp"/*.log; exit 1; }
declare -A url=([derpd]="http://127.0.0.1:$derpd_port/derp" [forwarder]="tcp://127.0.0.1:$fwd_port")
declare -A pid=([derpd]=$derpd_pid [forwarder]=$fwd_pid)

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
cmd_line="taskset -c 1 derpbench latency --url URL --pairs $pairs --size SIZE --rate RATE --write WRITE --duration $duration --probe-interval $probe_interval --server-pid PID --cpu 1 --json"
echo "# $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); derpd flags: ${DERPD_FLAGS:-none}; each run: $cmd_line"
failed=0
for round in $(seq "$rounds"); do
  order="derpd forwarder"; ((round % 2 == 0)) && order="forwarder derpd"
  for load in $loads; do
    IFS=: read -r name rate570 rate1400 <<<"$load"
    for write in $writes; do
      for size in $sizes; do
        rate=$rate1400; ((size == 570)) && rate=$rate570
        cell="$name.$write.$size"
        for server in $order; do
          out=$(taskset -c 1 "$derpbench" latency --url "${url[$server]}" --pairs "$pairs" --size "$size" --rate "$rate" \
                --write "$write" --duration "$duration" --probe-interval "$probe_interval" --server-pid "${pid[$server]}" \
                --cpu 1 --json 2>"$tmp/err")
          rc=$?
          pps=$(field background_delivered_pps "$out"); loss=$(field background_loss_ratio "$out")
          us=$(field server_cpu_us_per_packet "$out"); cpu_s=$(field server_cpu_s "$out")
          p50=$(field rtt_p50_us "$out"); p99=$(field rtt_p99_us "$out")
          if ((rc != 0)) || [[ -z "$us" || -z "$pps" ]]; then
            echo "round $round $cell $server: FAILED (exit $rc): $out $(cat "$tmp/err")"
            failed=$((failed + 1))
            continue
          fi
          share=$(awk -v c="$cpu_s" -v d="${duration%s}" 'BEGIN { printf "%.0f", c / d * 100 }')
          echo "round $round $cell $server: delivered $pps pkt/s, loss $loss, server ${share}% = $us us/pkt, rtt p50 $p50 us p99 $p99 us"
          for f in pps loss us share p50 p99; do echo "${!f}" >>"$tmp/$cell.$server.$f"; done
          echo "$us" >"$tmp/$cell.$server.last_us"
        done
        if [[ -f "$tmp/$cell.derpd.last_us" && -f "$tmp/$cell.forwarder.last_us" ]]; then
          awk -v d="$(cat "$tmp/$cell.derpd.last_us")" -v f="$(cat "$tmp/$cell.forwarder.last_us")" \
            'BEGIN { if (f > 0) printf "%.2f\n", d / f }' >>"$tmp/$cell.ratio"
        fi
        rm -f "$tmp/$cell".*.last_us
      done
    done
  done
done

m() { [[ -f "$tmp/$1" ]] && median <"$tmp/$1" || echo nan; }
echo
echo "| load | write | bytes | offered pkt/s | delivered pkt/s, derpd / forwarder | loss, derpd / forwarder | server CPU (of a core), derpd / forwarder | **server CPU per packet, derpd / forwarder** | **ratio** (rounds) | RTT p50, derpd / forwarder | RTT p99, derpd / forwarder |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for load in $loads; do
  IFS=: read -r name rate570 rate1400 <<<"$load"
  for write in $writes; do
    for size in $sizes; do
      rate=$rate1400; ((size == 570)) && rate=$rate570
      c="$name.$write.$size"
      ratios=$( [[ -f "$tmp/$c.ratio" ]] && paste -sd' ' "$tmp/$c.ratio")
      printf '| %s | %s | %s | %s | %.0f / %.0f | %.2f %% / %.2f %% | %s %% / %s %% | %.2f / %.2f us | **%s** (%s) | %.0f / %.0f us | %.0f / %.0f us |\n' \
        "$name" "$write" "$size" "$rate" "$(m "$c.derpd.pps")" "$(m "$c.forwarder.pps")" \
        "$(awk -v l="$(m "$c.derpd.loss")" 'BEGIN{print l * 100}')" "$(awk -v l="$(m "$c.forwarder.loss")" 'BEGIN{print l * 100}')" \
        "$(m "$c.derpd.share")" "$(m "$c.forwarder.share")" "$(m "$c.derpd.us")" "$(m "$c.forwarder.us")" \
        "$(m "$c.ratio")" "$ratios" "$(m "$c.derpd.p50")" "$(m "$c.forwarder.p50")" "$(m "$c.derpd.p99")" "$(m "$c.forwarder.p99")"
    done
  done
done
echo
echo "forwarder at the end: $(kill -USR1 "$fwd_pid"; sleep 0.3; grep '^forwarder: cpu' "$tmp/fwd.log" | tail -n 1)"
((failed == 0)) || { echo "per_packet_matrix: $failed runs failed"; exit 1; }
