#!/usr/bin/env bash
# derpprobe (spec 8.1) against derpd over TLS: with -once a healthy node gives good tls, udp and
# mesh lines and exit 0; a server that is down, a wrong sha256-raw pin, a certificate that
# expires in 2 days, two nodes of a region that are not meshed, a closed STUN port and a bad
# map file each give exit 1 and a bad line that names the problem. The map also comes from an https://
# URL served by the test (verified with -ca-file) and from a LocalAPI stand-in (-derp-map local). Without -once derpprobe
# probes on its intervals and serves /metrics (checked by promtool), /healthz and a status
# page, and stops with status 0 on SIGTERM. Every derpd started here must also exit 0 on SIGTERM.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
derpprobe="${DERP_BUILD_ROOT:?}/probe/derpprobe"
command -v openssl >/dev/null || { echo "SKIP: openssl not installed"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl not installed"; exit 77; }
tmp=$(mktemp -d)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# A zombie still answers kill -0, so ask for the process state.
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ "$s" != Z* ]]; }
declare -A derpd_pids=()  # name -> pid
probe_pid=

# Stops a process with SIGTERM and checks that it exits 0 within 5 s.
stop_checked() {  # pid, what, log
  local pid=$1 what=$2 log=$3 rc
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do running "$pid" || break; sleep 0.05; done
  if running "$pid"; then
    echo "FAIL: $what still running 5 s after SIGTERM"
    kill -KILL "$pid" 2>/dev/null
    failures=$((failures + 1))
  fi
  wait "$pid"
  rc=$?
  if ((rc == 0)); then
    echo "ok: $what exited 0 on SIGTERM"
  else
    echo "FAIL: $what exited $rc on SIGTERM; its log ends:"
    tail -n 20 "$log"
    failures=$((failures + 1))
  fi
}

finish() {
  local status=$?
  [[ -n "$probe_pid" ]] && running "$probe_pid" && kill -KILL "$probe_pid" 2>/dev/null
  for name in "${!derpd_pids[@]}"; do stop_checked "${derpd_pids[$name]}" "derpd $name" "$tmp/$name.log"; done
  rm -rf "$tmp"
  ((failures > 0)) && status=1
  exit "$status"
}
trap finish EXIT

free_port() {  # tcp|udp: a port nothing listens on
  local flag=-Htln
  [[ $1 == udp ]] && flag=-Hunl
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 30000))
    ss "$flag" "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# Starts derpd over TLS (-certmode manual) with STUN on a port of the kernel's choice and sets
# port_<name>, stun_<name> and (for an IP hostname) pin_<name> from its log.
start_derpd() {  # name, hostname, certdir
  local name=$1 host=$2 certdir=$3 log="$tmp/$1.log"
  : >"$log"  # exists before the first grep below, whenever the background shell opens it
  "$derpd" -certmode manual -hostname "$host" -certdir "$certdir" -a 127.0.0.1:0 -http-port -1 -stun-port 0 \
    -c "$tmp/$name.key" -shards 1 >"$log" 2>&1 &
  derpd_pids[$name]=$!
  for _ in $(seq 100); do grep -q "serving on .* with TLS" "$log" && break; sleep 0.05; done
  printf -v "port_$name" '%s' "$(sed -n 's/.*derper: serving on 127\.0\.0\.1:\([0-9]*\) with TLS$/\1/p' "$log" | head -n 1)"
  printf -v "stun_$name" '%s' "$(sed -n 's/.*STUN server listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | head -n 1)"
  printf -v "pin_$name" '%s' "$(grep -o 'sha256-raw:[0-9a-f]\{64\}' "$log" | head -n 1)"
  local p="port_$name" s="stun_$name"
  [[ -n "${!p}" && -n "${!s}" ]] || { cat "$log"; echo "derpd $name did not start with TLS and STUN"; exit 1; }
}

# A node object for the map: name, hostname, derp port, stun port, CertName ("" for none).
node() {
  local cert=""
  [[ -n "$5" ]] && cert=",\"CertName\":\"$5\""
  printf '{"Name":"%s","RegionID":900,"HostName":"%s","IPv4":"127.0.0.1","DERPPort":%s,"STUNPort":%s%s}' "$1" "$2" "$3" "$4" "$cert"
}
# A map with one region (code "test", ID 900) holding the given nodes.
map() {  # file, node...
  local file=$1
  shift
  local IFS=,
  printf '{"Regions":{"900":{"RegionID":900,"RegionCode":"test","RegionName":"Test","Nodes":[%s]}}}\n' "$*" >"$file"
}

