//! The f32 vector math of the NEON sets ("neon", "neon-dotprod"; `KernelSet::f32`, see
//! `kernels::f32_table`): each function performs its scalar reference's operations (in
//! `crate::vecmath`) in the same order, an 8-lane vector of the reference held in two 4-lane
//! registers, so that every result equals the reference bit for bit. The half-precision
//! conversions are `fcvtl`/`fcvtn` (base AArch64 SIMD, rounding to nearest even as F16C does),
//! written as inline assembly because their intrinsics are not stable Rust.
#![allow(clippy::missing_safety_doc)] // the contracts of the `F32Kernels` entries

use std::arch::aarch64::*;
use std::arch::asm;

use super::table::KernelSet;
use crate::vecmath::activations::{silu_libm, C1, C2, C3, C4, C5, INV_LN2, LN2_HI, LN2_LO, SHIFT};
use crate::vecmath::expand::for_each_position_word;
use crate::vecmath::rope::rope_pairs_scalar;
use crate::vecmath::{f16_to_f32, f32_to_f16_slice_scalar, round_f16_scalar};

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
    f.rope = rope;
}

/// Eight lanes of the scalar reference: lanes 0..4, then 4..8.
type F8 = [float32x4_t; 2];

/// An element of cached keys or values: f32, or f16 bits widened on load (exactly).
trait Lanes: Copy {
    /// Eight elements from `p` as f32.
    unsafe fn load8(p: *const Self) -> F8;
    /// Four elements from `p` as f32.
    unsafe fn load4(p: *const Self) -> float32x4_t;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> F8 {
        [vld1q_f32(p), vld1q_f32(p.add(4))]
    }

    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
}

impl Lanes for u16 {
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> F8 {
        let h = vld1q_u16(p);
        let (lo, hi): (float32x4_t, float32x4_t);
        // SAFETY: register-only conversions; exact for every f16, as `f16_to_f32`.
        asm!("fcvtl {lo:v}.4s, {h:v}.4h", "fcvtl2 {hi:v}.4s, {h:v}.8h", h = in(vreg) h, lo = out(vreg) lo,
             hi = out(vreg) hi, options(pure, nomem, nostack));
        [lo, hi]
    }

    #[inline(always)]
    unsafe fn load4(p: *const u16) -> float32x4_t {
        let h = vld1_u16(p);
        let v: float32x4_t;
        // SAFETY: a register-only conversion, as in `load8`.
        asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = out(vreg) v, options(pure, nomem, nostack));
        v
    }
}

/// Four f32 values rounded to f16 bits, to nearest even (the default rounding mode).
#[inline(always)]
unsafe fn to_f16x4(v: float32x4_t) -> uint16x4_t {
    let h: uint16x4_t;
    // SAFETY: a register-only conversion.
    asm!("fcvtn {h:v}.4h, {v:v}.4s", v = in(vreg) v, h = out(vreg) h, options(pure, nomem, nostack));
    h
}

#[inline(always)]
unsafe fn splat(bits: u32) -> float32x4_t {
    vdupq_n_f32(f32::from_bits(bits))
}

/// Four lanes of `vecmath::exp`, each operation as there (`vfmaq_f32(a, b, c)` is `b.mul_add(c, a)`).
#[inline(always)]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let z = vfmaq_f32(splat(SHIFT), x, splat(INV_LN2));
    let n = vsubq_f32(z, splat(SHIFT));
    let b = vfmsq_f32(vfmsq_f32(x, n, splat(LN2_HI)), n, splat(LN2_LO));
    let e = vshlq_n_u32::<23>(vreinterpretq_u32_f32(z));
    let k = vreinterpretq_f32_u32(vaddq_u32(e, vdupq_n_u32(1f32.to_bits())));
    let u = vmulq_f32(b, b);
    let j = vfmaq_f32(splat(C4), splat(C5), b);
    let j = vfmaq_f32(vfmaq_f32(splat(C2), splat(C3), b), j, u);
    let j = vfmaq_f32(vmulq_f32(splat(C1), b), j, u);
    let normal = vfmaq_f32(k, j, k);
    let an = vabsq_f32(n);
    let big = vcgtq_f32(an, vdupq_n_f32(126.0));
    if vmaxvq_u32(big) == 0 {
        return normal;
    }
    // |n| > 126: 2^n is not a normal float; scale in two steps (or saturate past 192).
    let g = vandq_u32(vcleq_f32(n, vdupq_n_f32(0.0)), vdupq_n_u32(0x8200_0000));
    let s1 = vreinterpretq_f32_u32(vaddq_u32(g, vdupq_n_u32(0x7f00_0000)));
    let s2 = vreinterpretq_f32_u32(vsubq_u32(e, g));
    let scaled = vmulq_f32(vfmaq_f32(s2, s2, j), s1);
    let r = vbslq_f32(big, scaled, normal);
    vbslq_f32(vcgtq_f32(an, vdupq_n_f32(192.0)), vmulq_f32(s1, s1), r)
}

