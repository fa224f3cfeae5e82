#!/usr/bin/env bash
# tests/sipp/run-sipp.sh: the CI end-to-end check of cpm-edge with SIPp.
#
# Owns: starting the edge (2 workers, 2 CS shards), two SIPp UAS "shards"
# (uas-cpm.xml on 127.0.0.1:7001 and :7002) and one SIPp UAC (uac-cpm.xml)
# that places CALLS CPM sessions through the edge at 127.0.0.1:5060:
# INVITE (routed by the edge to a shard) / 100 / 180 / 200 with Record-Route,
# then ACK and BYE sent back to the edge with the recorded Route, which the
# edge pops before forwarding to the UAS Contact. Passes only if SIPp exits 0
# AND its final statistics show CALLS successful and 0 failed calls.
# Every process it starts is stopped by PID on exit; it never installs
# anything (SIPp is Debian/Ubuntu package `sip-tester`).
#
# Environment (defaults in brackets):
#   CALLS [2000]  RATE [400] calls/s
#   EDGE_BIN []   edge binary; empty: `cargo build --release --bin cpm-edge`
#                 and use target/release/cpm-edge
#   SIPP [sipp]   SIPp executable
#   SCENARIOS [<repo>/tests/sipp]  directory of uac-cpm.xml/uas-cpm.xml (copies of ../shared/sipp)
#   EDGE [127.0.0.1:5060]  UAS1 [7001]  UAS2 [7002]  UAC_PORT [5070]
#   EDGE_WORKERS [2]
#   EDGE_TARGET [EDGE]  where the UAC sends
#   NO_EDGE [0]   1: do not start the edge; the UAC calls the first UAS
#                 directly (checks the SIPp setup itself)
#   LOGDIR [mktemp]  logs and SIPp statistics (kept)
#   UAC_XML, UAS_XML [SCENARIOS/uac-cpm.xml, uas-cpm.xml]  other scenarios
#   EDGE_ARGS []  extra edge arguments (e.g. --config with a media policy)
#   UAC_TRANSPORT [u1]  the UAC's SIPp transport (t1: one TCP connection;
#                 the edge then needs [tcp] enabled, tests/sipp/tcp.toml)
#   UACS [1]      number of SIPp UAC processes (ports UAC_PORT, UAC_PORT+1,
#                 ...) sharing CALLS and RATE: one SIPp process saturates
#                 its CPU long before the edge does
#   EDGE_CPUS []  edge --cpus (e.g. 0 with EDGE_WORKERS=1)
#   SIPP_BUF [4194304]  SIPp -buff_size (socket send/receive buffers)
#   RTT [0]       1: every UAC logs each call's INVITE->200 and BYE->200
#                 response times (-trace_rtt); their p50/p90/p99/p99.9/max
#                 are printed (SIPP_RTT lines)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CALLS=${CALLS:-2000}
RATE=${RATE:-400}
SIPP=${SIPP:-sipp}
SCENARIOS=${SCENARIOS:-$ROOT/tests/sipp}
EDGE=${EDGE:-127.0.0.1:5060}
UAS1=${UAS1:-7001}
UAS2=${UAS2:-7002}
UAC_PORT=${UAC_PORT:-5070}
EDGE_WORKERS=${EDGE_WORKERS:-2}
NO_EDGE=${NO_EDGE:-0}
if [[ "$NO_EDGE" == 1 ]]; then
    EDGE_TARGET=${EDGE_TARGET:-127.0.0.1:$UAS1}
else
    EDGE_TARGET=${EDGE_TARGET:-$EDGE}
fi
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-sipp.XXXXXX)}
mkdir -p "$LOGDIR"
UAC_XML=${UAC_XML:-$SCENARIOS/uac-cpm.xml}
UAS_XML=${UAS_XML:-$SCENARIOS/uas-cpm.xml}
EDGE_ARGS=${EDGE_ARGS:-}
UAC_TRANSPORT=${UAC_TRANSPORT:-u1}
UACS=${UACS:-1}
# SIPp's own default socket buffer is 64 KiB: at thousands of calls per
# second a busy SIPp overflows it (seen at the start of a 1M-call run:
# responses the edge had relayed never reached the UAC, INVITEs were
# retransmitted and dialogs desynchronised). 4 MiB per socket.
SIPP_BUF=${SIPP_BUF:-4194304}
EDGE_CPUS=${EDGE_CPUS:-}
RTT=${RTT:-0}
IP=127.0.0.1

