#!/usr/bin/env bash
# The project's test command (README "The two commands", called by .ci/run).
# Installs what the tests need on a fresh machine, then runs: formatting and
# lint gates, unit + integration tests (real UDP sockets, both io backends),
# the SIPp end-to-end run through the edge, and the fuzz target build.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

if ! command -v sipp >/dev/null 2>&1; then
  step "installing SIPp (Debian sip-tester)"
  apt-get update -qq
  apt-get install -y -qq sip-tester >/dev/null
fi

if [ ! -x /usr/sbin/bearerbox ] || [ ! -x /usr/lib/kannel/test/fakesmsc ]; then
  step "installing Kannel (kannel, kannel-extras: fakesmsc) for the SMS interworking test"
  apt-get update -qq
  apt-get install -y -qq kannel kannel-extras >/dev/null
fi

if ! command -v stunnel >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  step "installing stunnel4 and openssl (TLS in front of SIPp, whose Debian build has no TLS)"
  apt-get update -qq
  apt-get install -y -qq stunnel4 openssl >/dev/null
fi

if ! command -v ip >/dev/null 2>&1 || ! command -v ss >/dev/null 2>&1; then
  step "installing iproute2 (ip netns, ss) for the path-MTU test"
  apt-get update -qq
  apt-get install -y -qq iproute2 >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings (incompatible_msrv against rust-version)"
cargo clippy --locked --all-targets -q -- -D warnings

step "cargo doc --no-deps, warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps -q

step "cargo test (unit, routing, layering, UDP integration, io backends, trust boundary)"
cargo test --locked -q

step "release build"
cargo build --locked --release -q --bins

step "SIPp: uac-cpm -> cpm-edge -> uas-cpm"
EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" tests/sipp/run-sipp.sh

step "SIPp over TCP (-t t1): uac-cpm -> cpm-edge ([tcp] enabled) -> uas-cpm over UDP"
CALLS=2000 RATE=400 UAC_TRANSPORT=t1 EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" \
  EDGE_ARGS="--config tests/sipp/tcp.toml" tests/sipp/run-sipp.sh

step "SIPp over TLS (-t t1 into stunnel, TLS to cpm-edge's [tls] port) -> uas-cpm over UDP"
CALLS=2000 RATE=400 EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" tests/sipp/run-sipp-tls.sh

step "SIPp: audio+video+message offer, media policy strips video (seed 5.2.3.7)"
CALLS=1000 RATE=300 EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" \
  UAC_XML=tests/sipp/uac-cpm-av.xml UAS_XML=tests/sipp/uas-cpm-av.xml \
  EDGE_ARGS="--config tests/sipp/policy-no-video.toml" tests/sipp/run-sipp.sh

step "SIPp: REGISTER with digest (MD5) through the edge's registrar, bindings kept across a restart"
EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" tests/sipp/run-register.sh

step "SIPp over TCP: REGISTER with digest on a connection per user (-t tn), then on one for all (-t t1); each connection's end unbinds what was on it"
TRANSPORT=tn EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" tests/sipp/run-register.sh
TRANSPORT=t1 EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" tests/sipp/run-register.sh

step "the system demo: cpm-system + cpm-demo (Appendix C.1 through the edge and CS shards)"
SYSTEM_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-system" \
  DEMO_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-demo" tests/system/run-demo.sh

step "path MTU: datagrams larger than a 1500-byte MTU cross the edge fragmented (netns)"
EDGE_BIN="${CARGO_TARGET_DIR:-target}/release/cpm-edge" tests/mtu/run-mtu.sh

step "fuzz targets build"
if rustup toolchain list 2>/dev/null | grep -q nightly && cargo +nightly fuzz --version >/dev/null 2>&1; then
  (cd fuzz && cargo +nightly fuzz build -O)
else
  # Without cargo-fuzz (or nightly) the target still has to compile.
  cargo build --locked -q --manifest-path fuzz/Cargo.toml
fi

step "all tests passed"
