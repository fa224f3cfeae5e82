#!/usr/bin/env bash
# perf/run-load.sh: one load test of the cpm-edge proxy on this machine.
#
# Owns the choreography of a run: build, start four CS shard stand-ins
# (cpm-cs-responder, one process, 127.0.0.1:7001..7004) and the edge, wait for
# their sockets, run cpm-loadgen against the edge, sample the edge's CPU time
# (/proc/<pid>/stat utime+stime) exactly at the generator's measured-interval
# boundaries (it prints MARK lines), and report ok/s, loss, latency
# percentiles and edge CPU microseconds per request+response pair.
# Every process it starts is stopped by PID on exit.
#
# Environment (defaults in brackets):
#   MODE [closed]  closed: WINDOW requests outstanding; open: RATE req/s
#   WINDOW [256]  RATE [50000]  DURATION [10] s measured  WARMUP [2] s
#   TIMEOUT_MS [1000]  unanswered this long = lost
#   WORKERS [1]  EDGE_CPUS [0]  IO [auto]  (edge --workers/--cpus/--io)
#   GEN_CPU [1]  RESP_CPU [1]  CPUs of the generator and the responder
#   MAX_LOSS_PCT []  if set, exit 3 when the measured loss exceeds it
#   EDGE_BIN [target/release/cpm-edge]  EDGE_ARGS []  extra edge arguments
#   BUILD [1]  0: do not run cargo build (binaries must exist)
#   NO_EDGE [0]  1: generator straight at one responder (tests the tools;
#                the CPU figure is then the responder's)
#   LOGDIR [mktemp]  where logs go (kept after the run)
#   PERF_RECORD []  if set, `perf record -e cpu-clock -g` of the measured
#                process over exactly the measured interval, into this file
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=${MODE:-closed}
WINDOW=${WINDOW:-256}
RATE=${RATE:-50000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
TIMEOUT_MS=${TIMEOUT_MS:-1000}
WORKERS=${WORKERS:-1}
EDGE_CPUS=${EDGE_CPUS:-0}
IO=${IO:-auto}
GEN_CPU=${GEN_CPU:-1}
RESP_CPU=${RESP_CPU:-1}
MAX_LOSS_PCT=${MAX_LOSS_PCT:-}
BUILD=${BUILD:-1}
NO_EDGE=${NO_EDGE:-0}
EDGE_ARGS=${EDGE_ARGS:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EDGE_BIN=${EDGE_BIN:-$TARGET_DIR/release/cpm-edge}
LOADGEN=$TARGET_DIR/release/cpm-loadgen
RESPONDER=$TARGET_DIR/release/cpm-cs-responder
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-load.XXXXXX)}
mkdir -p "$LOGDIR"

# What is measured: edge (cpm-edge), kamailio (perf/kamailio/kamailio.cfg,
# 1 UDP worker, tlsf) or forwarder (perf/forwarder.rs, no parsing: the
# ceiling of the rig; the responder then answers to it, not to the Via).
SYSTEM=${SYSTEM:-edge}
EDGE_ADDR=127.0.0.1:5060
SHARDS=(127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 127.0.0.1:7004)


# Shared process choreography: cleanup on exit, wait_ready, die.
NAME=run-load
# shellcheck source=perf/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

now_s() { date +%s.%N; }

# ---------------------------------------------------------------- build --
if [[ "$BUILD" == 1 ]]; then
    echo "run-load: cargo build --release --bins" >&2
    cargo build --release --bins >"$LOGDIR/build.log" 2>&1 ||
        { tail -30 "$LOGDIR/build.log" >&2; die "build failed"; }
fi
for b in "$LOADGEN" "$RESPONDER"; do
    [[ -x "$b" ]] || die "missing $b (build with: cargo build --release --bins)"
done
if [[ "$NO_EDGE" != 1 ]]; then
    [[ -x "$EDGE_BIN" ]] || die "missing edge binary $EDGE_BIN"
fi
CLK_TCK=$(getconf CLK_TCK)

ports=(7001 7002 7003 7004)
[[ "$NO_EDGE" == 1 ]] || ports+=(5060)
for p in "${ports[@]}"; do
    ! udp_port_bound "$p" || die "UDP port $p is already in use (a leftover edge/responder?)"
