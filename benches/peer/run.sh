#!/usr/bin/env bash
# The peer comparison of the performance issue, side by side on one GPU in one run:
# llama.cpp's `llama-bench` (Vulkan backend) on a random-weight Q4_0 GGUF, moestream's
# `decode` bench (every expert resident) on the synthetic model of the same shape and
# bytes per weight (MLX 4-bit, group 64 = 4.5 bits, as Q4_0), then llama-bench again;
# prints every figure and the ratios moestream / llama.cpp (decode against tg128,
# 512-token prefill against pp512).
#
# Run from the repository root on the GPU machine, with what it cannot download carried
# along (folders git ignores; see /work/shared/peers/README.md or docs/performance.md):
#   .peer/   llama.cpp's source and the Debian packages to build it (made by
#            benches/peer/prepare.sh; built by benches/peer/setup.sh)
#   .gl/     the GL dispatch libraries wgpu's Vulkan driver loads
#   .bench/  the `decode` bench binary (built here: `cargo bench --bench decode --no-run`)
# Usage: bash benches/peer/run.sh [qwen3-30b-a3b | qwen3.5-35b-a3b]
set -euo pipefail

model="${1:-qwen3-30b-a3b}"
source benches/peer/prepare_run.sh

peer() {
    "$bench" -m "$gguf" -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o csv 2> "$out/peer-$1.err" \
        | tee "$out/peer-$1.csv"
}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
echo "== llama.cpp, first run"
peer 1
echo "== moestream"
./.bench/decode --resident-only --model "$model" 2>&1 | tee "$out/moestream.txt"
echo "== llama.cpp, second run"
peer 2

python3 - "$out" <<'PY'
import csv, re, sys
out = sys.argv[1]
best = {}
for run in (1, 2):
    with open(f"{out}/peer-{run}.csv") as f:
        for row in csv.DictReader(f):
            test = "pp512" if row["n_prompt"] == "512" and row["n_gen"] == "0" else \
                   "tg128" if row["n_gen"] == "128" and row["n_prompt"] == "0" else None
            if test:
                v = float(row["avg_ts"])
                best.setdefault(test, []).append(v)
text = open(f"{out}/moestream.txt").read()
dec = float(re.search(r"^decode: ([0-9.]+) tok/s", text, re.M).group(1))
greedy = re.search(r"^greedy decode: ([0-9.]+) tok/s", text, re.M)
pre = [float(x) for x in re.findall(r"prefill \(warm\): 512 tokens in [0-9.]+s, ([0-9.]+) tok/s", text)]
print("llama.cpp tg128 runs:", best.get("tg128"), " pp512 runs:", best.get("pp512"))
print(f"moestream decode {dec:.1f} tok/s, 512-token prefill {pre}")
tg, pp = max(best["tg128"]), max(best["pp512"])
print(f"decode / tg128 (better peer run): {dec / tg:.3f}")
if greedy:
    g = float(greedy.group(1))
    print(f"greedy decode (step_top 1, steps run ahead) {g:.1f} tok/s / tg128: {g / tg:.3f}")
if pre:
    print(f"prefill / pp512 (better peer run): {max(pre) / pp:.3f}")
PY
