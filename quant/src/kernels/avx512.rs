//! The "avx512-vnni" kernel set: the legacy-format and Q8_K kernels of `avx2.rs` instantiated
//! again with VNNI's `vpdpbusd` (u8×i8 products summed straight into i32, one instruction
//! instead of maddubs + madd). The k-quant kernels keep AVX2's maddubs + madd, whose madd
//! also applies the 16-bit group scales for free.

use std::arch::x86_64::*;

use super::avx2::{self, bits_32, check_rows, f16_at, hsum_i32, hsum_ps, legacy_kernels, load, nibbles_32};
use super::scalar::q8k_d;
use crate::blocks::kquants::layout::*;
use crate::dispatch::KernelSet;
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
    let mut dots = avx2.dots;
    for (ty, f) in [
        (QuantType::Q4_0, dot_q4_0 as super::DotFn),
        (QuantType::Q4_1, dot_q4_1),
        (QuantType::Q5_0, dot_q5_0),
        (QuantType::Q5_1, dot_q5_1),
        (QuantType::Q8_0, dot_q8_0),
        (QuantType::Q8_K, dot_q8_k),
    ] {
        dots[ty as usize] = f;
    }
    Some(KernelSet { name: "avx512-vnni", dots })
}

/// Σ of groups of four u8·i8 products into 8 i32 lanes (one `vpdpbusd`).
#[inline(always)]
unsafe fn dot_us8_vnni(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

legacy_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", dot_us8_vnni);
