//! Matrix-matrix kernels for prompt processing with `smmla` (the i8mm extension), part of the
//! "neon-dotprod" set where the CPU has i8mm. Each (row, vector) result is **bit-identical** to
//! that set's single-row kernel (see `kernels::GemmKernel`).
//!
//! `smmla` multiplies a 2×8 matrix of i8 by the transpose of another into a 2×2 tile of i32.
//! The single-row kernels' i32 lane `l` sums quads `l` and `l + 4` of a block's products, so a
//! weight row's 8 bytes for lane `l` are its quads `l` and `l + 4`, and likewise a vector's:
//! one `smmla` gives lane `l` of two rows by two vectors, exactly. Scaling, accumulation and
//! the final sums then follow the single-row kernel per format: Q4_0, Q8_0 and (with the block
//! sums' `Σ m · s`) Q4_1, Q5_1 keep four float lanes, FMA per block and sum them as
//! `vaddvq_f32`; Q5_0 adds each block's integer total times `d_w · d_x` to one sum.
//!
//! The rows are unpacked once per call into a panel (per pair of rows and block: the four lane
//! operands, then `d` and `m`), the vectors once per product by `pack` (per pair of vectors and
//! block: the four lane operands, then `d` and the block sums); a tile is 4 rows × 4 vectors.
#![allow(clippy::missing_safety_doc)] // the contract of `GemmKernel` (kernels/mod.rs)

use std::arch::aarch64::*;
use std::arch::asm;

use super::neon_il::bits_16;
use super::table::KernelSet;
use super::{GemmKernel, PackedActs};
use crate::blocks::float::f16_to_f32;
use crate::formats::{QuantType, QK};

/// Bytes of one Q8_0 activation block (f16 scale + 32 quants).
const XB: usize = 34;
/// Packed bytes per pair of vectors (or rows) and block: four 16-byte lane operands, then
/// four f32 of scales, then four f32 of block sums (minimums for rows), in tile-lane order.
const PAIR_BLOCK: usize = 96;

/// Adds the set's tiled kernels to `s` (for a CPU with i8mm).
pub fn add_to(s: &mut KernelSet) {
    for (ty, run) in [
        (QuantType::Q4_0, run_q4_0 as RunFn),
        (QuantType::Q4_1, run_q4_1),
        (QuantType::Q5_0, run_q5_0),
        (QuantType::Q5_1, run_q5_1),
        (QuantType::Q8_0, run_q8_0),
    ] {
        s[ty].gemm = Some(GemmKernel { pack, run });
    }
}

type RunFn = unsafe fn(usize, &[u8], usize, &PackedActs, *mut f32, usize);

/// `acc` + the 2×2 tile of 8-byte dot products of `a`'s and `b`'s two halves (`smmla`; only
/// inside i8mm functions).
#[inline(always)]
unsafe fn mmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction; callers are compiled with the i8mm feature and only
    // dispatched when the CPU has it.
    asm!("smmla {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b,
         options(pure, nomem, nostack));
    acc
}

/// The four lane operands of two 32-byte blocks `(lo, hi)` (elements 0..16, 16..32) of rows or
/// vectors `0` and `1`: operand `l` is `[0: quad l, quad l + 4 | 1: quad l, quad l + 4]`.
#[inline(always)]
unsafe fn lane_operands(p0: [int8x16_t; 2], p1: [int8x16_t; 2]) -> [int8x16_t; 4] {
    let s = |v: int8x16_t| vreinterpretq_s32_s8(v);
    // [q0, q4, q1, q5] and [q2, q6, q3, q7] of each.
    let (a1, a2) = (vzip1q_s32(s(p0[0]), s(p0[1])), vzip2q_s32(s(p0[0]), s(p0[1])));
    let (b1, b2) = (vzip1q_s32(s(p1[0]), s(p1[1])), vzip2q_s32(s(p1[0]), s(p1[1])));
    let d = |v: int32x4_t| vreinterpretq_s64_s32(v);
    let o = |v: int64x2_t| vreinterpretq_s8_s64(v);
    [
        o(vzip1q_s64(d(a1), d(b1))),
        o(vzip2q_s64(d(a1), d(b1))),
        o(vzip1q_s64(d(a2), d(b2))),
        o(vzip2q_s64(d(a2), d(b2))),
    ]
}

