#!/usr/bin/env bash
# stunc against a derpd started here: Tailscale-style and -standard requests over IPv4 and IPv6
# print the mapped address and exit 0; a strict server's silence and a closed port are clear
# failures with exit status 1.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
stunc="${DERP_BUILD_ROOT:?}/probe/stunc"
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
free_udp_port() {
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 30000))
    ss -Hunl "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}
start() {  # name, flags...
  local name=$1
  shift
  "$derpd" -a localhost:0 -dev "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "serving on" "$tmp/$name.log" && break; sleep 0.05; done
}

port=$(free_udp_port)
start lenient -stun-port "$port"
out=$("$stunc" 127.0.0.1 "$port" 2>&1)
rc=$?
((rc == 0)) && grep -q "^stun addr: 127.0.0.1:" <<<"$out" && grep -q "^rtt: " <<<"$out" &&
  echo "ok: Tailscale-style request over IPv4" || fail "IPv4 (exit $rc): $out"
if grep -q "STUN server listening on \[::1\]" "$tmp/lenient.log"; then
  out=$("$stunc" ::1 "$port" 2>&1)
  (($? == 0)) && grep -q '^stun addr: \[::1\]:' <<<"$out" && echo "ok: over IPv6" || fail "IPv6: $out"
fi
out=$("$stunc" -standard 127.0.0.1 "$port" 2>&1)
(($? == 0)) && grep -q "^stun addr: 127.0.0.1:" <<<"$out" && echo "ok: -standard request" || fail "-standard: $out"

port2=$(free_udp_port)
start strict -stun-port "$port2" -stun-strict
out=$("$stunc" -standard -timeout 500ms 127.0.0.1 "$port2" 2>&1)
rc=$?
((rc == 1)) && grep -q "no answer from 127.0.0.1:$port2 within 500ms" <<<"$out" &&
  echo "ok: a strict server's silence is a timeout" || fail "strict (exit $rc): $out"

closed=$(free_udp_port)
out=$("$stunc" -timeout 1s 127.0.0.1 "$closed" 2>&1)
rc=$?
((rc == 1)) && grep -qi "refused\|no answer" <<<"$out" && echo "ok: closed port: $out" || fail "closed port (exit $rc): $out"
out=$("$stunc" 2>&1)
(($? == 2)) && echo "ok: usage without a host" || fail "no host: $out"
exit $((failures > 0))
