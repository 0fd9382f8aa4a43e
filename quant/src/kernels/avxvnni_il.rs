//! Matrix-vector kernels of the "avxvnni" set over weights interleaved in groups of 16 rows
//! (`kernels::Interleaved16`): the kernels of `avx2_il.rs` (two halves of 8 rows, one ymm lane
//! per row) instantiated with the VEX `vpdpbusd`, and Q8_0 over unsigned quants. Each row's
//! result is **bit-identical** to the set's single-row kernel, as there.
#![allow(clippy::missing_safety_doc)] // the contract of `Interleaved16` (kernels/mod.rs)

use std::arch::x86_64::*;

use super::avx2::{bits_32, f16_at, load};
use super::avx2_il::{check, f16x8, half_block, il_kernels, quad, reduce};
use super::avxvnni::dot_us8_avxvnni;
use super::interleave::{pack_q4_0_halves, pack_q4_1_halves, pack_q5_0_halves, pack_q8_0_halves};
use super::table::KernelSet;
use super::Interleaved16;
use crate::formats::{QuantType, QK};

/// Adds the set's interleaved kernels to `s`.
pub fn add_to(s: &mut KernelSet) {
    s[QuantType::Q4_0].interleaved = Some(Interleaved16 {
        pack: pack_q4_0_halves,
        dot16: dot16_q4_0,
    });
    s[QuantType::Q5_0].interleaved = Some(Interleaved16 {
        pack: pack_q5_0_halves,
        dot16: dot16_q5_0,
    });
    s[QuantType::Q4_1].interleaved = Some(Interleaved16 {
        pack: pack_q4_1_halves,
        dot16: dot16_q4_1,
    });
    s[QuantType::Q8_0].interleaved = Some(Interleaved16 {
        pack: pack_q8_0_halves,
        dot16: dot16_q8_0_unsigned,
    });
}

il_kernels!("avx2,fma,f16c,avxvnni", dot_us8_avxvnni);

/// Blocks whose activation quad sums [`dot16_q8_0_unsigned`] computes at a time.
const CHUNK: usize = 64;

/// Q8_0 half block (`pack_q8_0_halves`): quad `l` of the 8 rows as `q + 128` (unsigned) for
/// `l = 0..8`, then the rows' `d`. Each quad's sum starts at `-128 · Σ y` of its activations, so
/// one `vpdpbusd` per quad gives exactly `Σ q·y`, as the single-row kernel's sign trick does
/// (no sum saturates); the `-128 · Σ y` are computed once per block and broadcast from memory.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn dot16_q8_0_unsigned(
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
    let u128 = _mm256_set1_epi8(-128); // 0x80: 128 as an unsigned byte
    let mut bias = [[0i32; 8]; CHUNK];
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..nb).step_by(CHUNK) {
            let blocks = c..nb.min(c + CHUNK);
            for (b, bias) in blocks.clone().zip(bias.iter_mut()) {
                // Lane l: 128 · Σ of quad l of the block's activations, negated.
                let y = load(xp.add(34 * b + 2));
                let s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u128, y);
                _mm256_storeu_si256(
                    bias.as_mut_ptr() as *mut __m256i,
                    _mm256_sub_epi32(_mm256_setzero_si256(), s),
                );
            }
            for (b, bias) in blocks.zip(bias.iter()) {
                let (g, bx) = (half_block(gp, nb, 272, h, b, next), xp.add(34 * b));
                let scale = _mm256_mul_ps(f16x8(g.add(256)), _mm256_set1_ps(f16_at(bx)));
                for (l, acc) in acc.iter_mut().enumerate() {
                    let start = _mm256_set1_epi32(*bias.get_unchecked(l));
                    let p = _mm256_dpbusd_avx_epi32(start, load(g.add(32 * l)), quad(bx.add(2 + 4 * l)));
                    *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), *acc);
                }
            }
        }
        reduce(acc, None, &mut out[8 * h..]);
    }
}
