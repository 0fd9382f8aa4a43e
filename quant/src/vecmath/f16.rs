//! Half precision: the conversions as F16C rounds them, and the attention products over an f16
//! KV cache in ggml's two f16 orders.

use super::dots::{check_rows_gemm, chunks32_by};
use super::{f32_kernels, hsum8};

/// `x` as IEEE half-precision bits, rounded to nearest, ties to even: F16C's `vcvtps2ph` with
/// rounding control 0, which is ggml's `GGML_CPU_FP32_TO_FP16` (the f16 KV cache's stores and
/// the f16 copies of queries and probabilities). Overflow gives ±inf; values below half the
/// smallest subnormal give ±0; a NaN stays a quiet NaN with the top bits of its payload.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 { 0x0200 | (man >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A subnormal half (or zero): the significand with its implicit bit, shifted right.
        let shift = 14 - e;
        if shift > 24 {
            return sign;
        }
        let m = man | 0x80_0000;
        let half = m >> shift;
        let round = 1u32 << (shift - 1);
        // Round up past the halfway point, or at it when the result is odd.
        let up = m & round != 0 && m & (3 * round - 1) != 0;
        return sign | (half + up as u32) as u16;
    }
    let bits = ((e as u32) << 10) | (man >> 13);
    let up = man & 0x1000 != 0 && man & (3 * 0x1000 - 1) != 0;
    // A carry out of the significand steps the exponent (up to inf), as the hardware does.
    sign | (bits + up as u32) as u16
}

/// Half-precision bits as f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    match exp {
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        0 => {
            // Zero or subnormal: man · 2^-24, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            f32::from_bits(v.to_bits() | sign)
        }
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// `dst[i] = f32_to_f16(src[i])`.
///
/// # Panics
/// If the lengths differ.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_slice: lengths differ");
    // SAFETY: the set in use runs on this CPU; the lengths are equal (checked).
    unsafe { (f32_kernels().f32_to_f16_slice)(src, dst) }
}

/// The scalar reference of [`f32_to_f16_slice`].
pub fn f32_to_f16_slice_scalar(src: &[f32], dst: &mut [u16]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f32_to_f16(s));
}

/// Each value rounded to the nearest half-precision value (kept as f32, exactly): what ggml's
/// f16 matrix products see of an f32 operand, converted to f16 first.
pub fn round_f16(x: &mut [f32]) {
    // SAFETY: the set in use runs on this CPU; it needs nothing else.
    unsafe { (f32_kernels().round_f16)(x) }
}

/// The scalar reference of [`round_f16`].
pub fn round_f16_scalar(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = f16_to_f32(f32_to_f16(*v)));
}

/// [`dot16_transposed`](super::dot16_transposed) over keys cached as f16 bits (`kt`, the same layout), with `b` already
/// rounded to f16 values ([`round_f16`]), in one of the two orders of ggml's f16 products:
/// `gemm_order == false`, `ggml_vec_dot_f16` (one query: [`dot`](super::dot)'s four accumulators over the
/// chunks of 32 and their reduction, then the tail added in f64 and the sum rounded to f32);
/// `gemm_order == true`, llamafile's tinyBLAS (a batch: one 8-lane accumulator over chunks of
/// 8, a partial last chunk padded with zeros, then the horizontal add of [`dot_chunks32`](super::dot_chunks32)'s gemm
/// order). Products of two f16 values are exact in f32, so these are the f16 kernels' results.
///
/// # Panics
/// If `kt` is shorter than `16 · b.len()`.
pub fn dot16_transposed_f16(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    assert!(kt.len() >= 16 * b.len(), "dot16_transposed_f16: block too short");
    // SAFETY: the set in use runs on this CPU; the block holds 16 · b.len() values (checked).
    unsafe { (f32_kernels().dot16_transposed_f16)(kt, b, gemm_order, out) }
}

/// The scalar reference of [`dot16_transposed_f16`].
pub fn dot16_transposed_f16_scalar(kt: &[u16], b: &[f32], gemm_order: bool, out: &mut [f32; 16]) {
    assert!(kt.len() >= 16 * b.len(), "dot16_transposed_f16: block too short");
    for (l, o) in out.iter_mut().enumerate() {
        let key = |e: usize| f16_to_f32(kt[16 * e + l]);
        *o = if gemm_order {
            let mut acc = [0f32; 8];
            for e in 0..b.len().next_multiple_of(8) {
                let (k, q) = if e < b.len() { (key(e), b[e]) } else { (0.0, 0.0) };
                acc[e % 8] = k.mul_add(q, acc[e % 8]);
            }
            hsum8(acc)
        } else {
            let np = b.len() / 32 * 32;
            let mut sum = chunks32_by(key, &b[..np], false) as f64;
            for (e, &be) in b.iter().enumerate().skip(np) {
                sum += (key(e) * be) as f64;
            }
            sum as f32
        };
    }
}

