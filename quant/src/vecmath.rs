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
//! exact result) and, on x86-64 with AVX2+FMA, an 8-lane version that must equal it bit for bit
//! (tested on random inputs, tails and extremes).

/// Bit patterns of the constants of the exp approximation (range reduction by ln2 split in two
/// parts, then a degree-5 polynomial of the reduced argument).
const SHIFT: u32 = 0x4b40_0000; // 1.5 * 2^23: adding it rounds to an integer
const INV_LN2: u32 = 0x3fb8_aa3b;
const LN2_HI: u32 = 0x3f31_7200;
const LN2_LO: u32 = 0x35bf_be8e;
const C5: u32 = 0x3c07_2010;
const C4: u32 = 0x3d2b_9f17;
const C3: u32 = 0x3e2a_af33;
const C2: u32 = 0x3eff_fedb;
const C1: u32 = 0x3f7f_fff6;

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// e^x with ggml's vectorised approximation (≤ 1.5 ulp from the true value; exactly 0 below
/// about -104, +inf above about 89, NaN for NaN).
#[inline]
pub fn exp(x: f32) -> f32 {
    let z = x.mul_add(c(INV_LN2), c(SHIFT));
    let n = z - c(SHIFT);
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1) * b);
    let an = n.abs();
    if an <= 126.0 || an.is_nan() {
        return j.mul_add(k, k);
    }
    // |n| > 126: 2^n is not a normal float; scale in two steps (or saturate past 192).
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    if an > 192.0 {
        return s1 * s1;
    }
    let s2 = f32::from_bits(e.wrapping_sub(g));
    s2.mul_add(j, s2) * s1
}

/// x / (1 + e^-x), with [`exp`].
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(0.0 - x))
}

/// x / (1 + e^-x) with libm's `exp`: what ggml uses for the elements after the last full SIMD
/// vector.
#[inline]
fn silu_libm(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In place: `gate[i] = silu(gate[i]) * up[i]`, rounding as ggml's `ggml_vec_swiglu_f32` does
/// (8-lane vectors, then libm for the tail).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; lengths checked above.
        unsafe { avx2::swiglu(gate, up) };
        return;
    }
    swiglu_scalar(gate, up);
}

/// [`swiglu`] with the vector formula for every element, the tail too (through a zero-padded
/// vector), so that an element's result does not depend on where it sits in the slice: the MoE
/// expert MLPs, which cut the same rows differently for one token and for a batch.
pub fn swiglu_lanes(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    let full = gate.len() / 8 * 8;
    swiglu(&mut gate[..full], &up[..full]);
    let n = gate.len() - full;
    if n > 0 {
        let (mut g, mut u) = ([0f32; 8], [0f32; 8]);
        g[..n].copy_from_slice(&gate[full..]);
        u[..n].copy_from_slice(&up[full..]);
        swiglu(&mut g, &u);
        gate[full..].copy_from_slice(&g[..n]);
    }
}

/// The scalar reference of [`swiglu`].
pub fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / 8 * 8;
    for (g, &u) in gate[..full].iter_mut().zip(&up[..full]) {
        *g = silu(*g) * u;
    }
    for (g, &u) in gate[full..].iter_mut().zip(&up[full..]) {
        *g = silu_libm(*g) * u;
    }
}

/// In place: `x[i] = exp(x[i] - max)`, returning Σ x[i] accumulated as ggml's
/// `ggml_vec_soft_max_f32` does: per 8-lane vector a float sum (in the order of its horizontal
/// add), added into an f64; libm `exp` for the tail.
pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { avx2::exp_sub_sum(x, max) };
    }
    exp_sub_sum_scalar(x, max)
}

/// The scalar reference of [`exp_sub_sum`].
pub fn exp_sub_sum_scalar(x: &mut [f32], max: f32) -> f64 {
    let full = x.len() / 8 * 8;
    let mut sum = 0f64;
    for v in x[..full].chunks_exact_mut(8) {
        for e in v.iter_mut() {
            *e = exp(*e - max);
        }
        sum += hsum8(v.try_into().expect("8 lanes")) as f64;
    }
    for e in x[full..].iter_mut() {
        *e = (*e - max).exp();
        sum += *e as f64;
    }
    sum
}

/// GELU (tanh form) as ggml's CPU backend computes it inside GeGLU: looked up in a table of
/// f16 results indexed by the f16-rounded input (exactly 0 at or below -10, the identity at or
/// above 10). Lossier than evaluating it in f32, but that is what llama.cpp runs.
pub fn gelu_f16_table(x: f32) -> f32 {
    use crate::blocks::float::{f16_to_f32, f32_to_f16};
    use std::sync::OnceLock;
    static TABLE: OnceLock<Box<[u16]>> = OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| {
                let v = f16_to_f32(h);
                // 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))), with the fused multiply-add
                // that C compilers contract `1 + a·x·x` to.
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                let inner = (0.044715 * v).mul_add(v, 1.0);
                f32_to_f16(0.5 * v * (1.0 + (SQRT_2_OVER_PI * v * inner).tanh()))
            })
            .collect()
    });
    f16_to_f32(table[f32_to_f16(x) as usize])
}

/// In place: `gate[i] = gelu(gate[i]) * up[i]` with [`gelu_f16_table`] (ggml's GeGLU).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "geglu: gate and up differ in length");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = if *g >= 10.0 {
            *g * u
        } else {
            gelu_f16_table(*g) * u
        };
    }
}

/// Σ a[i]·b[i] in the order of ggml's `ggml_vec_dot_f32`: four 8-lane accumulators over steps of
/// 32 (fused multiply-adds), reduced pairwise, then the remaining elements one by one.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; lengths checked above.
        return unsafe { avx2::dot(a, b) };
    }
    dot_scalar(a, b)
}

/// The scalar reference of [`dot`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_by(|e| a[e], &b[..a.len()])
}

/// [`dot_scalar`] with element `e` of `a` given by `a(e)`: the chunks of 32 in
/// [`dot_chunks32`]'s dot order, then the tail one element at a time.
#[inline(always)]
fn dot_by(a: impl Fn(usize) -> f32, b: &[f32]) -> f32 {
    let np = b.len() / 32 * 32;
    let mut sum = chunks32_by(&a, &b[..np], false);
    for (e, &be) in b.iter().enumerate().skip(np) {
        sum = a(e).mul_add(be, sum);
    }
    sum
}

/// Σ a[i]·b[i] over whole chunks of 32, `a` stored in chunks: chunk `k` is
/// `a[k·stride .. k·stride + 32]` (`b.len()` a multiple of 32); for attention values cached in
/// blocks of 32 positions, which keeps the per-token cache writes local. Two summation orders:
/// [`dot`]'s (`gemm_order == false`), and that of ggml's f32 matrix-matrix kernel (llamafile's
/// tinyBLAS), which llama.cpp uses for the value sums of a batch: one 8-lane accumulator (fused
/// multiply-adds in order), then a horizontal add.
pub fn dot_chunks32(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
    assert!(
        b.len() % 32 == 0,
        "dot_chunks32: length {} is not a multiple of 32",
        b.len()
    );
    if let Some(last) = (b.len() / 32).checked_sub(1) {
        assert!(
            last * stride + 32 <= a.len(),
            "dot_chunks32: vector too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; every chunk is in bounds (checked).
        return unsafe { avx2::dot_chunks32(a, stride, b, gemm_order) };
    }
    dot_chunks32_scalar(a, stride, b, gemm_order)
}

/// The scalar reference of [`dot_chunks32`].
pub fn dot_chunks32_scalar(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
    chunks32_by(|e| a[e / 32 * stride + e % 32], b, gemm_order)
}

/// [`dot_chunks32_scalar`] with element `e` of `a` given by `a(e)`.
#[inline(always)]
fn chunks32_by(a: impl Fn(usize) -> f32, b: &[f32], gemm_order: bool) -> f32 {
    let mut acc = [[0f32; 8]; 4];
    for (k, bc) in b.chunks_exact(32).enumerate() {
        for q in 0..4 {
            // gemm order: one accumulator for every group of 8; dot order: four.
            let r = if gemm_order { 0 } else { q };
            for l in 0..8 {
                acc[r][l] = a(32 * k + 8 * q + l).mul_add(bc[8 * q + l], acc[r][l]);
            }
        }
    }
    if gemm_order {
        return hsum8(acc[0]);
    }
    let x: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `out[i] = dot(&a[i·row_stride..][..b.len()], b)` for every `i < out.len()`: many rows
/// against one vector (a router's logits, a V-mask head's outputs), each exactly [`dot`]'s
/// result.
///
/// # Panics
/// If the last row runs past the end of `a`.
pub fn dot_rows(a: &[f32], row_stride: usize, b: &[f32], out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            last * row_stride + b.len() <= a.len(),
            "dot_rows: {} rows of {} at a stride of {row_stride} exceed {} values",
            out.len(),
            b.len(),
            a.len()
        );
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; every row is in bounds (checked).
        return unsafe { avx2::dot_rows(a, row_stride, b, out) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_scalar(&a[i * row_stride..i * row_stride + b.len()], b);
    }
}

/// `out[i] = dot_chunks32(&a[i·row_stride..], stride, b, gemm_order)` for every `i < out.len()`:
/// several chunked vectors against one (the value sums of one query, one per dimension), each
/// exactly [`dot_chunks32`]'s result; the SIMD path runs several rows' accumulator chains at once.
///
/// # Panics
/// As [`dot_chunks32`], for the last row.
pub fn dot_chunks32_rows(
    a: &[f32],
    row_stride: usize,
    stride: usize,
    b: &[f32],
    gemm_order: bool,
    out: &mut [f32],
) {
    assert!(
        b.len() % 32 == 0,
        "dot_chunks32_rows: length {} is not a multiple of 32",
        b.len()
    );
    if let (Some(last), Some(last_chunk)) =
        (out.len().checked_sub(1), (b.len() / 32).checked_sub(1))
    {
        assert!(
            last * row_stride + last_chunk * stride + 32 <= a.len(),
            "dot_chunks32_rows: vectors too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; every chunk is in bounds (checked).
        return unsafe { avx2::dot_chunks32_rows(a, row_stride, stride, b, gemm_order, out) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_chunks32_scalar(&a[i * row_stride..], stride, b, gemm_order);
    }
}

/// The value sums of several queries at once: for each of `n_b` vectors
/// `b_q = b[q·b_stride..][..len]`, `out[q·out_stride + i] = dot_chunks32(&a[i·row_stride..], stride,
/// b_q, true)` for every `i < rows`, each exactly that (ggml's matrix-kernel order). The SIMD path
/// reads each chunk of `a` once for up to four vectors, so a head's cached values stream from L2
/// once per four queries instead of once per query.
///
/// # Panics
/// If `len` is not a multiple of 32, or a row, vector or output runs past its slice.
#[allow(clippy::too_many_arguments)]
pub fn dot_chunks32_rows_gemm(
    a: &[f32],
    row_stride: usize,
    stride: usize,
    rows: usize,
    b: &[f32],
    b_stride: usize,
    n_b: usize,
    len: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let (rows_a, vecs_b) = ((a, row_stride, stride, rows), (b, b_stride, n_b));
    if !check_rows_gemm("dot_chunks32_rows_gemm", rows_a, vecs_b, len, (out, out_stride)) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: AVX2 and FMA were detected at run time; every access is in bounds (checked).
        return unsafe {
            avx2::dot_chunks32_rows_gemm(
                a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride,
            )
        };
    }
    for q in 0..n_b {
        let bq = &b[q * b_stride..q * b_stride + len];
        for i in 0..rows {
            out[q * out_stride + i] = dot_chunks32_scalar(&a[i * row_stride..], stride, bq, true);
        }
    }
}

/// `out[l] = dot(key l, b)` for a block of 16 keys stored transposed (`kt`: at least
/// `16 · b.len()` values, element `e` of key `l` at `kt[16e + l]`), each exactly [`dot`]'s result:
/// attention scores with one SIMD lane per key, so each key element is loaded once and no dot
/// product needs its own reduction.
///
/// # Panics
/// If `kt` is shorter than `16 · b.len()`.
pub fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    assert!(
        kt.len() >= 16 * b.len(),
        "dot16_transposed: block too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            // SAFETY: AVX-512F detected at run time; the block holds 16 · b.len() values.
            return unsafe { avx512::dot16_transposed(kt, b, out) };
        }
        if avx2::available() {
            // SAFETY: AVX2 and FMA detected at run time; as above.
            return unsafe { avx2::dot16_transposed(kt, b, out) };
        }
    }
    dot16_transposed_scalar(kt, b, out)
}

