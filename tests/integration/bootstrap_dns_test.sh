#!/usr/bin/env bash
# /bootstrap-dns (spec 3.5) against derpds started here, with names that resolve on any machine
# without a network (localhost, from /etc/hosts) and one that cannot (.invalid): the published
# JSON in Go's indented form, the headers, an unpublished name whose rollout TXT record cannot
# be found (0 %) withheld, an unpublished name at 100 % answered alone, an empty body when
# nothing is published, and the counters in /debug/varz.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
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
start() {  # name, flags...; prints the port once names are resolved and derpd serves
  local name=$1
  shift
  "$derpd" -a 127.0.0.1:0 -c "$tmp/$name.key" -stun=false "$@" >"$tmp/$name.log" 2>&1 &
  echo $! >>"$tmp/pids"
  # Names that do not resolve can take a resolver several timeouts of 5 s: wait up to 60 s.
  for _ in $(seq 1200); do
    grep -q "bootstrap DNS: resolved" "$tmp/$name.log" && grep -q "serving on" "$tmp/$name.log" && break
    sleep 0.05
  done
  grep -q "bootstrap DNS: resolved" "$tmp/$name.log" || echo "FAIL: derpd $name never logged 'bootstrap DNS: resolved'" >&2
  sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/$name.log" | head -n 1
}
want_prefix=$'{\n\t"localhost": [\n\t\t"'

port=$(start a -bootstrap-dns-names "localhost, nonexistent.invalid" \
  -unpublished-bootstrap-dns-names "localhost/no-such-txt.invalid")
[[ -n "$port" ]] || { cat "$tmp/a.log"; echo "FAIL: derpd did not start"; exit 1; }
grep -q "resolving nonexistent.invalid" "$tmp/a.log" && echo "ok: failed lookup logged" || fail "no log for the failed lookup"
out=$(curl -s -i "http://127.0.0.1:$port/bootstrap-dns")
body=$(sed -n '/^\r$/,$p' <<<"$out" | tail -n +2)
grep -q $'^Content-Type: application/json\r$' <<<"$out" && grep -q $'^Connection: close\r$' <<<"$out" &&
  grep -q $'^X-Frame-Options: DENY\r$' <<<"$out" && echo "ok: headers" || fail "headers: $out"
[[ "$body" == "$want_prefix"* && "$body" == *$'\n\t]\n}' && "$body" != *nonexistent* ]] &&
  echo "ok: published JSON (localhost only)" || fail "published JSON: $body"
withheld=$(curl -s "http://127.0.0.1:$port/bootstrap-dns?q=localhost")
[[ "$withheld" == "$body" ]] && echo "ok: 0 % rollout withheld, published map returned" || fail "q=localhost: $withheld"
curl -s -o /dev/null "http://127.0.0.1:$port/bootstrap-dns?q=other.example"
varz=$(curl -s "http://127.0.0.1:$port/debug/varz")
for want in 'bootstrap_dns_requests 3' 'bootstrap_dns_unpublished_hits 1' 'bootstrap_dns_unpublished_percent_misses 1' \
            'bootstrap_dns_published_hits 1' 'bootstrap_dns_unpublished_misses 1' 'bootstrap_dns_queried_domains 2'; do
  grep -qx "$want" <<<"$varz" && echo "ok: $want" || fail "want '$want': $(grep '^bootstrap_dns' <<<"$varz" | tr '\n' ' ')"
done

port=$(start b -unpublished-bootstrap-dns-names "localhost")
empty=$(curl -s -w '%{http_code}' "http://127.0.0.1:$port/bootstrap-dns")
[[ "$empty" == 200 ]] && echo "ok: nothing published: empty body, 200" || fail "unpublished only: $empty"
one=$(curl -s "http://127.0.0.1:$port/bootstrap-dns?q=localhost")
[[ "$one" == "$want_prefix"* ]] && echo "ok: unpublished localhost at 100 % answered alone" || fail "q=localhost: $one"
exit $((failures > 0))
