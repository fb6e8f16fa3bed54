#!/usr/bin/env bash
# Offline build of llama.cpp's llama-bench (Vulkan backend) on the GPU machine.
#
# Run as root from the repository root:   bash benches/peer/setup.sh  (.peer/ made by
# benches/peer/prepare.sh on a machine with network access; PEER_DIR names another folder)
#
#  1. Unpacks the Debian 12 packages in .peer/debs into / (Vulkan loader + headers, glslc, SPIR-V
#     headers, GL dispatch libraries; cmake/ninja only when no usable cmake/ninja is found).
#     A package is skipped when what it provides is already there, so nothing the image ships is
#     overwritten. Unpacking uses `dpkg-deb --fsys-tarfile | tar --keep-directory-symlink` instead
#     of plain `dpkg -x f /`: on a merged-/usr system `dpkg -x` replaces the /lib -> usr/lib
#     symlink with a real directory (checked with libexpat1), which would break the machine.
#  2. runs ldconfig
#  3. configures and builds the target llama-bench into $LLAMA_BUILD_DIR (default /tmp/llama-build).
#
# Environment: LLAMA_BUILD_DIR (default /tmp/llama-build), JOBS (default 16).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEER=${PEER_DIR:-.peer}
DEBS=$PEER/debs
SRC=$PEER/llama.cpp
BUILD=${LLAMA_BUILD_DIR:-/tmp/llama-build}
JOBS=${JOBS:-16}
LIBDIR=/usr/lib/x86_64-linux-gnu

