#!/usr/bin/env bash
# perf/registrar.sh: authenticated registrations, cpm-edge's registrar
# against Kamailio's (perf/registrar/kamailio.cfg), on this box, one core
# each: REGISTERs per second, CPU per REGISTER, memory per binding.
#
# Usage: perf/registrar.sh [TARGET...]    TARGET: kamailio, edge (default both),
#        or edge-LABEL: the edge binary in EDGE_BIN_LABEL (builds side by side)
#
# The servers (perf/registrar/: kamailio.cfg, edge.toml):
#   kamailio  Kamailio 5.6, 1 UDP worker, sl (stateless), auth with the HA1
#             of each user from an htable loaded at start (db_text table),
#             usrloc in memory (db_mode 0), registrar; shm -m, pkg -M sized
#             to the user set.
#   edge      target/release/cpm-edge --config <step dir>/edge.toml: 1 io
#             worker, [registrar] with the user set's credentials file and a
#             fresh redb store per step.
# Both listen on 127.0.0.1:PORT (one at a time) and are pinned to
# SERVER_CPUS; SIPp (perf/registrar/reg-auth.xml: REGISTER, 401, REGISTER
# with the MD5 digest, 200; one call per user, so N calls register N AoRs
# u<i>@example.net) runs on SIPP_CPUS. Users come from
# perf/registrar/gen-users.py, made on demand in perf/registrar/users-<N>/
# (git-ignored): credentials.txt (cpm-edge), users.csv (SIPp),
# kamailio-db/ (Kamailio).
#
# Phases:
#   1. rate: ROUNDS interleaved rounds; in each, every target (in the given
#      order, reversed in even rounds) runs the ladder RATES, one fresh
#      server per step (no bindings at the start of a step): rate x
#      DURATION calls at SIPp -r rate; "max" in RATES is a closed-loop step
#      instead: MAX_CALLS calls, SIPp as fast as it can with at most
#      MAX_LIMIT calls open (-r 100000 -l MAX_LIMIT). A ladder step passes
#      with 0 failed calls, SIPp exit 0 and the achieved rate >= PASS_PCT %
#      of the offered one; after a failed step the higher rates of that
#      target are skipped in that round (STOP_ON_FAIL=1).
#   2. memory (MEM=1): per target, one fresh server with MEM_N users; RSS
#      (and PSS, summed over the server's processes; for Kamailio also
#      shm from kamcmd core.shmmem) before; MEM_N registrations (MEM_RATE:
#      "max" = closed loop with MEM_LIMIT open calls); 2 s later the same
#      figures: (after - before) / MEM_N = bytes per binding. Kamailio's
#      count of contacts (stats usrloc:) says every AoR is there.
#
# Figures (one STEP / MEM line each in RESULTS, key=value, then tables):
#   achieved/s  the SIPp 200s per second, (n - 1) / (last - first) over the
#               "register" response-time samples (-trace_rtt);
#   CPU µs per REGISTER  utime+stime of the server (all threads, all
#               processes: Kamailio's children too; /proc/PID/stat) over the
#               SIPp run / successful calls: each includes the challenge
#               round trip (two requests, a 401 and a 200);
#   cores       that CPU / the wall time of the interval around the SIPp
#               run; sipp_cores the same for SIPp (its ticks sampled every
#               0.2 s while it runs; near 1.0: SIPp is the bottleneck);
#   others_cores  the machine's busy CPU (/proc/stat) minus server and SIPp
#               (the box is shared; a step with others > QUIET_MAX is noisy).
#   Medians over the rounds: per target and rate; per target the highest
#   passing ladder rate, the closed-loop rate and CPU per REGISTER; edge vs
#   kamailio as the median of the per-round ratios.
#
# Environment [defaults]:
#   ROUNDS [5]  RATES ["2000 4000 6000 8000 10000 12000 max"]  DURATION [5] s
#   MAX_CALLS [20000]  MAX_LIMIT [200]  PASS_PCT [95]  STOP_ON_FAIL [1]
#   MEM [1]  MEM_N [1000000]  MEM_RATE [max]  MEM_LIMIT [50]
#   PORT [25060]  SIPP_PORT [25070]  RURI [sip:example.net] (Request-URI)
#   SERVER_CPUS [0]  SIPP_CPUS [1]  QUIET_MAX [0.3] cores  QUIET_WAIT [60] s
#   KAM_UL_HASH [16] (usrloc 2^n slots)  KAM_SHM_MB, KAM_PKG_MB [sized to users]
#   EDGE_BIN [target/release/cpm-edge]  EDGE_CONFIG [perf/registrar/edge.toml]
#   EDGE_READY_S [30]  KAM_READY_S [300] (1 000 000 users load in ~80 s)
#   SIPP [sipp]  SIPP_BUF [4194304]  INSTALL [1] (apt-get what is missing)
#   LOGDIR [mktemp -d /tmp/cpm-registrar.XXXXXX]
#   RESULTS [perf/results/registrar-<UTC date>.txt]
# Exit 0 when every step ran; 3 when a step had failed calls; 1 on a setup
# error (a server that does not start, e.g. an edge without [registrar]).
# Every process it starts is stopped by PID on exit (also Ctrl-C).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(kamailio edge)
ROUNDS=${ROUNDS:-5}
RATES=${RATES:-"2000 4000 6000 8000 10000 12000 max"}
DURATION=${DURATION:-5}
MAX_CALLS=${MAX_CALLS:-20000}
MAX_LIMIT=${MAX_LIMIT:-200}
PASS_PCT=${PASS_PCT:-95}
STOP_ON_FAIL=${STOP_ON_FAIL:-1}
MEM=${MEM:-1}
MEM_N=${MEM_N:-1000000}
MEM_RATE=${MEM_RATE:-max}
MEM_LIMIT=${MEM_LIMIT:-50}
PORT=${PORT:-25060}
SIPP_PORT=${SIPP_PORT:-25070}
RURI=${RURI:-sip:example.net}
SERVER_CPUS=${SERVER_CPUS:-0}
SIPP_CPUS=${SIPP_CPUS:-1}
QUIET_MAX=${QUIET_MAX:-0.3}
QUIET_WAIT=${QUIET_WAIT:-60}
KAM_UL_HASH=${KAM_UL_HASH:-16}
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/cpm-edge}
EDGE_CONFIG=${EDGE_CONFIG:-$ROOT/perf/registrar/edge.toml}
EDGE_READY_S=${EDGE_READY_S:-30}
KAM_READY_S=${KAM_READY_S:-300}
SIPP=${SIPP:-sipp}
SIPP_BUF=${SIPP_BUF:-4194304}
INSTALL=${INSTALL:-1}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-registrar.XXXXXX)}
mkdir -p "$LOGDIR" "$ROOT/perf/results"
RESULTS=${RESULTS:-$ROOT/perf/results/registrar-$(date -u +%Y-%m-%d-%H%M).txt}

