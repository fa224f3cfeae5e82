#!/usr/bin/env bash
# README's system commands, checked: `cpm-system` (edge + the reference
# Conversation Server shards on their embedded defaults) and `cpm-demo`
# (alice invites grp1: bob answers, carol later, dave busy, erin rings until
# the Controlling Function CANCELs her, alice hangs up). Asserts what every
# client received, message by message, and that cpm-system logged the C.1
# steps. Processes are stopped by PID.
#
#   SYSTEM_BIN [target/release/cpm-system]  DEMO_BIN [target/release/cpm-demo]
set -euo pipefail
cd "$(dirname "$0")/../.."

SYSTEM_BIN=${SYSTEM_BIN:-target/release/cpm-system}
DEMO_BIN=${DEMO_BIN:-target/release/cpm-demo}
work=$(mktemp -d)
sys_pid=""
cleanup() {
  if [ -n "$sys_pid" ]; then kill "$sys_pid" 2>/dev/null || true; wait "$sys_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG=info "$SYSTEM_BIN" >"$work/system.log" 2>&1 &
sys_pid=$!
for _ in $(seq 1 100); do
  grep -q "cpm-demo" "$work/system.log" && break
  sleep 0.1
done
grep -q "cpm-demo" "$work/system.log" || { cat "$work/system.log"; echo "cpm-system did not start"; exit 1; }
# The edge learns the groups from the shards (and has them in its own
# default too); give the first registration round a moment.
sleep 1

timeout 60 "$DEMO_BIN" --ring-seconds 15 | tee "$work/demo.out"

fail=0
expect() {
  if ! grep -qF -- "$1" "$work/demo.out"; then
    echo "MISSING: $1"
    fail=1
  fi
}
expect '  alice  ["100", "180", "200/INVITE", "200/BYE"]'
expect '  bob    ["INVITE", "ACK", "BYE"]'
expect '  carol  ["INVITE", "ACK", "BYE"]'
expect '  dave   ["INVITE", "ACK"]'
expect '  erin   ["INVITE", "CANCEL", "ACK"]'
for step in "[CF grp1@groups.example.net] INVITE" "180 Ringing to the inviter" \
            "200 OK to the inviter" "CANCEL to sip:erin@127.0.0.1:5075" "BYE from the inviter"; do
  grep -qF -- "$step" "$work/system.log" || { echo "cpm-system did not log: $step"; fail=1; }
done
if [ "$fail" -ne 0 ]; then
  echo "--- cpm-system log"; sed 's/\x1b\[[0-9;]*m//g' "$work/system.log" | tail -60
  exit 1
fi
echo "system demo: every client received the C.1 sequence"
