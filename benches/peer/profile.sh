#!/usr/bin/env bash
# Where a decode token's GPU time goes, for llama.cpp and for moestream, side by side on one
# GPU: llama.cpp's Vulkan perf logger (`GGML_VK_PERF_LOGGER=1`: a timestamp after every op or
# fused group of ops, with a barrier between them) over one decode token of `llama-bench`,
# then moestream's `MOESTREAM_PROFILE=1` decode bench (each dispatch in a timed pass of its
# own). Both inflate each dispatch by a little; compare counts and the relative weight of
# each op, not the totals with the benchmarks' wall-clock numbers.
#
# Same setup as benches/peer/run.sh (carry .peer, .gl and .bench/decode; run from the
# repository root on the GPU machine). Usage: bash benches/peer/profile.sh [model]
set -euo pipefail

model="${1:-qwen3-30b-a3b}"
source benches/peer/prepare_run.sh

echo "== llama.cpp: one decode token's ops (the last of 8 tokens)"
GGML_VK_PERF_LOGGER=1 "$bench" -m "$gguf" -ngl 99 -p 0 -n 8 -r 1 \
    -fa 1 > "$out/peer-profile.out" 2> "$out/peer-profile.err" || true
# Each graph's block starts with "Vulkan Timings:"; print the last one, largest first.
awk '/^Vulkan Timings:/ { n++; delete lines; k = 0; next }
     /^Total time:/ { total = $0; last_k = k; for (i = 1; i <= k; i++) keep[i] = lines[i]; next }
     /^----------------/ { next }
     { lines[++k] = $0 }
     END { for (i = 1; i <= last_k; i++) print keep[i]; print total }' \
    "$out/peer-profile.err" | sort -t= -k2 -g -r | head -40

echo "== moestream: MOESTREAM_PROFILE=1 decode --resident-only --model $model"
MOESTREAM_PROFILE=1 ./.bench/decode --resident-only --model "$model" 2>&1 |
    tee "$out/moestream-profile.txt" | tail -40
