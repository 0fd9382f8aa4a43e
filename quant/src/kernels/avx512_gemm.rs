//! Matrix-matrix kernels of the "avx512-vnni" set for prompt processing: tiles of 4 weight rows ×
//! 8 activation vectors, each (row, vector) result **bit-identical** to the set's single-row
//! kernel (the engine's agreement with llama.cpp depends on it; see `kernels::GemmFn`).
//!
//! The single-row kernels spend most of their instructions on per-block work that depends on
//! the weight row alone (unpacking nibbles, converting the f16 scale) or on the activation alone
//! (loading it, the offset correction). A tile does that work once per row and once per vector
//! pair instead of once per (row, vector), and keeps two (row, vector) accumulators in one zmm:
//! lanes 0–7 hold vector `2p`'s eight partial sums, lanes 8–15 vector `2p + 1`'s, each lane
//! updated by exactly the operations of the 8-lane single-row kernel:
//! `acc = fma(d_w · d_x, float(Σ of 4 products), acc)`, then `hsum(acc) (+ Σ m·s)`.
//!
//! Weights are made unsigned for `vpdpbusd` (u8 × i8): Q4_0/Q5_0 keep their unsigned quants and
//! subtract `offset · Σy` afterwards (as `avx512::dot_q4_0_unsigned` does), Q8_0 adds 128 and
//! subtracts `128 · Σy`. The integer sums are exact either way, so every lane equals the
//! single-row kernel's.
#![allow(clippy::missing_safety_doc)] // every kernel has the contract of `GemmFn` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::{f16_at, hsum_ps};
use crate::dispatch::gemms;
use crate::formats::{QuantType, QK};

/// Weight rows per tile.
const ROWS: usize = 2;
/// Activation vector pairs per tile (two vectors per zmm register).
const PAIRS: usize = 8;
const VECS: usize = 2 * PAIRS;
/// Bytes of one Q8_0 activation block (f16 scale + 32 quants).
const XB: usize = 34;

/// The `gemms` table of the set.
pub fn kernels() -> [Option<super::GemmFn>; 14] {
    gemms([
        (QuantType::Q4_0, gemm_q4_0 as super::GemmFn),
        (QuantType::Q4_1, gemm_q4_1),
        (QuantType::Q5_0, gemm_q5_0),
        (QuantType::Q5_1, gemm_q5_1),
        (QuantType::Q8_0, gemm_q8_0),
    ])
}

/// One activation block of a vector pair, laid out as the tile loop reads it.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct PairBlock {
    /// Vector `2p`'s 32 quants, then vector `2p + 1`'s.
    q: __m512i,
    /// Each vector's scale, in its eight lanes.
    d: __m512,
    /// `-offset · Σ` of each group of four quants: the correction for unsigned weights.
    neg_offset: __m512i,
}

/// Packs vectors `v0..v0 + VECS` of `x` (zeros past `n_vecs`) for the tile loop: per block,
/// `PAIRS` pair blocks, and the vectors' block sums (lane `k`: vector `v0 + k`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pack(
    x: &[u8],
    x_row_bytes: usize,
    n_vecs: usize,
    v0: usize,
    nb: usize,
    offset: u8,
    sums: &[f32],
    pairs: &mut [PairBlock],
    sums8: &mut [[f32; VECS]],
) {
    let offsets = _mm512_set1_epi8(offset as i8);
    for b in 0..nb {
        for p in 0..PAIRS {
            let half = |v: usize| {
                if v < n_vecs {
                    // In bounds: the caller checked x holds n_vecs rows of nb blocks.
                    let bx = x.as_ptr().add(v * x_row_bytes + XB * b);
                    (_mm256_loadu_si256(bx.add(2) as *const __m256i), f16_at(bx))
                } else {
                    (_mm256_setzero_si256(), 0.0)
                }
            };
            let (qa, da) = half(v0 + 2 * p);
            let (qb, db) = half(v0 + 2 * p + 1);
            let q = _mm512_inserti64x4(_mm512_castsi256_si512(qa), qb, 1);
            let d = _mm512_castsi512_ps(_mm512_inserti64x4(
                _mm512_castps_si512(_mm512_set1_ps(da)),
                _mm256_castps_si256(_mm256_set1_ps(db)),
                1,
            ));
            let off = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offsets, q);
            pairs[b * PAIRS + p] = PairBlock {
                q,
                d,
                neg_offset: _mm512_sub_epi32(_mm512_setzero_si512(), off),
            };
        }
        if !sums.is_empty() {
            for k in 0..VECS {
                let v = v0 + k;
                sums8[b][k] = if v < n_vecs { sums[v * nb + b] } else { 0.0 };
            }
        }
    }
}