/// The f16 at `p` as f32.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    f16_to_f32(u16::from_le_bytes([*p, *p.add(1)]))
}

/// Packs Q8_0 activation vectors: per pair of vectors and block, the lane operands, then
/// `[d0, d1, d0, d1]`, then `[s0, s1, s0, s1]` (the block sums, or 0). A last odd vector is
/// paired with zeros, whose results are never stored.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub unsafe fn pack(cols: usize, x: &[u8], x_row_bytes: usize, sums: &[f32], out: &mut PackedActs) {
    let nb = cols / QK;
    assert!(
        cols % QK == 0 && x_row_bytes >= nb * XB && x_row_bytes > 0 && x.len() % x_row_bytes == 0,
        "gemm pack: vectors too short for {cols} values"
    );
    let n_vecs = x.len() / x_row_bytes;
    assert!(
        sums.is_empty() || sums.len() == n_vecs * nb,
        "gemm pack: {} block sums for {n_vecs} vectors of {nb} blocks",
        sums.len()
    );
    let pairs = n_vecs.div_ceil(2);
    out.bytes.clear();
    out.bytes.resize(pairs * nb * PAIR_BLOCK, 0);
    (out.cols, out.n_vecs, out.has_sums) = (cols, n_vecs, !sums.is_empty());
    let zero = [vdupq_n_s8(0); 2];
    for p in 0..pairs {
        for b in 0..nb {
            let (mut q, mut d, mut s) = ([zero; 2], [0f32; 2], [0f32; 2]);
            for k in 0..2.min(n_vecs - 2 * p) {
                let v = 2 * p + k;
                let block = &x[v * x_row_bytes + XB * b..][..XB];
                q[k] = [
                    vld1q_s8(block[2..].as_ptr() as *const i8),
                    vld1q_s8(block[18..].as_ptr() as *const i8),
                ];
                d[k] = f16_at(block.as_ptr());
                if !sums.is_empty() {
                    s[k] = sums[v * nb + b];
                }
            }
            let o = out.bytes.as_mut_ptr().add((p * nb + b) * PAIR_BLOCK);
            for (l, op) in lane_operands(q[0], q[1]).iter().enumerate() {
                vst1q_s8(o.add(16 * l) as *mut i8, *op);
            }
            (o.add(64) as *mut [f32; 4]).write_unaligned([d[0], d[1], d[0], d[1]]);
            (o.add(80) as *mut [f32; 4]).write_unaligned([s[0], s[1], s[0], s[1]]);
        }
    }
}

/// How a format's single-row kernel turns a block's lanes into its result.
#[derive(Clone, Copy, PartialEq)]
enum Sum {
    /// Four float lanes, FMA per block, summed at the end (Q4_0, Q8_0).
    Lanes,
    /// As `Lanes`, plus `Σ m · s` added after the lanes' sum (Q4_1, Q5_1).
    LanesAndMins,
    /// One float sum, `+= float(Σ lanes) · (d_w · d_x)` per block (Q5_0).
    Total,
}

/// A block's 32 weights as the single-row kernel multiplies them: elements 0..16 and 16..32.
#[inline(always)]
unsafe fn unpack(ty: QuantType, bw: *const u8) -> [int8x16_t; 2] {
    let (m4, m16) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x10));
    let s8 = |v: uint8x16_t| vreinterpretq_s8_u8(v);
    let nibbles = |q: uint8x16_t| [vandq_u8(q, m4), vshrq_n_u8::<4>(q)];
    let fifth = |qh: *const u8, n: [uint8x16_t; 2]| {
        let bits = u32::from_le_bytes([*qh, *qh.add(1), *qh.add(2), *qh.add(3)]);
        [
            vorrq_u8(n[0], vandq_u8(bits_16(bits, 0), m16)),
            vorrq_u8(n[1], vandq_u8(bits_16(bits, 1), m16)),
        ]
    };
    match ty {
        QuantType::Q4_0 => {
            let n = nibbles(vld1q_u8(bw.add(2)));
            let s = vdupq_n_s8(8);
            [vsubq_s8(s8(n[0]), s), vsubq_s8(s8(n[1]), s)]
        }
        QuantType::Q4_1 => nibbles(vld1q_u8(bw.add(4))).map(s8),
        QuantType::Q5_0 => {
            let v = fifth(bw.add(2), nibbles(vld1q_u8(bw.add(6))));
            let s = vdupq_n_s8(16);
            [vsubq_s8(s8(v[0]), s), vsubq_s8(s8(v[1]), s)]
        }
        QuantType::Q5_1 => fifth(bw.add(4), nibbles(vld1q_u8(bw.add(8)))).map(s8),
        _ => [vld1q_s8(bw.add(2) as *const i8), vld1q_s8(bw.add(18) as *const i8)],
    }
}

