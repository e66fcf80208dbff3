#!/usr/bin/env bash
# derpd's start-up errors, run against the real binary: each must stop start-up with a non-zero
# exit and a message that names the problem and what to do.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [[ -n "${blocker_pid:-}" ]] && kill "$blocker_pid" 2>/dev/null' EXIT
failures=0

expect_failure() {  # description, expected message (grep -E), command...
  local what=$1 pattern=$2
  shift 2
  local out rc
  out=$("$@" 2>&1 </dev/null)
  rc=$?
  if ((rc == 0)); then
    echo "FAIL: $what: exited 0"; failures=$((failures + 1)); return
  fi
  if ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL: $what: message does not match /$pattern/:"; echo "$out" | sed 's/^/    /'
    failures=$((failures + 1)); return
  fi
  echo "ok: $what: $(grep -E -- "$pattern" <<<"$out" | head -n 1)"
}

expect_failure "unknown flag" "flag provided but not defined: -bogus" "$derpd" -dev -bogus
expect_failure "bad integer" 'invalid integer value "two" for flag -shards' "$derpd" -dev -shards two
expect_failure "bad duration" 'invalid duration "5" for flag -tcp-write-timeout' "$derpd" -dev -tcp-write-timeout 5
expect_failure "bad boolean" 'invalid boolean value "maybe" for flag -stun' "$derpd" -dev -stun=maybe
expect_failure "missing value" "flag needs an argument: -a" "$derpd" -a
expect_failure "stray argument" 'unexpected argument "extra"' "$derpd" -dev extra
expect_failure "bad listen address" 'bad port' "$derpd" -dev -a 127.0.0.1:99999
expect_failure "malformed admission URL" '-verify-client-url: "http://h:0/" is not an http:// or https:// URL' \
  "$derpd" -dev -a 127.0.0.1:0 -verify-client-url http://h:0/
expect_failure "ftp admission URL" '-verify-client-url: "ftp://h/" is not an http:// or https:// URL' \
  "$derpd" -dev -a 127.0.0.1:0 -verify-client-url ftp://h/
expect_failure "zero -accept-connection-limit" 'invalid value 0 for flag -accept-connection-limit: want a positive rate' \
  "$derpd" -dev -accept-connection-limit 0
expect_failure "NaN -accept-connection-limit" 'invalid value nan for flag -accept-connection-limit' \
  "$derpd" -dev -accept-connection-limit NaN
expect_failure "bad -accept-connection-limit" 'invalid float value "fast" for flag -accept-connection-limit' \
  "$derpd" -dev -accept-connection-limit fast
expect_failure "zero -accept-connection-burst" 'invalid value 0 for flag -accept-connection-burst: want at least 1' \
  "$derpd" -dev -accept-connection-limit 10 -accept-connection-burst 0
expect_failure "negative -drain-timeout" 'invalid negative duration for flag -drain-timeout' \
  "$derpd" -dev -drain-timeout -1s
expect_failure "admission timeout" 'invalid value for flag -verify-client-timeout: want 1ms to 60s' \
  "$derpd" -dev -verify-client-timeout 2m
# -rate-config (spec 2.12): a file derper would not decode refuses the start.
printf '{"PerClientRateLimitBytesPerSec": -5}' >"$tmp/rate-negative.json"
expect_failure "negative rate" 'rate config .*rate-negative.json: PerClientRateLimitBytesPerSec must be a whole number' \
  "$derpd" -dev -a 127.0.0.1:0 -stun=false -rate-config "$tmp/rate-negative.json"
printf '{"PerClientRateLimitBytesPerSec": 1000' >"$tmp/rate-truncated.json"
expect_failure "truncated rate config" 'rate config .*rate-truncated.json: not a JSON object' \
  "$derpd" -dev -a 127.0.0.1:0 -stun=false -rate-config "$tmp/rate-truncated.json"
expect_failure "missing rate config" 'rate config .*/absent.json: No such file or directory' \
  "$derpd" -dev -a 127.0.0.1:0 -stun=false -rate-config "$tmp/absent.json"
expect_failure "advertise without a limit" 'flag -advertise-rate-limit needs -rate-config' \
  "$derpd" -dev -a 127.0.0.1:0 -advertise-rate-limit
expect_failure "cross-shard backlog 0" 'invalid value 0 for flag -cross-shard-backlog' \
  "$derpd" -dev -a 127.0.0.1:0 -cross-shard-backlog 0
# -certmode letsencrypt: an IP -hostname cannot be ordered; gcp (EAB) is not there.
expect_failure "letsencrypt for an IP" "-hostname 192.0.2.1 is an IP address.*-certmode manual" \
  "$derpd" -a 127.0.0.1:0 -letsencrypt-any-port -hostname 192.0.2.1 -c "$tmp/k" -stun=false
expect_failure "letsencrypt bad hostname" '-hostname "bad/name" is not a DNS name' \
  "$derpd" -a 127.0.0.1:0 -letsencrypt-any-port -hostname bad/name -c "$tmp/k" -stun=false
