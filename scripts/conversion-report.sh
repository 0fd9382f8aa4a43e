#!/usr/bin/env bash
# Reproduces docs/CONVERSION.md: converts SmolLM2-135M-Instruct (the dequantized Q4_1 file) at
# active fraction P with ToMoE and both baselines, calibrated on the five Austen novels other than
# Persuasion and (CHATS > 0) on chats the dense model writes itself (tomoe-convert --chats), and
# reports for each, on four evaluation texts no conversion sees (persuasion.txt; Darwin's
# *Origin* and the Federalist Papers, tests/data/heldout; the held-out share of the chats):
# perplexity (windows of 512, as llama-perplexity), KL divergence to the dense file and top-1
# agreement ("same top", llama-perplexity's --kl-divergence); plus active fraction, expert
# overlap, random-routing perplexity on Persuasion, wall time, and greedy chat answers.
#
# Usage: scripts/conversion-report.sh P [METHOD ...]   (methods: tomoe clustered static-prune
#        moefication; default tomoe and the two baselines). Outputs and logs in $OUT (default
#        ~/.cache/tomoe/conversions).
# Environment: STEPS (default 800), SEQ (256), LR (5e-3), OUTTYPE (q8_0), CHUNKS (16),
#        CHATS (generated chats, default 800; 0: Austen only), CHAT_SHARE (share of training
#        windows from the chats, default 0.5), TAG (added to the output names), EVAL_CHATS (the
#        held-out chats of which CHATS run to evaluate on, default CHATS: with CHATS=0, a
#        conversion on Austen alone is scored on the chats another run held out), EXPERTS (ToMoE's
#        experts per layer, and clustered's; EXPERTS=1 with its own TAG is the one-learned-mask
#        comparison), CLUSTER_WINDOWS (clustered's --cluster-windows).
set -euo pipefail
cd "$(dirname "$0")/.."
p="${1:?usage: $0 P [METHOD ...]}"
shift
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(tomoe static-prune moefication)
out="${OUT:-$HOME/.cache/tomoe/conversions}"
steps="${STEPS:-800}" seq="${SEQ:-256}" lr="${LR:-5e-3}" outtype="${OUTTYPE:-q8_0}" chunks="${CHUNKS:-16}"
chats="${CHATS:-800}" share="${CHAT_SHARE:-0.5}" tag="${TAG:-}" eval_chats="${EVAL_CHATS:-${CHATS:-800}}"
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
chat_args=()
if [ "$chats" -gt 0 ]; then
  # 10 % of the chats are held out for evaluation; the generation is cached (same seed and
  # settings: same chats), so every method and budget trains on the same ones.
  chat_args=(--chats "$chats" --chat-share "$share" --seed 0 --held-out-chats "$out/heldout-chats-$chats.txt")
fi
questions=("What is the capital of France?" "Write one sentence about the sea." "Who was Jane Austen?"
  "Name three primary colors." "How do I boil an egg?" "What is 12 plus 7?"
  "Give me one tip for sleeping better." "Why is the sky blue?")
evals=("persuasion:$a/persuasion.txt" "darwin:tests/data/heldout/darwin-origin.txt"
  "federalist:tests/data/heldout/federalist.txt")

# The dense file's log-probabilities on each evaluation text's windows, which each conversion is
# compared against (about 25 MB per window). The held-out chats exist once the first conversion
# has generated them, so their base is made then.
dense_base() {
  local name="$1" file="$2" base="$out/dense-$1-c512-x$chunks.kld"
  [ -s "$base" ] || "$bin/tomoe-run" perplexity -m "$model" -f "$file" -c 512 --chunks "$chunks" \
    --kl-divergence-base "$base" | grep "^Final estimate: PPL = " | sed "s/^/dense $name: /" >&2
}
for e in "${evals[@]}"; do dense_base "${e%%:*}" "${e#*:}"; done

for m in "${methods[@]}"; do
  name="$m-p$p${tag:+-$tag}"
  extra=()
  [ "$m" = tomoe ] && extra=(--steps "$steps" --seq-len "$seq" --lr "$lr"
    --checkpoint "$out/$name.ck.safetensors" --checkpoint-every 50 --resume ${EXPERTS:+--experts "$EXPERTS"})
  [ "$m" = clustered ] && extra=(${EXPERTS:+--experts "$EXPERTS"} ${CLUSTER_WINDOWS:+--cluster-windows "$CLUSTER_WINDOWS"})
  echo "== $name" >&2
  start=$SECONDS
  "$bin/tomoe-convert" --input "$model" "${calib[@]}" "${chat_args[@]}" --method "$m" --p "$p" \
    --seq-len "$seq" --outtype "$outtype" --output "$out/$name.gguf" "${extra[@]}" \
    --eval "$a/persuasion.txt" --eval-chunks "$chunks" 2>&1 | tr '\r' '\n' | grep --line-buffered -v '^$' > "$out/$name.log"
  echo "wall $((SECONDS - start)) s (conversion and evaluation)" >> "$out/$name.log"
  grep -E "active fraction|eval|wall|chats" "$out/$name.log" >&2
  all=("${evals[@]}")
  if [ -s "$out/heldout-chats-$eval_chats.txt" ]; then
    dense_base "chats$eval_chats" "$out/heldout-chats-$eval_chats.txt"
    all+=("chats$eval_chats:$out/heldout-chats-$eval_chats.txt")
  fi
  : > "$out/$name.kld"
  for e in "${all[@]}"; do
    # "kl-divergence: mean KLD x, same top n/N (p %), PPL(Q) q, PPL(base) b (...)".
    "$bin/tomoe-run" perplexity -m "$out/$name.gguf" --kl-divergence \
      --kl-divergence-base "$out/dense-${e%%:*}-c512-x$chunks.kld" \
      | grep "^kl-divergence: " | sed "s/^/${e%%:*} /" | tee -a "$out/$name.kld" >&2
  done
  : > "$out/$name.chat"
  for q in "${questions[@]}"; do
    printf '> %s\n' "$q" >> "$out/$name.chat"
    echo "$q" | "$bin/tomoe-run" "$out/$name.gguf" -n 48 --temp 0 2>/dev/null >> "$out/$name.chat"
    echo >> "$out/$name.chat"
  done
done