# Runs derpprobe -once; sets out and rc.
probe_once() {
  out=$("$derpprobe" -once "$@" 2>&1)
  rc=$?
}
has() { grep -qE -e "$1" <<<"$out"; }
show() { sed 's/^/    /' <<<"$out"; }

start_derpd a 127.0.0.1 "$tmp/certs-a"
start_derpd b 127.0.0.1 "$tmp/certs-b"
[[ -n "$pin_a" && -n "$pin_b" && "$pin_a" != "$pin_b" ]] || fail "no distinct sha256-raw pins in the derpd logs ('$pin_a', '$pin_b')"

# --- 1. A healthy node: every probe good, exit 0.
map "$tmp/good.json" "$(node a 127.0.0.1 "$port_a" "$stun_a" "$pin_a")"
probe_once -derp-map "$tmp/good.json"
if ((rc == 0)) && has '^good: derp/test/a/tls: .*TLSv1\.[23], sha256-raw pin matched, CN=127\.0\.0\.1 expires in 36[45] days' &&
  has "^good: derp/test/a/udp: .*127\.0\.0\.1:$stun_a answered in .*, it sees us as 127\.0\.0\.1:[0-9]+$" &&
  has '^good: derp/test/a/a/mesh: .*8 bytes a -> a delivered in ' && has '^good: derpmap-probe: .*1 region, 1 node, 3 probes' &&
  ! has '^bad: ' && [[ $(grep -c '^good: ' <<<"$out") == 4 ]]; then
  echo "ok: healthy node: good tls, udp, mesh and derpmap-probe lines, exit 0"
else
  fail "healthy node (exit $rc):"; show
fi
# A file:// URL names the same map.
probe_once -derp-map "file://$tmp/good.json" -mesh-interval 0 -stun-interval 0
((rc == 0)) && has '^good: derp/test/a/tls: ' && ! has '/mesh|/udp' && echo "ok: file:// map; interval 0 turns a class off" ||
  { fail "file:// map with mesh and stun off (exit $rc):"; show; }

# --- 2. Failures, each exit 1 with a bad line naming the problem.
closed=$(free_port tcp)
map "$tmp/down.json" "$(node down 127.0.0.1 "$closed" -1 "$pin_a")"
probe_once -derp-map "$tmp/down.json" -mesh-interval 2s
# The down/down mesh probe dials the node twice at once, and whichever dial is refused first
# names its side ("from" or "to"): both name the same node.
((rc == 1)) && has "^bad: derp/test/down/tls: connect 127\.0\.0\.1:$closed: Connection refused$" &&
  has "^bad: derp/test/down/down/mesh: (from|to) node down: connect 127\.0\.0\.1:$closed: Connection refused$" && ! has '/udp' &&
  echo "ok: server down: tls and mesh bad with 'Connection refused', no udp probe for STUNPort -1, exit 1" ||
  { fail "server down (exit $rc):"; show; }

wrong_pin="sha256-raw:${pin_b#sha256-raw:}"
map "$tmp/pin.json" "$(node a 127.0.0.1 "$port_a" "$stun_a" "$wrong_pin")"
probe_once -derp-map "$tmp/pin.json" -mesh-interval 2s
((rc == 1)) && has "^bad: derp/test/a/tls: certificate pin mismatch: 127\.0\.0\.1:$port_a presented CN=127\.0\.0\.1 with $pin_a, the DERP map's CertName wants $wrong_pin$" &&
  has '^bad: derp/test/a/a/mesh: (from|to) node a: certificate pin mismatch' && has '^good: derp/test/a/udp: ' &&
  echo "ok: wrong pin: tls and mesh bad with 'certificate pin mismatch' and both hashes, udp good, exit 1" ||
  { fail "wrong pin (exit $rc):"; show; }

