//! Matrix-vector kernels of the NEON sets over weights **interleaved in groups of 16 rows**
//! (`kernels::Interleaved16`). A 128-bit register holds four rows' four weights that one i32
//! lane of the single-row kernel sums, so one i8 dot product against a broadcast activation
//! quad (`sdot`, or `smull` + pairwise adds on plain NEON) gives four rows' partial sums, and
//! one FMA scales and accumulates four rows at once.
//!
//! Each row's result is **bit-identical** to the same set's single-row kernel (`neon.rs`): lane
//! `r` of accumulator `[q][l]` holds what that kernel's lane `l` holds for row `4q + r`: the
//! integer sum of the same eight products, converted and added by the same FMA with the same
//! `d_w · d_x`, and the final sum adds the lanes as its `vaddvq_f32`, ((l0 + l1) + (l2 + l3)).
//! Which elements an i32 lane sums differs between the sets (`sdot`: quads `l` and `l + 4`;
//! `smull` + `sadalp`: elements `2l, 2l+1, 8+2l, 9+2l` of each half), so the plain set packs
//! the rows in `interleave::PAIR_ORDER` and permutes the activations alike; its lanes then sum
//! quads too. The integer sums are exact, so only which products meet in a lane matters.
//! The weighted row sums (`axpy16`) follow `scalar::axpy16_q8_0_quantized` exactly.
#![allow(clippy::missing_safety_doc)] // the contracts of `Interleaved16` / `InterleavedAxpy16`

use std::arch::aarch64::*;
use std::arch::asm;

use super::interleave::{
    pack_q4_0, pack_q4_0_pairs, pack_q4_1, pack_q4_1_pairs, pack_q5_0, pack_q5_0_pairs, pack_q8_0_axpy_signed,
    pack_q8_0_signed, pack_q8_0_signed_pairs, PAIR_ORDER,
};
use super::scalar::axpy_coeff_scale;
use super::table::KernelSet;
use super::{prefetch_group_ahead, Interleaved16, InterleavedAxpy16, Unpacked16};
use crate::formats::{QuantType, QK};

/// `acc` + per i32 lane the sums of the four i8·i8 products of lane-quads `a1·b1` and `a2·b2`
/// (two `sdot`; only inside dotprod functions).
#[inline(always)]
unsafe fn quads2_sdot(acc: int32x4_t, a1: int8x16_t, b1: int8x16_t, a2: int8x16_t, b2: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instructions; callers are compiled with the dotprod feature and
    // only dispatched when the CPU has it.
    asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
         "sdot {0:v}.4s, {3:v}.16b, {4:v}.16b",
         inout(vreg) acc, in(vreg) a1, in(vreg) b1, in(vreg) a2, in(vreg) b2,
         options(pure, nomem, nostack));
    acc
}

/// [`quads2_sdot`] on plain NEON: widening products, then pairwise widening adds (exact for
/// any bytes, as the single-row kernel's `sadalp`).
#[inline(always)]
unsafe fn quads2_plain(acc: int32x4_t, a1: int8x16_t, b1: int8x16_t, a2: int8x16_t, b2: int8x16_t) -> int32x4_t {
    let lo = vpadalq_s16(
        vpaddlq_s16(vmull_s8(vget_low_s8(a1), vget_low_s8(b1))),
        vmull_s8(vget_low_s8(a2), vget_low_s8(b2)),
    );
    let hi = vpadalq_s16(vpaddlq_s16(vmull_high_s8(a1, b1)), vmull_high_s8(a2, b2));
    vaddq_s32(acc, vpaddq_s32(lo, hi))
}

/// The 32 activation quants of the block at `bx`, as the `sdot` kernels sum them.
#[inline(always)]
unsafe fn acts_sdot(bx: *const u8) -> [int8x16_t; 2] {
    [ld(bx.add(2)), ld(bx.add(18))]
}

/// The 32 activation quants of the block at `bx`, each half in `PAIR_ORDER`.
#[inline(always)]
unsafe fn acts_pairs(bx: *const u8) -> [int8x16_t; 2] {
    let order = vld1q_u8(PAIR_ORDER.as_ptr());
    [vqtbl1q_s8(ld(bx.add(2)), order), vqtbl1q_s8(ld(bx.add(18)), order)]
}

#[inline(always)]
unsafe fn ld(p: *const u8) -> int8x16_t {
    vld1q_s8(p as *const i8)
}