/// The scalar reference of [`dot16_transposed`]: per key, [`dot_scalar`]'s order.
pub fn dot16_transposed_scalar(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    assert!(
        kt.len() >= 16 * b.len(),
        "dot16_transposed: block too short"
    );
    for (l, o) in out.iter_mut().enumerate() {
        *o = dot_by(|e| kt[16 * e + l], b);
    }
}

/// `x` as IEEE half-precision bits, rounded to nearest, ties to even: F16C's `vcvtps2ph` with
/// rounding control 0, which is ggml's `GGML_CPU_FP32_TO_FP16` (the f16 KV cache's stores and
/// the f16 copies of queries and probabilities). Overflow gives ±inf; values below half the
/// smallest subnormal give ±0; a NaN stays a quiet NaN with the top bits of its payload.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 { 0x0200 | (man >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A subnormal half (or zero): the significand with its implicit bit, shifted right.
        let shift = 14 - e;
        if shift > 24 {
            return sign;
        }
        let m = man | 0x80_0000;
        let half = m >> shift;
        let round = 1u32 << (shift - 1);
        // Round up past the halfway point, or at it when the result is odd.
        let up = m & round != 0 && m & (3 * round - 1) != 0;
        return sign | (half + up as u32) as u16;
    }
    let bits = ((e as u32) << 10) | (man >> 13);
    let up = man & 0x1000 != 0 && man & (3 * 0x1000 - 1) != 0;
    // A carry out of the significand steps the exponent (up to inf), as the hardware does.
    sign | (bits + up as u32) as u16
}

/// Half-precision bits as f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    match exp {
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        0 => {
            // Zero or subnormal: man · 2^-24, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            f32::from_bits(v.to_bits() | sign)
        }
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// `dst[i] = f32_to_f16(src[i])`.
///
/// # Panics
/// If the lengths differ.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_slice: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2::f16c_available() {
        // SAFETY: F16C detected at run time; the lengths are equal (checked).
        return unsafe { avx2::f32_to_f16_slice(src, dst) };
    }
    f32_to_f16_slice_scalar(src, dst)
}

/// The scalar reference of [`f32_to_f16_slice`].
pub fn f32_to_f16_slice_scalar(src: &[f32], dst: &mut [u16]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_to_f16(s));
}

/// Each value rounded to the nearest half-precision value (kept as f32, exactly): what ggml's
/// f16 matrix products see of an f32 operand, converted to f16 first.
pub fn round_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::f16c_available() {
        // SAFETY: F16C detected at run time.
        return unsafe { avx2::round_f16(x) };
    }
    round_f16_scalar(x)
}

/// The scalar reference of [`round_f16`].
pub fn round_f16_scalar(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = f16_to_f32(f32_to_f16(*v)));
}

/// [`dot16_transposed`] over keys cached as f16 bits (`kt`, the same layout), with `b` already
/// rounded to f16 values ([`round_f16`]), in one of the two orders of ggml's f16 products:
/// `gemm_order == false`, `ggml_vec_dot_f16` (one query: [`dot`]'s four accumulators over the
/// chunks of 32 and their reduction, then the tail added in f64 and the sum rounded to f32);
/// `gemm_order == true`, llamafile's tinyBLAS (a batch: one 8-lane accumulator over chunks of
/// 8, a partial last chunk padded with zeros, then the horizontal add of [`dot_chunks32`]'s gemm
/// order). Products of two f16 values are exact in f32, so these are the f16 kernels' results.
///
/// # Panics
/// If `kt` is shorter than `16 · b.len()`.
pub fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    assert!(
        kt.len() >= 16 * b.len(),
        "dot16_transposed_f16: block too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            // SAFETY: AVX-512F detected at run time; the block holds 16 · b.len() values.
            return unsafe { avx512::dot16_transposed_f16(kt, b, gemm_order, out) };
        }
        if avx2::f16c_available() {
            // SAFETY: AVX2, FMA and F16C detected at run time; as above.
            return unsafe { avx2::dot16_transposed_f16(kt, b, gemm_order, out) };
        }
    }
    dot16_transposed_f16_scalar(kt, b, gemm_order, out)
}

/// The scalar reference of [`dot16_transposed_f16`].
pub fn dot16_transposed_f16_scalar(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    assert!(
        kt.len() >= 16 * b.len(),
        "dot16_transposed_f16: block too short"
    );
    for (l, o) in out.iter_mut().enumerate() {
        let key = |e: usize| f16_to_f32(kt[16 * e + l]);
        *o = if gemm_order {
            let mut acc = [0f32; 8];
            for e in 0..b.len().next_multiple_of(8) {
                let (k, q) = if e < b.len() { (key(e), b[e]) } else { (0.0, 0.0) };
                acc[e % 8] = k.mul_add(q, acc[e % 8]);
            }
            hsum8(acc)
        } else {
            let np = b.len() / 32 * 32;
            let mut sum = chunks32_by(key, &b[..np], false) as f64;
            for (e, &be) in b.iter().enumerate().skip(np) {
                sum += (key(e) * be) as f64;
            }
            sum as f32
        };
    }
}

/// [`dot_chunks32_rows`] in the dot order over values cached as f16 bits (`a`), with `b`
/// already rounded to f16 values: `ggml_vec_dot_f16` of a whole number of chunks of 32 (no
/// tail), the value sums of one query over an f16 cache.
///
/// # Panics
/// As [`dot_chunks32_rows`].
pub fn dot_chunks32_rows_f16(
    a: &[u16],
    row_stride: usize,
    stride: usize,
    b: &[f32],
    out: &mut [f32],
) {
    assert!(
        b.len() % 32 == 0,
        "dot_chunks32_rows_f16: length {} is not a multiple of 32",
        b.len()
    );
    if let (Some(last), Some(last_chunk)) =
        (out.len().checked_sub(1), (b.len() / 32).checked_sub(1))
    {
        assert!(
            last * row_stride + last_chunk * stride + 32 <= a.len(),
            "dot_chunks32_rows_f16: vectors too short"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::f16c_available() {
        // SAFETY: AVX2, FMA and F16C detected at run time; every chunk is in bounds (checked).
        return unsafe { avx2::dot_chunks32_rows_f16(a, row_stride, stride, b, out) };
    }
    for (i, o) in out.iter_mut().enumerate() {
        let row = &a[i * row_stride..];
        *o = chunks32_by(|e| f16_to_f32(row[e / 32 * stride + e % 32]), b, false);
    }
}

/// The shape checks of the `dot_chunks32_rows_gemm*` functions (rows of `a`, vectors of `b`,
/// outputs): false when there is nothing to compute.
///
/// # Panics
/// As those functions.
fn check_rows_gemm<A>(
    name: &str,
    (a, row_stride, stride, rows): (&[A], usize, usize, usize),
    (b, b_stride, n_b): (&[f32], usize, usize),
    len: usize,
    (out, out_stride): (&[f32], usize),
) -> bool {
    assert!(len % 32 == 0, "{name}: length {len} is not a multiple of 32");
    if rows == 0 || n_b == 0 {
        return false;
    }
    let fits = |n: usize, stride: usize, width: usize, have: usize| {
        (n - 1).checked_mul(stride).and_then(|o| o.checked_add(width)).is_some_and(|e| e <= have)
    };
    let a_width = (len / 32).checked_sub(1).map_or(0, |c| c * stride + 32);
    assert!(
        fits(rows, row_stride, a_width, a.len())
            && fits(n_b, b_stride, len, b.len())
            && fits(n_b, out_stride, rows, out.len()),
        "{name}: shapes exceed the slices"
    );
    true
}

/// [`dot_chunks32_rows_gemm`] over values cached as f16 bits (`a`), with the vectors `b`
/// already rounded to f16 values: tinyBLAS's f16 order (the same as its f32 order on the
/// converted values), the value sums of a batch over an f16 cache.
///
/// # Panics
/// As [`dot_chunks32_rows_gemm`].
#[allow(clippy::too_many_arguments)]
pub fn dot_chunks32_rows_gemm_f16(
    a: &[u16],
    row_stride: usize,
    stride: usize,
    rows: usize,
    b: &[f32],
    b_stride: usize,
    n_b: usize,
    len: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let (rows_a, vecs_b) = ((a, row_stride, stride, rows), (b, b_stride, n_b));
    if !check_rows_gemm("dot_chunks32_rows_gemm_f16", rows_a, vecs_b, len, (out, out_stride)) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::f16c_available() {
        // SAFETY: AVX2, FMA and F16C detected at run time; every access is in bounds (checked).
        return unsafe {
            avx2::dot_chunks32_rows_gemm_f16(
                a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride,
            )
        };
    }
    for q in 0..n_b {
        let bq = &b[q * b_stride..q * b_stride + len];
        for i in 0..rows {
            let row = &a[i * row_stride..];
            let v = chunks32_by(|e| f16_to_f32(row[e / 32 * stride + e % 32]), bq, true);
            out[q * out_stride + i] = v;
        }
    }
}
/// `out[i] += Σ_j a[j] · v_j[i]` over positions `j` in order, where `v_j` is stored without its
/// masked-out entries (the values of a compact V cache): its kept entries are the set bits of
/// `bits[j·words..(j + 1)·words]` (bit `i % 64` of word `i / 64`; `words = out.len()` / 64
/// rounded up), and their values, in order, are `packed[j·slot + head·m_j..][..m_j]`, `m_j` its
/// number of set bits (one KV head's values in a slot shared by the heads). Each element as
/// `out[i] + a[j] · v` (multiply, then add), positions in order, on every path; entries a
/// position does not keep are not read.
///
/// # Panics
/// If `bits` does not hold `a.len()` positions, or a position's bits lie beyond `out` or its
/// values beyond its slot or `packed`.
pub fn expand_weighted_sum(
    a: &[f32],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    out: &mut [f32],
) {
    check_expand(a, bits, packed, slot, head, out);
    expand_checked(a, bits, packed, slot, head, out)
}

/// [`expand_weighted_sum`] once its shapes are checked (`check_expand`, or
/// `check_expand_positions` over every position `bits` holds): the SIMD paths rely on that.
fn expand_checked(
    a: &[f32],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            // SAFETY: AVX-512F detected at run time; the shapes were checked (see above).
            return unsafe { avx512::expand_weighted_sum(a, bits, packed, slot, head, out) };
        }
        if avx2::available() {
            // SAFETY: AVX2 detected at run time; the shapes were checked (see above).
            return unsafe { avx2::expand_weighted_sum(a, bits, packed, slot, head, out) };
        }
    }
    expand_scalar(a, bits, packed, slot, head, out)
}

