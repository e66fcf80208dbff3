#!/usr/bin/env bash
# /debug/ is refused to a client that is neither loopback nor a Tailscale address. derpd runs in
# one network namespace and the client in another, joined by a veth pair with TEST-NET-1
# addresses (192.0.2.0/24, documentation-only, existing only inside this machine): the client
# gets 403 for /debug/ while /derp/probe still answers it, and the home page shows it no /debug/
# link; a loopback client inside derpd's namespace is served. (Both ends are namespaced because
# this sandbox does not deliver veth traffic to the host namespace's sockets.) Exit 77 where
# namespaces or veth pairs cannot be made.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
srv="derpd-srv-$$"
cli="derpd-cli-$$"
tmp=$(mktemp -d)
cleanup() {
  [[ -n "${pid:-}" ]] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
  ip netns del "$srv" 2>/dev/null
  ip netns del "$cli" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
if ! ip netns add "$srv" 2>"$tmp/err" || ! ip netns add "$cli" 2>>"$tmp/err" ||
   ! ip link add veth0 netns "$srv" type veth peer name veth1 netns "$cli" 2>>"$tmp/err"; then
  echo "SKIP: cannot create network namespaces with a veth pair: $(cat "$tmp/err")"
  exit 77
fi
ip -n "$srv" addr add 192.0.2.1/24 dev veth0 && ip -n "$srv" link set veth0 up && ip -n "$srv" link set lo up &&
  ip -n "$cli" addr add 192.0.2.2/24 dev veth1 && ip -n "$cli" link set veth1 up ||
  { echo "SKIP: cannot configure the veth pair"; exit 77; }

ip netns exec "$srv" "$derpd" -a :0 -c "$tmp/derper.key" -stun=false >"$tmp/derpd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/derpd.log" && break; sleep 0.05; done
port=$(sed -n 's/.*serving on \[::\]:\([0-9]*\).*/\1/p' "$tmp/derpd.log" | head -n 1)
[[ -n "$port" ]] || { cat "$tmp/derpd.log"; echo "FAIL: derpd did not start"; exit 1; }

failures=0
check() {  # description, expected, actual
  if [[ "$3" == $2 ]]; then echo "ok: $1"; else echo "FAIL: $1: got '$3'"; failures=$((failures + 1)); fi
}
in_cli() { ip netns exec "$cli" curl -s --max-time 5 "$@"; }
check "/derp/probe from 192.0.2.2 answered" "200" "$(in_cli -o /dev/null -w '%{http_code}' "http://192.0.2.1:$port/derp/probe")"
check "/debug/varz from 192.0.2.2 refused" "debug access denied* 403" "$(in_cli -w ' %{http_code}' "http://192.0.2.1:$port/debug/varz")"
check "/debug/ from 192.0.2.2 refused" "403" "$(in_cli -o /dev/null -w '%{http_code}' "http://192.0.2.1:$port/debug/")"
page=$(in_cli "http://192.0.2.1:$port/")
check "home page served to 192.0.2.2" "*<h1>DERP</h1>*" "$page"
grep -q "/debug/" <<<"$page" && { echo "FAIL: home page links /debug/ for 192.0.2.2"; failures=$((failures + 1)); }
check "/debug/varz from loopback served" "200" \
  "$(ip netns exec "$srv" curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/debug/varz")"

# The operator's knobs (spec 3.8): TS_DEBUG_TRUSTED_CIDRS admits 192.0.2.0/24; TS_DEBUG_KEY_PATH's
# key admits a GET with ?debugkey= from anywhere.
kill "$pid"; wait "$pid" 2>/dev/null
printf '  hunter2\n' >"$tmp/debug.key"
ip netns exec "$srv" env TS_DEBUG_TRUSTED_CIDRS=192.0.2.0/24 "$derpd" -a :0 -c "$tmp/derper.key" -stun=false \
  >"$tmp/derpd2.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/derpd2.log" && break; sleep 0.05; done
port=$(sed -n 's/.*serving on \[::\]:\([0-9]*\).*/\1/p' "$tmp/derpd2.log" | head -n 1)
check "TS_DEBUG_TRUSTED_CIDRS admits 192.0.2.2" "200" "$(in_cli -o /dev/null -w '%{http_code}' "http://192.0.2.1:$port/debug/varz")"
kill "$pid"; wait "$pid" 2>/dev/null
ip netns exec "$srv" env TS_DEBUG_KEY_PATH="$tmp/debug.key" "$derpd" -a :0 -c "$tmp/derper.key" -stun=false \
  >"$tmp/derpd3.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/derpd3.log" && break; sleep 0.05; done
port=$(sed -n 's/.*serving on \[::\]:\([0-9]*\).*/\1/p' "$tmp/derpd3.log" | head -n 1)
check "debugkey (whitespace trimmed) admits a GET" "200" "$(in_cli -o /dev/null -w '%{http_code}' "http://192.0.2.1:$port/debug/varz?debugkey=hunter2")"
check "a wrong debugkey does not" "403" "$(in_cli -o /dev/null -w '%{http_code}' "http://192.0.2.1:$port/debug/varz?debugkey=nope")"
exit $((failures > 0))
