//! AVX2 + FMA + F16C dot products for every format (the "avx2" kernel set).
//!
//! The legacy-format kernels are written once as macros over the u8×i8 → i32 primitive, so
//! that `avx512.rs` instantiates them again with VNNI's `vpdpbusd`.
#![allow(clippy::missing_safety_doc)] // every kernel has the contract of `DotFn` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::scalar::q8k_d;
use crate::blocks::kquants::layout::*;
use super::table::KernelSet;
use crate::formats::{QuantType, QK, QK_K};

pub fn kernel_set() -> Option<KernelSet> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    use QuantType::*;
    let mut s = KernelSet::scalar().renamed("avx2");
    s.set_dots(&[
        (F32, dot_f32),
        (F16, dot_f16),
        (BF16, dot_bf16),
        (Q4_0, dot_q4_0),
        (Q4_1, dot_q4_1),
        (Q5_0, dot_q5_0),
        (Q5_1, dot_q5_1),
        (Q8_0, dot_q8_0),
        (Q2_K, dot_q2_k),
        (Q3_K, dot_q3_k),
        (Q4_K, dot_q4_k),
        (Q5_K, dot_q5_k),
        (Q6_K, dot_q6_k),
        (Q8_K, dot_q8_k),
    ]);
    s[Q4_1].dot_with_sums = Some(dot_q4_1_sums);
    s[Q5_1].dot_with_sums = Some(dot_q5_1_sums);
    s.set_dots_x4(&[(Q4_0, dot_q4_0_x4), (Q4_1, dot_q4_1_sums_x4), (Q5_0, dot_q5_0_x4), (Q8_0, dot_q8_0_x4)]);
    s[Q8_0].axpy = Some(axpy_q8_0);
    add_unpacked_rows(&mut s);
    super::avx2_il::add_to(&mut s);
    super::avx2_f32::add_to(&mut s);
    s.quantize_q8_0_acts = quantize_q8_0_acts;
    Some(s)
}

/// The activation quantizer (see `kernels::QuantizeActsFn`), as ggml's AVX2
/// `quantize_row_q8_0`/`_q8_1`: scale by `127/amax`, round half to even (`vcvtps2dq` in the
/// default rounding mode), saturate to i8, scale to f16 by F16C. (`vmaxps` and the scalar
/// reference's `f32::max` treat NaN differently; only finite activations are specified.)
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0_acts(src: &[f32], dst: &mut [u8], sums: &mut [f32]) {
    let nb = src.len() / QK;
    assert!(
        src.len() % QK == 0 && dst.len() >= nb * 34 && sums.len() >= nb,
        "q8_0 activations: {} values do not fit {} bytes and {} sums",
        src.len(),
        dst.len(),
        sums.len()
    );
    let sign = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        let p = src.as_ptr().add(QK * b);
        let v = [0, 1, 2, 3].map(|k| _mm256_loadu_ps(p.add(8 * k)));
        let a = v.map(|x| _mm256_andnot_ps(sign, x));
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|x| _mm256_cvtps_epi32(_mm256_mul_ps(x, id)));
        // packs interleave 128-bit lanes; the permutation restores element order.
        let q16 = [
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        ];
        let q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16[0], q16[1]), order);
        let out = dst.as_mut_ptr().add(34 * b);
        let dh = _mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT);
        (out as *mut u16).write_unaligned(_mm_extract_epi16(dh, 0) as u16);
        _mm256_storeu_si256(out.add(2) as *mut __m256i, q8);
        let sum = hsum_i32(dot_us8_avx2(_mm256_set1_epi8(1), q8)) as f32;
        let s = _mm_cvtph_ps(_mm_cvtps_ph(_mm_set_ss(d * sum), _MM_FROUND_TO_NEAREST_INT));
        *sums.get_unchecked_mut(b) = _mm_cvtss_f32(s);
    }
}

/// Panics unless both rows hold `n` elements of `ty` / its vec_dot_type: every kernel checks
/// once per row, so the unchecked SIMD loads below stay in bounds.
#[inline(always)]
pub(crate) fn check_rows(ty: QuantType, n: usize, w: &[u8], x: &[u8]) {
    assert!(
        n % ty.block_size() == 0
            && w.len() >= n / ty.block_size() * ty.type_size()
            && x.len() >= n / ty.block_size() * ty.vec_dot_type().type_size(),
        "{ty} dot: rows too short for {n} values"
    );
}

