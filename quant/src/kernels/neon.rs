//! NEON dot products, in two sets: "neon" (i8 products by `smull` + pairwise add) and
//! "neon-dotprod" (`sdot`, where the CPU has the dot-product extension). Both are generated
//! from one macro over the i8×i8 → i32x4 primitive. `sdot` is emitted with inline assembly
//! because its intrinsic (`vdotq_s32`) is not yet stable Rust. f16 rows use the scalar
//! kernel (the f16 conversion intrinsics are not stable either).
#![allow(clippy::missing_safety_doc)] // every kernel has the contract of `DotFn` (kernels/mod.rs)

use std::arch::aarch64::*;
use std::arch::asm;

use super::scalar::{q8k_bsum, q8k_d};
use crate::blocks::float::read_u16;
use crate::blocks::kquants::{layout::*, q3_k_scales, scales_mins_k4};
use super::table::KernelSet;
use super::UnpackedRows;
use crate::formats::{QuantType, QK, QK_K};

pub fn kernel_set(dotprod: bool) -> Option<KernelSet> {
    if !std::arch::is_aarch64_feature_detected!("neon") {
        return None;
    }
    use QuantType::*;
    let mut s = KernelSet::scalar();
    if dotprod {
        if !std::arch::is_aarch64_feature_detected!("dotprod") {
            return None;
        }
        s = s.renamed("neon-dotprod");
        s.set_dots(&with_dotprod::DOTS);
        s[Q4_1].dot_with_sums = Some(with_dotprod::dot_q4_1_sums);
        s[Q5_1].dot_with_sums = Some(with_dotprod::dot_q5_1_sums);
        super::neon_il::with_dotprod::add_to(&mut s);
        // smmla tiles where the CPU has the int8 matrix multiply extension.
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            super::neon_gemm::add_to(&mut s);
        }
    } else {
        s = s.renamed("neon");
        s.set_dots(&plain::DOTS);
        s[Q4_1].dot_with_sums = Some(plain::dot_q4_1_sums);
        s[Q5_1].dot_with_sums = Some(plain::dot_q5_1_sums);
        super::neon_il::plain::add_to(&mut s);
    }
    s[Q8_0].axpy = Some(axpy_q8_0);
    let (dot_q4_k, dot_q6_k): (super::DotFn, super::DotFn) = match dotprod {
        true => (with_dotprod::dot_q4_k_unpacked, with_dotprod::dot_q6_k_unpacked),
        false => (plain::dot_q4_k_unpacked, plain::dot_q6_k_unpacked),
    };
    s[Q4_K].unpacked_rows = Some(UnpackedRows { block_bytes: Q4_K_UNPACKED, unpack: unpack_q4_k, dot: dot_q4_k });
    s[Q6_K].unpacked_rows = Some(UnpackedRows { block_bytes: Q6_K_UNPACKED, unpack: unpack_q6_k, dot: dot_q6_k });
    super::neon_f32::add_to(&mut s);
    Some(s)
}

/// The levels of Q4_K sub-blocks `2t` and `2t + 1` of the quants at `qs`: both halves of the
/// low nibbles of 32 bytes, then both halves of their high nibbles.
#[inline(always)]
unsafe fn q4_k_levels(qs: *const u8, t: usize) -> [uint8x16_t; 4] {
    let m4 = vdupq_n_u8(0x0F);
    let (a, b) = (vld1q_u8(qs.add(32 * t)), vld1q_u8(qs.add(32 * t + 16)));
    [vandq_u8(a, m4), vandq_u8(b, m4), vshrq_n_u8::<4>(a), vshrq_n_u8::<4>(b)]
}

