//! The forward pass: KV cache, single-token (matrix-vector) and batch (matrix-matrix) paths.