thread_local! {
    /// Each thread's unpacked rows, reused from call to call.
    static PANEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The shared body of the `run` functions: checks the shapes, unpacks the rows into the
/// thread's panel, then runs the tiles.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run(
    ty: QuantType,
    sum: Sum,
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    packed: &PackedActs,
    out: *mut f32,
    out_stride: usize,
) {
    let (nb, ts) = (cols / QK, ty.type_size());
    assert!(
        cols % QK == 0 && row_bytes >= nb * ts && row_bytes > 0 && w.len() % row_bytes == 0,
        "{ty} gemm: rows too short for {cols} values"
    );
    let (rows, n_vecs) = (w.len() / row_bytes, packed.n_vecs);
    assert!(
        packed.cols == cols && packed.bytes.len() == n_vecs.div_ceil(2) * nb * PAIR_BLOCK,
        "{ty} gemm: activations packed for {} values, not {cols}",
        packed.cols
    );
    assert!(
        sum != Sum::LanesAndMins || packed.has_sums,
        "{ty} gemm: activations packed without block sums"
    );
    if rows == 0 || n_vecs == 0 {
        return;
    }
    // Taken out of the thread-local and put back rather than used in a closure, which would not
    // carry this function's target features (and `smmla` needs them to assemble).
    let mut panel = PANEL.take();
    let row_pairs = rows.div_ceil(2);
    panel.clear();
    panel.resize(row_pairs * nb * PAIR_BLOCK, 0);
    for p in 0..row_pairs {
        // A last odd row is paired with itself; its copy's results are never stored.
        let r = [2 * p, (2 * p + 1).min(rows - 1)].map(|r| w.as_ptr().add(r * row_bytes));
        for b in 0..nb {
            let bw = r.map(|r| r.add(ts * b));
            let o = panel.as_mut_ptr().add((p * nb + b) * PAIR_BLOCK);
            let ops = lane_operands(unpack(ty, bw[0]), unpack(ty, bw[1]));
            for (l, op) in ops.iter().enumerate() {
                vst1q_s8(o.add(16 * l) as *mut i8, *op);
            }
            let d = bw.map(|p| f16_at(p));
            let m = match sum {
                Sum::LanesAndMins => bw.map(|p| f16_at(p.add(2))),
                _ => [0.0; 2],
            };
            (o.add(64) as *mut [f32; 4]).write_unaligned([d[0], d[0], d[1], d[1]]);
            (o.add(80) as *mut [f32; 4]).write_unaligned([m[0], m[0], m[1], m[1]]);
        }
    }
    tiles(sum, nb, rows, n_vecs, &panel, packed, out, out_stride);
    PANEL.set(panel);
}

