#!/usr/bin/env python3
"""Prints the BENCHMARKS.md table from criterion's estimates of the `matvec` bench.
Usage: python3 quant/benches/table.py [criterion dir, default $CARGO_TARGET_DIR/criterion]"""
import json, os, sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
MAT_ELEMS = 4096 * 4096
SIZES = {"f32": 4, "f16": 2, "bf16": 2, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32, "q8_0": 34 / 32,
         "q2_k": 84 / 256, "q3_k": 110 / 256, "q4_k": 144 / 256, "q5_k": 176 / 256, "q6_k": 210 / 256}

def ns(group, fn):
    p = os.path.join(root, group, fn.replace("/", "_"), "new", "estimates.json")
    with open(p) as f:
        return json.load(f)["median"]["point_estimate"]

bw = {t: (128 << 20) * 4 / ns("bandwidth", f"sum/{t}") for t in ("1t", "all")}
print(f"Bandwidth probe (sum over 512 MiB): 1 thread {bw['1t']:.1f} GB/s, all threads {bw['all']:.1f} GB/s\n")
print("| format | tomoe 1t GB/s | ggml 1t GB/s | ratio 1t | tomoe all GB/s | ggml all GB/s | ratio all | tomoe all / bandwidth |")
print("|---|---|---|---|---|---|---|---|")
for ty, size in SIZES.items():
    g = f"matvec_{ty}"
    try:
        r = {k: MAT_ELEMS * size / ns(g, k) for k in ("tomoe/1t", "ggml/1t", "tomoe/all", "ggml/all")}
    except FileNotFoundError:
        continue
    print(f"| {ty} | {r['tomoe/1t']:.1f} | {r['ggml/1t']:.1f} | {r['tomoe/1t']/r['ggml/1t']:.2f} | "
          f"{r['tomoe/all']:.1f} | {r['ggml/all']:.1f} | {r['tomoe/all']/r['ggml/all']:.2f} | {r['tomoe/all']/bw['all']:.2f} |")
