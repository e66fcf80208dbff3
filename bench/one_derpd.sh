# One derpd for the single-node benchmark scripts (sourced, not run): plain HTTP on a free
# loopback port, one shard, in a fresh temporary directory.
#   one_derpd_start BIN   sets tmp (the directory), pid and port; the log is $tmp/log
one_derpd_start() {
    tmp=$(mktemp -d)
    # SIGTERM stops at once (no drain) where the binary knows -drain-timeout: the stop is what
    # stop_time.sh measures, and the other scripts stop nodes that still hold idle clients.
    local drain=()
    "$1" -help 2>&1 | grep -q drain-timeout && drain=(-drain-timeout=0)
    "$1" -a 127.0.0.1:0 -c "$tmp/k" -stun=false -shards 1 -http-port -1 "${drain[@]}" >"$tmp/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "serving on" "$tmp/log" && break; sleep 0.05; done
    port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/log" | head -n 1)
}
