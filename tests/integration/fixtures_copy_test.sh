#!/usr/bin/env bash
# The recorded Tailscale sessions in tests/fixtures are the compatibility contract: every file
# the replay tests read must be present and non-empty, and where the project's shared folder sits
# beside the clone (../shared/fixtures), the repository's copy must equal it byte for byte (the
# READMEs excepted: ours is written in our own words). Without ../shared only the first check runs.
set -euo pipefail
fixtures="${DERP_FIXTURES_DIR:?}"
src="${DERP_SOURCE_ROOT:?}"
status=0

# What the tests read, folder by folder: a missing file here fails (no silent empty comparison).
required=(
  01-handshake-two-clients/{session.json,keys.json,A/c2s.hex,A/s2c.hex,B/c2s.hex,B/s2c.hex}
  02-ping-pong-keepalive/{session.json,keys.json,P/c2s.hex,P/s2c.hex}
  03-mesh-watcher/{session.json,keys.json,W/c2s.hex,W/s2c.hex}
  03b-watchconns-without-meshkey/{session.json,keys.json}
  04-fast-start/{session.json,keys.json,F/c2s.hex,F/s2c.hex}
  05-stun/{ipv4-request.bin,ipv4-response.bin,ipv6-request.bin,ipv6-response.bin,stun.json}
  06-http/{derp-probe,derp-probe-head,derp-probe-post,derp-latency-check,derp-no-upgrade,root,robots.txt,generate_204-challenge,generate_204-no-challenge,generate_204-bad-challenge}/{request.bin,response.bin}
  README.md
)
for f in "${required[@]}"; do
  if [[ ! -s "$fixtures/$f" ]]; then
    echo "FAIL: fixture $fixtures/$f is missing or empty"
    status=1
  fi
done
echo "checked ${#required[@]} fixture files"

shared="$src/../shared/fixtures"
if [[ -d "$shared" ]]; then
  if diff -r -x README.md "$shared" "$fixtures"; then
    echo "ok: tests/fixtures equals ../shared/fixtures byte for byte"
  else
    echo "FAIL: tests/fixtures differs from ../shared/fixtures"
    status=1
  fi
else
  echo "note: no ../shared/fixtures beside the clone; presence checked only"
fi
exit $status
