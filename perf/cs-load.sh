#!/usr/bin/env bash
# perf/cs-load.sh: CPM sessions through the whole system, edge + reference
# Conversation Servers (`cpm-system`: cpm-edge and the cpm-cs shards cs1,
# cs2 in one process), driven by SIPp: setups/s, setup latency, CPU per
# session and memory per session, for 1-1 sessions and groups of 4.
#
# Scenarios (perf/cs/: edge.toml, cs.toml, uac.xml, uas.xml):
#   1to1    caller (SIPp UAC, 127.0.0.1:15070) -> edge -> caller's PF (cs1)
#           -> edge -> callee's PF (cs2) -> edge -> callee (SIPp UAS :15080);
#           both PFs are B2BUAs: the callee's ACK and BYE come from cs2.
#   group4  caller -> edge -> caller's PF (cs1) -> edge -> the group's
#           Controlling Function (cs2) -> 3 x (edge -> member's PF -> edge
#           -> member): m1 :15081 (PF cs2), m5 :15082, m9 :15083 (PF cs1).
#           The caller's 200 comes with the first member's answer.
#   Every call: INVITE, 100/180 optional, 200 (setup latency = SIPp's rtd
#   "setup", INVITE sent -> 200 received at the caller), ACK, HOLD_MS pause,
#   BYE, 200.
#
# Phases:
#   1. rate steps: ROUNDS interleaved rounds (odd rounds in the listed
#      order, even rounds reversed) of every scenario x rate; each step is
#      a fresh cpm-system and fresh SIPp UAS(s), a check call, then
#      rate x DURATION calls from one SIPp UAC, plus a probe UAC
#      (PROBE_RATE calls/s, same user on port 15071, its messages logged
#      with SIPp's microsecond timestamps: SIPp's own response times move
#      in 4 ms steps on this VM). cpm-system's utime+stime (all threads,
#      /proc/PID/task/*/stat) and every other process's CPU (/proc/stat)
#      are sampled every second; "cores" is cpm-system's CPU over the
#      steady window [start + HOLD + 2 s, start + DURATION - 1 s], when
#      setups and teardowns both run at the offered rate.
#   2. memory (MEM=1), per scenario: a fresh cpm-system; RSS idle; HOLD_N
#      sessions set up at HOLD_RATE and held (RSS right after: the task's
#      (RSS with N open - RSS idle) / N, which includes the transactions
#      of those setups, kept 32 s by RFC 3261/6026 timers L, J, K); 35 s
#      later (those transactions gone, their memory free in the allocator)
#      a second batch of HOLD_N held sessions from a second UAC: its RSS
#      growth / N is the cost of one more held session once transaction
#      memory is recycled. Then every session ends (BYE) and, after 40 s,
#      RSS is read again; then HOLD_N more sessions (1 s hold) in the same
#      process and, 40 s later, RSS once more (no growth when the freed
#      memory is reused and nothing accumulates). The CS's own log says how
#      many sessions started and ended per shard (LOG_MEM has cpm_cs=info).
#
# Output: one STEP line per rate step and MEM lines (key=value), a table
# of medians over the rounds, all appended to RESULTS; logs of every step
# (SIPp statistics, error logs, cpm-system stderr, /metrics) in LOGDIR.
# The box is shared: every STEP line has others_cores (other processes'
# CPU in the steady window); TABLE="<raw files>" MAX_OTHERS=0.1
# perf/cs-load.sh reprints the table of those files' steps where the box
# was quiet (no run). Exit 0 when no call failed; 3 when some step had
# failed calls (the table says which: "highest rate with 0 failed" is read
# from it); 1 on a setup error. Every process it starts is stopped by PID
# on exit (also Ctrl-C).
#
# Environment (defaults in brackets):
#   SCENARIOS ["1to1 group4"]
#   RATES_1TO1 ["500 1000 1500 2000 2250 2500"]  RATES_GROUP4 ["200 400 600 700 800"]
#                    offered sessions/s (SIPp -r) of each step
#   DURATION [20]    seconds of new sessions per step (calls = rate x DURATION)
#   HOLD_MS [1000]   pause between ACK and BYE in the rate steps
#   ROUNDS [3]
#   PROBE_RATE [20]  probe calls/s (0: no probe)
#   MEM [1]  HOLD_N [10000]  HOLD_RATE [250]  memory phase
#   EDGE_WORKERS [1] edge io workers (rewrites [workers] count of edge.toml)
#   SYS_CPUS []  SIPP_CPUS []  taskset CPU lists for cpm-system / SIPp
#                    (empty: no pinning; the box's other load moves around)
#   LOG [warn]  LOG_MEM [warn,cpm_cs=info]  RUST_LOG of cpm-system
#   QUIET_MAX [0.2]  QUIET_WAIT [60]  before each step, wait up to
#                    QUIET_WAIT s while other processes use more than
#                    QUIET_MAX cores (others_before= on the STEP line)
#   TABLE []  MAX_OTHERS []  reprint tables from raw files (see Output)
#   SYS_BIN [target/release/cpm-system]  BUILD [0] (1: cargo build first)
#   SIPP [sipp]  SIPP_BUF [4194304]
#   LOGDIR [mktemp /tmp/cpm-cs-load.XXXXXX]
#   RESULTS [perf/results/cs-load-<UTC date>.txt]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SCENARIOS=${SCENARIOS:-"1to1 group4"}
RATES_1TO1=${RATES_1TO1:-"500 1000 1500 2000 2250 2500"}
RATES_GROUP4=${RATES_GROUP4:-"200 400 600 700 800"}
DURATION=${DURATION:-20}
HOLD_MS=${HOLD_MS:-1000}
ROUNDS=${ROUNDS:-3}
PROBE_RATE=${PROBE_RATE:-20}
MEM=${MEM:-1}
HOLD_N=${HOLD_N:-10000}
HOLD_RATE=${HOLD_RATE:-250}
EDGE_WORKERS=${EDGE_WORKERS:-1}
SYS_CPUS=${SYS_CPUS:-}
SIPP_CPUS=${SIPP_CPUS:-}
LOG=${LOG:-warn}
LOG_MEM=${LOG_MEM:-warn,cpm_cs=info}
QUIET_MAX=${QUIET_MAX:-0.2}
QUIET_WAIT=${QUIET_WAIT:-60}
BUILD=${BUILD:-0}
SIPP=${SIPP:-sipp}
SIPP_BUF=${SIPP_BUF:-4194304}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SYS_BIN=${SYS_BIN:-$TARGET_DIR/release/cpm-system}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-cs-load.XXXXXX)}
mkdir -p "$LOGDIR" "$ROOT/perf/results"
RESULTS=${RESULTS:-$ROOT/perf/results/cs-load-$(date -u +%Y-%m-%d-%H%M).txt}