/// Quad `l` (0..8) of the 32 activations `y` in every i32 lane.
#[inline(always)]
unsafe fn quad(y: &[int8x16_t; 2], l: usize) -> int8x16_t {
    let v = vreinterpretq_s32_s8(y[l / 4]);
    vreinterpretq_s8_s32(match l % 4 {
        0 => vdupq_laneq_s32::<0>(v),
        1 => vdupq_laneq_s32::<1>(v),
        2 => vdupq_laneq_s32::<2>(v),
        _ => vdupq_laneq_s32::<3>(v),
    })
}

/// The 16 f16 values at `p` as four f32 vectors (rows 4q..4q+4 in vector q).
#[inline(always)]
unsafe fn f16x16(p: *const u8) -> [float32x4_t; 4] {
    let (h0, h1) = (vld1q_u8(p), vld1q_u8(p.add(16)));
    let (a, b, c, d): (float32x4_t, float32x4_t, float32x4_t, float32x4_t);
    // SAFETY: register-only conversions (half-precision `fcvtl` is base AArch64 SIMD); exact
    // for every finite, infinite or subnormal f16, as `f16_to_f32`.
    asm!("fcvtl {a:v}.4s, {h0:v}.4h",
         "fcvtl2 {b:v}.4s, {h0:v}.8h",
         "fcvtl {c:v}.4s, {h1:v}.4h",
         "fcvtl2 {d:v}.4s, {h1:v}.8h",
         h0 = in(vreg) h0, h1 = in(vreg) h1,
         a = out(vreg) a, b = out(vreg) b, c = out(vreg) c, d = out(vreg) d,
         options(pure, nomem, nostack));
    [a, b, c, d]
}

/// The f16 at `p` (the activation block's scale) as f32 in every lane. `fcvtl` rather than
/// `f16_to_f32`, whose run-time dispatch is a call that spills every accumulator.
#[inline(always)]
unsafe fn f16_bcast(p: *const u8) -> float32x4_t {
    let h = vdup_n_u16(u16::from_le_bytes([*p, *p.add(1)]));
    let v: float32x4_t;
    // SAFETY: a register-only conversion, as in `f16x16`.
    asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = out(vreg) v,
         options(pure, nomem, nostack));
    v
}

/// Each row's `d_w · d_x`, as the single-row kernels round it.
#[inline(always)]
unsafe fn times(dw: [float32x4_t; 4], dx: float32x4_t) -> [float32x4_t; 4] {
    [
        vmulq_f32(dw[0], dx),
        vmulq_f32(dw[1], dx),
        vmulq_f32(dw[2], dx),
        vmulq_f32(dw[3], dx),
    ]
}

/// The final sums of rows 4q..4q+4 into `out`: ((l0 + l1) + (l2 + l3)) per row, as the
/// single-row kernels' `vaddvq_f32` (`faddp`, `faddp`), plus `summ` where given.
#[inline(always)]
unsafe fn reduce(acc: &[[float32x4_t; 4]; 4], summ: Option<&[float32x4_t; 4]>, out: &mut [f32; 16]) {
    for (q, a) in acc.iter().enumerate() {
        let mut s = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
        if let Some(m) = summ {
            s = vaddq_f32(s, m[q]);
        }
        vst1q_f32(out.as_mut_ptr().add(4 * q), s);
    }
}

#[inline(always)]
fn check(ty: QuantType, cols: usize, group: &[u8], x: &[u8]) {
    let nb = cols / QK;
    assert!(
        cols % QK == 0 && group.len() >= 16 * nb * ty.type_size() && x.len() >= nb * 34,
        "{ty} interleaved dot: group or vector too short for {cols} values"
    );
}

/// The high bits of a Q5_0 group block (`pack_q5_0`: at `p`, per quad `l` and half `h` of the
/// rows one u32, whose bits `16 (q % 2)..` belong to rows `4q..4q + 4`), as four vectors: u16
/// lane `l` of vector `q` holds the bits of quad `l` of rows `4q..4q + 4` (bit `4r + k`: element
/// `4l + k` of row `4q + r`). They are the u16 at `4l + q`, so two rounds of `uzp` sort them.
#[inline(always)]
unsafe fn high_bits(p: *const u8) -> [uint8x16_t; 4] {
    let r = [0, 16, 32, 48].map(|o| vreinterpretq_u16_u8(vld1q_u8(p.add(o))));
    let (a, b) = (vuzp1q_u16(r[0], r[1]), vuzp2q_u16(r[0], r[1]));
    let (c, d) = (vuzp1q_u16(r[2], r[3]), vuzp2q_u16(r[2], r[3]));
    [vuzp1q_u16(a, c), vuzp1q_u16(b, d), vuzp2q_u16(a, c), vuzp2q_u16(b, d)].map(|v| vreinterpretq_u8_u16(v))
}

