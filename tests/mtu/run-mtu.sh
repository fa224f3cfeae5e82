#!/usr/bin/env bash
# tests/mtu/run-mtu.sh: datagrams larger than the path MTU cross the edge.
#
# The edge sends IPv4 with DF and no local fragmentation (IP_PMTUDISC_DO:
# no hashed IP ID per send) and resends what the MTU refuses (EMSGSIZE)
# under the kernel's default mode, fragmented. Loopback's 64 KiB MTU never
# refuses anything, so this runs the edge and tests/mtu/check.py (UAC + four
# CS shards) in a network namespace of its own whose loopback has a 1500-byte
# MTU, once per io backend. Needs root (ip netns); the namespace and every
# process started are removed on exit.
#   EDGE_BIN [target/release/cpm-edge]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
EDGE_BIN=${EDGE_BIN:-${CARGO_TARGET_DIR:-target}/release/cpm-edge}
NS=cpm-mtu-$$
LOG=$(mktemp /tmp/cpm-mtu.XXXXXX)
EDGE_PID=

cleanup() {
    if [[ -n "$EDGE_PID" ]]; then kill "$EDGE_PID" 2>/dev/null || true; wait "$EDGE_PID" 2>/dev/null || true; fi
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo mtu 1500 up

for io in mmsg uring; do
    ip netns exec "$NS" "$EDGE_BIN" --io "$io" >"$LOG" 2>&1 &
    EDGE_PID=$!
    for _ in $(seq 1 100); do
        ip netns exec "$NS" ss -Hlun 'sport = :5060' | grep -q . && break
        sleep 0.05
    done
    echo "mtu: edge --io $io in netns $NS (lo mtu 1500)"
    if ! ip netns exec "$NS" python3 tests/mtu/check.py; then
        echo "--- edge log ---"; tail -20 "$LOG"
        exit 1
    fi
    kill "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true
    EDGE_PID=
done
rm -f "$LOG"
echo "mtu: ok"
