#!/usr/bin/env bash
# Quality per byte (docs/CONVERSION.md): for SmolLM2-135M-Instruct dense at Q4_1 (the original
# file), Q8_0 and Q4_0 (re-quantized from it) and for conversions of scripts/conversion-report.sh
# exported again at Q8_0, Q4_1 and Q4_0, the weight bytes one decoded token reads (tomoe-run
# bench: every matrix once, in MoE layers the experts the tokens were routed to) against
# perplexity, KL divergence to the dense file and top-1 agreement on the report's held-out texts.
#
# Usage: scripts/quality-per-byte.sh NAME ...   (NAME: a conversion of conversion-report.sh in
#        $OUT, e.g. tomoe-p0.7-mix; its checkpoint, if any, is exported again without training)
# Environment: OUT (the report's folder, default ~/.cache/tomoe/conversions), CHUNKS (16),
#        TYPES (default "q8_0 q4_1 q4_0"), and the report's settings of those runs: CHATS (200),
#        CHAT_SHARE (0.5), STEPS (200), SEQ (256), LR (5e-3).
# Needs the report's dense bases ($OUT/dense-*-c512-x$CHUNKS.kld) and the `gguf` Python package.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 NAME ..." >&2; exit 2; }
out="${OUT:-$HOME/.cache/tomoe/conversions}" chunks="${CHUNKS:-16}" chats="${CHATS:-200}"
share="${CHAT_SHARE:-0.5}" steps="${STEPS:-200}" seq="${SEQ:-256}" lr="${LR:-5e-3}"
types=(${TYPES:-q8_0 q4_1 q4_0})
scripts/fetch-models.sh smollm2
model="${TOMOE_MODELS:-$HOME/.cache/tomoe/models}/smollm2-135m-instruct-q4_1.gguf"
cargo build --release --features convert --bin tomoe-convert --bin tomoe-run
bin="${CARGO_TARGET_DIR:-target}/release"
texts=(persuasion darwin federalist "chats$chats")
for t in "${texts[@]}"; do
  [ -s "$out/dense-$t-c512-x$chunks.kld" ] || { echo "missing $out/dense-$t-c512-x$chunks.kld: run conversion-report.sh first" >&2; exit 1; }
done
a=tests/data/austen
calib=()
for book in emma mansfieldpark northangerabbey prideprejudice sensesensibility; do
  calib+=(--calib "$a/$book.txt")
done

# One row: label, file. Bytes per token from 64 decoded tokens after a 64-token prompt.
row() {
  local label="$1" file="$2" mib cells=""
  mib=$("$bin/tomoe-run" bench -m "$file" -p 64 -n 64 -r 1 -t 1 | awk -F'|' '/tg64/ {gsub(/ /, "", $(NF-1)); print $(NF-1)}')
  for t in "${texts[@]}"; do
    # "kl-divergence: mean KLD x, same top n/N (p %), PPL(Q) q, PPL(base) b (...)".
    local line
    line=$("$bin/tomoe-run" perplexity -m "$file" --kl-divergence \
      --kl-divergence-base "$out/dense-$t-c512-x$chunks.kld" | grep "^kl-divergence: ")
    cells+=" $(echo "$line" | sed -E 's/.*PPL\(Q\) ([0-9.]+).*/\1/') / $(echo "$line" | sed -E 's/.*mean KLD ([0-9.]+).*/\1/') / $(echo "$line" | sed -E 's/.*\(([0-9.]+) %\).*/\1/') % |"
  done
  echo "| $label | $mib |$cells"
}

echo "| file | MiB/token | $(printf '%s: PPL / KLD / same top | ' "${texts[@]}")"
echo "|---|---|$(printf -- '---|%.0s' "${texts[@]}")"
row "dense Q4_1 (original)" "$model"
for ty in "${types[@]}"; do
  [ "$ty" = q4_1 ] && continue
  dense="$out/dense-$ty.gguf"
  [ -s "$dense" ] || python3 scripts/requantize.py "$model" "$dense" "$ty" >&2
  row "dense ${ty^^} (from Q4_1)" "$dense"
done
for name in "$@"; do
  log="$out/$name.log"
  [ -s "$log" ] || { echo "no $log: run conversion-report.sh first" >&2; exit 1; }
  # The report's settings, read back from its file name and log.
  method=$(echo "$name" | sed -E 's/-p[0-9.]+.*//') p=$(echo "$name" | sed -E 's/.*-p([0-9.]+).*/\1/')
  experts=$(echo "$name" | grep -q -- '-e1$' && echo 1 || echo "")
  for ty in "${types[@]}"; do
    file="$out/$name-$ty.gguf"
    if [ ! -s "$file" ]; then
      extra=()
      [ "$method" = tomoe ] && extra=(--steps "$steps" --lr "$lr" --checkpoint "$out/$name.ck.safetensors" --resume
        ${experts:+--experts "$experts"})
      "$bin/tomoe-convert" --input "$model" "${calib[@]}" --chats "$chats" --chat-share "$share" --seed 0 \
        --method "$method" --p "$p" --seq-len "$seq" --outtype "$ty" --output "$file" "${extra[@]}" 2>&1 |
        tr '\r' '\n' | grep -E "active fraction|wrote" >&2 || true
    fi
    row "$name ${ty^^}" "$file"
  done
done
