#!/bin/sh
# Runs inside the test VM (run-in-vm.sh --script): the kTLS smoke test, found on PATH (/vm-bin).
set -eu
cat /proc/version
if [ -e /proc/sys/kernel/io_uring_disabled ]; then
  echo "io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled)"
fi
exec ktls_smoke
