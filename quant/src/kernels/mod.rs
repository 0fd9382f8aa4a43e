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