/// [`expand_weighted_sum`] for several queries over the same cached positions (a batch's queries
/// of one head): with `(first, a) = queries[q]`, row `q` of `out` (`width` values at `q·width`)
/// gets `Σ_j a[j] · v_{first + j}`, exactly `expand_weighted_sum(a, bits[first·words..],
/// packed[first·slot..], slot, head, row)`, position `p`'s bits being `bits[p·words..][..words]`
/// (`words` = `width` / 64 rounded up). The AVX-512 path reads each position's values once for up
/// to four queries.
///
/// # Panics
/// If `out` is not `queries.len()` rows of `width`, `bits` is not whole positions, a query runs
/// past them, or a position's bits lie beyond `width` or its values beyond its slot or `packed`.
pub fn expand_weighted_sums(
    queries: &[(usize, &[f32])],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    width: usize,
    out: &mut [f32],
) {
    assert_eq!(
        out.len(),
        queries.len() * width,
        "expand_weighted_sums: output rows"
    );
    let words = width.div_ceil(64);
    if words == 0 {
        return;
    }
    assert_eq!(
        bits.len() % words,
        0,
        "expand_weighted_sums: bits of whole positions"
    );
    let n = bits.len() / words;
    for &(first, a) in queries {
        assert!(
            first <= n && a.len() <= n - first,
            "expand_weighted_sums: query past the {n} positions"
        );
    }
    // Every position once (each query's are among them).
    check_expand_positions(n, bits, packed, slot, head, width);
    #[cfg(target_arch = "x86_64")]
    if avx512::available() && queries.len() > 1 {
        for (qs, rows) in queries.chunks(4).zip(out.chunks_mut(4 * width)) {
            // SAFETY: AVX-512F detected at run time; the shapes were checked above.
            unsafe { avx512::expand_weighted_sums(qs, bits, packed, slot, head, width, rows) };
        }
        return;
    }
    for (&(first, a), row) in queries.iter().zip(out.chunks_exact_mut(width)) {
        // Checked above with every position: a query's are among them, each at its own slot.
        let b = &bits[first * words..(first + a.len()) * words];
        expand_checked(a, b, &packed[first * slot..], slot, head, row);
    }
}

/// The shape check of [`expand_weighted_sum`]; the SIMD paths rely on it to stay in bounds.
fn check_expand(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &[f32]) {
    let words = out.len().div_ceil(64);
    assert_eq!(
        bits.len(),
        a.len() * words,
        "expand_weighted_sum: {} bit words for {} positions of {words}",
        bits.len(),
        a.len()
    );
    check_expand_positions(a.len(), bits, packed, slot, head, out.len());
}

/// The per-position part of [`check_expand`]: `n` positions' bits within `width` outputs and
/// their values within their slots and `packed`.
fn check_expand_positions(
    n: usize,
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    width: usize,
) {
    let words = width.div_ceil(64);
    if words == 0 || n == 0 {
        return;
    }
    let tail = width % 64;
    for (j, b) in bits.chunks_exact(words).take(n).enumerate() {
        let m = b.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        let end = (head + 1).checked_mul(m).filter(|&e| e <= slot);
        let end = end.and_then(|e| j.checked_mul(slot)?.checked_add(e));
        assert!(
            end.is_some_and(|e| e <= packed.len()),
            "expand_weighted_sum: position {j}'s {m} values lie beyond its slot or the values"
        );
        assert!(
            tail == 0 || b[words - 1] >> tail == 0,
            "expand_weighted_sum: position {j} keeps an entry beyond {width} outputs"
        );
    }
}

/// The scalar reference of [`expand_weighted_sum`].
pub fn expand_weighted_sum_scalar(
    a: &[f32],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    out: &mut [f32],
) {
    check_expand(a, bits, packed, slot, head, out);
    expand_scalar(a, bits, packed, slot, head, out)
}

/// The body of [`expand_weighted_sum_scalar`], for callers that have checked the shapes.
fn expand_scalar(
    a: &[f32],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    out: &mut [f32],
) {
    let words = out.len().div_ceil(64);
    if words == 0 {
        return;
    }
    for (j, (&aj, b)) in a.iter().zip(bits.chunks_exact(words)).enumerate() {
        let m = b.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        let mut values = packed[j * slot + head * m..][..m].iter();
        for (w, &word) in b.iter().enumerate() {
            let mut bitset = word;
            while bitset != 0 {
                let i = 64 * w + bitset.trailing_zeros() as usize;
                out[i] += aj * values.next().expect("checked: one value per bit");
                bitset &= bitset - 1;
            }
        }
    }
}

/// The positions that keep something in word `w` (outputs `64w..64w + 64`) of an
/// [`expand_weighted_sum`], in order: `f(a_j, word, k)` with `k` where the word's values start in
/// `packed` (the position's slot, the head's offset, the values of the words before `w`). The
/// loop both SIMD paths share.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn for_each_kept_word(
    a: &[f32],
    bits: &[u64],
    packed: &[f32],
    w: usize,
    slot: usize,
    head: usize,
    mut f: impl FnMut(f32, u64, usize),
) {
    let words = bits.len() / a.len().max(1);
    let position = |j: usize| &bits[j * words..(j + 1) * words];
    for j in 0..a.len().min(KEPT_PREFETCH_AHEAD) {
        prefetch_kept_word(packed, position(j), w, j, slot, head);
    }
    for (j, &aj) in a.iter().enumerate() {
        if j + KEPT_PREFETCH_AHEAD < a.len() {
            let ahead = j + KEPT_PREFETCH_AHEAD;
            prefetch_kept_word(packed, position(ahead), w, ahead, slot, head);
        }
        let b = position(j);
        if b[w] == 0 {
            continue;
        }
        f(aj, b[w], kept_word_start(b, w, j, slot, head));
    }
}

/// How many positions ahead the expand loops prefetch the kept values. Each position's values
/// start where its kept count puts them, a pattern the hardware prefetchers do not follow, and
/// without it perf puts most of the kernel's samples right after the expand-loads (BENCHMARKS.md).
#[cfg(target_arch = "x86_64")]
const KEPT_PREFETCH_AHEAD: usize = 16;

/// Asks for the cache lines of word `w` of position `j`'s kept values (its bits `b`) in
/// `packed`. A prefetch reads nothing architecturally, and these lines lie inside `packed`
/// wherever the caller's shape checks hold.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_kept_word(packed: &[f32], b: &[u64], w: usize, j: usize, slot: usize, head: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let n = b[w].count_ones() as usize;
    if n == 0 {
        return;
    }
    let (k, p) = (kept_word_start(b, w, j, slot, head), packed.as_ptr());
    // Every 16th value, and the last: each line the values touch.
    for i in (0..n).step_by(16).chain([n - 1]) {
        // SAFETY: a prefetch never faults nor reads memory architecturally; `wrapping_add`
        // forms the address without claiming it is in bounds.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(k + i).cast::<i8>()) };
    }
}

/// Where the values of word `w` of position `j` (its bits `b`) start in the packed values: its
/// slot, the head's offset (the position's kept count per head), the words before `w`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn kept_word_start(b: &[u64], w: usize, j: usize, slot: usize, head: usize) -> usize {
    let count = |x: &[u64]| x.iter().map(|x| x.count_ones() as usize).sum::<usize>();
    j * slot + head * count(b) + count(&b[..w])
}

