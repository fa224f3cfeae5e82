#!/usr/bin/env bash
# Instructions per message of the pure fast path (scan + decide + rewrite),
# measured with callgrind: stable on a noisy machine, so before/after figures
# of an optimisation can be compared exactly.
#   perf/icount.sh [invite|message|response] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
which=${1:-invite}
n=${2:-20000}
cargo build --release --bin cpm-icount -q
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
base=$(count target/release/cpm-icount none 0)
full=$(count target/release/cpm-icount "$which" "$n")
echo "$which: $(( (full - base) / n )) instructions per message (callgrind, N=$n)"
