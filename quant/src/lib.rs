//! `tomoe-quant`: GGML-compatible block quantization formats and the kernels a CPU runtime needs.
//!
//! No knowledge of models or files lives here. Layout:
//! - `formats`: one table describing every block format (name, ggml type id, block size, bytes).
//! - `blocks/`: per format, the block layout, quantize and dequantize (the scalar reference).
//! - `kernels/`: dot products of each weight format against quantized activations, one file per
//!   instruction set (scalar, avx2, avx512, neon), all implementing the same functions; and, for
//!   AVX-512, tiled matrix-matrix kernels (`avx512_gemm`, prompt processing), and matrix-vector
//!   kernels and weighted row sums (a MoE expert's transposed down projection) over rows
//!   interleaved in groups of 16 (`avx512_il`, decoding; layouts in `interleave`): the products
//!   bit-identical to the single-row kernels, the row sums integer dot products with 8-bit
//!   coefficients (`kernels::scalar::axpy16_q8_0_quantized`).
//! - `ops/`: products over row ranges, parallel with rayon: the matrix and its interleaved copies
//!   (`matrix`), quantized activations (`input`), matrix-vector and matrix-matrix products
//!   (`dense`), and a MoE expert's sparse products over its rows (`sparse`: [`swiglu_rows`],
//!   [`axpy_runs`]).
//! - `dispatch`: picks the kernel set once at start-up by run-time feature detection.
//! - [`vecmath`]: element-wise exp/SiLU/softmax and the f32 attention products that round
//!   exactly as ggml's do, through the set's f32 kernels (`kernels::f32_table`).

// The kernels test divisibility as `n % k == 0` throughout.
#![allow(clippy::manual_is_multiple_of)]

pub mod blocks;
pub mod dispatch;
mod error;
mod formats;
pub mod kernels;
mod ops;
pub mod vecmath;

pub use error::QuantError;
pub use formats::{QuantType, QK, QK_K};
pub use ops::{
    axpy_rows, axpy_runs, gated_rows, matmul, matvec, matvec_rows, run_pieces, swiglu_rows,
    CopyLayout, ExtraGroup, GateActivation, MatRef, Piece, QuantizedInput,
};

/// Quantizes one row (`src.len()` a multiple of the block size) into `dst`
/// (`dst.len() == ty.row_bytes(src.len())`), bit-identical to ggml's reference quantizers.
///
/// # Panics
/// If the lengths do not fit (a caller bug; use [`QuantType::row_bytes`] to size `dst`).
pub fn quantize_row(ty: QuantType, src: &[f32], dst: &mut [u8]) {
    let need = ty.row_bytes(src.len());
    assert!(
        need == Some(dst.len()),
        "quantize_row {ty}: {} values need {need:?} bytes, got {}",
        src.len(),
        dst.len()
    );
    (blocks::codec(ty).0)(src, dst);
}

/// Dequantizes one row: `dst.len()` elements from `src` (`src.len() == ty.row_bytes(dst.len())`).
///
/// # Panics
/// If the lengths do not fit.
pub fn dequantize_row(ty: QuantType, src: &[u8], dst: &mut [f32]) {
    let need = ty.row_bytes(dst.len());
    assert!(
        need == Some(src.len()),
        "dequantize_row {ty}: {} values need {need:?} bytes, got {}",
        dst.len(),
        src.len()
    );
    (blocks::codec(ty).1)(src, dst);
}

/// Dot product of a weight row of `n` elements (format `ty`) with an activation row quantized
/// to `ty.vec_dot_type()`, with the best kernels of this CPU.
///
/// # Panics
/// If the slices are not exactly the rows of `n` elements.
pub fn vec_dot(ty: QuantType, n: usize, w_row: &[u8], x: &[u8]) -> f32 {
    assert!(
        ty.row_bytes(n) == Some(w_row.len()),
        "vec_dot {ty}: weight row of {} bytes for {n} values",
        w_row.len()
    );
    assert!(
        ty.vec_dot_type().row_bytes(n) == Some(x.len()),
        "vec_dot {ty}: activation row of {} bytes for {n} values",
        x.len()
    );
    let dot = dispatch::kernels().dot(ty);
    // SAFETY: the dispatched kernels are supported by this CPU; lengths checked above.
    unsafe { dot(n, w_row, x) }
}

/// The kernel set chosen at run time: "avx512-vnni", "avxvnni", "avx2", "neon-dotprod", "neon",
/// "scalar".
pub fn kernel_name() -> &'static str {
    dispatch::kernels().name
}