/// `vecmath::hsum8` of lanes `lo ++ hi`: halves, pairs, last two.
#[inline(always)]
unsafe fn hsum8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let t = vaddq_f32(hi, lo);
    vpadds_f32(vadd_f32(vget_low_f32(t), vget_high_f32(t)))
}

/// The dot order's reduction of its four 8-lane accumulators: `(a0 + a2) + (a1 + a3)`, then
/// `t[i] = x[i] + x[i + 4]` and `(t0 + t1) + (t2 + t3)`.
#[inline(always)]
unsafe fn reduce_dot(acc: &[F8; 4]) -> f32 {
    let x = |h: usize| vaddq_f32(vaddq_f32(acc[0][h], acc[2][h]), vaddq_f32(acc[1][h], acc[3][h]));
    let t = vaddq_f32(x(0), x(1));
    vpadds_f32(vget_low_f32(vpaddq_f32(t, t)))
}

#[target_feature(enable = "neon")]
unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f64 {
    let full = x.len() / 8 * 8;
    let (p, m) = (x.as_mut_ptr(), vdupq_n_f32(max));
    let mut sum = 0f64;
    for i in (0..full).step_by(8) {
        let lo = exp4(vsubq_f32(vld1q_f32(p.add(i)), m));
        let hi = exp4(vsubq_f32(vld1q_f32(p.add(i + 4)), m));
        vst1q_f32(p.add(i), lo);
        vst1q_f32(p.add(i + 4), hi);
        sum += hsum8(lo, hi) as f64;
    }
    for e in x[full..].iter_mut() {
        *e = (*e - max).exp();
        sum += *e as f64;
    }
    sum
}

#[target_feature(enable = "neon")]
unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / 8 * 8;
    let (gp, upp) = (gate.as_mut_ptr(), up.as_ptr());
    let one = vdupq_n_f32(1.0);
    for i in (0..full).step_by(4) {
        let x = vld1q_f32(gp.add(i));
        let s = vdivq_f32(x, vaddq_f32(one, exp4(vsubq_f32(vdupq_n_f32(0.0), x))));
        vst1q_f32(gp.add(i), vmulq_f32(s, vld1q_f32(upp.add(i))));
    }
    for (g, &u) in gate[full..].iter_mut().zip(&up[full..]) {
        *g = silu_libm(*g) * u;
    }
}