/// `tbl` indices that spread u16 lane `l` of a vector over 16 bytes: its low byte to bytes
/// 0..8, its high byte to bytes 8..16 (then byte `j` tests bit `j % 8`, i.e. bit `j` of the u16).
static SPREAD: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut l = 0;
    while l < 8 {
        let mut j = 0;
        while j < 16 {
            t[l][j] = (2 * l + j / 8) as u8;
            j += 1;
        }
        l += 1;
    }
    t
};

/// The 16 bytes 0xFF/0x00 of bits `16 * half .. 16 * half + 16` of `bits`.
#[inline(always)]
pub(super) unsafe fn bits_16(bits: u32, half: usize) -> uint8x16_t {
    let b0 = vdup_n_u8((bits >> (16 * half)) as u8);
    let b1 = vdup_n_u8((bits >> (16 * half + 8)) as u8);
    let mask = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
    vtstq_u8(vcombine_u8(b0, b1), mask)
}

/// Bytes of a Q4_0 or Q5_0 group block unpacked for many vectors (`Unpacked16`): per quad `l`
/// (0..4) and row quad `q` the signed levels of quads `l` and `l + 4` as the kernels form them
/// (16 bytes each, at `32 (4l + q)`), then the rows' `d` as f32 (at 512).
const UNPACKED_BLOCK: usize = 32 * 16 + 16 * 4;

/// Sizes `buf` for the unpacked form of a group of `ty` and checks the shapes; returns the block
/// count.
fn unpack_check(ty: QuantType, cols: usize, group: &[u8], buf: &mut Vec<u8>) -> usize {
    buf.resize(cols / QK * UNPACKED_BLOCK, 0);
    crate::kernels::check_unpack(ty, cols, 16, group, buf.len(), UNPACKED_BLOCK)
}

/// The signed levels of Q4_0's quads `l` and `l + 4` for four rows from their nibbles `v`.
#[inline(always)]
unsafe fn q4_0_levels(v: uint8x16_t) -> (int8x16_t, int8x16_t) {
    let (m4, s8) = (vdupq_n_u8(0x0F), vdupq_n_s8(8));
    (
        vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), s8),
        vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), s8),
    )
}

/// The signed levels of Q5_0's quads `l` and `l + 4` for row quad `q` from their nibbles `v` and
/// the block's high bits `hb` (`high_bits`).
#[inline(always)]
unsafe fn q5_0_levels(v: uint8x16_t, hb: &[uint8x16_t; 4], l: usize, q: usize) -> (int8x16_t, int8x16_t) {
    let (m4, f0) = (vdupq_n_u8(0x0F), vdupq_n_u8(0xF0));
    let bit = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
    let (ilo, ihi) = (vld1q_u8(SPREAD[l].as_ptr()), vld1q_u8(SPREAD[l + 4].as_ptr()));
    // A clear fifth bit makes the value 16 less: the nibble's byte with its high four bits set,
    // as an i8.
    let (mlo, mhi) = (vtstq_u8(vqtbl1q_u8(hb[q], ilo), bit), vtstq_u8(vqtbl1q_u8(hb[q], ihi), bit));
    (
        vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, m4), vbicq_u8(f0, mlo))),
        vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8::<4>(v), vbicq_u8(f0, mhi))),
    )
}

/// Stores a block's levels of quads `l` and `l + 4` for row quad `q`.
#[inline(always)]
unsafe fn store_levels(u: *mut u8, l: usize, q: usize, lo: int8x16_t, hi: int8x16_t) {
    vst1q_s8(u.add(32 * (4 * l + q)) as *mut i8, lo);
    vst1q_s8(u.add(32 * (4 * l + q) + 16) as *mut i8, hi);
}

