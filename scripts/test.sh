#!/usr/bin/env bash
# The test suite: everything on x86-64 (kernels, formats, tokenizer and logits against llama.cpp,
# real models, the converter, the HTTP server against curl and the openai client, the C ABI), the
# quant kernels on aarch64 under qemu (the NEON paths), the C example natively and under valgrind
# and on aarch64, and the iOS/Android static libraries.
# Expects what .ci/run installs (apt packages, rustup targets, models in ~/.cache/tomoe/models).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tomoe/target}"

cargo test --workspace --release --features convert,server
# The avx2 kernel set again where the CPU would pick a better one (most laptops have no AVX-512):
# batches and decoding over its interleaved copies, bit for bit against llama.cpp.
TOMOE_KERNELS=avx2 cargo test --workspace --release --features convert,server --test ops --test moe_parity
TOMOE_KERNELS=avx2 cargo test --workspace --release --features convert,server --test engine_parity -- quantized batch
# The avxvnni set (AVX2 with VEX vpdpbusd: Alder Lake and later laptops) where the CPU has it.
if grep -qw avx_vnni /proc/cpuinfo; then
    TOMOE_KERNELS=avxvnni cargo test --workspace --release --features convert,server --test moe_parity
    TOMOE_KERNELS=avxvnni cargo test --workspace --release --features convert,server --test engine_parity -- quantized batch
else
    echo "test.sh: this CPU has no AVX-VNNI; the avxvnni set is not run (simd_vs_scalar covers it where present)"
fi
scripts/test-aarch64.sh
scripts/test-capi.sh
scripts/build-mobile.sh
scripts/build-cuda.sh --check # the cuda feature compiles (its tests need a GPU: compile only)
