//! Matrix-vector kernels of the "avx2" set over weights **interleaved in groups of 16 rows**
//! (`kernels::Interleaved16`), for CPUs without AVX-512: a ymm register holds 8 rows, one lane
//! each, so a group is two halves of 8 rows, laid out one after the other (the `_halves` packs
//! of `interleave`) and taken in turn, so that each byte is read once, in order. Per block of 8
//! rows the scale costs one f16 conversion instead of eight, and the final sums one reduction
//! per 8 rows instead of per row.
//!
//! Each row's result is **bit-identical** to the set's single-row kernel: lane `r` of register
//! `l` holds what that kernel's lane `l` holds for row `r` (quad `l` of each block's products,
//! scaled by `d_w · d_x` and accumulated by FMA), and the final sum adds the lanes in the order of
//! its `hsum_ps`. Products are `vpmaddubsw` + `vpmaddwd` as there, Q8_0 with the same sign trick,
//! so even a saturating pair saturates alike; Q4_0 and Q5_0 multiply their unsigned quants (no
//! pair can saturate) and take the offset off as `c · Σ y`, the same i32. The kernels are written once as a macro over the
//! u8×i8 → i32 primitive, so that `avxvnni_il.rs` instantiates them again with `vpdpbusd`. The
//! weighted row sums (`axpy16`) follow `scalar::axpy16_q8_0_quantized` exactly (integer sums of
//! 8-bit coefficients).
#![allow(clippy::missing_safety_doc)] // the contracts of `Interleaved16` / `InterleavedAxpy16`

use std::arch::x86_64::*;

use super::avx2::{dot_us8_avx2, f16_at, load};
use super::interleave::{
    pack_q4_0_halves, pack_q4_1_halves, pack_q5_0_halves, pack_q8_0_axpy_signed, pack_q8_0_signed_halves,
};
use super::table::KernelSet;
use super::{prefetch_group_ahead, Interleaved16, InterleavedAxpy16, Unpacked16};
use crate::formats::{QuantType, QK};

/// Adds the set's interleaved kernels and weighted row sums to `s`.
pub fn add_to(s: &mut KernelSet) {
    add_interleaved(s);
    s[QuantType::Q8_0].interleaved_axpy = Some(InterleavedAxpy16 { pack: pack_q8_0_axpy_signed, axpy16: axpy16_q8_0 });
}

/// Lanes `0..8` at `out` from the eight quad accumulators, as the single-row kernels' `hsum_ps`:
/// ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), plus `summ` for the offset formats.
#[inline(always)]
pub(crate) unsafe fn reduce(acc: [__m256; 8], summ: Option<__m256>, out: &mut [f32]) {
    // No closures here: a closure does not carry its caller's target features.
    let t = [
        _mm256_add_ps(acc[0], acc[4]),
        _mm256_add_ps(acc[1], acc[5]),
        _mm256_add_ps(acc[2], acc[6]),
        _mm256_add_ps(acc[3], acc[7]),
    ];
    let mut sum = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
    if let Some(m) = summ {
        sum = _mm256_add_ps(sum, m);
    }
    _mm256_storeu_ps(out[..8].as_mut_ptr(), sum);
}

