#!/usr/bin/env bash
# Reconnect storm, measured: one derpd (one shard) and PROCS derpbench processes that open N idle
# DERP clients between them at once (N/PROCS each, all dialled in the same instant, as the
# clients of a restarted node come back), hold them until every process has reported, then close
# them. Prints the server CPU time per registration (the connect phase: upgrade, handshake,
# registration, until every client is connected) and per close, from the sum of derpd's threads'
# run time (/proc/PID/task/*/schedstat, nanoseconds), how long it took until all N were connected
# (the slowest process), the load processes' CPU per client (they share the machine's cores with
# derpd), and derpd's own descriptors (what the open-files limit leaves for
# clients).
#   bench/reconnect_storm.sh DERPD N [PROCS]   (from the source root, after ./scripts/build)
# One process holds at most its open-files limit of connections (20,000 on the project's
# machines, not raisable): 20,000 clients need two.
set -uo pipefail
bin=$1 n=$2 procs=${3:-1}
derpbench=${DERPBENCH:-build/bench/derpbench}
. "$(dirname "$0")/one_derpd.sh"
one_derpd_start "$bin"
run_ns() { cat /proc/$pid/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }
own_fds=$(ls /proc/$pid/fd | wc -l)
slots=$(sed -n 's/.* \([0-9]*\) connections each.*/\1/p' "$tmp/log" | head -n 1)
per=$((n / procs))
# PERF_OUT=FILE: the connect phase under `perf record -e cpu-clock -g` (what grows with N).
[[ -n "${PERF_OUT:-}" ]] && { perf record -q -e cpu-clock -g -p "$pid" -o "$PERF_OUT" 2>/dev/null & perf_pid=$!; sleep 0.5; }
c0=$(run_ns)
loaders=()
for i in $(seq "$procs"); do
  "$derpbench" connections --url "http://127.0.0.1:$port/derp" --count "$per" --duration 120s --hold 600s \
    --json >"$tmp/out.$i" 2>/dev/null &
  loaders+=($!)
done
# Each process prints its JSON line once all its clients are connected (or failed), then holds.
for _ in $(seq 12500); do
  done_count=0
  for i in $(seq "$procs"); do [[ -s "$tmp/out.$i" ]] && done_count=$((done_count + 1)); done
  ((done_count == procs)) && break
  sleep 0.01
done
c1=$(run_ns)
[[ -n "${perf_pid:-}" ]] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null; }
loader_ns=0
for l in "${loaders[@]}"; do
  loader_ns=$((loader_ns + $(cat /proc/$l/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}')))
done
kill -TERM "${loaders[@]}" 2>/dev/null
wait "${loaders[@]}" 2>/dev/null
sleep 1
c2=$(run_ns)
connected=0 failed=0 slowest=0
for i in $(seq "$procs"); do
  line=$(cat "$tmp/out.$i")
  connected=$((connected + $(grep -o '"connected":[0-9]*' <<<"$line" | cut -d: -f2)))
  failed=$((failed + $(grep -o '"failed":[0-9]*' <<<"$line" | cut -d: -f2)))
  slowest=$(awk -v a="$slowest" -v b="$(grep -o '"duration_s":[0-9.]*' <<<"$line" | cut -d: -f2)" \
    'BEGIN {print (b > a ? b : a)}')
done
echo "$bin n=$n procs=$procs derpd_fds=$own_fds slots=$slots connected=$connected failed=$failed" \
  "all_connected_s=$slowest cpu_us_per_registration=$(( (c1 - c0) / 1000 / n ))" \
  "cpu_us_per_close=$(( (c2 - c1) / 1000 / n ))" "loader_cpu_us_per_client=$(( loader_ns / 1000 / n ))"
kill $pid; wait $pid 2>/dev/null
if [[ -n "${KEEP:-}" ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
