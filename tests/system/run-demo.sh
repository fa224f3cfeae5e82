#!/usr/bin/env bash
# README's system commands, checked: `cpm-system` (edge + the reference
# Conversation Server shards on their embedded defaults) and `cpm-demo`
# (alice invites grp1: bob answers, carol later, dave busy, erin rings until
# the Controlling Function CANCELs her, alice hangs up). Asserts what every
# client received, message by message, and that cpm-system logged the C.1
# steps. Then SMS → CPM through the system (seed 5.3.2): Kannel's MO call
# to cpm-iwf reaches erin's device (a SIPp UAS on her address) through the
# edge and her PF. Processes are stopped by PID.
#
#   SYSTEM_BIN [target/release/cpm-system]  DEMO_BIN [target/release/cpm-demo]
set -euo pipefail
cd "$(dirname "$0")/../.."

SYSTEM_BIN=${SYSTEM_BIN:-target/release/cpm-system}
DEMO_BIN=${DEMO_BIN:-target/release/cpm-demo}
work=$(mktemp -d)
sys_pid=""
uas_pid=""
cleanup() {
  if [ -n "$uas_pid" ]; then kill "$uas_pid" 2>/dev/null || true; wait "$uas_pid" 2>/dev/null || true; fi
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

# SMS -> CPM: the HTTP call Kannel's sms-service makes for an SMS to erin's
# number; cpm-iwf answers once the SIP answer is in.
sipp -sf tests/system/uas-message.xml -i 127.0.0.1 -p 5075 -m 1 -timeout 20s \
  -trace_msg -message_file "$work/uas.msg" -nostdin >"$work/uas.out" 2>&1 &
uas_pid=$!
sleep 0.5
exec 3<>/dev/tcp/127.0.0.1/5091
printf 'GET /mo?from=%%2B447700900999&to=%%2B447700900105&text=hello+erin+by+SMS HTTP/1.0\r\nHost: iwf\r\n\r\n' >&3
answer=$(timeout 10 cat <&3 || true)
exec 3<&-
wait "$uas_pid" && uas_rc=0 || uas_rc=$?
uas_pid=""
if ! grep -q "^HTTP/1.[01] 200" <<<"$answer" || [ "$uas_rc" -ne 0 ] \
   || ! grep -q "hello erin by SMS" "$work/uas.msg" \
   || ! grep -q "P-Asserted-Identity: <tel:+447700900999>" "$work/uas.msg"; then
  echo "SMS -> CPM through cpm-system failed (HTTP answer, SIPp rc $uas_rc):"
  echo "$answer"; cat "$work/uas.out"; cat "$work/uas.msg" 2>/dev/null | tail -30
  sed 's/\x1b\[[0-9;]*m//g' "$work/system.log" | tail -30
  exit 1
fi
echo "system demo: an SMS to erin's number reached her device as a MESSAGE through cpm-iwf, the edge and her PF"
