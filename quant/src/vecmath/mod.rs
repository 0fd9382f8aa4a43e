//! The f32 vector math of the forward pass that must round exactly as ggml's CPU backend does:
//! `exp` (ggml's polynomial, not libm's), SiLU/SwiGLU, the softmax of attention scores, and the
//! two f32 products of attention (query·key, and the probability-weighted sum of values), each
//! summed in the same order as ggml.
//!
//! Why bit-exactness matters: every matrix product quantizes its input to 8 bits, and a model
//! like SmolLM2 has activation outliers of several hundred, so a 1-ulp difference upstream can
//! flip the rounding of an 8-bit value worth ~outlier/127 downstream. Engines that compute the
//! same function with different rounding end up percents apart in the logits; engines that round
//! alike agree to float precision, which is what lets the tests hold llama.cpp as an oracle.
//!
//! Each function has a scalar reference (fused multiply-adds via `mul_add`, so it defines the
//! exact result). The public functions check the shapes and call the entry of the kernel set in
//! use (`KernelSet::f32`, see `crate::kernels::f32_table`): the scalar reference, or an ISA
//! file's SIMD version that equals it bit for bit (tested on random inputs, tails and extremes).
//!
//! By job: `activations` (exp, SiLU/SwiGLU, GELU/GeGLU, the softmax sum), `dots` (the f32
//! products), `f16` (conversions and the products over an f16 cache), `expand` (the value sums
//! over a compact V cache), `rope` (the rotation of queries and keys).

pub(crate) mod activations;
pub(crate) mod dots;
pub(crate) mod expand;
pub(crate) mod f16;
pub(crate) mod rope;

pub use activations::{
    exp, exp_sub_sum, exp_sub_sum_scalar, geglu, gelu_f16_table, silu, swiglu, swiglu_lanes, swiglu_scalar,
};
pub use dots::{
    dot, dot16_transposed, dot16_transposed_scalar, dot_chunks32, dot_chunks32_rows, dot_chunks32_rows_gemm,
    dot_chunks32_scalar, dot_rows, dot_scalar,
};
pub use expand::{expand_weighted_sum, expand_weighted_sum_scalar, expand_weighted_sums, expand_weighted_sums_unchecked};
pub use f16::{
    dot16_transposed_f16, dot16_transposed_f16_scalar, dot_chunks32_rows_f16, dot_chunks32_rows_gemm_f16, f16_to_f32,
    f32_to_f16, f32_to_f16_slice, f32_to_f16_slice_scalar, round_f16, round_f16_scalar,
};
pub use rope::{rope, rope_scalar};

/// The f32 entries of the kernel set in use.
#[inline(always)]
fn f32_kernels() -> &'static crate::kernels::f32_table::F32Kernels {
    &crate::dispatch::kernels().f32
}

/// The horizontal add of an 8-lane vector as `_mm256` code does it: halves, pairs, last two.
#[inline(always)]
pub(crate) fn hsum8(x: [f32; 8]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// A xorshift generator: reproducible test data without a dependency.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Deterministic inputs over the interesting ranges, plus the edges of each branch of `exp`.
#[cfg(test)]
pub(crate) fn test_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = (0..4000)
        .map(|i| ((i as f32) * 0.618_034).fract() * 40.0 - 20.0)
        .collect();
    v.extend((0..400).map(|i| (i as f32) * 0.5 - 100.0));
    v.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        87.0,
        88.7,
        89.0,
        100.0,
        -87.0,
        -88.0,
        -100.0,
        -103.0,
        -104.0,
        -105.0,
        -150.0,
        -200.0,
        200.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
    ]);
    v
}