#[inline(always)]
pub(crate) unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The f16 at `p`, as f32. Without AVX512-FP16 at compile time, in assembly: LLVM otherwise
/// loads a lone f16 with `vpinsrw` into whatever vector register is at hand (only the low lane is
/// needed), a false dependency that chained every block of a dot product to the previous one's
/// accumulator (2x slower); `vmovd` from a general register zeroes the vector register. With
/// AVX512-FP16 (`-C target-cpu=native` on such CPUs) LLVM's zeroing `vmovsh` is better. Requires
/// F16C (every kernel set that calls this has it).
#[cfg(not(target_feature = "avx512fp16"))]
#[inline(always)]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned() as u32;
    let out: f32;
    // SAFETY: register-only instructions (no memory access, no stack); the callers run only on
    // CPUs with F16C (checked when their kernel set was selected).
    unsafe {
        std::arch::asm!(
            "vmovd {x}, {b:e}",
            "vcvtph2ps {x}, {x}",
            b = in(reg) bits,
            x = out(xmm_reg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

#[cfg(target_feature = "avx512fp16")]
#[inline(always)]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
pub(crate) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// 32 nibbles → 32 bytes: the 16 low nibbles in bytes 0..16, the high ones in 16..32 (the
/// element order of Q4_0/Q4_1/Q5_x blocks).
#[inline(always)]
pub(crate) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// 32 bits → 32 bytes of 0xFF (bit set) or 0x00.
#[inline(always)]
pub(crate) unsafe fn bits_32(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let v = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask)
}

/// Σ of pairs of u8·i8 products into 8 i32 lanes (AVX2: maddubs + madd).
#[inline(always)]
pub(crate) unsafe fn dot_us8_avx2(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Generates the legacy-format kernels over a `$dot_us8(u8 vector, i8 vector) -> i32x8`.
macro_rules! legacy_kernels {
    ($tf:literal, $dot_us8:path) => {
        /// i8·i8 via |a| · sign(b, a).
        #[inline(always)]
        unsafe fn dot_ss8(a: __m256i, b: __m256i) -> __m256i {
            $dot_us8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
        }

        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_rows(QuantType::Q4_0, n, w, x);
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(18 * i), xp.add(34 * i));
                let d = _mm256_set1_ps(f16_at(bw) * f16_at(bx));
                let q = _mm256_sub_epi8(nibbles_32(bw.add(2)), _mm256_set1_epi8(8));
                let p = dot_ss8(q, load(bx.add(2)));
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
            }
            hsum_ps(acc)
        }

        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_rows(QuantType::Q4_1, n, w, x);
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            let mut accm = _mm256_setzero_ps();
            let ones = _mm256_set1_epi8(1);
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(20 * i), xp.add(34 * i));
                let dx = f16_at(bx);
                let y = load(bx.add(2));
                let p = $dot_us8(nibbles_32(bw.add(4)), y);
                let sy = $dot_us8(ones, y);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(bw) * dx), _mm256_cvtepi32_ps(p), acc);
                accm = _mm256_fmadd_ps(
                    _mm256_set1_ps(f16_at(bw.add(2)) * dx),
                    _mm256_cvtepi32_ps(sy),
                    accm,
                );
            }
            hsum_ps(_mm256_add_ps(acc, accm))
        }

        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_rows(QuantType::Q5_0, n, w, x);
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(22 * i), xp.add(34 * i));
                let d = _mm256_set1_ps(f16_at(bw) * f16_at(bx));
                let qh = u32::from_le_bytes([*bw.add(2), *bw.add(3), *bw.add(4), *bw.add(5)]);
                // Missing 5th bit means value - 16: set the high nibble to make it negative.
                let hi = _mm256_andnot_si256(bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
                let q = _mm256_or_si256(nibbles_32(bw.add(6)), hi);
                let p = dot_ss8(q, load(bx.add(2)));
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
            }
            hsum_ps(acc)
        }

        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_rows(QuantType::Q5_1, n, w, x);
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            let mut accm = _mm256_setzero_ps();
            let ones = _mm256_set1_epi8(1);
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(24 * i), xp.add(34 * i));
                let dx = f16_at(bx);
                let y = load(bx.add(2));
                let qh = u32::from_le_bytes([*bw.add(4), *bw.add(5), *bw.add(6), *bw.add(7)]);
                let hi = _mm256_and_si256(bits_32(qh), _mm256_set1_epi8(0x10));
                let q = _mm256_or_si256(nibbles_32(bw.add(8)), hi);
                let p = $dot_us8(q, y);
                let sy = $dot_us8(ones, y);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(bw) * dx), _mm256_cvtepi32_ps(p), acc);
                accm = _mm256_fmadd_ps(
                    _mm256_set1_ps(f16_at(bw.add(2)) * dx),
                    _mm256_cvtepi32_ps(sy),
                    accm,
                );
            }
            hsum_ps(_mm256_add_ps(acc, accm))
        }

        /// Q4_1 with precomputed activation block sums: the offset term is one scalar FMA.
        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q4_1_sums(n: usize, w: &[u8], x: &[u8], sums: &[f32]) -> f32 {
            check_rows(QuantType::Q4_1, n, w, x);
            assert!(
                sums.len() >= n / QK,
                "q4_1 dot: {} block sums for {n} values",
                sums.len()
            );
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            let mut summ = 0.0f32;
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(20 * i), xp.add(34 * i));
                let p = $dot_us8(nibbles_32(bw.add(4)), load(bx.add(2)));
                acc = _mm256_fmadd_ps(
                    _mm256_set1_ps(f16_at(bw) * f16_at(bx)),
                    _mm256_cvtepi32_ps(p),
                    acc,
                );
                // Fused, as ggml's C compiles `summs += m * s` (contracted to an FMA).
                summ = f16_at(bw.add(2)).mul_add(*sums.get_unchecked(i), summ);
            }
            hsum_ps(acc) + summ
        }

        /// Q5_1 with precomputed activation block sums.
        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q5_1_sums(n: usize, w: &[u8], x: &[u8], sums: &[f32]) -> f32 {
            check_rows(QuantType::Q5_1, n, w, x);
            assert!(
                sums.len() >= n / QK,
                "q5_1 dot: {} block sums for {n} values",
                sums.len()
            );
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            let mut summ = 0.0f32;
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(24 * i), xp.add(34 * i));
                let qh = u32::from_le_bytes([*bw.add(4), *bw.add(5), *bw.add(6), *bw.add(7)]);
                let q = _mm256_or_si256(
                    nibbles_32(bw.add(8)),
                    _mm256_and_si256(bits_32(qh), _mm256_set1_epi8(0x10)),
                );
                let p = $dot_us8(q, load(bx.add(2)));
                acc = _mm256_fmadd_ps(
                    _mm256_set1_ps(f16_at(bw) * f16_at(bx)),
                    _mm256_cvtepi32_ps(p),
                    acc,
                );
                // Fused, as ggml's C compiles `summs += m * s` (contracted to an FMA).
                summ = f16_at(bw.add(2)).mul_add(*sums.get_unchecked(i), summ);
            }
            hsum_ps(acc) + summ
        }

        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_rows(QuantType::Q8_0, n, w, x);
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = _mm256_setzero_ps();
            for i in 0..n / QK {
                let (bw, bx) = (wp.add(34 * i), xp.add(34 * i));
                let d = _mm256_set1_ps(f16_at(bw) * f16_at(bx));
                let p = dot_ss8(load(bw.add(2)), load(bx.add(2)));
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
            }
            hsum_ps(acc)
        }

        /// Four rows of `dot_q4_1_sums` (see `kernels::Dot4Fn`).
        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q4_1_sums_x4(
            n: usize,
            w: [&[u8]; 4],
            x: &[u8],
            sums: &[f32],
        ) -> [f32; 4] {
            for r in &w {
                check_rows(QuantType::Q4_1, n, r, x);
            }
            assert!(
                sums.len() >= n / QK,
                "q4_1 dot: {} block sums for {n} values",
                sums.len()
            );
            let xp = x.as_ptr();
            let wp = w.map(|r| r.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut summ = [0.0f32; 4];
            for i in 0..n / QK {
                let bx = xp.add(34 * i);
                let (dx, y, s) = (f16_at(bx), load(bx.add(2)), *sums.get_unchecked(i));
                for r in 0..4 {
                    let bw = wp[r].add(20 * i);
                    let p = $dot_us8(nibbles_32(bw.add(4)), y);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(f16_at(bw) * dx),
                        _mm256_cvtepi32_ps(p),
                        acc[r],
                    );
                    summ[r] = f16_at(bw.add(2)).mul_add(s, summ[r]);
                }
            }
            // Not `map`: a closure does not carry this function's target features, so its
            // intrinsics would be calls.
            [
                hsum_ps(acc[0]) + summ[0],
                hsum_ps(acc[1]) + summ[1],
                hsum_ps(acc[2]) + summ[2],
                hsum_ps(acc[3]) + summ[3],
            ]
        }

        /// Four rows of a format without block offsets: `block(w_block, x_qs)` gives the weight
        /// block's scale and its eight i32 partial products with the activation block, exactly
        /// as the single-row kernel computes them.
        #[inline(always)]
        pub(crate) unsafe fn scaled_x4(
            ty: QuantType,
            n: usize,
            w: [&[u8]; 4],
            x: &[u8],
            block: impl Fn(*const u8, __m256i) -> (f32, __m256i),
        ) -> [f32; 4] {
            for r in &w {
                check_rows(ty, n, r, x);
            }
            let ts = ty.type_size();
            let xp = x.as_ptr();
            let wp = w.map(|r| r.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            for i in 0..n / QK {
                let bx = xp.add(34 * i);
                let (dx, y) = (f16_at(bx), load(bx.add(2)));
                for r in 0..4 {
                    let (dw, p) = block(wp[r].add(ts * i), y);
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(p), acc[r]);
                }
            }
            // Not `map` (see above).
            [hsum_ps(acc[0]), hsum_ps(acc[1]), hsum_ps(acc[2]), hsum_ps(acc[3])]
        }

        /// Four rows of `dot_q8_0` (see `kernels::Dot4Fn`; `sums` unused).
        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q8_0_x4(n: usize, w: [&[u8]; 4], x: &[u8], _sums: &[f32]) -> [f32; 4] {
            scaled_x4(QuantType::Q8_0, n, w, x, |bw, y| {
                (f16_at(bw), dot_ss8(load(bw.add(2)), y))
            })
        }

        /// Four rows of `dot_q4_0` (see `kernels::Dot4Fn`; `sums` unused).
        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q4_0_x4(n: usize, w: [&[u8]; 4], x: &[u8], _sums: &[f32]) -> [f32; 4] {
            scaled_x4(QuantType::Q4_0, n, w, x, |bw, y| {
                let q = _mm256_sub_epi8(nibbles_32(bw.add(2)), _mm256_set1_epi8(8));
                (f16_at(bw), dot_ss8(q, y))
            })
        }

        /// Four rows of `dot_q5_0` (see `kernels::Dot4Fn`; `sums` unused).
        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q5_0_x4(n: usize, w: [&[u8]; 4], x: &[u8], _sums: &[f32]) -> [f32; 4] {
            scaled_x4(QuantType::Q5_0, n, w, x, |bw, y| {
                let qh = u32::from_le_bytes([*bw.add(2), *bw.add(3), *bw.add(4), *bw.add(5)]);
                let hi = _mm256_andnot_si256(bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
                let q = _mm256_or_si256(nibbles_32(bw.add(6)), hi);
                (f16_at(bw), dot_ss8(q, y))
            })
        }

        #[target_feature(enable = $tf)]
        pub unsafe fn dot_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_rows(QuantType::Q8_K, n, w, x);
            let mut sum = 0.0f32;
            for i in 0..n / QK_K {
                let (bw, bx) = (&w[Q8_BYTES * i..], &x[Q8_BYTES * i..]);
                let mut s = _mm256_setzero_si256();
                for k in 0..8 {
                    let o = Q8_QS + 32 * k;
                    s = _mm256_add_epi32(
                        s,
                        dot_ss8(load(bw.as_ptr().add(o)), load(bx.as_ptr().add(o))),
                    );
                }
                sum += q8k_d(bw) * q8k_d(bx) * hsum_i32(s) as f32;
            }
            sum
        }
    };
}
#[allow(unused_imports)] // used by avx512.rs and avxvnni.rs
pub(crate) use legacy_kernels;