/// The 8 f16 values at `p` as f32.
#[inline(always)]
pub(crate) unsafe fn f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// The i32 at `p` in every lane: an activation quad for all 8 rows.
#[inline(always)]
pub(crate) unsafe fn quad(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

#[inline(always)]
pub(crate) fn check(ty: QuantType, cols: usize, group: &[u8], x: &[u8]) {
    let nb = cols / QK;
    assert!(
        cols % QK == 0 && group.len() >= 16 * nb * ty.type_size() && x.len() >= nb * 34,
        "{ty} interleaved dot: group or vector too short for {cols} values"
    );
}

/// Half `h` of block `b` of a group in halves (`interleave`'s `_halves` packs) whose half
/// blocks are `hb` bytes, with the group's prefetch: the stream moves `hb` bytes per half block
/// taken, evenly over both halves.
#[inline(always)]
pub(crate) unsafe fn half_block(gp: *const u8, nb: usize, hb: usize, h: usize, b: usize, next: *const u8) -> *const u8 {
    let at = hb * (nb * h + b);
    prefetch_group_ahead(gp, 2 * hb * nb, at, hb, next);
    gp.add(at)
}

/// Activation blocks whose quad sums the Q4_0 and Q5_0 kernels keep at a time.
pub(crate) const BIAS_CHUNK: usize = 64;

/// 16 in each byte whose bit `l` is set in `high`, else 0 (`l` < 8): a shift within 16-bit lanes
/// that keeps each byte's bit 4 inside its byte, and a mask.
#[inline(always)]
pub(crate) unsafe fn high_bit_16(high: __m256i, l: usize) -> __m256i {
    let moved = match l {
        0 => _mm256_slli_epi16(high, 4),
        1 => _mm256_slli_epi16(high, 3),
        2 => _mm256_slli_epi16(high, 2),
        3 => _mm256_slli_epi16(high, 1),
        4 => high,
        5 => _mm256_srli_epi16(high, 1),
        6 => _mm256_srli_epi16(high, 2),
        _ => _mm256_srli_epi16(high, 3),
    };
    _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
}

/// Bytes per half block of a Q4_0 or Q5_0 group unpacked for many vectors (`Unpacked16`): the
/// 8 quads of the 8 rows as unsigned bytes (`q`, before the offset), then the rows' `d` as f32.
pub(crate) const UNPACKED_HALF_BLOCK: usize = 8 * 32 + 8 * 4;

/// Sizes `buf` for the unpacked form of a group of `ty` and checks the shapes; returns the block
/// count.
#[inline(always)]
pub(crate) fn unpack_check(ty: QuantType, cols: usize, group: &[u8], buf: &mut Vec<u8>) -> usize {
    buf.resize(2 * (cols / QK) * UNPACKED_HALF_BLOCK, 0);
    super::check_unpack(ty, cols, 16, group, buf.len(), 2 * UNPACKED_HALF_BLOCK)
}

/// The nibbles of the 32 bytes `d` as two vectors of bytes: the low ones, then the high ones.
#[inline(always)]
pub(crate) unsafe fn nibbles(d: __m256i) -> [__m256i; 2] {
    let low = _mm256_set1_epi8(0x0F);
    [_mm256_and_si256(d, low), _mm256_and_si256(_mm256_srli_epi16(d, 4), low)]
}

/// Generates the interleaved kernels over a `$dot_us8(u8 vector, i8 vector) -> i32x8`.
macro_rules! il_kernels {
    ($tf:literal, $dot_us8:path) => {
        /// Adds the interleaved kernels below to `s`.
        fn add_interleaved(s: &mut KernelSet) {
            s[QuantType::Q4_0].interleaved = Some(Interleaved16 {
                unpacked: Some(Unpacked16 { unpack: unpack16_q4_0, dot16: dot16_unpacked::<8> }),
                ..Interleaved16::new(pack_q4_0_halves, dot16_q4_0)
            });
            s[QuantType::Q5_0].interleaved = Some(Interleaved16 {
                unpacked: Some(Unpacked16 { unpack: unpack16_q5_0, dot16: dot16_unpacked::<16> }),
                ..Interleaved16::new(pack_q5_0_halves, dot16_q5_0)
            });
            s[QuantType::Q4_1].interleaved = Some(Interleaved16::new(pack_q4_1_halves, dot16_q4_1));
            s[QuantType::Q8_0].interleaved = Some(Interleaved16::new(pack_q8_0_signed_halves, dot16_q8_0));
        }

        /// `c · Σ y` of each quad `l` of each activation block `b` in `blocks`, at
        /// `bias[b - blocks.start][l]`: the offset of Q4_0's (`c = 8`) and Q5_0's (`c = 16`)
        /// quants, taken off their products with the unsigned quants. Kept in memory, so the
        /// kernels broadcast each from there.
        #[inline(always)]
        unsafe fn quad_bias(xp: *const u8, blocks: std::ops::Range<usize>, c: i8, bias: &mut [[i32; 8]; BIAS_CHUNK]) {
            for (b, bias) in blocks.zip(bias.iter_mut()) {
                let s = $dot_us8(_mm256_set1_epi8(c), load(xp.add(34 * b + 2)));
                _mm256_storeu_si256(bias.as_mut_ptr() as *mut __m256i, s);
            }
        }

        /// Q4_0 half block (`pack_q4_0_halves`): dword `i` of the nibbles of the 8 rows for
        /// `i = 0..4`, then the rows' `d`. Dword `i`'s low nibbles are elements `4i..4i+4`, its
        /// high nibbles `16+4i..`: quads `i` and `i + 4`. Σ (q - 8)·y as Σ q·y - 8·Σ y (no
        /// pair of products saturates: q ≤ 15), the same i32 as the single-row kernel's.
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
            let mut bias = [[0i32; 8]; BIAS_CHUNK];
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..nb).step_by(BIAS_CHUNK) {
                    let blocks = c..nb.min(c + BIAS_CHUNK);
                    quad_bias(xp, blocks.clone(), 8, &mut bias);
                    for (b, bias) in blocks.zip(bias.iter()) {
                        let (g, bx) = (half_block(gp, nb, 144, h, b, next), xp.add(34 * b));
                        let scale = _mm256_mul_ps(f16x8(g.add(128)), _mm256_set1_ps(f16_at(bx)));
                        for i in 0..4 {
                            let d = load(g.add(32 * i));
                            let quads = nibbles(d);
                            for (k, q) in quads.into_iter().enumerate() {
                                let l = i + 4 * k;
                                let p = $dot_us8(q, quad(bx.add(2 + 4 * l)));
                                let p = _mm256_sub_epi32(p, _mm256_set1_epi32(*bias.get_unchecked(l)));
                                acc[l] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[l]);
                            }
                        }
                    }
                }
                reduce(acc, None, &mut out[8 * h..]);
            }
        }

        /// Q5_0 half block (`pack_q5_0_halves`): the nibbles as Q4_0's, then the high bits (bit
        /// `l` of byte `4r + k`: element `4l + k` of row `r`), then the rows' `d`. Σ (q - 16)·y as
        /// Σ q·y - 16·Σ y with q = nibble | high bit · 16 (no pair of products saturates:
        /// q ≤ 31), the same i32 as the single-row kernel's.
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
            let mut bias = [[0i32; 8]; BIAS_CHUNK];
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..nb).step_by(BIAS_CHUNK) {
                    let blocks = c..nb.min(c + BIAS_CHUNK);
                    quad_bias(xp, blocks.clone(), 16, &mut bias);
                    for (b, bias) in blocks.zip(bias.iter()) {
                        let (g, bx) = (half_block(gp, nb, 176, h, b, next), xp.add(34 * b));
                        let scale = _mm256_mul_ps(f16x8(g.add(160)), _mm256_set1_ps(f16_at(bx)));
                        let high = load(g.add(128));
                        for i in 0..4 {
                            let d = load(g.add(32 * i));
                            let quads = nibbles(d);
                            for (k, q) in quads.into_iter().enumerate() {
                                let l = i + 4 * k;
                                let q = _mm256_or_si256(q, high_bit_16(high, l));
                                let p = $dot_us8(q, quad(bx.add(2 + 4 * l)));
                                let p = _mm256_sub_epi32(p, _mm256_set1_epi32(*bias.get_unchecked(l)));
                                acc[l] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[l]);
                            }
                        }
                    }
                }
                reduce(acc, None, &mut out[8 * h..]);
            }
        }

        /// Unpacks a Q4_0 group (`pack_q4_0_halves`) for `dot16_unpacked::<8>`.
        #[target_feature(enable = $tf)]
        pub unsafe fn unpack16_q4_0(cols: usize, group: &[u8], buf: &mut Vec<u8>) {
            let nb = unpack_check(QuantType::Q4_0, cols, group, buf);
            let (gp, up) = (group.as_ptr(), buf.as_mut_ptr());
            for hb in 0..2 * nb {
                let (g, u) = (gp.add(144 * hb), up.add(UNPACKED_HALF_BLOCK * hb));
                for i in 0..4 {
                    let d = load(g.add(32 * i));
                    let quads = nibbles(d);
                    for (k, q) in quads.into_iter().enumerate() {
                        _mm256_storeu_si256(u.add(32 * (i + 4 * k)) as *mut __m256i, q);
                    }
                }
                _mm256_storeu_ps(u.add(256) as *mut f32, f16x8(g.add(128)));
            }
        }

        /// Unpacks a Q5_0 group (`pack_q5_0_halves`) for `dot16_unpacked::<16>`.
        #[target_feature(enable = $tf)]
        pub unsafe fn unpack16_q5_0(cols: usize, group: &[u8], buf: &mut Vec<u8>) {
            let nb = unpack_check(QuantType::Q5_0, cols, group, buf);
            let (gp, up) = (group.as_ptr(), buf.as_mut_ptr());
            for hb in 0..2 * nb {
                let (g, u) = (gp.add(176 * hb), up.add(UNPACKED_HALF_BLOCK * hb));
                let high = load(g.add(128));
                for i in 0..4 {
                    let d = load(g.add(32 * i));
                    let quads = nibbles(d);
                    for (k, q) in quads.into_iter().enumerate() {
                        let l = i + 4 * k;
                        let q = _mm256_or_si256(q, high_bit_16(high, l));
                        _mm256_storeu_si256(u.add(32 * l) as *mut __m256i, q);
                    }
                }
                _mm256_storeu_ps(u.add(256) as *mut f32, f16x8(g.add(160)));
            }
        }

        /// The Q4_0 (`C = 8`) or Q5_0 (`C = 16`) interleaved product from a group unpacked by
        /// `unpack16_q4_0` / `unpack16_q5_0`: `dot16_q4_0` / `dot16_q5_0` with each quad and
        /// scale loaded instead of decoded, the same operations on the same values after that.
        #[target_feature(enable = $tf)]
        pub unsafe fn dot16_unpacked<const C: i8>(
            cols: usize,
            buf: &[u8],
            x: &[u8],
            _sums: &[f32],
            out: &mut [f32; 16],
            _next: *const u8,
        ) {
            let ty = if C == 8 { QuantType::Q4_0 } else { QuantType::Q5_0 };
            let nb = super::check_unpacked_dot(ty, cols, buf, x, 2 * UNPACKED_HALF_BLOCK);
            let (up, xp) = (buf.as_ptr(), x.as_ptr());
            let mut bias = [[0i32; 8]; BIAS_CHUNK];
            // One activation's quad sums serve both halves where they fit at once.
            let once = nb <= BIAS_CHUNK;
            if once {
                quad_bias(xp, 0..nb, C, &mut bias);
            }
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..nb).step_by(BIAS_CHUNK) {
                    let blocks = c..nb.min(c + BIAS_CHUNK);
                    if !once {
                        quad_bias(xp, blocks.clone(), C, &mut bias);
                    }
                    for (b, bias) in blocks.zip(bias.iter()) {
                        let (u, bx) = (up.add(UNPACKED_HALF_BLOCK * (nb * h + b)), xp.add(34 * b));
                        let d = _mm256_loadu_ps(u.add(256) as *const f32);
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(f16_at(bx)));
                        for (l, acc) in acc.iter_mut().enumerate() {
                            let p = $dot_us8(load(u.add(32 * l)), quad(bx.add(2 + 4 * l)));
                            let p = _mm256_sub_epi32(p, _mm256_set1_epi32(*bias.get_unchecked(l)));
                            *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *acc);
                        }
                    }
                }
                reduce(acc, None, &mut out[8 * h..]);
            }
        }

        /// Q4_1 half block (`pack_q4_1_halves`): dword `i` of the nibbles of the 8 rows for
        /// `i = 0..4`, then the rows' `d`, then their `m`. Dword `i`'s low nibbles are elements
        /// `4i..4i+4`, its high nibbles `16+4i..`: quads `i` and `i + 4`.
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
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut summ = _mm256_setzero_ps();
                for b in 0..nb {
                    let (g, bx) = (half_block(gp, nb, 160, h, b, next), xp.add(34 * b));
                    let scale = _mm256_mul_ps(f16x8(g.add(128)), _mm256_set1_ps(f16_at(bx)));
                    for i in 0..4 {
                        let d = load(g.add(32 * i));
                        let quads = nibbles(d);
                        for (k, q) in quads.into_iter().enumerate() {
                            let l = i + 4 * k;
                            let p = $dot_us8(q, quad(bx.add(2 + 4 * l)));
                            acc[l] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[l]);
                        }
                    }
                    // Fused, as the single-row kernels' `summ = m.mul_add(s, summ)`.
                    summ = _mm256_fmadd_ps(f16x8(g.add(144)), _mm256_set1_ps(*sums.get_unchecked(b)), summ);
                }
                reduce(acc, Some(summ), &mut out[8 * h..]);
            }
        }

        /// Q8_0 half block (`pack_q8_0_signed_halves`): quad `l` of the 8 rows (signed) for
        /// `l = 0..8`, then the rows' `d`.
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
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); 8];
                for b in 0..nb {
                    let (g, bx) = (half_block(gp, nb, 272, h, b, next), xp.add(34 * b));
                    let scale = _mm256_mul_ps(f16x8(g.add(256)), _mm256_set1_ps(f16_at(bx)));
                    for (l, acc) in acc.iter_mut().enumerate() {
                        let q = load(g.add(32 * l));
                        let y = quad(bx.add(2 + 4 * l));
                        // |q| · sign(y, q), as the single-row kernel's `dot_ss8`.
                        let p = $dot_us8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
                        *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *acc);
                    }
                }
                reduce(acc, None, &mut out[8 * h..]);
            }
        }
    };
}
#[allow(unused_imports)] // used by avxvnni_il.rs
pub(crate) use il_kernels;

