#!/usr/bin/env bash
# Instructions per 32 weights (per row) of the NEON matrix-vector kernels beside ggml's, counted
# from qemu instruction traces: each kernel runs once on 64 and once on 128 blocks between calls
# of a marker function (quant/examples/neon_instr.rs; for ggml, a C caller of its quants.c built
# here), `qemu-aarch64 -cpu max -d in_asm,exec,nochain` logs every translated block and each
# execution, and (count(128) - count(64)) / 64 / rows is the executed instructions per block of
# 32 weights per row: calls, branches and spills included, per-call work excluded.
# Needs what scripts/test-aarch64.sh needs, python3, and the vendored llama.cpp of the
# llama-cpp-sys-2 crate in the cargo registry (for ggml's arch/arm/quants.c).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/tomoe/target}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -q --release -p tomoe-quant --target aarch64-unknown-linux-gnu --example neon_instr
ggml=$(find ~/.cargo/registry/src -path '*llama-cpp-sys-2*/ggml/src/ggml-cpu/arch/arm/quants.c' | sort | tail -1)
ggml=${ggml%/src/ggml-cpu/arch/arm/quants.c}
echo "ggml source: ${ggml#$HOME/.cargo/registry/src/}" >&2
echo "compiler: $(aarch64-linux-gnu-gcc --version | head -1)" >&2
cat > "$work/calls.c" <<'EOF'
/* Calls ggml's NEON dot products once on 64 and once on 128 blocks between marker calls. */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
void ggml_vec_dot_q4_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_1_q8_1(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q8_0_q8_0(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q2_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q3_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q6_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
__attribute__((noinline)) void mark(void) { __asm__ volatile("" ::: "memory"); }
typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
int main(void) {
    /* per: values per block; blocks below count 32 values each. */
    struct { const char *name; dot_fn f; int per, wbytes, xbytes; } k[] = {
        {"q4_0", ggml_vec_dot_q4_0_q8_0, 32, 18, 34}, {"q4_1", ggml_vec_dot_q4_1_q8_1, 32, 20, 36},
        {"q5_0", ggml_vec_dot_q5_0_q8_0, 32, 22, 34}, {"q8_0", ggml_vec_dot_q8_0_q8_0, 32, 34, 34},
        {"q2_k", ggml_vec_dot_q2_K_q8_K, 256, 84, 292}, {"q3_k", ggml_vec_dot_q3_K_q8_K, 256, 110, 292},
        {"q4_k", ggml_vec_dot_q4_K_q8_K, 256, 144, 292}, {"q5_k", ggml_vec_dot_q5_K_q8_K, 256, 176, 292},
        {"q6_k", ggml_vec_dot_q6_K_q8_K, 256, 210, 292},
    };
    printf("mark %#lx\n", (unsigned long)(uintptr_t)mark);
    for (int i = 0; i < 9; i++) {
        for (int blocks = 64; blocks <= 128; blocks *= 2) {
            int nb = blocks * 32 / k[i].per;
            uint8_t *w = malloc(nb * k[i].wbytes), *x = malloc(nb * k[i].xbytes);
            for (int j = 0; j < nb * k[i].wbytes; j++) w[j] = (uint8_t)(j * 37 + 11);
            for (int j = 0; j < nb * k[i].xbytes; j++) x[j] = (uint8_t)(j * 53 + 7);
            /* Scales 1.0 (f16 0x3c00; Q8_K's f32 0x3f800000), so no value is NaN or subnormal. */
            for (int b = 0; b < nb; b++) {
                uint8_t *wb = w + b * k[i].wbytes, *xb = x + b * k[i].xbytes;
                if (k[i].per == 256) {
                    /* d (and dmin after it): last in Q2_K, Q3_K, Q6_K; first in Q4_K, Q5_K */
                    int w = k[i].wbytes;
                    int d = w == 210 ? 208 : w == 110 ? 108 : w == 84 ? 80 : 0;
                    wb[d] = 0x00; wb[d + 1] = 0x3c;
                    if (d == 0 || w == 84) { wb[d + 2] = 0x00; wb[d + 3] = 0x3c; }
                    xb[0] = 0x00; xb[1] = 0x00; xb[2] = 0x80; xb[3] = 0x3f;
                    continue;
                }
                wb[0] = 0x00; wb[1] = 0x3c;
                xb[0] = 0x00; xb[1] = 0x3c;
                if (k[i].xbytes == 36) { xb[2] = 0x00; xb[3] = 0x3c; }
                if (k[i].wbytes == 20) { wb[2] = 0x00; wb[3] = 0x3c; }
            }
            float s;
            mark();
            k[i].f(32 * blocks, &s, 0, w, 0, x, 0, 1);
            mark();
            printf("ggml/%s/dot 1 %d\n", k[i].name, blocks);
            free(w); free(x);
        }
    }
    return 0;
}
EOF
cat > "$work/count.py" <<'EOF'
import re, sys
# usage: count.py LOG OUT  -> per measured call: label rows blocks instructions
log, out = sys.argv[1], sys.argv[2]
lines = open(out).read().split("\n")
mark = int(lines[0].split()[1], 16)
labels = [l.split() for l in lines[1:] if l.strip()]
size, cur, counts, inside, n = {}, None, [], False, 0
pat_in = re.compile(r"^0x([0-9a-f]+):")
with open(log, errors="replace") as f:
    for line in f:
        if line.startswith("IN:"):
            cur, first = None, True
            continue
        m = pat_in.match(line)
        if m and cur is not None or (m and first):
            pc = int(m.group(1), 16)
            if first:
                cur, first = pc, False
                size[cur] = 0
            size[cur] += 1
            continue
        if line.startswith("Trace "):
            cur, first = None, False
            pc = int(line.split("[")[1].split("/")[1], 16)
            if pc == mark:
                if inside:
                    counts.append(n)
                inside, n = not inside, 0
            elif inside:
                n += size[pc]
assert len(counts) == len(labels), (len(counts), len(labels))
for (label, rows, blocks), c in zip(labels, counts):
    print(label, rows, blocks, c)
EOF
# The traced runs (one log each, deleted after counting: they are a few hundred MB).
trace() {
    qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max -d in_asm,exec,nochain -D "$work/log" "$@" > "$work/out"
    python3 "$work/count.py" "$work/log" "$work/out"
    rm -f "$work/log"
}
{
    trace "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/examples/neon_instr"
    aarch64-linux-gnu-gcc -O2 -c "$work/calls.c" -o "$work/calls.o"
    for v in "ggml-dotprod:-march=armv8.2-a+dotprod" "ggml-neon:-march=armv8-a"; do
        name=${v%%:*}
        aarch64-linux-gnu-gcc -O3 "${v#*:}" -DNDEBUG -I"$ggml/include" -I"$ggml/src" \
            -I"$ggml/src/ggml-cpu" -c "$ggml/src/ggml-cpu/arch/arm/quants.c" -o "$work/q.o"
        # Only these dot products run: the rest of quants.c may stay unresolved.
        aarch64-linux-gnu-gcc -static "$work/calls.o" "$work/q.o" -o "$work/$name" \
            -Wl,--unresolved-symbols=ignore-all -lm
        trace "$work/$name" | sed "s|^ggml/|$name/|"
    done
} > "$work/counts"
python3 - "$work/counts" <<'EOF'
import sys
per = {}
for line in open(sys.argv[1]):
    label, rows, blocks, n = line.split()
    per.setdefault(label, {})[int(blocks)] = (int(rows), int(n))
def cell(label):
    v = per.get(label)
    if not v:
        return "–"
    rows = v[64][0]
    return f"{(v[128][1] - v[64][1]) / 64 / rows:.1f}"
print("| format | neon: 1 row | neon: dot16 | ggml armv8-a | neon-dotprod: 1 row | neon-dotprod: dot16 | ggml +dotprod |")
print("|---|---|---|---|---|---|---|")
for ty in ["q4_0", "q4_1", "q5_0", "q8_0"]:
    print(f"| {ty} | {cell(f'neon/{ty}/dot')} | {cell(f'neon/{ty}/dot16')} | {cell(f'ggml-neon/{ty}/dot')} "
          f"| {cell(f'neon-dotprod/{ty}/dot')} | {cell(f'neon-dotprod/{ty}/dot16')} | {cell(f'ggml-dotprod/{ty}/dot')} |")
for ty in ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]:
    print(f"| {ty} | {cell(f'neon/{ty}/dot')} | – | {cell(f'ggml-neon/{ty}/dot')} "
          f"| {cell(f'neon-dotprod/{ty}/dot')} | – | {cell(f'ggml-dotprod/{ty}/dot')} |")
print(f"| q8_0 axpy16 | | {cell('neon/q8_0/axpy16')} | | | {cell('neon-dotprod/q8_0/axpy16')} | |")
print()
print("Groups unpacked for prompts: the unpacking (once per group) and the product over the unpacked")
print("group (per vector), per row of the 16 and 32 weights:")
print()
print("| format | neon: unpack16 | neon: unpacked dot16 | neon-dotprod: unpack16 | neon-dotprod: unpacked dot16 |")
print("|---|---|---|---|---|")
for ty in ["q4_0", "q5_0"]:
    print(f"| {ty} | {cell(f'neon/{ty}/unpack16')} | {cell(f'neon/{ty}/unpacked16')} "
          f"| {cell(f'neon-dotprod/{ty}/unpack16')} | {cell(f'neon-dotprod/{ty}/unpacked16')} |")
print()
print("K-quant rows unpacked for prompts: the unpacking (once per row) and the dot product over the")
print("unpacked row (per row and vector), per 32 weights:")
print()
print("| format | neon: unpack | neon: unpacked dot | neon-dotprod: unpack | neon-dotprod: unpacked dot |")
print("|---|---|---|---|---|")
for ty in ["q4_k", "q6_k"]:
    print(f"| {ty} | {cell(f'neon/{ty}/unpack')} | {cell(f'neon/{ty}/unpacked')} "
          f"| {cell(f'neon-dotprod/{ty}/unpack')} | {cell(f'neon-dotprod/{ty}/unpacked')} |")
print()
print("Tiled smmla kernels (neon-dotprod where the CPU has i8mm), per 32 weights per (row, vector),")
print("16 rows by 16 vectors per call, the activations packed beforehand:")
print()
print("| format | " + " | ".join(["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]) + " |")
print("|---|---|---|---|---|---|")
print("| neon-dotprod gemm | " + " | ".join(cell(f"neon-dotprod/{t}/gemm") for t in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]) + " |")
EOF
