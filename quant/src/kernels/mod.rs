//! Dot-product kernels, one module per instruction set, all with the signature of [`DotFn`].

pub mod scalar;


/// `dot(n, w_row, x_row)`: `n` elements; `w_row` in the weight format, `x_row` in its
/// `vec_dot_type`. Unsafe because SIMD versions require their CPU features; callers get them
/// from [`crate::dispatch`], which only hands out functions the CPU supports. Slices must hold
/// at least `row_bytes(n)` bytes (checked by the public entry points).
pub type DotFn = unsafe fn(usize, &[u8], &[u8]) -> f32;
