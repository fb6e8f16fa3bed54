#!/usr/bin/env bash
# Makes `.peer/` (git ignores it) on a machine with network access, for the offline GPU
# machine: llama.cpp's source as vendored by the `llama-cpp-python` 0.3.36 sdist (its
# `vendor/llama.cpp`), trimmed to what `llama-bench` with the Vulkan backend builds from and
# patched for Debian 12's Vulkan 1.3.239 headers (ggml-vulkan-vk1.3.239.patch: they lack
# `vk::LayerSettingsCreateInfoEXT`), and the Debian 12 packages the GPU machine lacks
# (Vulkan loader and headers, glslc, SPIR-V headers, ninja; cmake comes from the image's pip).
# About 25 MB; `run.sh` carries it with `.bench/` and `.gl/` (the device's 64 MiB limit).
# Run from the repository root: bash benches/peer/prepare.sh
#
# Caveat (measured when this was made, 2026-12-07): Debian 12's glslc (2023.2) lacks the
# cooperative-matrix, integer-dot-product, bf16 and fp8 GLSL extensions, so ggml-vulkan is
# built without its tensor-core and integer-dot paths: its prompt processing is slower than a
# build with a current glslc. State that with any prefill comparison.
set -euo pipefail

dst=.peer
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dst/debs"

read -r url sha < <(python3 - <<'PY'
import json, urllib.parse, urllib.request
api = "https://pypi.org/pypi/llama-cpp-python/json"
rel = json.load(urllib.request.urlopen(api))["releases"]["0.3.36"]
sdist = next(f for f in rel if f["packagetype"] == "sdist")
# A mirror of the index may give the file's address relative to the JSON's.
print(urllib.parse.urljoin(api, sdist["url"]), sdist["digests"]["sha256"])
PY
)
curl -sSL -o "$tmp/sdist.tar.gz" "$url"
echo "$sha  $tmp/sdist.tar.gz" | sha256sum -c -
tar -xzf "$tmp/sdist.tar.gz" -C "$tmp"
src=$(ls -d "$tmp"/llama_cpp_python-*/vendor/llama.cpp)

rm -rf "$dst/llama.cpp"
mkdir -p "$dst/llama.cpp"
for e in CMakeLists.txt LICENSE cmake ggml src include common vendor tools gguf-py licenses; do
    [ -e "$src/$e" ] && cp -r "$src/$e" "$dst/llama.cpp/"
done
(
    cd "$dst/llama.cpp"
    rm -rf tools/ui tools/server tools/cli tools/rpc tools/tuning tools/mtmd/tests \
        tools/mtmd/legacy-models gguf-py/tests
    for b in cuda hip musa opencl sycl metal cann hexagon et webgpu openvino virtgpu zdnn zendnn; do
        rm -rf "ggml/src/ggml-$b"
    done
    rm -rf ggml/src/ggml-cpu/arch/{arm,loongarch,powerpc,riscv,s390,wasm} ggml/src/ggml-cpu/spacemit
    find . -name '*.md' ! -path './gguf-py/*' -delete
    find . \( -name '*.gguf' -o -name '*.png' -o -name '*.jpg' -o -name '*.mp3' -o -name '*.wav' \) -delete
    find . -name .git -prune -exec rm -rf {} +
    patch -p1 < "$here/ggml-vulkan-vk1.3.239.patch"
)
(cd "$dst/debs" && apt-get download libvulkan1 libvulkan-dev glslc libshaderc1 spirv-headers ninja-build)
du -sh "$dst"