# A private CA and a leaf for a DNS name valid 3 days: the chain verifies (with -ca-file), the
# node is reached at its IPv4 without DNS, and the tls probe fails on the expiry alone.
host=derp.test.internal
mkdir -m 700 "$tmp/certs-x"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -subj "/CN=derpprobe test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout "$tmp/certs-x/$host.key" -out "$tmp/leaf.csr" -subj "/CN=$host" &&
    printf '%s\n' "subjectAltName=DNS:$host" basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \
      extendedKeyUsage=serverAuth >"$tmp/leaf.ext" &&
    openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -days 3 \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$tmp/leaf.ext" -out "$tmp/certs-x/$host.crt"
} >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log"; echo "could not make the test certificates"; exit 1; }
start_derpd x "$host" "$tmp/certs-x"
map "$tmp/expiring.json" "$(node x "$host" "$port_x" "$stun_x" "")"
probe_once -derp-map "$tmp/expiring.json" -ca-file "$tmp/ca.pem"
((rc == 1)) && has "^bad: derp/test/x/tls: certificate CN=$host expires in 2 days \(.* UTC\), less than 7 days away$" &&
  has '^good: derp/test/x/x/mesh: ' && has '^good: derp/test/x/udp: ' &&
  echo "ok: certificate valid 3 days: tls bad 'expires in 2 days', mesh (verified with -ca-file) and udp good, exit 1" ||
  { fail "expiring certificate (exit $rc):"; show; }
probe_once -derp-map "$tmp/expiring.json" -stun-interval 0 -mesh-interval 2s
((rc == 1)) && has "^bad: derp/test/x/tls: TLS handshake with $host:$port_x: certificate verification failed for $host: unable to get local issuer certificate$" &&
  has '^bad: derp/test/x/x/mesh: from node x: TLS handshake .*certificate verification failed' &&
  echo "ok: without -ca-file the private CA is not trusted: verification failure named" ||
  { fail "expiring certificate without -ca-file (exit $rc):"; show; }

# -derp-map https://: the map from a TLS server of the test's (openssl s_server -WWW with a leaf for
# IP 127.0.0.1 from the private CA), verified as the nodes are: trusted with -ca-file, not without.
{
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/web.key" -out "$tmp/web.csr" \
    -subj "/CN=127.0.0.1" &&
    printf '%s\n' "subjectAltName=IP:127.0.0.1" basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \
      extendedKeyUsage=serverAuth >"$tmp/web.ext" &&
    openssl x509 -req -in "$tmp/web.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -days 3 \
      -set_serial "0x$(openssl rand -hex 8)" -extfile "$tmp/web.ext" -out "$tmp/web.crt"
} >"$tmp/openssl-web.log" 2>&1 || { cat "$tmp/openssl-web.log"; echo "could not make the map server's certificate"; exit 1; }
web_port=$(free_port tcp)
(cd "$tmp" && exec openssl s_server -quiet -accept "127.0.0.1:$web_port" -cert web.crt -key web.key -WWW) >"$tmp/web.log" 2>&1 &
web_pid=$!
for _ in $(seq 200); do ss -Htln "sport = :$web_port" | grep -q . && break; sleep 0.05; done
probe_once -derp-map "https://127.0.0.1:$web_port/good.json" -ca-file "$tmp/ca.pem" -mesh-interval 0 -stun-interval 0
((rc == 0)) && has '^good: derpmap-probe: .*1 region, 1 node' && has '^good: derp/test/a/tls: ' &&
  echo "ok: https:// map verified with -ca-file: derpmap-probe and tls good, exit 0" ||
  { fail "https map with -ca-file (exit $rc):"; show; }
probe_once -derp-map "https://127.0.0.1:$web_port/good.json" -mesh-interval 0 -stun-interval 0
((rc == 1)) && has "^bad: derpmap-probe: DERP map https://127\.0\.0\.1:$web_port/good\.json: TLS: .*verif" &&
  echo "ok: https:// map from a CA the system store lacks: bad derpmap-probe naming verification" ||
  { fail "https map without -ca-file (exit $rc):"; show; }
kill -TERM "$web_pid" 2>/dev/null
wait "$web_pid" 2>/dev/null

# -derp-map local: a LocalAPI stand-in on a Unix socket answers GET /localapi/v0/derpmap (Host
# local-tailscaled.sock) as tailscaled does; with no tailscaled the failure says where it looked.
cat >"$tmp/localapi.py" <<'PY'
import http.server, os, socketserver, sys
path, map_file = sys.argv[1], sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.headers.get("Host") != "local-tailscaled.sock" or self.path != "/localapi/v0/derpmap":
            body = b"not found\n"
            self.send_response(404)
        else:
            body = open(map_file, "rb").read()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
    def log_message(self, *args):
        pass
class Server(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)
if os.path.exists(path):
    os.unlink(path)
