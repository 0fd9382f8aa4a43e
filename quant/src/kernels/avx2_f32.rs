//! The f32 vector math of the "avx2" set (`KernelSet::f32`, see `kernels::f32_table`): eight
//! lanes per register, each function equal bit for bit to its scalar reference in
//! `crate::vecmath` (the same operations in the same order). The set requires AVX2, FMA and F16C.
#![allow(clippy::missing_safety_doc)] // the contracts of the `F32Kernels` entries

use std::arch::x86_64::*;

use super::table::KernelSet;
use crate::vecmath::activations::{silu_libm, C1, C2, C3, C4, C5, INV_LN2, LN2_HI, LN2_LO, SHIFT};
use crate::vecmath::expand::{kept_word_start, prefetch_kept_word, KEPT_PREFETCH_AHEAD};
use crate::vecmath::rope::rope_pairs_scalar;
use crate::vecmath::{f32_to_f16_slice_scalar, round_f16_scalar};

/// Replaces the f32 math of `s` with this file's.
pub fn add_to(s: &mut KernelSet) {
    let f = &mut s.f32;
    f.exp_sub_sum = exp_sub_sum;
    f.swiglu = swiglu;
    f.dot = dot;
    f.dot_chunks32 = dot_chunks32;
    f.dot_rows = dot_rows;
    f.dot_chunks32_rows = dot_chunks32_rows;
    f.dot_chunks32_rows_gemm = dot_chunks32_rows_gemm;
    f.dot16_transposed = dot16_transposed;
    f.f32_to_f16_slice = f32_to_f16_slice;
    f.round_f16 = round_f16;
    f.dot16_transposed_f16 = dot16_transposed_f16;
    f.dot_chunks32_rows_f16 = dot_chunks32_rows_f16;
    f.dot_chunks32_rows_gemm_f16 = dot_chunks32_rows_gemm_f16;
    f.expand_weighted_sum = expand_weighted_sum;
    f.expand_weighted_sums = Some(expand_weighted_sums);
    f.rope = rope;
}

/// The body of `dot16_transposed` for one vector width: lane `l` of every register is key `l` of
/// the block (starting at `kp`, rows of 16), its operations those of `vecmath::dot`'s lane: four
/// accumulators over the chunks of 32, combined as `(acc0 + acc2) + (acc1 + acc3)`, the eight
/// lanes summed as ((x0+x4) + (x1+x5)) + ((x2+x6) + (x3+x7)), then the tail one element at a time.
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
pub(crate) use dot_transposed_lanes;

/// [`dot_transposed_lanes`] over keys cached as f16 bits (`$load` widens `$w` of them), in the
/// two orders of `vecmath::dot16_transposed_f16`: the dot order with its tail added in f64 per lane
/// (rare: only key widths that are not a multiple of 32), or the gemm order's eight chains,
/// the chunk past the end padded with zeros, summed as `vecmath::hsum8`.
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
                *x = if full + m < len {
                    $fmadd(key(full + m), q(full + m), *x)
                } else {
                    $add(*x, $zero())
                };
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
                        let k = crate::vecmath::f16_to_f32(*kp.add(16 * e + l));
                        sum += (k * *b.get_unchecked(e)) as f64;
                    }
                    *out.add(l) = sum as f32;
                }
            }
        }
    }};
}
pub(crate) use dot_transposed_lanes_f16;

