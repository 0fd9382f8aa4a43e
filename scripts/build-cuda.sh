#!/usr/bin/env bash
# Builds `tomoe-convert --features cuda` (candle's CUDA backend) on any x86-64 Linux machine, with
# or without a GPU: the CUDA 13.0 compiler and headers come from NVIDIA's wheels on the Python
# package index, installed once into ~/.cache/tomoe/cuda/<key>. The key hashes the pinned wheels
# (pip checks each download against its sha256), the stub recipe and the cudarc version, and a
# cache is used only when its `complete` stamp holds that key: a stale or half-written cache is
# rebuilt, never used.
#
# Only the compiler side is installed (nvcc, nvvm, crt, cccl headers, cudart). The libraries that
# candle links (the driver's libcuda.so.1, cuBLAS, cuBLASLt, cuRAND, NVRTC) are hundreds of MiB
# and the GPU machine has them; they are linked against small stubs made here from cudarc's own
# function lists, with the sonames of CUDA 13 (libcublas.so.13, libcurand.so.10, ...), so the
# binary loads the real ones there (scripts/device-convert.sh finds them and sets
# LD_LIBRARY_PATH). CUDA 13.0 is what the GPU machine's driver (580) reports: PTX from a newer
# nvcc would not load on it, and the libraries there (PyTorch's cu130 wheels) are CUDA 13's.
#
# Usage: scripts/build-cuda.sh [--check | --toolkit | --env]
#   (none)     build target/release/tomoe-convert with --features cuda, print where it is,
#              its size and the shared libraries it needs (readelf, ldd)
#   --check    CI: build the binary and the CUDA test (compile only, nothing runs), quietly
#   --toolkit  only install the toolkit; print its folder
#   --env      print the exports a cargo command needs to build the cuda feature (eval "$(...)")
# Environment: TOMOE_CUDA_TARGET_DIR (the cargo target dir, default ~/.cache/tomoe/target-cuda: its
# own, whatever CARGO_TARGET_DIR says, so that a CUDA tomoe-convert, which needs libcuda to start,
# never replaces the CPU one), CUDA_COMPUTE_CAP (default 90: H100/H200; the kernels are built for
# this one architecture), TOMOE_CUDA_CACHE (the toolkit cache, default ~/.cache/tomoe/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-build}"
case "$mode" in build | --check | --toolkit | --env) ;; *)
  sed -n '/^# Usage/,/^# ~/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
[ "$(uname -m)" = x86_64 ] || { echo "build-cuda.sh: x86-64 Linux only (the wheels pinned here are x86-64)" >&2; exit 1; }

say() { [ "$mode" = --env ] || echo "$@" >&2; }

# --- the toolkit -------------------------------------------------------------------------------
CUDA_SERIES=13.0
# CUDA 13.0 update 2 (nvcc 13.0.88): the GPU machine's driver (580) runs CUDA up to 13.0, and the
# PTX of a newer nvcc would not load on it.
WHEELS="
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
"
# The libraries candle links, as `cudarc-src-dir soname` (CUDA 13's sonames; the driver's is .1).
STUBS="
driver libcuda.so.1
cublas libcublas.so.13
cublaslt libcublasLt.so.13
curand libcurand.so.10
nvrtc libnvrtc.so.13
"
STUB_RECIPE=1 # bump when the way stubs are made changes

# cudarc's source (its generated bindings list every function each library exports).
cudarc_dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$(
  sed -n '/^name = "cudarc"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock
)" 2>/dev/null | head -1 || true)
if [ -z "$cudarc_dir" ]; then
  cargo fetch --quiet
  cudarc_dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$(
    sed -n '/^name = "cudarc"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock
  )" | head -1)
fi
[ -d "$cudarc_dir/src/driver/sys" ] || { echo "build-cuda.sh: cudarc's source not found (cargo fetch failed?)" >&2; exit 1; }

key=$(printf '%s\n' "$CUDA_SERIES" "$WHEELS" "$STUBS" "$STUB_RECIPE" "$(basename "$cudarc_dir")" | sha256sum | cut -c1-16)
cache_root="${TOMOE_CUDA_CACHE:-$HOME/.cache/tomoe/cuda}"
tk="$cache_root/$CUDA_SERIES-$key"
cuda_home="$tk/py/nvidia/cu13"

