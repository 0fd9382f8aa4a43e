//! Matrix-vector kernels of the "avx512-vnni" set over weights **interleaved in groups of 16
//! rows** (`kernels::Interleaved16`): one zmm lane per row, so a block of 16 rows costs a few
//! instructions per quad of weights instead of a dozen per row (unpacking, the f16 scale, the
//! scalar product and broadcast, the final reduction). Decoding reads every weight once per token
//! and waits on memory; the fewer instructions per byte, the more of that wait the arithmetic
//! hides.
//!
//! Each row's result is **bit-identical** to the set's single-row kernel: lane `r` of register
//! `l` holds what that kernel's lane `l` holds for row `r` (the quad `l` of each block's products,
//! scaled by `d_w · d_x` and accumulated by FMA), and the final sum adds the lanes in the order of
//! its `hsum_ps`. The weighted row sums (`axpy16`, a MoE expert's transposed down projection) add
//! the group's rows in order, as the row axpy does.
//!
//! The kernels prefetch `IL_PREFETCH_AHEAD` bytes ahead into L2, a block at a time, so that the
//! loads spread over the arithmetic.
#![allow(clippy::missing_safety_doc)] // the contract of `Interleaved16::dot16` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::f16_at;
use super::table::KernelSet;
use super::{Interleaved16, InterleavedAxpy16};
use crate::formats::{QuantType, QK};

/// Adds the set's interleaved kernels and weighted row sums to `s`.
pub fn add_to(s: &mut KernelSet) {
    s[QuantType::Q4_1].interleaved = Some(Interleaved16::new(super::interleave::pack_q4_1, dot16_q4_1));
    s[QuantType::Q8_0].interleaved = Some(Interleaved16::new(super::interleave::pack_q8_0, dot16_q8_0));
    s[QuantType::Q8_0].interleaved_axpy = Some(InterleavedAxpy16 { pack: super::interleave::pack_q8_0_axpy, axpy16: axpy16_q8_0 });
}

/// Lanes `0..16` of `out` from the eight quad accumulators, as the single-row kernels'
/// `hsum_ps`: ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), plus `summ` for the offset formats.
#[inline(always)]
unsafe fn reduce(acc: [__m512; 8], summ: Option<__m512>, out: &mut [f32; 16]) {
    // No closures here: a closure does not carry its caller's target features.
    let t = [
        _mm512_add_ps(acc[0], acc[4]),
        _mm512_add_ps(acc[1], acc[5]),
        _mm512_add_ps(acc[2], acc[6]),
        _mm512_add_ps(acc[3], acc[7]),
    ];
    let mut sum = _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3]));
    if let Some(m) = summ {
        sum = _mm512_add_ps(sum, m);
    }
    _mm512_storeu_ps(out.as_mut_ptr(), sum);
}

/// The 16 f16 values at `p` as f32.
#[inline(always)]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

#[inline(always)]
fn check(ty: QuantType, cols: usize, group: &[u8], x: &[u8]) {
    let nb = cols / QK;
    assert!(
        cols % QK == 0 && group.len() >= 16 * nb * ty.type_size() && x.len() >= nb * 34,
        "{ty} interleaved dot: group or vector too short for {cols} values"
    );
}

/// Q4_1 group block: the four dwords of nibbles of the 16 rows (dword `i` of every row, then
/// `i + 1`, ...), then the rows' `d`, then their `m`. Dword `i`'s low nibbles are elements
/// `4i..4i+4`, its high nibbles `16+4i..`: quads `i` and `i + 4`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot16_q4_1(
    cols: usize,
    group: &[u8],
    x: &[u8],
    sums: &[f32],
    out: &mut [f32; 16],
    next: *const u8,
) {
    check(QuantType::Q4_1, cols, group, x);
    let nb = cols / QK;
    assert!(
        sums.len() >= nb,
        "q4_1 interleaved dot: {} block sums for {nb} blocks",
        sums.len()
    );
    let (gp, xp) = (group.as_ptr(), x.as_ptr());
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut summ = _mm512_setzero_ps();
    for b in 0..nb {
        let (g, bx) = (gp.add(320 * b), xp.add(34 * b));
        super::prefetch_group_ahead(gp, 320 * nb, 320 * b, 320, next);
        let scale = _mm512_mul_ps(f16x16(g.add(256)), _mm512_set1_ps(f16_at(bx)));
        for i in 0..4 {
            let d = _mm512_loadu_si512(g.add(64 * i) as *const _);
            let quads = [
                _mm512_and_si512(d, low),
                _mm512_and_si512(_mm512_srli_epi32(d, 4), low),
            ];
            for (h, q) in quads.into_iter().enumerate() {
                let l = i + 4 * h;
                let y = _mm512_set1_epi32((bx.add(2 + 4 * l) as *const i32).read_unaligned());
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
                acc[l] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), acc[l]);
            }
        }
        // Fused, as the single-row kernels' `summ = m.mul_add(s, summ)`.
        summ = _mm512_fmadd_ps(
            f16x16(g.add(288)),
            _mm512_set1_ps(*sums.get_unchecked(b)),
            summ,
        );
    }
    reduce(acc, Some(summ), out)
}