CS_DIR=$ROOT/perf/cs
EDGE=127.0.0.1:15060
ADMIN=127.0.0.1:18088
UAC_PORT=15070
PROBE_PORT=15071
CHECK_PORT=15072
UAC2_PORT=15073
IP=127.0.0.1
CLK_TCK=$(getconf CLK_TCK)

NAME=cs-load
# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"

log() { echo "cs-load: $*" >&2; }
out() { echo "$*" | tee -a "$RESULTS"; }
now_s() { date +%s.%N; }


# Scenario -> the caller's Request-URI and the UAS ports.
target_of() {
    case $1 in
    1to1) echo "sip:callee@$IP:15080" ;;
    group4) echo "sip:g4@groups.example.net" ;;
    *) die "unknown scenario '$1' (1to1, group4)" ;;
    esac
}
uas_ports_of() {
    case $1 in
    1to1) echo 15080 ;;
    group4) echo 15081 15082 15083 ;;
    esac
}
rates_of() {
    case $1 in
    1to1) echo "$RATES_1TO1" ;;
    group4) echo "$RATES_GROUP4" ;;
    esac
}

# The command prefix that pins to CPU list $1 (none for an empty list),
# into array PIN: a process started as "${PIN[@]}" prog ... & keeps $! (taskset
# execs the program).
pin_prefix() {
    PIN=()
    [[ -z "$1" ]] || PIN=(taskset -c "$1")
}

# Value of column $2 in the last row of SIPp statistics CSV $1.
stat_col() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") exit 1; split(last, f, ";"); print f[c] }' "$1"
}
stat_or0() { stat_col "$@" 2>/dev/null || echo 0; }

# Busy ticks of the whole machine (/proc/stat: user nice system irq softirq steal).
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# utime+stime ticks of process $1 (all threads, children included).
proc_ticks() {
    local u s
    read -r u s < <(cpu_ticks "$1")
    echo $((u + s))
}

# One sample line: time, cpm-system ticks (total, edge workers, cs1, cs2),
# its threads' summed run-queue wait (ns, schedstat), the machine's busy
# ticks, ticks of the SIPp processes (pids in $2...). One awk over the /proc files,
# so that the time, the machine's ticks and the processes' are read together.
sample() {
    local sp=$1 t busy p files=()
    shift
    t=$(now_s)
    busy=$(machine_busy)
    files=(/proc/"$sp"/task/*/stat /proc/"$sp"/task/*/schedstat)
    for p in "$@"; do files+=("/proc/$p/stat"); done
    awk -v t="$t" -v busy="$busy" -v sp="/proc/$sp/" '
        FILENAME ~ /schedstat$/ { wait += $2; next }
        {
            line = $0; i = index(line, "("); j = length(line)
            while (j > i && substr(line, j, 1) != ")") j--
            comm = substr(line, i + 1, j - i - 1)
            n = split(substr(line, j + 2), f, " ")
            ticks = f[12] + f[13]
            if (index(FILENAME, sp) == 1) {
                tot += ticks
                if (comm ~ /^edge-w/) edge += ticks
                else if (comm == "cs-cs1") cs1 += ticks
                else if (comm == "cs-cs2") cs2 += ticks
            } else sipp += ticks
        }
        END { printf "%s %d %d %d %d %.0f %s %d\n", t, tot, edge, cs1, cs2, wait, busy, sipp }
    ' "${files[@]}" 2>/dev/null
}

