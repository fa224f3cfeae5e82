#!/usr/bin/env bash
# perf/pgo-build.sh: a profile-guided (PGO) release build of cpm-edge.
#
# 1. builds an instrumented edge (-Cprofile-generate) in target/pgo-gen;
# 2. trains it on real traffic through real sockets: perf/run-load.sh on
#    both io backends (the rig's CPM INVITE/200 load, TRAIN_S seconds each)
#    and, when SIPp is installed, tests/sipp/run-sipp.sh (INVITE/100/180/
#    200/ACK/BYE/200 dialogs with Record-Route and Route popping);
# 3. merges the profiles (llvm-profdata from rustup's llvm-tools, installed
#    when missing) and builds the edge with -Cprofile-use into target/pgo.
#
# The result is target/pgo/release/cpm-edge, the same code as the normal
# release build with the compiler's layout and inlining steered by where
# the time went in training. The training traffic is the benchmark's own
# message mix plus SIPp's dialogs: a deployment whose traffic differs
# (other methods, other header sets) should train on a capture of its own.
#   perf/pgo-build.sh        Environment: TRAIN_S [6]  SIPP_CALLS [2000]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TRAIN_S=${TRAIN_S:-6}
SIPP_CALLS=${SIPP_CALLS:-2000}
GEN=$ROOT/target/pgo-gen
USE=$ROOT/target/pgo
DATA=$ROOT/target/pgo-data

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x "$PROFDATA" ]]; then
    echo "pgo-build: installing rustup's llvm-tools (llvm-profdata)" >&2
    rustup component add llvm-tools >&2
fi

rm -rf "$DATA"
mkdir -p "$DATA"
echo "pgo-build: instrumented build into $GEN" >&2
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$GEN cargo build --release -q --bin cpm-edge
# The build scripts were instrumented too and wrote their profiles here
# while they ran; the edge has not run yet, so none of these is its own.
rm -f "$DATA"/*.profraw
# The generator and responders are the normal release build: only the
# edge's profile is wanted.
cargo build --release -q --bins

for io in uring mmsg; do
    echo "pgo-build: training on perf/run-load.sh ($io, ${TRAIN_S} s)" >&2
    EDGE_BIN=$GEN/release/cpm-edge BUILD=0 IO=$io WINDOW=64 DURATION=$TRAIN_S WARMUP=1 \
        perf/run-load.sh 2>"$DATA/train-$io.log" | grep -E '^ok/s' ||
        { echo "pgo-build: training run failed, see $DATA/train-$io.log" >&2; exit 1; }
done
if command -v sipp >/dev/null; then
    echo "pgo-build: training on SIPp dialogs ($SIPP_CALLS calls)" >&2
    EDGE_BIN=$GEN/release/cpm-edge CALLS=$SIPP_CALLS tests/sipp/run-sipp.sh | tail -1
else
    echo "pgo-build: sipp not installed: trained on the load generator's traffic only" >&2
fi

shopt -s nullglob
raws=("$DATA"/*.profraw)
[[ ${#raws[@]} -gt 0 ]] || { echo "pgo-build: no profile was written in $DATA" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "${raws[@]}"
echo "pgo-build: optimized build into $USE" >&2
RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata" CARGO_TARGET_DIR=$USE cargo build --release -q --bin cpm-edge
echo "pgo-build: $USE/release/cpm-edge"