REG_DIR=$ROOT/perf/registrar
SCENARIO=$REG_DIR/reg-auth.xml
KAM_CFG=$REG_DIR/kamailio.cfg
CLK_TCK=$(getconf CLK_TCK)

NAME=registrar
# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"

log() { echo "registrar: $*" >&2; }
out() { echo "$*" | tee -a "$RESULTS"; }
now_s() { date +%s.%N; }

# ------------------------------------------------------------ helpers --

# utime+stime ticks of process $1 with its children (lib.sh cpu_ticks).
proc_ticks() {
    local u s
    read -r u s < <(cpu_ticks "$1")
    echo $((u + s))
}

# Busy ticks of the whole machine (user nice system irq softirq steal).
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# Other processes' CPU (cores) over 2 s, minus nothing: no step runs then.
others_now() {
    local b0 b1
    b0=$(machine_busy)
    sleep 2
    b1=$(machine_busy)
    awk -v a="$b0" -v b="$b1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz / 2 }'
}

# Wait up to QUIET_WAIT s while other processes use more than QUIET_MAX
# cores; print the last reading.
wait_quiet() {
    local o waited=0
    o=$(others_now)
    while awk -v o="$o" -v m="$QUIET_MAX" 'BEGIN { exit !(o > m) }' && ((waited < QUIET_WAIT)); do
        log "other processes use $o cores (> $QUIET_MAX); waiting (${waited}/${QUIET_WAIT} s)"
        sleep 3
        waited=$((waited + 5))
        o=$(others_now)
    done
    echo "$o"
}