# Other processes' CPU (cores) over $1 seconds: machine busy minus ours.
others_cores() {
    local b0 b1
    b0=$(machine_busy)
    sleep "$1"
    b1=$(machine_busy)
    awk -v a="$b0" -v b="$b1" -v d="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz / d }'
}

wait_quiet() {
    local o waited=0
    o=$(others_cores 2)
    while awk -v o="$o" -v m="$QUIET_MAX" 'BEGIN { exit !(o > m) }' && ((waited < QUIET_WAIT)); do
        log "other processes use $o cores (> $QUIET_MAX); waiting (${waited}/${QUIET_WAIT} s)"
        sleep 3
        waited=$((waited + 5))
        o=$(others_cores 2)
    done
    echo "$o"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Start cpm-system with RUST_LOG $1, logs into dir $2; sets SYS_PID.
start_system() {
    local rust_log=$1 dir=$2
    sed "s/^count = .*/count = $EDGE_WORKERS/" "$CS_DIR/edge.toml" >"$dir/edge.toml"
    pin_prefix "$SYS_CPUS"
    RUST_LOG=$rust_log "${PIN[@]}" "$SYS_BIN" --edge-config "$dir/edge.toml" \
        --cs-config "$CS_DIR/cs.toml" >"$dir/system.out" 2>"$dir/system.err" &
    SYS_PID=$!
    PIDS+=("$SYS_PID")
    wait_ready "$SYS_PID" 15060 cpm-system
    wait_ready "$SYS_PID" 17001 "cpm-system cs1"
    wait_ready "$SYS_PID" 17002 "cpm-system cs2"
    # The CS registers its group with the edge's admin API at start.
    for _ in $(seq 1 50); do
        curl -fs "http://$ADMIN/groups" 2>/dev/null | grep -q 'g4@groups.example.net' && return 0
        sleep 0.1
    done
    die "group g4 not registered with the edge within 5 s; logs in $dir"
}

# Start one SIPp UAS per port of scenario $1, logs into $2; sets UAS_PIDS.
start_uas() {
    local sc=$1 dir=$2 port
    UAS_PIDS=()
    pin_prefix "$SIPP_CPUS"
    for port in $(uas_ports_of "$sc"); do
        "${PIN[@]}" "$SIPP" -sf "$CS_DIR/uas.xml" -i "$IP" -p "$port" -t u1 -nd -nostdin \
            -buff_size "$SIPP_BUF" -trace_err -error_file "$dir/uas-$port-errors.log" \
            -trace_stat -stf "$dir/uas-$port-stat.csv" -fd 1 \
            </dev/null >"$dir/uas-$port.out" 2>&1 &
        UAS_PIDS+=("$!")
        PIDS+=("$!")
        wait_ready "$!" "$port" "SIPp UAS on $port"
    done
}

# SIPp UAC: scenario $1, port $2, calls $3, rate $4, pause ms $5, dir $6,
# name $7, extra arguments after. Runs in the background in $6/$7 (its rtt
# and message files land there); sets UAC_PID.
start_uac() {
    local sc=$1 port=$2 calls=$3 rate=$4 pause=$5 dir=$6 name=$7
    shift 7
    local timeout_s=$((calls / rate + pause / 1000 + 60))
    mkdir -p "$dir/$name"
    pin_prefix "$SIPP_CPUS"
    (cd "$dir/$name" && exec "${PIN[@]}" "$SIPP" "$EDGE" -sf "$CS_DIR/uac.xml" \
        -key target "$(target_of "$sc")" -i "$IP" -p "$port" -t u1 \
        -m "$calls" -r "$rate" -d "$pause" -l $((calls + 10)) -nostdin -buff_size "$SIPP_BUF" \
        -timeout "${timeout_s}s" -timeout_error -recv_timeout 5000 \
        -trace_stat -stf "$dir/$name/stat.csv" -fd 1 \
        -trace_screen -screen_file "$dir/$name/screen.log" \
        -trace_err -error_file "$dir/$name/errors.log" "$@" \
        </dev/null >"$dir/$name/sipp.out" 2>&1) &
    UAC_PID=$!
    PIDS+=("$UAC_PID")
}

# Percentiles p50 p99 of numbers on stdin ("- -" when none).
pcts() {
    sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- -"; exit }
        printf "%s %s\n", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1] }'
}

