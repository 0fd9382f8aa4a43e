//! RoPE's rotation of one head's dimensions by the cos/sin of each rotated pair, with the fused
//! multiply-adds that ggml's C compiles its expression to (the first product fused into each
//! sum), so that positions round as in llama.cpp. Without FMA in the build, `mul_add` is a libm
//! call per element: the SIMD bodies are what make RoPE cheap on x86.

use super::f32_kernels;

/// Rotates the first `2·cos.len()` values of `x`: pair `i` is `(x[2i], x[2i+1])` (`neox`
/// false: llama's adjacent pairs) or `(x[i], x[i + cos.len()])` (`neox`: NeoX's halves), by
/// angle `i`: `(a, b) → (a·cos − b·sin, a·sin + b·cos)`, each a fused multiply-add of `a`'s
/// product into the rounded product of `b`.
///
/// # Panics
/// If `cos` and `sin` differ in length or `x` holds fewer than `2·cos.len()` values.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    assert_eq!(cos.len(), sin.len(), "rope: cos and sin differ in length");
    assert!(x.len() >= 2 * cos.len(), "rope: {} values for {} pairs", x.len(), cos.len());
    // SAFETY: the set in use runs on this CPU; the lengths were checked.
    unsafe { (f32_kernels().rope)(x, cos, sin, neox) }
}

/// The reference of [`rope`] (the caller checks the lengths).
pub fn rope_scalar(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    rope_pairs_scalar(x, cos, sin, neox, 0);
}

/// [`rope_scalar`] from pair `first` on: the SIMD bodies' tails.
pub(crate) fn rope_pairs_scalar(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool, first: usize) {
    let n = cos.len();
    for i in first..n {
        let (ia, ib) = if neox { (i, i + n) } else { (2 * i, 2 * i + 1) };
        let (a, b) = (x[ia], x[ib]);
        x[ia] = a.mul_add(cos[i], -(b * sin[i]));
        x[ib] = a.mul_add(sin[i], b * cos[i]);
    }
}