legacy_kernels!("avx2,fma,f16c", dot_us8_avx2);

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::F32, n, w, x);
    let (wp, xp) = (w.as_ptr() as *const f32, x.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_loadu_ps(wp.add(i + 8 * k));
            let b = _mm256_loadu_ps(xp.add(i + 8 * k));
            *acc = _mm256_fmadd_ps(a, b, *acc);
        }
        i += 32;
    }
    let mut sum = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        sum += *wp.add(i) * *xp.add(i);
        i += 1;
    }
    sum
}

/// Shared by f16 and bf16: convert 8 elements at a time, FMA in f32.
#[inline(always)]
unsafe fn dot_half<const BF16: bool>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let scalar = if BF16 {
        crate::blocks::float::bf16_to_f32
    } else {
        crate::blocks::float::f16_to_f32
    };
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = 2 * (i + 8 * k);
            *acc = _mm256_fmadd_ps(
                cvt_half::<BF16>(wp.add(o)),
                cvt_half::<BF16>(xp.add(o)),
                *acc,
            );
        }
        i += 32;
    }
    let mut sum = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    while i < n {
        let a = scalar(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
        let b = scalar(u16::from_le_bytes([x[2 * i], x[2 * i + 1]]));
        sum += a * b;
        i += 1;
    }
    sum
}

