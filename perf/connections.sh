#!/usr/bin/env bash
# perf/connections.sh: SIP over TLS at connection scale, cpm-edge against
# Kamailio's tls module (perf/connections/kamailio.cfg) on this box, one
# core each: idle TLS connections held and the bytes each costs, TLS
# handshakes per second and CPU per handshake, and INVITE forwarding over
# TLS against UDP (CPU per INVITE/200 pair).
#
# Usage: perf/connections.sh [TARGET...]   TARGET: edge, kamailio (default both),
#        or edge-LABEL: the edge binary in EDGE_BIN_LABEL (builds side by side)
#        SCALE=1 perf/connections.sh edge   also the scale phase (below)
#
# The rig: the server (one io worker / one Kamailio worker of each kind) on
# SERVER_CPUS, listening on UDP 127.0.0.1:25060 and TLS 127.0.0.1:25061
# with one certificate (ECDSA P-256, made here with openssl); the CS
# stand-in (cpm-cs-responder, answers 200 to every INVITE) on 27001 and the
# clients (cpm-connload, perf/connload.rs: rustls clients, TLS 1.3) on
# CLIENT_CPUS. Every process is stopped by PID on exit.
#
# Phases, ROUNDS interleaved rounds (targets in the given order, reversed in
# even rounds), one fresh server per target and round:
#   1. idle: CONNS TLS connections opened (THREADS at a time, from SOURCES
#      source addresses 127.0.10.x), then held idle. Figures: opened and
#      failed; handshakes/s (cpm-connload's rate over the opening phase);
#      server CPU per handshake (utime+stime of all its threads and
#      processes over that phase / opened); bytes per connection (PSS
#      summed over the server's processes, 2 s after the last handshake,
#      minus before, / opened; Kamailio's connections live in its shared
#      memory, which PSS counts once; kamcmd core.shmmem real_used is
#      recorded beside it).
#   2. tls: INVITES CPM session INVITEs round PAIR_CONNS held TLS
#      connections (4 client threads, each waiting for its final answer):
#      server CPU per INVITE/200 pair and pairs/s.
#   3. udp: the same INVITEs over 4 UDP sockets.
# SCALE=1 adds, for the edge only, the scale phase: SCALE_N idle TLS
# connections on one box. The sandbox's hard RLIMIT_NOFILE (20 000 per
# process, not raisable without CAP_SYS_RESOURCE) caps one process near
# 19 900 sockets, so SCALE_PROCS edge processes share the TLS port by
# SO_REUSEPORT (the kernel spreads connections over them by hash) and
# SCALE_PROCS cpm-connload processes open SCALE_N / SCALE_PROCS each; the
# figures are the connections held in all (from each edge's /metrics) and
# the RSS they add, summed over the edges.
#
# Environment [defaults]:
#   ROUNDS [5]  CONNS [18000]  THREADS [2]  SOURCES [20]  INVITES [60000]
#   PAIR_CONNS [64]  SERVER_CPUS [0]  CLIENT_CPUS [1]
#   SCALE [0]  SCALE_N [200000]  SCALE_PROCS [12]
#   KAM_SHM_MB [2048]  KAM_PKG_MB [64]  INSTALL [1] (apt-get what is missing)
#   EDGE_BIN [target/release/cpm-edge]  LOGDIR [mktemp -d]
#   RESULTS [perf/results/connections-<UTC date>.txt]
# Exit 0 when every phase ran; 1 on a setup error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(edge kamailio)
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-18000}
THREADS=${THREADS:-2}
SOURCES=${SOURCES:-20}
INVITES=${INVITES:-60000}
PAIR_CONNS=${PAIR_CONNS:-64}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
SCALE=${SCALE:-0}
SCALE_N=${SCALE_N:-200000}
SCALE_PROCS=${SCALE_PROCS:-12}
KAM_SHM_MB=${KAM_SHM_MB:-2048}
KAM_PKG_MB=${KAM_PKG_MB:-64}
INSTALL=${INSTALL:-1}
EDGE_BIN=${EDGE_BIN:-target/release/cpm-edge}
CONNLOAD=target/release/cpm-connload
RESPONDER=target/release/cpm-cs-responder
UDP_PORT=25060 TLS_PORT=25061 CS_PORT=27001 ADMIN_PORT=28089
NAME=connections
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-connections.XXXXXX)}
RESULTS=${RESULTS:-perf/results/connections-$(date -u +%Y-%m-%d-%H%M).txt}
# shellcheck source=perf/lib.sh
source perf/lib.sh

