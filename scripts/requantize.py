#!/usr/bin/env python3
"""Rewrite a dense GGUF with its 2-D weight matrices in another format (e.g. Q4_1 -> Q8_0), for
benchmarks that compare a converted model with the dense one at the same quantization.
Metadata and 1-D tensors are copied unchanged. Uses the `gguf` package (pip install gguf).

    scripts/requantize.py IN.gguf OUT.gguf q8_0
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import dequantize, quantize


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, name = sys.argv[1:]
    target = GGMLQuantizationType[name.upper()]
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        if f.name == "general.file_type":
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        vals = dequantize(t.data, t.tensor_type)
        if len(t.shape) == 2:
            data, ty = quantize(vals.astype(np.float32), target), target
        else:
            data, ty = vals.astype(np.float32), GGMLQuantizationType.F32
        w.add_tensor(t.name, data, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
