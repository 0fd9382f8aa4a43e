//! The "avx512-vnni" kernel set: the legacy-format and Q8_K kernels of `avx2.rs` instantiated
//! again with VNNI's `vpdpbusd` (u8×i8 products summed straight into i32, one instruction
//! instead of maddubs + madd). The k-quant kernels keep AVX2's maddubs + madd, whose madd
//! also applies the 16-bit group scales for free.
#![allow(clippy::missing_safety_doc)] // every kernel has the contract of `DotFn` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::{
    self, bits_32, check_rows, f16_at, hsum_i32, hsum_ps, legacy_kernels, load, nibbles_32,
};
use super::scalar::q8k_d;
use crate::blocks::kquants::layout::*;
use super::table::KernelSet;
use crate::formats::{QuantType, QK, QK_K};

pub fn kernel_set() -> Option<KernelSet> {
    let avx2 = avx2::kernel_set()?;
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni"))
    {
        return None;
    }
    use QuantType::*;
    // The avx2 set's four-row and interleaved kernels equal its single-row ones, some of which
    // are replaced here: only this file's derived kernels stay.
    let mut s = avx2.renamed("avx512-vnni");
    s.clear_derived();
    s.set_dots(&[
        (Q4_0, dot_q4_0_unsigned),
        (Q4_1, dot_q4_1),
        (Q5_0, dot_q5_0_unsigned),
        (Q5_1, dot_q5_1),
        (Q8_0, dot_q8_0),
        (Q8_K, dot_q8_k),
    ]);
    s[Q4_1].dot_with_sums = Some(dot_q4_1_sums);
    s[Q5_1].dot_with_sums = Some(dot_q5_1_sums);
    s.set_dots_x4(&[
        (Q4_0, dot_q4_0_unsigned_x4),
        (Q4_1, dot_q4_1_sums_x4),
        (Q5_0, dot_q5_0_unsigned_x4),
        (Q8_0, dot_q8_0_x4),
    ]);
    super::avx2::add_unpacked_rows(&mut s);
    super::avx512_gemm::add_to(&mut s);
    super::avx512_il::add_to(&mut s);
    super::avx512_f32::add_to(&mut s);
    Some(s)
}

/// Σ of groups of four u8·i8 products into 8 i32 lanes (one `vpdpbusd`).
#[inline(always)]
unsafe fn dot_us8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

legacy_kernels!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_us8_vnni
);

/// Q4_0 without the sign trick: Σ (q - 8)·y = Σ q·y - Σ 8·y, both by `vpdpbusd` on the
/// unsigned nibbles (one instruction fewer per block than `dot_q4_0`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q4_0_unsigned(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q4_0, n, w, x);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let eights = _mm256_set1_epi8(8);
    for i in 0..n / QK {
        let (bw, bx) = (wp.add(18 * i), xp.add(34 * i));
        let d = _mm256_set1_ps(f16_at(bw) * f16_at(bx));
        let y = load(bx.add(2));
        let p = _mm256_sub_epi32(
            dot_us8_vnni(nibbles_32(bw.add(2)), y),
            dot_us8_vnni(eights, y),
        );
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

/// Q5_0 the same way: Σ (q - 16)·y = Σ q·y - Σ 16·y with q = nibble | 5th bit, unsigned.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q5_0_unsigned(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q5_0, n, w, x);
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let sixteens = _mm256_set1_epi8(16);
    for i in 0..n / QK {
        let (bw, bx) = (wp.add(22 * i), xp.add(34 * i));
        let d = _mm256_set1_ps(f16_at(bw) * f16_at(bx));
        let qh = u32::from_le_bytes([*bw.add(2), *bw.add(3), *bw.add(4), *bw.add(5)]);
        let q = _mm256_or_si256(
            nibbles_32(bw.add(6)),
            _mm256_and_si256(bits_32(qh), sixteens),
        );
        let y = load(bx.add(2));
        let p = _mm256_sub_epi32(dot_us8_vnni(q, y), dot_us8_vnni(sixteens, y));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    hsum_ps(acc)
}

/// Four rows of `dot_q4_0_unsigned` (see `kernels::Dot4Fn`; `sums` unused).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q4_0_unsigned_x4(n: usize, w: [&[u8]; 4], x: &[u8], _sums: &[f32]) -> [f32; 4] {
    let eights = _mm256_set1_epi8(8);
    scaled_x4(QuantType::Q4_0, n, w, x, |bw, y| {
        let p = _mm256_sub_epi32(
            dot_us8_vnni(nibbles_32(bw.add(2)), y),
            dot_us8_vnni(eights, y),
        );
        (f16_at(bw), p)
    })
}

/// Four rows of `dot_q5_0_unsigned` (see `kernels::Dot4Fn`; `sums` unused).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q5_0_unsigned_x4(n: usize, w: [&[u8]; 4], x: &[u8], _sums: &[f32]) -> [f32; 4] {
    let sixteens = _mm256_set1_epi8(16);
    scaled_x4(QuantType::Q5_0, n, w, x, |bw, y| {
        let qh = u32::from_le_bytes([*bw.add(2), *bw.add(3), *bw.add(4), *bw.add(5)]);
        let q = _mm256_or_si256(
            nibbles_32(bw.add(6)),
            _mm256_and_si256(bits_32(qh), sixteens),
        );
        (
            f16_at(bw),
            _mm256_sub_epi32(dot_us8_vnni(q, y), dot_us8_vnni(sixteens, y)),
        )
    })
}