# ------------------------------------------------------------- set-up --
install_missing() {
    local need=()
    command -v openssl >/dev/null || need+=(openssl)
    for t in "${TARGETS[@]}"; do
        [[ $t == kamailio ]] || continue
        command -v kamailio >/dev/null || need+=(kamailio)
        [[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ]] || need+=(kamailio-tls-modules)
        command -v kamcmd >/dev/null || need+=(kamailio)
    done
    ((${#need[@]})) || return 0
    ((INSTALL)) || die "missing: ${need[*]} (INSTALL=0)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
}

# A CA and a leaf for "localhost" and 127.0.0.1 (ECDSA P-256), in $LOGDIR.
make_certs() {
    local d=$LOGDIR/pki
    mkdir -p "$d"
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$d/ca.key" -subj "/CN=cpm perf CA" -days 2 \
        -out "$d/ca.crt" 2>/dev/null
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/leaf.key.ec" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$d/leaf.key.ec" -out "$d/leaf.key"
    openssl req -new -key "$d/leaf.key" -subj "/CN=localhost" -out "$d/leaf.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$d/ext"
    openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext" -out "$d/leaf.crt" 2>/dev/null
    CA=$d/ca.crt CERT=$d/leaf.crt KEY=$d/leaf.key
}

# ------------------------------------------------------------ figures --
# PSS in kB of process $1 and its descendants.
pss_kb() {
    local kb child
    kb=$(awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null) || kb=0
    for child in $(pgrep -P "$1" 2>/dev/null); do
        kb=$((kb + $(pss_kb "$child")))
    done
    echo "${kb:-0}"
}

# RSS in kB of process $1 (threads share it).
rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# CPU ticks (utime + stime) of process $1 and its descendants.
ticks() {
    local u s
    read -r u s < <(cpu_ticks "$1")
    echo $((u + s))
}

# Kamailio's shm real_used in bytes (0 for the edge).
shm_used() {
    [[ -n ${KAM_CTL:-} ]] || {
        echo 0
        return
    }
    kamcmd -s "unix:$KAM_CTL" core.shmmem 2>/dev/null | awk '/real_used/ { print $2 }'
}

# Value of key $2 in the key=value line of file $1 that has key $2.
field() {
    grep -o "\b$2=[^ ]*" "$1" | tail -1 | cut -d= -f2
}




# ------------------------------------------------------------ servers --
# The edge's configuration in $1 with admin port $2.
edge_config() {
    sed -e "s|^cert = .*|cert = \"$CERT\"|" -e "s|^key = .*|key = \"$KEY\"|" \
        -e "s|127\.0\.0\.1:$ADMIN_PORT|127.0.0.1:$2|" perf/connections/edge.toml >"$1"
}

# The binary of an edge target: EDGE_BIN for "edge", EDGE_BIN_<LABEL> for
# "edge-<LABEL>".
edge_bin() {
    local var=EDGE_BIN
    [[ $1 == edge ]] || var="EDGE_BIN_${1#edge-}"
    [[ $var =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "target '$1': LABEL must be [A-Za-z0-9_]"
    [[ -x ${!var:-} ]] || die "target '$1': $var is not an executable"
    echo "${!var}"
}

# Start target $1, logs in $2: sets SERVER_PID (and KAM_CTL for Kamailio).
start_server() {
    local dir=$2
    KAM_CTL=
    case $1 in
    edge | edge-*)
        edge_config "$dir/edge.toml" "$ADMIN_PORT"
        RUST_LOG=warn taskset -c "$SERVER_CPUS" "$(edge_bin "$1")" --config "$dir/edge.toml" \
            >"$dir/edge.out" 2>"$dir/edge.err" &
        ;;
    kamailio)
        KAM_CTL=$dir/ctl
        taskset -c "$SERVER_CPUS" kamailio -f perf/connections/kamailio.cfg \
            -A "UDP_LISTEN=udp:127.0.0.1:$UDP_PORT" -A "TLS_LISTEN=tls:127.0.0.1:$TLS_PORT" \
            -A "TLS_CERT=\"$CERT\"" -A "TLS_KEY=\"$KEY\"" -A "CS_URI=\"sip:127.0.0.1:$CS_PORT\"" \
            -A "CTL_SOCK=\"unix:$KAM_CTL\"" -A "MAX_CONNS=$((CONNS + 1000))" \
            -Y "$dir" -m "$KAM_SHM_MB" -M "$KAM_PKG_MB" -x tlsf -DD -E \
            >"$dir/kamailio.out" 2>"$dir/kamailio.err" &
        ;;
    *) die "unknown target '$1' (edge, edge-LABEL, kamailio)" ;;
    esac
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_listening "$SERVER_PID" "$TLS_PORT" "$1"
    wait_ready "$SERVER_PID" "$UDP_PORT" "$1"
}

# ------------------------------------------------------------- phases --
# Phase 1 for the running server: appends its figures to STEP.
phase_idle() {
    local dir=$1 out=$1/idle.out pid c0 c1 m0 m1 s0 s1 opened
    m0=$(pss_kb "$SERVER_PID") s0=$(shm_used) c0=$(ticks "$SERVER_PID")
    taskset -c "$CLIENT_CPUS" "$CONNLOAD" --target "127.0.0.1:$TLS_PORT" --tls --ca "$CA" \
        --connections "$CONNS" --sources "$SOURCES" --threads "$THREADS" --hold-s 3600 \
        >"$out" 2>"$dir/idle.err" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 3000); do
        grep -q '^held' "$out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "cpm-connload exited early; see $dir/idle.err"
        sleep 0.1
    done
    grep -q '^held' "$out" || die "connections not all open within 300 s"
    c1=$(ticks "$SERVER_PID")
    sleep 2
    m1=$(pss_kb "$SERVER_PID") s1=$(shm_used)
    opened=$(field "$out" opened)
    ((opened > 0)) || die "no connection opened; see $dir/idle.err"
    STEP+=" opened=$opened failed=$(field "$out" failed) hs_rate=$(field "$out" rate)"
    STEP+=" hs_us=$(((c1 - c0) * 10000 / opened)) bytes_per_conn=$(((m1 - m0) * 1024 / opened))"
    STEP+=" shm_per_conn=$(((s1 - s0) / opened))"
    stop_pid "$pid"
    sleep 2 # the server sees every connection close
}

# Phase 2 or 3 ($2: tls or udp) for the running server.
phase_invites() {
    local dir=$1 kind=$2 out=$1/$2.out c0 c1 ok args
    case $kind in
    tls) args=(--target "127.0.0.1:$TLS_PORT" --tls --ca "$CA" --connections "$PAIR_CONNS") ;;
    udp) args=(--target "127.0.0.1:$UDP_PORT" --udp --connections 4) ;;
    esac
    c0=$(ticks "$SERVER_PID")
    taskset -c "$CLIENT_CPUS" "$CONNLOAD" "${args[@]}" --threads 4 --sources 4 \
        --invites "$INVITES" >"$out" 2>"$dir/$kind.err" ||
        die "cpm-connload ($kind) failed; see $dir/$kind.err"
    c1=$(ticks "$SERVER_PID")
    ok=$(field "$out" ok)
    ((ok > 0)) || die "no INVITE answered 2xx over $kind; see $dir/$kind.err"
    STEP+=" ${kind}_ok=$ok ${kind}_of=$(field "$out" invites) ${kind}_rate=$(field "$out" rate)"
    STEP+=" ${kind}_us=$(awk -v c=$((c1 - c0)) -v n="$ok" 'BEGIN { printf "%.1f", c * 10000 / n }')"
}

