#!/bin/sh
# Runs inside the test VM: derpd with TLS and -ktls=require, then ktls_derpd_check against it;
# derpd must stop cleanly and its log must show kTLS on both directions.
set -eu
cat /proc/version
mkdir -p /tmp/derpd
derpd -c /tmp/derpd/derper.key -certmode manual -hostname 127.0.0.1 -certdir /tmp/derpd/certs \
  -a 127.0.0.1:8443 -http-port -1 -stun=false -shards 1 -ktls require -log-level debug \
  >/tmp/derpd/log 2>&1 &
pid=$!
i=0
while ! grep -q "serving on" /tmp/derpd/log; do
  i=$((i + 1))
  if [ "$i" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
    cat /tmp/derpd/log
    echo "derpd did not start"
    exit 1
  fi
  sleep 0.1
done
grep "kTLS" /tmp/derpd/log | head -n 3
rc=0
ktls_derpd_check 8443 || rc=$?
kill -TERM "$pid"
derpd_rc=0
wait "$pid" || derpd_rc=$?
echo "--- derpd log (kTLS lines) ---"
grep -E "kTLS|TLS path|under kTLS|failed" /tmp/derpd/log | head -n 40
if [ "$derpd_rc" -ne 0 ]; then
  echo "derpd exited with $derpd_rc"
  tail -n 30 /tmp/derpd/log
  exit 1
fi
grep -q "kTLS RX installed at record 1 " /tmp/derpd/log || { echo "no RX install behind Finished seen"; rc=1; }
exit "$rc"