Server(path, Handler).serve_forever()
PY
python3 "$tmp/localapi.py" "$tmp/tailscaled.sock" "$tmp/good.json" >"$tmp/localapi.log" 2>&1 &
localapi_pid=$!
for _ in $(seq 200); do [[ -S "$tmp/tailscaled.sock" ]] && break; sleep 0.05; done
probe_once -derp-map local -socket "$tmp/tailscaled.sock" -mesh-interval 0 -stun-interval 0
((rc == 0)) && has '^good: derpmap-probe: .*1 region, 1 node' && has '^good: derp/test/a/tls: ' &&
  echo "ok: -derp-map local from the LocalAPI stand-in: derpmap-probe and tls good, exit 0" ||
  { fail "-derp-map local (exit $rc):"; show; cat "$tmp/localapi.log"; }
kill -TERM "$localapi_pid" 2>/dev/null
wait "$localapi_pid" 2>/dev/null
probe_once -derp-map local -socket "$tmp/absent.sock"
((rc == 1)) && has "^bad: derpmap-probe: DERP map from the local tailscaled: connecting to tailscaled at $tmp/absent\.sock: No such file or directory" &&
  echo "ok: -derp-map local with no tailscaled: bad derpmap-probe naming the socket" ||
  { fail "-derp-map local without tailscaled (exit $rc):"; show; }

# Two independent derpd processes in one region: each node relays to itself, but a packet from
# a client on one to a client on the other needs a mesh, which they do not have.
map "$tmp/pair.json" "$(node a 127.0.0.1 "$port_a" -1 "$pin_a")" "$(node b 127.0.0.1 "$port_b" -1 "$pin_b")"
probe_once -derp-map "$tmp/pair.json" -mesh-interval 2s -tls-interval 0
((rc == 1)) && has '^good: derp/test/a/a/mesh: ' && has '^good: derp/test/b/b/mesh: ' &&
  has '^bad: derp/test/a/b/mesh: packet from a to b not delivered within .*are a and b meshed' &&
  has '^bad: derp/test/b/a/mesh: packet from b to a not delivered within .*are b and a meshed' &&
  [[ $(grep -c '/mesh: ' <<<"$out") == 4 ]] &&
  echo "ok: unmeshed two-node region: a/a and b/b good, a/b and b/a bad 'not delivered', exit 1" ||
  { fail "two-node region (exit $rc):"; show; }

stun_closed=$(free_port udp)
map "$tmp/stun.json" "$(node a 127.0.0.1 "$port_a" "$stun_closed" "$pin_a")"
probe_once -derp-map "$tmp/stun.json" -stun-interval 3s
((rc == 1)) && has "^bad: derp/test/a/udp: no STUN server at 127\.0\.0\.1:$stun_closed: Connection refused$" &&
  has '^good: derp/test/a/tls: ' && has '^good: derp/test/a/a/mesh: ' &&
  echo "ok: closed STUN port: udp bad 'Connection refused', tls and mesh good, exit 1" ||
  { fail "closed STUN port (exit $rc):"; show; }

probe_once -derp-map "$tmp/missing.json"
((rc == 1)) && [[ "$out" == "bad: derpmap-probe: DERP map $tmp/missing.json: No such file or directory" ]] &&
  echo "ok: missing map file: bad derpmap-probe, exit 1" || { fail "missing map (exit $rc):"; show; }
printf '{"Regions": {"900": {"Nodes": [' >"$tmp/broken.json"
probe_once -derp-map "$tmp/broken.json"
((rc == 1)) && has "^bad: derpmap-probe: DERP map $tmp/broken.json: not JSON: " && echo "ok: unparsable map: bad derpmap-probe 'not JSON', exit 1" ||
  { fail "unparsable map (exit $rc):"; show; }
printf '{"Regions": {"900": {"RegionCode": "test", "Nodes": [{"Name": "a", "HostName": "h", "STUNPort": "3478"}]}}}' >"$tmp/typed.json"
probe_once -derp-map "$tmp/typed.json"
((rc == 1)) && has '^bad: derpmap-probe: .*region 900 node 0: STUNPort: want an integer, got a string$' &&
  echo "ok: a string STUNPort is a map error naming the field" || { fail "mistyped map (exit $rc):"; show; }
probe_once -derp-map "$tmp/good.json" -region-code nowhere
((rc == 1)) && has 'no region has RegionCode or RegionID "nowhere"' && echo "ok: -region-code that matches nothing is an error" ||
  { fail "-region-code nowhere (exit $rc):"; show; }