/// [`dot_chunks32_rows`](super::dot_chunks32_rows) in the dot order over values cached as f16 bits (`a`), with `b`
/// already rounded to f16 values: `ggml_vec_dot_f16` of a whole number of chunks of 32 (no
/// tail), the value sums of one query over an f16 cache.
///
/// # Panics
/// As [`dot_chunks32_rows`](super::dot_chunks32_rows).
pub fn dot_chunks32_rows_f16(a: &[u16], row_stride: usize, stride: usize, b: &[f32], out: &mut [f32]) {
    assert!(
        b.len() % 32 == 0,
        "dot_chunks32_rows_f16: length {} is not a multiple of 32",
        b.len()
    );
    if let (Some(last), Some(last_chunk)) = (out.len().checked_sub(1), (b.len() / 32).checked_sub(1)) {
        assert!(
            last * row_stride + last_chunk * stride + 32 <= a.len(),
            "dot_chunks32_rows_f16: vectors too short"
        );
    }
    // SAFETY: the set in use runs on this CPU; every chunk is in bounds (checked).
    unsafe { (f32_kernels().dot_chunks32_rows_f16)(a, row_stride, stride, b, out) }
}

/// The scalar reference of [`dot_chunks32_rows_f16`].
pub(crate) fn dot_chunks32_rows_f16_scalar(a: &[u16], row_stride: usize, stride: usize, b: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let row = &a[i * row_stride..];
        *o = chunks32_by(|e| f16_to_f32(row[e / 32 * stride + e % 32]), b, false);
    }
}

/// [`dot_chunks32_rows_gemm`](super::dot_chunks32_rows_gemm) over values cached as f16 bits (`a`), with the vectors `b`
/// already rounded to f16 values: tinyBLAS's f16 order (the same as its f32 order on the
/// converted values), the value sums of a batch over an f16 cache.
///
/// # Panics
/// As [`dot_chunks32_rows_gemm`](super::dot_chunks32_rows_gemm).
#[allow(clippy::too_many_arguments)]
pub fn dot_chunks32_rows_gemm_f16(
    a: &[u16],
    row_stride: usize,
    stride: usize,
    rows: usize,
    b: &[f32],
    b_stride: usize,
    n_b: usize,
    len: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let (rows_a, vecs_b) = ((a, row_stride, stride, rows), (b, b_stride, n_b));
    if !check_rows_gemm("dot_chunks32_rows_gemm_f16", rows_a, vecs_b, len, (out, out_stride)) {
        return;
    }
    // SAFETY: the set in use runs on this CPU; every access is in bounds (checked).
    unsafe {
        (f32_kernels().dot_chunks32_rows_gemm_f16)(a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride)
    }
}