fail() { die "$@"; }

# Shared process choreography: cleanup on exit, wait_ready, die.
NAME=run-sipp
# shellcheck source=perf/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../perf/lib.sh"

# Value of column $2 in the last row of SIPp statistics CSV $1 (';'-separated,
# header row first).
stat_col() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") exit 1; split(last, f, ";"); print f[c] }' "$1"
}

# ---------------------------------------------------------------- preflight --
command -v "$SIPP" >/dev/null 2>&1 ||
    fail "'$SIPP' not found: install SIPp (Debian/Ubuntu: apt-get install -y sip-tester) or set SIPP"
[[ -r "$UAC_XML" && -r "$UAS_XML" ]] || fail "SIPp scenarios not found in $SCENARIOS"
# Each UAC runs in its own directory (its rtt file lands there): absolute paths.
UAC_XML=$(realpath "$UAC_XML")
UAS_XML=$(realpath "$UAS_XML")
[[ "$CALLS" =~ ^[1-9][0-9]*$ && "$RATE" =~ ^[1-9][0-9]*$ ]] || fail "CALLS and RATE must be positive integers"
[[ "$UACS" =~ ^[1-9][0-9]?$ ]] || fail "UACS must be 1..99"
((CALLS % UACS == 0 && RATE >= UACS)) || fail "CALLS must be a multiple of UACS and RATE >= UACS"

if [[ "$NO_EDGE" != 1 ]]; then
    if [[ -z "${EDGE_BIN:-}" ]]; then
        echo "run-sipp: cargo build --release --bin cpm-edge" >&2
        cargo build --release --bin cpm-edge >"$LOGDIR/build.log" 2>&1 ||
            { tail -30 "$LOGDIR/build.log" >&2; fail "build failed"; }
        EDGE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/cpm-edge
    fi
    [[ -x "$EDGE_BIN" ]] || fail "edge binary $EDGE_BIN not found or not executable"
fi

ports=("$UAS1" "$UAS2")
for ((u = 0; u < UACS; u++)); do ports+=($((UAC_PORT + u))); done
[[ "$NO_EDGE" == 1 ]] || ports+=("${EDGE##*:}")
for p in "${ports[@]}"; do
    ! udp_port_bound "$p" || fail "UDP port $p is already in use (a leftover edge or SIPp?)"
done

# ---------------------------------------------------------------- start --
# UAS shards: -nd so an unexpected message fails the call instead of SIPp
# improvising; -nostdin because there is no terminal; statistics every
# second so the final counts are on disk before we stop them.
for port in "$UAS1" "$UAS2"; do
    "$SIPP" -sf "$UAS_XML" -i "$IP" -p "$port" -t u1 -nd -nostdin -buff_size "$SIPP_BUF" \
        -trace_err -error_file "$LOGDIR/uas-$port-errors.log" \
        -trace_stat -stf "$LOGDIR/uas-$port-stat.csv" -fd 1 \
        </dev/null >"$LOGDIR/uas-$port.out" 2>&1 &
    PIDS+=("$!")
    wait_ready "$!" "$port" "SIPp UAS on $port"
done

if [[ "$NO_EDGE" != 1 ]]; then
    # SIPp UAS scenarios expect INVITE only: an OPTIONS keepalive would be an
    # unexpected call to them, so shard health checks are off here; the admin
    # API is off so no TCP port is needed.
    # shellcheck disable=SC2086 # EDGE_ARGS is a word list on purpose
    cpu_args=()
    [[ -z "$EDGE_CPUS" ]] || cpu_args=(--cpus "$EDGE_CPUS")
    "$EDGE_BIN" --listen "$EDGE" --shard "$IP:$UAS1" --shard "$IP:$UAS2" \
        --workers "$EDGE_WORKERS" "${cpu_args[@]}" --no-health --admin off $EDGE_ARGS \
        >"$LOGDIR/edge.out" 2>"$LOGDIR/edge.err" &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_ready "$EDGE_PID" "${EDGE##*:}" cpm-edge
