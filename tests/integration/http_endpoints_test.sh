#!/usr/bin/env bash
# derpd's HTTP side doors against real clients: each recorded request of fixtures/06-http is
# replayed with curl-free raw bytes (bash /dev/tcp) and the answer compared with derper's
# recorded bytes (Date masked; the spec's newer headers where derper v1.36.2 differed); curl
# checks keep-alive and HEAD; /debug/varz goes through `promtool check metrics` (exit 0, or 3
# for lint warnings on derper's own metric names) and its counters move with traffic.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
fixtures="${DERP_FIXTURES_DIR:?}/06-http"
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# -handshake-timeout 300ms gives request heads 900 ms (3x), so the slow-sender case is quick.
"$derpd" -a 127.0.0.1:0 -c "$tmp/derper.key" -stun=false -shards 2 -handshake-timeout 300ms -admin-addr :0 \
  >"$tmp/derpd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/derpd.log" && break; sleep 0.05; done
port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/derpd.log" | head -n 1)
[[ -n "$port" ]] || { cat "$tmp/derpd.log"; echo "derpd did not start"; exit 1; }

# Sends a raw request and prints the whole response with the Date header masked.
raw() {  # request file
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  cat "$1" >&3
  timeout 2 cat <&3 | sed 's/^Date: .*\r$/Date: (masked)\r/'
  exec 3<&-
}
masked() {
  sed 's/^Date: .*\r$/Date: (masked)\r/' "$1"
}

# Every recorded request and answer must be there and non-empty before anything is compared:
# a missing file would make both sides of a comparison empty, and equal.
for f in "$fixtures"/{derp-probe,derp-probe-head,derp-probe-post,generate_204-no-challenge,generate_204-bad-challenge,generate_204-challenge,derp-no-upgrade,robots.txt}/{request,response}.bin; do
  [[ -s "$f" ]] || { echo "FAIL: fixture $f is missing or empty"; exit 1; }
done

# Byte-exact where derper v1.36.2 and current derper agree (fixtures/README.md).
for case in derp-probe derp-probe-head derp-probe-post generate_204-no-challenge generate_204-bad-challenge \
            generate_204-challenge derp-no-upgrade; do
  # The requests keep the connection alive; derpd answers and waits, so read with a timeout.
  got=$(raw "$fixtures/$case/request.bin")
  want=$(masked "$fixtures/$case/response.bin")
  if [[ "$case" == generate_204-* ]]; then
    # Current derper adds Cache-Control (spec 3.2), sorted before X-Tailscale-Response.
    want=$(printf '%s' "$want" | sed 's/^HTTP\/1.1 204 No Content\r$/HTTP\/1.1 204 No Content\r\nCache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r/')
  fi
  if [[ "$got" != "$want" ]]; then
    fail "$case differs from derper's recorded answer"
    diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") | head -20
  else
    echo "ok: $case matches derper byte for byte (Date masked)"
  fi
done

# robots.txt: derper's body and sniffed Content-Type, plus the spec's browser headers.
got=$(raw "$fixtures/robots.txt/request.bin")
grep -q $'^Content-Type: text/plain; charset=utf-8\r$' <<<"$got" && grep -q $'^X-Frame-Options: DENY\r$' <<<"$got" &&
  grep -q "^Disallow: /$" <<<"$got" && echo "ok: robots.txt" || fail "robots.txt: $got"
# The home page from loopback links /debug/; /derp/latency-check is a probe now (spec).
curl -s "http://127.0.0.1:$port/" | grep -q "Debug info at <a href='/debug/'>" && echo "ok: home page" || fail "home page"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/derp/latency-check")
[[ "$code" == 200 ]] && echo "ok: latency-check 200" || fail "latency-check gave $code"
# A challenge of 65 characters is not echoed (spec 11.4).
long=$(printf 'x%.0s' $(seq 65))
curl -s -i -H "X-Tailscale-Challenge: $long" "http://127.0.0.1:$port/generate_204" | grep -qi "X-Tailscale-Response" &&
  fail "65-character challenge was echoed" || echo "ok: long challenge not echoed"
# Keep-alive: curl reuses one connection for two requests.
out=$(curl -s -v "http://127.0.0.1:$port/derp/probe" "http://127.0.0.1:$port/robots.txt" 2>&1)
grep -q "Re-using existing connection" <<<"$out" && echo "ok: keep-alive" || fail "connection not reused"
# Through a proxy (X-Forwarded-For) /debug/ is refused even from loopback.
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Forwarded-For: 1.2.3.4" "http://127.0.0.1:$port/debug/")
[[ "$code" == 403 ]] && echo "ok: /debug/ refused with X-Forwarded-For" || fail "/debug/ with X-Forwarded-For gave $code"