/// Stores the 16 rows' `d` (f16 at `g`) as f32 at `u + 512`.
#[inline(always)]
unsafe fn store_scales(u: *mut u8, g: *const u8) {
    for (q, d) in f16x16(g).into_iter().enumerate() {
        vst1q_f32(u.add(512 + 16 * q) as *mut f32, d);
    }
}

/// Unpacks a Q4_0 group (`pack_q4_0` or `pack_q4_0_pairs`) for `dot16_unpacked_q4_0`: the levels
/// as `dot16_q4_0` forms them.
#[target_feature(enable = "neon")]
pub unsafe fn unpack16_q4_0(cols: usize, group: &[u8], buf: &mut Vec<u8>) {
    let nb = unpack_check(QuantType::Q4_0, cols, group, buf);
    let (gp, up) = (group.as_ptr(), buf.as_mut_ptr());
    for b in 0..nb {
        let (g, u) = (gp.add(288 * b), up.add(UNPACKED_BLOCK * b));
        for l in 0..4 {
            for q in 0..4 {
                let (lo, hi) = q4_0_levels(vld1q_u8(g.add(64 * l + 16 * q)));
                store_levels(u, l, q, lo, hi);
            }
        }
        store_scales(u, g.add(256));
    }
}

/// Unpacks a Q5_0 group (`pack_q5_0` or `pack_q5_0_pairs`) for `dot16_unpacked_q5_0`: the levels
/// as `dot16_q5_0` forms them.
#[target_feature(enable = "neon")]
pub unsafe fn unpack16_q5_0(cols: usize, group: &[u8], buf: &mut Vec<u8>) {
    let nb = unpack_check(QuantType::Q5_0, cols, group, buf);
    let (gp, up) = (group.as_ptr(), buf.as_mut_ptr());
    for b in 0..nb {
        let (g, u) = (gp.add(352 * b), up.add(UNPACKED_BLOCK * b));
        let hb = high_bits(g.add(256));
        for l in 0..4 {
            for q in 0..4 {
                let (lo, hi) = q5_0_levels(vld1q_u8(g.add(64 * l + 16 * q)), &hb, l, q);
                store_levels(u, l, q, lo, hi);
            }
        }
        store_scales(u, g.add(320));
    }
}

/// The 16 rows' `d` of an unpacked block at `u`.
#[inline(always)]
unsafe fn unpacked_scales(u: *const u8) -> [float32x4_t; 4] {
    std::array::from_fn(|q| vld1q_f32(u.add(512 + 16 * q) as *const f32))
}

