#!/usr/bin/env bash
# perf/icount-live.sh: user-space instructions per request+response pair of
# the whole edge process (io loop, stats, scan, route, rewrite), counted by
# callgrind while real UDP traffic flows: cpm-loadgen → edge → 4 responders.
# Unlike perf/icount.sh (the pure pipeline on one message) this includes the
# per-datagram and per-batch costs of the worker loop, so changes there can
# be compared exactly on a noisy machine. Kernel time is not counted.
#   perf/icount-live.sh [mmsg] [PAIRS]   (default mmsg 10000; EDGE_BIN=another build)
# mmsg only: under valgrind the io_uring backend forwards but never stops
# (valgrind does not model io_uring, the shutdown's cancel is not seen), so
# callgrind never writes its file. The handler and pipeline are shared.
# Prints the total, the per-pair figure and the top functions (inclusive);
# the callgrind file stays in LOGDIR for callgrind_annotate.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
IO=${1:-mmsg}
PAIRS=${2:-10000}
RATE=${RATE:-2000}
NAME=icount-live
[[ "$IO" == mmsg ]] || { echo "icount-live: only mmsg can be measured under valgrind (see the header)" >&2; exit 2; }
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-icount-live.XXXXXX)}
# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ "${BUILD:-1}" == 0 ]] || cargo build --release --bins -q
for p in 5060 7001 7002 7003 7004; do
    ! udp_port_bound "$p" || die "UDP port $p is already in use"
done

"$TARGET_DIR/release/cpm-cs-responder" --listen 127.0.0.1:7001 --listen 127.0.0.1:7002 \
    --listen 127.0.0.1:7003 --listen 127.0.0.1:7004 >"$LOGDIR/responder.out" 2>&1 &
PIDS+=($!)
wait_ready "$!" 7004 cpm-cs-responder
# No health probes: under valgrind they would time out and mark shards down.
valgrind --tool=callgrind --callgrind-out-file="$LOGDIR/callgrind.out" \
    "${EDGE_BIN:-$TARGET_DIR/release/cpm-edge}" --listen 127.0.0.1:5060 --shard 127.0.0.1:7001 \
    --shard 127.0.0.1:7002 --shard 127.0.0.1:7003 --shard 127.0.0.1:7004 \
    --workers 1 --io "$IO" --admin off --no-health >"$LOGDIR/edge.out" 2>"$LOGDIR/edge.err" &
EDGE_PID=$!
PIDS+=("$EDGE_PID")
wait_ready "$EDGE_PID" 5060 "cpm-edge under valgrind"

# Open loop at RATE so the slowed-down (valgrind) edge keeps up.
secs=$(( (PAIRS + RATE - 1) / RATE ))
"$TARGET_DIR/release/cpm-loadgen" --target 127.0.0.1:5060 --mode open --rate "$RATE" \
    --duration "$secs" --warmup 0 --timeout-ms 5000 >"$LOGDIR/loadgen.out" 2>"$LOGDIR/loadgen.err" ||
    die "loadgen failed; see $LOGDIR"
sleep 1
kill -INT "$EDGE_PID"
wait "$EDGE_PID" 2>/dev/null || true
ok=$(tr ' ' '\n' <"$LOGDIR/loadgen.out" | sed -n 's/^ok=//p')
total=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$LOGDIR/edge.err")
[[ -n "$ok" && "$ok" -gt 0 && -n "$total" ]] || die "no result; see $LOGDIR"
echo "icount-live ($IO): $total instructions, $ok pairs answered 200 by the responders"
echo "icount-live ($IO): $((total / ok)) instructions per pair (whole process, start-up included)"
callgrind_annotate --inclusive=yes "$LOGDIR/callgrind.out" 2>/dev/null |
    grep -E '^ *[0-9,]+ \(' | sed -n '2,40p' | sed -E 's@/(rustc|root/.cargo/registry/src)/[^:]*:@@' | cut -c1-160
echo "icount-live: callgrind file $LOGDIR/callgrind.out"
