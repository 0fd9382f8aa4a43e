//! The "avxvnni" kernel set, for CPUs with AVX-VNNI but not AVX-512 (Alder Lake and later
//! laptops and desktops, Zen 5 mobile): the avx2 set with the legacy-format and Q8_K kernels of
//! `avx2.rs` instantiated again with the VEX `vpdpbusd` on ymm registers (u8×i8 products summed
//! straight into i32, one instruction instead of `vpmaddubsw` + `vpmaddwd`), as the avx512-vnni
//! set does on its 256-bit kernels. The k-quant kernels keep AVX2's maddubs + madd, whose madd
//! also applies the 16-bit group scales for free.
//!
//! `vpdpbusd` never saturates, where `vpmaddubsw` saturates a pair of products past i16: the
//! two give the same sums wherever the avx2 kernels do not saturate, which with activations
//! from the quantizer (|y| ≤ 127) is everywhere; the sums here are exact, as the scalar
//! reference's.
#![allow(clippy::missing_safety_doc)] // every kernel has the contract of `DotFn` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::{self, bits_32, check_rows, f16_at, hsum_i32, hsum_ps, legacy_kernels, load, nibbles_32};
use super::scalar::q8k_d;
use super::table::KernelSet;
use crate::blocks::kquants::layout::*;
use crate::formats::{QuantType, QK, QK_K};

/// The set, or `None` where the CPU lacks AVX2, FMA, F16C or AVX-VNNI.
pub fn kernel_set() -> Option<KernelSet> {
    let avx2 = avx2::kernel_set()?;
    if !is_x86_feature_detected!("avxvnni") {
        return None;
    }
    use QuantType::*;
    // The avx2 set's four-row and interleaved kernels equal its single-row ones, some of which
    // are replaced here: only this set's derived kernels stay (and the interleaved weighted row
    // sums, which equal the scalar definition on every set).
    let axpy16 = avx2[Q8_0].interleaved_axpy;
    let mut s = avx2.renamed("avxvnni");
    s.clear_derived();
    s.set_dots(&[
        (Q4_0, dot_q4_0),
        (Q4_1, dot_q4_1),
        (Q5_0, dot_q5_0),
        (Q5_1, dot_q5_1),
        (Q8_0, dot_q8_0),
        (Q8_K, dot_q8_k),
    ]);
    s[Q4_1].dot_with_sums = Some(dot_q4_1_sums);
    s[Q5_1].dot_with_sums = Some(dot_q5_1_sums);
    s.set_dots_x4(&[
        (Q4_0, dot_q4_0_x4),
        (Q4_1, dot_q4_1_sums_x4),
        (Q5_0, dot_q5_0_x4),
        (Q8_0, dot_q8_0_x4),
    ]);
    s[Q8_0].interleaved_axpy = axpy16;
    super::avx2::add_unpacked_rows(&mut s);
    super::avxvnni_il::add_to(&mut s);
    Some(s)
}

/// Σ of groups of four u8·i8 products into 8 i32 lanes (one VEX `vpdpbusd`).
#[inline(always)]
pub(crate) unsafe fn dot_us8_avxvnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
}

legacy_kernels!("avx2,fma,f16c,avxvnni", dot_us8_avxvnni);