done

# ---------------------------------------------------------------- start --
listen_args=()
for s in "${SHARDS[@]}"; do listen_args+=(--listen "$s"); done
[[ "$SYSTEM" != forwarder ]] || listen_args+=(--reply-to "$EDGE_ADDR")
"$RESPONDER" "${listen_args[@]}" --cpu "$RESP_CPU" \
    >"$LOGDIR/responder.out" 2>"$LOGDIR/responder.err" &
RESP_PID=$!
PIDS+=("$RESP_PID")
wait_ready "$RESP_PID" 7004 cpm-cs-responder

if [[ "$NO_EDGE" == 1 ]]; then
    TARGET=${SHARDS[0]}
    MEASURED_PID=$RESP_PID
    MEASURED_NAME="responder (NO_EDGE=1)"
elif [[ "$SYSTEM" == kamailio ]]; then
    command -v kamailio >/dev/null || die "kamailio is not installed (apt-get install -y kamailio)"
    taskset -c "$EDGE_CPUS" kamailio -f "$ROOT/perf/kamailio/kamailio.cfg" -x tlsf -m 256 -M 32 -DD -E \
        >"$LOGDIR/kamailio.out" 2>"$LOGDIR/kamailio.err" &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_ready "$EDGE_PID" 5060 kamailio
    TARGET=$EDGE_ADDR
    MEASURED_PID=$EDGE_PID
    MEASURED_NAME=kamailio
elif [[ "$SYSTEM" == forwarder ]]; then
    "$TARGET_DIR/release/cpm-forwarder" --listen "$EDGE_ADDR" --shard "${SHARDS[0]}" --cpu "${EDGE_CPUS%%,*}" \
        >"$LOGDIR/forwarder.out" 2>"$LOGDIR/forwarder.err" &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_ready "$EDGE_PID" 5060 cpm-forwarder
    TARGET=$EDGE_ADDR
    MEASURED_PID=$EDGE_PID
    MEASURED_NAME=forwarder
else
    shard_args=()
    for s in "${SHARDS[@]}"; do shard_args+=(--shard "$s"); done
    # shellcheck disable=SC2086 # EDGE_ARGS is a word list on purpose
    "$EDGE_BIN" --listen "$EDGE_ADDR" "${shard_args[@]}" --workers "$WORKERS" \
        --cpus "$EDGE_CPUS" --io "$IO" --admin off $EDGE_ARGS \
        >"$LOGDIR/edge.out" 2>"$LOGDIR/edge.err" &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_ready "$EDGE_PID" 5060 cpm-edge
    TARGET=$EDGE_ADDR
    MEASURED_PID=$EDGE_PID
    MEASURED_NAME=edge
fi

# ---------------------------------------------------------------- run --
gen_args=(--target "$TARGET" --mode "$MODE" --rate "$RATE" --window "$WINDOW"
    --duration "$DURATION" --warmup "$WARMUP" --timeout-ms "$TIMEOUT_MS"
    --cpu "$GEN_CPU" --marks)
[[ -z "$MAX_LOSS_PCT" ]] || gen_args+=(--max-loss-pct "$MAX_LOSS_PCT")

# The generator's stdout goes through a FIFO so that each MARK line is seen
# the moment it is printed and the CPU sample is taken right then.
FIFO=$LOGDIR/loadgen.fifo
rm -f "$FIFO"
mkfifo "$FIFO"
echo "run-load: $MODE loop against $TARGET ($MEASURED_NAME pid $MEASURED_PID), logs in $LOGDIR" >&2
"$LOADGEN" "${gen_args[@]}" >"$FIFO" 2>"$LOGDIR/loadgen.err" &
GEN_PID=$!
PIDS+=("$GEN_PID")

