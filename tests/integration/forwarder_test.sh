#!/usr/bin/env bash
# The raw forwarder (bench/forwarder, ring/forwarder) on loopback, with bash's /dev/tcp as its
# clients: the 1st and 2nd connection are a pair and bytes cross both ways (a few bytes, then
# 3 MB each way at once, compared byte for byte); when one side closes, the other reads what was
# sent and then EOF, and both descriptors are released (its report: open 0); a connection that
# closes before its partner comes is released too and does not take the next one's place; its
# report gives its own CPU time, and /proc/PID/stat is what derpbench samples. Then derpbench's
# raw mode (tcp://) against it: a small paced run delivers exactly what it sent, with the
# forwarder's CPU per packet, and the latency workload answers every probe. Waits are for
# conditions (with generous deadlines), never for a time to pass; nothing here is timed.
set -uo pipefail
forwarder="${DERP_BUILD_ROOT:?}/bench/forwarder"
bench="${DERP_BUILD_ROOT:?}/bench/derpbench"
tmp=$(mktemp -d)
pid=
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }

"$forwarder" --listen 127.0.0.1:0 --recv-buffers 64 >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 200); do grep -q "listening on" "$tmp/log" && break; sleep 0.05; done
port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/log" | head -n 1)
if [[ -z "$port" ]]; then
  # No io_uring here (disabled, or an old kernel): a missing kernel feature is a skip.
  grep -qiE "io_uring|provided-buffer" "$tmp/log" && { cat "$tmp/log"; exit 77; }
  echo "FAIL: the forwarder did not start"; cat "$tmp/log"; exit 1
fi

# The forwarder's report (SIGUSR1) once `pattern` matches it, within 10 s; the last report.
report_when() {
  local pattern=$1 line=
  for _ in $(seq 100); do
    kill -USR1 "$pid"
    sleep 0.1
    line=$(grep "^forwarder: cpu" "$tmp/log" | tail -n 1)
    grep -qE "$pattern" <<<"$line" && break
  done
  echo "$line"
}

# A pair: a few bytes each way.
exec 3<>"/dev/tcp/127.0.0.1/$port"
exec 4<>"/dev/tcp/127.0.0.1/$port"
printf 'ping from 3' >&3
IFS= read -r -t 10 -N 11 got <&4
[[ "$got" == "ping from 3" ]] && echo "ok: 3 -> 4" || fail "3 -> 4 read '$got'"
printf 'pong from 4' >&4
IFS= read -r -t 10 -N 11 got <&3
[[ "$got" == "pong from 4" ]] && echo "ok: 4 -> 3" || fail "4 -> 3 read '$got'"

# 3 MB each way at the same time: more than the 64 receive buffers of 16 KiB hold, so the
# forwarder runs out of buffers and reads again as its sends complete.
head -c 3000000 /dev/urandom >"$tmp/a"
head -c 3000000 /dev/urandom >"$tmp/b"
cat "$tmp/a" >&3 &
writer_a=$!
cat "$tmp/b" >&4 &
writer_b=$!
head -c 3000000 <&4 >"$tmp/a.out" &
reader_a=$!
head -c 3000000 <&3 >"$tmp/b.out"
wait "$reader_a" "$writer_a" "$writer_b"
cmp -s "$tmp/a" "$tmp/a.out" && cmp -s "$tmp/b" "$tmp/b.out" && echo "ok: 3 MB each way, byte for byte" ||
  fail "bulk transfer differs ($(stat -c %s "$tmp/a.out") and $(stat -c %s "$tmp/b.out") bytes arrived)"

# One side closes: the other gets what was sent, then EOF; both descriptors are released.
printf 'last words' >&3
exec 3>&-
IFS= read -r -t 10 -N 10 got <&4
[[ "$got" == "last words" ]] && echo "ok: bytes before the close arrive" || fail "before the close: '$got'"
IFS= read -r -t 10 -N 1 rest <&4
rc=$?
((rc == 1)) && [[ -z "$rest" ]] && echo "ok: the other side reads EOF" || fail "no EOF after the close (read $rc, '$rest')"
exec 4>&-
line=$(report_when "open 0, closed 2;")
grep -q "accepted 2, pairs 1, open 0, closed 2;" <<<"$line" && echo "ok: both released: $line" || fail "after the close: $line"