# "rss_kb pss_kb" of process $1 and its children (smaps_rollup: PSS shares
# Kamailio's shm pages among the processes that touched them; RSS counts
# them once per process).
mem_kb() {
    local p r s rss=0 pss=0
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        read -r r s < <(awk '/^Rss:/ { r = $2 } /^Pss:/ { s = $2 } END { print r + 0, s + 0 }' \
            "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
        rss=$((rss + r)) pss=$((pss + s))
    done
    echo "$rss $pss"
}

# Value of column $2 in the last row of SIPp statistics CSV $1 (0 if none).
stat_col() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 }
        END { if (!c || last == "") { print 0; exit } split(last, f, ";"); print f[c] + 0 }' "$1" 2>/dev/null || echo 0
}

# ------------------------------------------------------------ users --
# The user set of N users in perf/registrar/users-N/ (made once).
users_dir() {
    local n=$1 d=$REG_DIR/users-$1
    if [[ "$(cat "$d/users.n" 2>/dev/null || true)" != "$n" ]]; then
        log "generating $n users in $d"
        python3 "$REG_DIR/gen-users.py" "$n" "$d" >&2 || die "gen-users.py $n failed"
    fi
    echo "$d"
}

# ------------------------------------------------------------ servers --
# Start target $1 with user set $2 ($3 users), logs in $4; sets SERVER_PID
# and SERVER_CTL (Kamailio's kamcmd socket, empty for the edge).
start_server() {
    local target=$1 users=$2 n=$3 dir=$4
    SERVER_CTL=
    case $target in
    kamailio)
        # shm: ~0.65 kB per user for the creds (db_text copy + htable),
        # ~0.9 kB per binding, 128 MB to spare; pkg: the db_text result.
        local shm=${KAM_SHM_MB:-$((128 + n * 16 / 10000))} pkg=${KAM_PKG_MB:-$((16 + n * 6 / 10000))}
        SERVER_CTL=$dir/ctl
        taskset -c "$SERVER_CPUS" kamailio -f "$KAM_CFG" \
            -A "REG_LISTEN=udp:127.0.0.1:$PORT" -A "CTL_SOCK=\"unix:$SERVER_CTL\"" \
            -A "CREDS_DB=\"text://$users/kamailio-db\"" -A "CREDS_ROWS=$((n + 1))" \
            -A "UL_HASH=$KAM_UL_HASH" -Y "$dir" -m "$shm" -M "$pkg" -x tlsf -DD -E \
            >"$dir/kamailio.out" 2>"$dir/kamailio.err" &
        SERVER_PID=$!
        PIDS+=("$SERVER_PID")
        wait_up "$SERVER_PID" "$KAM_READY_S" kamailio "$dir"
        ;;
    edge | edge-*)
        local bin
        bin=$(edge_bin "$target")
        sed -e "s|127\.0\.0\.1:25060|127.0.0.1:$PORT|" \
            -e "s|^store = .*|store = \"$dir/loc.redb\"|" \
            -e "s|^credentials_file = .*|credentials_file = \"$users/credentials.txt\"|" \
            "$EDGE_CONFIG" >"$dir/edge.toml"
        RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPUS" "$bin" --config "$dir/edge.toml" \
            >"$dir/edge.out" 2>"$dir/edge.err" &
        SERVER_PID=$!
        PIDS+=("$SERVER_PID")
        wait_up "$SERVER_PID" "$EDGE_READY_S" cpm-edge "$dir"
        ;;
    *) die "unknown target '$target' (kamailio, edge, edge-LABEL)" ;;
    esac
}

