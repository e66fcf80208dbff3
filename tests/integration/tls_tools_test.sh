#!/usr/bin/env bash
# derpd's TLS (-certmode manual, spec 3.1, 3.7, 4.2) against real third-party clients: curl and
# `openssl s_client` verify a certificate from a private CA for a DNS hostname over TLS 1.3 and
# 1.2, fetch the side doors over keep-alive, upgrade /derp and read the ServerKey frame, see
# derper's meta certificate in the chain, and are refused with internal_error for any other SNI
# (or none), as derper refuses them; TLS 1.2 without forward secrecy or AEAD is refused; the
# port-80 listener redirects to HTTPS; /debug/varz counts all of it and passes `promtool check
# metrics`. tls_test.cc covers the same ground with derpd's own client library; this test is
# about clients derpd did not write.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
command -v openssl >/dev/null || { echo "SKIP: openssl not installed"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl not installed"; exit 77; }
tmp=$(mktemp -d)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# A zombie still answers kill -0, so ask for the process state.
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ "$s" != Z* ]]; }

# derpd must stop cleanly on SIGTERM (exit 0); checked here so that an early exit stops it too.
# A derpd that hangs after SIGTERM fails the test within 5 s instead of running into meson's
# timeout.
finish() {
  local status=$?
  if [[ -n "${pid:-}" ]]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do running "$pid" || break; sleep 0.05; done
    if running "$pid"; then
      echo "FAIL: derpd still running 5 s after SIGTERM"
      kill -KILL "$pid" 2>/dev/null
      status=1
    fi
    wait "$pid"
    local rc=$?
    if ((rc == 0)); then
      echo "ok: derpd exited 0 on SIGTERM"
    else
      echo "FAIL: derpd exited $rc on SIGTERM; its log ends:"
      tail -n 20 "$tmp/derpd.log"
      status=1
    fi
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap finish EXIT

# A private CA and a leaf for a DNS name that resolves nowhere: curl reaches it with --resolve,
# so the client sends the name as SNI and verifies the chain for it, as a Tailscale client does
# for a DERPMap HostName.
host=derp.test.internal
mkdir -m 700 "$tmp/certs"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -subj "/CN=derpd test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$tmp/certs/$host.key" -out "$tmp/leaf.csr" -subj "/CN=$host" &&
    printf '%s\n' "subjectAltName=DNS:$host" basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \
      extendedKeyUsage=serverAuth >"$tmp/leaf.ext" &&
    openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -days 2 \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$tmp/leaf.ext" -out "$tmp/certs/$host.crt"
} >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log"; echo "could not make the test certificates"; exit 1; }

# -http-port 0: the port-80 listener on a port of the kernel's choice (on -a's IP).
"$derpd" -certmode manual -hostname "$host" -certdir "$tmp/certs" -a 127.0.0.1:0 -http-port 0 \
  -c "$tmp/derper.key" -stun=false -shards 1 -log-level debug >"$tmp/derpd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  grep -q "serving on .* with TLS" "$tmp/derpd.log" && grep -q "port-80 listener" "$tmp/derpd.log" && break
  sleep 0.05