/// An element of cached keys or values: f32, or f16 bits widened on load (exactly).
trait Lanes: Copy {
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

/// 8 lanes of `vecmath::exp`.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let z = _mm256_fmadd_ps(x, splat(INV_LN2), splat(SHIFT));
    let n = _mm256_sub_ps(z, splat(SHIFT));
    let b = _mm256_fnmadd_ps(n, splat(LN2_LO), _mm256_fnmadd_ps(n, splat(LN2_HI), x));
    let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    let k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0))));
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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let np = a.len() / 32 * 32;
    let mut sum = dot_chunks32(a, 32, &b[..np], false);
    for i in np..a.len() {
        sum = a[i].mul_add(b[i], sum);
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_chunks32(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
    let mut out = [0f32];
    chunks32_rows::<1, f32>(a.as_ptr(), 0, stride, b, gemm_order, &mut out);
    out[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows(a: &[f32], row_stride: usize, b: &[f32], out: &mut [f32]) {
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
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_chunks32_rows(a: &[f32], row_stride: usize, stride: usize, b: &[f32], gemm_order: bool, out: &mut [f32]) {
    if gemm_order {
        // One vector: the several-vector kernel's rows in pairs.
        let rows = out.len();
        return dot_chunks32_rows_gemm(a, row_stride, stride, rows, b, 0, 1, b.len(), out, 0);
    }
    let whole = out.len() / 2 * 2;
    let (head, tail) = out.split_at_mut(whole);
    for (g, o) in head.chunks_exact_mut(2).enumerate() {
        chunks32_rows::<2, f32>(a.as_ptr().add(2 * g * row_stride), row_stride, stride, b, false, o);
    }
    for (i, o) in tail.iter_mut().enumerate() {
        let ap = a.as_ptr().add((whole + i) * row_stride);
        chunks32_rows::<1, f32>(ap, row_stride, stride, b, false, std::slice::from_mut(o));
    }
}

/// `vecmath::dot16_transposed` in two halves of eight keys (one per lane).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    for half in 0..2 {
        let o = out.as_mut_ptr().add(8 * half);
        dot_transposed_lanes!(
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

/// `vecmath::dot_chunks32_rows_f16`: the dot order's rows in pairs, then the last one.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_chunks32_rows_f16(a: &[u16], row_stride: usize, stride: usize, b: &[f32], out: &mut [f32]) {
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

/// `vecmath::dot16_transposed_f16` in two halves of eight keys (one per lane).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    for half in 0..2 {
        let (kp, o) = (kt.as_ptr().add(8 * half), out.as_mut_ptr().add(8 * half));
        dot_transposed_lanes_f16!(
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

/// `vecmath::f32_to_f16_slice`, eight values per `vcvtps2ph`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
    let full = src.len() / 8 * 8;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..full).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(sp.add(i)));
        _mm_storeu_si128(dp.add(i) as *mut __m128i, h);
    }
    f32_to_f16_slice_scalar(&src[full..], &mut dst[full..]);
}

/// `vecmath::round_f16`, eight values per conversion there and back.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_f16(x: &mut [f32]) {
    let full = x.len() / 8 * 8;
    let p = x.as_mut_ptr();
    for i in (0..full).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
        _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
    }
    round_f16_scalar(&mut x[full..]);
}

