#!/bin/sh
# Runs inside the test VM (run-in-vm.sh --script): kernel TLS records against the userspace
# record layer's for the same keys (tests/vm/ktls_records_check.cc), found on PATH (/vm-bin).
set -eu
cat /proc/version
exec ktls_records_check