if [ "$(cat "$tk/complete" 2>/dev/null)" != "$key" ]; then
  say "== installing the CUDA $CUDA_SERIES toolkit wheels into $tk"
  rm -rf "$tk" "$tk.tmp"
  mkdir -p "$tk.tmp"
  printf '%s\n' "$WHEELS" | sed '/^$/d' > "$tk.tmp/requirements.txt"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
    --require-hashes --target "$tk.tmp/py" -r "$tk.tmp/requirements.txt"
  root="$tk.tmp/py/nvidia/cu13"
  ln -s libcudart.so.13 "$root/lib/libcudart.so" # for -lcudart (candle-kernels)
  # Link-time stubs: every function of cudarc's bindings, returning an error code if ever called.
  mkdir -p "$root/lib/stubs"
  printf '%s\n' "$STUBS" | sed '/^$/d' | while read -r src soname; do
    base="${soname%%.so*}"
    {
      echo "/* link-time stub of $soname, generated by scripts/build-cuda.sh from $(basename "$cudarc_dir") */"
      grep -ohE '^pub unsafe fn [A-Za-z0-9_]+' "$cudarc_dir/src/$src/sys/mod.rs" |
        awk '{print $4}' | sort -u | sed 's/.*/int &(void) { return 999; }/'
    } > "$root/lib/stubs/$base.c"
    [ "$(grep -c return "$root/lib/stubs/$base.c")" -gt 5 ] ||
      { echo "build-cuda.sh: no functions found for $soname in $cudarc_dir" >&2; exit 1; }
    cc -shared -fPIC -O0 -w -Wl,-soname,"$soname" -o "$root/lib/stubs/$base.so" "$root/lib/stubs/$base.c"
  done
  "$root/bin/nvcc" --version | grep -q "release $CUDA_SERIES" ||
    { echo "build-cuda.sh: the installed nvcc is not CUDA $CUDA_SERIES" >&2; exit 1; }
  echo "$key" > "$tk.tmp/complete"
  mv "$tk.tmp" "$tk"
  # Older toolkits of this cache are left to `rm -rf $cache_root/<old key>`: builds may share it.
fi

# What a cargo build of the cuda feature needs. cudarc links against $CUDA_HOME/lib/stubs and
# reads the CUDA version from nvcc; candle-kernels' build runs nvcc for CUDA_COMPUTE_CAP without
# asking nvidia-smi; nvcc finds its headers, nvvm and crt relative to itself.
env_lines() {
  echo "export CUDA_HOME='$cuda_home'"
  echo "export CUDA_PATH='$cuda_home'"
  echo "export CUDA_ROOT='$cuda_home'"
  echo "export PATH='$cuda_home/bin':\"\$PATH\""
  echo "export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
  echo "export CUDARC_CUDA_VERSION=13000"
  echo "export CARGO_TARGET_DIR='${TOMOE_CUDA_TARGET_DIR:-$HOME/.cache/tomoe/target-cuda}'"
}
case "$mode" in
  --toolkit) echo "$tk"; exit 0 ;;
  --env) env_lines; exit 0 ;;
esac
eval "$(env_lines)"

# --- the build ---------------------------------------------------------------------------------
if [ "$mode" = --check ]; then
  cargo build --quiet --release --features cuda --bin tomoe-convert --test convert_cuda
  echo "cuda feature: tomoe-convert and tests/convert_cuda.rs build (CUDA $CUDA_SERIES, sm_$CUDA_COMPUTE_CAP)"
  exit 0
fi
cargo build --release --features cuda --bin tomoe-convert
bin="$CARGO_TARGET_DIR/release/tomoe-convert"
echo "binary: $bin ($(du -m "$bin" | cut -f1) MiB; CUDA $CUDA_SERIES, kernels for sm_$CUDA_COMPUTE_CAP)"
echo "shared libraries it needs (readelf):"
readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
echo "ldd (here the CUDA libraries are missing, or stubs: the GPU machine provides them):"
LD_LIBRARY_PATH="$cuda_home/lib" ldd "$bin" | sed 's/^\s*/  /'