#[inline(always)]
unsafe fn cvt_half<const BF16: bool>(p: *const u8) -> __m256 {
    if BF16 {
        cvt_bf16x8(p)
    } else {
        cvt_f16x8(p)
    }
}

#[inline(always)]
unsafe fn cvt_f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[inline(always)]
unsafe fn cvt_bf16x8(p: *const u8) -> __m256 {
    let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::F16, n, w, x);
    dot_half::<false>(n, w, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::BF16, n, w, x);
    dot_half::<true>(n, w, x)
}

// The k-quant kernels keep every per-block scale in registers: building a scale array with
// scalar stores and reading it back as a vector stalls on store forwarding.

/// Shuffle masks selecting group scale `2c` (low 128 bits) and `2c + 1` (high 128 bits) of a
/// 16-byte scale vector into the high byte of every i16 lane (sign-extended by `srai 8`).
static GROUP_SCALE_SHUFFLE: [[u8; 32]; 8] = {
    let mut t = [[0x80u8; 32]; 8];
    let mut c = 0;
    while c < 8 {
        let mut k = 0;
        while k < 16 {
            if k % 2 == 1 {
                t[c][k] = 2 * c as u8;
                t[c][16 + k] = 2 * c as u8 + 1;
            }
            k += 1;
        }
        c += 1;
    }
    t
};

