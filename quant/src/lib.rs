//! `tomoe-quant`: GGML-compatible block quantization formats and the kernels a CPU runtime needs.
//!
//! No knowledge of models or files lives here. Layout:
//! - [`formats`]: one table describing every block format (name, ggml type id, block size, bytes).
//! - `blocks/`: per format, the block layout, quantize and dequantize (the scalar reference).
//! - `kernels/`: dot products of each weight format against quantized activations, one file per
//!   instruction set (scalar, avx2, avx512, neon), all implementing the same functions.
//! - `dispatch`: picks the kernel set once at start-up by run-time feature detection.
//! - `ops`: matrix-vector and matrix-matrix products over row ranges, parallel with rayon.