# The probe's INVITE -> 200 times in us, from its message log (SIPp writes
# each message under "----- YYYY-MM-DD HH:MM:SS.uuuuuu"): first INVITE sent
# per Call-ID to the first 200 received for CSeq INVITE.
probe_latencies() {
    awk '
        { sub(/\r$/, "") }
        /^----------* [0-9][0-9-]* [0-9][0-9:.]*$/ {
            split($3, hms, ":"); split($2, ymd, "-")
            t = ymd[3] * 86400 + hms[1] * 3600 + hms[2] * 60 + hms[3]; dir = ""; first = ""; next }
        /^UDP message sent/ { dir = "out"; first = ""; next }
        /^UDP message received/ { dir = "in"; first = ""; next }
        dir != "" && first == "" && NF > 0 { first = $0; next }
        dir != "" && /^Call-ID:/ { cid = $2 }
        dir != "" && /^CSeq:/ && $3 == "INVITE" {
            if (dir == "out" && first ~ /^INVITE / && !(cid in sent)) sent[cid] = t
            if (dir == "in" && first ~ /^SIP\/2.0 200/ && (cid in sent) && !(cid in done)) {
                done[cid] = 1; printf "%.0f\n", (t - sent[cid]) * 1e6 }
        }' "$@"
}

# Counters of the edge's /metrics worth a line: nonzero drops, 503s, shard state.
edge_metrics_line() {
    local f=$1
    [[ -s "$f" ]] || { echo "edge_metrics=none"; return; }
    awk '
        /^cpm_edge_drops_total/ && $2 > 0 { split($1, a, "\""); d = d a[2] "=" $2 "," }
        /^cpm_edge_replies_total\{code="503"\}/ { r503 = $2 }
        /^cpm_edge_io_errors_total/ && $2 > 0 { split($1, a, "\""); io = io a[2] "=" $2 "," }
        /^cpm_edge_shard_up/ && $2 == 1 { split($1, a, "\""); s = s a[2] ":" a[4] "," }
        /^cpm_edge_requests_received_total\{method="INVITE"\}/ { inv = $2 }
        END { sub(/,$/, "", d); sub(/,$/, "", io); sub(/,$/, "", s)
            printf "edge_invites=%s edge_503=%s edge_drops=%s edge_io_errors=%s shards=%s",
                inv, r503 + 0, (d == "" ? "0" : d), (io == "" ? "0" : io), s }' "$f"
}

# ------------------------------------------------------------ tables --
# Medians over the rounds of each scenario x rate, from the STEP lines of
# files $@ from line $SINCE of the first (1: all), steps whose others'
# cores exceed MAX_OTHERS left out; then the memory phase's figures.
print_tables() {
    local since=${SINCE:-1}
    echo
    echo "| scenario | rate offered /s | setups/s achieved | failed (of calls, all rounds) | rounds with 0 failed | retransmissions (UAC+UAS, median) | setup p50 / p99 (SIPp, ms) | setup p50 / p99 (probe, µs) | cpm-system cores | setups/s per core | CPU µs per session | others' cores |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -v since="$since" -v maxo="${MAX_OTHERS:-}" 'FNR == 1 { file++ } (file > 1 || FNR >= since) && /^STEP / {
        delete kv
        for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
        if (maxo != "" && (kv["others_cores"] == "-" || kv["others_cores"] + 0 > maxo + 0)) next
        k = kv["scenario"] " " kv["rate"]
        if (!(k in seen)) { seen[k] = 1; keys[++nk] = k }
        n[k]++
        f = kv["failed"] + kv["uas_failed"] + kv["probe_failed"]
        fails[k] += f; calls[k] += kv["calls"]; clean[k] += (f == 0 && kv["sipp_exit"] == 0)
        kv["retrans_all"] = kv["retrans"] + kv["uas_retrans"]
        split("setups_per_s retrans_all sipp_p50_ms sipp_p99_ms probe_p50_us probe_p99_us cores setups_per_core cpu_us_per_session others_cores", cols, " ")
        for (c in cols) v[k, cols[c], n[k]] = kv[cols[c]]
    }
    function med(k, col,   i, j, m, a, t) {
        m = 0
        for (i = 1; i <= n[k]; i++) if (v[k, col, i] != "-" && v[k, col, i] != "") a[++m] = v[k, col, i] + 0
        if (m == 0) return "-"
        for (i = 2; i <= m; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        t = (m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2)
        return sprintf(col ~ /cores/ ? "%.2f" : "%.0f", t)
    }
    END {
        # Scenarios in the order first seen, rates ascending.
        for (x = 1; x <= nk; x++) { split(keys[x], a, " "); if (!(a[1] in sc)) sc[a[1]] = x }
        for (x = 1; x <= nk; x++) for (y = x + 1; y <= nk; y++) {
            split(keys[x], a, " "); split(keys[y], b, " ")
            if (sc[a[1]] > sc[b[1]] || (a[1] == b[1] && a[2] + 0 > b[2] + 0)) { t = keys[x]; keys[x] = keys[y]; keys[y] = t }
        }
        for (x = 1; x <= nk; x++) {
            k = keys[x]; split(k, kk, " ")
            printf "| %s | %s | %s | %d of %d | %d of %d | %s | %s / %s | %s / %s | %s | %s | %s | %s |\n", kk[1], kk[2],
                med(k, "setups_per_s"), fails[k], calls[k], clean[k], n[k], med(k, "retrans_all"), med(k, "sipp_p50_ms"), med(k, "sipp_p99_ms"),
                med(k, "probe_p50_us"), med(k, "probe_p99_us"), med(k, "cores"), med(k, "setups_per_core"),
                med(k, "cpu_us_per_session"), med(k, "others_cores")
        }
    }' "$@"
    if awk -v since="$since" 'FNR == 1 { file++ } (file > 1 || FNR >= since) && /^MEM / { found = 1 } END { exit !found }' "$@"; then
        echo
        echo "| scenario | held sessions | RSS idle kB | RSS with N open kB | bytes per session (N open - idle) / N | RSS with 2N open kB | bytes per further session (transaction memory recycled) | RSS after all ended, kB | after N more, kB | sessions started / ended (CS log) | failed |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        awk -v since="$since" 'FNR == 1 { file++ } (file > 1 || FNR >= since) && /^MEM / {
            delete kv
            for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
            st = 0; en = 0
            for (x in kv) { if (x ~ /_started$/) st += kv[x]; if (x ~ /_ended$/) en += kv[x] }
            printf "| %s | %s at %s/s | %s | %s | %s | %s | %s | %s | %s | %d / %d | %s |\n", kv["scenario"], kv["n"], kv["rate"], kv["rss_kb_idle"],
                kv["rss_kb_n_open"], kv["bytes_per_session"], kv["rss_kb_2n_open"], kv["bytes_per_extra_session_recycled"],
                (kv["rss_kb_end"] == "" ? "-" : kv["rss_kb_end"]), (kv["rss_kb_after_rerun"] == "" ? "-" : kv["rss_kb_after_rerun"]), st, en, kv["failed"]
        }' "$@"
    fi
}
# ------------------------------------------------------------ reprint --
# TABLE="<raw file>..." reprints the tables of earlier runs (MAX_OTHERS
# keeps only the steps where other processes used at most that many cores).
if [[ -n "${TABLE:-}" ]]; then
    # shellcheck disable=SC2086 # a list of files on purpose
    SINCE=1 print_tables $TABLE
    exit 0