macro_rules! neon_il_kernels {
    ($modname:ident, $tf:literal, $quads2:path, $acts:path,
     $pack_q4_0:path, $pack_q4_1:path, $pack_q5_0:path, $pack_q8_0:path) => {
        pub mod $modname {
            use super::*;

            /// Adds the set's interleaved kernels and weighted row sums to `s`.
            pub fn add_to(s: &mut KernelSet) {
                s[QuantType::Q4_0].interleaved = Some(Interleaved16 {
                    unpacked: Some(Unpacked16 { unpack: unpack16_q4_0, dot16: dot16_unpacked_q4_0 }),
                    ..Interleaved16::new($pack_q4_0, dot16_q4_0)
                });
                s[QuantType::Q4_1].interleaved = Some(Interleaved16::new($pack_q4_1, dot16_q4_1));
                s[QuantType::Q5_0].interleaved = Some(Interleaved16 {
                    unpacked: Some(Unpacked16 { unpack: unpack16_q5_0, dot16: dot16_unpacked_q5_0 }),
                    ..Interleaved16::new($pack_q5_0, dot16_q5_0)
                });
                s[QuantType::Q8_0].interleaved = Some(Interleaved16::new($pack_q8_0, dot16_q8_0));
                s[QuantType::Q8_0].interleaved_axpy =
                    Some(InterleavedAxpy16 { pack: pack_q8_0_axpy_signed, axpy16: axpy16_q8_0 });
            }

            /// Q4_0 group block (`pack_q4_0`, in the set's order): dword `l` of the nibbles of
            /// rows 0..16 for `l = 0..4`, then the rows' `d`. Dword `l`'s low nibbles are quad
            /// `l`, its high nibbles quad `l + 4`: lane `l` of the single-row kernel.
            #[target_feature(enable = $tf)]
            pub unsafe fn dot16_q4_0(
                cols: usize,
                group: &[u8],
                x: &[u8],
                _sums: &[f32],
                out: &mut [f32; 16],
                next: *const u8,
            ) {
                check(QuantType::Q4_0, cols, group, x);
                let nb = cols / QK;
                let (gp, xp) = (group.as_ptr(), x.as_ptr());
                let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
                for b in 0..nb {
                    let (g, bx) = (gp.add(288 * b), xp.add(34 * b));
                    prefetch_group_ahead(gp, 288 * nb, 288 * b, 288, next);
                    let dw = f16x16(g.add(256));
                    let d = times(dw, f16_bcast(bx));
                    let y = $acts(bx);
                    for l in 0..4 {
                        let (ylo, yhi) = (quad(&y, l), quad(&y, l + 4));
                        for q in 0..4 {
                            let (lo, hi) = q4_0_levels(vld1q_u8(g.add(64 * l + 16 * q)));
                            let p = $quads2(vdupq_n_s32(0), lo, ylo, hi, yhi);
                            acc[q][l] = vfmaq_f32(acc[q][l], vcvtq_f32_s32(p), d[q]);
                        }
                    }
                }
                reduce(&acc, None, out);
            }

            /// `dot16_q4_0` from a group unpacked by `unpack16_q4_0`: the same operations on the
            /// same levels and scales.
            #[target_feature(enable = $tf)]
            pub unsafe fn dot16_unpacked_q4_0(
                cols: usize,
                buf: &[u8],
                x: &[u8],
                _sums: &[f32],
                out: &mut [f32; 16],
                _next: *const u8,
            ) {
                let nb = crate::kernels::check_unpacked_dot(QuantType::Q4_0, cols, buf, x, UNPACKED_BLOCK);
                let (up, xp) = (buf.as_ptr(), x.as_ptr());
                let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
                for b in 0..nb {
                    let (u, bx) = (up.add(UNPACKED_BLOCK * b), xp.add(34 * b));
                    let d = times(unpacked_scales(u), f16_bcast(bx));
                    let y = $acts(bx);
                    for l in 0..4 {
                        let (ylo, yhi) = (quad(&y, l), quad(&y, l + 4));
                        for q in 0..4 {
                            let at = u.add(32 * (4 * l + q));
                            let p = $quads2(vdupq_n_s32(0), ld(at), ylo, ld(at.add(16)), yhi);
                            acc[q][l] = vfmaq_f32(acc[q][l], vcvtq_f32_s32(p), d[q]);
                        }
                    }
                }
                reduce(&acc, None, out);
            }

            /// `dot16_q5_0` from a group unpacked by `unpack16_q5_0`, as `dot16_unpacked_q4_0`.
            #[target_feature(enable = $tf)]
            pub unsafe fn dot16_unpacked_q5_0(
                cols: usize,
                buf: &[u8],
                x: &[u8],
                _sums: &[f32],
                out: &mut [f32; 16],
                _next: *const u8,
            ) {
                let nb = crate::kernels::check_unpacked_dot(QuantType::Q5_0, cols, buf, x, UNPACKED_BLOCK);
                let (up, xp) = (buf.as_ptr(), x.as_ptr());
                let mut sum = [vdupq_n_f32(0.0); 4];
                for b in 0..nb {
                    let (u, bx) = (up.add(UNPACKED_BLOCK * b), xp.add(34 * b));
                    let d = times(unpacked_scales(u), f16_bcast(bx));
                    let y = $acts(bx);
                    let mut isum = [vdupq_n_s32(0); 4];
                    for l in 0..4 {
                        for q in 0..4 {
                            let at = u.add(32 * (4 * l + q));
                            isum[q] = $quads2(isum[q], ld(at), quad(&y, l), ld(at.add(16)), quad(&y, l + 4));
                        }
                    }
                    for q in 0..4 {
                        sum[q] = vaddq_f32(sum[q], vmulq_f32(vcvtq_f32_s32(isum[q]), d[q]));
                    }
                }
                for (q, s) in sum.iter().enumerate() {
                    vst1q_f32(out.as_mut_ptr().add(4 * q), *s);
                }
            }

            /// Q4_1 group block (`pack_q4_1`, in the set's order): the nibbles as Q4_0's, then
            /// the rows' `d`, then their `m`.
            #[target_feature(enable = $tf)]
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
                let m4 = vdupq_n_u8(0x0F);
                let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
                let mut summ = [vdupq_n_f32(0.0); 4];
                for b in 0..nb {
                    let (g, bx) = (gp.add(320 * b), xp.add(34 * b));
                    prefetch_group_ahead(gp, 320 * nb, 320 * b, 320, next);
                    let (dw, mw) = (f16x16(g.add(256)), f16x16(g.add(288)));
                    let d = times(dw, f16_bcast(bx));
                    let y = $acts(bx);
                    for l in 0..4 {
                        let (ylo, yhi) = (quad(&y, l), quad(&y, l + 4));
                        for q in 0..4 {
                            let v = vld1q_u8(g.add(64 * l + 16 * q));
                            let lo = vreinterpretq_s8_u8(vandq_u8(v, m4));
                            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                            let p = $quads2(vdupq_n_s32(0), lo, ylo, hi, yhi);
                            acc[q][l] = vfmaq_f32(acc[q][l], vcvtq_f32_s32(p), d[q]);
                        }
                    }
                    // Not fused, as the single-row kernel's `summ += m * s`.
                    let s = *sums.get_unchecked(b);
                    for q in 0..4 {
                        summ[q] = vaddq_f32(summ[q], vmulq_n_f32(mw[q], s));
                    }
                }
                reduce(&acc, Some(&summ), out);
            }

            /// Q5_0 group block (`pack_q5_0`, in the set's order): the nibbles as Q4_0's, then
            /// per quad `l` and half `h` of the rows one u32 of the high bits (bit `4r + k`:
            /// element `4l + k` of row `8h + r`), then the rows' `d`. The single-row kernel
            /// adds `isum · d` per block to a scalar sum, so here the lanes hold whole rows.
            #[target_feature(enable = $tf)]
            pub unsafe fn dot16_q5_0(
                cols: usize,
                group: &[u8],
                x: &[u8],
                _sums: &[f32],
                out: &mut [f32; 16],
                next: *const u8,
            ) {
                check(QuantType::Q5_0, cols, group, x);
                let nb = cols / QK;
                let (gp, xp) = (group.as_ptr(), x.as_ptr());
                let mut sum = [vdupq_n_f32(0.0); 4];
                for b in 0..nb {
                    let (g, bx) = (gp.add(352 * b), xp.add(34 * b));
                    prefetch_group_ahead(gp, 352 * nb, 352 * b, 352, next);
                    let dw = f16x16(g.add(320));
                    let d = times(dw, f16_bcast(bx));
                    let y = $acts(bx);
                    let hb = high_bits(g.add(256));
                    let mut isum = [vdupq_n_s32(0); 4];
                    for l in 0..4 {
                        for q in 0..4 {
                            let (lo, hi) = q5_0_levels(vld1q_u8(g.add(64 * l + 16 * q)), &hb, l, q);
                            isum[q] = $quads2(isum[q], lo, quad(&y, l), hi, quad(&y, l + 4));
                        }
                    }
                    // Not fused, as the single-row kernel's `sum += isum as f32 * (d_w * d_x)`.
                    for q in 0..4 {
                        sum[q] = vaddq_f32(sum[q], vmulq_f32(vcvtq_f32_s32(isum[q]), d[q]));
                    }
                }
                for (q, s) in sum.iter().enumerate() {
                    vst1q_f32(out.as_mut_ptr().add(4 * q), *s);
                }
            }

            /// Q8_0 group block (`pack_q8_0_signed`, in the set's order): quad `l` of the 16
            /// rows for `l = 0..8`, then the rows' `d`. Lane `l` sums quads `l` and `l + 4`.
            #[target_feature(enable = $tf)]
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
                let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
                for b in 0..nb {
                    let (g, bx) = (gp.add(544 * b), xp.add(34 * b));
                    prefetch_group_ahead(gp, 544 * nb, 544 * b, 544, next);
                    let dw = f16x16(g.add(512));
                    let d = times(dw, f16_bcast(bx));
                    let y = $acts(bx);
                    for l in 0..4 {
                        let (ylo, yhi) = (quad(&y, l), quad(&y, l + 4));
                        for q in 0..4 {
                            let lo = ld(g.add(64 * l + 16 * q));
                            let hi = ld(g.add(64 * (l + 4) + 16 * q));
                            let p = $quads2(vdupq_n_s32(0), lo, ylo, hi, yhi);
                            acc[q][l] = vfmaq_f32(acc[q][l], vcvtq_f32_s32(p), d[q]);
                        }
                    }
                }
                reduce(&acc, None, out);
            }

            /// Q8_0 weighted row sums over a group packed by `pack_q8_0_axpy_signed` (rows
            /// `4k..4k + 4` of column `c` in dword `c` of chunk `k`): per block the 16 rows'
            /// `coeff · d` quantized to 8 bits `t`, the integer sums `Σ t · q` per column by
            /// i8 dot products against `t`'s quad `k`, and one FMA by the block's scale, as
            /// `scalar::axpy16_q8_0_quantized` defines it.
            #[target_feature(enable = $tf)]
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
                let mut masked = [0f32; 16];
                for r in lanes {
                    masked[r] = coeffs[r];
                }
                let mut c = [vdupq_n_f32(0.0); 4];
                for (k, c) in c.iter_mut().enumerate() {
                    *c = vld1q_f32(masked.as_ptr().add(4 * k));
                }
                let big = vdupq_n_f32(f32::MAX);
                for b in 0..nb {
                    let (g, yb) = (gp.add(544 * b), yp.add(32 * b));
                    prefetch_group_ahead(gp, 544 * nb, 544 * b, 544, next);
                    let d = f16x16(g.add(512));
                    let mut s = [vdupq_n_f32(0.0); 4];
                    let mut finite = vdupq_n_u32(u32::MAX);
                    let mut amax = vdupq_n_f32(0.0);
                    for k in 0..4 {
                        s[k] = vmulq_f32(c[k], d[k]);
                        let a = vabsq_f32(s[k]);
                        // False for NaN too.
                        finite = vandq_u32(finite, vcleq_f32(a, big));
                        amax = vmaxq_f32(amax, a);
                    }
                    // Not finite (or NaN): the block adds NaN, as the scalar definition does.
                    if vminvq_u32(finite) == 0 {
                        for j in 0..8 {
                            let v = vld1q_f32(yb.add(4 * j));
                            vst1q_f32(yb.add(4 * j), vaddq_f32(v, vdupq_n_f32(f32::NAN)));
                        }
                        continue;
                    }
                    // The maximum of finite non-negative values is exact in any order.
                    let Some((t_scale, id)) = axpy_coeff_scale(vmaxvq_f32(amax)) else {
                        continue;
                    };
                    // Rounded to nearest even (`fcvtns`), as `round_ties_even`; |t| ≤ 127.
                    let mut t = [vdupq_n_s32(0); 4];
                    for k in 0..4 {
                        t[k] = vcvtnq_s32_f32(vmulq_n_f32(s[k], id));
                    }
                    let t16 = [
                        vcombine_s16(vmovn_s32(t[0]), vmovn_s32(t[1])),
                        vcombine_s16(vmovn_s32(t[2]), vmovn_s32(t[3])),
                    ];
                    let t8 = [vcombine_s8(vmovn_s16(t16[0]), vmovn_s16(t16[1])), vdupq_n_s8(0)];
                    let mut acc = [vdupq_n_s32(0); 8];
                    for k in (0..4).step_by(2) {
                        let (t1, t2) = (quad(&t8, k), quad(&t8, k + 1));
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let q1 = ld(g.add(128 * k + 16 * j));
                            let q2 = ld(g.add(128 * (k + 1) + 16 * j));
                            *acc = $quads2(*acc, q1, t1, q2, t2);
                        }
                    }
                    let ts = vdupq_n_f32(t_scale);
                    for (j, acc) in acc.iter().enumerate() {
                        let v = vld1q_f32(yb.add(4 * j));
                        vst1q_f32(yb.add(4 * j), vfmaq_f32(v, vcvtq_f32_s32(*acc), ts));
                    }
                }
            }
        }
    };
}

neon_il_kernels!(
    plain,
    "neon",
    quads2_plain,
    acts_pairs,
    pack_q4_0_pairs,
    pack_q4_1_pairs,
    pack_q5_0_pairs,
    pack_q8_0_signed_pairs
);
neon_il_kernels!(
    with_dotprod,
    "neon,dotprod",
    quads2_sdot,
    acts_sdot,
    pack_q4_0,
    pack_q4_1,
    pack_q5_0,
    pack_q8_0_signed
);