il_kernels!("avx2,fma,f16c", dot_us8_avx2);

/// Q8_0 weighted row sums over a group packed by `pack_q8_0_axpy_signed`: `y += Σ_{r ∈ lanes}
/// coeffs[r] · row r` as `scalar::axpy16_q8_0_quantized` defines it (the same bits): per block,
/// the 16 rows' `coeff · d` quantized to 8 bits `t`, then per column the integer sums
/// `Σ t · q` as `|t| · sign(q, t)` (at most 127 · 128 per product, so no pair saturates), and one
/// FMA of each sum by the block's scale.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let masked: [f32; 16] = std::array::from_fn(|r| if lanes.contains(&r) { coeffs[r] } else { 0.0 });
    let c = [
        _mm256_loadu_ps(masked.as_ptr()),
        _mm256_loadu_ps(masked.as_ptr().add(8)),
    ];
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let big = _mm256_set1_ps(f32::MAX);
    // Eight blocks at a time: their scales' maxima, divisions and checks in one register each
    // instead of a chain of scalar steps per block, which stalled the products behind it.
    for b0 in (0..nb).step_by(8) {
        let n = (nb - b0).min(8);
        let mut s = [[_mm256_setzero_ps(); 2]; 8];
        let mut amax = [_mm256_setzero_ps(); 8];
        let mut bad = 0u32;
        for i in 0..n {
            let g = gp.add(544 * (b0 + i));
            s[i] = [
                _mm256_mul_ps(c[0], f16x8(g.add(512))),
                _mm256_mul_ps(c[1], f16x8(g.add(528))),
            ];
            let a = [_mm256_and_ps(s[i][0], abs_mask), _mm256_and_ps(s[i][1], abs_mask)];
            // Not finite (or NaN): the block adds NaN, as the scalar definition does.
            let not_finite = _mm256_or_ps(
                _mm256_cmp_ps(a[0], big, _CMP_NLE_UQ),
                _mm256_cmp_ps(a[1], big, _CMP_NLE_UQ),
            );
            bad |= ((_mm256_movemask_ps(not_finite) != 0) as u32) << i;
            amax[i] = _mm256_max_ps(a[0], a[1]);
        }
        // As `scalar::axpy_coeff_scale`, lane i for block b0 + i: T = amax / 127, 1 / T, and
        // whether T is a normal number (else the block adds nothing).
        let t_scale = _mm256_div_ps(lane_maxima(amax), _mm256_set1_ps(127.0));
        let id = _mm256_div_ps(_mm256_set1_ps(1.0), t_scale);
        let normal = _mm256_movemask_ps(_mm256_cmp_ps(t_scale, _mm256_set1_ps(f32::MIN_POSITIVE), _CMP_GE_OQ));
        let mut scales = [0f32; 8];
        _mm256_storeu_ps(scales.as_mut_ptr(), t_scale);
        for i in 0..n {
            let b = b0 + i;
            let (g, yb) = (gp.add(544 * b), yp.add(32 * b));
            prefetch_group_ahead(gp, 544 * nb, 544 * b, 544, next);
            if bad >> i & 1 != 0 {
                for k in 0..4 {
                    let v = _mm256_loadu_ps(yb.add(8 * k));
                    _mm256_storeu_ps(yb.add(8 * k), _mm256_add_ps(v, _mm256_set1_ps(f32::NAN)));
                }
                continue;
            }
            if normal >> i & 1 == 0 {
                continue;
            }
            // Rounded to even (the default MXCSR mode), as `round_ties_even`; |t| ≤ 127.
            let id = _mm256_permutevar8x32_ps(id, _mm256_set1_epi32(i as i32));
            let t = [
                _mm256_cvtps_epi32(_mm256_mul_ps(s[i][0], id)),
                _mm256_cvtps_epi32(_mm256_mul_ps(s[i][1], id)),
            ];
            // i8 lanes: per 128-bit half, t0..3 t8..11 (low half) and t4..7 t12..15 (high half).
            let t8 = _mm256_packs_epi16(_mm256_packs_epi32(t[0], t[1]), _mm256_setzero_si256());
            let quads = [
                _mm256_extract_epi32::<0>(t8),
                _mm256_extract_epi32::<4>(t8),
                _mm256_extract_epi32::<1>(t8),
                _mm256_extract_epi32::<5>(t8),
            ];
            let mut acc = [_mm256_setzero_si256(); 4];
            for (k, &tq) in quads.iter().enumerate() {
                let tk = _mm256_set1_epi32(tq);
                let ak = _mm256_sign_epi8(tk, tk);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let q = load(g.add(128 * k + 32 * j));
                    *acc = _mm256_add_epi32(*acc, dot_us8_avx2(ak, _mm256_sign_epi8(q, tk)));
                }
            }
            let ts = _mm256_set1_ps(scales[i]);
            for (j, acc) in acc.iter().enumerate() {
                let v = _mm256_loadu_ps(yb.add(8 * j));
                _mm256_storeu_ps(yb.add(8 * j), _mm256_fmadd_ps(ts, _mm256_cvtepi32_ps(*acc), v));
            }
        }
    }
}

/// Lane i: the largest of the 8 lanes of `m[i]`, by a transposing tree of maxima (the maximum
/// of finite values is exact, so the order does not matter).
#[inline(always)]
unsafe fn lane_maxima(m: [__m256; 8]) -> __m256 {
    let lo = max_of_quads(max_of_pairs(m[0], m[1]), max_of_pairs(m[2], m[3]));
    let hi = max_of_quads(max_of_pairs(m[4], m[5]), max_of_pairs(m[6], m[7]));
    _mm256_max_ps(
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    )
}

/// Per 128-bit half: [max(a0, a2), max(b0, b2), max(a1, a3), max(b1, b3)].
#[inline(always)]
unsafe fn max_of_pairs(a: __m256, b: __m256) -> __m256 {
    _mm256_max_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
}

/// Per 128-bit half, from `max_of_pairs` of (a, b) and of (c, d): the half's maximum of a, b,
/// c and d.
#[inline(always)]
unsafe fn max_of_quads(ab: __m256, cd: __m256) -> __m256 {
    _mm256_max_ps(
        _mm256_shuffle_ps::<0b01_00_01_00>(ab, cd),
        _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd),
    )
}