/// The shared loop: checks the arguments, then tiles. `unpack(block)` gives a weight block's 32
/// unsigned quants in both 256-bit halves; `offset` is what they were shifted by (0 for the
/// formats with a per-block minimum, whose `m · s` term is summed separately when `with_sums`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    ty: QuantType,
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    x_row_bytes: usize,
    sums: &[f32],
    out: &mut [f32],
    offset: u8,
    with_sums: bool,
    unpack: impl Fn(*const u8) -> __m512i,
) {
    let (nb, ts) = (cols / QK, ty.type_size());
    assert!(
        cols % QK == 0
            && row_bytes >= nb * ts
            && x_row_bytes >= nb * XB
            && row_bytes > 0
            && x_row_bytes > 0
            && w.len() % row_bytes == 0
            && x.len() % x_row_bytes == 0,
        "{ty} gemm: rows too short for {cols} values"
    );
    let (rows, n_vecs) = (w.len() / row_bytes, x.len() / x_row_bytes);
    assert_eq!(out.len(), rows * n_vecs, "{ty} gemm: output length");
    assert!(
        !with_sums || sums.len() == n_vecs * nb,
        "{ty} gemm: {} block sums for {n_vecs} vectors of {nb} blocks",
        sums.len()
    );
    if rows == 0 || n_vecs == 0 {
        return;
    }
    let sums = if with_sums { sums } else { &[] };
    let zero_pair = PairBlock {
        q: _mm512_setzero_si512(),
        d: _mm512_setzero_ps(),
        neg_offset: _mm512_setzero_si512(),
    };
    let mut pairs = vec![zero_pair; nb * PAIRS];
    let mut sums8 = vec![[0f32; VECS]; if with_sums { nb } else { 0 }];
    for v0 in (0..n_vecs).step_by(VECS) {
        pack(
            x,
            x_row_bytes,
            n_vecs,
            v0,
            nb,
            offset,
            sums,
            &mut pairs,
            &mut sums8,
        );
        for r0 in (0..rows).step_by(ROWS) {
            // Past the last row, repeat it (computed, never stored).
            let wp: [*const u8; ROWS] =
                std::array::from_fn(|k| w.as_ptr().add((r0 + k).min(rows - 1) * row_bytes));
            let mut acc = [[_mm512_setzero_ps(); PAIRS]; ROWS];
            let mut summ = [_mm512_setzero_ps(); ROWS];
            for b in 0..nb {
                let pb = &pairs[b * PAIRS..(b + 1) * PAIRS];
                let bw: [*const u8; ROWS] = std::array::from_fn(|r| wp[r].add(ts * b));
                let q = bw.map(|bw| unpack(bw));
                let dw = bw.map(|bw| _mm512_set1_ps(f16_at(bw)));
                // Pairs outer, rows inner: each pair's data is loaded once, and only the rows'
                // quants and scales stay in registers beside the accumulators.
                for (p, pair) in pb.iter().enumerate() {
                    for r in 0..ROWS {
                        let init = if offset != 0 {
                            pair.neg_offset
                        } else {
                            _mm512_setzero_si512()
                        };
                        let prod = _mm512_dpbusd_epi32(init, q[r], pair.q);
                        acc[r][p] = _mm512_fmadd_ps(
                            _mm512_mul_ps(dw[r], pair.d),
                            _mm512_cvtepi32_ps(prod),
                            acc[r][p],
                        );
                    }
                }
                if with_sums {
                    // Fused, as the single-row kernels' `summ = m.mul_add(s, summ)`.
                    let s = _mm512_loadu_ps(sums8[b].as_ptr());
                    for r in 0..ROWS {
                        let m = _mm512_set1_ps(f16_at(bw[r].add(2)));
                        summ[r] = _mm512_fmadd_ps(m, s, summ[r]);
                    }
                }
            }
            for (r, (acc_r, summ_r)) in acc.iter().zip(&summ).enumerate() {
                if r0 + r >= rows {
                    break;
                }
                let mut m = [0f32; VECS];
                _mm512_storeu_ps(m.as_mut_ptr(), *summ_r);
                for (p, a) in acc_r.iter().enumerate() {
                    let halves = [
                        _mm512_castps512_ps256(*a),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(*a), 1)),
                    ];
                    for (h, half) in halves.into_iter().enumerate() {
                        let v = v0 + 2 * p + h;
                        if v < n_vecs {
                            let s = hsum_ps(half);
                            out[v * rows + r0 + r] = if with_sums { s + m[2 * p + h] } else { s };
                        }
                    }
                }
            }
        }
    }
}

