#!/usr/bin/env bash
# perf/iwf.sh: CPM pager-mode messages per second through the SMS
# interworking path on this box (seed 5.3.1.1.1): SIPp (alice) -> cpm-edge
# -> alice's PF -> cpm-edge -> erin's PF (erin not registered, prefers SMS)
# -> cpm-edge -> cpm-iwf -> Kannel smsbox -> bearerbox -> fakesmsc (the
# SMSC). Every process on loopback, started here and stopped by PID.
#
# Per offered rate (RATES, DURATION s each; SIPp -r RATE -m RATE*DURATION):
#   ok / failed   SIPp's successful (202) and failed calls;
#   delivered     messages fakesmsc logged as received ("Got message");
#   achieved/s    delivered / seconds from SIPp's start to the last one;
#   cpu_us/msg    utime+stime of edge + CS + IWF + bearerbox + smsbox over
#                 the step, per delivered message; then each one's share.
# A step passes with 0 failed calls and every message delivered.
#
# Environment [defaults]: RATES ["100 200 400 800"] DURATION [5] INSTALL [1]
#   BIN [target/release] LOGDIR [mktemp] RESULTS [perf/results/iwf-<UTC>.txt]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATES=${RATES:-"100 200 400 800"}
DURATION=${DURATION:-5}
INSTALL=${INSTALL:-1}
BIN=${BIN:-$ROOT/target/release}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/cpm-iwf.XXXXXX)}
RESULTS=${RESULTS:-$ROOT/perf/results/iwf-$(date -u +%F-%H%M).txt}
EDGE=25160 CS1=27101 CS2=27102 IWF=25190 SIPP_PORT=25170
K_ADMIN=23100 K_BOX=23101 K_SMSC=23110 K_SEND=23113
PIDS=()

