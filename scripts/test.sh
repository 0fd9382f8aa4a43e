#!/usr/bin/env bash
# The test suite: everything on x86-64 (kernels, formats, tokenizer and logits against llama.cpp,
# real models, the converter), then the quant kernels on aarch64 under qemu (the NEON paths).
# Expects what .ci/run installs (apt packages, the aarch64 target, models in ~/.cache/tomoe/models).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tomoe/target}"

cargo test --workspace --release --features convert
scripts/test-aarch64.sh
