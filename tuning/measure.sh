#!/usr/bin/env bash
# tuning/measure.sh: the measurable effects of the host settings on this rig.
#
# 1. Receive buffer (`workers.socket_rcvbuf`, bounded by net.core.rmem_max
#    for a process without CAP_NET_ADMIN): an open-loop burst above the
#    edge's saturation (RATE, BURST_S seconds) with the kernel default
#    (212 992 bytes) against the edge's 8 MiB; prints valid-request loss and
#    the kernel's UDP RcvbufErrors over each run. A bigger buffer absorbs a
#    burst that a small one drops.
# 2. net.core.netdev_max_backlog: loopback delivery goes through the
#    per-CPU backlog too; prints softnet drops (/proc/net/softnet_stat,
#    column 2) during each run, so an operator sees whether the backlog ever
#    overflowed at this rate.
# Everything runs through perf/run-load.sh (processes stopped by PID).
# Environment: RATE [150000] valid INVITE/s  BURST_S [3]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATE=${RATE:-150000}
BURST_S=${BURST_S:-3}
cargo build --release -q --bins
CFG=$(mktemp /tmp/cpm-tuning.XXXXXX.toml)
trap 'rm -f "$CFG"' EXIT

rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp; }
softnet_drops() { awk '{ s += strtonum("0x" $2) } END { print s }' /proc/net/softnet_stat; }

echo "| workers.socket_rcvbuf | loss of valid INVITEs | UDP RcvbufErrors | softnet backlog drops | ok/s |"
echo "|---|---|---|---|---|"
for rcvbuf in 212992 8388608; do
    # The embedded default with only the receive buffer changed.
    target/release/cpm-edge --print-default-config |
        sed "s/^\[workers\]$/[workers]\nsocket_rcvbuf = $rcvbuf/" >"$CFG"
    e0=$(rcvbuf_errors) d0=$(softnet_drops)
    line=$(BUILD=0 MODE=open RATE="$RATE" DURATION="$BURST_S" WARMUP=1 IO=mmsg \
        EDGE_ARGS="--config $CFG" perf/run-load.sh 2>/dev/null | grep '^LOAD ' || true)
    e1=$(rcvbuf_errors) d1=$(softnet_drops)
    f() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p"; }
    echo "| $rcvbuf | $(f loss_pct) % | $((e1 - e0)) | $((d1 - d0)) | $(f ok_per_s) |"
done
