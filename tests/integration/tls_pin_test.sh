#!/usr/bin/env bash
# A man in the middle against a sha256-raw pin (spec 4.2), with real `openssl s_server`
# processes: the attacker presents its own certificate first (CN derpkey00, its own key, which
# signs the handshake) and the pinned certificate behind it, so that a check that drops
# "derpkey*" certificates by name and hashes what is left would match. derpprobe's tls probe
# and its mesh probe (DERP clients of the project's client library, which would then seal
# ClientInfo, mesh key included, to whatever server key they are given) must both refuse, over
# TLS 1.3 and 1.2. The same s_server presenting the pinned certificate itself is accepted: the
# control that shows the setup would let a broken check through.
set -uo pipefail
derpprobe="${DERP_BUILD_ROOT:?}/probe/derpprobe"
command -v openssl >/dev/null || { echo "SKIP: openssl not installed"; exit 77; }
tmp=$(mktemp -d)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
servers=()
finish() {
  local status=$?
  for p in "${servers[@]}"; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  rm -rf "$tmp"
  ((failures > 0)) && status=1
  exit "$status"
}
trap finish EXIT

cert() {  # name, subject, more openssl req arguments
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "$2" "${@:3}" \
    -keyout "$tmp/$1.key" -out "$tmp/$1.crt" 2>>"$tmp/openssl.log"
}
sha256_raw() { echo "sha256-raw:$(openssl x509 -in "$tmp/$1.crt" -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1)"; }
cert real /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 && cert att /CN=derpkey00 ||
  { cat "$tmp/openssl.log"; echo "could not make the test certificates"; exit 1; }
pin=$(sha256_raw real)
att_pin=$(sha256_raw att)

# Starts s_server presenting <cert> (with <key>) and then <chain>; sets port.
serve() {  # name, cert, key, chain ("" for none), more s_server arguments
  local log="$tmp/$1.log" chain=()
  [[ -n "$4" ]] && chain=(-cert_chain "$tmp/$4.crt")
  openssl s_server -accept 127.0.0.1:0 -cert "$tmp/$2.crt" -key "$tmp/$3.key" "${chain[@]}" "${@:5}" -www -ign_eof \
    </dev/null >"$log" 2>&1 &
  servers+=($!)
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log")
    [[ -n "$port" ]] && break
    sleep 0.05
  done
  [[ -n "$port" ]] || { cat "$log"; echo "s_server $1 did not start"; exit 1; }
}
# A one-node map (region 900 "test", node "a", no STUN) pinning the real certificate.
map() {  # file, port
  printf '{"Regions":{"900":{"RegionID":900,"RegionCode":"test","RegionName":"Test","Nodes":[{"Name":"a","RegionID":900,"HostName":"127.0.0.1","IPv4":"127.0.0.1","DERPPort":%s,"STUNPort":-1,"CertName":"%s"}]}}}\n' \
    "$2" "$pin" >"$1"
}
probe_once() {
  out=$(timeout 60 "$derpprobe" -once "$@" 2>&1)
  rc=$?
}
has() { grep -qE -e "$1" <<<"$out"; }
show() { sed 's/^/    /' <<<"$out"; }

for version in 1.3 1.2; do
  extra=()
  [[ $version == 1.2 ]] && extra=(-tls1_2)

  # The control: the pinned certificate itself signs the handshake.
  serve "real-$version" real real "" "${extra[@]}"
  map "$tmp/real.json" "$port"
  probe_once -derp-map "$tmp/real.json" -mesh-interval 0
  ((rc == 0)) && has "^good: derp/test/a/tls: .*TLSv$version, sha256-raw pin matched, CN=127\.0\.0\.1 " &&
    echo "ok: TLS $version: s_server presenting the pinned certificate: tls probe good" ||
    { fail "TLS $version control (exit $rc):"; show; }

  # The man in the middle: its own certificate and key, the pinned certificate as the chain.
  serve "mitm-$version" att att real "${extra[@]}"
  map "$tmp/mitm.json" "$port"
  probe_once -derp-map "$tmp/mitm.json" -mesh-interval 2s
  if ((rc == 1)) && ! has '^good: derp/test/a/tls' &&
    has "^bad: derp/test/a/tls: certificate pin mismatch: 127\.0\.0\.1:$port presented CN=derpkey00 with $att_pin, the DERP map's CertName wants $pin$" &&
    has '^bad: derp/test/a/a/mesh: (from|to) node a: certificate pin mismatch'; then
    echo "ok: TLS $version: a derpkey00 certificate in front of the pinned one: tls and mesh probes refuse it"
  else
    fail "TLS $version man in the middle (exit $rc):"; show
  fi
done

if ((failures > 0)); then echo "$failures failure(s)"; exit 1; fi