/// 16 i16 lanes: the scale of group 2c in the low half, of group 2c+1 in the high half, from
/// `scales` = the 16 i8 group scales in both 128-bit halves.
#[inline(always)]
unsafe fn group_scales(scales: __m256i, c: usize) -> __m256i {
    _mm256_srai_epi16(
        _mm256_shuffle_epi8(scales, load(GROUP_SCALE_SHUFFLE[c].as_ptr())),
        8,
    )
}

/// 8 i32 lanes whose sum is Σ_g scale[g]·bsum[g] over the 16 groups of a Q8_K block.
#[inline(always)]
unsafe fn scaled_bsums(bx: &[u8], scales16: __m256i) -> __m256i {
    _mm256_madd_epi16(load(bx.as_ptr().add(Q8_BSUMS)), scales16)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q2_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q2_K, n, w, x);
    let mut acc = _mm256_setzero_ps();
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0F);
    for i in 0..n / QK_K {
        let (bw, bx) = (
            &w[Q2_BYTES * i..Q2_BYTES * (i + 1)],
            &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
        );
        let sc = _mm_loadu_si128(bw.as_ptr().add(Q2_SCALES) as *const __m128i);
        let scales = _mm256_broadcastsi128_si256(_mm_and_si128(sc, m4));
        let mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), m4));
        let dy = q8k_d(bx);
        let summ = scaled_bsums(bx, mins16);
        acc = _mm256_fnmadd_ps(
            _mm256_set1_ps(dy * f16_at(bw.as_ptr().add(Q2_DMIN))),
            _mm256_cvtepi32_ps(summ),
            acc,
        );
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let q = load(bw.as_ptr().add(Q2_QS + 32 * half));
            for s in 0..4 {
                let c = 4 * half + s;
                let u = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * s as i32)), m3);
                let p = _mm256_maddubs_epi16(u, load(bx.as_ptr().add(Q8_QS + 32 * c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, group_scales(scales, c)));
            }
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(dy * f16_at(bw.as_ptr().add(Q2_D))),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_ps(acc)
}

/// The sixteen Q3_K group scales (6 bits, minus 32) as i8 lanes (`kquants::q3_k_scales`).
#[inline(always)]
unsafe fn q3_k_scale_vector(packed: &[u8]) -> __m128i {
    _mm_loadu_si128(crate::blocks::kquants::q3_k_scales(packed).as_ptr() as *const __m128i)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q3_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q3_K, n, w, x);
    let mut acc = _mm256_setzero_ps();
    let m3 = _mm256_set1_epi8(3);
    let m1 = _mm256_set1_epi8(1);
    for i in 0..n / QK_K {
        let (bw, bx) = (
            &w[Q3_BYTES * i..Q3_BYTES * (i + 1)],
            &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
        );
        let sc = q3_k_scale_vector(&bw[Q3_SCALES..Q3_SCALES + 12]);
        let scales = _mm256_broadcastsi128_si256(sc);
        // Levels are stored as u = value + 4 in 0..8: Σ value·y = Σ u·y - 4·Σ y.
        let mut sumi = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(scaled_bsums(bx, _mm256_cvtepi8_epi16(sc)), 2),
        );
        let hm = load(bw.as_ptr().add(Q3_HMASK));
        for half in 0..2 {
            let q = load(bw.as_ptr().add(Q3_QS + 32 * half));
            for s in 0..4 {
                let c = 4 * half + s;
                let low =
                    _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * s as i32)), m3);
                let hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(c as i32)), m1);
                let u = _mm256_or_si256(low, _mm256_slli_epi16(hb, 2));
                let p = _mm256_maddubs_epi16(u, load(bx.as_ptr().add(Q8_QS + 32 * c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, group_scales(scales, c)));
            }
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(q8k_d(bx) * f16_at(bw.as_ptr().add(Q3_D))),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_ps(acc)
}

/// Q4_K/Q5_K: the 8 six-bit scales (as a u64 of bytes) and the 8 mins (as i16 lanes) of the 12
/// packed bytes (`kquants::scales_mins_k4`).
#[inline(always)]
unsafe fn scales_mins_k(packed: &[u8]) -> (u64, __m128i) {
    let (sc, mins) = crate::blocks::kquants::scales_mins_k4(packed.try_into().expect("12 bytes"));
    (u64::from_le_bytes(sc), _mm_cvtepu8_epi16(_mm_cvtsi64_si128(u64::from_le_bytes(mins) as i64)))
}

/// Σ_j min_j·(bsum_2j + bsum_2j+1) as 4 i32 lanes.
#[inline(always)]
unsafe fn min_bsums(bx: &[u8], mins: __m128i) -> __m128i {
    let b = load(bx.as_ptr().add(Q8_BSUMS));
    let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_madd_epi16(pairs, mins)
}

