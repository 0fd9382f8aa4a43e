//! Scalar reference dot products: one weight row against one activation row quantized to the
//! weight format's `vec_dot_type`. Integer sums per block, float accumulation across blocks,
//! as ggml. Every SIMD kernel is tested against these.

use crate::blocks::float::{bf16_to_f32, f16_to_f32, f32_to_f16, read_f16};
use crate::blocks::kquants::{layout::*, q3_k_scales, scale_min_k4};
use crate::formats::{QuantType, QK, QK_K};

#[inline(always)]
pub(crate) fn q8k_d(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[Q8_D], b[Q8_D + 1], b[Q8_D + 2], b[Q8_D + 3]])
}

#[inline(always)]
pub(crate) fn q8k_bsum(b: &[u8], j: usize) -> i32 {
    i16::from_le_bytes([b[Q8_BSUMS + 2 * j], b[Q8_BSUMS + 2 * j + 1]]) as i32
}

#[inline(always)]
fn dot_i8(a: &[i8], b: &[u8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| a as i32 * b as i8 as i32)
        .sum()
}

// One copy: small functions are otherwise copied into each codegen unit that uses them, and
// the table tests compare function addresses.
#[inline(never)]
pub fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for i in 0..n {
        let a = f32::from_le_bytes(w[4 * i..4 * i + 4].try_into().unwrap());
        let b = f32::from_le_bytes(x[4 * i..4 * i + 4].try_into().unwrap());
        sum += (a * b) as f64;
    }
    sum as f32
}

#[inline(never)] // as dot_f32
pub fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for i in 0..n {
        let a = f16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
        let b = f16_to_f32(u16::from_le_bytes([x[2 * i], x[2 * i + 1]]));
        sum += (a * b) as f64;
    }
    sum as f32
}

#[inline(never)] // as dot_f32
pub fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f64;
    for i in 0..n {
        let a = bf16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]]));
        let b = bf16_to_f32(u16::from_le_bytes([x[2 * i], x[2 * i + 1]]));
        sum += (a * b) as f64;
    }
    sum as f32
}

/// Legacy formats: unpack one block to levels (already centred for the symmetric ones) and the
/// offset `m` (0 for symmetric formats), then Σ d_w·d_x·Σq·y + m·d_x·Σy.
#[inline(always)]
fn dot_legacy(
    n: usize,
    w: &[u8],
    x: &[u8],
    bytes: usize,
    unpack: impl Fn(&[u8], &mut [i8; QK]) -> (f32, f32),
) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK];
    for (bw, bx) in w.chunks_exact(bytes).zip(x.chunks_exact(34)).take(n / QK) {
        let (d, m) = unpack(bw, &mut q);
        let dx = read_f16(bx, 0);
        let ys = &bx[2..34];
        let sumi = dot_i8(&q, ys);
        sum += sumi as f32 * (d * dx);
        if m != 0.0 {
            let sumy: i32 = ys.iter().map(|&b| b as i8 as i32).sum();
            sum += m * (sumy as f32 * dx);
        }
    }
    sum
}

pub fn dot_q4_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_legacy(n, w, x, 18, |b, q| {
        for j in 0..16 {
            q[j] = (b[2 + j] & 0xF) as i8 - 8;
            q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
        }
        (read_f16(b, 0), 0.0)
    })
}

pub fn dot_q4_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_legacy(n, w, x, 20, |b, q| {
        for j in 0..16 {
            q[j] = (b[4 + j] & 0xF) as i8;
            q[j + 16] = (b[4 + j] >> 4) as i8;
        }
        (read_f16(b, 0), read_f16(b, 2))
    })
}

#[inline(always)]
fn unpack_q5(qs: &[u8], qh: u32, offset: i8, q: &mut [i8; QK]) {
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as u8;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
        q[j] = ((qs[j] & 0xF) | h0) as i8 - offset;
        q[j + 16] = ((qs[j] >> 4) | h1) as i8 - offset;
    }
}

pub fn dot_q5_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_legacy(n, w, x, 22, |b, q| {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        unpack_q5(&b[6..22], qh, 16, q);
        (read_f16(b, 0), 0.0)
    })
}

pub fn dot_q5_1(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_legacy(n, w, x, 24, |b, q| {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        unpack_q5(&b[8..24], qh, 0, q);
        (read_f16(b, 0), read_f16(b, 2))
    })
}

