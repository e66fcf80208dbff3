#!/usr/bin/env bash
# Layering and hygiene checks that the compiler cannot make (TigerBeetle's tidy):
# - core/ is pure: no socket, io_uring, thread or file-descriptor header;
# - only ring/ includes liburing;
# - every source file opens with a comment that says what it is for.
set -euo pipefail
root=${DERP_SOURCE_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
status=0

forbidden_core='#include <(liburing\.h|liburing/|sys/socket\.h|netinet/|arpa/inet\.h|sys/epoll\.h|unistd\.h|fcntl\.h|thread>|sys/mman\.h)'
if grep -nE "$forbidden_core" core/*.hh core/*.cc; then
  echo "tidy: core/ must stay pure (no I/O headers); move that code to ring/ or server/" >&2
  status=1
fi

if grep -rnE '#include <liburing' --include='*.hh' --include='*.cc' . | grep -vE '^\./(ring|build[^/]*)/'; then
  echo "tidy: only ring/ may include liburing" >&2
  status=1
fi

while IFS= read -r file; do
  first=$(head -n 1 "$file")
  if [[ "$first" != //* ]]; then
    echo "tidy: $file does not open with a comment saying what it is for" >&2
    status=1
  fi
done < <(git ls-files '*.hh' '*.cc' 2>/dev/null || find core ring crypto stun client server admin bench probe tests -name '*.hh' -o -name '*.cc')

if ((status == 0)); then echo "tidy: ok"; fi
exit $status