fi

# ------------------------------------------------------------ preflight --
command -v "$SIPP" >/dev/null 2>&1 ||
    die "'$SIPP' not found: apt-get install -y sip-tester (or set SIPP)"
command -v curl >/dev/null || die "curl is needed (the edge's admin API)"
if [[ "$BUILD" == 1 ]]; then
    log "cargo build --release --bins"
    cargo build --release --bins >"$LOGDIR/build.log" 2>&1 ||
        { tail -30 "$LOGDIR/build.log" >&2; die "build failed"; }
fi
[[ -x "$SYS_BIN" ]] || die "missing $SYS_BIN (cargo build --release --bins)"
for p in 15060 17001 17002 15080 15081 15082 15083 "$UAC_PORT" "$PROBE_PORT" "$CHECK_PORT" "$UAC2_PORT"; do
    ! udp_port_bound "$p" || die "UDP port $p is already in use (a leftover cpm-system or SIPp?)"
done
((DURATION >= 8)) || die "DURATION must be >= 8 s (steady window: HOLD + 2 s .. DURATION - 1 s)"

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -1)
out "# cs-load $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $COMMIT${DIRTY:+ (src modified)} on $(nproc) CPUs ($(uname -r)), logs $LOGDIR"
out "# SCENARIOS='$SCENARIOS' RATES_1TO1='$RATES_1TO1' RATES_GROUP4='$RATES_GROUP4' DURATION=$DURATION HOLD_MS=$HOLD_MS ROUNDS=$ROUNDS PROBE_RATE=$PROBE_RATE EDGE_WORKERS=$EDGE_WORKERS SYS_CPUS='$SYS_CPUS' SIPP_CPUS='$SIPP_CPUS' LOG=$LOG MEM=$MEM HOLD_N=$HOLD_N HOLD_RATE=$HOLD_RATE"
log "results -> $RESULTS, logs -> $LOGDIR"