done
port=$(sed -n 's/.*derper: serving on 127\.0\.0\.1:\([0-9]*\) with TLS$/\1/p' "$tmp/derpd.log" | head -n 1)
p80=$(sed -n 's/.*derper: port-80 listener (redirects to HTTPS) on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/derpd.log" | head -n 1)
[[ -n "$port" && -n "$p80" ]] || { cat "$tmp/derpd.log"; echo "derpd did not start with TLS and a port-80 listener"; exit 1; }
# The server's public key, as derpd announces it; the ServerKey frame, the Derp-Public-Key
# header and the meta certificate must all carry this one.
server_key=$(sed -n 's/.*; server key \([0-9a-f]\{64\}\)$/\1/p' "$tmp/derpd.log" | head -n 1)
[[ -n "$server_key" ]] || fail "no server key in derpd's log"

tls=(-sS --cacert "$tmp/ca.pem" --resolve "$host:$port:127.0.0.1")
base="https://$host:$port"

# --- curl: full verification, TLS 1.3 by default and 1.2 when capped; ALPN settles on
# http/1.1 although curl offers h2 first (DERP's upgrade needs HTTP/1.1).
for max in default 1.2; do
  want=TLSv1.3 extra=()
  if [[ "$max" == 1.2 ]]; then want=TLSv1.2 extra=(--tls-max 1.2); fi
  out=$(curl "${tls[@]}" "${extra[@]}" -v -o /dev/null -w 'result %{http_code} %{http_version} %{ssl_verify_result}\n' \
    "$base/derp/probe" 2>&1)
  if grep -q '^result 200 1.1 0$' <<<"$out" && grep -q "SSL connection using $want " <<<"$out" &&
    grep -q "ALPN: server accepted http/1.1" <<<"$out"; then
    echo "ok: curl /derp/probe over $want, verified (ssl_verify_result 0), ALPN http/1.1"
  else
    fail "curl /derp/probe (tls max $max): $(grep -E '^result|SSL connection|ALPN|curl:' <<<"$out" | tr '\n' ' ')"
  fi
done
out=$(curl "${tls[@]}" -i -H "X-Tailscale-Challenge: ts_192.0.2.1" "$base/generate_204")
grep -q $'^HTTP/1.1 204 No Content\r$' <<<"$out" && grep -q $'^X-Tailscale-Response: response ts_192.0.2.1\r$' <<<"$out" &&
  echo "ok: /generate_204 challenge answered over TLS" || fail "/generate_204 over TLS: $out"
# Keep-alive inside one TLS connection: curl reuses it for the second URL.
out=$(curl "${tls[@]}" -v -o /dev/null -o /dev/null "$base/derp/probe" "$base/robots.txt" 2>&1)
grep -q "Re-using existing connection" <<<"$out" && [[ $(grep -c "SSL connection using" <<<"$out") == 1 ]] &&
  echo "ok: keep-alive over TLS (one handshake, two requests)" || fail "TLS connection not reused: $(grep -E 'Connected|SSL connection|Re-using|curl:' <<<"$out" | tr '\n' ' ')"

# --- The DERP upgrade through curl: curl does not know DERP, so it prints the 101 head, writes
# what follows as the body and waits for more until --max-time (exit 28): the server sent
# ServerKey and now waits for ClientInfo. Spec 1.3/11.2: type 0x01, length 0x28 (40 = the
# 8-byte magic "DERP🔑" + the 32-byte key), nothing else yet.
curl "${tls[@]}" --max-time 2 -D "$tmp/upgrade.head" -o "$tmp/upgrade.body" -H "Upgrade: DERP" -H "Connection: Upgrade" \
  "$base/derp" 2>"$tmp/upgrade.err"
rc=$?
head101=$(cat "$tmp/upgrade.head" 2>/dev/null)
if ((rc != 0 && rc != 28)); then
  fail "curl /derp upgrade exit $rc: $(cat "$tmp/upgrade.err")"
elif grep -q $'^HTTP/1.1 101 Switching Protocols\r$' <<<"$head101" && grep -q $'^Derp-Version: 2\r$' <<<"$head101" &&
  grep -q $'^Upgrade: DERP\r$' <<<"$head101" && grep -q $"^Derp-Public-Key: $server_key"$'\r$' <<<"$head101"; then
  echo "ok: /derp upgrade over TLS: 101 Switching Protocols, Derp-Version 2, Derp-Public-Key (curl exit $rc)"
else
  fail "/derp upgrade head: $head101"
fi
body=$(od -An -tx1 -v "$tmp/upgrade.body" 2>/dev/null | tr -d ' \n')
want="01""00000028""44455250f09f9491""$server_key"
[[ "$body" == "$want" ]] && echo "ok: the body is exactly one ServerKey frame (01 00000028, magic 44455250f09f9491, the server key)" ||
  fail "ServerKey frame: got '$body', want '$want'"

# --- openssl s_client: verification, ALPN, an HTTP answer, and the chain derper presents: the
# leaf, then the meta certificate (CN "derpkey" + the server key in hex, spec 2.15) that lets
# Go clients skip waiting for the 101.
# -ign_eof: keep reading after stdin ends, until derpd closes (Connection: close). derpd ends
# with a close_notify alert, as Go's tls.Conn.Close does; without it s_client reports
# "unexpected eof while reading" and exits 1.
request=$'GET /derp/probe HTTP/1.1\r\nHost: '"$host"$'\r\nConnection: close\r\n\r\n'
out=$(printf '%s' "$request" | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$host" \
  -CAfile "$tmp/ca.pem" -alpn http/1.1 -showcerts -ign_eof -msg 2>&1)
s_client_rc=$?
[[ $s_client_rc -eq 0 ]] && grep -q "Alert.*close_notify\|close notify" <<<"$out" &&
  ! grep -q "unexpected eof" <<<"$out" && echo "ok: derpd ends the TLS connection with close_notify" ||
  fail "no close_notify before the close (s_client exit $s_client_rc): $(grep -iE 'alert|eof' <<<"$out" | head -n 3 | tr '\n' ' ')"
grep -q "^Verify return code: 0 (ok)$" <<<"$out" && grep -q "^ALPN protocol: http/1.1$" <<<"$out" &&
  grep -q $'^HTTP/1.1 200 OK\r$' <<<"$out" && echo "ok: s_client verifies the chain, ALPN http/1.1, HTTP 200" ||
  fail "s_client: $(grep -E '^Verify return|ALPN|^HTTP/|error' <<<"$out" | tr '\n' ' ')"
grep -q "^ 0 s:CN = $host$" <<<"$out" && grep -q "^ 1 s:CN = derpkey$server_key$" <<<"$out" &&
  echo "ok: chain is the leaf then the meta certificate derpkey<server key>" ||
  fail "chain: $(grep -E '^ [0-9] s:' <<<"$out" | tr '\n' ' ') (server key $server_key)"
grep -q "^ [2-9] s:" <<<"$out" && fail "more than two certificates presented"

# --- Another SNI, or none, is refused during the handshake the way derper's manual mode does
# ("cert mismatch with hostname", which Go's TLS server sends as internal_error): no
# certificate, no HTTP answer. derpd logs why and keeps serving.
for sni in "-servername other.internal" "-noservername"; do
  # shellcheck disable=SC2086  # $sni is two words or one on purpose
  out=$(printf '%s' "$request" | timeout 10 openssl s_client -connect "127.0.0.1:$port" $sni -CAfile "$tmp/ca.pem" \
    -alpn http/1.1 -ign_eof 2>&1)
  if grep -q "alert internal error" <<<"$out" && grep -q "no peer certificate available" <<<"$out" &&
    ! grep -q "^HTTP/" <<<"$out"; then
    echo "ok: s_client $sni refused with an internal_error alert"
  else
    fail "s_client $sni: $(grep -E 'alert|peer certificate|^HTTP/|Cipher is' <<<"$out" | tr '\n' ' ')"
  fi
done
# --- TLS 1.2 takes forward-secret AEAD suites only, as Go's defaults: s_client offering just a
# CBC suite (SHA-1 or SHA-384 MAC) is refused; offering just an AEAD suite is served.
for cipher in ECDHE-ECDSA-AES128-SHA ECDHE-ECDSA-AES256-SHA384 ECDHE-ECDSA-AES128-GCM-SHA256; do
  out=$(printf '' | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$host" -CAfile "$tmp/ca.pem" \
    -tls1_2 -cipher "$cipher" 2>&1)
  if [[ $cipher == *GCM* ]]; then
    grep -q "Cipher is $cipher$" <<<"$out" && echo "ok: s_client -tls1_2 -cipher $cipher is served" ||
      fail "s_client -tls1_2 -cipher $cipher: $(grep -E 'alert|Cipher is' <<<"$out" | tr '\n' ' ')"
  else
    grep -q "handshake failure" <<<"$out" && ! grep -q "Cipher is $cipher$" <<<"$out" &&
      echo "ok: s_client -tls1_2 -cipher $cipher is refused" ||
      fail "s_client -tls1_2 -cipher $cipher: $(grep -E 'alert|Cipher is' <<<"$out" | tr '\n' ' ')"
  fi
done

out=$(curl -sS -k --resolve "other.internal:$port:127.0.0.1" "https://other.internal:$port/derp/probe" 2>&1)
rc=$?
((rc == 35)) && grep -q "alert internal error" <<<"$out" && echo "ok: curl -k with SNI other.internal fails the handshake (exit 35)" ||
  fail "curl with SNI other.internal: exit $rc: $out"
grep -q 'TLS handshake failed .*SNI "other.internal" is not the hostname derp.test.internal' "$tmp/derpd.log" &&
  grep -q "TLS handshake failed .*no SNI" "$tmp/derpd.log" && echo "ok: derpd logs the refused SNI" ||
  fail "no SNI refusal in derpd's log: $(grep -i 'handshake failed' "$tmp/derpd.log" | tr '\n' ' ')"
code=$(curl "${tls[@]}" -o /dev/null -w '%{http_code}' "$base/derp/probe")
running "$pid" && [[ "$code" == 200 ]] && echo "ok: derpd still serving after the refusals" ||
  fail "derpd after the refusals: probe gave '$code'"

# --- /debug/varz over TLS from loopback (the /debug/ access rule): the handshake outcomes, the
# userspace record layer's path (this kernel has no kTLS; the path is what it is, not a failure) and derper's
# per-version request counter for both versions used above.
varz=$(curl "${tls[@]}" "$base/debug/varz")
printf '%s\n' "$varz" >"$tmp/varz.txt"
value() { awk -v m="$1" '$1 == m { print $2 }' <<<"$varz"; }
for metric in 'derpd_tls_handshakes_total{result="failed"}' 'derpd_tls_handshakes_total{result="ok"}' \
  'derpd_connections_by_tls_path_total{path="userspace_records"}' 'derper_tls_request_version{version="1.3"}' \
  'derper_tls_request_version{version="1.2"}'; do
  n=$(value "$metric")
  # Three refusals above: two s_client, one curl.
  min=1
  [[ "$metric" == *failed* ]] && min=3
  [[ -n "$n" ]] && ((n >= min)) && echo "ok: $metric $n" || fail "$metric is '${n}', want >= $min"
done

# --- The port-80 listener (spec 3.7): captive-portal checks and /debug/ as on the main
# listener, everything else sent to HTTPS using the Host header as the client sent it.
out=$(curl -s -D - -o /dev/null "http://127.0.0.1:$p80/derp?x=1")
grep -q $'^HTTP/1.1 302 Found\r$' <<<"$out" && grep -q $"^Location: https://127.0.0.1:$p80/derp?x=1"$'\r$' <<<"$out" &&
  echo "ok: port 80 redirects GET /derp?x=1 to https://<Host><URI>" || fail "port-80 redirect: $out"
out=$(curl -s -D - -o /dev/null "http://127.0.0.1:$p80/")
grep -q $"^Location: https://127.0.0.1:$p80/debug/"$'\r$' <<<"$out" && echo "ok: port 80 sends / from loopback to /debug/" ||
  fail "port-80 /: $out"
out=$(curl -s -w ' %{http_code}' -X POST "http://127.0.0.1:$p80/derp")
[[ "$out" == $'Use HTTPS\n 400' ]] && echo "ok: port 80 answers POST with 400 Use HTTPS" || fail "port-80 POST: '$out'"
out=$(curl -s -i -H "X-Tailscale-Challenge: ts_192.0.2.1" "http://127.0.0.1:$p80/generate_204")
grep -q $'^HTTP/1.1 204 No Content\r$' <<<"$out" && grep -q $'^X-Tailscale-Response: response ts_192.0.2.1\r$' <<<"$out" &&
  echo "ok: port 80 serves /generate_204" || fail "port-80 /generate_204: $out"
out=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$p80/debug/varz")
[[ "${out##*$'\n'}" == 200 ]] && grep -q '^derpd_tls_handshakes_total{result="ok"} ' <<<"$out" &&
  echo "ok: port 80 serves /debug/varz to loopback" || fail "port-80 /debug/varz: ${out##*$'\n'}"

# --- promtool accepts the TLS-mode exposition: exit 0, or 3 for lint warnings on derper's own
# metric names (no HELP, counters without _total), as in http_endpoints_test.sh.
if command -v promtool >/dev/null; then
  promtool check metrics <"$tmp/varz.txt" >"$tmp/promtool.out" 2>&1
  rc=$?
  if ((rc != 0 && rc != 3)); then fail "promtool check metrics exit $rc"; cat "$tmp/promtool.out"; else echo "ok: promtool check metrics (exit $rc)"; fi
  if grep -v -E 'should have "_total" suffix|no help text|should not have "_total" suffix|abbreviated units|^derp_tcp_rtt non-histogram metrics should not have "le" label' "$tmp/promtool.out" | grep -q .; then
    fail "promtool reported more than derper-name lint:"; cat "$tmp/promtool.out"
  fi
else
  echo "ok: promtool not installed; metrics check skipped"
fi

if ((failures > 0)); then echo "$failures failure(s)"; exit 1; fi