/// `vpshufb` masks: mask `j` spreads byte `j` of each 128-bit half to every i16 lane (high
/// bytes zero).
static SCALE_BYTE_SHUFFLE: [[u8; 32]; 8] = {
    let mut t = [[0x80u8; 32]; 8];
    let mut j = 0;
    while j < 8 {
        let mut k = 0;
        while k < 32 {
            t[j][k] = j as u8;
            k += 2;
        }
        j += 1;
    }
    t
};

/// The 8 scale bytes of `sc` in both 128-bit halves, for [`scale_i16`].
#[inline(always)]
unsafe fn scale_bytes(sc: u64) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_cvtsi64_si128(sc as i64))
}

/// Scale byte `j` of `bytes` (from [`scale_bytes`]) in every i16 lane: one shuffle instead of a
/// scalar extract and a broadcast.
#[inline(always)]
unsafe fn scale_i16(bytes: __m256i, j: usize) -> __m256i {
    _mm256_shuffle_epi8(bytes, load(SCALE_BYTE_SHUFFLE[j].as_ptr()))
}

#[inline(always)]
unsafe fn hsum_ps128(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q4_K, n, w, x);
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm_setzero_ps();
    let m4 = _mm256_set1_epi8(0x0F);
    for i in 0..n / QK_K {
        let (bw, bx) = (
            &w[Q4_BYTES * i..Q4_BYTES * (i + 1)],
            &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
        );
        let (sc, mins) = scales_mins_k(&bw[Q4_SCALES..Q4_SCALES + 12]);
        let sc = scale_bytes(sc);
        let dy = q8k_d(bx);
        let summ = min_bsums(bx, mins);
        accm = _mm_fmadd_ps(
            _mm_set1_ps(dy * f16_at(bw.as_ptr().add(Q4_DMIN))),
            _mm_cvtepi32_ps(summ),
            accm,
        );
        let mut sumi = _mm256_setzero_si256();
        for k in 0..4 {
            let q = load(bw.as_ptr().add(Q4_QS + 32 * k));
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let plo = _mm256_maddubs_epi16(lo, load(bx.as_ptr().add(Q8_QS + 64 * k)));
            let phi = _mm256_maddubs_epi16(hi, load(bx.as_ptr().add(Q8_QS + 64 * k + 32)));
            let plo = _mm256_madd_epi16(plo, scale_i16(sc, 2 * k));
            let phi = _mm256_madd_epi16(phi, scale_i16(sc, 2 * k + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(dy * f16_at(bw.as_ptr().add(Q4_D))),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_ps(acc) - hsum_ps128(accm)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q5_K, n, w, x);
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm_setzero_ps();
    let m4 = _mm256_set1_epi8(0x0F);
    let m1 = _mm256_set1_epi8(1);
    for i in 0..n / QK_K {
        let (bw, bx) = (
            &w[Q5_BYTES * i..Q5_BYTES * (i + 1)],
            &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
        );
        let (sc, mins) = scales_mins_k(&bw[Q5_SCALES..Q5_SCALES + 12]);
        let sc = scale_bytes(sc);
        let dy = q8k_d(bx);
        let summ = min_bsums(bx, mins);
        accm = _mm_fmadd_ps(
            _mm_set1_ps(dy * f16_at(bw.as_ptr().add(Q5_DMIN))),
            _mm_cvtepi32_ps(summ),
            accm,
        );
        let qh = load(bw.as_ptr().add(Q5_QH));
        let mut sumi = _mm256_setzero_si256();
        for k in 0..4 {
            let q = load(bw.as_ptr().add(Q5_QS + 32 * k));
            let hlo = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), m1);
            let hhi = _mm256_and_si256(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32 + 1)),
                m1,
            );
            let lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(hlo, 4));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                _mm256_slli_epi16(hhi, 4),
            );
            let plo = _mm256_maddubs_epi16(lo, load(bx.as_ptr().add(Q8_QS + 64 * k)));
            let phi = _mm256_maddubs_epi16(hi, load(bx.as_ptr().add(Q8_QS + 64 * k + 32)));
            let plo = _mm256_madd_epi16(plo, scale_i16(sc, 2 * k));
            let phi = _mm256_madd_epi16(phi, scale_i16(sc, 2 * k + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(dy * f16_at(bw.as_ptr().add(Q5_D))),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_ps(acc) - hsum_ps128(accm)
}

/// Bits `shift..shift+2` of each byte of `h`, moved to bits 4..6.
#[inline(always)]
unsafe fn q6_high(h: __m256i, m3: __m256i, shift: i32) -> __m256i {
    _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(shift)), m3),
        4,
    )
}