/// The scalar reference of [`dot_chunks32_rows_gemm_f16`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_chunks32_rows_gemm_f16_scalar(
    a: &[u16],
    row_stride: usize,
    stride: usize,
    rows: usize,
    b: &[f32],
    b_stride: usize,
    n_b: usize,
    len: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    for q in 0..n_b {
        let bq = &b[q * b_stride..q * b_stride + len];
        for i in 0..rows {
            let row = &a[i * row_stride..];
            let v = chunks32_by(|e| f16_to_f32(row[e / 32 * stride + e % 32]), bq, true);
            out[q * out_stride + i] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic random bits for the f16 tests.
    struct Bits(u64);

    impl Bits {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Any f32 bit pattern, weighted toward the half-precision range and its edges.
        fn f32_any(&mut self) -> f32 {
            let r = self.next();
            match r % 4 {
                0 => f32::from_bits((r >> 32) as u32),
                // Exponents around the half range: subnormal halves to overflow.
                1 => f32::from_bits(((r >> 32) as u32 & 0x807f_ffff) | (((r >> 8) % 48 + 88) as u32) << 23),
                // Exact halfway cases and their neighbours (low 13 bits 0x1000 ± 1).
                2 => {
                    let b = ((r >> 32) as u32 & !0x1fff) | (0x0fff + (r >> 16) as u32 % 3);
                    f32::from_bits((b & 0x807f_ffff) | (((r >> 8) % 40 + 100) as u32) << 23)
                }
                _ => ((r >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0,
            }
        }

        /// A value of moderate size, rounded to f16.
        fn f16_val(&mut self, scale: f32) -> f32 {
            let x = ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
            f16_to_f32(f32_to_f16(x))
        }
    }

    fn same_f32(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
    }

    /// The conversions against the `half` crate's and the hardware's, on every half and on
    /// random floats (ties, subnormals, overflow, inf and NaN included).
    #[test]
    fn f16_conversions_round_to_nearest_even() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(same_f32(got, want) || (got.is_nan() && want.is_nan()), "half {h:#06x}");
            if !got.is_nan() {
                assert_eq!(f32_to_f16(got), h, "half {h:#06x} back");
            }
        }
        let cases: [(f32, u16); 12] = [
            (1.0 + 2f32.powi(-11), 0x3c00),       // tie, even below
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02), // tie, even above
            (1.0 + 2f32.powi(-11) + 2f32.powi(-20), 0x3c01),
            (2f32.powi(-24), 0x0001),
            (2f32.powi(-25), 0x0000), // tie between 0 and the smallest subnormal
            (1.5 * 2f32.powi(-25), 0x0001),
            (3.0 * 2f32.powi(-25), 0x0002), // tie between 1 and 2 ulps: even
            (-2f32.powi(-26), 0x8000),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00), // tie between 65504 and 2^16: even is inf
            (f32::NEG_INFINITY, 0xfc00),
            (f32::from_bits(1), 0x0000), // an f32 subnormal
        ];
        for (x, h) in cases {
            assert_eq!(f32_to_f16(x), h, "{x:e}");
        }
        let mut r = Bits(0x1234_5678_9abc_def1);
        for len in [1usize, 3, 7, 9, 17, 31, 1001, 4099] {
            let src: Vec<f32> = (0..len).map(|_| r.f32_any()).collect();
            let (mut simd, mut scalar) = (vec![0u16; len], vec![0u16; len]);
            f32_to_f16_slice(&src, &mut simd);
            f32_to_f16_slice_scalar(&src, &mut scalar);
            for (i, &x) in src.iter().enumerate() {
                let want = half::f16::from_f32(x).to_bits();
                assert_eq!(scalar[i], want, "{x:e} ({:#010x})", x.to_bits());
                assert_eq!(simd[i], want, "F16C {x:e} ({:#010x})", x.to_bits());
            }
            let (mut a, mut b) = (src.clone(), src.clone());
            round_f16(&mut a);
            round_f16_scalar(&mut b);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(same_f32(*p, *q) || (p.is_nan() && q.is_nan()), "round_f16 {:e}", src[i]);
            }
        }
    }

    /// `ggml_vec_dot_f16` as written in ggml (AVX2 with F16C): four 8-lane accumulators over
    /// steps of 32, reduced pairwise, then the leftovers in double.
    fn ggml_vec_dot_f16(x: &[u16], y: &[u16]) -> f32 {
        let n = x.len();
        let np = n & !31;
        let mut sum = [[0f32; 8]; 4];
        for i in (0..np).step_by(32) {
            for (j, s) in sum.iter_mut().enumerate() {
                for l in 0..8 {
                    let e = i + 8 * j + l;
                    s[l] = f16_to_f32(x[e]).mul_add(f16_to_f32(y[e]), s[l]);
                }
            }
        }
        let s0: [f32; 8] = std::array::from_fn(|l| sum[0][l] + sum[2][l]);
        let s1: [f32; 8] = std::array::from_fn(|l| sum[1][l] + sum[3][l]);
        let v: [f32; 8] = std::array::from_fn(|l| s0[l] + s1[l]);
        let t0: [f32; 4] = std::array::from_fn(|l| v[l] + v[l + 4]);
        let mut sumf = ((t0[0] + t0[1]) + (t0[2] + t0[3])) as f64;
        for i in np..n {
            sumf += (f16_to_f32(x[i]) * f16_to_f32(y[i])) as f64;
        }
        sumf as f32
    }

    /// tinyBLAS's f16 dot of one output (AVX2): one accumulator over chunks of 8, the last one
    /// loaded partially (zeros past the end), then `hsum`.
    fn tinyblas_dot_f16(x: &[u16], y: &[u16]) -> f32 {
        let mut acc = [0f32; 8];
        for c in 0..x.len().div_ceil(8) {
            for l in 0..8 {
                let e = 8 * c + l;
                let (a, b) = if e < x.len() {
                    (f16_to_f32(x[e]), f16_to_f32(y[e]))
                } else {
                    (0.0, 0.0)
                };
                acc[l] = a.mul_add(b, acc[l]);
            }
        }
        let h: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
        (h[0] + h[2]) + (h[1] + h[3])
    }

    /// Scores over transposed f16 key blocks equal ggml's f16 dot (one query) and tinyBLAS's
    /// (a batch) per key, on every path, with and without tails.
    #[test]
    fn transposed_f16_key_scores_equal_ggml() {
        let mut r = Bits(0x9e37_79b9_7f4a_7c15);
        for (n, len) in [
            (16usize, 64usize),
            (37, 256),
            (20, 70),
            (45, 46),
            (3, 5),
            (16, 33),
            (5, 1),
        ] {
            let keys: Vec<u16> = (0..n * len).map(|_| f32_to_f16(r.f16_val(6.0))).collect();
            let q: Vec<f32> = (0..len).map(|_| r.f16_val(3.0)).collect();
            let qh: Vec<u16> = q.iter().map(|&v| f32_to_f16(v)).collect();
            let mut kt = vec![0u16; n.div_ceil(16) * 16 * len];
            for j in 0..n {
                for e in 0..len {
                    kt[((j / 16) * len + e) * 16 + j % 16] = keys[j * len + e];
                }
            }
            for gemm in [false, true] {
                for block in 0..n.div_ceil(16) {
                    let kb = &kt[block * 16 * len..];
                    let (mut out, mut o1) = ([0f32; 16], [0f32; 16]);
                    dot16_transposed_f16(kb, &q, gemm, &mut out);
                    dot16_transposed_f16_scalar(kb, &q, gemm, &mut o1);
                    assert_eq!(
                        o1.map(f32::to_bits),
                        out.map(f32::to_bits),
                        "scalar, {n}×{len} gemm {gemm}"
                    );
                    for (l, got) in out.iter().enumerate().take(n - 16 * block) {
                        let j = 16 * block + l;
                        let row = &keys[j * len..(j + 1) * len];
                        let want = if gemm {
                            tinyblas_dot_f16(row, &qh)
                        } else {
                            ggml_vec_dot_f16(row, &qh)
                        };
                        assert!(same_f32(*got, want), "key {j} of {n}×{len}, gemm {gemm}: {got} {want}");
                    }
                }
            }
        }
    }

    /// Value sums over f16 values in blocks of 32 positions equal ggml's f16 dot (one query)
    /// and tinyBLAS's (several), on every path.
    #[test]
    fn f16_value_sums_equal_ggml() {
        let mut r = Bits(0xdead_beef_cafe_f00d);
        // 3 rows (dims) of 96 positions in blocks of 32: dim i of block k at k·stride + 32 i.
        let (rows, len, stride) = (5usize, 96usize, 5 * 32 + 8);
        let a: Vec<u16> = (0..(len / 32) * stride).map(|_| f32_to_f16(r.f16_val(4.0))).collect();
        let nb = 3;
        let b: Vec<f32> = (0..nb * len).map(|_| r.f16_val(1.0).abs()).collect();
        let row_of = |i: usize| -> Vec<u16> { (0..len).map(|e| a[e / 32 * stride + 32 * i + e % 32]).collect() };
        let bh = |q: usize| -> Vec<u16> { b[q * len..(q + 1) * len].iter().map(|&v| f32_to_f16(v)).collect() };
        let mut out = vec![0f32; rows];
        dot_chunks32_rows_f16(&a, 32, stride, &b[..len], &mut out);
        for (i, o) in out.iter().enumerate() {
            let want = ggml_vec_dot_f16(&row_of(i), &bh(0));
            assert!(same_f32(*o, want), "dot order row {i}: {o} {want}");
        }
        let mut g = vec![0f32; nb * rows];
        dot_chunks32_rows_gemm_f16(&a, 32, stride, rows, &b, len, nb, len, &mut g, rows);
        for q in 0..nb {
            for i in 0..rows {
                let want = tinyblas_dot_f16(&row_of(i), &bh(q));
                assert!(same_f32(g[q * rows + i], want), "gemm order query {q} row {i}");
            }
        }
    }
}
