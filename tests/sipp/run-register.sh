#!/usr/bin/env bash
# tests/sipp/run-register.sh: the CI check of cpm-edge's registrar with SIPp
# as the registering clients (RFC 3261 §10, digest per RFC 8760).
#
# Starts cpm-edge with [registrar] for example.net (credentials: HA1 values
# of N generated users, perf/registrar/gen-users.py; a redb store in
# LOGDIR), runs perf/registrar/reg-auth.xml (REGISTER -> 401 -> REGISTER
# with SIPp's [authentication] -> 200) for N users, and passes only if SIPp
# exits 0 with N successful calls and 0 failed, the edge's /metrics show N
# bindings, and after a restart of the edge (same store) N bindings again.
#
# MD5 only: Debian's SIPp 3.6.1 computes MD5 and AKAv1-MD5 digests and exits
# on the first challenge it cannot answer, so this edge lists MD5 first
# ([registrar] algorithms = ["MD5", "SHA-256"]); SHA-256 is exercised by
# tests/registrar.rs with an independent implementation.
#
# With TRANSPORT=tn (SIPp over TCP, one connection per registration,
# closed when its call ends) the edge has [tcp] enabled, each binding
# names its connection, and each connection's end takes its binding with
# it (RFC 5626 flow failure): the run passes only if, after SIPp's N
# successful registrations, /metrics count N bindings unbound for their
# ended connection and hold 0 bindings.
#
# Environment: N [2000] RATE [500] EDGE_BIN [target/release/cpm-edge]
#   TRANSPORT [u1] (SIPp's -t: u1, or tn for TCP)
#   SIPP [sipp] PORT [25560] ADMIN [28580] SIPP_PORT [25570] LOGDIR [mktemp]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
N=${N:-2000}
RATE=${RATE:-500}
SIPP=${SIPP:-sipp}
PORT=${PORT:-25560}
ADMIN=${ADMIN:-28580}
SIPP_PORT=${SIPP_PORT:-25570}
TRANSPORT=${TRANSPORT:-u1}
# SIPp's default socket bound (50 000) is refused past the descriptor
# limit; a connection per call needs only the calls in flight (-l 200).
MAX_SOCKET=
[[ "$TRANSPORT" == u1 ]] || MAX_SOCKET="-max_socket 2048"
EDGE_BIN=${EDGE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cpm-edge}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-sipp-register.XXXXXX)}
mkdir -p "$LOGDIR"
NAME=run-register
# shellcheck source=perf/lib.sh
source "$ROOT/perf/lib.sh"

command -v "$SIPP" >/dev/null || die "'$SIPP' not found (Debian: sip-tester)"
[[ -x "$EDGE_BIN" ]] || die "edge binary $EDGE_BIN not found (cargo build --release --bin cpm-edge)"
for p in "$PORT" "$SIPP_PORT"; do
    ! udp_port_bound "$p" || die "UDP port $p is already in use"
done

python3 perf/registrar/gen-users.py "$N" "$LOGDIR/users" >/dev/null
cat >"$LOGDIR/edge.toml" <<TOML
[listen]
addr = "127.0.0.1:$PORT"
[workers]
count = 1
[admin]
bind = "127.0.0.1:$ADMIN"
[health]
enabled = false
[log]
level = "warn"
$( [[ "$TRANSPORT" == u1 ]] || printf '[tcp]\nenabled = true\n' )
[[shard]]
name = "cs1"
addr = "127.0.0.1:27001"
[registrar]
domains = ["example.net"]
store = "$LOGDIR/location.redb"
credentials_file = "$LOGDIR/users/credentials.txt"
algorithms = ["MD5", "SHA-256"]
TOML

EDGE_PID=
start_edge() {
    "$EDGE_BIN" --config "$LOGDIR/edge.toml" >>"$LOGDIR/edge.log" 2>&1 &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_ready "$EDGE_PID" "$PORT" cpm-edge
}
stop_edge() {
    kill -TERM "$EDGE_PID"
    wait "$EDGE_PID" 2>/dev/null || true
}
# The value of an unlabelled metric in the edge's /metrics.
metric() {
    python3 - "$ADMIN" "$1" <<'PY'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
for _ in range(50):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        break
    except OSError:
        import time; time.sleep(0.1)
else:
    sys.exit("no /metrics")
for line in text.splitlines():
    if line.startswith(name + " "):
        print(line.split()[1]); sys.exit(0)
sys.exit(f"{name} not in /metrics")
PY
}

start_edge
(cd "$LOGDIR" && exec "$SIPP" "127.0.0.1:$PORT" -sf "$ROOT/perf/registrar/reg-auth.xml" \
    -key ruri sip:example.net -inf "$LOGDIR/users/users.csv" -i 127.0.0.1 -p "$SIPP_PORT" -t "$TRANSPORT" $MAX_SOCKET \
    -m "$N" -r "$RATE" -l 200 -nostdin -timeout 120s -timeout_error -recv_timeout 10000 \
    -trace_stat -stf "$LOGDIR/stat.csv" -fd 1 -trace_err -error_file "$LOGDIR/errors.log" \
    </dev/null >"$LOGDIR/sipp.out" 2>&1) &
SP=$!
PIDS+=("$SP")
rc=0
wait "$SP" || rc=$?
col() {
    awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { last = $0 } END { split(last, f, ";"); print f[c] }' "$1"
}
ok=$(col "$LOGDIR/stat.csv" SuccessfulCall\(C\))
failed=$(col "$LOGDIR/stat.csv" FailedCall\(C\))
echo "run-register: SIPp exit $rc, $ok successful, $failed failed registrations (MD5 digest, -t $TRANSPORT)"
[[ "$rc" == 0 && "$ok" == "$N" && "$failed" == 0 ]] ||
    { tail -20 "$LOGDIR/errors.log" 2>/dev/null; die "SIPp registrations failed; logs in $LOGDIR"; }
if [[ "$TRANSPORT" != u1 ]]; then
    # Every registration's connection has ended: so have its bindings.
    ended='cpm_edge_registrar_store_total{event="connection_ended"}'
    for _ in $(seq 100); do
        u=$(metric "$ended")
        b=$(metric cpm_edge_location_bindings)
        [[ "$u" == "$N" && "$b" == 0 ]] && break
        sleep 0.1
    done
    [[ "$u" == "$N" && "$b" == 0 ]] ||
        die "after the connections ended: $u bindings unbound (not $N), $b held (not 0)"
    echo "run-register: PASS ($N users registered with digest MD5 over TCP (-t $TRANSPORT) through SIPp; all $u bindings unbound as their connections ended)"
    exit 0
fi
b=$(metric cpm_edge_location_bindings)
[[ "$b" == "$N" ]] || die "the edge holds $b bindings, not $N"
stop_edge
start_edge
b=$(metric cpm_edge_location_bindings)
[[ "$b" == "$N" ]] || die "after a restart the edge holds $b bindings, not $N"
echo "run-register: PASS ($N users registered with digest MD5 through SIPp; $b bindings kept across a restart)"