# A connection whose partner never came closes: released, and the next two are a pair.
exec 5<>"/dev/tcp/127.0.0.1/$port"
exec 5>&-
line=$(report_when "accepted 3, pairs 1, open 0, closed 3;")
grep -q "accepted 3, pairs 1, open 0, closed 3;" <<<"$line" && echo "ok: an unpaired connection that closes is released" ||
  fail "unpaired close: $line"
exec 6<>"/dev/tcp/127.0.0.1/$port"
exec 7<>"/dev/tcp/127.0.0.1/$port"
printf 'new pair' >&6
IFS= read -r -t 10 -N 8 got <&7
[[ "$got" == "new pair" ]] && echo "ok: the next two connections are a pair" || fail "next pair read '$got'"
exec 6>&- 7>&-
line=$(report_when "open 0, closed 5;")

# Its own CPU in the report, as derpbench reads it from /proc/PID/stat.
grep -qE "^forwarder: cpu [0-9]+\.[0-9]{3} s \(user [0-9.]+, system [0-9.]+\)" <<<"$line" &&
  echo "ok: it reports its CPU" || fail "no CPU in the report: $line"
[[ -r "/proc/$pid/stat" ]] || fail "/proc/$pid/stat unreadable"

# derpbench's raw mode: every packet sent in a small paced run arrives (the forwarder drops
# nothing and the drain waits for all of them), per-packet writes and batched.
for write in per-packet batched; do
  out=$("$bench" throughput --url "tcp://127.0.0.1:$port" --pairs 2 --size 570 --rate 2000 --write "$write" \
        --duration 500ms --warmup 100ms --server-pid "$pid" --json)
  rc=$?
  sent=$(field sent_packets "$out"); delivered=$(field delivered_packets "$out"); cpu=$(field server_cpu_s "$out")
  if ((rc == 0)) && [[ -n "$sent" && -n "$cpu" ]] && ((sent > 0 && delivered == sent)) &&
     grep -q '"failures":0' <<<"$out" && grep -q "\"write\":\"$write\"" <<<"$out"; then
    echo "ok: raw $write throughput: $sent sent, $delivered delivered, forwarder CPU $cpu s"
  else
    fail "raw $write throughput (exit $rc): $out"
  fi
done
out=$("$bench" latency --url "tcp://127.0.0.1:$port" --size 570 --rate 2000 --pairs 2 --duration 500ms \
      --probe-interval 5ms --server-pid "$pid" --json)
rc=$?
sent=$(field sent_packets "$out"); answered=$(field delivered_packets "$out"); p99=$(field rtt_p99_us "$out")
# (A probe still in flight when the window closes may be left unanswered: not asserted.)
((rc == 0)) && [[ -n "$sent" && -n "$p99" ]] && ((answered > 0 && answered <= sent)) &&
  grep -q '"server_cpu_us_per_packet":' <<<"$out" && grep -q '"background_loss_ratio":0.000000' <<<"$out" &&
  echo "ok: raw latency: $answered of $sent probes answered, p99 $p99 us" || fail "raw latency (exit $rc): $out"
# A DERP-only workload and a region are refused for tcp://.
"$bench" connections --url "tcp://127.0.0.1:$port" --count 2 >/dev/null 2>&1
(($? == 2)) && echo "ok: connections refuses tcp://" || fail "connections accepted tcp://"
line=$(report_when "open 0,")
grep -q "open 0," <<<"$line" && echo "ok: every derpbench connection released: $line" || fail "after derpbench: $line"

kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
((rc == 0)) && tail -n 1 "$tmp/log" | grep -q "^forwarder: cpu" && echo "ok: SIGTERM stops it with a last report" ||
  fail "stop: exit $rc, $(tail -n 1 "$tmp/log")"
((failures == 0)) || exit 1
