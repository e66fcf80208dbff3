#!/usr/bin/env bash
# With io_uring disabled by the kernel (sysctl kernel.io_uring_disabled=2), derpd must refuse to
# start and say which setting to change. Needs root to flip the sysctl, and runs alone (meson
# is_parallel: false) because the setting is machine-wide; the old value is always restored.
# Exit 77 (skip) where the sysctl does not exist or cannot be written.
set -uo pipefail
derpd="${DERP_BUILD_ROOT:?}/server/derpd"
knob=/proc/sys/kernel/io_uring_disabled
if [[ ! -w "$knob" ]]; then
  echo "SKIP: $knob missing or not writable (needs root and Linux 6.6+)"
  exit 77
fi
old=$(cat "$knob")
restore() { echo "$old" >"$knob"; }
trap restore EXIT
if ! echo 2 >"$knob" 2>/dev/null; then
  echo "SKIP: cannot write $knob"
  exit 77
fi
out=$("$derpd" -dev -a 127.0.0.1:0 -stun=false 2>&1 </dev/null)
rc=$?
restore
trap - EXIT
if ((rc == 0)); then
  echo "FAIL: derpd started with io_uring disabled"; exit 1
fi
if ! grep -q "io_uring is disabled for this process. Check sysctl kernel.io_uring_disabled (now 2" <<<"$out"; then
  echo "FAIL: message does not name the setting:"; echo "$out"; exit 1
fi
echo "ok: $(grep -m1 io_uring_disabled <<<"$out")"
