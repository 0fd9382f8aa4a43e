#!/usr/bin/env bash
# A whole ToMoE conversion on a GPU machine that has the NVIDIA driver and CUDA 13 libraries (as
# PyTorch's cu130 wheels bring them) but no Rust, no network and no copy of the model: prepared
# here, run there, within 8 minutes.
#
#   scripts/device-convert.sh prepare [MODEL.gguf]   here: build, gather into device/ (git-ignored)
#   scripts/device-convert.sh stage                  there: check the pieces carried so far
#   scripts/device-convert.sh run [OUTDIR]           there, from the repository root: test, convert
#
# prepare builds tomoe-convert and the CUDA test (tests/convert_cuda.rs) with --features cuda
# (scripts/build-cuda.sh), strips and compresses them, and packs them with the model (default:
# SmolLM2-135M-Instruct Q4_1, fetched by scripts/fetch-models.sh) into one checksummed stream cut
# into pieces device/1, device/2, ...: one call to the GPU machine carries at most 64 MiB with the
# working tree, and the 94 MiB model alone is over that. Each piece is one call's carry; the
# machine keeps what earlier calls left (for 30 s after a call), so the calls must follow each
# other at once: `stage` after each but the last, `run` with the last. prepare prints the calls.
#
# run joins and verifies the pieces, finds the CUDA libraries the binary needs (PyTorch's
# site-packages nvidia/*/lib, torch/lib, /usr/local/cuda, ldconfig; TOMOE_CUDA_LIBS=dir:dir first)
# and fails naming any it cannot find, runs the CPU-vs-CUDA test, then converts on the GPU with a
# time budget so the whole run ends within TOMOE_DEVICE_BUDGET seconds (default 480): training
# stops early if needed (--train-seconds), then decoding, calibration, export and a perplexity
# evaluation follow. OUTDIR (default $OUT, else device-out/) gets the logs and a summary with the
# training tokens/s; the converted GGUF (~150 MiB) stays in TOMOE_DEVICE_WORK (/tmp/tomoe-device).
# Conversion settings: P (0.5), STEPS (450), SEQ (256), LR (5e-3), OUTTYPE (q8_0), CHUNKS (16):
# those of docs/CONVERSION.md's p = 0.5 row, so the result compares with the CPU run there.
# TOMOE_DEVICE=cpu runs the same on the CPU (a dry run of the script and its budget).
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT=$((64 * 1024 * 1024)) # what one call carries, working tree included
MARGIN=$((1024 * 1024))

