#!/usr/bin/env bash
# The relay table of docs/BENCHMARKS.md: relay_bench over shard counts, packet sizes and offered
# rates (0 = unlimited), three rounds each. Takes about 5 minutes.
set -euo pipefail
build=${1:-build}
for shards in 1 2; do
  for size in 64 570 1400; do
    for rate in 400000 800000 1600000 3200000 0; do
      line=$("$build/bench/relay_bench" -derpd "$build/server/derpd" -rounds 3 -duration 1s \
        -shards "$shards" -sizes "$size" -rate "$rate" | sed -n 2p)
      echo "rate=$rate $line"
    done
  done
done