probe_once -derp-map "$tmp/good.json" -region-code 900 -mesh-interval 0 -stun-interval 0
((rc == 0)) && has '^good: derp/test/a/tls: ' && echo "ok: -region-code takes a RegionID too" || { fail "-region-code 900 (exit $rc):"; show; }
probe_once -derp-map http://127.0.0.1:1/derpmap.json
((rc == 1)) && has 'plain http:// maps are not fetched' && echo "ok: a plain http:// map URL is refused with a hint" ||
  { fail "http map (exit $rc):"; show; }
out=$("$derpprobe" -once 2>&1)
rc=$?
((rc == 2)) && has '-derp-map is required' && echo "ok: no -derp-map: usage error, exit 2" || { fail "no -derp-map (exit $rc):"; show; }
printf 'not a key\n' >"$tmp/bad.psk"
probe_once -derp-map "$tmp/good.json" -mesh-psk-file "$tmp/bad.psk"
((rc == 2)) && has "mesh-psk-file $tmp/bad.psk: want 64 hex digits" && echo "ok: a malformed -mesh-psk-file is refused, exit 2" ||
  { fail "bad mesh key file (exit $rc):"; show; }
printf '  %s\n' "$(openssl rand -hex 32)" >"$tmp/mesh.psk"
probe_once -derp-map "$tmp/good.json" -mesh-psk-file "$tmp/mesh.psk" -tls-interval 0 -stun-interval 0
((rc == 0)) && has '^good: derp/test/a/a/mesh: ' && echo "ok: mesh probe with -mesh-psk-file (key sent in ClientInfo)" ||
  { fail "mesh probe with a mesh key (exit $rc):"; show; }

# --- 3. Served mode: probes on their intervals, /metrics, /healthz, the status page, SIGTERM.
: >"$tmp/probe.log"
# Probe intervals of 2 s give each run a budget of 1.6 s (4/5 of it): a mesh probe (two TLS
# handshakes and a packet) fits that even under the sanitizers on two busy cores.
"$derpprobe" -derp-map "$tmp/good.json" -listen 127.0.0.1:0 -interval 1s -mesh-interval 2s -tls-interval 2s \
  -stun-interval 2s >"$tmp/probe.log" 2>&1 &