fi

# ---------------------------------------------------------------- run --
# -timeout: the whole run cannot outlive the time the calls need plus 30 s
# (and -timeout_error makes hitting it a failure); -recv_timeout: a call
# waiting 5 s for a message fails instead of lingering.
GLOBAL_TIMEOUT=$((CALLS / RATE + 30))
echo "run-sipp: $CALLS calls at $RATE/s via $EDGE_TARGET from $UACS UAC(s) (UAS on $UAS1, $UAS2), logs in $LOGDIR" >&2
UAC_PIDS=()
rtt_args=()
for ((u = 0; u < UACS; u++)); do
    # The first UAC keeps the historical file names.
    sfx=$([[ $u == 0 ]] && echo "" || echo "-$u")
    [[ "$RTT" != 1 ]] || rtt_args=(-trace_rtt -rtt_freq $((CALLS / UACS < 1000 ? CALLS / UACS : 1000)))
    # Each UAC writes its rtt file in its own directory (SIPp names it
    # after the scenario and its PID in the working directory).
    mkdir -p "$LOGDIR/uac$u"
    # -abortunexp off: a provisional that UDP (or the edge's policy slow
    # path beside its fast path) delivers after the 200 is ignored, as RFC
    # 3261 §13.2.2.4 has a UAC do, instead of SIPp aborting the call with
    # a BYE outside the route set. A missing response still fails the call
    # (-recv_timeout).
    (cd "$LOGDIR/uac$u" && exec "$SIPP" "$EDGE_TARGET" -sf "$UAC_XML" -i "$IP" -p $((UAC_PORT + u)) -t "$UAC_TRANSPORT" \
        -m $((CALLS / UACS)) -r $((RATE / UACS)) -nostdin -buff_size "$SIPP_BUF" "${rtt_args[@]}" \
        -default_behaviors all,-abortunexp \
        -timeout "${GLOBAL_TIMEOUT}s" -timeout_error -recv_timeout 5000 \
        -trace_stat -stf "$LOGDIR/uac$sfx-stat.csv" -fd 1 \
        -trace_screen -screen_file "$LOGDIR/uac$sfx-screen.log" \
        -trace_err -error_file "$LOGDIR/uac$sfx-errors.log" \
        </dev/null >"$LOGDIR/uac$sfx.out" 2>&1) &
    UAC_PIDS+=("$!")
    PIDS+=("$!")
done
UAC_RC=0
for pid in "${UAC_PIDS[@]}"; do
    rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || UAC_RC=$rc
done

# Let the UAS statistics (dumped every second) catch up, then stop everything.
sleep 1.2
EDGE_ALIVE=1
EDGE_CPU=''
if [[ "$NO_EDGE" != 1 ]]; then
    if kill -0 "$EDGE_PID" 2>/dev/null; then
        # The edge's whole CPU (start-up included: a few ms against minutes).
        read -r eu es < <(cpu_ticks "$EDGE_PID")
        EDGE_CPU=$(awk -v u="$eu" -v s="$es" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "edge_user_s=%.2f edge_sys_s=%.2f", u / hz, s / hz }')
    else
        EDGE_ALIVE=0
    fi
fi
cleanup