# ------------------------------------------------------------ one step --
ANY_FAILED=0
run_step() {
    local round=$1 sc=$2 rate=$3
    local dir=$LOGDIR/r$round-$sc-$rate calls=$((rate * DURATION)) others
    mkdir -p "$dir"
    others=$(wait_quiet)
    log "round $round: $sc at $rate/s ($calls calls, hold $HOLD_MS ms; others $others cores)"
    start_system "$LOG" "$dir"
    start_uas "$sc" "$dir"
    # A check call: the path works before anything is measured.
    start_uac "$sc" "$CHECK_PORT" 2 10 0 "$dir" check
    wait "$UAC_PID" || die "check calls failed ($sc); see $dir/check"
    stop_pid "$UAC_PID"
    sleep 0.5
    local rss0 t0 probe_pid='' sampler
    rss0=$(rss_kb "$SYS_PID")
    t0=$(now_s)
    start_uac "$sc" "$UAC_PORT" "$calls" "$rate" "$HOLD_MS" "$dir" uac -trace_rtt -rtt_freq 1000
    local uac=$UAC_PID
    (while kill -0 "$SYS_PID" 2>/dev/null; do sample "$SYS_PID" "$uac" "${UAS_PIDS[@]}"; sleep 1; done) \
        >"$dir/samples.txt" 2>/dev/null &
    sampler=$!
    PIDS+=("$sampler")
    if ((PROBE_RATE > 0)); then
        local pdelay=$(((HOLD_MS + 1999) / 1000)) pcalls=$((PROBE_RATE * (DURATION - (HOLD_MS + 1999) / 1000 - 2)))
        ((pcalls > 0)) || pcalls=$PROBE_RATE
        sleep "$pdelay"
        start_uac "$sc" "$PROBE_PORT" "$pcalls" "$PROBE_RATE" "$HOLD_MS" "$dir" probe \
            -trace_msg -message_file "$dir/probe/messages.log"
        probe_pid=$UAC_PID
    fi
    local rc=0 prc=0
    wait "$uac" || rc=$?
    [[ -z "$probe_pid" ]] || wait "$probe_pid" || prc=$?
    local t_end
    t_end=$(now_s)
    sleep 1.2
    sample "$SYS_PID" "${UAS_PIDS[@]}" >>"$dir/samples.txt"  # the UAC has exited
    local rss1
    rss1=$(rss_kb "$SYS_PID")
    curl -fs "http://$ADMIN/metrics" >"$dir/metrics.txt" 2>/dev/null || true
    stop_pid "$sampler"
    local p
    for p in "${UAS_PIDS[@]}"; do stop_pid "$p"; done
    kill -0 "$SYS_PID" 2>/dev/null || die "cpm-system died during the step; see $dir/system.err"
    stop_pid "$SYS_PID"
    stop_pid "$uac"
    [[ -z "$probe_pid" ]] || stop_pid "$probe_pid"

    # ---- figures
    local f=$dir/uac/stat.csv ok failed created retrans unexpected maxretr uas_ok=0 uas_failed=0 uas_retrans=0 port
    [[ -s "$f" ]] || die "no SIPp statistics in $f (exit $rc)"
    ok=$(stat_or0 "$f" 'SuccessfulCall(C)')
    failed=$(stat_or0 "$f" 'FailedCall(C)')
    created=$(stat_or0 "$f" 'OutgoingCall(C)')
    retrans=$(stat_or0 "$f" 'Retransmissions(C)')
    unexpected=$(stat_or0 "$f" 'FailedUnexpectedMessage(C)')
    maxretr=$(stat_or0 "$f" 'FailedMaxUDPRetrans(C)')
    for port in $(uas_ports_of "$sc"); do
        f=$dir/uas-$port-stat.csv
        uas_ok=$((uas_ok + $(stat_or0 "$f" 'SuccessfulCall(C)')))
        uas_failed=$((uas_failed + $(stat_or0 "$f" 'FailedCall(C)')))
        uas_retrans=$((uas_retrans + $(stat_or0 "$f" 'Retransmissions(C)')))
    done
    local probe_ok=0 probe_failed=0 lat_sipp lat_probe probe_n=0
    if [[ -n "$probe_pid" ]]; then
        probe_ok=$(stat_or0 "$dir/probe/stat.csv" 'SuccessfulCall(C)')
        probe_failed=$(stat_or0 "$dir/probe/stat.csv" 'FailedCall(C)')
        probe_latencies "$dir/probe/messages.log" >"$dir/probe/setup_us.txt" || true
        probe_n=$(wc -l <"$dir/probe/setup_us.txt")
        lat_probe=$(pcts <"$dir/probe/setup_us.txt")
        # The message log is large and fully summarised: keep the latencies.
        rm -f "$dir/probe/messages.log"
    else
        lat_probe="- -"
    fi
    local rttf
    rttf=$(ls "$dir"/uac/*_rtt.csv 2>/dev/null | head -1 || true)
    local setups_per_s=0 n_setup=0
    if [[ -n "$rttf" ]]; then
        lat_sipp=$(awk -F';' '$3 == "setup" { print $2 }' "$rttf" | pcts)
        read -r n_setup setups_per_s < <(awk -F';' '$3 == "setup" { n++; t = $1 + 0;
                if (n == 1) a = t; b = t } END {
                printf "%d %.0f\n", n, (n > 1 && b > a ? (n - 1) * 1000 / (b - a) : 0) }' "$rttf")
    else
        lat_sipp="- -"
    fi
    # CPU: the steady window and the whole step.
    local cpu
    cpu=$(awk -v t0="$t0" -v w0=$((HOLD_MS / 1000 + 2)) -v w1=$((DURATION - 1)) -v hz="$CLK_TCK" \
        -v sessions=$((ok + probe_ok)) -v rate_s="$setups_per_s" '
        NR == 1 { ft = $1; ftot = $2 }
        { lt = $1; ltot = $2 }
        $1 >= t0 + w0 && !a { a = 1; at = $1; atot = $2; ae = $3; a1 = $4; a2 = $5; aw = $6; am = $7; as = $8 }
        $1 <= t0 + w1 { bt = $1; btot = $2; be = $3; b1 = $4; b2 = $5; bw = $6; bm = $7; bs = $8 }
        END {
            d = bt - at
            if (!a || d <= 0) { print "cores=- edge_cores=- cs1_cores=- cs2_cores=- sipp_cores=- others_cores=- runq_wait_pct=- cpu_us_per_session=- setups_per_core=-"; exit }
            c = (btot - atot) / hz / d
            sipp = (bs - as) / hz / d
            oth = (bm - am) / hz / d - c - sipp
            printf "cores=%.3f edge_cores=%.3f cs1_cores=%.3f cs2_cores=%.3f sipp_cores=%.3f others_cores=%.2f runq_wait_pct=%.1f",
                c, (be - ae) / hz / d, (b1 - a1) / hz / d, (b2 - a2) / hz / d, sipp, (oth < 0 ? 0 : oth), (bw - aw) / 1e9 / d * 100
            tot = (ltot - ftot) / hz
            printf " cpu_s_step=%.2f cpu_us_per_session=%.0f setups_per_core=%.0f",
                tot, (sessions > 0 ? tot * 1e6 / sessions : 0), (c > 0 ? rate_s / c : 0)
        }' "$dir/samples.txt")
    local down
    down=$(grep -c 'CS shard Down' "$dir/system.err" || true)
    local line
    line="STEP round=$round scenario=$sc rate=$rate calls=$calls created=$created ok=$ok failed=$failed"
    line+=" unexpected=$unexpected max_retrans_failed=$maxretr retrans=$retrans uas_ok=$uas_ok uas_failed=$uas_failed uas_retrans=$uas_retrans"
    line+=" sipp_exit=$rc setups=$n_setup setups_per_s=$setups_per_s sipp_p50_ms=${lat_sipp% *} sipp_p99_ms=${lat_sipp#* }"
    line+=" probe_ok=$probe_ok probe_failed=$probe_failed probe_n=$probe_n probe_p50_us=${lat_probe% *} probe_p99_us=${lat_probe#* }"
    line+=" $cpu rss_kb_start=$rss0 rss_kb_end=$rss1 shard_down_events=$down $(edge_metrics_line "$dir/metrics.txt") others_before=$others"
    out "$line"
    if ((failed > 0 || uas_failed > 0 || probe_failed > 0 || rc != 0)); then
        ANY_FAILED=1
        {
            echo "--- $dir: failed calls; first SIPp errors:"
            grep -o "Aborting call[^']*'[^']*'[^']*'[^']\{0,60\}" "$dir/uac/errors.log" 2>/dev/null |
                sed "s/Call-Id '[^']*'/Call-Id */" | sort | uniq -c | sort -rn | head -5
            grep -h 'WARN' "$dir/system.err" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g; s/^[^ ]* *//; s/([0-9]* bytes)//' |
                sort | uniq -c | sort -rn | head -8
        } >&2 || true
    fi
}