/// The horizontal add of an 8-lane vector as `_mm256` code does it: halves, pairs, last two.
#[inline(always)]
fn hsum8(x: [f32; 8]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| x[i + 4] + x[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The body of `dot16_transposed` for one vector width: lane `l` of every register is key `l` of
/// the block (starting at `kp`, rows of 16), its operations those of [`dot`]'s lane: four
/// accumulators over the chunks of 32, combined as `(acc0 + acc2) + (acc1 + acc3)`, the eight
/// lanes summed as ((x0+x4) + (x1+x5)) + ((x2+x6) + (x3+x7)), then the tail one element at a time.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_transposed_lanes {
    ($kp:expr, $b:expr, $out:expr, $load:ident, $set1:ident, $fmadd:ident, $add:ident, $zero:ident,
     $store:ident) => {{
        let (kp, b) = ($kp, $b);
        let (len, np) = (b.len(), b.len() / 32 * 32);
        let key = |e: usize| $load(kp.add(16 * e));
        let q = |e: usize| $set1(*b.get_unchecked(e));
        let x: [_; 8] = std::array::from_fn(|l| {
            let mut acc = [$zero(); 4];
            for k in 0..np / 32 {
                for (c, acc) in acc.iter_mut().enumerate() {
                    let e = 32 * k + 8 * c + l;
                    *acc = $fmadd(key(e), q(e), *acc);
                }
            }
            $add($add(acc[0], acc[2]), $add(acc[1], acc[3]))
        });
        let t: [_; 4] = std::array::from_fn(|i| $add(x[i], x[i + 4]));
        let mut sum = $add($add(t[0], t[1]), $add(t[2], t[3]));
        for e in np..len {
            sum = $fmadd(key(e), q(e), sum);
        }
        $store($out, sum);
    }};
}
#[cfg(target_arch = "x86_64")]
use dot_transposed_lanes;

/// [`dot_transposed_lanes`] over keys cached as f16 bits (`$load` widens `$w` of them), in the
/// two orders of [`dot16_transposed_f16`]: the dot order with its tail added in f64 per lane
/// (rare: only key widths that are not a multiple of 32), or the gemm order's eight chains,
/// the chunk past the end padded with zeros, summed as [`hsum8`].
#[cfg(target_arch = "x86_64")]
macro_rules! dot_transposed_lanes_f16 {
    ($kp:expr, $b:expr, $gemm:expr, $out:expr, $load:ident, $set1:ident, $fmadd:ident, $add:ident,
     $zero:ident, $store:ident, $w:expr) => {{
        let (kp, b, out) = ($kp, $b, $out);
        let (len, np) = (b.len(), b.len() / 32 * 32);
        let key = |e: usize| $load(kp.add(16 * e));
        let q = |e: usize| $set1(*b.get_unchecked(e));
        if $gemm {
            let mut x = [$zero(); 8];
            let full = len / 8 * 8;
            for c in (0..full).step_by(8) {
                for (m, x) in x.iter_mut().enumerate() {
                    *x = $fmadd(key(c + m), q(c + m), *x);
                }
            }
            for (m, x) in x.iter_mut().enumerate().take(len.next_multiple_of(8) - full) {
                // tinyBLAS's zero-padded last chunk: + 0·0 past the end (a -0 sum turns +0).
                *x = if full + m < len { $fmadd(key(full + m), q(full + m), *x) } else { $add(*x, $zero()) };
            }
            let t: [_; 4] = std::array::from_fn(|i| $add(x[i + 4], x[i]));
            $store(out, $add($add(t[0], t[2]), $add(t[1], t[3])));
        } else {
            let x: [_; 8] = std::array::from_fn(|l| {
                let mut acc = [$zero(); 4];
                for k in 0..np / 32 {
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let e = 32 * k + 8 * c + l;
                        *acc = $fmadd(key(e), q(e), *acc);
                    }
                }
                $add($add(acc[0], acc[2]), $add(acc[1], acc[3]))
            });
            let t: [_; 4] = std::array::from_fn(|i| $add(x[i], x[i + 4]));
            $store(out, $add($add(t[0], t[1]), $add(t[2], t[3])));
            if np < len {
                for l in 0..$w {
                    let mut sum = *out.add(l) as f64;
                    for e in np..len {
                        let k = super::f16_to_f32(*kp.add(16 * e + l));
                        sum += (k * *b.get_unchecked(e)) as f64;
                    }
                    *out.add(l) = sum as f32;
                }
            }
        }
    }};
}
#[cfg(target_arch = "x86_64")]
use dot_transposed_lanes_f16;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        // The kernel set in use decides (TOMOE_KERNELS=scalar reaches these helpers too).
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && crate::dispatch::kernels().name != "scalar"
        })
    }

    /// [`available`] and F16C: the f16 KV cache's kernels.
    pub fn f16c_available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| available() && is_x86_feature_detected!("f16c"))
    }

    /// An element of cached keys or values: f32, or f16 bits widened on load (exactly).
    pub trait Lanes: Copy {
        /// Eight elements from `p` as f32.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Lanes for u16 {
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    #[inline(always)]
    unsafe fn splat(bits: u32) -> __m256 {
        _mm256_set1_ps(f32::from_bits(bits))
    }

    /// 8 lanes of [`super::exp`].
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let z = _mm256_fmadd_ps(x, splat(INV_LN2), splat(SHIFT));
        let n = _mm256_sub_ps(z, splat(SHIFT));
        let b = _mm256_fnmadd_ps(n, splat(LN2_LO), _mm256_fnmadd_ps(n, splat(LN2_HI), x));
        let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let an = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let big = _mm256_cmp_ps(an, _mm256_set1_ps(126.0), _CMP_GT_OQ);
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(splat(C5), b, splat(C4)),
                u,
                _mm256_fmadd_ps(splat(C3), b, splat(C2)),
            ),
            u,
            _mm256_mul_ps(splat(C1), b),
        );
        let normal = _mm256_fmadd_ps(j, k, k);
        if _mm256_movemask_ps(big) == 0 {
            return normal;
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let huge = _mm256_cmp_ps(an, _mm256_set1_ps(192.0), _CMP_GT_OQ);
        let scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
        let r = _mm256_blendv_ps(normal, scaled, big);
        _mm256_blendv_ps(r, _mm256_mul_ps(s1, s1), huge)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let np = a.len() / 32 * 32;
        let mut sum = dot_chunks32(a, 32, &b[..np], false);
        for i in np..a.len() {
            sum = a[i].mul_add(b[i], sum);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_chunks32(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
        let mut out = [0f32];
        chunks32_rows::<1, f32>(a.as_ptr(), 0, stride, b, gemm_order, &mut out);
        out[0]
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_rows(a: &[f32], row_stride: usize, b: &[f32], out: &mut [f32]) {
        let np = b.len() / 32 * 32;
        dot_chunks32_rows(a, row_stride, 32, &b[..np], false, out);
        // The tail element by element, eight rows at a time: each row's FMAs in the same order
        // (the same bits), but eight independent chains instead of one at a time.
        for (c, o) in out.chunks_mut(8).enumerate() {
            let row0 = 8 * c * row_stride;
            for e in np..b.len() {
                for (i, o) in o.iter_mut().enumerate() {
                    *o = a[row0 + i * row_stride + e].mul_add(b[e], *o);
                }
            }
        }
    }

    /// The dot order's rows in pairs, then the last one; the gemm order as one vector of
    /// `dot_chunks32_rows_gemm`. The caller checked that every chunk is in `a`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_chunks32_rows(
        a: &[f32],
        row_stride: usize,
        stride: usize,
        b: &[f32],
        gemm_order: bool,
        out: &mut [f32],
    ) {
        if gemm_order {
            // One vector: the several-vector kernel's rows in pairs.
            let rows = out.len();
            return dot_chunks32_rows_gemm(a, row_stride, stride, rows, b, 0, 1, b.len(), out, 0);
        }
        let whole = out.len() / 2 * 2;
        let (head, tail) = out.split_at_mut(whole);
        for (g, o) in head.chunks_exact_mut(2).enumerate() {
            chunks32_rows::<2, f32>(
                a.as_ptr().add(2 * g * row_stride),
                row_stride,
                stride,
                b,
                false,
                o,
            );
        }
        for (i, o) in tail.iter_mut().enumerate() {
            let ap = a.as_ptr().add((whole + i) * row_stride);
            chunks32_rows::<1, f32>(ap, row_stride, stride, b, false, std::slice::from_mut(o));
        }
    }

    /// [`super::dot16_transposed`] in two halves of eight keys (one per lane).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
        for half in 0..2 {
            let o = out.as_mut_ptr().add(8 * half);
            super::dot_transposed_lanes!(
                kt.as_ptr().add(8 * half),
                b,
                o,
                _mm256_loadu_ps,
                _mm256_set1_ps,
                _mm256_fmadd_ps,
                _mm256_add_ps,
                _mm256_setzero_ps,
                _mm256_storeu_ps
            );
        }
    }

    /// [`super::dot_chunks32_rows_f16`]: the dot order's rows in pairs, then the last one.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_chunks32_rows_f16(
        a: &[u16],
        row_stride: usize,
        stride: usize,
        b: &[f32],
        out: &mut [f32],
    ) {
        let whole = out.len() / 2 * 2;
        let (head, tail) = out.split_at_mut(whole);
        for (g, o) in head.chunks_exact_mut(2).enumerate() {
            let ap = a.as_ptr().add(2 * g * row_stride);
            chunks32_rows::<2, u16>(ap, row_stride, stride, b, false, o);
        }
        for (i, o) in tail.iter_mut().enumerate() {
            let ap = a.as_ptr().add((whole + i) * row_stride);
            chunks32_rows::<1, u16>(ap, row_stride, stride, b, false, std::slice::from_mut(o));
        }
    }

    /// [`super::dot16_transposed_f16`] in two halves of eight keys (one per lane).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
        for half in 0..2 {
            let (kp, o) = (kt.as_ptr().add(8 * half), out.as_mut_ptr().add(8 * half));
            super::dot_transposed_lanes_f16!(
                kp,
                b,
                gemm_order,
                o,
                load8_f16,
                _mm256_set1_ps,
                _mm256_fmadd_ps,
                _mm256_add_ps,
                _mm256_setzero_ps,
                _mm256_storeu_ps,
                8
            );
        }
    }

    /// Eight f16 values from `p` as f32 (a function with the features of its callers, so that
    /// it inlines into them, as a closure would not).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8_f16(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// [`super::f32_to_f16_slice`], eight values per `vcvtps2ph`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
        let full = src.len() / 8 * 8;
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        for i in (0..full).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(sp.add(i)));
            _mm_storeu_si128(dp.add(i) as *mut __m128i, h);
        }
        super::f32_to_f16_slice_scalar(&src[full..], &mut dst[full..]);
    }

    /// [`super::round_f16`], eight values per conversion there and back.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_f16(x: &mut [f32]) {
        let full = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        for i in (0..full).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
            _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
        }
        super::round_f16_scalar(&mut x[full..]);
    }

    /// Rows in pairs and vectors in fours (then the rest), each pair of rows × group of vectors
    /// reading its chunks of `a` once; the caller checked every access.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_chunks32_rows_gemm(
        a: &[f32],
        row_stride: usize,
        stride: usize,
        rows: usize,
        b: &[f32],
        b_stride: usize,
        n_b: usize,
        len: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        rows_gemm(a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride)
    }

    /// [`dot_chunks32_rows_gemm`] over values cached as f16 bits.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn dot_chunks32_rows_gemm_f16(
        a: &[u16],
        row_stride: usize,
        stride: usize,
        rows: usize,
        b: &[f32],
        b_stride: usize,
        n_b: usize,
        len: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        rows_gemm(a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride)
    }

    /// The body of [`dot_chunks32_rows_gemm`] for either element type.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_gemm<T: Lanes>(
        a: &[T],
        row_stride: usize,
        stride: usize,
        rows: usize,
        b: &[f32],
        b_stride: usize,
        n_b: usize,
        len: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let (ap, bp, op) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let nc = len / 32;
        let mut q0 = 0;
        while q0 < n_b {
            let nq = (n_b - q0).min(4);
            let mut r0 = 0;
            while r0 < rows {
                let nr = (rows - r0).min(2);
                let (a0, b0) = (ap.add(r0 * row_stride), bp.add(q0 * b_stride));
                let o0 = op.add(q0 * out_stride + r0);
                let args = (a0, row_stride, stride, b0, b_stride, nc, o0, out_stride);
                match (nr, nq) {
                    (2, 4) => rows_vectors::<2, 4, T>(args),
                    (2, 3) => rows_vectors::<2, 3, T>(args),
                    (2, 2) => rows_vectors::<2, 2, T>(args),
                    (2, _) => rows_vectors::<2, 1, T>(args),
                    (_, 4) => rows_vectors::<1, 4, T>(args),
                    (_, 3) => rows_vectors::<1, 3, T>(args),
                    (_, 2) => rows_vectors::<1, 2, T>(args),
                    _ => rows_vectors::<1, 1, T>(args),
                }
                r0 += nr;
            }
            q0 += nq;
        }
    }

    type RowsVectors<T> = (
        *const T,
        usize,
        usize,
        *const f32,
        usize,
        usize,
        *mut f32,
        usize,
    );

    /// `R` rows × `Q` vectors of `dot_chunks32` in the gemm order (one accumulator chain each,
    /// the single product's operations in its order).
    #[inline(always)]
    unsafe fn rows_vectors<const R: usize, const Q: usize, T: Lanes>(args: RowsVectors<T>) {
        let (ap, row_stride, stride, bp, b_stride, nc, op, out_stride) = args;
        let mut acc = [[_mm256_setzero_ps(); Q]; R];
        for k in 0..nc {
            for (r, acc) in acc.iter_mut().enumerate() {
                let ac = ap.add(r * row_stride + k * stride);
                let av = [0, 1, 2, 3].map(|c| T::load8(ac.add(8 * c)));
                for (q, acc) in acc.iter_mut().enumerate() {
                    let bc = bp.add(q * b_stride + 32 * k);
                    for (c, &ac) in av.iter().enumerate() {
                        *acc = _mm256_fmadd_ps(ac, _mm256_loadu_ps(bc.add(8 * c)), *acc);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                *op.add(q * out_stride + r) = hsum_gemm(*acc);
            }
        }
    }

    /// The horizontal sum of the gemm order's single accumulator.
    #[inline(always)]
    unsafe fn hsum_gemm(acc: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
    }

    /// `R` rows of `dot_chunks32` at once, each with exactly the single row's operations.
    #[inline(always)]
    unsafe fn chunks32_rows<const R: usize, T: Lanes>(
        ap: *const T,
        row_stride: usize,
        stride: usize,
        b: &[f32],
        gemm_order: bool,
        out: &mut [f32],
    ) {
        let bp = b.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for k in 0..b.len() / 32 {
            let bc = bp.add(32 * k);
            let bv = [0, 1, 2, 3].map(|q| _mm256_loadu_ps(bc.add(8 * q)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let ac = ap.add(r * row_stride + k * stride);
                for (q, &bq) in bv.iter().enumerate() {
                    // gemm order: one accumulator for every group of 8; dot order: four.
                    let s = if gemm_order { 0 } else { q };
                    acc[s] = _mm256_fmadd_ps(T::load8(ac.add(8 * q)), bq, acc[s]);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(&acc) {
            *o = if gemm_order {
                hsum_gemm(acc[0])
            } else {
                let x = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
                let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
                let t1 = _mm_hadd_ps(t0, t0);
                _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
            };
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
        let full = gate.len() / 8 * 8;
        let (gp, up_) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < full {
            let x = _mm256_loadu_ps(gp.add(i));
            let s = _mm256_div_ps(
                x,
                _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))),
            );
            _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up_.add(i))));
            i += 8;
        }
        for (g, &u) in gate[full..].iter_mut().zip(&up[full..]) {
            *g = silu_libm(*g) * u;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f64 {
        let full = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        let m = _mm256_set1_ps(max);
        let mut sum = 0f64;
        let mut i = 0;
        while i < full {
            let v = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), v);
            let h = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_movehdup_ps(h));
            sum += _mm_cvtss_f32(h) as f64;
            i += 8;
        }
        for e in x[full..].iter_mut() {
            *e = (*e - max).exp();
            sum += *e as f64;
        }
        sum
    }

    /// For each 8-bit mask, the lane each output lane takes its value from after a load of the
    /// packed values (lanes not in the mask: any; they are not stored).
    const EXPAND8: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut lane, mut k) = (0, 0);
            while lane < 8 {
                if m >> lane & 1 == 1 {
                    t[m][lane] = k;
                    k += 1;
                }
                lane += 1;
            }
            m += 1;
        }
        t
    };

    /// The lanes of an 8-bit mask as a vector mask (all ones where the bit is set).
    #[inline(always)]
    unsafe fn lanes(m: u32) -> __m256i {
        let bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(m as i32), bit), bit)
    }

    /// [`super::expand_weighted_sum`], 64 outputs at a time in eight registers: per position and
    /// eight outputs, a masked load of the next packed values (only as many lanes as bits, so
    /// nothing past them is read), a permute into place, and a blend that changes only the kept
    /// lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn expand_weighted_sum(
        a: &[f32],
        bits: &[u64],
        packed: &[f32],
        slot: usize,
        head: usize,
        out: &mut [f32],
    ) {
        let words = out.len().div_ceil(64);
        let (pp, op) = (packed.as_ptr(), out.as_mut_ptr());
        for w in 0..words {
            let n_out = (out.len() - 64 * w).min(64);
            // Lanes of each 8-output chunk inside `out`.
            let valid: [__m256i; 8] = std::array::from_fn(|c| {
                lanes(((1u32 << n_out.saturating_sub(8 * c).min(8)) - 1) & 0xFF)
            });
            let mut acc: [__m256; 8] =
                std::array::from_fn(|c| _mm256_maskload_ps(op.add(64 * w + 8 * c), valid[c]));
            super::for_each_kept_word(a, bits, packed, w, slot, head, |aj, word, mut k| {
                let va = _mm256_set1_ps(aj);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let m = (word >> (8 * c)) as u32 & 0xFF;
                    if m == 0 {
                        continue;
                    }
                    let n = m.count_ones() as usize;
                    // SAFETY: the caller checked that the position's values lie in `packed`:
                    // the load reads packed[k..k + n] only.
                    let v = _mm256_maskload_ps(pp.add(k), lanes((1 << n) - 1));
                    let idx = _mm256_loadu_si256(EXPAND8[m as usize].as_ptr() as *const __m256i);
                    let v = _mm256_permutevar8x32_ps(v, idx);
                    // Only the kept lanes change (as the scalar path, even for a -0.0 in `out`).
                    let sum = _mm256_add_ps(*acc, _mm256_mul_ps(va, v));
                    *acc = _mm256_blendv_ps(*acc, sum, _mm256_castsi256_ps(lanes(m)));
                    k += n;
                }
            });
            for (c, acc) in acc.iter().enumerate() {
                _mm256_maskstore_ps(op.add(64 * w + 8 * c), valid[c], *acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        // Only under an AVX-512 kernel set, so that the avx2 set measures an AVX2-only CPU.
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && crate::dispatch::kernels().name.starts_with("avx512")
        })
    }

    /// [`super::dot16_transposed`], one key per lane (as the AVX2 version, sixteen lanes).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
        super::dot_transposed_lanes!(
            kt.as_ptr(),
            b,
            out.as_mut_ptr(),
            _mm512_loadu_ps,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps,
            _mm512_setzero_ps,
            _mm512_storeu_ps
        );
    }

    /// [`super::dot16_transposed_f16`], one key per lane.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
        super::dot_transposed_lanes_f16!(
            kt.as_ptr(),
            b,
            gemm_order,
            out.as_mut_ptr(),
            load16_f16,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps,
            _mm512_setzero_ps,
            _mm512_storeu_ps,
            16
        );
    }

    /// Sixteen f16 values from `p` as f32 (inlines into its callers, as a closure would not).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_f16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    /// [`super::expand_weighted_sum`], 64 outputs at a time in four registers: per position and
    /// sixteen outputs, `vexpandps` reads exactly the packed values of the set bits into their
    /// lanes, and a masked add changes only those.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn expand_weighted_sum(
        a: &[f32],
        bits: &[u64],
        packed: &[f32],
        slot: usize,
        head: usize,
        out: &mut [f32],
    ) {
        let words = out.len().div_ceil(64);
        let (pp, op) = (packed.as_ptr(), out.as_mut_ptr());
        for w in 0..words {
            let n_out = (out.len() - 64 * w).min(64);
            let valid: [u16; 4] = std::array::from_fn(|c| {
                ((1u32 << n_out.saturating_sub(16 * c).min(16)) - 1) as u16
            });
            let mut acc: [__m512; 4] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(valid[c], op.add(64 * w + 16 * c)));
            super::for_each_kept_word(a, bits, packed, w, slot, head, |aj, word, mut k| {
                let va = _mm512_set1_ps(aj);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let m = (word >> (16 * c)) as u16;
                    // SAFETY: the caller checked that the position's values lie in `packed`:
                    // the expand reads packed[k..k + popcount(m)] only.
                    let v = _mm512_maskz_expandloadu_ps(m, pp.add(k));
                    // Only the kept lanes change (as the scalar path, even for a -0.0 in `out`).
                    *acc = _mm512_mask_add_ps(*acc, m, *acc, _mm512_mul_ps(va, v));
                    k += m.count_ones() as usize;
                }
            });
            for (c, acc) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(op.add(64 * w + 16 * c), valid[c], *acc);
            }
        }
    }

    /// [`super::expand_weighted_sums`] for up to four queries (`out`: their rows of `width`): per
    /// word of 64 outputs, each position's kept values expanded once, then added into the rows
    /// of the queries that span it, each row as `expand_weighted_sum` adds it.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn expand_weighted_sums(
        queries: &[(usize, &[f32])],
        bits: &[u64],
        packed: &[f32],
        slot: usize,
        head: usize,
        width: usize,
        out: &mut [f32],
    ) {
        // The query count as a constant, so that the accumulators stay in registers.
        match queries.len() {
            1 => sums::<1>(queries, bits, packed, slot, head, width, out),
            2 => sums::<2>(queries, bits, packed, slot, head, width, out),
            3 => sums::<3>(queries, bits, packed, slot, head, width, out),
            4 => sums::<4>(queries, bits, packed, slot, head, width, out),
            n => unreachable!("{n} queries at once"),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums<const Q: usize>(
        queries: &[(usize, &[f32])],
        bits: &[u64],
        packed: &[f32],
        slot: usize,
        head: usize,
        width: usize,
        out: &mut [f32],
    ) {
        debug_assert!(queries.len() == Q && out.len() == Q * width);
        let words = width.div_ceil(64);
        let lo = queries.iter().map(|q| q.0).min().unwrap_or(0);
        let hi = queries.iter().map(|q| q.0 + q.1.len()).max().unwrap_or(0);
        let (pp, op) = (packed.as_ptr(), out.as_mut_ptr());
        for w in 0..words {
            let n_out = (width - 64 * w).min(64);
            let valid: [u16; 4] = std::array::from_fn(|c| {
                ((1u32 << n_out.saturating_sub(16 * c).min(16)) - 1) as u16
            });
            let row = |q: usize, c: usize| op.add(q * width + 64 * w + 16 * c);
            let mut acc: [[__m512; 4]; Q] = std::array::from_fn(|q| {
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(valid[c], row(q, c)))
            });
            let position = |p: usize| &bits[p * words..(p + 1) * words];
            for p in lo..(lo + super::KEPT_PREFETCH_AHEAD).min(hi) {
                super::prefetch_kept_word(packed, position(p), w, p, slot, head);
            }
            for p in lo..hi {
                let ahead = p + super::KEPT_PREFETCH_AHEAD;
                if ahead < hi {
                    super::prefetch_kept_word(packed, position(ahead), w, ahead, slot, head);
                }
                let b = position(p);
                if b[w] == 0 {
                    continue;
                }
                let mut k = super::kept_word_start(b, w, p, slot, head);
                let mut v = [_mm512_setzero_ps(); 4];
                let mut mk = [0u16; 4];
                for c in 0..4 {
                    mk[c] = (b[w] >> (16 * c)) as u16;
                    // SAFETY: the caller checked that position p's values lie in `packed`: the
                    // expand reads packed[k..k + popcount(mk)] only.
                    v[c] = _mm512_maskz_expandloadu_ps(mk[c], pp.add(k));
                    k += mk[c].count_ones() as usize;
                }
                for (acc, &(first, a)) in acc.iter_mut().zip(queries) {
                    if p < first || p >= first + a.len() {
                        continue;
                    }
                    let va = _mm512_set1_ps(a[p - first]);
                    for c in 0..4 {
                        let x = _mm512_mul_ps(va, v[c]);
                        acc[c] = _mm512_mask_add_ps(acc[c], mk[c], acc[c], x);
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate() {
                for (c, acc) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(row(q, c), valid[c], *acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<f32> {
        // Deterministic spread over the interesting ranges, plus the edges of each branch.
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

    #[test]
    fn exp_is_accurate() {
        for &x in &inputs() {
            if !(-87.0..=88.0).contains(&x) {
                continue;
            }
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= want * 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn simd_equals_scalar_bit_for_bit() {
        let x = inputs();
        let up: Vec<f32> = x.iter().map(|v| (v * 0.37).sin()).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, x.len()] {
            let (mut a, mut b) = (x[..len].to_vec(), x[..len].to_vec());
            swiglu(&mut a, &up[..len]);
            swiglu_scalar(&mut b, &up[..len]);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                    "swiglu len {len} [{i}]: {p} {q}"
                );
            }
            let finite: Vec<f32> = x[..len].iter().copied().filter(|v| v.is_finite()).collect();
            let max = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut a, mut b) = (finite.clone(), finite);
            let (sa, sb) = (exp_sub_sum(&mut a, max), exp_sub_sum_scalar(&mut b, max));
            assert_eq!(sa.to_bits(), sb.to_bits(), "softmax sum len {len}");
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "softmax len {len}"
            );
        }
    }

    /// A xorshift generator: reproducible test data without a dependency.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// A compact cache's bits (each of `width` entries kept with odds 1 in `one_in`) and packed
    /// values (`slot` per position) for `n_pos` positions.
    fn compact_values(
        next: &mut impl FnMut() -> u64,
        n_pos: usize,
        width: usize,
        slot: usize,
        one_in: u64,
    ) -> (Vec<u64>, Vec<f32>) {
        let words = width.div_ceil(64);
        let mut bits = vec![0u64; n_pos * words];
        for j in 0..n_pos {
            for i in 0..width {
                if next() % one_in == 0 {
                    bits[j * words + i / 64] |= 1 << (i % 64);
                }
            }
        }
        let packed = (0..n_pos * slot)
            .map(|_| (next() % 2000) as f32 / 77.0 - 13.0)
            .collect();
        (bits, packed)
    }

    /// Several queries at once equal each query alone (`expand_weighted_sum_scalar` over its
    /// positions) bit for bit: queries over different, overlapping, empty and full ranges, more
    /// than four (taken in fours), one and several words of outputs, rows starting with -0.0.
    #[test]
    fn expand_weighted_sums_equal_one_query_at_a_time() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for width in [5usize, 48, 64, 130] {
            let words = width.div_ceil(64);
            let (n_pos, n_heads) = (37, 3);
            let slot = n_heads * width;
            let (bits, packed) = compact_values(&mut next, n_pos, width, slot, 3);
            let probs: Vec<Vec<f32>> = (0..6)
                .map(|_| {
                    (0..n_pos)
                        .map(|_| (next() % 100) as f32 / 37.0 - 1.3)
                        .collect()
                })
                .collect();
            let ranges = [
                (0usize, 37usize),
                (3, 20),
                (10, 10),
                (36, 37),
                (0, 1),
                (5, 30),
            ];
            for n_q in 1..=6 {
                let head = (next() % 3) as usize;
                let queries: Vec<(usize, &[f32])> = ranges[..n_q]
                    .iter()
                    .zip(&probs)
                    .map(|(&(a, b), p)| (a, &p[a..b]))
                    .collect();
                let mut base: Vec<f32> = (0..n_q * width)
                    .map(|_| (next() % 1000) as f32 / 31.0 - 16.0)
                    .collect();
                base[0] = -0.0;
                let mut got = base.clone();
                expand_weighted_sums(&queries, &bits, &packed, slot, head, width, &mut got);
                let mut want = base.clone();
                for (&(first, a), row) in queries.iter().zip(want.chunks_exact_mut(width)) {
                    let b = &bits[first * words..(first + a.len()) * words];
                    expand_weighted_sum_scalar(a, b, &packed[first * slot..], slot, head, row);
                }
                assert_eq!(
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "width {width}, {n_q} queries"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "query past the")]
    fn expand_weighted_sums_refuses_a_query_past_the_positions() {
        let bits = [1u64; 4];
        let packed = [1f32; 4];
        let a = [1f32; 3];
        let mut out = [0f32; 64];
        expand_weighted_sums(&[(2, &a)], &bits, &packed, 1, 0, 64, &mut out);
    }

    #[test]
    fn expand_weighted_sum_equals_scalar_bit_for_bit() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for len in [1usize, 3, 8, 17, 63, 64, 80, 128, 200] {
            for density in [0u32, 1, 2, 3] {
                let words = len.div_ceil(64);
                let (n_pos, n_heads, head) = (5, 3, (next() % 3) as usize);
                let slot = n_heads * len;
                // density 0: every bit; else about one in 2^density.
                let (bits, packed) = compact_values(&mut next, n_pos, len, slot, 1 << density);
                let mut base: Vec<f32> = (0..len)
                    .map(|_| (next() % 1000) as f32 / 31.0 - 16.0)
                    .collect();
                base[0] = -0.0;
                let a: Vec<f32> = (0..n_pos)
                    .map(|_| (next() % 100) as f32 / 37.0 - 1.3)
                    .collect();
                let (mut got, mut want) = (base.clone(), base.clone());
                expand_weighted_sum(&a, &bits, &packed, slot, head, &mut got);
                expand_weighted_sum_scalar(&a, &bits, &packed, slot, head, &mut want);
                let bits_of = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits_of(&got), bits_of(&want), "len {len} density {density}");
                // The reference is the sum it documents: kept entries moved by a · value, in
                // position order; the others untouched.
                let mut expect = base.clone();
                for j in 0..n_pos {
                    let b = &bits[j * words..(j + 1) * words];
                    let m: usize = b.iter().map(|w| w.count_ones() as usize).sum();
                    let mut k = j * slot + head * m;
                    for (i, e) in expect.iter_mut().enumerate() {
                        if b[i / 64] >> (i % 64) & 1 == 1 {
                            *e += a[j] * packed[k];
                            k += 1;
                        }
                    }
                }
                assert_eq!(bits_of(&want), bits_of(&expect), "scalar, len {len}");
                #[cfg(target_arch = "x86_64")]
                {
                    if avx2::available() {
                        let mut v = base.clone();
                        // SAFETY: AVX2 detected; the shapes were checked just above.
                        unsafe {
                            avx2::expand_weighted_sum(&a, &bits, &packed, slot, head, &mut v)
                        };
                        assert_eq!(bits_of(&v), bits_of(&want), "avx2, len {len}");
                    }
                    if avx512::available() {
                        let mut v = base.clone();
                        // SAFETY: AVX-512F detected; the shapes were checked just above.
                        unsafe {
                            avx512::expand_weighted_sum(&a, &bits, &packed, slot, head, &mut v)
                        };
                        assert_eq!(bits_of(&v), bits_of(&want), "avx512, len {len}");
                    }
                }
            }
        }
    }

    /// The many-row products equal their one-row functions and the scalar references bit for
    /// bit, for row counts around the SIMD groups (2 and 8), odd lengths and strided chunks.
    #[test]
    fn row_products_equal_single_rows_bit_for_bit() {
        let x = inputs();
        let finite: Vec<f32> = x
            .iter()
            .copied()
            .filter(|v| v.is_finite() && v.abs() < 1e3)
            .collect();
        let val = |i: usize| finite[(i * 7 + 3) % finite.len()] * 0.01 + (i % 13) as f32 * 0.1;
        let a: Vec<f32> = (0..40_000).map(val).collect();
        for rows in [0usize, 1, 2, 3, 7, 8, 9, 17] {
            for len in [1usize, 31, 32, 64, 70, 96] {
                let b: Vec<f32> = (0..len).map(|i| val(i + 500)).collect();
                let stride = len + 3;
                let mut got = vec![0f32; rows];
                dot_rows(&a, stride, &b, &mut got);
                for (i, g) in got.iter().enumerate() {
                    let row = &a[i * stride..i * stride + len];
                    assert_eq!(
                        g.to_bits(),
                        dot(row, &b).to_bits(),
                        "dot_rows {rows}x{len} [{i}]"
                    );
                    assert_eq!(
                        g.to_bits(),
                        dot_scalar(row, &b).to_bits(),
                        "scalar {rows}x{len}"
                    );
                }
                if len % 32 != 0 {
                    continue;
                }
                for gemm_order in [false, true] {
                    let (row_stride, chunk_stride) = (32, 32 * 20);
                    let mut got = vec![0f32; rows];
                    dot_chunks32_rows(&a, row_stride, chunk_stride, &b, gemm_order, &mut got);
                    for (i, g) in got.iter().enumerate() {
                        let r = &a[i * row_stride..];
                        let want = dot_chunks32(r, chunk_stride, &b, gemm_order);
                        let scalar = dot_chunks32_scalar(r, chunk_stride, &b, gemm_order);
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "chunks {rows}x{len} {gemm_order}"
                        );
                        assert_eq!(g.to_bits(), scalar.to_bits(), "scalar chunks {rows}x{len}");
                    }
                }
            }
        }
    }

    /// The several-vector value sums equal the one-row product bit for bit, for row and vector
    /// counts around the SIMD groups (2 rows, 4 vectors).
    #[test]
    fn gemm_row_products_equal_single_rows_bit_for_bit() {
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 97.0 - 5.0;
        let a: Vec<f32> = (0..30_000).map(val).collect();
        let (row_stride, stride) = (32, 32 * 9);
        for rows in [1usize, 2, 3, 8] {
            for n_b in [1usize, 2, 3, 4, 5, 9] {
                for len in [32usize, 96] {
                    let b_stride = len + 32;
                    let b: Vec<f32> = (0..n_b * b_stride).map(|i| val(i + 77) * 0.1).collect();
                    let out_stride = rows + 1;
                    let mut out = vec![f32::NAN; n_b * out_stride];
                    dot_chunks32_rows_gemm(
                        &a, row_stride, stride, rows, &b, b_stride, n_b, len, &mut out, out_stride,
                    );
                    for q in 0..n_b {
                        let bq = &b[q * b_stride..q * b_stride + len];
                        for i in 0..rows {
                            let want = dot_chunks32(&a[i * row_stride..], stride, bq, true);
                            let got = out[q * out_stride + i];
                            assert_eq!(got.to_bits(), want.to_bits(), "{rows}x{n_b} len {len}");
                        }
                        assert!(out[q * out_stride + rows].is_nan(), "wrote past its rows");
                    }
                }
            }
        }
    }

    /// Keys laid out for [`dot16_transposed`]: rows `keys[j·row_stride..][..len]` for `j < n`, in
    /// blocks of 16 keys, element `e` of key `16i + l` at `out[(i·len + e)·16 + l]` (zeros past `n`).
    ///
    /// # Panics
    /// If the last row runs past the end of `keys`, or `out` is not `⌈n/16⌉·16·len` long.
    fn transpose_keys16(keys: &[f32], row_stride: usize, n: usize, len: usize, out: &mut [f32]) {
        if let Some(last) = n.checked_sub(1) {
            assert!(
                last * row_stride + len <= keys.len(),
                "transpose_keys16: rows past the end"
            );
        }
        assert_eq!(
            out.len(),
            n.div_ceil(16) * 16 * len,
            "transpose_keys16: output size"
        );
        out.fill(0.0);
        for j in 0..n {
            let (block, l) = (j / 16, j % 16);
            let row = &keys[j * row_stride..j * row_stride + len];
            for (e, &v) in row.iter().enumerate() {
                out[(block * len + e) * 16 + l] = v;
            }
        }
    }

    /// Scores of transposed key blocks equal `dot` per key bit for bit, with partial blocks and
    /// lengths with and without a tail past the chunks of 32.
    #[test]
    fn transposed_key_scores_equal_dot_bit_for_bit() {
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 97.0 - 5.0;
        for (n, len, stride) in [
            (1usize, 64usize, 64usize),
            (16, 64, 192),
            (37, 256, 300),
            (20, 70, 70),
            (45, 46, 138),
            (3, 5, 9),
        ] {
            let keys: Vec<f32> = (0..n * stride).map(val).collect();
            let b: Vec<f32> = (0..len).map(|i| val(i + 11) * 0.3).collect();
            let mut kt = vec![0f32; n.div_ceil(16) * 16 * len];
            transpose_keys16(&keys, stride, n, len, &mut kt);
            for block in 0..n.div_ceil(16) {
                let mut out = [0f32; 16];
                dot16_transposed(&kt[block * 16 * len..], &b, &mut out);
                for (l, got) in out.iter().enumerate().take(n - 16 * block) {
                    let j = 16 * block + l;
                    let want = dot(&keys[j * stride..j * stride + len], &b);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "key {j} of {n}, length {len}"
                    );
                }
                let mut o1 = [0f32; 16];
                dot16_transposed_scalar(&kt[block * 16 * len..], &b, &mut o1);
                assert_eq!(
                    o1.map(f32::to_bits),
                    out.map(f32::to_bits),
                    "scalar block {block}"
                );
                #[cfg(target_arch = "x86_64")]
                if avx2::available() {
                    let mut o2 = [0f32; 16];
                    // SAFETY: AVX2 detected; the block holds 16 · len values.
                    unsafe { avx2::dot16_transposed(&kt[block * 16 * len..], &b, &mut o2) };
                    assert_eq!(
                        o2.map(f32::to_bits),
                        out.map(f32::to_bits),
                        "avx2 block {block}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "beyond 8 outputs")]
    fn expand_weighted_sum_refuses_bits_beyond_out() {
        expand_weighted_sum(&[1.0], &[1 << 10], &[1.0], 1, 0, &mut [0.0; 8]);
    }

    #[test]
    #[should_panic(expected = "beyond its slot")]
    fn expand_weighted_sum_refuses_values_beyond_the_slot() {
        // Two kept entries of head 1 need 4 values in the slot: it has 3.
        expand_weighted_sum(&[1.0], &[0b11], &[1.0; 8], 3, 1, &mut [0.0; 8]);
    }

    #[test]
    fn products_simd_equal_scalar_bit_for_bit() {
        let x = inputs();
        let finite: Vec<f32> = x
            .iter()
            .copied()
            .filter(|v| v.is_finite() && v.abs() < 1e6)
            .collect();
        for len in [0, 1, 7, 31, 32, 33, 64, 95, 256, 1000] {
            let (a, b) = (&finite[..len], &finite[7..7 + len]);
            assert_eq!(
                dot(a, b).to_bits(),
                dot_scalar(a, b).to_bits(),
                "dot len {len}"
            );
        }
        for len in [0, 32, 64, 256, 1024] {
            let (a, b) = (&finite[..len], &finite[3..3 + len]);
            for gemm in [false, true] {
                assert_eq!(
                    dot_chunks32(a, 32, b, gemm).to_bits(),
                    dot_chunks32_scalar(a, 32, b, gemm).to_bits(),
                    "dot_chunks32 len {len}, gemm order {gemm}"
                );
            }
            let want: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            for got in [dot(a, b), dot_chunks32(a, 32, b, true)] {
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * scale,
                    "dot len {len}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn chunked_dots_equal_contiguous_bit_for_bit() {
        let x = inputs();
        let finite: Vec<f32> = x
            .iter()
            .copied()
            .filter(|v| v.is_finite() && v.abs() < 1e6)
            .collect();
        let stride = 40;
        for n_chunks in [0, 1, 2, 5] {
            let b = &finite[100..100 + 32 * n_chunks];
            let a = &finite[..stride * n_chunks.max(1)];
            let gathered: Vec<f32> = (0..n_chunks)
                .flat_map(|k| a[k * stride..k * stride + 32].to_vec())
                .collect();
            for gemm in [false, true] {
                let want = if gemm {
                    dot_chunks32_scalar(&gathered, 32, b, true)
                } else {
                    dot(&gathered, b)
                };
                for got in [
                    dot_chunks32(a, stride, b, gemm),
                    dot_chunks32_scalar(a, stride, b, gemm),
                ] {
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{n_chunks} chunks, gemm order {gemm}"
                    );
                }
            }
        }
    }

    #[test]
    fn gelu_table_is_gelu_to_f16_precision() {
        for i in -1200..1200 {
            let x = i as f32 / 100.0;
            let exact = 0.5
                * x as f64
                * (1.0 + (0.7978845608 * x as f64 * (1.0 + 0.044715 * (x * x) as f64)).tanh());
            let got = gelu_f16_table(x) as f64;
            let tol = if x.abs() >= 10.0 {
                1e-6
            } else {
                2e-3 * exact.abs().max(1e-3) + 1e-4
            };
            assert!(
                (got - exact).abs() <= tol,
                "gelu({x}) = {got}, want {exact}"
            );
        }
        let (mut g, u) = (vec![-11.0f32, 0.5, 12.0], vec![2.0f32, 3.0, 0.5]);
        geglu(&mut g, &u);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[2], 6.0);
        assert_eq!(g[1], gelu_f16_table(0.5) * 3.0);
    }

    /// xorshift64*: deterministic random bits for the f16 tests.
    struct Bits(u64);

    impl Bits {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Any f32 bit pattern, weighted toward the half-precision range and its edges.
        fn f32_any(&mut self) -> f32 {
            let r = self.next();
            match r % 4 {
                0 => f32::from_bits((r >> 32) as u32),
                // Exponents around the half range: subnormal halves to overflow.
                1 => f32::from_bits(((r >> 32) as u32 & 0x807f_ffff) | (((r >> 8) % 48 + 88) as u32) << 23),
                // Exact halfway cases and their neighbours (low 13 bits 0x1000 ± 1).
                2 => {
                    let b = ((r >> 32) as u32 & !0x1fff) | (0x0fff + (r >> 16) as u32 % 3);
                    f32::from_bits((b & 0x807f_ffff) | (((r >> 8) % 40 + 100) as u32) << 23)
                }
                _ => ((r >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0,
            }
        }

        /// A value of moderate size, rounded to f16.
        fn f16_val(&mut self, scale: f32) -> f32 {
            let x = ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
            f16_to_f32(f32_to_f16(x))
        }
    }

    fn same_f32(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
    }

    /// The conversions against the `half` crate's and the hardware's, on every half and on
    /// random floats (ties, subnormals, overflow, inf and NaN included).
    #[test]
    fn f16_conversions_round_to_nearest_even() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(same_f32(got, want) || (got.is_nan() && want.is_nan()), "half {h:#06x}");
            if !got.is_nan() {
                assert_eq!(f32_to_f16(got), h, "half {h:#06x} back");
            }
        }
        let cases: [(f32, u16); 12] = [
            (1.0 + 2f32.powi(-11), 0x3c00),     // tie, even below
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02), // tie, even above
            (1.0 + 2f32.powi(-11) + 2f32.powi(-20), 0x3c01),
            (2f32.powi(-24), 0x0001),
            (2f32.powi(-25), 0x0000),          // tie between 0 and the smallest subnormal
            (1.5 * 2f32.powi(-25), 0x0001),
            (3.0 * 2f32.powi(-25), 0x0002),    // tie between 1 and 2 ulps: even
            (-2f32.powi(-26), 0x8000),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00),                 // tie between 65504 and 2^16: even is inf
            (f32::NEG_INFINITY, 0xfc00),
            (f32::from_bits(1), 0x0000),       // an f32 subnormal
        ];
        for (x, h) in cases {
            assert_eq!(f32_to_f16(x), h, "{x:e}");
        }
        let mut r = Bits(0x1234_5678_9abc_def1);
        for len in [1usize, 3, 7, 9, 17, 31, 1001, 4099] {
            let src: Vec<f32> = (0..len).map(|_| r.f32_any()).collect();
            let (mut simd, mut scalar) = (vec![0u16; len], vec![0u16; len]);
            f32_to_f16_slice(&src, &mut simd);
            f32_to_f16_slice_scalar(&src, &mut scalar);
            for (i, &x) in src.iter().enumerate() {
                let want = half::f16::from_f32(x).to_bits();
                assert_eq!(scalar[i], want, "{x:e} ({:#010x})", x.to_bits());
                assert_eq!(simd[i], want, "F16C {x:e} ({:#010x})", x.to_bits());
            }
            let (mut a, mut b) = (src.clone(), src.clone());
            round_f16(&mut a);
            round_f16_scalar(&mut b);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(same_f32(*p, *q) || (p.is_nan() && q.is_nan()), "round_f16 {:e}", src[i]);
            }
        }
    }

    /// `ggml_vec_dot_f16` as written in ggml (AVX2 with F16C): four 8-lane accumulators over
    /// steps of 32, reduced pairwise, then the leftovers in double.
    fn ggml_vec_dot_f16(x: &[u16], y: &[u16]) -> f32 {
        let n = x.len();
        let np = n & !31;
        let mut sum = [[0f32; 8]; 4];
        for i in (0..np).step_by(32) {
            for (j, s) in sum.iter_mut().enumerate() {
                for l in 0..8 {
                    let e = i + 8 * j + l;
                    s[l] = f16_to_f32(x[e]).mul_add(f16_to_f32(y[e]), s[l]);
                }
            }
        }
        let s0: [f32; 8] = std::array::from_fn(|l| sum[0][l] + sum[2][l]);
        let s1: [f32; 8] = std::array::from_fn(|l| sum[1][l] + sum[3][l]);
        let v: [f32; 8] = std::array::from_fn(|l| s0[l] + s1[l]);
        let t0: [f32; 4] = std::array::from_fn(|l| v[l] + v[l + 4]);
        let mut sumf = ((t0[0] + t0[1]) + (t0[2] + t0[3])) as f64;
        for i in np..n {
            sumf += (f16_to_f32(x[i]) * f16_to_f32(y[i])) as f64;
        }
        sumf as f32
    }

    /// tinyBLAS's f16 dot of one output (AVX2): one accumulator over chunks of 8, the last one
    /// loaded partially (zeros past the end), then `hsum`.
    fn tinyblas_dot_f16(x: &[u16], y: &[u16]) -> f32 {
        let mut acc = [0f32; 8];
        for c in 0..x.len().div_ceil(8) {
            for l in 0..8 {
                let e = 8 * c + l;
                let (a, b) = if e < x.len() { (f16_to_f32(x[e]), f16_to_f32(y[e])) } else { (0.0, 0.0) };
                acc[l] = a.mul_add(b, acc[l]);
            }
        }
        let h: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
        (h[0] + h[2]) + (h[1] + h[3])
    }

    /// Scores over transposed f16 key blocks equal ggml's f16 dot (one query) and tinyBLAS's
    /// (a batch) per key, on every path, with and without tails.
    #[test]
    fn transposed_f16_key_scores_equal_ggml() {
        let mut r = Bits(0x9e37_79b9_7f4a_7c15);
        for (n, len) in [(16usize, 64usize), (37, 256), (20, 70), (45, 46), (3, 5), (16, 33), (5, 1)] {
            let keys: Vec<u16> = (0..n * len).map(|_| f32_to_f16(r.f16_val(6.0))).collect();
            let q: Vec<f32> = (0..len).map(|_| r.f16_val(3.0)).collect();
            let qh: Vec<u16> = q.iter().map(|&v| f32_to_f16(v)).collect();
            let mut kt = vec![0u16; n.div_ceil(16) * 16 * len];
            for j in 0..n {
                for e in 0..len {
                    kt[((j / 16) * len + e) * 16 + j % 16] = keys[j * len + e];
                }
            }
            for gemm in [false, true] {
                for block in 0..n.div_ceil(16) {
                    let kb = &kt[block * 16 * len..];
                    let (mut out, mut o1) = ([0f32; 16], [0f32; 16]);
                    dot16_transposed_f16(kb, &q, gemm, &mut out);
                    dot16_transposed_f16_scalar(kb, &q, gemm, &mut o1);
                    assert_eq!(o1.map(f32::to_bits), out.map(f32::to_bits), "scalar, {n}×{len} gemm {gemm}");
                    #[cfg(target_arch = "x86_64")]
                    if avx2::f16c_available() {
                        let mut o2 = [0f32; 16];
                        // SAFETY: AVX2, FMA and F16C detected; the block holds 16 · len values.
                        unsafe { avx2::dot16_transposed_f16(kb, &q, gemm, &mut o2) };
                        assert_eq!(o2.map(f32::to_bits), out.map(f32::to_bits), "avx2, {n}×{len} gemm {gemm}");
                    }
                    for (l, got) in out.iter().enumerate().take(n - 16 * block) {
                        let j = 16 * block + l;
                        let row = &keys[j * len..(j + 1) * len];
                        let want = if gemm { tinyblas_dot_f16(row, &qh) } else { ggml_vec_dot_f16(row, &qh) };
                        assert!(same_f32(*got, want), "key {j} of {n}×{len}, gemm {gemm}: {got} {want}");
                    }
                }
            }
        }
    }

    /// Value sums over f16 values in blocks of 32 positions equal ggml's f16 dot (one query)
    /// and tinyBLAS's (several), on every path.
    #[test]
    fn f16_value_sums_equal_ggml() {
        let mut r = Bits(0xdead_beef_cafe_f00d);
        // 3 rows (dims) of 96 positions in blocks of 32: dim i of block k at k·stride + 32 i.
        let (rows, len, stride) = (5usize, 96usize, 5 * 32 + 8);
        let a: Vec<u16> = (0..(len / 32) * stride).map(|_| f32_to_f16(r.f16_val(4.0))).collect();
        let nb = 3;
        let b: Vec<f32> = (0..nb * len).map(|_| r.f16_val(1.0).abs()).collect();
        let row_of = |i: usize| -> Vec<u16> { (0..len).map(|e| a[e / 32 * stride + 32 * i + e % 32]).collect() };
        let bh = |q: usize| -> Vec<u16> { b[q * len..(q + 1) * len].iter().map(|&v| f32_to_f16(v)).collect() };
        let mut out = vec![0f32; rows];
        dot_chunks32_rows_f16(&a, 32, stride, &b[..len], &mut out);
        for (i, o) in out.iter().enumerate() {
            let want = ggml_vec_dot_f16(&row_of(i), &bh(0));
            assert!(same_f32(*o, want), "dot order row {i}: {o} {want}");
        }
        let mut g = vec![0f32; nb * rows];
        dot_chunks32_rows_gemm_f16(&a, 32, stride, rows, &b, len, nb, len, &mut g, rows);
        for q in 0..nb {
            for i in 0..rows {
                let want = tinyblas_dot_f16(&row_of(i), &bh(q));
                assert!(same_f32(g[q * rows + i], want), "gemm order query {q} row {i}");
            }
        }
    }
}
