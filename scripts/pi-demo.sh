#!/usr/bin/env bash
# Chat with SmolLM2-135M-Instruct on a Raspberry Pi (see docs/RASPBERRY_PI.md).
#   scripts/pi-demo.sh [tomoe-run args...]                  on the Pi: fetch, build, chat
#   scripts/pi-demo.sh --remote USER@HOST [tomoe-run args...]
#       on an x86-64 Linux machine: cross-compile tomoe-run for aarch64, copy it and the model to
#       ~/tomoe/ on the Pi (scp), and start the chat there (ssh). Needs gcc-aarch64-linux-gnu.
# The model is fetched with scripts/fetch-models.sh (Python 3 with pip; checksum verified).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
remote=""
if [ "${1:-}" = "--remote" ]; then
  [ -n "${2:-}" ] || { echo "usage: $0 --remote USER@HOST [tomoe-run args...]" >&2; exit 2; }
  remote="$2"; shift 2
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

scripts/fetch-models.sh smollm2
model="${TOMOE_MODELS:-$HOME/.cache/tomoe/models}/smollm2-135m-instruct-q4_1.gguf"

if [ -z "$remote" ]; then
  [ "$(uname -m)" = aarch64 ] || echo "note: this is $(uname -m), not a 64-bit Pi; running here anyway" >&2
  # target-cpu=native: the Pi 5's dot-product instructions are used by the compiler too (the
  # kernels pick them at run time either way).
  RUSTFLAGS="${RUSTFLAGS:--C target-cpu=native}" cargo build --release --bin tomoe-run
  echo "SmolLM2-135M Q4_1 reads ~98 MB per token: at 8-10 GB/s (Pi 5) expect up to ~80-100 tokens/s." >&2
  exec "$CARGO_TARGET_DIR/release/tomoe-run" "$model" -t 4 "$@"
fi

rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
command -v aarch64-linux-gnu-gcc >/dev/null \
  || { echo "aarch64-linux-gnu-gcc not found: apt install gcc-aarch64-linux-gnu" >&2; exit 1; }
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  cargo build --release --target aarch64-unknown-linux-gnu --bin tomoe-run
ssh "$remote" 'mkdir -p ~/tomoe'
scp "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/tomoe-run" "$model" "$remote:tomoe/"
args=$(printf ' %q' "$@")
exec ssh -t "$remote" "cd ~/tomoe && ./tomoe-run $(basename "$model") -t 4$args"