/// 32 nibbles at `p` as bytes (low nibbles first, as in the legacy blocks), in both halves.
#[inline(always)]
unsafe fn nibbles_2x32(p: *const u8) -> __m512i {
    let t = _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i));
    // Shift the second and fourth 128-bit lanes right by 4: their bytes take the high nibbles.
    let shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    _mm512_and_si512(_mm512_srlv_epi64(t, shifts), _mm512_set1_epi8(0x0F))
}

/// The 32 bits of `qh` as a byte mask (bit `i` → byte `i`), in both halves.
#[inline(always)]
unsafe fn bits_2x32(qh: u32) -> __mmask64 {
    let v = _mm512_set1_epi32(qh as i32);
    let shuf = _mm512_set_epi64(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let v = _mm512_shuffle_epi8(v, shuf);
    _mm512_test_epi8_mask(v, _mm512_set1_epi64(0x8040201008040201u64 as i64))
}

/// The 5-bit quants of a Q5 block: nibbles at `nib`, fifth bits in `qh`.
#[inline(always)]
unsafe fn q5_2x32(nib: *const u8, qh: *const u8) -> __m512i {
    let n = nibbles_2x32(nib);
    let bits = (qh as *const u32).read_unaligned();
    _mm512_mask_add_epi8(n, bits_2x32(bits), n, _mm512_set1_epi8(16))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q4_0(
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    x_row_bytes: usize,
    sums: &[f32],
    out: &mut [f32],
) {
    let ty = QuantType::Q4_0;
    gemm(
        ty,
        cols,
        w,
        row_bytes,
        x,
        x_row_bytes,
        sums,
        out,
        8,
        false,
        |bw| nibbles_2x32(bw.add(2)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q4_1(
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    x_row_bytes: usize,
    sums: &[f32],
    out: &mut [f32],
) {
    let ty = QuantType::Q4_1;
    gemm(
        ty,
        cols,
        w,
        row_bytes,
        x,
        x_row_bytes,
        sums,
        out,
        0,
        true,
        |bw| nibbles_2x32(bw.add(4)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q5_0(
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    x_row_bytes: usize,
    sums: &[f32],
    out: &mut [f32],
) {
    let ty = QuantType::Q5_0;
    gemm(
        ty,
        cols,
        w,
        row_bytes,
        x,
        x_row_bytes,
        sums,
        out,
        16,
        false,
        |bw| q5_2x32(bw.add(6), bw.add(2)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q5_1(
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    x_row_bytes: usize,
    sums: &[f32],
    out: &mut [f32],
) {
    let ty = QuantType::Q5_1;
    gemm(
        ty,
        cols,
        w,
        row_bytes,
        x,
        x_row_bytes,
        sums,
        out,
        0,
        true,
        |bw| q5_2x32(bw.add(8), bw.add(4)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemm_q8_0(
    cols: usize,
    w: &[u8],
    row_bytes: usize,
    x: &[u8],
    x_row_bytes: usize,
    sums: &[f32],
    out: &mut [f32],
) {
    let ty = QuantType::Q8_0;
    gemm(
        ty,
        cols,
        w,
        row_bytes,
        x,
        x_row_bytes,
        sums,
        out,
        128,
        false,
        |bw| {
            let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(bw.add(2) as *const __m256i));
            _mm512_xor_si512(q, _mm512_set1_epi8(0x80u8 as i8))
        },
    )
}
