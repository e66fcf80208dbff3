# A derpd region on loopback for the mesh benchmarks (sourced, not run): a test CA made with
# openssl, one certificate per node (IP SAN), a shared mesh PSK, and nodes 127.0.0.1..N on one
# port, each meshed with all the others (itself included, as operators list it).
#   region_init DIR N PORT          certificates and keys for N nodes under DIR
#   region_start I [derpd flags]    starts node I (log in DIR/nI/log, pid in REGION_PID[I]);
#                                   with REGION_CPUS set, inside `taskset -c $REGION_CPUS`
#   region_wait_mesh I              waits until node I's links to every other node are up
#   region_varz I NAME              the value of a metric on node I (admin listener)
#   region_stop I / region_stop_all
REGION_DERPD=${DERPD:-build/server/derpd}

region_init() {
    REGION_DIR=$1 REGION_N=$2 REGION_PORT=$3
    REGION_PID=()
    mkdir -p "$REGION_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$REGION_DIR/ca.key" \
        -out "$REGION_DIR/ca.pem" -days 2 -subj /CN=derpd-bench-ca 2>/dev/null || return 1
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$REGION_DIR/psk"
    chmod 600 "$REGION_DIR/psk"
    REGION_MESH_WITH=
    for i in $(seq "$REGION_N"); do
        local d="$REGION_DIR/n$i" ip=127.0.0.$i
        mkdir -p "$d/certs" && chmod 700 "$d/certs"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/certs/$ip.key" \
            -out "$d/req.csr" -subj "/CN=$ip" 2>/dev/null || return 1
        printf 'subjectAltName=IP:%s\n' "$ip" >"$d/ext"
        openssl x509 -req -in "$d/req.csr" -CA "$REGION_DIR/ca.pem" -CAkey "$REGION_DIR/ca.key" \
            -CAcreateserial -out "$d/certs/$ip.crt" -days 2 -extfile "$d/ext" 2>/dev/null || return 1
        chmod 600 "$d/certs/$ip.key"
        REGION_MESH_WITH+="${REGION_MESH_WITH:+,}$ip:$REGION_PORT"
    done
}

region_start() {
    local i=$1; shift
    local d="$REGION_DIR/n$i" ip=127.0.0.$i
    local pin=()
    [ -n "${REGION_CPUS:-}" ] && pin=(taskset -c "$REGION_CPUS")
    SSL_CERT_FILE="$REGION_DIR/ca.pem" "${pin[@]}" "$REGION_DERPD" -c "$d/key" -a "$ip:$REGION_PORT" -certmode manual \
        -certdir "$d/certs" -hostname "$ip" -http-port -1 -stun=false -mesh-psk-file "$REGION_DIR/psk" \
        -mesh-with "$REGION_MESH_WITH" --admin-addr "$ip:$((REGION_PORT + 1))" --mesh-retry-interval 1s \
        "$@" >>"$d/log" 2>&1 &
    REGION_PID[$i]=$!
    for _ in $(seq 200); do grep -q "serving on" "$d/log" && return 0; sleep 0.05; done
    echo "region: node $i did not start: $(tail -3 "$d/log")" >&2
    return 1
}

region_varz() {
    curl -s "http://127.0.0.$1:$((REGION_PORT + 1))/debug/varz" | awk -v name="$2" '$1 == name {print $2}'
}

region_wait_mesh() {
    local i=$1 up
    for _ in $(seq 600); do
        up=$(curl -s "http://127.0.0.$i:$((REGION_PORT + 1))/debug/varz" | grep -c '^derpd_mesh_peer_up{.*} 1$')
        [ "$up" = "$REGION_N" ] && return 0
        sleep 0.1
    done
    echo "region: node $i has $up of $REGION_N mesh links up" >&2
    return 1
}

region_cpu_ticks() { awk '{print $14 + $15}' "/proc/${REGION_PID[$1]}/stat"; }

region_stop() {
    local pid=${REGION_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    REGION_PID[$1]=
}

region_stop_all() { for i in $(seq "$REGION_N"); do region_stop "$i"; done; }