/// The levels `u` (value + 32) of half `k` of a Q6_K super-block `bw`, in the order of
/// [`dot_q6_k`]'s products `4k..4k + 4`.
#[inline(always)]
unsafe fn q6_levels(bw: &[u8], k: usize, m4: __m256i, m3: __m256i) -> [__m256i; 4] {
    let l0 = load(bw.as_ptr().add(Q6_QL + 64 * k));
    let l1 = load(bw.as_ptr().add(Q6_QL + 64 * k + 32));
    let h = load(bw.as_ptr().add(Q6_QH + 32 * k));
    [
        _mm256_or_si256(_mm256_and_si256(l0, m4), q6_high(h, m3, 0)),
        _mm256_or_si256(_mm256_and_si256(l1, m4), q6_high(h, m3, 2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), q6_high(h, m3, 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), q6_high(h, m3, 6)),
    ]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    check_rows(QuantType::Q6_K, n, w, x);
    let mut acc = _mm256_setzero_ps();
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(3);
    for i in 0..n / QK_K {
        let (bw, bx) = (
            &w[Q6_BYTES * i..Q6_BYTES * (i + 1)],
            &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
        );
        let sc = _mm_loadu_si128(bw.as_ptr().add(Q6_SCALES) as *const __m128i);
        let scales = _mm256_broadcastsi128_si256(sc);
        // Levels are stored as u = value + 32 in 0..64: Σ value·y = Σ u·y - 32·Σ y.
        let mut sumi = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(scaled_bsums(bx, _mm256_cvtepi8_epi16(sc)), 5),
        );
        for k in 0..2 {
            let u = q6_levels(bw, k, m4, m3);
            for (m, u) in u.iter().enumerate() {
                let c = 4 * k + m;
                let p = _mm256_maddubs_epi16(*u, load(bx.as_ptr().add(Q8_QS + 32 * c)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, group_scales(scales, c)));
            }
        }
        acc = _mm256_fmadd_ps(
            _mm256_set1_ps(q8k_d(bx) * f16_at(bw.as_ptr().add(Q6_D))),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
    }
    hsum_ps(acc)
}

/// Adds the unpacked rows of Q4_K and Q6_K (`super::UnpackedRows`) to `s`, whose dot products
/// of these formats must be this file's.
pub(super) fn add_unpacked_rows(s: &mut KernelSet) {
    assert!(s.dot(QuantType::Q4_K) as usize == dot_q4_k as super::DotFn as usize);
    assert!(s.dot(QuantType::Q6_K) as usize == dot_q6_k as super::DotFn as usize);
    s[QuantType::Q4_K].unpacked_rows = Some(super::UnpackedRows {
        block_bytes: Q4_K_UNPACKED,
        unpack: unpack_q4_k,
        dot: dot_q4_k_unpacked,
    });
    s[QuantType::Q6_K].unpacked_rows = Some(super::UnpackedRows {
        block_bytes: Q6_K_UNPACKED,
        unpack: unpack_q6_k,
        dot: dot_q6_k_unpacked,
    });
}

/// A Q4_K super-block unpacked: the low and high nibbles of each 32 quant bytes (`k = 0..4`:
/// low at `64k`, high at `64k + 32`), the 8 scales each as 16 i16 lanes (at `256 + 32j`), the
/// 8 mins as i16 (at 512), `d` and `dmin` as f32 (at 528 and 532).
const Q4_K_UNPACKED: usize = 544;

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn unpack_q4_k(n: usize, w: &[u8], out: &mut [u8]) {
    crate::kernels::check_unpack(QuantType::Q4_K, n, 1, w, out.len(), Q4_K_UNPACKED);
    let m4 = _mm256_set1_epi8(0x0F);
    for i in 0..n / QK_K {
        let bw = &w[Q4_BYTES * i..Q4_BYTES * (i + 1)];
        let o = out.as_mut_ptr().add(Q4_K_UNPACKED * i);
        let (sc, mins) = scales_mins_k(&bw[Q4_SCALES..Q4_SCALES + 12]);
        let sc = scale_bytes(sc);
        for k in 0..4 {
            let q = load(bw.as_ptr().add(Q4_QS + 32 * k));
            _mm256_storeu_si256(o.add(64 * k) as *mut __m256i, _mm256_and_si256(q, m4));
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            _mm256_storeu_si256(o.add(64 * k + 32) as *mut __m256i, hi);
        }
        for j in 0..8 {
            _mm256_storeu_si256(o.add(256 + 32 * j) as *mut __m256i, scale_i16(sc, j));
        }
        _mm_storeu_si128(o.add(512) as *mut __m128i, mins);
        (o.add(528) as *mut f32).write_unaligned(f16_at(bw.as_ptr().add(Q4_D)));
        (o.add(532) as *mut f32).write_unaligned(f16_at(bw.as_ptr().add(Q4_DMIN)));
    }
}