check=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port/debug/check")
[[ "$check" == "derp.Server ConsistencyCheck okay 200" ]] && echo "ok: /debug/check" || fail "/debug/check: $check"
# Accepted sockets inherit TCP keepalive from the listener: -tcp-keepalive-time defaults to 10m.
# (The keepalive timer is set from the listener at the TCP handshake: nothing to wait for.)
exec 4<>"/dev/tcp/127.0.0.1/$port"
ka=$(ss -tnoH state established "sport = :$port" | grep -o 'timer:(keepalive,[^,]*' | head -n 1)
exec 4<&-
[[ "$ka" == "timer:(keepalive,9min"* ]] && echo "ok: accepted socket has TCP keepalive ($ka)" || fail "no 10m keepalive on accepted socket: '$ka'"
vars=$(curl -s -i "http://127.0.0.1:$port/debug/vars")
grep -q $'^Content-Type: application/json; charset=utf-8\r$' <<<"$vars" && grep -q '^"derp": {"accepts": [0-9]*, ' <<<"$vars" &&
  grep -q '^"derp_packets_dropped": {"reason=unknown_dest,kind=disco": 0, ' <<<"$vars" && echo "ok: /debug/vars" ||
  fail "/debug/vars: $vars"
# A sender that stops in the middle of its request head gets 408 and a close.
exec 4<>"/dev/tcp/127.0.0.1/$port"
printf 'GET / HTTP/1.1\r\nHost: x\r\n' >&4
got=$(timeout 5 cat <&4)
exec 4<&-
grep -q $'^HTTP/1.1 408 Request Timeout\r$' <<<"$got" && echo "ok: slow sender gets 408" || fail "slow sender: $got"
# Pipelined garbage after a good request: the good one is answered, then 400 and a close.
exec 4<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE GARBAGE\r\n\r\n' >&4
got=$(timeout 5 cat <&4)
exec 4<&-
grep -q $'^HTTP/1.1 200 OK\r$' <<<"$got" && grep -q $'^HTTP/1.1 400 Bad Request\r$' <<<"$got" &&
  echo "ok: pipelined garbage gets 400 after the good answer" || fail "pipelined garbage: $got"
# An oversize request head gets 431.
big=$(head -c 20000 /dev/zero | tr '\0' 'a')
got=$(printf 'GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n' "$big" | timeout 5 curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $big" "http://127.0.0.1:$port/")
[[ "$got" == 431 ]] && echo "ok: oversize head gets 431" || fail "oversize head gave $got"

# /debug/varz: promtool accepts it, and accepts moves with traffic.
before=$(curl -s "http://127.0.0.1:$port/debug/varz")
printf '%s\n' "$before" >"$tmp/varz.txt"
promtool check metrics <"$tmp/varz.txt" >"$tmp/promtool.out" 2>&1
rc=$?
if ((rc != 0 && rc != 3)); then fail "promtool check metrics exit $rc"; cat "$tmp/promtool.out"; else echo "ok: promtool check metrics (exit $rc)"; fi
# Lint that derper's own names draw (tcp_rtt{le} is derper's counter, not a histogram).
if grep -v -E 'should have "_total" suffix|no help text|should not have "_total" suffix|abbreviated units|^derp_tcp_rtt non-histogram metrics should not have "le" label' "$tmp/promtool.out" | grep -q .; then
  fail "promtool reported more than derper-name lint:"; cat "$tmp/promtool.out"
fi
n_before=$(sed -n 's/^derp_accepts \([0-9]*\)$/\1/p' <<<"$before")
for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$port/derp/probe"; done
n_after=$(curl -s "http://127.0.0.1:$port/debug/varz" | sed -n 's/^derp_accepts \([0-9]*\)$/\1/p')
((n_after >= n_before + 4)) && echo "ok: derp_accepts $n_before -> $n_after" || fail "derp_accepts did not move ($n_before -> $n_after)"

# The operators' admin listener (-admin-addr :0 = loopback) serves the same metrics off the shards.
aport=$(sed -n 's/.*admin listener on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/derpd.log" | head -n 1)
if [[ -z "$aport" ]]; then
  fail "no admin listener on loopback"
else
  curl -s "http://127.0.0.1:$aport/metrics" >"$tmp/admin-varz.txt"
  promtool check metrics <"$tmp/admin-varz.txt" >/dev/null 2>&1
  rc=$?
  ((rc == 0 || rc == 3)) && grep -q '^derp_accepts ' "$tmp/admin-varz.txt" && echo "ok: admin /metrics (promtool exit $rc)" ||
    fail "admin /metrics: promtool exit $rc"
  check=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$aport/debug/check")
  [[ "$check" == "derp.Server ConsistencyCheck okay 200" ]] && echo "ok: admin /debug/check" || fail "admin /debug/check: $check"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$aport/derp")
  [[ "$code" == 404 ]] && echo "ok: admin listener serves no DERP" || fail "admin /derp gave $code"
  grep -q "admin listener on 0.0.0.0\|admin listener on \[::\]" "$tmp/derpd.log" && fail "admin listener not on loopback only"
fi

if ((failures > 0)); then echo "$failures failure(s)"; exit 1; fi