# One round of target $1.
run_target() {
    local t=$1 round=$2 dir=$LOGDIR/$1-$2
    mkdir -p "$dir"
    start_server "$t" "$dir"
    STEP="STEP target=$t round=$round"
    phase_idle "$dir"
    phase_invites "$dir" tls
    phase_invites "$dir" udp
    stop_pid "$SERVER_PID"
    echo "$STEP" | tee -a "$RESULTS"
}

# The scale phase: SCALE_N idle connections over SCALE_PROCS edges.
phase_scale() {
    local dir=$LOGDIR/scale i pids=() clients=() per m0=0 m1=0 held=0 c pid
    mkdir -p "$dir"
    per=$(((SCALE_N + SCALE_PROCS - 1) / SCALE_PROCS))
    for i in $(seq 1 "$SCALE_PROCS"); do
        edge_config "$dir/edge-$i.toml" $((ADMIN_PORT + i))
        RUST_LOG=warn "$EDGE_BIN" --config "$dir/edge-$i.toml" >"$dir/edge-$i.out" 2>"$dir/edge-$i.err" &
        pids+=($!)
        PIDS+=($!)
    done
    for pid in "${pids[@]}"; do
        wait_listening "$pid" "$TLS_PORT" cpm-edge
    done
    sleep 1
    for pid in "${pids[@]}"; do m0=$((m0 + $(rss_kb "$pid"))); done
    for i in $(seq 1 "$SCALE_PROCS"); do
        "$CONNLOAD" --target "127.0.0.1:$TLS_PORT" --tls --ca "$CA" --connections "$per" \
            --sources 1 --source-base "127.1.$i.0" --threads 2 --hold-s 3600 \
            >"$dir/client-$i.out" 2>"$dir/client-$i.err" &
        clients+=($!)
        PIDS+=($!)
    done
    for i in $(seq 1 "$SCALE_PROCS"); do
        for _ in $(seq 1 6000); do
            grep -q '^held' "$dir/client-$i.out" 2>/dev/null && break
            kill -0 "${clients[i - 1]}" 2>/dev/null || die "client $i exited early; see $dir"
            sleep 0.1
        done
    done
    sleep 5
    for i in $(seq 1 "$SCALE_PROCS"); do
        m1=$((m1 + $(rss_kb "${pids[i - 1]}")))
        c=$(curl -s "http://127.0.0.1:$((ADMIN_PORT + i))/metrics" |
            awk '$1 == "cpm_edge_stream_connections" { print $2 }')
        held=$((held + ${c:-0}))
    done
    local opened=0 failed=0
    for i in $(seq 1 "$SCALE_PROCS"); do
        opened=$((opened + $(field "$dir/client-$i.out" opened)))
        failed=$((failed + $(field "$dir/client-$i.out" failed)))
    done
    echo "SCALE procs=$SCALE_PROCS asked=$((per * SCALE_PROCS)) opened=$opened failed=$failed held=$held" \
        "rss_kb_before=$m0 rss_kb_after=$m1 bytes_per_conn=$(((m1 - m0) * 1024 / (held > 0 ? held : 1)))" |
        tee -a "$RESULTS"
    for pid in "${clients[@]}" "${pids[@]}"; do stop_pid "$pid"; done
}