/// The levels (value + 32) of Q6_K groups `8k + 2m + part` (`m = 0..4`) of super-block `bw`.
#[inline(always)]
unsafe fn q6_k_levels(bw: &[u8], k: usize, part: usize) -> [uint8x16_t; 4] {
    let (m4, m3) = (vdupq_n_u8(0x0F), vdupq_n_u8(3));
    let at = 16 * part;
    let l0 = vld1q_u8(bw.as_ptr().add(Q6_QL + 64 * k + at));
    let l1 = vld1q_u8(bw.as_ptr().add(Q6_QL + 64 * k + 32 + at));
    let h = vld1q_u8(bw.as_ptr().add(Q6_QH + 32 * k + at));
    let hi = |s: i8| vshlq_n_u8::<4>(vandq_u8(vshlq_u8(h, vdupq_n_s8(-s)), m3));
    [
        vorrq_u8(vandq_u8(l0, m4), hi(0)),
        vorrq_u8(vandq_u8(l1, m4), hi(2)),
        vorrq_u8(vshrq_n_u8::<4>(l0), hi(4)),
        vorrq_u8(vshrq_n_u8::<4>(l1), hi(6)),
    ]
}

/// Σ_j min_j·(bsum_2j + bsum_2j+1) over a Q8_K block's 16 group sums, given the 8 mins as i32
/// lanes (`m_lo`: 0..4, `m_hi`: 4..8); the same i32 as a scalar loop.
#[inline(always)]
unsafe fn mins_sum(bx: &[u8], m_lo: int32x4_t, m_hi: int32x4_t) -> i32 {
    let b = bx[Q8_BSUMS..Q8_BSUMS + 32].as_ptr();
    let s16 = |p: *const u8| vreinterpretq_s16_u8(vld1q_u8(p));
    let (pairs_lo, pairs_hi) = (vpaddlq_s16(s16(b)), vpaddlq_s16(s16(b.add(16))));
    vaddvq_s32(vmlaq_s32(vmulq_s32(pairs_lo, m_lo), pairs_hi, m_hi))
}

/// A Q4_K super-block unpacked: the levels of sub-block `j` as i8 (at `32j`), the 8 scales and
/// the 8 mins as i32 (at 256 and 288), `d` and `dmin` as f32 (at 320 and 324).
const Q4_K_UNPACKED: usize = 336;

#[target_feature(enable = "neon")]
pub unsafe fn unpack_q4_k(n: usize, w: &[u8], out: &mut [u8]) {
    crate::kernels::check_unpack(QuantType::Q4_K, n, 1, w, out.len(), Q4_K_UNPACKED);
    for i in 0..n / QK_K {
        let bw = &w[Q4_BYTES * i..Q4_BYTES * (i + 1)];
        let o = out.as_mut_ptr().add(Q4_K_UNPACKED * i);
        let (sc, mins) = scales_mins_k4(bw[4..16].try_into().expect("12 bytes"));
        for t in 0..4 {
            // Sub-block 2t + h's two halves at 32 (2t + h).
            for (k, l) in q4_k_levels(bw.as_ptr().add(Q4_QS), t).into_iter().enumerate() {
                vst1q_u8(o.add(64 * t + 32 * (k / 2) + 16 * (k % 2)), l);
            }
        }
        for j in 0..8 {
            (o.add(256 + 4 * j) as *mut i32).write_unaligned(sc[j] as i32);
            (o.add(288 + 4 * j) as *mut i32).write_unaligned(mins[j] as i32);
        }
        (o.add(320) as *mut f32).write_unaligned(read_f16(bw, Q4_D));
        (o.add(324) as *mut f32).write_unaligned(read_f16(bw, Q4_DMIN));
    }
}

/// A Q6_K super-block unpacked: the signed levels of group `g` of 16 (at `16g`), the 16 scales
/// as i32 (at 256), `d` as f32 (at 320).
const Q6_K_UNPACKED: usize = 336;

#[target_feature(enable = "neon")]
pub unsafe fn unpack_q6_k(n: usize, w: &[u8], out: &mut [u8]) {
    crate::kernels::check_unpack(QuantType::Q6_K, n, 1, w, out.len(), Q6_K_UNPACKED);
    let s32 = vdupq_n_s8(32);
    for i in 0..n / QK_K {
        let bw = &w[Q6_BYTES * i..Q6_BYTES * (i + 1)];
        let o = out.as_mut_ptr().add(Q6_K_UNPACKED * i);
        for k in 0..2 {
            for part in 0..2 {
                for (m, u) in q6_k_levels(bw, k, part).into_iter().enumerate() {
                    let g = 8 * k + 2 * m + part;
                    vst1q_s8(o.add(16 * g) as *mut i8, vsubq_s8(vreinterpretq_s8_u8(u), s32));
                }
            }
        }
        for g in 0..16 {
            (o.add(256 + 4 * g) as *mut i32).write_unaligned((bw[Q6_SCALES + g] as i8) as i32);
        }
        (o.add(320) as *mut f32).write_unaligned(read_f16(bw, Q6_D));
    }
}