pub fn dot_q8_0(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_legacy(n, w, x, 34, |b, q| {
        for j in 0..32 {
            q[j] = b[2 + j] as i8;
        }
        (read_f16(b, 0), 0.0)
    })
}

/// Σ over the 16-element groups of scale[g] · Σ q·y, for levels `q` of a whole super-block.
#[inline(always)]
fn grouped16(q: &[i8; QK_K], scales: &[i32; 16], bx: &[u8]) -> i32 {
    (0..16)
        .map(|g| {
            scales[g]
                * dot_i8(
                    &q[16 * g..16 * g + 16],
                    &bx[Q8_QS + 16 * g..Q8_QS + 16 * g + 16],
                )
        })
        .sum()
}

pub fn dot_q2_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK_K];
    for (bw, bx) in w
        .chunks_exact(Q2_BYTES)
        .zip(x.chunks_exact(Q8_BYTES))
        .take(n / QK_K)
    {
        for half in 0..2 {
            for s in 0..4 {
                for i in 0..32 {
                    q[128 * half + 32 * s + i] = ((bw[Q2_QS + 32 * half + i] >> (2 * s)) & 3) as i8;
                }
            }
        }
        let sc = &bw[Q2_SCALES..Q2_SCALES + 16];
        let scales: [i32; 16] = std::array::from_fn(|g| (sc[g] & 0xF) as i32);
        let summs: i32 = (0..16).map(|g| (sc[g] >> 4) as i32 * q8k_bsum(bx, g)).sum();
        let dy = q8k_d(bx);
        let dall = dy * read_f16(bw, Q2_D);
        let dmin = dy * read_f16(bw, Q2_DMIN);
        sum += dall * grouped16(&q, &scales, bx) as f32 - dmin * summs as f32;
    }
    sum
}

pub fn dot_q3_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK_K];
    for (bw, bx) in w
        .chunks_exact(Q3_BYTES)
        .zip(x.chunks_exact(Q8_BYTES))
        .take(n / QK_K)
    {
        let hm = &bw[Q3_HMASK..Q3_HMASK + 32];
        for half in 0..2 {
            for s in 0..4 {
                let bit = 1u8 << (4 * half + s);
                for i in 0..32 {
                    let low = ((bw[Q3_QS + 32 * half + i] >> (2 * s)) & 3) as i8;
                    q[128 * half + 32 * s + i] = low - if hm[i] & bit != 0 { 0 } else { 4 };
                }
            }
        }
        let sc = q3_k_scales(&bw[Q3_SCALES..Q3_SCALES + 12]);
        let scales: [i32; 16] = std::array::from_fn(|g| sc[g] as i32);
        let d = read_f16(bw, Q3_D) * q8k_d(bx);
        sum += d * grouped16(&q, &scales, bx) as f32;
    }
    sum
}

/// Q4_K and Q5_K share the 8 × 32 scale/min structure.
#[inline(always)]
fn dot_scale_min_k(q: &[i8; QK_K], bw: &[u8], bx: &[u8]) -> f32 {
    let sc = &bw[4..16];
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, sc);
        sumi += s as i32
            * dot_i8(
                &q[32 * j..32 * j + 32],
                &bx[Q8_QS + 32 * j..Q8_QS + 32 * j + 32],
            );
        summ += m as i32 * (q8k_bsum(bx, 2 * j) + q8k_bsum(bx, 2 * j + 1));
    }
    let dy = q8k_d(bx);
    dy * read_f16(bw, 0) * sumi as f32 - dy * read_f16(bw, 2) * summ as f32
}

pub fn dot_q4_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK_K];
    for (bw, bx) in w
        .chunks_exact(Q4_BYTES)
        .zip(x.chunks_exact(Q8_BYTES))
        .take(n / QK_K)
    {
        for k in 0..4 {
            for i in 0..32 {
                let b = bw[Q4_QS + 32 * k + i];
                q[64 * k + i] = (b & 0xF) as i8;
                q[64 * k + 32 + i] = (b >> 4) as i8;
            }
        }
        sum += dot_scale_min_k(&q, bw, bx);
    }
    sum
}