T0='' T1='' W0='' W1='' RESULT='' PERF_PID=''
exec 3<"$FIFO"
while IFS= read -r line <&3; do
    echo "$line" >>"$LOGDIR/loadgen.out"
    case "$line" in
    "MARK measure_start")
        T0=$(cpu_ticks "$MEASURED_PID") W0=$(now_s)
        if [[ -n "${PERF_RECORD:-}" ]]; then
            perf record -q -e cpu-clock -g -p "$MEASURED_PID" -o "$PERF_RECORD" \
                >"$LOGDIR/perf-record.log" 2>&1 &
            PERF_PID=$!
        fi
        ;;
    "MARK measure_end")
        T1=$(cpu_ticks "$MEASURED_PID") W1=$(now_s)
        if [[ -n "$PERF_PID" ]]; then
            kill -INT "$PERF_PID" 2>/dev/null || true
            wait "$PERF_PID" 2>/dev/null || true
        fi
        ;;
    RESULT*) RESULT=$line ;;
    esac
done
exec 3<&-
GEN_RC=0
wait "$GEN_PID" || GEN_RC=$?
cat "$LOGDIR/loadgen.err" >&2

[[ -n "$RESULT" ]] || die "cpm-loadgen printed no RESULT line (exit $GEN_RC); see $LOGDIR"
[[ -n "$T0" && -n "$T1" ]] || die "no CPU samples at the MARK lines (generator or measured process failed); see $LOGDIR"
kill -0 "$MEASURED_PID" 2>/dev/null || die "$MEASURED_NAME died during the run; see $LOGDIR"

# Field of the RESULT line: field NAME.
field() { tr ' ' '\n' <<<"$RESULT" | sed -n "s/^$1=//p"; }
OK=$(field ok)
SENT=$(field sent)

read -r U0 S0 <<<"$T0"
read -r U1 S1 <<<"$T1"
read -r CPU_S WALL_S CORES US_PAIR USER_US_PAIR SYS_US_PAIR < <(awk -v u0="$U0" -v s0="$S0" \
    -v u1="$U1" -v s1="$S1" -v hz="$CLK_TCK" -v w0="$W0" -v w1="$W1" -v ok="$OK" 'BEGIN {
        u = (u1 - u0) / hz; s = (s1 - s0) / hz; cpu = u + s; wall = w1 - w0;
        printf "%.3f %.3f %.3f %s %s %s\n", cpu, wall, (wall > 0 ? cpu / wall : 0),
            (ok > 0 ? sprintf("%.3f", cpu * 1e6 / ok) : "nan"),
            (ok > 0 ? sprintf("%.3f", u * 1e6 / ok) : "nan"),
            (ok > 0 ? sprintf("%.3f", s * 1e6 / ok) : "nan") }')

# Stop the responder (and edge) now so their exit counters land in the logs.
cleanup
sed -n 's/^RESPONDER //p' "$LOGDIR/responder.out" | sed 's/^/responder: /' >&2 || true
if [[ "$NO_EDGE" != 1 ]]; then
    # The edge prints its own counters when stopped; show them with ours.
    for f in "$LOGDIR/edge.out" "$LOGDIR/edge.err"; do
        [[ -s "$f" ]] || continue
        echo "--- edge: tail of $f ---" >&2
        tail -15 "$f" >&2
    done
fi

cat <<EOF
== cpm-edge load test: $MODE loop (window $WINDOW / rate $RATE), ${DURATION}s measured after ${WARMUP}s warm-up
   edge: workers $WORKERS, cpus $EDGE_CPUS, io $IO; generator cpu $GEN_CPU; responder cpu $RESP_CPU
ok/s            $(field ok_per_s)
loss            $(field lost) of $SENT sent ($(field loss_pct) %), non-2xx $(field non2xx)
latency (us)    p50 $(field p50_us)  p90 $(field p90_us)  p99 $(field p99_us)  p99.9 $(field p999_us)
$MEASURED_NAME CPU  ${CPU_S}s over ${WALL_S}s (${CORES} cores) = ${US_PAIR} us per request+response pair (user ${USER_US_PAIR}, kernel ${SYS_US_PAIR})
$RESULT
LOAD ok_per_s=$(field ok_per_s) loss_pct=$(field loss_pct) p50_us=$(field p50_us) p90_us=$(field p90_us) p99_us=$(field p99_us) p999_us=$(field p999_us) cpu_us_per_pair=$US_PAIR user_us_per_pair=$USER_US_PAIR sys_us_per_pair=$SYS_US_PAIR cpu_cores=$CORES
EOF
exit "$GEN_RC"