# The binary of an edge target: EDGE_BIN for "edge", EDGE_BIN_<LABEL> for
# "edge-<LABEL>" (two builds compared in one interleaved run).
edge_bin() {
    local target=$1 var
    if [[ "$target" == edge ]]; then
        var=EDGE_BIN
    else
        var="EDGE_BIN_${target#edge-}"
    fi
    [[ "$var" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "target '$target': LABEL must be [A-Za-z0-9_]"
    [[ -n "${!var:-}" && -x "${!var}" ]] || die "target '$target': $var is not an executable (cargo build --release --bin cpm-edge)"
    echo "${!var}"
}

# Until process $1 has bound UDP PORT (and Kamailio its ctl socket), at
# most $2 s.
wait_up() {
    local pid=$1 limit=$2 name=$3 dir=$4 i
    for ((i = 0; i < limit * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -5 "$dir"/*.err >&2 2>/dev/null || true
            die "$name (pid $pid) exited during start-up; logs in $dir"
        fi
        # The edge binds its port before it has started its workers (with
        # 1 000 000 users, seconds before): what arrives meanwhile waits, and
        # SIPp's 500 ms retransmission would cross the 401. So for the edge,
        # also its "ready" line; for Kamailio, its control socket.
        if udp_port_bound "$PORT" && if [[ -n "$SERVER_CTL" ]]; then [[ -S "$SERVER_CTL" ]]; else grep -q '^  ready ' "$dir/edge.out" 2>/dev/null; fi; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not start within $limit s; logs in $dir"
}

kamcmd_() { kamcmd -s "unix:$SERVER_CTL" "$@" 2>/dev/null; }

# Kamailio: "shm_used shm_real_used contacts" ("- - -" for the edge).
server_counts() {
    if [[ -z "$SERVER_CTL" ]]; then
        echo "- - -"
        return
    fi
    local shm stats
    shm=$(kamcmd_ core.shmmem | awk '$1 == "used:" { u = $2 } $1 == "real_used:" { r = $2 } END { print u + 0, r + 0 }')
    stats=$(kamcmd_ stats.get_statistics usrloc: | awk '$1 == "usrloc:location_contacts" { print $3 + 0 }')
    echo "$shm ${stats:-0}"
}

# The edge's /metrics lines about registrations (for the log; "-" if none).
edge_metrics() {
    local dir=$1
    [[ -z "$SERVER_CTL" ]] || { echo "-"; return; }
    command -v curl >/dev/null || { echo "-"; return; }
    curl -fs --max-time 2 "http://127.0.0.1:28088/metrics" >"$dir/metrics.txt" 2>/dev/null || { echo "-"; return; }
    local m
    m=$(grep -i -E '^[a-z_]*(regist|binding|aor|auth)[a-z_]*(\{[^}]*\})? ' "$dir/metrics.txt" |
        tr ' ' '=' | tr '\n' ',' | sed 's/,$//')
    echo "${m:--}"
}

# ------------------------------------------------------------ SIPp --
# Run SIPp in $1 (its files land there): $2 calls at rate $3 ("max": closed
# loop with at most $4 open calls) from user file $5. Waits for it, sampling
# its CPU; sets SIPP_RC, SIPP_TICKS, SIPP_WALL.
run_sipp() {
    local dir=$1 calls=$2 rate=$3 limit=$4 csv=$5 rargs timeout_s
    if [[ "$rate" == max ]]; then
        rargs=(-r 100000 -rp 1000 -l "$limit")
        timeout_s=$((calls / 1000 + 60))
    else
        rargs=(-r "$rate" -l $((rate * 10 + 100)))
        timeout_s=$((calls / rate + 60))
    fi
    mkdir -p "$dir"
    local t0 sp
    t0=$(now_s)
    (cd "$dir" && exec taskset -c "$SIPP_CPUS" "$SIPP" "127.0.0.1:$PORT" -sf "$SCENARIO" \
        -key ruri "$RURI" -inf "$csv" -i 127.0.0.1 -p "$SIPP_PORT" -t u1 \
        -m "$calls" "${rargs[@]}" -nostdin -buff_size "$SIPP_BUF" \
        -timeout "${timeout_s}s" -timeout_error -recv_timeout 10000 \
        -trace_stat -stf "$dir/stat.csv" -fd 1 -trace_rtt -rtt_freq 1000 \
        -trace_screen -screen_file "$dir/screen.log" \
        -trace_err -error_file "$dir/errors.log" \
        </dev/null >"$dir/sipp.out" 2>&1) &
    sp=$!
    PIDS+=("$sp")
    SIPP_TICKS=0
    local t
    while kill -0 "$sp" 2>/dev/null; do
        t=$(proc_ticks "$sp" 2>/dev/null) && SIPP_TICKS=$t || true
        sleep 0.2
    done
    SIPP_RC=0
    wait "$sp" || SIPP_RC=$?
    SIPP_WALL=$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN { printf "%.3f", b - a }')
    stop_pid "$sp"
}

# "n rate_per_s" of the register response-time samples in $1/*_rtt.csv.
rtt_rate() {
    local f
    f=$(ls "$1"/*_rtt.csv 2>/dev/null | head -1 || true)
    [[ -n "$f" ]] || { echo "0 0"; return; }
    awk -F';' '$3 == "register" { n++; t = $1 + 0; if (n == 1) a = t; b = t }
        END { printf "%d %.0f\n", n, (n > 1 && b > a ? (n - 1) * 1000 / (b - a) : 0) }' "$f"
}

# The first SIPp errors of $1, summarised (stderr).
sipp_errors() {
    {
        echo "--- $1: failed calls; first SIPp errors:"
        grep -a -o "Aborting call[^']*'[^']*'[^']*'[^']\{0,60\}" "$1/errors.log" 2>/dev/null |
            sed "s/Call-Id '[^']*'/Call-Id */" | sort | uniq -c | sort -rn | head -5
        grep -a -v 'Aborting\|^$' "$1/errors.log" 2>/dev/null | head -3
    } >&2 || true
}

# ------------------------------------------------------------ tables --
print_tables() {
    local since=$1 file=$2
    echo
    echo "| target | rate offered /s | achieved /s | failed (all rounds) | rounds passed | retransmissions | CPU µs per REGISTER | server cores | SIPp cores | others' cores |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    awk -v since="$since" -v maxo="${MAX_OTHERS:-}" '
    function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n ? ((n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : 0 }
    FNR >= since && /^STEP / {
        delete kv; for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
        if (maxo != "" && kv["others_cores"] + 0 > maxo + 0) next
        k = kv["target"] SUBSEP kv["rate"]
        if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
        c = ++cnt[k]
        ach[k, c] = kv["achieved_per_s"]; cpu[k, c] = kv["cpu_us_per_reg"]; cor[k, c] = kv["cores"]
        sc[k, c] = kv["sipp_cores"]; oth[k, c] = kv["others_cores"]; rt[k, c] = kv["retrans"]
        fail[k] += kv["failed"]; passed[k] += kv["pass"]
    }
    END {
        for (x = 1; x <= nk; x++) { k = order[x]; split(k, tr, SUBSEP); n = cnt[k]
            for (f = 1; f <= 6; f++) { delete a
                for (i = 1; i <= n; i++) a[i] = (f == 1 ? ach[k, i] : f == 2 ? cpu[k, i] : f == 3 ? cor[k, i] : f == 4 ? sc[k, i] : f == 5 ? oth[k, i] : rt[k, i])
                m[f] = med(a, n) }
            printf "%s\t%012d\t| %s | %s | %.0f | %d | %d / %d | %.0f | %.1f | %.2f | %.2f | %.2f |\n", tr[1], (tr[2] == "max" ? 999999999 : tr[2]),
                tr[1], (tr[2] == "max" ? "max (closed loop)" : tr[2]), m[1], fail[k], passed[k], n, m[6], m[2], m[3], m[4], m[5] }
    }' "$file" | sort | cut -f3-
    echo
    echo "| target | highest passing ladder rate /s (median of rounds) | closed-loop rate /s (median) | CPU µs per REGISTER (median, passing steps) | vs Kamailio: CPU per REGISTER | vs Kamailio: closed-loop rate |"
    echo "|---|---|---|---|---|---|"
    awk -v since="$since" -v maxo="${MAX_OTHERS:-}" '
    function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n ? ((n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : 0 }
    FNR >= since && /^STEP / {
        delete kv; for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
        if (maxo != "" && kv["others_cores"] + 0 > maxo + 0) next
        t = kv["target"]; r = kv["round"]
        if (!(t in seen)) { seen[t] = 1; order[++nt] = t }
        rounds[t, r] = 1; if (!(r in rs)) { rs[r] = 1; nr++ ; rlist[nr] = r }
        if (kv["rate"] == "max") { if (kv["pass"]) closed[t, r] = kv["achieved_per_s"] }
        else if (kv["pass"] && kv["rate"] + 0 > best[t, r] + 0) best[t, r] = kv["rate"]
        if (kv["pass"]) { cpus[t, r] += kv["cpu_us_per_reg"]; ncpu[t, r]++ }
    }
    END {
        for (x = 1; x <= nt; x++) { t = order[x]
            delete a; delete b; delete c; na = nb = nc = 0; delete rc; delete rq; nrc = nrq = 0
            for (y = 1; y <= nr; y++) { r = rlist[y]; if (!((t, r) in rounds)) continue
                a[++na] = best[t, r] + 0
                if ((t, r) in closed) b[++nb] = closed[t, r]
                if (ncpu[t, r]) { c[++nc] = cpus[t, r] / ncpu[t, r]
                    if (ncpu["kamailio", r]) rc[++nrc] = c[nc] / (cpus["kamailio", r] / ncpu["kamailio", r]) }
                if (((t, r) in closed) && (("kamailio", r) in closed) && closed["kamailio", r] > 0) rq[++nrq] = closed[t, r] / closed["kamailio", r] }
            printf "| %s | %.0f | %s | %s | %s | %s |\n", t, med(a, na), (nb ? sprintf("%.0f", med(b, nb)) : "-"),
                (nc ? sprintf("%.1f", med(c, nc)) : "-"), (t != "kamailio" && nrc ? sprintf("%.2fx", med(rc, nrc)) : "-"),
                (t != "kamailio" && nrq ? sprintf("%.2fx", med(rq, nrq)) : "-") }
    }' "$file"
    if grep -q '^MEM ' <(tail -n +"$since" "$file"); then
        echo
        echo "| target | AoRs registered (contacts) | failed | registrations/s | start-up s | RSS before → after, MB | RSS B/binding | PSS B/binding | shm used B/binding | shm real_used B/binding | store kB | CPU µs per REGISTER |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
        tail -n +"$since" "$file" | awk '/^MEM / {
            delete kv; for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
            printf "| %s | %s (%s) | %s | %s | %s | %.0f → %.0f | %s | %s | %s | %s | %s | %s |\n", kv["target"], kv["ok"], kv["contacts"], kv["failed"],
                kv["achieved_per_s"], kv["startup_s"], kv["rss_kb_before"] / 1024, kv["rss_kb_after"] / 1024, kv["rss_bytes_per_binding"],
                kv["pss_bytes_per_binding"], kv["shm_used_bytes_per_binding"], kv["shm_real_used_bytes_per_binding"], kv["store_kb"], kv["cpu_us_per_reg"] }'
    fi
}

# ------------------------------------------------------------ reprint --
# TABLE=<raw file> reprints the tables of that file; MAX_OTHERS=<cores>
# keeps only the steps where other processes used at most that much.
if [[ -n "${TABLE:-}" ]]; then
    print_tables 1 "$TABLE"
    exit 0
fi

# ------------------------------------------------------------ preflight --
pkgs=()
command -v kamailio >/dev/null || pkgs+=(kamailio)
command -v "$SIPP" >/dev/null || pkgs+=(sip-tester)
command -v python3 >/dev/null || pkgs+=(python3)
command -v taskset >/dev/null || pkgs+=(util-linux)
if ((${#pkgs[@]})); then
    [[ "$INSTALL" == 1 ]] || die "missing: ${pkgs[*]} (apt-get install -y ${pkgs[*]}, or INSTALL=1)"
    log "installing ${pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
        die "apt-get install ${pkgs[*]} failed"
fi
for t in "${TARGETS[@]}"; do
    case $t in
    kamailio) ;;
    edge | edge-*) edge_bin "$t" >/dev/null ;;
    *) die "unknown target '$t' (kamailio, edge, edge-LABEL)" ;;
    esac
done
! udp_port_bound "$PORT" || die "UDP port $PORT is already in use"
! udp_port_bound "$SIPP_PORT" || die "UDP port $SIPP_PORT is already in use"

# Users for the rate phase: the largest step.
RATE_N=0
for r in $RATES; do
    if [[ "$r" == max ]]; then c=$MAX_CALLS; else c=$((r * DURATION)); fi
    ((c > RATE_N)) && RATE_N=$c
done

# Tables from this run's lines only: RESULTS may hold earlier runs.
SINCE=1
[[ ! -f "$RESULTS" ]] || SINCE=$(($(wc -l <"$RESULTS") + 1))
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
out "# registrar $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $COMMIT on $(nproc) CPUs ($(uname -r)), $(kamailio -v 2>/dev/null | head -1 | sed 's/^version: //'), $("$SIPP" -v 2>/dev/null | grep -o 'SIPp v[0-9.]*' | head -1), logs $LOGDIR"
out "# TARGETS='${TARGETS[*]}' ROUNDS=$ROUNDS RATES='$RATES' DURATION=$DURATION MAX_CALLS=$MAX_CALLS MAX_LIMIT=$MAX_LIMIT PASS_PCT=$PASS_PCT MEM=$MEM MEM_N=$MEM_N MEM_RATE=$MEM_RATE MEM_LIMIT=$MEM_LIMIT SERVER_CPUS=$SERVER_CPUS SIPP_CPUS=$SIPP_CPUS RURI=$RURI KAM_UL_HASH=$KAM_UL_HASH"
log "results -> $RESULTS, logs -> $LOGDIR"

# ------------------------------------------------------------ rate step --
ANY_FAILED=0
STEP_PASSED=0
run_step() {
    local round=$1 target=$2 rate=$3 users=$4
    local dir=$LOGDIR/r$round-$target-$rate calls others
    if [[ "$rate" == max ]]; then calls=$MAX_CALLS; else calls=$((rate * DURATION)); fi
    mkdir -p "$dir"
    others=$(wait_quiet)
    log "round $round: $target at $rate/s ($calls registrations; others $others cores)"
    start_server "$target" "$users" "$RATE_N" "$dir"
    sleep 0.5
    # Server, SIPp and machine CPU over one interval [t0, t1] around the run.
    local c0 c1 b0 b1 t0 t1
    t0=$(now_s)
    c0=$(proc_ticks "$SERVER_PID")
    b0=$(machine_busy)
    run_sipp "$dir/sipp" "$calls" "$rate" "$MAX_LIMIT" "$users/users.csv"
    c1=$(proc_ticks "$SERVER_PID")
    b1=$(machine_busy)
    t1=$(now_s)
    local counts metrics
    counts=$(server_counts)
    metrics=$(edge_metrics "$dir")
    kill -0 "$SERVER_PID" 2>/dev/null || die "$target died during the step; logs in $dir"
    stop_pid "$SERVER_PID"
    rm -f "$dir/loc.redb"

    local f=$dir/sipp/stat.csv ok failed retrans n achieved
    ok=$(stat_col "$f" 'SuccessfulCall(C)')
    failed=$(stat_col "$f" 'FailedCall(C)')
    retrans=$(stat_col "$f" 'Retransmissions(C)')
    read -r n achieved < <(rtt_rate "$dir/sipp")
    local pass=0
    if ((failed == 0 && SIPP_RC == 0 && ok == calls)); then
        if [[ "$rate" == max ]] || ((achieved * 100 >= rate * PASS_PCT)); then pass=1; fi
    fi
    STEP_PASSED=$pass
    local contacts=${counts##* }
    out "STEP round=$round target=$target rate=$rate calls=$calls ok=$ok failed=$failed retrans=$retrans sipp_exit=$SIPP_RC pass=$pass samples=$n achieved_per_s=$achieved wall_s=$SIPP_WALL $(awk \
        -v c="$((c1 - c0))" -v s="$SIPP_TICKS" -v m="$((b1 - b0))" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v ok="$ok" -v hz="$CLK_TCK" 'BEGIN {
        printf "server_cpu_s=%.2f cpu_us_per_reg=%.1f cores=%.3f sipp_cores=%.3f others_cores=%.2f",
            c / hz, (ok > 0 ? c / hz * 1e6 / ok : 0), c / hz / w, s / hz / w, ((m - c - s) / hz / w < 0 ? 0 : (m - c - s) / hz / w) }') contacts=$contacts edge_metrics=$metrics others_before=$others"
    if ((failed > 0 || SIPP_RC != 0)); then
        ANY_FAILED=1
        sipp_errors "$dir/sipp"
    fi
}

# ------------------------------------------------------------ memory --
run_mem() {
    local target=$1 users=$2 dir=$LOGDIR/mem-$target
    mkdir -p "$dir"
    local others
    others=$(wait_quiet)
    log "memory, $target: $MEM_N registrations (rate $MEM_RATE; start-up loads $MEM_N users)"
    local ts
    ts=$(now_s)
    start_server "$target" "$users" "$MEM_N" "$dir"
    local up_s
    up_s=$(awk -v a="$ts" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }')
    sleep 2
    local rss0 pss0 shm0 real0 cnt0 rss1 pss1 shm1 real1 cnt1 c0 c1
    read -r rss0 pss0 < <(mem_kb "$SERVER_PID")
    read -r shm0 real0 cnt0 < <(server_counts)
    c0=$(proc_ticks "$SERVER_PID")
    run_sipp "$dir/sipp" "$MEM_N" "$MEM_RATE" "$MEM_LIMIT" "$users/users.csv"
    c1=$(proc_ticks "$SERVER_PID")
    sleep 2
    read -r rss1 pss1 < <(mem_kb "$SERVER_PID")
    read -r shm1 real1 cnt1 < <(server_counts)
    local metrics store_kb=-
    metrics=$(edge_metrics "$dir")
    [[ ! -f "$dir/loc.redb" ]] || store_kb=$(du -k "$dir/loc.redb" | cut -f1)
    kill -0 "$SERVER_PID" 2>/dev/null || die "$target died during the memory run; logs in $dir"
    stop_pid "$SERVER_PID"
    rm -f "$dir/loc.redb"
    local f=$dir/sipp/stat.csv ok failed retrans n achieved
    ok=$(stat_col "$f" 'SuccessfulCall(C)')
    failed=$(stat_col "$f" 'FailedCall(C)')
    retrans=$(stat_col "$f" 'Retransmissions(C)')
    read -r n achieved < <(rtt_rate "$dir/sipp")
    out "MEM target=$target n=$MEM_N rate=$MEM_RATE ok=$ok failed=$failed retrans=$retrans sipp_exit=$SIPP_RC achieved_per_s=$achieved wall_s=$SIPP_WALL startup_s=$up_s rss_kb_before=$rss0 rss_kb_after=$rss1 pss_kb_before=$pss0 pss_kb_after=$pss1 shm_used_before=$shm0 shm_used_after=$shm1 shm_real_used_before=$real0 shm_real_used_after=$real1 contacts=$cnt1 store_kb=$store_kb $(awk \
        -v r0="$rss0" -v r1="$rss1" -v p0="$pss0" -v p1="$pss1" -v s0="$shm0" -v s1="$shm1" -v q0="$real0" -v q1="$real1" \
        -v n="$MEM_N" -v c="$((c1 - c0))" -v ok="$ok" -v hz="$CLK_TCK" 'BEGIN {
        printf "rss_bytes_per_binding=%.0f pss_bytes_per_binding=%.0f", (r1 - r0) * 1024 / n, (p1 - p0) * 1024 / n
        if (s0 != "-") printf " shm_used_bytes_per_binding=%.0f shm_real_used_bytes_per_binding=%.0f", (s1 - s0) / n, (q1 - q0) / n
        else printf " shm_used_bytes_per_binding=- shm_real_used_bytes_per_binding=-"
        printf " cpu_us_per_reg=%.1f", (ok > 0 ? c / hz * 1e6 / ok : 0) }') edge_metrics=$metrics others_before=$others"
    if ((failed > 0 || SIPP_RC != 0)); then
        ANY_FAILED=1
        sipp_errors "$dir/sipp"
    fi
}

# ------------------------------------------------------------ main --
if ((ROUNDS > 0)); then
    RATE_USERS=$(users_dir "$RATE_N")
    for ((round = 1; round <= ROUNDS; round++)); do
        order=("${TARGETS[@]}")
        if ((round % 2 == 0)); then
            order=()
            for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[i]}"); done
        fi
        for target in "${order[@]}"; do
            skip=0
            for rate in $RATES; do
                if [[ "$rate" != max && "$skip" == 1 ]]; then
                    log "round $round: $target at $rate/s skipped (a lower rate failed)"
                    continue
                fi
                run_step "$round" "$target" "$rate" "$RATE_USERS"
                [[ "$rate" == max || "$STEP_PASSED" == 1 || "$STOP_ON_FAIL" != 1 ]] || skip=1
            done
        done
    done
fi
if [[ "$MEM" == 1 ]]; then
    MEM_USERS=$(users_dir "$MEM_N")
    for target in "${TARGETS[@]}"; do run_mem "$target" "$MEM_USERS"; done
fi
print_tables "$SINCE" "$RESULTS" | tee -a "$RESULTS"
log "done; raw lines and tables in $RESULTS, logs in $LOGDIR"
((ANY_FAILED == 0)) || exit 3
