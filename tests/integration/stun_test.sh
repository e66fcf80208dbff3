#!/usr/bin/env bash
# derpd's STUN server against a real third-party client: coturn's turnutils_stunclient (an RFC
# 5389 client without SOFTWARE) gets its reflexive address over IPv4 and IPv6, the counters of
# /debug/varz move by disposition and family, and -stun-strict turns such clients away as derper
# does. Tailscale's own request bytes are checked in stun_wire_test.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
command -v turnutils_stunclient >/dev/null || { echo "SKIP: turnutils_stunclient (coturn) not installed"; exit 77; }
tmp=$(mktemp -d)
# start() runs in a command substitution (a subshell), so the pids go through a file: an array
# assigned there would never reach this trap and the derpds would outlive the test.
stop_all() {
  local p
  for p in $(cat "$tmp/pids" 2>/dev/null); do kill "$p" 2>/dev/null; done
  for p in $(cat "$tmp/pids" 2>/dev/null); do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  rm -rf "$tmp"
}
trap stop_all EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

free_udp_port() {  # a port nothing listens on right now (bind 0 in derpd is not offered for STUN)
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 30000))
    if ! ss -Hunl "sport = :$p" | grep -q .; then echo "$p"; return; fi
  done
}

start() {  # name, extra flags...
  local name=$1
  shift
  "$derpd" -a localhost:0 -dev "$@" >"$tmp/$name.log" 2>&1 &
  echo $! >>"$tmp/pids"
  for _ in $(seq 100); do grep -q "serving on 127" "$tmp/$name.log" && break; sleep 0.05; done
  sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/$name.log" | head -n 1
}

sport=$(free_udp_port)
hport=$(start lenient -stun-port "$sport")
grep -q "STUN server listening on 127.0.0.1:$sport" "$tmp/lenient.log" || fail "no STUN listener on 127.0.0.1:$sport"
out=$(timeout 3 turnutils_stunclient -p "$sport" 127.0.0.1 2>&1)
grep -q "UDP reflexive addr: 127.0.0.1:" <<<"$out" && echo "ok: IPv4 reflexive address" || fail "IPv4: $out"
if grep -q "STUN server listening on \[::1\]:$sport" "$tmp/lenient.log"; then
  out=$(timeout 3 turnutils_stunclient -p "$sport" ::1 2>&1)
  grep -q "UDP reflexive addr: ::1:\|UDP reflexive addr: \[::1\]:" <<<"$out" && echo "ok: IPv6 reflexive address" || fail "IPv6: $out"
fi
# Garbage is counted and not answered.
printf 'not a stun packet at all' >/dev/udp/127.0.0.1/"$sport"
# Wait (up to 10 s) for the datagram to be counted, then check it was counted once.
for _ in $(seq 200); do
  varz=$(curl -s "http://127.0.0.1:$hport/debug/varz")
  grep -q '^stun_requests{disposition="not_stun"} [1-9]' <<<"$varz" && break
  sleep 0.05
done
grep -q '^stun_requests{disposition="success"} [1-9]' <<<"$varz" && echo "ok: stun_requests success counted" || fail "success not counted"
grep -q '^stun_requests{disposition="not_stun"} 1$' <<<"$varz" && echo "ok: garbage counted as not_stun" || fail "not_stun: $(grep stun_requests <<<"$varz")"
grep -q '^stun_addrfamily{family="ipv4"} [1-9]' <<<"$varz" && echo "ok: ipv4 family counted" || fail "family not counted"

# Strict: derper's behaviour, ordinary clients get no answer.
sport2=$(free_udp_port)
hport2=$(start strict -stun-port "$sport2" -stun-strict)
out=$(timeout 2 turnutils_stunclient -p "$sport2" 127.0.0.1 2>&1)
grep -q "UDP reflexive addr" <<<"$out" && fail "strict mode answered a plain RFC 5389 request" || echo "ok: strict mode does not answer"
for _ in $(seq 200); do
  grep -q '^stun_requests{disposition="not_stun"} [1-9]' <<<"$(curl -s "http://127.0.0.1:$hport2/debug/varz")" && break
  sleep 0.05
done
grep -q '^stun_requests{disposition="not_stun"} [1-9]' <<<"$(curl -s "http://127.0.0.1:$hport2/debug/varz")" &&
  echo "ok: strict refusal counted" || fail "strict refusal not counted"

if ((failures > 0)); then echo "$failures failure(s)"; exit 1; fi
