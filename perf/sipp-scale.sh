#!/usr/bin/env bash
# perf/sipp-scale.sh: SIPp at scale through the edge. CALLS complete CPM
# session dialogs (INVITE/100/180/200/ACK/BYE/200, tests/sipp/uac-cpm.xml
# against two uas-cpm.xml shards) from UACS SIPp processes, through one
# edge worker, with every call's response times logged. Passes only with
# 0 failed calls (tests/sipp/run-sipp.sh's verdict); prints calls/s over the
# whole run and SIPp's response-time distribution.
#
# Environment: CALLS [1000000]  RATE [3000] calls/s in all  UACS [2]
#   EDGE_WORKERS [1]  EDGE_CPUS [0]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v sipp >/dev/null || { apt-get update -qq && apt-get install -y -qq sip-tester >/dev/null; }
cargo build --release -q --bin cpm-edge
export CALLS=${CALLS:-1000000} RATE=${RATE:-3000} UACS=${UACS:-2}
export EDGE_WORKERS=${EDGE_WORKERS:-1} EDGE_CPUS=${EDGE_CPUS:-0} RTT=1
export EDGE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/cpm-edge
export LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-sipp-scale.XXXXXX)}
t0=$(date +%s.%N)
rc=0
tests/sipp/run-sipp.sh || rc=$?
t1=$(date +%s.%N)
awk -v n="$CALLS" -v t0="$t0" -v t1="$t1" -v u="$UACS" -v r="$RATE" 'BEGIN {
    printf "sipp-scale: %d calls from %d SIPp UACs (asked %d/s) in %.1f s wall = %.0f calls/s (start-up included)\n",
        n, u, r, t1 - t0, n / (t1 - t0)
    printf "SIPP_SCALE calls_per_s=%.0f wall_s=%.1f\n", n / (t1 - t0), t1 - t0 }'
echo "sipp-scale: edge counters:"
sed -n '/^requests received/,/^in-proxy latency/p' "$LOGDIR/edge.out" | sed 's/^/  /'
exit "$rc"
