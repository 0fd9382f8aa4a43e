#!/usr/bin/env bash
# Cross-builds the tomoe-quant tests for aarch64-unknown-linux-gnu and runs them under
# qemu-user with a CPU that has the dot-product extension (`-cpu max`), so the NEON kernel sets
# really run: the SIMD-vs-scalar test asserts that the dispatched set is a NEON one and prints
# which. The ggml-oracle tests are x86-64 only (compiled out here).
# Needs: rustup target aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu, qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/tomoe/target}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"
cargo test --release -p tomoe-quant --target aarch64-unknown-linux-gnu "$@" -- --nocapture
# The plain-NEON set is checked against scalar by the same test (it lists every available
# set); a CPU without dotprod must still dispatch to plain NEON:
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a53" \
    cargo test --release -p tomoe-quant --target aarch64-unknown-linux-gnu --test simd_vs_scalar "$@" -- --nocapture
# The engine on the NEON sets: SmolLM2's logits over the interleaved copies (and smmla tiles for
# the prompt where the CPU has i8mm) equal those of the single-row kernels over the mapped file,
# bit for bit, with dotprod + i8mm (`max`) and with plain NEON (`cortex-a53`). The tests that
# start tomoe-run as a child process are x86-only in effect (no binfmt runner here): skipped by name.
for cpu in max cortex-a53; do
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
    cargo test --release --target aarch64-unknown-linux-gnu --test load_options "$@" -- --skip cli_
done