/// `R` rows of `dot_chunks32` at once (rows `row_stride` apart from `ap`), each with exactly the
/// single row's operations.
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
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[[zero; 2]; 4]; R];
    for k in 0..b.len() / 32 {
        let bc = bp.add(32 * k);
        for (r, acc) in acc.iter_mut().enumerate() {
            let ac = ap.add(r * row_stride + k * stride);
            for q in 0..4 {
                // gemm order: one accumulator for every group of 8; dot order: four.
                let s = if gemm_order { 0 } else { q };
                let av = T::load8(ac.add(8 * q));
                acc[s][0] = vfmaq_f32(acc[s][0], av[0], vld1q_f32(bc.add(8 * q)));
                acc[s][1] = vfmaq_f32(acc[s][1], av[1], vld1q_f32(bc.add(8 * q + 4)));
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(&acc) {
        *o = if gemm_order {
            hsum8(acc[0][0], acc[0][1])
        } else {
            reduce_dot(acc)
        };
    }
}

#[target_feature(enable = "neon")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let np = a.len() / 32 * 32;
    let mut sum = dot_chunks32(a, 32, &b[..np], false);
    for i in np..a.len() {
        sum = a[i].mul_add(b[i], sum);
    }
    sum
}

#[target_feature(enable = "neon")]
unsafe fn dot_chunks32(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
    let mut out = [0f32];
    chunks32_rows::<1, f32>(a.as_ptr(), 0, stride, b, gemm_order, &mut out);
    out[0]
}

#[target_feature(enable = "neon")]
unsafe fn dot_rows(a: &[f32], row_stride: usize, b: &[f32], out: &mut [f32]) {
    let np = b.len() / 32 * 32;
    dot_chunks32_rows(a, row_stride, 32, &b[..np], false, out);
    // The tail element by element, eight rows at a time: each row's FMAs in the same order.
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
/// `dot_chunks32_rows_gemm`.
#[target_feature(enable = "neon")]
unsafe fn dot_chunks32_rows(a: &[f32], row_stride: usize, stride: usize, b: &[f32], gemm_order: bool, out: &mut [f32]) {
    if gemm_order {
        let rows = out.len();
        return rows_gemm(a, row_stride, stride, rows, b, 0, 1, b.len(), out, 0);
    }
    rows_in_pairs(a, row_stride, stride, b, out)
}

#[target_feature(enable = "neon")]
unsafe fn dot_chunks32_rows_f16(a: &[u16], row_stride: usize, stride: usize, b: &[f32], out: &mut [f32]) {
    rows_in_pairs(a, row_stride, stride, b, out)
}

/// The dot order's rows in pairs (two rows' chains at once), then the last one.
#[inline(always)]
unsafe fn rows_in_pairs<T: Lanes>(a: &[T], row_stride: usize, stride: usize, b: &[f32], out: &mut [f32]) {
    let whole = out.len() / 2 * 2;
    let (head, tail) = out.split_at_mut(whole);
    for (g, o) in head.chunks_exact_mut(2).enumerate() {
        chunks32_rows::<2, T>(a.as_ptr().add(2 * g * row_stride), row_stride, stride, b, false, o);
    }
    for (i, o) in tail.iter_mut().enumerate() {
        let ap = a.as_ptr().add((whole + i) * row_stride);
        chunks32_rows::<1, T>(ap, row_stride, stride, b, false, std::slice::from_mut(o));
    }
}

#[target_feature(enable = "neon")]
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

#[target_feature(enable = "neon")]
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

/// Rows in pairs and vectors in fours (then the rest), each pair of rows × group of vectors
/// reading its chunks of `a` once.
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

/// `R` rows × `Q` vectors of `dot_chunks32` in the gemm order (one 8-lane chain each, the single
/// product's operations in its order).
#[inline(always)]
unsafe fn rows_vectors<const R: usize, const Q: usize, T: Lanes>(args: RowsVectors<T>) {
    let (ap, row_stride, stride, bp, b_stride, nc, op, out_stride) = args;
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[[zero; 2]; Q]; R];
    for k in 0..nc {
        for (r, acc) in acc.iter_mut().enumerate() {
            let ac = ap.add(r * row_stride + k * stride);
            let av = [
                T::load8(ac),
                T::load8(ac.add(8)),
                T::load8(ac.add(16)),
                T::load8(ac.add(24)),
            ];
            for (q, acc) in acc.iter_mut().enumerate() {
                let bc = bp.add(q * b_stride + 32 * k);
                for (c, av) in av.iter().enumerate() {
                    acc[0] = vfmaq_f32(acc[0], av[0], vld1q_f32(bc.add(8 * c)));
                    acc[1] = vfmaq_f32(acc[1], av[1], vld1q_f32(bc.add(8 * c + 4)));
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (q, acc) in acc.iter().enumerate() {
            *op.add(q * out_stride + r) = hsum8(acc[0], acc[1]);
        }
    }
}

/// The dot order's sums over the whole chunks of 32 of 16 transposed keys (`kp`, element `e` of
/// key `l` at `16e + l`), one key per lane: per key, `reduce_dot` of four 8-lane accumulators, as
/// `dot16_transposed`'s reference; stored to `out`.
#[inline(always)]
unsafe fn transposed_chunks<T: Lanes>(kp: *const T, b: &[f32], out: &mut [f32; 16]) {
    let np = b.len() / 32 * 32;
    let zero = vdupq_n_f32(0.0);
    // x[h][l]: lane l of the reference's 8-lane vector, for keys 4h..4h + 4.
    let mut x = [[zero; 8]; 4];
    for l in 0..8 {
        let mut acc = [[zero; 4]; 4];
        for k in 0..np / 32 {
            for c in 0..4 {
                let e = 32 * k + 8 * c + l;
                let q = vdupq_n_f32(*b.get_unchecked(e));
                for (h, acc) in acc.iter_mut().enumerate() {
                    acc[c] = vfmaq_f32(acc[c], T::load4(kp.add(16 * e + 4 * h)), q);
                }
            }
        }
        for (x, acc) in x.iter_mut().zip(&acc) {
            x[l] = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
        }
    }
    for (h, x) in x.iter().enumerate() {
        let t = [0, 1, 2, 3].map(|i| vaddq_f32(x[i], x[i + 4]));
        let sum = vaddq_f32(vaddq_f32(t[0], t[1]), vaddq_f32(t[2], t[3]));
        vst1q_f32(out.as_mut_ptr().add(4 * h), sum);
    }
}

/// `vecmath::dot16_transposed`: the chunks as `transposed_chunks`, then the tail one element at a
/// time.
#[target_feature(enable = "neon")]
unsafe fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    let kp = kt.as_ptr();
    transposed_chunks(kp, b, out);
    let np = b.len() / 32 * 32;
    for h in 0..4 {
        let o = out.as_mut_ptr().add(4 * h);
        let mut sum = vld1q_f32(o);
        for e in np..b.len() {
            sum = vfmaq_f32(sum, vld1q_f32(kp.add(16 * e + 4 * h)), vdupq_n_f32(*b.get_unchecked(e)));
        }
        vst1q_f32(o, sum);
    }
}

/// `vecmath::dot16_transposed_f16`: the dot order as `transposed_chunks` with the tail added in
/// f64 per key; the gemm order's eight chains per key, the chunk past the end padded with zeros.
#[target_feature(enable = "neon")]
unsafe fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    let kp = kt.as_ptr();
    let len = b.len();
    if !gemm_order {
        transposed_chunks(kp, b, out);
        for (l, o) in out.iter_mut().enumerate() {
            let mut sum = *o as f64;
            for e in len / 32 * 32..len {
                sum += (f16_to_f32(*kt.get_unchecked(16 * e + l)) * *b.get_unchecked(e)) as f64;
            }
            *o = sum as f32;
        }
        return;
    }
    let zero = vdupq_n_f32(0.0);
    let full = len / 8 * 8;
    for h in 0..4 {
        let key = |e: usize| u16::load4(kp.add(16 * e + 4 * h));
        let q = |e: usize| vdupq_n_f32(*b.get_unchecked(e));
        let mut x = [zero; 8];
        for c in (0..full).step_by(8) {
            for (m, x) in x.iter_mut().enumerate() {
                *x = vfmaq_f32(*x, key(c + m), q(c + m));
            }
        }
        for (m, x) in x.iter_mut().enumerate().take(len.next_multiple_of(8) - full) {
            // tinyBLAS's zero-padded last chunk: + 0·0 past the end (a -0 sum turns +0).
            *x = if full + m < len {
                vfmaq_f32(*x, key(full + m), q(full + m))
            } else {
                vaddq_f32(*x, zero)
            };
        }
        let t = [0, 1, 2, 3].map(|i| vaddq_f32(x[i + 4], x[i]));
        vst1q_f32(
            out.as_mut_ptr().add(4 * h),
            vaddq_f32(vaddq_f32(t[0], t[2]), vaddq_f32(t[1], t[3])),
        );
    }
}

/// `vecmath::f32_to_f16_slice`, four values per `fcvtn`.
#[target_feature(enable = "neon")]
unsafe fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
    let full = src.len() / 4 * 4;
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..full).step_by(4) {
        vst1_u16(dp.add(i), to_f16x4(vld1q_f32(sp.add(i))));
    }
    f32_to_f16_slice_scalar(&src[full..], &mut dst[full..]);
}