/// [`dot_q4_k`] from a row unpacked by [`unpack_q4_k`]: the same operations on the same values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_unpacked(n: usize, u: &[u8], x: &[u8]) -> f32 {
    crate::kernels::check_unpacked_dot(QuantType::Q4_K, n, u, x, Q4_K_UNPACKED);
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm_setzero_ps();
    for i in 0..n / QK_K {
        let (o, bx) = (u.as_ptr().add(Q4_K_UNPACKED * i), &x[Q8_BYTES * i..Q8_BYTES * (i + 1)]);
        let dy = q8k_d(bx);
        let summ = min_bsums(bx, _mm_loadu_si128(o.add(512) as *const __m128i));
        let dmin = (o.add(532) as *const f32).read_unaligned();
        accm = _mm_fmadd_ps(_mm_set1_ps(dy * dmin), _mm_cvtepi32_ps(summ), accm);
        let mut sumi = _mm256_setzero_si256();
        for k in 0..4 {
            let plo = _mm256_maddubs_epi16(load(o.add(64 * k)), load(bx.as_ptr().add(Q8_QS + 64 * k)));
            let phi = _mm256_maddubs_epi16(load(o.add(64 * k + 32)), load(bx.as_ptr().add(Q8_QS + 64 * k + 32)));
            let plo = _mm256_madd_epi16(plo, load(o.add(256 + 64 * k)));
            let phi = _mm256_madd_epi16(phi, load(o.add(256 + 64 * k + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        let d = (o.add(528) as *const f32).read_unaligned();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - hsum_ps128(accm)
}

/// A Q6_K super-block unpacked: the 8 vectors of levels `u` in the order of [`dot_q6_k`]'s
/// products (at `32c`), the group scales of each (at `256 + 32c`), the 16 scales as i16 (at
/// 512), `d` as f32 (at 544).
const Q6_K_UNPACKED: usize = 576;

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn unpack_q6_k(n: usize, w: &[u8], out: &mut [u8]) {
    crate::kernels::check_unpack(QuantType::Q6_K, n, 1, w, out.len(), Q6_K_UNPACKED);
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(3);
    for i in 0..n / QK_K {
        let bw = &w[Q6_BYTES * i..Q6_BYTES * (i + 1)];
        let o = out.as_mut_ptr().add(Q6_K_UNPACKED * i);
        let sc = _mm_loadu_si128(bw.as_ptr().add(Q6_SCALES) as *const __m128i);
        let scales = _mm256_broadcastsi128_si256(sc);
        for k in 0..2 {
            for (m, u) in q6_levels(bw, k, m4, m3).into_iter().enumerate() {
                let c = 4 * k + m;
                _mm256_storeu_si256(o.add(32 * c) as *mut __m256i, u);
                _mm256_storeu_si256(o.add(256 + 32 * c) as *mut __m256i, group_scales(scales, c));
            }
        }
        _mm256_storeu_si256(o.add(512) as *mut __m256i, _mm256_cvtepi8_epi16(sc));
        (o.add(544) as *mut f32).write_unaligned(f16_at(bw.as_ptr().add(Q6_D)));
    }
}

/// [`dot_q6_k`] from a row unpacked by [`unpack_q6_k`]: the same operations on the same values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_unpacked(n: usize, u: &[u8], x: &[u8]) -> f32 {
    crate::kernels::check_unpacked_dot(QuantType::Q6_K, n, u, x, Q6_K_UNPACKED);
    let mut acc = _mm256_setzero_ps();
    for i in 0..n / QK_K {
        let (o, bx) = (u.as_ptr().add(Q6_K_UNPACKED * i), &x[Q8_BYTES * i..Q8_BYTES * (i + 1)]);
        let mut sumi = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_slli_epi32(scaled_bsums(bx, load(o.add(512))), 5),
        );
        for c in 0..8 {
            let p = _mm256_maddubs_epi16(load(o.add(32 * c)), load(bx.as_ptr().add(Q8_QS + 32 * c)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, load(o.add(256 + 32 * c))));
        }
        let d = (o.add(544) as *const f32).read_unaligned();
        acc = _mm256_fmadd_ps(_mm256_set1_ps(q8k_d(bx) * d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Q8_0 [`super::AxpyFn`] on `super::axpy_x4_blocks`; within a pass the rows are added in order,
/// as the scalar kernel does.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_q8_0(
    n: usize,
    w: &[u8],
    row_bytes: usize,
    rows: &[usize],
    coeffs: &[f32],
    y: &mut [f32],
) {
    // SAFETY (the pointers): the driver makes each used block's 34 bytes and the 32 outputs at
    // yb valid.
    let block = |yb: *mut f32, p: [*const u8; 4], cs: &[f32]| {
        let mut acc = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(yb.add(o)));
        for (&blk, &a) in p.iter().zip(cs) {
            let ad = _mm256_set1_ps(a * f16_at(blk));
            for (j, acc) in acc.iter_mut().enumerate() {
                let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk.add(2 + 8 * j) as *const __m128i));
                *acc = _mm256_fmadd_ps(ad, _mm256_cvtepi32_ps(q), *acc);
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(yb.add(8 * j), *acc);
        }
    };
    super::axpy_x4_blocks(QuantType::Q8_0, n, w, row_bytes, rows, coeffs, y, block);
}