# ------------------------------------------------------------- report --
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Median of key $2 over the STEP lines of target $1.
med() {
    grep "^STEP target=$1 " "$RESULTS" | grep -o "\b$2=[^ ]*" | cut -d= -f2 | median
}

report() {
    {
        echo
        echo "| target | opened (of $CONNS) | bytes per idle TLS connection | Kamailio shm per connection | handshakes/s | CPU µs per handshake | CPU µs per INVITE/200 over TLS | pairs/s over TLS | CPU µs per pair over UDP | pairs/s over UDP |"
        echo "|---|---|---|---|---|---|---|---|---|---|"
        for t in "${TARGETS[@]}"; do
            echo "| $t | $(med "$t" opened) | $(med "$t" bytes_per_conn) | $(med "$t" shm_per_conn) | $(med "$t" hs_rate) | $(med "$t" hs_us) | $(med "$t" tls_us) | $(med "$t" tls_rate) | $(med "$t" udp_us) | $(med "$t" udp_rate) |"
        done
        echo
        echo "Medians over $ROUNDS rounds."
    } | tee -a "$RESULTS"
}

# --------------------------------------------------------------- main --
install_missing
[[ -x $EDGE_BIN && -x $CONNLOAD && -x $RESPONDER ]] ||
    cargo build --release --locked -q --bin cpm-edge --bin cpm-connload --bin cpm-cs-responder
make_certs
mkdir -p "$(dirname "$RESULTS")"
{
    echo "# perf/connections.sh $(date -u +%FT%TZ) on $(hostname): targets ${TARGETS[*]}"
    echo "# ROUNDS=$ROUNDS CONNS=$CONNS THREADS=$THREADS SOURCES=$SOURCES INVITES=$INVITES PAIR_CONNS=$PAIR_CONNS SERVER_CPUS=$SERVER_CPUS CLIENT_CPUS=$CLIENT_CPUS"
    echo "# edge $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty); $(kamailio -v 2>/dev/null | head -1 || true)"
} >>"$RESULTS"
taskset -c "$CLIENT_CPUS" "$RESPONDER" --listen "127.0.0.1:$CS_PORT" --quiet \
    >"$LOGDIR/responder.out" 2>"$LOGDIR/responder.err" &
PIDS+=($!)
wait_ready "$!" "$CS_PORT" cpm-cs-responder
for round in $(seq 1 "$ROUNDS"); do
    order=("${TARGETS[@]}")
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[i]}"); done
    fi
    for t in "${order[@]}"; do run_target "$t" "$round"; done
done
if ((ROUNDS)); then report; fi
if ((SCALE)); then phase_scale; fi
echo "$NAME: results in $RESULTS, logs in $LOGDIR"