die() { echo "device-convert.sh: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# The bytes that travel with every call: tracked files, untracked files git does not ignore, shared/.
tree_bytes() {
  {
    git ls-files -z --cached --others --exclude-standard
    if [ -d shared ]; then find shared -type f -print0; fi
  } | { xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'
}

prepare() {
  local model="${1:-}"
  if [ -z "$model" ]; then
    scripts/fetch-models.sh smollm2
    model="${TOMOE_MODELS:-$HOME/.cache/tomoe/models}/smollm2-135m-instruct-q4_1.gguf"
  fi
  [ -f "$model" ] || die "no model file $model"
  # device/ must be ignored, or every call would carry it whole.
  local ex; ex="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$ex")"
  grep -qx '/device/' "$ex" 2>/dev/null || echo '/device/' >> "$ex"
  git check-ignore -q device/x || die "device/ is not ignored by git"

  echo "== building (scripts/build-cuda.sh)" >&2
  scripts/build-cuda.sh >/dev/null
  eval "$(scripts/build-cuda.sh --env)"
  local test_bin
  test_bin=$(cargo test --release --features cuda --test convert_cuda --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "convert_cuda":
        print(m["executable"])')
  [ -x "$test_bin" ] || die "the CUDA test did not build"

  rm -rf device
  local stage=device/stage
  mkdir -p "$stage/bin"
  local name
  for name in tomoe-convert convert_cuda; do
    local b="$CARGO_TARGET_DIR/release/tomoe-convert"
    [ "$name" = convert_cuda ] && b="$test_bin"
    strip -o "$stage/bin/$name" "$b"
    xz -T2 -6 "$stage/bin/$name"
  done
  readelf -d "$CARGO_TARGET_DIR/release/tomoe-convert" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' > "$stage/bin/needed.txt"
  ln "$model" "$stage/model.gguf" 2>/dev/null || cp "$model" "$stage/model.gguf"
  basename "$model" > "$stage/model.name"
  tar -cf device/stream -C "$stage" bin model.gguf model.name
  rm -rf "$stage"

  local tree total piece n
  tree=$(tree_bytes)
  total=$(stat -c %s device/stream)
  piece=$((LIMIT - MARGIN - tree - 4096))
  [ "$piece" -gt $((8 * 1024 * 1024)) ] || die "the working tree ($tree bytes) leaves no room to carry anything"
  n=$(((total + piece - 1) / piece))
  local whole; whole=$(sha device/stream)
  split -b "$piece" -d -a 2 device/stream device/piece.
  rm device/stream
  local i=1
  for p in device/piece.*; do
    mkdir -p "device/$i"
    mv "$p" "device/$i/data"
    printf 'pieces %s\nstream %s\npiece %s %s\n' "$n" "$whole" "$i" "$(sha "device/$i/data")" > "device/$i/MANIFEST"
    i=$((i + 1))
  done
  echo "prepared device/1..device/$n: model $(basename "$model") ($(du -m "$model" | cut -f1) MiB), binaries" \
    "compressed ($(du -m "$CARGO_TARGET_DIR/release/tomoe-convert" | cut -f1) MiB tomoe-convert unstripped);" \
    "stream $((total / 1024 / 1024)) MiB in $n piece(s) of at most $((piece / 1024 / 1024)) MiB" \
    "(working tree $((tree / 1024 / 1024)) MiB)."
  echo "On the GPU machine, make these $n calls one right after the other (it keeps files 30 s):"
  for ((i = 1; i < n; i++)); do
    echo "  call $i: carry [\"device/$i\"], command: scripts/device-convert.sh stage"
  done
  echo "  call $n: carry [\"device/$n\"], command: scripts/device-convert.sh run   (timeout_s 560)"
}

# Checks the pieces present; prints what is missing. Returns 0 when all are there.
check_pieces() {
  local any n whole
  any=$(ls device/*/MANIFEST 2>/dev/null | head -1)
  [ -n "$any" ] || die "no device/N/MANIFEST here: run 'prepare' on the build machine and carry the folders it made"
  n=$(sed -n 's/^pieces //p' "$any")
  whole=$(sed -n 's/^stream //p' "$any")
  local missing=() i
  for ((i = 1; i <= n; i++)); do
    local m="device/$i/MANIFEST"
    if [ ! -f "$m" ] || [ ! -f "device/$i/data" ]; then
      missing+=("device/$i")
      continue
    fi
    [ "$(sed -n 's/^stream //p' "$m")" = "$whole" ] || die "device/$i is from another 'prepare' (stream checksums differ)"
    [ "$(sha "device/$i/data")" = "$(sed -n "s/^piece $i //p" "$m")" ] || die "device/$i/data is damaged (checksum)"
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "pieces missing: ${missing[*]} (of $n). A machine keeps the files of earlier calls only while" \
      "it stays warm (30 s after a call): carry the missing ones in calls right after each other." >&2
    return 1
  fi
  echo "all $n piece(s) present and verified" >&2
}

# Directories holding the CUDA libraries, most specific first.
lib_candidates() {
  if [ -n "${TOMOE_CUDA_LIBS:-}" ]; then tr ':' '\n' <<< "$TOMOE_CUDA_LIBS"; fi
  local py
  for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" - <<'EOF' 2>/dev/null || true
import importlib.util, os
for name in ("nvidia", "torch"):
    spec = importlib.util.find_spec(name)
    for base in (spec.submodule_search_locations or []) if spec else []:
        if name == "torch":
            print(os.path.join(base, "lib"))
            continue
        for d in sorted(os.listdir(base)):
            if os.path.isdir(os.path.join(base, d, "lib")):
                print(os.path.join(base, d, "lib"))
EOF
  done
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
    /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -d "$d" ] && echo "$d"
  done
  if command -v ldconfig >/dev/null; then
    ldconfig -p 2>/dev/null | sed -n 's/.*=> \(.*\)\/[^/]*$/\1/p' | sort -u
  fi
}

# Sets LD_LIBRARY_PATH so that every CUDA library the binary needs is found; dies naming the missing.
find_libs() {
  local needed="$1" dirs=() missing=() lib d found
  mapfile -t cands < <(lib_candidates | awk '!seen[$0]++')
  while read -r lib; do
    case "$lib" in libcu* | libnvrtc* | libnvJitLink*) ;; *) continue ;; esac
    found=""
    for d in "${cands[@]}"; do
      if [ -e "$d/$lib" ]; then found="$d"; break; fi
    done
    if [ -z "$found" ]; then missing+=("$lib"); continue; fi
    echo "  $lib: $found/$lib" >&2
    [[ " ${dirs[*]:-} " == *" $found "* ]] || dirs+=("$found")
  done < "$needed"
  if [ ${#missing[@]} -gt 0 ]; then
    echo "device-convert.sh: CUDA libraries not found: ${missing[*]}" >&2
    echo "  searched: ${cands[*]}" >&2
    echo "  the binary is built for CUDA 13 (PyTorch's cu130 wheels: nvidia-cublas, nvidia-curand," \
      "nvidia-cuda-nvrtc, nvidia-cuda-runtime); set TOMOE_CUDA_LIBS=dir:dir to where they are" >&2
    exit 1
  fi
  LD_LIBRARY_PATH="$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
}

run() {
  local t0=$SECONDS budget="${TOMOE_DEVICE_BUDGET:-480}" dev="${TOMOE_DEVICE:-cuda}"
  local out="${1:-${OUT:-device-out}}" work="${TOMOE_DEVICE_WORK:-/tmp/tomoe-device}"
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  exec > >(tee "$out/run.log") 2>&1
  echo "== pieces"
  check_pieces || exit 1
  rm -rf "$work" && mkdir -p "$work"
  local n i; n=$(sed -n 's/^pieces //p' device/1/MANIFEST)
  for ((i = 1; i <= n; i++)); do cat "device/$i/data"; done | tar -xf - -C "$work"
  for f in "$work"/bin/*.xz; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "${f%.xz}"
    chmod +x "${f%.xz}" && rm "$f"
  done
  echo "== CUDA libraries"
  find_libs "$work/bin/needed.txt"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  if ldd "$work/bin/tomoe-convert" | grep "not found"; then die "the binary still misses libraries (above)"; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  nproc

  echo "== CPU vs CUDA test (tests/convert_cuda.rs)"
  local test_rc=0
  local require=1
  [ "$dev" = cuda ] || require=0
  TOMOE_REQUIRE_CUDA=$require timeout 150 "$work/bin/convert_cuda" --test-threads=1 --nocapture \
    > "$out/test.log" 2>&1 || test_rc=$?
  grep -A1 -E "^test |test result|loss .* vs |panicked" "$out/test.log" | grep -v '^--$' | tail -40 || true
  echo "test exit status: $test_rc"

  echo "== conversion on $dev ($(cat "$work/model.name"))"
  local left=$((budget - (SECONDS - t0) - 15))
  local train_s=$((left - 170))
  [ "$train_s" -ge 20 ] || die "only $left s left of the $budget s budget: no time to train"
  local a=tests/data/austen calib=() book
  for book in emma mansfieldpark northangerabbey prideprejudice sensesensibility; do
    calib+=(--calib "$a/$book.txt")
  done
  local p="${P:-0.5}" conv_rc=0 start=$SECONDS
  set -o pipefail
  timeout "$left" "$work/bin/tomoe-convert" --device "$dev" --input "$work/model.gguf" "${calib[@]}" \
    --p "$p" --steps "${STEPS:-450}" --seq-len "${SEQ:-256}" --lr "${LR:-5e-3}" \
    --outtype "${OUTTYPE:-q8_0}" --train-seconds "$train_s" \
    --output "$work/tomoe-p$p.gguf" --eval "$a/persuasion.txt" --eval-chunks "${CHUNKS:-16}" 2>&1 |
    tr '\r' '\n' | grep --line-buffered -v '^$' > "$out/convert.log" || conv_rc=$?
  echo "conversion exit status: $conv_rc (124: stopped by the $left s budget) after $((SECONDS - start)) s"

  {
    echo "device run $(date -u +%FT%TZ): $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    echo "test: exit $test_rc; $(grep 'test result' "$out/test.log" | tail -1)"
    grep -E "^model |training: |training tokens/s|stopped training|active fraction|wrote |^eval " "$out/convert.log" || true
    echo "conversion exit status $conv_rc; whole run $((SECONDS - t0)) s of $budget"
    [ "$conv_rc" = 0 ] || { echo "last lines of convert.log:"; tail -5 "$out/convert.log"; }
    [ -f "$work/tomoe-p$p.gguf" ] && echo "output $work/tomoe-p$p.gguf ($(du -m "$work/tomoe-p$p.gguf" | cut -f1) MiB, sha256 $(sha "$work/tomoe-p$p.gguf"))"
  } > "$out/summary.txt"
  echo "== summary ($out)"
  cat "$out/summary.txt"
  [ "$test_rc" = 0 ] && [ "$conv_rc" = 0 ]
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  stage) check_pieces || true ;;
  run) shift; run "$@" ;;
  *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