pub fn dot_q5_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK_K];
    for (bw, bx) in w
        .chunks_exact(Q5_BYTES)
        .zip(x.chunks_exact(Q8_BYTES))
        .take(n / QK_K)
    {
        for k in 0..4 {
            for i in 0..32 {
                let b = bw[Q5_QS + 32 * k + i];
                let h = bw[Q5_QH + i] >> (2 * k);
                q[64 * k + i] = ((b & 0xF) | ((h & 1) << 4)) as i8;
                q[64 * k + 32 + i] = ((b >> 4) | ((h & 2) << 3)) as i8;
            }
        }
        sum += dot_scale_min_k(&q, bw, bx);
    }
    sum
}

pub fn dot_q6_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK_K];
    for (bw, bx) in w
        .chunks_exact(Q6_BYTES)
        .zip(x.chunks_exact(Q8_BYTES))
        .take(n / QK_K)
    {
        for k in 0..2 {
            for i in 0..32 {
                let l0 = bw[Q6_QL + 64 * k + i];
                let l1 = bw[Q6_QL + 64 * k + 32 + i];
                let h = bw[Q6_QH + 32 * k + i];
                let e = 128 * k + i;
                q[e] = ((l0 & 0xF) | ((h & 3) << 4)) as i8 - 32;
                q[e + 32] = ((l1 & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
                q[e + 64] = ((l0 >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
                q[e + 96] = ((l1 >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let scales: [i32; 16] = std::array::from_fn(|g| bw[Q6_SCALES + g] as i8 as i32);
        let d = read_f16(bw, Q6_D) * q8k_d(bx);
        sum += d * grouped16(&q, &scales, bx) as f32;
    }
    sum
}

pub fn dot_q8_k(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (bw, bx) in w
        .chunks_exact(Q8_BYTES)
        .zip(x.chunks_exact(Q8_BYTES))
        .take(n / QK_K)
    {
        let qw: &[i8; QK_K] = &std::array::from_fn(|i| bw[Q8_QS + i] as i8);
        let sumi = dot_i8(qw, &bx[Q8_QS..Q8_QS + QK_K]);
        sum += q8k_d(bw) * q8k_d(bx) * sumi as f32;
    }
    sum
}

/// Legacy offset formats with precomputed activation block sums (`sums[i] = d_x·Σy`).
#[inline(always)]
fn dot_legacy_sums(
    n: usize,
    w: &[u8],
    x: &[u8],
    sums: &[f32],
    bytes: usize,
    unpack: impl Fn(&[u8], &mut [i8; QK]) -> (f32, f32),
) -> f32 {
    let mut sum = 0.0f32;
    let mut q = [0i8; QK];
    for ((bw, bx), s) in w
        .chunks_exact(bytes)
        .zip(x.chunks_exact(34))
        .zip(sums)
        .take(n / QK)
    {
        let (d, m) = unpack(bw, &mut q);
        sum += dot_i8(&q, &bx[2..34]) as f32 * (d * read_f16(bx, 0)) + m * s;
    }
    sum
}

pub fn dot_q4_1_sums(n: usize, w: &[u8], x: &[u8], sums: &[f32]) -> f32 {
    assert!(sums.len() >= n / QK, "q4_1 dot: too few block sums");
    dot_legacy_sums(n, w, x, sums, 20, |b, q| {
        for j in 0..16 {
            q[j] = (b[4 + j] & 0xF) as i8;
            q[j + 16] = (b[4 + j] >> 4) as i8;
        }
        (read_f16(b, 0), read_f16(b, 2))
    })
}

pub fn dot_q5_1_sums(n: usize, w: &[u8], x: &[u8], sums: &[f32]) -> f32 {
    assert!(sums.len() >= n / QK, "q5_1 dot: too few block sums");
    dot_legacy_sums(n, w, x, sums, 24, |b, q| {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        unpack_q5(&b[8..24], qh, 0, q);
        (read_f16(b, 0), read_f16(b, 2))
    })
}

/// Quantizes one activation row to Q8_0 (`crate::blocks::legacy::quantize_q8_0_activations`)
/// and its block sums (`block_sum`): the reference of [`super::QuantizeActsFn`].
pub fn quantize_q8_0_acts(src: &[f32], dst: &mut [u8], sums: &mut [f32]) {
    crate::blocks::legacy::quantize_q8_0_activations(src, dst);
    for ((s, x), out) in src.chunks_exact(QK).zip(dst.chunks_exact(34)).zip(sums) {
        *out = block_sum(s, x);
    }
}

/// `s = d·Σq` of one Q8_0 block of an activation row (the `sums` of
/// [`crate::kernels::DotSumsFn`]), computed as ggml computes the `s` of its Q8_1 blocks: from the
/// unrounded scale `d = max|x|/127` of the block's source values `src`, then rounded to f16.
/// Using the same rounding keeps Q4_1/Q5_1 products within float-summation order of ggml's.
fn block_sum(src: &[f32], block: &[u8]) -> f32 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let sum = block[2..34].iter().map(|&v| v as i8 as i32).sum::<i32>() as f32;
    f16_to_f32(f32_to_f16(amax / 127.0 * sum))
}

/// Q8_0 [`super::AxpyFn`] reference: row by row, `y = fma(a · d, q, y)`.
pub fn axpy_q8_0(
    n: usize,
    w: &[u8],
    row_bytes: usize,
    rows: &[usize],
    coeffs: &[f32],
    y: &mut [f32],
) {
    super::check_axpy(QuantType::Q8_0, n, w, row_bytes, rows, coeffs, y);
    for (&r, &a) in rows.iter().zip(coeffs) {
        let row = &w[r * row_bytes..];
        for (b, out) in y[..n].chunks_exact_mut(QK).enumerate() {
            let blk = &row[b * 34..b * 34 + 34];
            let ad = a * read_f16(blk, 0);
            for (o, &q) in out.iter_mut().zip(&blk[2..]) {
                *o = ad.mul_add(q as i8 as f32, *o);
            }
        }
    }
}

/// The weighted row sums of the interleaved Q8_0 kernels (`InterleavedAxpy16`), on 16 rows in
/// their row-major blocks: `y += Σ_{r ∈ lanes} coeffs[r] · row r`, with each block's 16
/// products `s_r = coeffs[r] · d_r` (0 outside `lanes`) quantized to 8 bits as ggml quantizes
/// activations to Q8_0 ([`axpy_coeff_scale`]: `T = max |s_r| / 127`, `t_r = s_r · (1 / T)`
/// rounded to even), so that the sums over the rows are integer dot products:
/// `y[c] = fma(T, Σ_r t_r · q_r[c], y[c])`. A block whose `T` is zero or below the normal range
/// adds nothing; one with a product that is not finite adds NaN.
///
/// # Panics
/// If `rows` does not hold 16 rows of `cols` values, `y` is shorter than `cols`, or `lanes`
/// reaches past 16.
pub fn axpy16_q8_0_quantized(
    cols: usize,
    rows: &[u8],
    coeffs: &[f32; 16],
    lanes: std::ops::Range<usize>,
    y: &mut [f32],
) {
    let (nb, rb) = (cols / QK, cols / QK * 34);
    assert!(
        cols % QK == 0 && rows.len() >= 16 * rb && y.len() >= cols && lanes.end <= 16,
        "q8_0 quantized axpy: rows or output too short for {cols} values, or lanes {lanes:?}"
    );
    for b in 0..nb {
        let block = |r: usize| &rows[r * rb + 34 * b..r * rb + 34 * (b + 1)];
        let s: [f32; 16] = std::array::from_fn(|r| {
            let c = if lanes.contains(&r) { coeffs[r] } else { 0.0 };
            c * read_f16(block(r), 0)
        });
        let y = &mut y[QK * b..QK * (b + 1)];
        if s.iter().any(|v| !v.is_finite()) {
            y.iter_mut().for_each(|v| *v += f32::NAN);
            continue;
        }
        let amax = s.iter().fold(0f32, |m, v| m.max(v.abs()));
        let Some((t_scale, id)) = axpy_coeff_scale(amax) else {
            continue;
        };
        let t = s.map(|v| (v * id).round_ties_even() as i32);
        for (c, v) in y.iter_mut().enumerate() {
            let sum: i32 = (0..16).map(|r| t[r] * block(r)[2 + c] as i8 as i32).sum();
            *v = t_scale.mul_add(sum as f32, *v);
        }
    }
}

/// The scale `T = amax / 127` of a block's 8-bit coefficients in [`axpy16_q8_0_quantized`] and
/// its inverse `1 / T`; `None` when `T` is zero or below the normal range (the block adds
/// nothing). The SIMD kernels take it from here, so the scales are the same bits.
#[inline(always)]
pub fn axpy_coeff_scale(amax: f32) -> Option<(f32, f32)> {
    let t_scale = amax / 127.0;
    (t_scale >= f32::MIN_POSITIVE).then(|| (t_scale, 1.0 / t_scale))
}