probe_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$tmp/probe.log" && break; sleep 0.05; done
lport=$(sed -n 's/^derpprobe: listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/probe.log" | head -n 1)
[[ -n "$lport" ]] || { cat "$tmp/probe.log"; echo "derpprobe did not start listening"; exit 1; }
base="http://127.0.0.1:$lport"
attempts() {  # probe name -> its ok attempts in a metrics text on stdin
  sed -n "s/^derpprobe_attempts_total{.*name=\"$1\".*status=\"ok\"} \([0-9]*\)$/\1/p"
}
# With -spread each probe first runs within its 2 s interval; wait until all three have run.
for _ in $(seq 200); do
  curl -s "$base/metrics" >"$tmp/metrics1.txt"
  [[ -n "$(attempts 'derp\/test\/a\/a\/mesh' <"$tmp/metrics1.txt")" && -n "$(attempts 'derp\/test\/a\/tls' <"$tmp/metrics1.txt")" &&
    -n "$(attempts 'derp\/test\/a\/udp' <"$tmp/metrics1.txt")" ]] && break
  sleep 0.1
done
labels='class="tls",hostname="127.0.0.1",name="derp/test/a/tls",region="test",region_id="900"'
mesh_labels='class="derp_mesh",derp_path="single",hostname="127.0.0.1",name="derp/test/a/a/mesh",region="test",region_id="900"'
if grep -qx "derpprobe_result{$labels} 1" "$tmp/metrics1.txt" && grep -qx "derpprobe_result{$mesh_labels} 1" "$tmp/metrics1.txt" &&
  grep -qx "derpprobe_interval_secs{$labels} 2" "$tmp/metrics1.txt" &&
  grep -qE "^derpprobe_latency_millis\{$labels\} [0-9.e+-]+$" "$tmp/metrics1.txt" &&
  grep -qE "^derpprobe_end_secs\{$labels\} [0-9]{10}$" "$tmp/metrics1.txt" &&
  grep -qx "derpprobe_attempts_total{$labels,status=\"fail\"} 0" "$tmp/metrics1.txt" &&
  grep -qE "^derpprobe_cert_expiry_secs\{$labels\} 3[0-9]{7}$" "$tmp/metrics1.txt" &&
  grep -q '^derpprobe_result{class="derp_udp",.*name="derp/test/a/udp".*} 1$' "$tmp/metrics1.txt" &&
  grep -q '^derpprobe_result{class="derp_map",name="derpmap-probe"} 1$' "$tmp/metrics1.txt"; then
  echo "ok: /metrics: derpprobe_result 1 for tls, udp, mesh and the map with derpprobe's labels, latency, cert expiry"
else
  fail "/metrics:"; sed 's/^/    /' "$tmp/metrics1.txt"
fi
# Each probe runs again on its 2 s interval: wait (up to 20 s, however slow this machine is)
# until every one has two more successful attempts.
names=('derp\/test\/a\/tls' 'derp\/test\/a\/udp' 'derp\/test\/a\/a\/mesh')
for _ in $(seq 200); do
  curl -s "$base/metrics" >"$tmp/metrics2.txt"
  behind=0
  for name in "${names[@]}"; do
    n1=$(attempts "$name" <"$tmp/metrics1.txt") n2=$(attempts "$name" <"$tmp/metrics2.txt")
    [[ -n "$n1" && -n "$n2" ]] && ((n2 >= n1 + 2)) || behind=1
  done
  ((behind == 0)) && break
  sleep 0.1
done
for name in "${names[@]}"; do
  n1=$(attempts "$name" <"$tmp/metrics1.txt") n2=$(attempts "$name" <"$tmp/metrics2.txt")
  [[ -n "$n1" && -n "$n2" ]] && ((n2 >= n1 + 2)) && echo "ok: ${name//\\/} ran again on its 2 s interval ($n1 -> $n2 successful attempts)" ||
    fail "${name//\\/}: successful attempts '$n1' then '$n2' 20 s later"
done
if command -v promtool >/dev/null; then
  promtool check metrics <"$tmp/metrics2.txt" >"$tmp/promtool.out" 2>&1
  rc=$?
  ((rc == 0 || rc == 3)) && echo "ok: promtool check metrics (exit $rc)" || { fail "promtool check metrics exit $rc"; cat "$tmp/promtool.out"; }
else
  echo "ok: promtool not installed; metrics check skipped"
fi
out=$(curl -s -w ' %{http_code}' "$base/healthz")
[[ "$out" == $'ok\n 200' ]] && echo "ok: /healthz answers ok" || fail "/healthz: '$out'"
out=$(curl -s -w '\n%{http_code} %{content_type}' "$base/")
has '^200 text/html' && has '<title>DERP Prober</title>' && has '<td>derp/test/a/tls</td>' && has '<td>derp/test/a/udp</td>' &&
  has '<td>derp/test/a/a/mesh</td>' && has '<td>derpmap-probe</td>' && has '4 good, 0 bad' &&
  echo "ok: status page lists every probe as good" || { fail "status page:"; show; }
out=$(curl -s -w ' %{http_code}' "$base/nothing")
[[ "$out" == *" 404" ]] && echo "ok: unknown path 404" || fail "unknown path: '$out'"
[[ "$(curl -s "$base/debug/varz" | head -n 1)" == "# HELP derpprobe_interval_secs Probe interval in seconds" ]] &&
  echo "ok: /debug/varz serves the metrics too (derpprobe's tsweb path)" || fail "/debug/varz"
# -interval re-reads the map: a node added to the file gets its probes.
map "$tmp/good.json" "$(node a 127.0.0.1 "$port_a" "$stun_a" "$pin_a")" "$(node b 127.0.0.1 "$port_b" "$stun_b" "$pin_b")"
for _ in $(seq 200); do
  curl -s "$base/metrics" | grep -q '^derpprobe_interval_secs{class="tls",hostname="127.0.0.1",name="derp/test/b/tls",' && break
  sleep 0.1
done
curl -s "$base/metrics" >"$tmp/metrics3.txt"
grep -q 'name="derp/test/b/tls"' "$tmp/metrics3.txt" && grep -q 'name="derp/test/a/b/mesh"' "$tmp/metrics3.txt" &&
  grep -q 'name="derp/test/b/udp"' "$tmp/metrics3.txt" &&
  echo "ok: a node added to the map file is probed after the next map read" ||
  fail "node b not probed 20 s after it was added to the map"
stop_checked "$probe_pid" derpprobe "$tmp/probe.log"
probe_pid=

if ((failures > 0)); then echo "$failures failure(s)"; exit 1; fi