log() { echo "[peer-setup] $*"; }
die() { echo "[peer-setup] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (packages are unpacked into /)"
[ "$(uname -m)" = x86_64 ] || die "the packages in $DEBS are amd64; this machine is $(uname -m)"
[ -f "$SRC/CMakeLists.txt" ] || die "llama.cpp source not found at $SRC"
[ -d "$DEBS" ] || die "package folder not found: $DEBS"

deb_of() { # package name -> path of its .deb
    local f
    f=$(ls "$DEBS/$1"_*.deb 2>/dev/null | head -n 1)
    [ -n "$f" ] || die "no .deb for package '$1' in $DEBS"
    echo "$f"
}

unpack() { # package name: extract its files into /
    local f; f=$(deb_of "$1")
    log "unpacking $(basename "$f")"
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb --fsys-tarfile "$f" | tar -x -C / --keep-directory-symlink --no-overwrite-dir \
            || die "unpacking $f failed"
    else
        # No dpkg: read the ar archive with Python (data.tar.xz/.gz); existing directory symlinks are kept.
        python3 - "$f" <<'PY' || die "unpacking $f with python3 failed"
import io, sys, tarfile
d = open(sys.argv[1], "rb").read()
assert d[:8] == b"!<arch>\n", "not a .deb"
off, data = 8, None
while off + 60 <= len(d):
    h = d[off:off + 60]; name = h[:16].decode().strip().rstrip("/"); size = int(h[48:58]); off += 60
    if name.startswith("data.tar"):
        data = d[off:off + size]; break
    off += size + (size & 1)
assert data is not None and not name.endswith(".zst"), "unsupported data member " + name
tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
tf.extractall("/", **kw)
PY
    fi
}

have_so() { # soname known to the dynamic linker or present in the multiarch dir
    [ -e "$LIBDIR/$1" ] || ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$1 ("
}

unpack_lib() { # package soname
    if have_so "$2"; then log "skip $1 ($2 already present)"; else unpack "$1"; fi
}

# ---------------------------------------------------------------- Vulkan, shader compiler, GL
if [ -e "$LIBDIR/libvulkan.so.1" ]; then log "skip libvulkan1 ($LIBDIR/libvulkan.so.1 present)"; else unpack libvulkan1; fi
if [ -f /usr/include/vulkan/vulkan.hpp ] && [ -e "$LIBDIR/libvulkan.so" ]; then
    log "skip libvulkan-dev (vulkan.hpp and libvulkan.so present)"
else
    unpack libvulkan-dev
fi
if [ -f /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ]; then
    log "skip spirv-headers (SPIRV-HeadersConfig.cmake present)"
else
    unpack spirv-headers
fi
if command -v glslc >/dev/null 2>&1; then
    log "skip glslc/libshaderc1 (glslc present: $(command -v glslc))"
else
    unpack_lib libshaderc1 libshaderc.so.1
    unpack glslc
fi
unpack_lib libglvnd0  libGLdispatch.so.0
unpack_lib libopengl0 libOpenGL.so.0
unpack_lib libglx0    libGLX.so.0
unpack_lib libgl1     libGL.so.1
unpack_lib libegl1    libEGL.so.1
unpack_lib libgles2   libGLESv2.so.2
ldconfig || die "ldconfig failed"

# ---------------------------------------------------------------- cmake and ninja
CMAKE=""
if command -v cmake >/dev/null 2>&1 && cmake --version >/dev/null 2>&1; then
    CMAKE=$(command -v cmake)
elif d=$(python3 -c 'import cmake; print(cmake.CMAKE_BIN_DIR)' 2>/dev/null) && [ -x "$d/cmake" ]; then
    CMAKE=$d/cmake       # pip's cmake package, not on PATH
fi
if [ -z "$CMAKE" ]; then
    log "no usable cmake found: unpacking Debian's cmake"
    unpack_lib libjsoncpp25 libjsoncpp.so.25
    unpack_lib librhash0    librhash.so.0
    unpack_lib libuv1       libuv.so.1
    unpack_lib libexpat1    libexpat.so.1
    unpack_lib libarchive13 libarchive.so.13
    unpack_lib libcurl4     libcurl.so.4
    unpack cmake-data
    unpack cmake
    ldconfig || die "ldconfig failed"
    CMAKE=/usr/bin/cmake
    if ! "$CMAKE" --version >/dev/null 2>&1; then
        echo "[peer-setup] missing libraries of Debian's cmake:" >&2
        ldd "$CMAKE" 2>&1 | grep 'not found' >&2
        die "Debian's cmake does not run here (its deeper dependencies, e.g. libxml2/libicu72/libssl3/krb5, are not in .peer/debs)"
    fi
fi
log "cmake: $CMAKE ($("$CMAKE" --version | head -n 1))"

NINJA=""
if command -v ninja >/dev/null 2>&1; then
    NINJA=$(command -v ninja)
elif d=$(python3 -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null) && [ -x "$d/ninja" ]; then
    NINJA=$d/ninja       # pip's ninja package, not on PATH
else
    unpack ninja-build
    NINJA=/usr/bin/ninja
fi
"$NINJA" --version >/dev/null 2>&1 || die "ninja ($NINJA) does not run"
log "ninja: $NINJA ($("$NINJA" --version))"

# ---------------------------------------------------------------- checks before configuring
CXX_BIN=$(command -v c++ || command -v g++ || command -v clang++ || true)
CC_BIN=$(command -v cc || command -v gcc || command -v clang || true)
[ -n "$CXX_BIN" ] && [ -n "$CC_BIN" ] || die "no C/C++ compiler found (c++/g++/clang++ and cc/gcc/clang); .peer/debs carries none (dropped for size)"
command -v glslc >/dev/null 2>&1 || die "glslc not found after unpacking"
glslc --version >/dev/null 2>&1 || { ldd "$(command -v glslc)" | grep 'not found' >&2; die "glslc does not run"; }
[ -f /usr/include/vulkan/vulkan.hpp ] || die "Vulkan C++ headers (/usr/include/vulkan/vulkan.hpp) missing"
log "compilers: $CC_BIN, $CXX_BIN ($("$CXX_BIN" --version | head -n 1))"
log "glslc: $(glslc --version 2>&1 | head -n 1)"
log "Vulkan headers: VK_HEADER_VERSION $(grep -m1 -o 'VK_HEADER_VERSION [0-9]*' /usr/include/vulkan/vulkan_core.h | awk '{print $2}')"

# ---------------------------------------------------------------- configure and build
log "configuring $SRC -> $BUILD"
"$CMAKE" -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" \
    -DGGML_VULKAN=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DCMAKE_BUILD_TYPE=Release \
    || die "cmake configure failed (see output above)"
log "building llama-bench with -j $JOBS"
"$CMAKE" --build "$BUILD" --target llama-bench -j "$JOBS" || die "build of llama-bench failed (see output above)"
[ -x "$BUILD/bin/llama-bench" ] || die "build finished but $BUILD/bin/llama-bench is missing"

log "OK: $BUILD/bin/llama-bench"
log "if no Vulkan device shows up, export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json"
log "devices: $(timeout 60 "$BUILD/bin/llama-bench" --list-devices 2>&1 | tr '\n' ' ' | cut -c1-400)"
exit 0