expect_failure "gcp" "-certmode gcp .* is not available in derpd" "$derpd" -a 127.0.0.1:443 -certmode gcp -c "$tmp/k"
expect_failure "bad -acme-timeout" "invalid value for flag -acme-timeout: at least 1s" "$derpd" -dev -acme-timeout 10ms
expect_failure "bad -ktls" 'invalid value "maybe" for flag -ktls' "$derpd" -dev -ktls maybe
expect_failure "bad -recv-buffers" 'invalid value 100 for flag -recv-buffers: want a power of two' "$derpd" -dev -recv-buffers 100
expect_failure "bad -tls-handshakes-per-source" 'invalid value 600 for flag -tls-handshakes-per-source: want 0..512' "$derpd" -dev -tls-handshakes-per-source 600
expect_failure "bad -wait-min" 'invalid value 2s for flag -wait-min: want 0 to 1s' "$derpd" -dev -wait-min 2s
expect_failure "bad -wait-batch" 'invalid value 0 for flag -wait-batch: want 1..4096' "$derpd" -dev -wait-batch 0
expect_failure "negative -memory-trim-interval" 'invalid negative duration for flag -memory-trim-interval' \
  "$derpd" -dev -memory-trim-interval -1s
expect_failure "negative -cert-poll-interval" 'invalid negative duration for flag -cert-poll-interval' \
  "$derpd" -dev -cert-poll-interval -1s
# -certmode manual: a DNS hostname needs both files; a key that is not the certificate's, or a
# certificate for another name, stops start-up naming the file.
mkdir -p "$tmp/certs"
expect_failure "manual cert missing" "derp.example.test.crt not found" \
  "$derpd" -a 127.0.0.1:0 -c "$tmp/k" -certmode manual -hostname derp.example.test -certdir "$tmp/certs" -stun=false
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=derp.example.test \
  -addext subjectAltName=DNS:derp.example.test -keyout "$tmp/certs/derp.example.test.key" \
  -out "$tmp/certs/derp.example.test.crt" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/other.key" 2>/dev/null
cp "$tmp/certs/derp.example.test.crt" "$tmp/certs/other.example.test.crt"
cp "$tmp/other.key" "$tmp/certs/other.example.test.key"
expect_failure "manual key mismatch" "other.example.test.key does not match certificate" \
  "$derpd" -a 127.0.0.1:0 -c "$tmp/k" -certmode manual -hostname other.example.test -certdir "$tmp/certs" -stun=false
cp "$tmp/certs/derp.example.test.key" "$tmp/certs/other.example.test.key"
expect_failure "manual cert for another name" "is not valid for hostname other.example.test" \
  "$derpd" -a 127.0.0.1:0 -c "$tmp/k" -certmode manual -hostname other.example.test -certdir "$tmp/certs" -stun=false
# -ktls=require where the kernel has no kTLS (this machine): refused with the reason.
out=$(timeout 3 "$derpd" -a 127.0.0.1:0 -c "$tmp/k" -certmode manual -hostname 127.0.0.1 -certdir "$tmp/ipcerts" \
  -stun=false -http-port -1 -ktls require 2>&1)
rc=$?
if ((rc == 124)); then
  echo "ok: -ktls=require: this kernel has kTLS, derpd started"
elif grep -q -- "-ktls=require, but the kernel has no tls module" <<<"$out"; then
  echo "ok: -ktls=require refused: $(grep -- '-ktls=require' <<<"$out")"
else
  echo "FAIL: -ktls=require: rc $rc: $out"; failures=$((failures + 1))
fi
expect_failure "no config path (non-root)" "-c <config path> not specified" \
  setpriv --reuid=65534 --regid=65534 --clear-groups "$derpd" -a 127.0.0.1:0

printf '{"PrivateKey": "privkey:zz"}' >"$tmp/bad.key"
expect_failure "malformed key file" "bad.key: PrivateKey is not" "$derpd" -a 127.0.0.1:0 -c "$tmp/bad.key"
cmp -s <(printf '{"PrivateKey": "privkey:zz"}') "$tmp/bad.key" || { echo "FAIL: malformed key file was modified"; failures=$((failures + 1)); }

printf 'not hex\n' >"$tmp/mesh.psk"
expect_failure "bad mesh key" "invalid mesh key" "$derpd" -a 127.0.0.1:0 -c "$tmp/k1" -mesh-psk-file "$tmp/mesh.psk"

# A port held by another derpd: SO_REUSEPORT must not let a second one share it.
"$derpd" -a 127.0.0.1:0 -c "$tmp/k2" -stun=false >"$tmp/first.log" 2>&1 &
blocker_pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/first.log" 2>/dev/null && break; sleep 0.05; done
port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/first.log" | head -n 1)
expect_failure "port in use" "address already in use" "$derpd" -a "127.0.0.1:$port" -c "$tmp/k2" -stun=false
kill -TERM "$blocker_pid"; wait "$blocker_pid"; blocker_pid=

# Too few file descriptors for the connection slots.
expect_failure "too few file descriptors" "too few file descriptors.*LimitNOFILE" \
  prlimit --nofile=70:70 "$derpd" -a 127.0.0.1:0 -c "$tmp/k3" -stun=false

# A key file is created with mode 0600 on first start and reused after.
"$derpd" -a 127.0.0.1:0 -c "$tmp/new/derper.key" -stun=false >"$tmp/run.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "serving on" "$tmp/run.log" 2>/dev/null && break; sleep 0.05; done
kill -TERM "$pid"; wait "$pid"; rc=$?
mode=$(stat -c %a "$tmp/new/derper.key" 2>/dev/null)
if ((rc != 0)) || [[ "$mode" != 600 ]] || ! grep -q '"PrivateKey": "privkey:' "$tmp/new/derper.key"; then
  echo "FAIL: key file creation (exit $rc, mode $mode)"; cat "$tmp/run.log"; failures=$((failures + 1))
else
  echo "ok: key file created with mode 600, clean exit on SIGTERM"
fi

if ((failures > 0)); then echo "$failures failure(s)"; exit 1; fi
