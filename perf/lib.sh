# perf/lib.sh: process choreography shared by perf/run-load.sh and
# tests/sipp/run-sipp.sh (sourced, not run). The caller sets NAME (message
# prefix) and LOGDIR, and appends every PID it starts to PIDS.

die() {
    echo "$NAME: FAIL: $*" >&2
    exit 1
}

# Stop every started process by PID: politely first (the tools print their
# counters on SIGTERM), then insist.
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        reap "$pid" 30
    done
    PIDS=()
}

# Give process $1 (already asked to end) $2 tenths of a second, then KILL
# it; collect it if it is our child.
reap() {
    for _ in $(seq 1 "$2"); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# "utime stime" of process $1 and all its descendants in clock ticks (all
# threads; Kamailio's UDP worker is a child process). The comm field may
# contain spaces, so cut at the last ')' first: field 14 (utime) becomes $12.
cpu_ticks() {
    local s u st child cu cs
    s=$(cat "/proc/$1/stat" 2>/dev/null) || die "process $1 is gone"
    s=${s##*) }
    read -r u st < <(awk '{ print $12, $13 }' <<<"$s")
    for child in $(pgrep -P "$1" 2>/dev/null); do
        read -r cu cs < <(cpu_ticks "$child")
        u=$((u + cu)) st=$((st + cs))
    done
    echo "$u $st"
}

# Is a UDP socket bound to local port $1 (any address)? /proc/net/udp has the
# port in hex as the second half of local_address.
udp_port_bound() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/udp
}

# Wait until live process $1 ($3 in messages) has port $2 up by check $4
# (udp_port_bound or tcp_listening), at most $5 seconds.
wait_port() {
    local pid=$1 port=$2 name=$3 check=$4 secs=$5
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited during start-up; logs in $LOGDIR"
        "$check" "$port" && return 0
        sleep 0.1
    done
    die "$name did not bring up port $port ($check) within $secs s; logs in $LOGDIR"
}

# Wait until live process $1 has bound UDP port $2 (10 s).
wait_ready() { wait_port "$1" "$2" "$3" udp_port_bound 10; }

# Stop one process we started (TERM, then KILL after 5 s) and forget it.
# Its children (Kamailio's) are collected first and stopped by their PIDs
# too, in case the main process dies before it can end them.
stop_pid() {
    local pid=$1 p keep=() kids
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    reap "$pid" 50
    for p in $kids; do reap "$p" 20; done
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Is a TCP socket listening on local port $1 (any address)? State 0A in
# /proc/net/tcp.
tcp_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 }
        END { exit !found }' /proc/net/tcp
}

# Wait until live process $1 listens on TCP port $2 (60 s).
wait_listening() { wait_port "$1" "$2" "$3" tcp_listening 60; }
