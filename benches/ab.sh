#!/usr/bin/env bash
# A/B of engine switches in one run on one machine: the decode bench run alternately with
# each variant's environment, ROUNDS rounds, printing its decode lines per run.
# Usage (from the repository root on the GPU machine, the bench binary at $DECODE or
# .bench/decode):
#   bash benches/ab.sh ROUNDS "VAR=1" "VAR=0 OTHER=1" ... [-- decode-bench-args]
# e.g. bash benches/ab.sh 2 MOESTREAM_NO_COMBINE_NORM=1 MOESTREAM_NO_COMBINE_NORM=0 -- --resident-only
set -uo pipefail
rounds="$1"
shift
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    variants+=("$1")
    shift
done
[ $# -gt 0 ] && shift
decode="${DECODE:-.bench/decode}"
for r in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
        echo "== round $r: $v"
        env $v "$decode" "$@" 2>&1 | grep -E '^decode:|^greedy decode|^sampled decode|^decode, alternating|^prefill \(warm\): 512'
    done
done