/// Rows in pairs and vectors in fours (then the rest), each pair of rows × group of vectors
/// reading its chunks of `a` once; the caller checked every access.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_chunks32_rows_gemm(
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
unsafe fn dot_chunks32_rows_gemm_f16(
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

type RowsVectors<T> = (*const T, usize, usize, *const f32, usize, usize, *mut f32, usize);

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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / 8 * 8;
    let (gp, up_) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < full {
        let x = _mm256_loadu_ps(gp.add(i));
        let s = _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up_.add(i))));
        i += 8;
    }
    for (g, &u) in gate[full..].iter_mut().zip(&up[full..]) {
        *g = silu_libm(*g) * u;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f64 {
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

/// For each 8-bit mask, the lane each output lane takes its value from after a masked load of
/// the packed values; lanes not in the mask take lane 7, which such a load leaves 0 (a mask
/// with a dropped lane has fewer than 8 values).
const EXPAND8: [[u32; 8]; 256] = {
    let mut t = [[7u32; 8]; 256];
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

/// For each 8-bit mask, its lanes as a vector mask (all ones where the bit is set): one load
/// instead of a broadcast, an and and a compare in the expand loops.
const LANES8: [[i32; 8]; 256] = {
    let mut t = [[0i32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let mut lane = 0;
        while lane < 8 {
            if m >> lane & 1 == 1 {
                t[m][lane] = -1;
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
    _mm256_loadu_si256(LANES8[m as usize & 0xFF].as_ptr() as *const __m256i)
}

/// `vecmath::expand_weighted_sum`: the one-query case of `expand_weighted_sums`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand_weighted_sum(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &mut [f32]) {
    sums::<1>(&[(0, a)], bits, packed, slot, head, out.len(), out)
}

/// `vecmath::expand_weighted_sums` for up to four queries (`out`: their rows of `width`): per
/// position and eight outputs, a masked load of the next packed values (only as many lanes as
/// bits, so nothing past them is read) and a permute into place (zeros in the dropped lanes),
/// once for all the queries; then for each query that spans the position one multiply-add.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand_weighted_sums(
    queries: &[(usize, &[f32])],
    bits: &[u64],
    packed: &[f32],
    slot: usize,
    head: usize,
    width: usize,
    out: &mut [f32],
) {
    // The query count as a constant, so that the accumulators are registers (or fixed stack
    // slots past sixteen): one pass over the positions beat two passes of half the outputs.
    match queries.len() {
        1 => sums::<1>(queries, bits, packed, slot, head, width, out),
        2 => sums::<2>(queries, bits, packed, slot, head, width, out),
        3 => sums::<3>(queries, bits, packed, slot, head, width, out),
        4 => sums::<4>(queries, bits, packed, slot, head, width, out),
        n => unreachable!("{n} queries at once"),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
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
    let position = |p: usize| &bits[p * words..(p + 1) * words];
    for w in 0..words {
        let n_out = (width - 64 * w).min(64);
        // Lanes of each chunk of 8 inside the row; masked loads and stores touch only those,
        // and a chunk past the row has none.
        let valid: [__m256i; 8] = std::array::from_fn(|c| lanes((1u32 << n_out.saturating_sub(8 * c).min(8)) - 1));
        let row = |q: usize, c: usize| op.wrapping_add(q * width + 64 * w + 8 * c);
        let mut acc: [[__m256; 8]; Q] =
            std::array::from_fn(|q| std::array::from_fn(|c| _mm256_maskload_ps(row(q, c), valid[c])));
        for p in lo..(lo + KEPT_PREFETCH_AHEAD).min(hi) {
            prefetch_kept_word(packed, position(p), w, p, slot, head);
        }
        for p in lo..hi {
            let ahead = p + KEPT_PREFETCH_AHEAD;
            if ahead < hi {
                prefetch_kept_word(packed, position(ahead), w, ahead, slot, head);
            }
            let b = position(p);
            let mut k = kept_word_start(b, w, p, slot, head);
            let mut v = [_mm256_setzero_ps(); 8];
            for c in 0..8 {
                let m = (b[w] >> (8 * c)) as u32 & 0xFF;
                let n = m.count_ones() as usize;
                // SAFETY: the caller checked that position p's values lie in `packed`: the load
                // reads packed[k..k + n] only (nothing for an empty chunk).
                let x = _mm256_maskload_ps(pp.add(k), lanes((1 << n) - 1));
                let idx = _mm256_loadu_si256(EXPAND8[m as usize].as_ptr() as *const __m256i);
                v[c] = _mm256_permutevar8x32_ps(x, idx);
                k += n;
            }
            for (acc, &(first, a)) in acc.iter_mut().zip(queries) {
                if p < first || p >= first + a.len() {
                    continue;
                }
                let va = _mm256_set1_ps(a[p - first]);
                for c in 0..8 {
                    acc[c] = _mm256_fmadd_ps(va, v[c], acc[c]);
                }
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            for (c, acc) in acc.iter().enumerate() {
                _mm256_maskstore_ps(row(q, c), valid[c], *acc);
            }
        }
    }
}

/// `vecmath::rope`: each output the reference's fused multiply-add of `a`'s product into the
/// rounded product of `b` (`-(b·sin)` as `b·(-sin)`: the same bits). Adjacent pairs take four
/// pairs per register, `a` and `b` duplicated into both lanes of their pair (`movldup` /
/// `movhdup`) against interleaved `(cos, sin)` and `(-sin, cos)`.
#[target_feature(enable = "avx2,fma")]
unsafe fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let n = cos.len();
    let (xp, cp, sp) = (x.as_mut_ptr(), cos.as_ptr(), sin.as_ptr());
    let mut i = 0;
    if neox {
        let sign = _mm256_set1_ps(-0.0);
        while i + 8 <= n {
            let (a, b) = (_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(xp.add(n + i)));
            let (c, s) = (_mm256_loadu_ps(cp.add(i)), _mm256_loadu_ps(sp.add(i)));
            _mm256_storeu_ps(xp.add(i), _mm256_fmadd_ps(a, c, _mm256_mul_ps(b, _mm256_xor_ps(s, sign))));
            _mm256_storeu_ps(xp.add(n + i), _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
            i += 8;
        }
    } else {
        let sign = _mm_set1_ps(-0.0);
        while i + 4 <= n {
            let v = _mm256_loadu_ps(xp.add(2 * i));
            let (c, s) = (_mm_loadu_ps(cp.add(i)), _mm_loadu_ps(sp.add(i)));
            let ns = _mm_xor_ps(s, sign);
            let m = _mm256_set_m128(_mm_unpackhi_ps(c, s), _mm_unpacklo_ps(c, s));
            let k = _mm256_set_m128(_mm_unpackhi_ps(ns, c), _mm_unpacklo_ps(ns, c));
            let (a, b) = (_mm256_moveldup_ps(v), _mm256_movehdup_ps(v));
            _mm256_storeu_ps(xp.add(2 * i), _mm256_fmadd_ps(a, m, _mm256_mul_ps(b, k)));
            i += 4;
        }
    }
    rope_pairs_scalar(x, cos, sin, neox, i);
}
