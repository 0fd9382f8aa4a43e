//! Products of a quantized weight matrix with quantized activations, over row ranges, parallel
//! with rayon: the matrix and its interleaved copies (`matrix`), the quantized activations
//! (`input`), dense matrix-vector and matrix-matrix products (`dense`), and the sparse products
//! of a MoE expert's rows (`sparse`).

mod dense;
mod input;
mod matrix;
mod sparse;

pub use dense::{matmul, matvec, matvec_rows};
pub use input::QuantizedInput;
pub use matrix::{CopyLayout, ExtraGroup, MatRef};
pub use sparse::{axpy_rows, axpy_runs, gated_rows, run_pieces, swiglu_rows, GateActivation, Piece};