/// Q8_0 group block: quad `l` of the 16 rows (`q + 128`, unsigned) for `l = 0..8`, then the rows'
/// `d`. The activation's `-128 · Σ` of each quad starts its accumulator, so the sums are exactly
/// `Σ q·y`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot16_q8_0(
    cols: usize,
    group: &[u8],
    x: &[u8],
    _sums: &[f32],
    out: &mut [f32; 16],
    next: *const u8,
) {
    check(QuantType::Q8_0, cols, group, x);
    let nb = cols / QK;
    let (gp, xp) = (group.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..nb {
        let (g, bx) = (gp.add(544 * b), xp.add(34 * b));
        super::prefetch_group_ahead(gp, 544 * nb, 544 * b, 544, next);
        let scale = _mm512_mul_ps(f16x16(g.add(512)), _mm512_set1_ps(f16_at(bx)));
        let y = _mm256_loadu_si256(bx.add(2) as *const __m256i);
        let sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), y);
        let mut corr = [0i32; 8];
        _mm256_storeu_si256(
            corr.as_mut_ptr() as *mut __m256i,
            _mm256_slli_epi32(sums, 7),
        );
        for (l, acc) in acc.iter_mut().enumerate() {
            let q = _mm512_loadu_si512(g.add(64 * l) as *const _);
            let y = _mm512_set1_epi32((bx.add(2 + 4 * l) as *const i32).read_unaligned());
            let p = _mm512_dpbusd_epi32(_mm512_set1_epi32(-corr[l]), q, y);
            *acc = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), *acc);
        }
    }
    reduce(acc, None, out)
}

/// Q8_0 weighted row sums over a group packed by `pack_q8_0_axpy`: `y += Σ_{r ∈ lanes}
/// coeffs[r] · row r` as `scalar::axpy16_q8_0_quantized` defines it (the same bits): per block,
/// the 16 rows' `coeff · d` quantized to 8 bits, then per column one `vpdpbusd` per quad of rows
/// (the quants stored plus 128, unsigned, so the sum is corrected by `-128 · Σ t`) and one FMA
/// of the integer sum by the block's scale. Against converting every weight to f32 for an FMA
/// per row (two conversions and an FMA per 16 weights), a sixth of the instructions.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn axpy16_q8_0(
    cols: usize,
    group: &[u8],
    coeffs: &[f32; 16],
    lanes: std::ops::Range<usize>,
    y: &mut [f32],
    next: *const u8,
) {
    let nb = cols / QK;
    assert!(
        cols % QK == 0 && group.len() >= 16 * nb * 34 && y.len() >= cols && lanes.end <= 16,
        "q8_0 interleaved axpy: group or output too short for {cols} values, or lanes {lanes:?}"
    );
    let (gp, yp) = (group.as_ptr(), y.as_mut_ptr());
    // The coefficients, 0 outside `lanes`.
    let below = |n: usize| ((1u32 << n) - 1) as u16;
    let c = _mm512_maskz_loadu_ps(
        below(lanes.end) & !below(lanes.start.min(lanes.end)),
        coeffs.as_ptr(),
    );
    for b in 0..nb {
        let (g, yb) = (gp.add(544 * b), yp.add(32 * b));
        super::prefetch_group_ahead(gp, 544 * nb, 544 * b, 544, next);
        let s = _mm512_mul_ps(c, f16x16(g.add(512)));
        let a = _mm512_abs_ps(s);
        // Not finite (or NaN): the block adds NaN, as the scalar definition does.
        if _mm512_cmp_ps_mask(a, _mm512_set1_ps(f32::MAX), _CMP_NLE_UQ) != 0 {
            for h in 0..2 {
                let v = _mm512_loadu_ps(yb.add(16 * h));
                _mm512_storeu_ps(yb.add(16 * h), _mm512_add_ps(v, _mm512_set1_ps(f32::NAN)));
            }
            continue;
        }
        let Some((t_scale, id)) = super::scalar::axpy_coeff_scale(_mm512_reduce_max_ps(a)) else {
            continue;
        };
        // Rounded to even (the default MXCSR mode), as `round_ties_even`.
        let t = _mm512_cvtps_epi32(_mm512_mul_ps(s, _mm512_set1_ps(id)));
        let quads: [i32; 4] = std::mem::transmute(_mm512_cvtepi32_epi8(t));
        let corr = _mm512_set1_epi32(-128 * _mm512_reduce_add_epi32(t));
        let mut acc = [corr; 2];
        for (k, &quad) in quads.iter().enumerate() {
            let tk = _mm512_set1_epi32(quad);
            for (h, acc) in acc.iter_mut().enumerate() {
                let q = _mm512_loadu_si512(g.add(128 * k + 64 * h) as *const _);
                *acc = _mm512_dpbusd_epi32(*acc, q, tk);
            }
        }
        let ts = _mm512_set1_ps(t_scale);
        for (h, acc) in acc.iter().enumerate() {
            let v = _mm512_loadu_ps(yb.add(16 * h));
            _mm512_storeu_ps(
                yb.add(16 * h),
                _mm512_fmadd_ps(ts, _mm512_cvtepi32_ps(*acc), v),
            );
        }
    }
}
