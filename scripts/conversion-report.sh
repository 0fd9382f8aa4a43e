#!/usr/bin/env bash
# Reproduces docs/CONVERSION.md: converts SmolLM2-135M-Instruct (the dequantized Q4_1 file) at
# active fraction P with ToMoE and both baselines, calibrated on the five Austen novels other than
# Persuasion, and reports for each: perplexity on persuasion.txt (16 windows of 512, as
# llama-perplexity), active fraction, expert overlap, random-routing perplexity, wall time, the
# runtime's perplexity of the exported file, its KL divergence to the dense file and top-1
# agreement ("same top", llama-perplexity's --kl-divergence), and a few greedy chat answers.
#
# Usage: scripts/conversion-report.sh P [METHOD ...]   (methods: tomoe static-prune moefication;
#        default all three). Outputs and logs in $OUT (default ~/.cache/tomoe/conversions).
# Environment: STEPS (default 800), SEQ (256), LR (5e-3), OUTTYPE (q8_0), CHUNKS (16).
set -euo pipefail
cd "$(dirname "$0")/.."
p="${1:?usage: $0 P [METHOD ...]}"
shift
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(tomoe static-prune moefication)
out="${OUT:-$HOME/.cache/tomoe/conversions}"
steps="${STEPS:-800}" seq="${SEQ:-256}" lr="${LR:-5e-3}" outtype="${OUTTYPE:-q8_0}" chunks="${CHUNKS:-16}"
mkdir -p "$out"
scripts/fetch-models.sh smollm2
model="${TOMOE_MODELS:-$HOME/.cache/tomoe/models}/smollm2-135m-instruct-q4_1.gguf"
cargo build --release --features convert --bin tomoe-convert --bin tomoe-run
bin="${CARGO_TARGET_DIR:-target}/release"
a=tests/data/austen
calib=()
for book in emma mansfieldpark northangerabbey prideprejudice sensesensibility; do
  calib+=(--calib "$a/$book.txt")
done
questions=("What is the capital of France?" "Write one sentence about the sea." "Who was Jane Austen?")
# The dense file's log-probabilities on the evaluation windows, which each conversion is compared
# against (about 25 MB per window).
base="$out/dense-persuasion-c512-x$chunks.kld"
"$bin/tomoe-run" perplexity -m "$model" -f "$a/persuasion.txt" -c 512 --chunks "$chunks" \
  --kl-divergence-base "$base" | grep "^Final estimate: PPL = " | sed 's/^/dense: /' >&2

for m in "${methods[@]}"; do
  name="$m-p$p"
  extra=()
  [ "$m" = tomoe ] && extra=(--steps "$steps" --seq-len "$seq" --lr "$lr"
    --checkpoint "$out/$name.ck.safetensors" --checkpoint-every 50 --resume)
  echo "== $name" >&2
  start=$SECONDS
  "$bin/tomoe-convert" --input "$model" "${calib[@]}" --method "$m" --p "$p" \
    --seq-len "$seq" --outtype "$outtype" --output "$out/$name.gguf" "${extra[@]}" \
    --eval "$a/persuasion.txt" --eval-chunks "$chunks" 2>&1 | tr '\r' '\n' | grep --line-buffered -v '^$' > "$out/$name.log"
  echo "wall $((SECONDS - start)) s (conversion and evaluation)" >> "$out/$name.log"
  grep -E "active fraction|eval|wall" "$out/$name.log" >&2
  # llama-perplexity's last line: "Final estimate: PPL = 12.3456 +/- 0.12345".
  "$bin/tomoe-run" perplexity -m "$out/$name.gguf" -f "$a/persuasion.txt" -c 512 --chunks "$chunks" \
    | grep "^Final estimate: PPL = " | tail -1 | tee "$out/$name.ppl" >&2
  "$bin/tomoe-run" perplexity -m "$out/$name.gguf" --kl-divergence --kl-divergence-base "$base" \
    | grep "^kl-divergence: " | tee "$out/$name.kld" >&2
  : > "$out/$name.chat"
  for q in "${questions[@]}"; do
    printf '> %s\n' "$q" >> "$out/$name.chat"
    echo "$q" | "$bin/tomoe-run" "$out/$name.gguf" -n 48 --temp 0 2>/dev/null >> "$out/$name.chat"
    echo >> "$out/$name.chat"
  done
done