/// `vecmath::round_f16`, four values per conversion there and back.
#[target_feature(enable = "neon")]
unsafe fn round_f16(x: &mut [f32]) {
    let full = x.len() / 4 * 4;
    let p = x.as_mut_ptr();
    for i in (0..full).step_by(4) {
        let h = to_f16x4(vld1q_f32(p.add(i)));
        let v: float32x4_t;
        // SAFETY: a register-only conversion, as in `Lanes for u16`.
        asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = out(vreg) v, options(pure, nomem, nostack));
        vst1q_f32(p.add(i), v);
    }
    round_f16_scalar(&mut x[full..]);
}

/// For each 4-bit mask, the bytes that move the next packed values into the mask's lanes; the
/// other lanes' bytes are out of range, so the table lookup gives them 0.
const EXPAND4: [[u8; 16]; 16] = {
    let mut t = [[0xFFu8; 16]; 16];
    let mut m = 0;
    while m < 16 {
        let (mut lane, mut k) = (0, 0);
        while lane < 4 {
            if m >> lane & 1 == 1 {
                let mut byte = 0;
                while byte < 4 {
                    t[m][4 * lane + byte] = (4 * k + byte) as u8;
                    byte += 1;
                }
                k += 1;
            }
            lane += 1;
        }
        m += 1;
    }
    t
};

