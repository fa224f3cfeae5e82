#!/usr/bin/env bash
# tuning/measure.sh: the measurable effects of the host settings on this rig.
#
# 1. Receive buffer (`workers.socket_rcvbuf`, bounded by net.core.rmem_max
#    for a process without CAP_NET_ADMIN): an open-loop burst ~20 % above
#    the edge's saturation (RATE, BURST_S seconds, overload shedding on as
#    deployed) with the kernel default (212 992 bytes) against the edge's
#    8 MiB; prints what became of the valid INVITEs (200, 503 from the
#    edge's shedding, lost without an answer) and the kernel's UDP
#    RcvbufErrors (whole host) over each run.
# 2. net.core.netdev_max_backlog: loopback delivery goes through the
#    per-CPU backlog too; prints softnet drops (/proc/net/softnet_stat,
#    column 2) during each run, so an operator sees whether the backlog ever
#    overflowed at this rate.
# Everything runs through perf/run-load.sh (processes stopped by PID).
# Environment: RATE [66000] valid INVITE/s  BURST_S [2]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATE=${RATE:-66000}
BURST_S=${BURST_S:-2}
cargo build --release -q --bins
CFG=$(mktemp /tmp/cpm-tuning.XXXXXX.toml)
trap 'rm -f "$CFG"' EXIT

rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
softnet_drops() {
    local s=0 d
    for d in $(awk '{ print $2 }' /proc/net/softnet_stat); do s=$((s + 16#$d)); done
    echo "$s"
}

echo "| workers.socket_rcvbuf | INVITEs sent | answered 200 | answered 503 (shed) | lost (no answer) | UDP RcvbufErrors | softnet backlog drops |"
echo "|---|---|---|---|---|---|---|"
for rcvbuf in 212992 8388608; do
    # The embedded default with only the receive buffer changed.
    target/release/cpm-edge --print-default-config |
        sed "s/^\[workers\]$/[workers]\nsocket_rcvbuf = $rcvbuf/" >"$CFG"
    e0=$(rcvbuf_errors) d0=$(softnet_drops)
    line=$(BUILD=0 MODE=open RATE="$RATE" DURATION="$BURST_S" WARMUP=1 IO=mmsg \
        EDGE_ARGS="--config $CFG" perf/run-load.sh 2>/dev/null | grep -E '^(RESULT|LOAD) ' | tr '\n' ' ' || true)
    e1=$(rcvbuf_errors) d1=$(softnet_drops)
    f() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p" | head -1; }
    echo "| $rcvbuf | $(f sent) | $(f ok) | $(f non2xx) | $(f lost) ($(f loss_pct) %) | $((e1 - e0)) | $((d1 - d0)) |"
done
