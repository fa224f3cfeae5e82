#!/usr/bin/env bash
# tests/sipp/run-sipp-tls.sh: SIPp's UAC through the edge's TLS listener.
#
# Debian's SIPp (sip-tester) is built without OpenSSL ("To use a TLS
# transport you must compile SIPp with OpenSSL"), and its source package is
# not served by the archive CI reaches, so `-t l1` cannot run in CI. The
# UAC runs over TCP (-t t1) into stunnel (Debian's stunnel4, OpenSSL),
# which opens one TLS connection to the edge's [tls] port, verifying its
# certificate chain and name: every byte SIPp sends or receives crosses a
# real TLS session with the edge; the UAS shards stay on UDP. The
# certificates (a CA and a leaf for edge.example.net, EC P-256) are made
# here with openssl.
#
# Environment: as tests/sipp/run-sipp.sh (CALLS, RATE, EDGE_BIN, ...), and
#   TLS_PORT [15061]  the edge's [tls] port
#   BRIDGE [15062]    stunnel's TCP port for the UAC
# Every process started here is stopped by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TLS_PORT=${TLS_PORT:-15061}
BRIDGE=${BRIDGE:-15062}
DIR=$(mktemp -d /tmp/cpm-sipp-tls.XXXXXX)
STUNNEL_PID=
stop() {
    if [[ -n "$STUNNEL_PID" ]]; then
        kill -TERM "$STUNNEL_PID" 2>/dev/null || true
        wait "$STUNNEL_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap stop EXIT

command -v stunnel >/dev/null || { apt-get update -qq && apt-get install -y -qq stunnel4 >/dev/null; }
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }

ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -subj "/CN=cpm test CA" -days 2 -keyout "$DIR/ca.key" -out "$DIR/ca.pem"
ec -subj /CN=edge.example.net -keyout "$DIR/edge.key" -out "$DIR/edge.csr"
printf 'subjectAltName=DNS:edge.example.net\nbasicConstraints=CA:FALSE\n' >"$DIR/ext.cnf"
openssl x509 -req -in "$DIR/edge.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 2 -extfile "$DIR/ext.cnf" -out "$DIR/edge.crt" 2>/dev/null

cat >"$DIR/tls.toml" <<EOF
# SIP over TLS from clients (tests/sipp/run-sipp-tls.sh).
[tls]
enabled = true
port = $TLS_PORT
cert = "$DIR/edge.crt"
key = "$DIR/edge.key"
EOF

cat >"$DIR/stunnel.conf" <<EOF
foreground = yes
pid =
output = $DIR/stunnel.log
[sip-tls]
client = yes
accept = 127.0.0.1:$BRIDGE
connect = 127.0.0.1:$TLS_PORT
CAfile = $DIR/ca.pem
verifyChain = yes
checkHost = edge.example.net
sslVersionMin = TLSv1.2
EOF
stunnel "$DIR/stunnel.conf" &
STUNNEL_PID=$!

# stunnel connects to the edge when SIPp connects to it: the edge is up by
# then (run-sipp.sh waits for it before starting the UAC).
UAC_TRANSPORT=t1 EDGE_TARGET=127.0.0.1:$BRIDGE EDGE_ARGS="--config $DIR/tls.toml" \
    "$ROOT/tests/sipp/run-sipp.sh"
# The calls crossed TLS: stunnel verified the edge's chain and name.
grep -q "Certificate accepted" "$DIR/stunnel.log" ||
    { cat "$DIR/stunnel.log" >&2; echo "run-sipp-tls: FAIL: stunnel never verified the edge" >&2; exit 1; }
echo "run-sipp-tls: the UAC's calls went over TLS (stunnel verified the edge's certificate)" >&2
