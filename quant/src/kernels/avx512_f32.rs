//! The f32 vector math of the "avx512-vnni" set that sixteen lanes speed up (the rest is the
//! "avx2" set's, see `avx2_f32`): the scores of 16 transposed keys, one key per lane, and the
//! compact-V value sums by `vexpandps`. Each equals its scalar reference bit for bit.
#![allow(clippy::missing_safety_doc)] // the contracts of the `F32Kernels` entries

use std::arch::x86_64::*;

use super::avx2_f32::{dot_transposed_lanes, dot_transposed_lanes_f16};
use super::table::KernelSet;
use crate::vecmath::expand::{for_each_position_word, kept_word_start, prefetch_kept_word, KEPT_PREFETCH_AHEAD};

/// Replaces the f32 math of `s` that this file speeds up.
pub fn add_to(s: &mut KernelSet) {
    let f = &mut s.f32;
    f.dot16_transposed = dot16_transposed;
    f.dot16_transposed_f16 = dot16_transposed_f16;
    f.expand_weighted_sum = expand_weighted_sum;
    f.expand_weighted_sums = Some(expand_weighted_sums);
}

/// `vecmath::dot16_transposed`, one key per lane (as the AVX2 version, sixteen lanes).
#[target_feature(enable = "avx512f")]
unsafe fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    dot_transposed_lanes!(
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

/// `vecmath::dot16_transposed_f16`, one key per lane.
#[target_feature(enable = "avx512f")]
unsafe fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    dot_transposed_lanes_f16!(
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

/// `vecmath::expand_weighted_sum`, 64 outputs at a time in four registers: per position and
/// sixteen outputs, `vexpandps` reads exactly the packed values of the set bits into their
/// lanes (zeros elsewhere), and one multiply-add takes them.
#[target_feature(enable = "avx512f")]
unsafe fn expand_weighted_sum(a: &[f32], bits: &[u64], packed: &[f32], slot: usize, head: usize, out: &mut [f32]) {
    let words = out.len().div_ceil(64);
    let (pp, op) = (packed.as_ptr(), out.as_mut_ptr());
    for w in 0..words {
        let n_out = (out.len() - 64 * w).min(64);
        let valid: [u16; 4] = std::array::from_fn(|c| ((1u32 << n_out.saturating_sub(16 * c).min(16)) - 1) as u16);
        let mut acc: [__m512; 4] = std::array::from_fn(|c| _mm512_maskz_loadu_ps(valid[c], op.add(64 * w + 16 * c)));
        for_each_position_word(a, bits, packed, w, slot, head, |aj, word, mut k| {
            let va = _mm512_set1_ps(aj);
            for (c, acc) in acc.iter_mut().enumerate() {
                let m = (word >> (16 * c)) as u16;
                // SAFETY: the caller checked that the position's values lie in `packed`:
                // the expand reads packed[k..k + popcount(m)] only.
                let v = _mm512_maskz_expandloadu_ps(m, pp.add(k));
                *acc = _mm512_fmadd_ps(va, v, *acc);
                k += m.count_ones() as usize;
            }
        });
        for (c, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(op.add(64 * w + 16 * c), valid[c], *acc);
        }
    }
}

/// `vecmath::expand_weighted_sums` for up to four queries (`out`: their rows of `width`): per
/// word of 64 outputs, each position's kept values expanded once (zeros elsewhere), then
/// taken by one multiply-add into the rows of the queries that span it.
#[target_feature(enable = "avx512f")]
unsafe fn expand_weighted_sums(
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
        let valid: [u16; 4] = std::array::from_fn(|c| ((1u32 << n_out.saturating_sub(16 * c).min(16)) - 1) as u16);
        let row = |q: usize, c: usize| op.add(q * width + 64 * w + 16 * c);
        let mut acc: [[__m512; 4]; Q] =
            std::array::from_fn(|q| std::array::from_fn(|c| _mm512_maskz_loadu_ps(valid[c], row(q, c))));
        let position = |p: usize| &bits[p * words..(p + 1) * words];
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
            let mut v = [_mm512_setzero_ps(); 4];
            for (c, v) in v.iter_mut().enumerate() {
                let m = (b[w] >> (16 * c)) as u16;
                // SAFETY: the caller checked that position p's values lie in `packed`: the
                // expand reads packed[k..k + popcount(m)] only.
                *v = _mm512_maskz_expandloadu_ps(m, pp.add(k));
                k += m.count_ones() as usize;
            }
            for (acc, &(first, a)) in acc.iter_mut().zip(queries) {
                if p < first || p >= first + a.len() {
                    continue;
                }
                let va = _mm512_set1_ps(a[p - first]);
                for c in 0..4 {
                    acc[c] = _mm512_fmadd_ps(va, v[c], acc[c]);
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