/// The f16 at byte `i` of `b` as f32, by `fcvt`: the value of `blocks::float::read_f16`, whose
/// run-time dispatch of the conversion costs a call (and the registers it clobbers) per scale.
#[inline(always)]
fn read_f16(b: &[u8], i: usize) -> f32 {
    let h = read_u16(b, i) as i16;
    let v: f32;
    // SAFETY: a register-only conversion, base AArch64 floating point; exact for every finite,
    // infinite or subnormal f16.
    unsafe { asm!("fcvt {0:s}, {1:h}", out(vreg) v, in(vreg) h, options(pure, nomem, nostack)) };
    v
}

/// Panics unless both rows hold `n` elements (once per row; keeps the loads in bounds).
#[inline(always)]
fn check_rows(ty: QuantType, n: usize, w: &[u8], x: &[u8]) {
    assert!(
        n % ty.block_size() == 0
            && w.len() >= n / ty.block_size() * ty.type_size()
            && x.len() >= n / ty.block_size() * ty.vec_dot_type().type_size(),
        "{ty} dot: rows too short for {n} values"
    );
}

/// acc + Σ of groups of four i8·i8 products (plain NEON).
#[inline(always)]
unsafe fn dot_s8_plain(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// acc + Σ of groups of four i8·i8 products (one `sdot`; only inside dotprod functions).
#[inline(always)]
unsafe fn dot_s8_sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction; callers are compiled with the dotprod feature and
    // only dispatched when the CPU has it.
    asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b,
         options(pure, nomem, nostack));
    acc
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> int8x16_t {
    vld1q_s8(p as *const i8)
}

/// The 16 bytes 0xFF/0x00 of bits `16*half .. 16*half+16` of `qh`.
#[inline(always)]
unsafe fn bits_16(qh: u32, half: u32) -> uint8x16_t {
    let b0 = vdup_n_u8((qh >> (16 * half)) as u8);
    let b1 = vdup_n_u8((qh >> (16 * half + 8)) as u8);
    let mask = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
    vtstq_u8(vcombine_u8(b0, b1), mask)
}