log() { printf 'iwf: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

pkgs=()
command -v sipp >/dev/null || pkgs+=(sip-tester)
[[ -x /usr/sbin/bearerbox && -x /usr/lib/kannel/test/fakesmsc ]] || pkgs+=(kannel kannel-extras)
if ((${#pkgs[@]})); then
    [[ "$INSTALL" == 1 ]] || die "missing: ${pkgs[*]} (or INSTALL=1)"
    log "installing ${pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
for b in cpm-edge cpm-cs cpm-iwf; do
    [[ -x "$BIN/$b" ]] || die "missing $BIN/$b (cargo build --release --bins)"
done

wait_tcp() { # port what
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 never listened on $1"
}
wait_udp() { # port what
    for _ in $(seq 1 100); do
        ss -Hlun "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    die "$2 never bound UDP $1"
}
cpu_ticks() { # the pids' utime+stime, in ticks
    local t=0 p
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}

mkdir -p "$LOGDIR"
cd "$LOGDIR"
mkdir -p spool
cat >kannel.conf <<EOF
group = core
admin-port = $K_ADMIN
admin-password = adm
smsbox-port = $K_BOX
log-file = "$LOGDIR/bearerbox.log"
log-level = 2
box-allow-ip = "127.0.0.1"
admin-allow-ip = "127.0.0.1"
store-type = spool
store-location = "$LOGDIR/spool"
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake1
port = $K_SMSC
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = $K_BOX
sendsms-port = $K_SEND
sendsms-interface = 127.0.0.1
log-file = "$LOGDIR/smsbox.log"
log-level = 2

group = sendsms-user
username = iwf
password = iwf-secret
concatenation = true
max-messages = 10
EOF
# The two shards, as both the edge and the Conversation Servers list them.
SHARDS="[[shard]]
name = \"cs1\"
addr = \"127.0.0.1:$CS1\"
[[shard]]
name = \"cs2\"
addr = \"127.0.0.1:$CS2\""
cat >edge.toml <<EOF
[listen]
addr = "127.0.0.1:$EDGE"
[workers]
count = 1
[admin]
bind = "127.0.0.1:28188"
[health]
enabled = false
[log]
level = "warn"
$SHARDS
[[iwf]]
service = "sms"
addr = "127.0.0.1:$IWF"
EOF
cat >cs.toml <<EOF
[server]
edges = ["127.0.0.1:$EDGE"]
terminating = "registered"
[admin]
bind = ""
$SHARDS
[[user]]
id = "sip:alice@example.net"
[[user]]
id = "sip:erin@example.net"
when_unregistered = "sms"
msisdn = "+447700900123"
EOF
cat >iwf.toml <<EOF
[sip]
listen = "127.0.0.1:$IWF"
edges = ["127.0.0.1:$EDGE"]
sender = "+447700900000"
queue = 4096
[kannel]
sendsms = "127.0.0.1:$K_SEND"
username = "iwf"
password = "iwf-secret"
EOF

/usr/sbin/bearerbox kannel.conf >bearerbox.out 2>&1 &
BB=$!; PIDS+=("$BB")
wait_tcp "$K_SMSC" bearerbox
/usr/sbin/smsbox kannel.conf >smsbox.out 2>&1 &
SB=$!; PIDS+=("$SB")
/usr/lib/kannel/test/fakesmsc -H 127.0.0.1 -r "$K_SMSC" -i 1 -m 0 x >fakesmsc.out 2>&1 &
PIDS+=("$!")
wait_tcp "$K_SEND" smsbox
RUST_LOG=warn "$BIN/cpm-edge" --config edge.toml >edge.out 2>&1 &
ED=$!; PIDS+=("$ED")
RUST_LOG=warn "$BIN/cpm-cs" --config cs.toml --all --no-sync >cs.out 2>&1 &
CS=$!; PIDS+=("$CS")
RUST_LOG=warn "$BIN/cpm-iwf" --config iwf.toml >iwf.out 2>&1 &
IW=$!; PIDS+=("$IW")
wait_udp "$EDGE" cpm-edge
wait_udp "$CS2" cpm-cs
wait_udp "$IWF" cpm-iwf

delivered() { grep -c "Got message [0-9]*: <[^>]" fakesmsc.out || true; } # (an empty <> is the CRLF ending the text: fakesmsc is line-based)
col() { head -1 "$1" | tr ';' '\n' | grep -n "^$2\$" | cut -d: -f1; } # csv column
mkdir -p "$(dirname "$RESULTS")"
printf '# perf/iwf.sh %s UTC, RATES="%s" DURATION=%s\n' "$(date -u +%FT%T)" "$RATES" "$DURATION" >>"$RESULTS"
ANY_FAILED=0
for rate in $RATES; do
    n=$((rate * DURATION))
    before=$(delivered)
    c0=$(cpu_ticks "$ED" "$CS" "$IW" "$BB" "$SB")
    e0=$(cpu_ticks "$ED") s0=$(cpu_ticks "$CS") i0=$(cpu_ticks "$IW") k0=$(cpu_ticks "$BB" "$SB")
    t0=$(date +%s.%N)
    rc=0
    sipp 127.0.0.1:"$EDGE" -sf "$ROOT/perf/iwf/uac-message.xml" -r "$rate" -m "$n" -l 2000 \
        -p "$SIPP_PORT" -i 127.0.0.1 -t u1 -nostdin -timeout "$((DURATION + 30))s" -timeout_error \
        -trace_stat -stf "$LOGDIR/sipp-$rate.csv" -fd 1 >"sipp-$rate.out" 2>&1 || rc=$?
    # The SMS behind the last 202 may still be on its way to the SMSC.
    last=$before t_last=$t0
    for _ in $(seq 1 100); do
        now=$(delivered)
        if ((now > last)); then last=$now; t_last=$(date +%s.%N); fi
        ((now - before >= n)) && break
        sleep 0.1
    done
    c1=$(cpu_ticks "$ED" "$CS" "$IW" "$BB" "$SB")
    e1=$(cpu_ticks "$ED") s1=$(cpu_ticks "$CS") i1=$(cpu_ticks "$IW") k1=$(cpu_ticks "$BB" "$SB")
    got=$((last - before))
    stats=$(tail -1 "sipp-$rate.csv" 2>/dev/null || true)
    okn=$(echo "$stats" | cut -d';' -f"$(col "sipp-$rate.csv" 'SuccessfulCall(C)')")
    failn=$(echo "$stats" | cut -d';' -f"$(col "sipp-$rate.csv" 'FailedCall(C)')")
    hz=$(getconf CLK_TCK)
    line=$(awk -v r="$rate" -v n="$n" -v ok="$okn" -v f="$failn" -v got="$got" -v t0="$t0" -v t1="$t_last" \
        -v c="$((c1 - c0))" -v hz="$hz" -v rc="$rc" -v e="$((e1 - e0))" -v s="$((s1 - s0))" \
        -v i="$((i1 - i0))" -v k="$((k1 - k0))" 'BEGIN{
        per = got > 0 ? 1e6 / hz / got : 0;
        el = t1 - t0; ach = (el > 0 && got > 0) ? got / el : 0;
        cpu = got > 0 ? c / hz * 1e6 / got : 0;
        printf "STEP rate=%s calls=%s ok=%s failed=%s delivered=%s sipp_exit=%s achieved_per_s=%.0f cpu_us_per_msg=%.0f edge_us=%.0f cs_us=%.0f iwf_us=%.0f kannel_us=%.0f pass=%d",
            r, n, ok, f, got, rc, ach, cpu, e * per, s * per, i * per, k * per, (f == 0 && got == n) }')
    echo "$line" | tee -a "$RESULTS"
    [[ "$line" == *"pass=1"* ]] || ANY_FAILED=1
done
log "done; results in $RESULTS, logs in $LOGDIR"
((ANY_FAILED == 0)) || exit 3