/// `vecmath::expand_weighted_sum`, 64 outputs at a time in sixteen registers: per position and
/// four outputs, the next packed values (as many as bits) moved into the kept lanes by a table
/// lookup (zeros elsewhere: the table's other bytes are out of range), and one multiply-add.
#[target_feature(enable = "neon")]
unsafe fn expand_weighted_sum(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &mut [f32]) {
    let words = out.len().div_ceil(64);
    let pp = packed.as_ptr();
    for w in 0..words {
        let n_out = (out.len() - 64 * w).min(64);
        let mut buf = [0f32; 64];
        buf[..n_out].copy_from_slice(&out[64 * w..64 * w + n_out]);
        let mut acc = [vdupq_n_f32(0.0); 16];
        for (c, acc) in acc.iter_mut().enumerate() {
            *acc = vld1q_f32(buf.as_ptr().add(4 * c));
        }
        for_each_position_word(a, bits, packed, w, slot, head, |aj, word, mut k| {
            let va = vdupq_n_f32(aj);
            for (c, acc) in acc.iter_mut().enumerate() {
                let m = (word >> (4 * c)) as u32 & 0xF;
                let n = m.count_ones() as usize;
                // The caller checked that the position's values lie in `packed`: four values
                // from k where `packed` has them, else the n that remain, copied.
                let v = if k + 4 <= packed.len() {
                    vld1q_f32(pp.add(k))
                } else {
                    let mut t = [0f32; 4];
                    t[..n].copy_from_slice(&packed[k..k + n]);
                    vld1q_f32(t.as_ptr())
                };
                let idx = vld1q_u8(EXPAND4[m as usize].as_ptr());
                let v = vreinterpretq_f32_u8(vqtbl1q_u8(vreinterpretq_u8_f32(v), idx));
                *acc = vfmaq_f32(*acc, va, v);
                k += n;
            }
        });
        for (c, acc) in acc.iter().enumerate() {
            vst1q_f32(buf.as_mut_ptr().add(4 * c), *acc);
        }
        out[64 * w..64 * w + n_out].copy_from_slice(&buf[..n_out]);
    }
}

/// `vecmath::rope`: each output the reference's fused multiply-add (`vfmaq_f32`, fused as
/// `mul_add`) of `a`'s product into the rounded product of `b`. Adjacent pairs take two pairs
/// per register, `a` and `b` duplicated into both lanes of their pair (`trn1`/`trn2`) against
/// interleaved `(cos, sin)` and `(-sin, cos)`.
#[target_feature(enable = "neon")]
unsafe fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let n = cos.len();
    let (xp, cp, sp) = (x.as_mut_ptr(), cos.as_ptr(), sin.as_ptr());
    let mut i = 0;
    if neox {
        while i + 4 <= n {
            let (a, b) = (vld1q_f32(xp.add(i)), vld1q_f32(xp.add(n + i)));
            let (c, s) = (vld1q_f32(cp.add(i)), vld1q_f32(sp.add(i)));
            vst1q_f32(xp.add(i), vfmaq_f32(vmulq_f32(b, vnegq_f32(s)), a, c));
            vst1q_f32(xp.add(n + i), vfmaq_f32(vmulq_f32(b, c), a, s));
            i += 4;
        }
    } else {
        while i + 4 <= n {
            let (c, s) = (vld1q_f32(cp.add(i)), vld1q_f32(sp.add(i)));
            let ns = vnegq_f32(s);
            let m = [vzip1q_f32(c, s), vzip2q_f32(c, s)];
            let k = [vzip1q_f32(ns, c), vzip2q_f32(ns, c)];
            for h in 0..2 {
                let v = vld1q_f32(xp.add(2 * i + 4 * h));
                let (a, b) = (vtrn1q_f32(v, v), vtrn2q_f32(v, v));
                vst1q_f32(xp.add(2 * i + 4 * h), vfmaq_f32(vmulq_f32(b, k[h]), a, m[h]));
            }
            i += 4;
        }
    }
    rope_pairs_scalar(x, cos, sin, neox, i);
}
