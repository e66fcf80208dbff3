#!/usr/bin/env bash
# Issue 16 measured: one derpd (one shard, -accept-connection-limit 2000/s, burst 500) relays
# derpbench's latency load (4 pairs, 20,000 pkt/s of 1400 B in the background, one frame per
# write, round trips probed every 1 ms) for 6 s, alone and then while conn_flood makes 50,000
# connection attempts within 5 s from a separate process; ROUNDS rounds, alternating. Then a
# slowloris: 19,000 connections held (silent, or one byte a second) while derpbench times
# real clients' handshakes, against the same without them. Prints one line per measurement
# and the RSS of derpd before and after each flood. With taskset (and 2+ cores) derpd runs
# alone on cpu 0 and the load on cpu 1, the flood beside it at nice 19, so that the flood's
# own CPU does not come out of the clients' measurement (the kernel's SYN work still does:
# on loopback it runs in the flooding process and in derpd's accepts).
#   bench/pressure.sh [BUILD_DIR] [ROUNDS]       (from the source root)
set -uo pipefail
build=${1:-build}
rounds=${2:-3}
derpd=$build/server/derpd derpbench=$build/bench/derpbench flood=$build/bench/conn_flood
tmp=$(mktemp -d)
pid=
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
on_server=() on_load=() on_flood=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    on_server=(taskset -c 0) on_load=(taskset -c 1) on_flood=(nice -n 19 taskset -c 1)
fi
start_derpd() {  # extra flags; sets pid, port, url
    "${on_server[@]}" "$derpd" -a 127.0.0.1:0 -c "$tmp/k" -stun=false -shards 1 -http-port -1 --pin-threads=false \
        -drain-timeout 0 "$@" >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "serving on" "$tmp/log" && break; sleep 0.05; done
    port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/log" | head -n 1)
    url=http://127.0.0.1:$port/derp
}
start_derpd -accept-connection-limit 2000 -accept-connection-burst 500
rss() { awk '/VmRSS/{print $2}' /proc/$pid/status; }
field() { grep -o "\"$1\":[0-9.]*" <<<"$2" | cut -d: -f2; }
measure() {
    local out
    out=$("${on_load[@]}" "$derpbench" latency --url "$url" --duration 6s --rate 20000 --cpu 1 --json 2>/dev/null)
    echo "delivered_pps=$(field background_delivered_pps "$out") loss=$(field background_loss_ratio "$out")" \
         "rtt_p50_us=$(field rtt_p50_us "$out") rtt_p99_us=$(field rtt_p99_us "$out")"
}
for r in $(seq "$rounds"); do
    echo "round $r quiet:   $(measure)"
    before=$(rss)
    (sleep 0.5; "${on_flood[@]}" "$flood" flood "$port" 50000 5 >"$tmp/flood") &
    flooded=$(measure)
    wait $!
    echo "round $r flooded: $flooded  flood: $(cat "$tmp/flood") rss_kib_before=$before rss_kib_after=$(rss)"
done
echo "rate-limited resets: $(grep -c 'over -accept-connection-limit' "$tmp/log") log line(s)"
handshakes() {
    local out
    out=$("$derpbench" connections --url "$url" --count 50 --connect-concurrency 1 --duration 30s --json 2>/dev/null)
    echo "$(grep -o '"connected":[0-9]*' <<<"$out") $(grep -o '"duration_s":[0-9.]*' <<<"$out") (50 handshakes, one at a time)"
}
# The slowloris against a derpd without an accept limit (which would reset most of it): the
# bound on unfinished connections (-unfinished-per-shard, half the slots) is what acts.
kill $pid; wait $pid 2>/dev/null
start_derpd
echo "handshakes alone:       $(handshakes)"
"$flood" hold "$port" 19000 40 >"$tmp/hold" &
hold=$!
for _ in $(seq 400); do grep -q holding "$tmp/hold" && break; sleep 0.1; done
sleep 2
echo "slowloris: $(cat "$tmp/hold") rss_kib=$(rss)"
echo "handshakes beside them: $(handshakes)"
wait $hold
echo "slowloris end: $(tail -n 1 "$tmp/hold")"
echo "derpd: $(grep -o '[0-9]* unfinished connections (the most allowed)' "$tmp/log" | head -n 1);" \
     "evictions logged $(grep -c 'closed the oldest' "$tmp/log") time(s)"
