#!/usr/bin/env bash
# Writes derpbench's capacity table from the committed run file into docs/BENCHMARKS.md, between
# its "derpbench-capacity-table" markers, so that the document says what the tool says (the
# derpbench-report test fails when they differ).
# usage: bench/capacity_doc.sh [BUILD_DIR]   (from the source root)
set -euo pipefail
build=${1:-build}
doc=docs/BENCHMARKS.md
table=$("$build/bench/derpbench" report docs/runs/capacity.jsonl --format markdown)
grep -q '^<!-- derpbench-capacity-table: begin' "$doc" && grep -q '^<!-- derpbench-capacity-table: end' "$doc" ||
  { echo "capacity_doc.sh: $doc lacks the derpbench-capacity-table markers" >&2; exit 1; }
awk -v table="$table" '
  /^<!-- derpbench-capacity-table: begin/ { print; print table; skip = 1; next }
  /^<!-- derpbench-capacity-table: end/ { skip = 0 }
  !skip { print }' "$doc" >"$doc.new"
mv "$doc.new" "$doc"