macro_rules! neon_kernels {
    ($modname:ident, $tf:literal, $dot:path) => {
        pub mod $modname {
            use super::*;

            /// The set's single-row dot products (f16 keeps the scalar one).
            pub const DOTS: [(QuantType, crate::kernels::DotFn); 13] = [
                (QuantType::F32, dot_f32),
                (QuantType::BF16, dot_bf16),
                (QuantType::Q4_0, dot_q4_0),
                (QuantType::Q4_1, dot_q4_1),
                (QuantType::Q5_0, dot_q5_0),
                (QuantType::Q5_1, dot_q5_1),
                (QuantType::Q8_0, dot_q8_0),
                (QuantType::Q2_K, dot_q2_k),
                (QuantType::Q3_K, dot_q3_k),
                (QuantType::Q4_K, dot_q4_k),
                (QuantType::Q5_K, dot_q5_k),
                (QuantType::Q6_K, dot_q6_k),
                (QuantType::Q8_K, dot_q8_k),
            ];

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::F32, n, w, x);
                let (wp, xp) = (w.as_ptr() as *const f32, x.as_ptr() as *const f32);
                let mut acc = [vdupq_n_f32(0.0); 4];
                let mut i = 0;
                while i + 16 <= n {
                    for k in 0..4 {
                        acc[k] = vfmaq_f32(
                            acc[k],
                            vld1q_f32(wp.add(i + 4 * k)),
                            vld1q_f32(xp.add(i + 4 * k)),
                        );
                    }
                    i += 16;
                }
                let mut sum = vaddvq_f32(vaddq_f32(
                    vaddq_f32(acc[0], acc[1]),
                    vaddq_f32(acc[2], acc[3]),
                ));
                while i < n {
                    sum += *wp.add(i) * *xp.add(i);
                    i += 1;
                }
                sum
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::BF16, n, w, x);
                let (wp, xp) = (w.as_ptr() as *const u16, x.as_ptr() as *const u16);
                let mut acc = [vdupq_n_f32(0.0); 2];
                let mut i = 0;
                while i + 8 <= n {
                    let a = vld1q_u16(wp.add(i));
                    let b = vld1q_u16(xp.add(i));
                    let (alo, ahi) = (
                        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(a))),
                        vreinterpretq_f32_u32(vshll_high_n_u16::<16>(a)),
                    );
                    let (blo, bhi) = (
                        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(b))),
                        vreinterpretq_f32_u32(vshll_high_n_u16::<16>(b)),
                    );
                    acc[0] = vfmaq_f32(acc[0], alo, blo);
                    acc[1] = vfmaq_f32(acc[1], ahi, bhi);
                    i += 8;
                }
                let mut sum = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
                while i < n {
                    sum += crate::blocks::float::bf16_to_f32(*wp.add(i))
                        * crate::blocks::float::bf16_to_f32(*xp.add(i));
                    i += 1;
                }
                sum
            }

            /// Symmetric legacy block: levels (i8, centred) for both 16-lane halves.
            #[inline(always)]
            unsafe fn legacy_sum(lo: int8x16_t, hi: int8x16_t, y: *const u8) -> i32 {
                let acc = $dot(vdupq_n_s32(0), lo, ld(y));
                vaddvq_s32($dot(acc, hi, ld(y.add(16))))
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q4_0, n, w, x);
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let m4 = vdupq_n_u8(0x0F);
                let s8 = vdupq_n_s8(8);
                let mut acc = vdupq_n_f32(0.0);
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(18 * i), xp.add(34 * i));
                    let q = vld1q_u8(bw.add(2));
                    let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), s8);
                    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)), s8);
                    let p = $dot($dot(vdupq_n_s32(0), lo, ld(bx.add(2))), hi, ld(bx.add(18)));
                    let d = read_f16(w, 18 * i) * read_f16(x, 34 * i);
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
                }
                vaddvq_f32(acc)
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q4_1, n, w, x);
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let m4 = vdupq_n_u8(0x0F);
                let mut sum = 0.0f32;
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(20 * i), xp.add(34 * i));
                    let q = vld1q_u8(bw.add(4));
                    let lo = vreinterpretq_s8_u8(vandq_u8(q, m4));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
                    let sumi = legacy_sum(lo, hi, bx.add(2));
                    let sumy = vaddlvq_s8(ld(bx.add(2))) as i32 + vaddlvq_s8(ld(bx.add(18))) as i32;
                    let dx = read_f16(x, 34 * i);
                    sum += sumi as f32 * (read_f16(w, 20 * i) * dx)
                        + read_f16(w, 20 * i + 2) * (sumy as f32 * dx);
                }
                sum
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q5_0, n, w, x);
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let m4 = vdupq_n_u8(0x0F);
                let m16 = vdupq_n_u8(0x10);
                let s16 = vdupq_n_s8(16);
                let mut sum = 0.0f32;
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(22 * i), xp.add(34 * i));
                    let qh = u32::from_le_bytes([*bw.add(2), *bw.add(3), *bw.add(4), *bw.add(5)]);
                    let q = vld1q_u8(bw.add(6));
                    let lo = vorrq_u8(vandq_u8(q, m4), vandq_u8(bits_16(qh, 0), m16));
                    let hi = vorrq_u8(vshrq_n_u8::<4>(q), vandq_u8(bits_16(qh, 1), m16));
                    let lo = vsubq_s8(vreinterpretq_s8_u8(lo), s16);
                    let hi = vsubq_s8(vreinterpretq_s8_u8(hi), s16);
                    sum += legacy_sum(lo, hi, bx.add(2)) as f32
                        * (read_f16(w, 22 * i) * read_f16(x, 34 * i));
                }
                sum
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q5_1, n, w, x);
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let m4 = vdupq_n_u8(0x0F);
                let m16 = vdupq_n_u8(0x10);
                let mut sum = 0.0f32;
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(24 * i), xp.add(34 * i));
                    let qh = u32::from_le_bytes([*bw.add(4), *bw.add(5), *bw.add(6), *bw.add(7)]);
                    let q = vld1q_u8(bw.add(8));
                    let lo = vreinterpretq_s8_u8(vorrq_u8(
                        vandq_u8(q, m4),
                        vandq_u8(bits_16(qh, 0), m16),
                    ));
                    let hi = vreinterpretq_s8_u8(vorrq_u8(
                        vshrq_n_u8::<4>(q),
                        vandq_u8(bits_16(qh, 1), m16),
                    ));
                    let sumi = legacy_sum(lo, hi, bx.add(2));
                    let sumy = vaddlvq_s8(ld(bx.add(2))) as i32 + vaddlvq_s8(ld(bx.add(18))) as i32;
                    let dx = read_f16(x, 34 * i);
                    sum += sumi as f32 * (read_f16(w, 24 * i) * dx)
                        + read_f16(w, 24 * i + 2) * (sumy as f32 * dx);
                }
                sum
            }

            /// Q4_1 with precomputed activation block sums (see `DotSumsFn`).
            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q4_1_sums(n: usize, w: &[u8], x: &[u8], sums: &[f32]) -> f32 {
                check_rows(QuantType::Q4_1, n, w, x);
                assert!(
                    sums.len() >= n / QK,
                    "q4_1 dot: {} block sums for {n} values",
                    sums.len()
                );
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let m4 = vdupq_n_u8(0x0F);
                let (mut acc, mut summ) = (vdupq_n_f32(0.0), 0.0f32);
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(20 * i), xp.add(34 * i));
                    let q = vld1q_u8(bw.add(4));
                    let lo = vreinterpretq_s8_u8(vandq_u8(q, m4));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
                    let p = $dot($dot(vdupq_n_s32(0), lo, ld(bx.add(2))), hi, ld(bx.add(18)));
                    acc = vfmaq_n_f32(
                        acc,
                        vcvtq_f32_s32(p),
                        read_f16(w, 20 * i) * read_f16(x, 34 * i),
                    );
                    summ += read_f16(w, 20 * i + 2) * *sums.get_unchecked(i);
                }
                vaddvq_f32(acc) + summ
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
                let m4 = vdupq_n_u8(0x0F);
                let m16 = vdupq_n_u8(0x10);
                let (mut acc, mut summ) = (vdupq_n_f32(0.0), 0.0f32);
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(24 * i), xp.add(34 * i));
                    let qh = u32::from_le_bytes([*bw.add(4), *bw.add(5), *bw.add(6), *bw.add(7)]);
                    let q = vld1q_u8(bw.add(8));
                    let lo = vreinterpretq_s8_u8(vorrq_u8(
                        vandq_u8(q, m4),
                        vandq_u8(bits_16(qh, 0), m16),
                    ));
                    let hi = vreinterpretq_s8_u8(vorrq_u8(
                        vshrq_n_u8::<4>(q),
                        vandq_u8(bits_16(qh, 1), m16),
                    ));
                    let p = $dot($dot(vdupq_n_s32(0), lo, ld(bx.add(2))), hi, ld(bx.add(18)));
                    acc = vfmaq_n_f32(
                        acc,
                        vcvtq_f32_s32(p),
                        read_f16(w, 24 * i) * read_f16(x, 34 * i),
                    );
                    summ += read_f16(w, 24 * i + 2) * *sums.get_unchecked(i);
                }
                vaddvq_f32(acc) + summ
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q8_0, n, w, x);
                let (wp, xp) = (w.as_ptr(), x.as_ptr());
                let mut acc = vdupq_n_f32(0.0);
                for i in 0..n / QK {
                    let (bw, bx) = (wp.add(34 * i), xp.add(34 * i));
                    let p = $dot(
                        $dot(vdupq_n_s32(0), ld(bw.add(2)), ld(bx.add(2))),
                        ld(bw.add(18)),
                        ld(bx.add(18)),
                    );
                    let d = read_f16(w, 34 * i) * read_f16(x, 34 * i);
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), d);
                }
                vaddvq_f32(acc)
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q8_K, n, w, x);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (bw, bx) = (
                        &w[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                        &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                    );
                    let mut acc = vdupq_n_s32(0);
                    for k in 0..16 {
                        acc = $dot(
                            acc,
                            ld(bw.as_ptr().add(Q8_QS + 16 * k)),
                            ld(bx.as_ptr().add(Q8_QS + 16 * k)),
                        );
                    }
                    sum += q8k_d(bw) * q8k_d(bx) * vaddvq_s32(acc) as f32;
                }
                sum
            }

            /// Σ q·y over the 16 elements of group `g` of a Q8_K block.
            #[inline(always)]
            unsafe fn group(q: int8x16_t, bx: &[u8], g: usize) -> i32 {
                vaddvq_s32($dot(vdupq_n_s32(0), q, ld(bx.as_ptr().add(Q8_QS + 16 * g))))
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q2_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q2_K, n, w, x);
                let m3 = vdupq_n_u8(3);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (bw, bx) = (
                        &w[Q2_BYTES * i..Q2_BYTES * (i + 1)],
                        &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                    );
                    let sc = &bw[Q2_SCALES..Q2_SCALES + 16];
                    let mut summs = 0i32;
                    for g in 0..16 {
                        summs += (sc[g] >> 4) as i32 * q8k_bsum(bx, g);
                    }
                    let mut isum = 0i32;
                    for half in 0..2 {
                        let q = [
                            vld1q_u8(bw.as_ptr().add(Q2_QS + 32 * half)),
                            vld1q_u8(bw.as_ptr().add(Q2_QS + 32 * half + 16)),
                        ];
                        for s in 0..4 {
                            let shift = vdupq_n_s8(-(2 * s as i8));
                            for part in 0..2 {
                                let g = 8 * half + 2 * s + part;
                                let u = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q[part], shift), m3));
                                isum += (sc[g] & 0xF) as i32 * group(u, bx, g);
                            }
                        }
                    }
                    let dy = q8k_d(bx);
                    sum += dy * read_f16(bw, Q2_D) * isum as f32
                        - dy * read_f16(bw, Q2_DMIN) * summs as f32;
                }
                sum
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q3_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q3_K, n, w, x);
                let m3 = vdupq_n_u8(3);
                let m1 = vdupq_n_u8(1);
                let s4 = vdupq_n_s8(4);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (bw, bx) = (
                        &w[Q3_BYTES * i..Q3_BYTES * (i + 1)],
                        &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                    );
                    let sc = q3_k_scales(&bw[Q3_SCALES..Q3_SCALES + 12]);
                    let hm = [
                        vld1q_u8(bw.as_ptr().add(Q3_HMASK)),
                        vld1q_u8(bw.as_ptr().add(Q3_HMASK + 16)),
                    ];
                    // Each group's two low bits and high bit by shifting the bytes on by 2 and
                    // by 1 from group to group (constant shifts, as ggml's).
                    let mut isum = 0i32;
                    for half in 0..2 {
                        for part in 0..2 {
                            let mut qv = vld1q_u8(bw.as_ptr().add(Q3_QS + 32 * half + 16 * part));
                            let mut hv = match half {
                                0 => hm[part],
                                _ => vshrq_n_u8::<4>(hm[part]),
                            };
                            for s in 0..4 {
                                let g = 8 * half + 2 * s + part;
                                let low = vandq_u8(qv, m3);
                                let hb = vandq_u8(hv, m1);
                                let v = vsubq_s8(
                                    vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8::<2>(hb))),
                                    s4,
                                );
                                isum += sc[g] as i32 * group(v, bx, g);
                                (qv, hv) = (vshrq_n_u8::<2>(qv), vshrq_n_u8::<1>(hv));
                            }
                        }
                    }
                    sum += q8k_d(bx) * read_f16(bw, Q3_D) * isum as f32;
                }
                sum
            }

            /// Q4_K/Q5_K: Σ_j scale_j·Σ q·y and Σ_j min_j·bsums, given the levels of each pair of
            /// sub-blocks `2t`, `2t + 1` (both halves of each). The scales decoded at once and
            /// the mins' sum in vectors: the same integers.
            #[inline(always)]
            unsafe fn scale_min_sums(
                bw: &[u8],
                bx: &[u8],
                levels: impl Fn(usize) -> [int8x16_t; 4],
            ) -> (i32, i32) {
                let (sc, mins) = scales_mins_k4(bw[4..16].try_into().expect("12 bytes"));
                let m = vmovl_u8(vld1_u8(mins.as_ptr()));
                let summ = mins_sum(
                    bx,
                    vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m))),
                    vreinterpretq_s32_u32(vmovl_high_u16(m)),
                );
                let mut isum = 0i32;
                for t in 0..4 {
                    let l = levels(t);
                    for h in 0..2 {
                        let j = 2 * t + h;
                        let p = $dot(
                            $dot(vdupq_n_s32(0), l[2 * h], ld(bx.as_ptr().add(Q8_QS + 32 * j))),
                            l[2 * h + 1],
                            ld(bx.as_ptr().add(Q8_QS + 32 * j + 16)),
                        );
                        isum += sc[j] as i32 * vaddvq_s32(p);
                    }
                }
                (isum, summ)
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q4_K, n, w, x);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (bw, bx) = (
                        &w[Q4_BYTES * i..Q4_BYTES * (i + 1)],
                        &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                    );
                    let qs = bw.as_ptr().add(Q4_QS);
                    let (isum, summ) =
                        scale_min_sums(bw, bx, |t| q4_k_levels(qs, t).map(|v| vreinterpretq_s8_u8(v)));
                    let dy = q8k_d(bx);
                    sum += dy * read_f16(bw, Q4_D) * isum as f32
                        - dy * read_f16(bw, Q4_DMIN) * summ as f32;
                }
                sum
            }

            /// [`dot_q4_k`] from a row unpacked by `unpack_q4_k`: the same sums of the same
            /// values (the integer ones exact in any order).
            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q4_k_unpacked(n: usize, u: &[u8], x: &[u8]) -> f32 {
                crate::kernels::check_unpacked_dot(QuantType::Q4_K, n, u, x, Q4_K_UNPACKED);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (o, bx) = (u.as_ptr().add(Q4_K_UNPACKED * i), &x[Q8_BYTES * i..Q8_BYTES * (i + 1)]);
                    let mins = |at: usize| vreinterpretq_s32_u8(vld1q_u8(o.add(at)));
                    let summ = mins_sum(bx, mins(288), mins(304));
                    let mut isum = 0i32;
                    for j in 0..8 {
                        let p = $dot(
                            $dot(vdupq_n_s32(0), ld(o.add(32 * j)), ld(bx.as_ptr().add(Q8_QS + 32 * j))),
                            ld(o.add(32 * j + 16)),
                            ld(bx.as_ptr().add(Q8_QS + 32 * j + 16)),
                        );
                        isum += (o.add(256 + 4 * j) as *const i32).read_unaligned() * vaddvq_s32(p);
                    }
                    let dy = q8k_d(bx);
                    let d = (o.add(320) as *const f32).read_unaligned();
                    let dmin = (o.add(324) as *const f32).read_unaligned();
                    sum += dy * d * isum as f32 - dy * dmin * summ as f32;
                }
                sum
            }

            /// [`dot_q6_k`] from a row unpacked by `unpack_q6_k`, as `dot_q4_k_unpacked`.
            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q6_k_unpacked(n: usize, u: &[u8], x: &[u8]) -> f32 {
                crate::kernels::check_unpacked_dot(QuantType::Q6_K, n, u, x, Q6_K_UNPACKED);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (o, bx) = (u.as_ptr().add(Q6_K_UNPACKED * i), &x[Q8_BYTES * i..Q8_BYTES * (i + 1)]);
                    let mut isum = 0i32;
                    for g in 0..16 {
                        let sc = (o.add(256 + 4 * g) as *const i32).read_unaligned();
                        isum += sc * group(ld(o.add(16 * g)), bx, g);
                    }
                    let d = (o.add(320) as *const f32).read_unaligned();
                    sum += q8k_d(bx) * d * isum as f32;
                }
                sum
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q5_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q5_K, n, w, x);
                let m4 = vdupq_n_u8(0x0F);
                let (m1, m2) = (vdupq_n_u8(1), vdupq_n_u8(2));
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (bw, bx) = (
                        &w[Q5_BYTES * i..Q5_BYTES * (i + 1)],
                        &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                    );
                    let qs = bw.as_ptr().add(Q5_QS);
                    let qh = [
                        vld1q_u8(bw.as_ptr().add(Q5_QH)),
                        vld1q_u8(bw.as_ptr().add(Q5_QH + 16)),
                    ];
                    let (isum, summ) = scale_min_sums(bw, bx, |t| {
                        let (a, b) = (vld1q_u8(qs.add(32 * t)), vld1q_u8(qs.add(32 * t + 16)));
                        // Bits 2t and 2t + 1 of the high bytes to bit 4 (as 16): the fifth bits
                        // of sub-blocks 2t and 2t + 1.
                        let shift = vdupq_n_s8(-(2 * t as i8));
                        let (sa, sb) = (vshlq_u8(qh[0], shift), vshlq_u8(qh[1], shift));
                        [
                            vorrq_u8(vandq_u8(a, m4), vshlq_n_u8::<4>(vandq_u8(sa, m1))),
                            vorrq_u8(vandq_u8(b, m4), vshlq_n_u8::<4>(vandq_u8(sb, m1))),
                            vorrq_u8(vshrq_n_u8::<4>(a), vshlq_n_u8::<3>(vandq_u8(sa, m2))),
                            vorrq_u8(vshrq_n_u8::<4>(b), vshlq_n_u8::<3>(vandq_u8(sb, m2))),
                        ]
                        .map(|v| vreinterpretq_s8_u8(v))
                    });
                    let dy = q8k_d(bx);
                    sum += dy * read_f16(bw, Q5_D) * isum as f32
                        - dy * read_f16(bw, Q5_DMIN) * summ as f32;
                }
                sum
            }

            #[target_feature(enable = $tf)]
            pub unsafe fn dot_q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
                check_rows(QuantType::Q6_K, n, w, x);
                let s32 = vdupq_n_s8(32);
                let mut sum = 0.0f32;
                for i in 0..n / QK_K {
                    let (bw, bx) = (
                        &w[Q6_BYTES * i..Q6_BYTES * (i + 1)],
                        &x[Q8_BYTES * i..Q8_BYTES * (i + 1)],
                    );
                    let mut isum = 0i32;
                    for k in 0..2 {
                        for part in 0..2 {
                            for (m, u) in q6_k_levels(bw, k, part).iter().enumerate() {
                                let g = 8 * k + 2 * m + part;
                                let v = vsubq_s8(vreinterpretq_s8_u8(*u), s32);
                                isum += (bw[Q6_SCALES + g] as i8) as i32 * group(v, bx, g);
                            }
                        }
                    }
                    sum += q8k_d(bx) * read_f16(bw, Q6_D) * isum as f32;
                }
                sum
            }
        }
    };
}

