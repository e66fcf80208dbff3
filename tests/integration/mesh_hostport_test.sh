#!/usr/bin/env bash
# Two derpd nodes sharing one host, as derper v1.36 regions were run: distinct ports, each node's
# -hostname written host:port with its certificate files named as derper names them (the
# hostname with every character but letters, digits, '.' and '-' removed: 127.0.0.1:3341 ->
# 127.0.0.13341.crt/.key, spec 4.2), and -mesh-with entries host:port. A mesh link sends the entry as written
# as SNI and verifies the certificate for the host part; the far node accepts that SNI because it
# equals its -hostname. Both links must come up and each node must learn the other's clients.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
command -v openssl >/dev/null || { echo "SKIP: openssl not installed"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl not installed"; exit 77; }
tmp=$(mktemp -d)
pids=()
finish() {
  local status=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$tmp"
  exit "$status"
}
trap finish EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
  -days 2 -subj /CN=hostport-test-ca 2>/dev/null || { echo "FAIL: no CA"; exit 1; }
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/psk"
chmod 600 "$tmp/psk"

# Ports are chosen below the ephemeral range; a node that finds its port taken ("address
# already in use") makes the whole attempt start again on new ports, so the verdict never rests
# on a port staying free by luck.
start_region() {
  p1=$((10000 + RANDOM % 20000)) p2=$((10000 + RANDOM % 20000))
  [ "$p1" = "$p2" ] && return 1
  pids=()
  for n in 1 2; do
    local port=p$n host file d="$tmp/n$n"
    host="127.0.0.1:${!port}"
    file="${host//:/}"
    rm -rf "$d" && mkdir -p "$d/certs" && chmod 700 "$d/certs"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/certs/$file.key" -out "$d/req.csr" \
      -subj "/CN=$host" 2>/dev/null &&
      printf 'subjectAltName=IP:127.0.0.1\n' >"$d/ext" &&
      openssl x509 -req -in "$d/req.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
        -out "$d/certs/$file.crt" -days 2 -extfile "$d/ext" 2>/dev/null || { echo "FAIL: no certificate"; exit 1; }
    chmod 600 "$d/certs/$file.key"
    SSL_CERT_FILE="$tmp/ca.pem" "$derpd" -c "$d/key" -a "$host" -certmode manual -certdir "$d/certs" \
      -hostname "$host" -http-port -1 -stun=false -mesh-psk-file "$tmp/psk" \
      -mesh-with "127.0.0.1:$p1,127.0.0.1:$p2" --admin-addr "127.0.0.1:$((${!port} + 1))" --shards 1 \
      --mesh-retry-interval 200ms >"$d/log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2; do
    for _ in $(seq 200); do
      grep -q "serving on" "$tmp/n$n/log" && break
      grep -q "address already in use" "$tmp/n$n/log" && return 1
      sleep 0.05
    done
    grep -q "serving on" "$tmp/n$n/log" || { echo "FAIL: node $n did not start"; cat "$tmp/n$n/log"; exit 1; }
  done
}
for attempt in $(seq 20); do
  start_region && break
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  pids=()
done
[ ${#pids[@]} = 2 ] || { echo "FAIL: no free ports in 20 attempts"; exit 1; }

varz() { curl -s --max-time 5 "http://127.0.0.1:$(($1 + 1))/debug/varz"; }
# Both links of both nodes up (the self entry included): 30 s is far beyond the 200 ms retry.
for n in 1 2; do
  port=p$n
  for _ in $(seq 600); do
    [ "$(varz "${!port}" | grep -c '^derpd_mesh_peer_up{.*} 1$')" = 2 ] && break
    sleep 0.05
  done
  up=$(varz "${!port}" | grep '^derpd_mesh_peer_up')
  [ "$(grep -c ' 1$' <<<"$up")" = 2 ] || { echo "FAIL: node $n links: $up"; tail -20 "$tmp/n$n/log"; exit 1; }
  echo "node $n: $(tr '\n' ' ' <<<"$up")"
done
# The SNI each node saw was its own host:port (a refused SNI would log "is not the hostname").
if grep -q "is not the hostname" "$tmp"/n*/log; then echo "FAIL: an SNI was refused"; grep "is not the hostname" "$tmp"/n*/log; exit 1; fi
# Each node announces its clients to the other: node 1's link to node 2 (a client of node 2) is a
# key node 1 learns back from node 2 as local, and node 2's keys reach node 1 through the watch.
for n in 1 2; do
  port=p$n
  keys=$(varz "${!port}" | awk '$1 ~ /^derpd_mesh_peer_keys/ && $2 > 0' | wc -l)
  [ "$keys" -ge 1 ] || { echo "FAIL: node $n learned no keys"; varz "${!port}" | grep mesh_peer_keys; exit 1; }
done
echo "PASS: host:port hostnames mesh (ports $p1, $p2)"