/// All tiles of 2 row pairs × 2 vector pairs (fewer at the edges).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(
    sum: Sum,
    nb: usize,
    rows: usize,
    n_vecs: usize,
    panel: &[u8],
    packed: &PackedActs,
    out: *mut f32,
    out_stride: usize,
) {
    let (row_pairs, vec_pairs) = (rows.div_ceil(2), n_vecs.div_ceil(2));
    let (pw, px) = (panel.as_ptr(), packed.bytes.as_ptr());
    for vp0 in (0..vec_pairs).step_by(2) {
        for rp0 in (0..row_pairs).step_by(2) {
            // Edge tiles repeat their last pair (computed twice, stored once).
            let rp = [rp0, (rp0 + 1).min(row_pairs - 1)];
            let vp = [vp0, (vp0 + 1).min(vec_pairs - 1)];
            let mut acc = [[[vdupq_n_f32(0.0); 4]; 2]; 2];
            let mut summ = [[vdupq_n_f32(0.0); 2]; 2];
            for b in 0..nb {
                let wb = rp.map(|p| pw.add((p * nb + b) * PAIR_BLOCK));
                let xb = vp.map(|p| px.add((p * nb + b) * PAIR_BLOCK));
                let dw = wb.map(|p| vld1q_f32(p.add(64) as *const f32));
                let dx = xb.map(|p| vld1q_f32(p.add(64) as *const f32));
                // d_w · d_x per (row, vector), rounded once as the single-row kernels' product.
                let mut scale = [[vdupq_n_f32(0.0); 2]; 2];
                for i in 0..2 {
                    for j in 0..2 {
                        scale[i][j] = vmulq_f32(dw[i], dx[j]);
                    }
                }
                let mut total = [[vdupq_n_s32(0); 2]; 2];
                #[allow(clippy::needless_range_loop)] // l indexes the operands and acc[i][j]
                for l in 0..4 {
                    let a = wb.map(|p| vld1q_s8(p.add(16 * l) as *const i8));
                    let x = xb.map(|p| vld1q_s8(p.add(16 * l) as *const i8));
                    for i in 0..2 {
                        for j in 0..2 {
                            if sum == Sum::Total {
                                total[i][j] = mmla(total[i][j], a[i], x[j]);
                            } else {
                                let p = mmla(vdupq_n_s32(0), a[i], x[j]);
                                acc[i][j][l] = vfmaq_f32(acc[i][j][l], vcvtq_f32_s32(p), scale[i][j]);
                            }
                        }
                    }
                }
                match sum {
                    // Not fused, as the single-row kernel's `sum += isum as f32 * d`.
                    Sum::Total => {
                        for i in 0..2 {
                            for j in 0..2 {
                                let t = vmulq_f32(vcvtq_f32_s32(total[i][j]), scale[i][j]);
                                summ[i][j] = vaddq_f32(summ[i][j], t);
                            }
                        }
                    }
                    // Not fused, as the single-row kernel's `summ += m * s`.
                    Sum::LanesAndMins => {
                        let m = wb.map(|p| vld1q_f32(p.add(80) as *const f32));
                        let s = xb.map(|p| vld1q_f32(p.add(80) as *const f32));
                        for i in 0..2 {
                            for j in 0..2 {
                                summ[i][j] = vaddq_f32(summ[i][j], vmulq_f32(m[i], s[j]));
                            }
                        }
                    }
                    Sum::Lanes => {}
                }
            }
            for i in 0..2 {
                for j in 0..2 {
                    let a = &acc[i][j];
                    // Lanes [r0 v0, r0 v1, r1 v0, r1 v1] of the tile.
                    let t = match sum {
                        Sum::Total => summ[i][j],
                        // The single-row kernels' `vaddvq_f32`: (l0 + l1) + (l2 + l3).
                        _ => {
                            let s = vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]));
                            if sum == Sum::LanesAndMins {
                                vaddq_f32(s, summ[i][j])
                            } else {
                                s
                            }
                        }
                    };
                    let mut lanes = [0f32; 4];
                    vst1q_f32(lanes.as_mut_ptr(), t);
                    for (k, value) in lanes.iter().enumerate() {
                        let (r, v) = (2 * rp[i] + k / 2, 2 * vp[j] + k % 2);
                        // The edge tiles' repeated pairs are stored by their first copy.
                        let repeated = (i == 1 && rp[1] == rp[0]) || (j == 1 && vp[1] == vp[0]);
                        if r < rows && v < n_vecs && !repeated {
                            *out.add(v * out_stride + r) = *value;
                        }
                    }
                }
            }
        }
    }
}

/// One `GemmKernel::run` per format.
macro_rules! run_fn {
    ($name:ident, $ty:expr, $sum:expr) => {
        #[target_feature(enable = "neon,dotprod,i8mm")]
        pub unsafe fn $name(cols: usize, w: &[u8], row_bytes: usize, x: &PackedActs, out: *mut f32, out_stride: usize) {
            run($ty, $sum, cols, w, row_bytes, x, out, out_stride)
        }
    };
}

run_fn!(run_q4_0, QuantType::Q4_0, Sum::Lanes);
run_fn!(run_q4_1, QuantType::Q4_1, Sum::LanesAndMins);
run_fn!(run_q5_0, QuantType::Q5_0, Sum::Total);
run_fn!(run_q5_1, QuantType::Q5_1, Sum::LanesAndMins);
run_fn!(run_q8_0, QuantType::Q8_0, Sum::Lanes);