neon_kernels!(plain, "neon", dot_s8_plain);
neon_kernels!(with_dotprod, "neon,dotprod", dot_s8_sdot);

/// Q8_0 [`super::AxpyFn`] on [`super::axpy_x4_blocks`], rows added in order.
#[target_feature(enable = "neon")]
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
        let mut acc = [0, 4, 8, 12, 16, 20, 24, 28].map(|o| vld1q_f32(yb.add(o)));
        for (&blk, &a) in p.iter().zip(cs) {
            let ad = vdupq_n_f32(a * read_f16(std::slice::from_raw_parts(blk, 2), 0));
            for h in 0..2 {
                let q = ld(blk.add(2 + 16 * h));
                let wide = [vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q)];
                for (k, q16) in wide.iter().enumerate() {
                    let q32 = [vmovl_s16(vget_low_s16(*q16)), vmovl_high_s16(*q16)];
                    for (m, q32) in q32.iter().enumerate() {
                        let i = 4 * h + 2 * k + m;
                        acc[i] = vfmaq_f32(acc[i], vcvtq_f32_s32(*q32), ad);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            vst1q_f32(yb.add(4 * i), *acc);
        }
    };
    super::axpy_x4_blocks(QuantType::Q8_0, n, w, row_bytes, rows, coeffs, y, block);
}
