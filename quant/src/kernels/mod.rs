//! Dot-product kernels, one module per instruction set, all with the signature of [`DotFn`].

pub mod scalar;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;

/// `dot(n, w_row, x_row)`: `n` elements; `w_row` in the weight format, `x_row` in its
/// `vec_dot_type`. Unsafe because SIMD versions require their CPU features; callers get them
/// from [`crate::dispatch`], which only hands out functions the CPU supports. Each kernel
/// checks (once per row) that the slices hold `n` elements.
pub type DotFn = unsafe fn(usize, &[u8], &[u8]) -> f32;

/// A [`DotFn`] for the formats with a per-block offset (Q4_1, Q5_1) that also takes the
/// activation row's block sums, `sums[i] = d_x(i) · Σ_j y_ij`, computed once per activation
/// vector by `QuantizedInput` (ggml keeps them inside its Q8_1 blocks for the same reason:
/// otherwise every row's dot product recomputes them).
pub type DotSumsFn = unsafe fn(usize, &[u8], &[u8], &[f32]) -> f32;

/// Four rows at once against one activation row: `[dot(w[0], x), .., dot(w[3], x)]`, each
/// bit-identical to the set's single-row kernel (same per-row operations, interleaved so the
/// rows' accumulator chains overlap and each activation block is loaded once). `sums` as for
/// [`DotSumsFn`] for the formats with a per-block offset, else unused (may be empty).
pub type Dot4Fn = unsafe fn(usize, [&[u8]; 4], &[u8], &[f32]) -> [f32; 4];
