# Sourced by benches/peer/run.sh and profile.sh (not run on its own): with `model` set,
# unpacks the GL dispatch libraries, builds llama.cpp's llama-bench once
# (benches/peer/setup.sh) and writes the model's random-weight GGUF once; sets `out`,
# `bench` (llama-bench) and `gguf`.
out="${PEER_OUT:-/tmp/peer}"
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export MOESTREAM_BENCH_DIR="${MOESTREAM_BENCH_DIR:-/tmp/bm}"

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ ! -x /tmp/llama-build/bin/llama-bench ]; then
    bash benches/peer/setup.sh > "$out/setup.log" 2>&1 || { tail -30 "$out/setup.log"; exit 1; }
fi
bench=/tmp/llama-build/bin/llama-bench

case "$model" in
    qwen3-30b-a3b) gguf="$out/q30.gguf"; other="$out/q35.gguf"; maker=make_gguf_qwen3moe.py ;;
    qwen3.5-35b-a3b) gguf="$out/q35.gguf"; other="$out/q30.gguf"; maker=make_gguf_qwen35moe.py ;;
    *)
        echo "model: qwen3-30b-a3b or qwen3.5-35b-a3b" >&2
        exit 2
        ;;
esac
rm -f "$other" # the GPU machine's 64 GB disk holds one GGUF beside the models
[ -f "$gguf" ] || python3 "benches/peer/$maker" --out "$gguf" \
    --gguf-py .peer/llama.cpp/gguf-py > "$out/gguf.log" 2>&1