# ------------------------------------------------------------ memory --
run_mem() {
    local sc=$1 dir=$LOGDIR/mem-$sc
    mkdir -p "$dir"
    local t=$(((HOLD_N + HOLD_RATE - 1) / HOLD_RATE))
    # Batch 1 is held until batch 2 is up and measured; batch 2 ends with it.
    local gap=35 d1 d2
    d1=$(((2 * t + gap + 10) * 1000))
    d2=$(((t + 10) * 1000))
    log "memory, $sc: $HOLD_N held sessions at $HOLD_RATE/s, twice, then once more (~$((4 * t + gap + 100)) s)"
    start_system "$LOG_MEM" "$dir"
    start_uas "$sc" "$dir"
    start_uac "$sc" "$CHECK_PORT" 2 10 0 "$dir" check
    wait "$UAC_PID" || die "check calls failed ($sc); see $dir/check"
    stop_pid "$UAC_PID"
    sleep 2
    local idle
    idle=$(rss_kb "$SYS_PID")
    (while kill -0 "$SYS_PID" 2>/dev/null; do echo "$(now_s) $(rss_kb "$SYS_PID")"; sleep 1; done) \
        >"$dir/rss.txt" 2>/dev/null &
    local sampler=$!
    PIDS+=("$sampler")
    start_uac "$sc" "$UAC_PORT" "$HOLD_N" "$HOLD_RATE" "$d1" "$dir" batch1
    local b1=$UAC_PID
    # Until batch 1's setups are all answered (SIPp's statistics, every second).
    local deadline=$((SECONDS + t + 30))
    while ((SECONDS < deadline)); do
        sleep 1
        (($(stat_or0 "$dir/batch1/stat.csv" 'OutgoingCall(C)') >= HOLD_N)) && break
    done
    sleep 2
    local rss_n
    rss_n=$(rss_kb "$SYS_PID")
    sleep "$gap"
    local rss_n_later
    rss_n_later=$(rss_kb "$SYS_PID")
    start_uac "$sc" "$UAC2_PORT" "$HOLD_N" "$HOLD_RATE" "$d2" "$dir" batch2
    local b2=$UAC_PID
    deadline=$((SECONDS + t + 30))
    while ((SECONDS < deadline)); do
        sleep 1
        (($(stat_or0 "$dir/batch2/stat.csv" 'OutgoingCall(C)') >= HOLD_N)) && break
    done
    sleep 2
    local rss_2n open1 open2
    rss_2n=$(rss_kb "$SYS_PID")
    open1=$(stat_or0 "$dir/batch1/stat.csv" 'CurrentCall')
    open2=$(stat_or0 "$dir/batch2/stat.csv" 'CurrentCall')
    local rc1=0 rc2=0
    wait "$b1" || rc1=$?
    wait "$b2" || rc2=$?
    log "memory, $sc: all sessions ended; 40 s for the CS's transaction timers"
    sleep 40
    local rss_end
    rss_end=$(rss_kb "$SYS_PID")
    # Reuse: HOLD_N more sessions (1 s hold) in the same process, 40 s of
    # timers again: freed memory is reused when RSS stays where it was.
    start_uac "$sc" "$UAC_PORT" "$HOLD_N" "$HOLD_RATE" 1000 "$dir" batch3
    local b3=$UAC_PID rc3=0
    wait "$b3" || rc3=$?
    sleep 40
    local rss_rerun
    rss_rerun=$(rss_kb "$SYS_PID")
    stop_pid "$sampler"
    local p
    for p in "${UAS_PIDS[@]}"; do stop_pid "$p"; done
    stop_pid "$SYS_PID"
    stop_pid "$b1"
    stop_pid "$b2"
    stop_pid "$b3"
    local ok1 ok2 ok3 f1 f2 f3
    ok1=$(stat_or0 "$dir/batch1/stat.csv" 'SuccessfulCall(C)')
    ok2=$(stat_or0 "$dir/batch2/stat.csv" 'SuccessfulCall(C)')
    ok3=$(stat_or0 "$dir/batch3/stat.csv" 'SuccessfulCall(C)')
    f1=$(stat_or0 "$dir/batch1/stat.csv" 'FailedCall(C)')
    f2=$(stat_or0 "$dir/batch2/stat.csv" 'FailedCall(C)')
    f3=$(stat_or0 "$dir/batch3/stat.csv" 'FailedCall(C)')
    # The CS's notes: "<function> session for ..." at the start, "... session over" at the end.
    local notes
    notes=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/system.err" | awk '
        /cpm_cs: \[cs[0-9]+\]/ { match($0, /\[cs[0-9]+\]/); s = substr($0, RSTART + 1, RLENGTH - 2)
            if ($0 ~ / session for /) st[s]++; else if ($0 ~ / session over$/) en[s]++; shards[s] = 1 }
        END { for (s in shards) printf "%s_started=%d %s_ended=%d ", s, st[s], s, en[s] }')
    [[ -n "$notes" ]] || notes="cs_notes=none(LOG_MEM without cpm_cs=info) "
    out "MEM scenario=$sc n=$HOLD_N rate=$HOLD_RATE rss_kb_idle=$idle rss_kb_n_open=$rss_n rss_kb_n_open_35s_later=$rss_n_later rss_kb_2n_open=$rss_2n rss_kb_end=$rss_end rss_kb_after_rerun=$rss_rerun open_at_2n=$((open1 + open2)) $(awk -v i="$idle" -v a="$rss_n" -v b="$rss_2n" -v n="$HOLD_N" 'BEGIN {
        printf "bytes_per_session=%.0f bytes_per_extra_session_recycled=%.0f", (a - i) * 1024 / n, (b - a) * 1024 / n }') ok=$((ok1 + ok2 + ok3)) failed=$((f1 + f2 + f3)) sipp_exit=$rc1,$rc2,$rc3 ${notes% }"
    ((f1 + f2 + f3 == 0)) || ANY_FAILED=1
}

# ------------------------------------------------------------ main --
steps=()
for sc in $SCENARIOS; do
    target_of "$sc" >/dev/null
    for r in $(rates_of "$sc"); do steps+=("$sc:$r"); done
done
for ((round = 1; round <= ROUNDS; round++)); do
    order=("${steps[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#steps[@]} - 1; i >= 0; i--)); do order+=("${steps[i]}"); done
    fi
    for s in "${order[@]}"; do run_step "$round" "${s%%:*}" "${s##*:}"; done
done
if [[ "$MEM" == 1 ]]; then
    for sc in $SCENARIOS; do run_mem "$sc"; done
fi

# ------------------------------------------------------------ table --
SINCE=$(grep -n "^# cs-load" "$RESULTS" | tail -1 | cut -d: -f1) print_tables "$RESULTS" | tee -a "$RESULTS"
log "done; raw lines and table in $RESULTS, logs in $LOGDIR"
((ANY_FAILED == 0)) || exit 3