# ---------------------------------------------------------------- verdict --
# Counters summed over the UACs; response times and elapsed time are the
# first UAC's (SIPp's cumulative means).
OK=0 FAILED=0 CREATED=0 RETRANS=0
for ((u = 0; u < UACS; u++)); do
    sfx=$([[ $u == 0 ]] && echo "" || echo "-$u")
    f=$LOGDIR/uac$sfx-stat.csv
    [[ -s "$f" ]] || { tail -20 "$LOGDIR/uac$sfx.out" >&2; fail "no SIPp statistics from UAC $u (exit $UAC_RC)"; }
    for pair in OK:SuccessfulCall FAILED:FailedCall CREATED:OutgoingCall RETRANS:Retransmissions; do
        v=$(stat_col "$f" "${pair#*:}(C)") || fail "UAC $u statistics lack ${pair#*:}(C)"
        var=${pair%%:*}
        declare "$var=$((${!var} + v))"
    done
done
RT_INVITE=$(stat_col "$LOGDIR/uac-stat.csv" 'ResponseTimeinvite(C)') || RT_INVITE=''
RT_BYE=$(stat_col "$LOGDIR/uac-stat.csv" 'ResponseTimebye(C)') || RT_BYE=''
ELAPSED=$(stat_col "$LOGDIR/uac-stat.csv" 'ElapsedTime(C)') || ELAPSED=''
if [[ "$RTT" == 1 ]]; then
    # SIPp's rtt files: "Date_ms;response_time_ms;rtd_no" lines, one per
    # call and rtd (whole milliseconds), dumped every -rtt_freq calls.
    for name in invite bye; do
        cat "$LOGDIR"/uac*/*_rtt.csv | awk -F';' -v r="$name" '$3 == r { print $2 }' |
            sort -n | awk -v name="$name" '{ v[NR] = $1 } END {
                if (NR == 0) { print "SIPP_RTT " name " no samples"; exit }
                printf "SIPP_RTT %s n=%d p50_ms=%s p90_ms=%s p99_ms=%s p999_ms=%s max_ms=%s\n", name, NR,
                    v[int(NR * 0.5) + 1], v[int(NR * 0.9) + 1], v[int(NR * 0.99) + 1], v[int(NR * 0.999) + 1], v[NR] }'
    done
fi
per_uas=''
for port in "$UAS1" "$UAS2"; do
    n=$(stat_col "$LOGDIR/uas-$port-stat.csv" 'SuccessfulCall(C)' 2>/dev/null) || n='?'
    per_uas+=" $port:$n"
done

echo "SIPP calls=$CALLS created=$CREATED successful=$OK failed=$FAILED retransmissions=$RETRANS sipp_exit=$UAC_RC elapsed=$ELAPSED rt_invite=$RT_INVITE rt_bye=$RT_BYE uas_successful=${per_uas# }${EDGE_CPU:+ $EDGE_CPU}"

problems=()
[[ "$UAC_RC" == 0 ]] || problems+=("SIPp exit status $UAC_RC (0 = all calls succeeded)")
[[ "$OK" == "$CALLS" ]] || problems+=("successful calls $OK, expected $CALLS")
[[ "$FAILED" == 0 ]] || problems+=("failed calls $FAILED, expected 0")
[[ "$EDGE_ALIVE" == 1 ]] || problems+=("the edge exited during the run")
if ((${#problems[@]})); then
    echo "--- UAC screen ($LOGDIR/uac-screen.log) ---" >&2
    sed -n '/Scenario Screen/,/Statistics Screen/p' "$LOGDIR/uac-screen.log" 2>/dev/null | head -30 >&2 || true
    for f in "$LOGDIR"/uac-errors.log "$LOGDIR"/uas-*-errors.log "$LOGDIR"/edge.err; do
        [[ -s "$f" ]] || continue
        # SIPp error logs can be megabytes without newlines: cap by bytes.
        echo "--- $f (first 3000 bytes) ---" >&2
        head -c 3000 "$f" >&2
        echo >&2
    done
    msg=${problems[0]}
    for p in "${problems[@]:1}"; do msg+="; $p"; done
    fail "$msg"
fi
for port in "$UAS1" "$UAS2"; do
    [[ "$per_uas" != *" $port:0"* ]] ||
        echo "run-sipp: warning: UAS $port handled no call (edge sharding skewed?)" >&2
done
echo "run-sipp: PASS: $OK/$CALLS calls succeeded, 0 failed"
