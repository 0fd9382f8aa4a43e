//! The f32 products of attention and the routers: `dot` in `ggml_vec_dot_f32`'s order, the
//! chunked value sums in its order or tinyBLAS's (`gemm_order`), many rows or queries at once,
//! and the scores of 16 transposed keys.

use super::{f32_kernels, hsum8};

/// `Σ a[i]·b[i]` in the order of ggml's `ggml_vec_dot_f32`: four 8-lane accumulators over steps of
/// 32 (fused multiply-adds), reduced pairwise, then the remaining elements one by one.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    // SAFETY: the set in use runs on this CPU; the lengths are equal (checked).
    unsafe { (f32_kernels().dot)(a, b) }
}

/// The scalar reference of [`dot`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_by(|e| a[e], &b[..a.len()])
}

/// [`dot_scalar`] with element `e` of `a` given by `a(e)`: the chunks of 32 in
/// [`dot_chunks32`]'s dot order, then the tail one element at a time.
#[inline(always)]
fn dot_by(a: impl Fn(usize) -> f32, b: &[f32]) -> f32 {
    let np = b.len() / 32 * 32;
    let mut sum = chunks32_by(&a, &b[..np], false);
    for (e, &be) in b.iter().enumerate().skip(np) {
        sum = a(e).mul_add(be, sum);
    }
    sum
}

/// `Σ a[i]·b[i]` over whole chunks of 32, `a` stored in chunks: chunk `k` is
/// `a[k·stride .. k·stride + 32]` (`b.len()` a multiple of 32); for attention values cached in
/// blocks of 32 positions, which keeps the per-token cache writes local. Two summation orders:
/// [`dot`]'s (`gemm_order == false`), and that of ggml's f32 matrix-matrix kernel (llamafile's
/// tinyBLAS), which llama.cpp uses for the value sums of a batch: one 8-lane accumulator (fused
/// multiply-adds in order), then a horizontal add.
pub fn dot_chunks32(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
    assert!(
        b.len() % 32 == 0,
        "dot_chunks32: length {} is not a multiple of 32",
        b.len()
    );
    if let Some(last) = (b.len() / 32).checked_sub(1) {
        assert!(last * stride + 32 <= a.len(), "dot_chunks32: vector too short");
    }
    // SAFETY: the set in use runs on this CPU; every chunk is in bounds (checked).
    unsafe { (f32_kernels().dot_chunks32)(a, stride, b, gemm_order) }
}

/// The scalar reference of [`dot_chunks32`].
pub fn dot_chunks32_scalar(a: &[f32], stride: usize, b: &[f32], gemm_order: bool) -> f32 {
    chunks32_by(|e| a[e / 32 * stride + e % 32], b, gemm_order)
}

/// [`dot_chunks32_scalar`] with element `e` of `a` given by `a(e)`.
#[inline(always)]
pub(crate) fn chunks32_by(a: impl Fn(usize) -> f32, b: &[f32], gemm_order: bool) -> f32 {
    let mut acc = [[0f32; 8]; 4];
    for (k, bc) in b.chunks_exact(32).enumerate() {
        for q in 0..4 {
            // gemm order: one accumulator for every group of 8; dot order: four.
            let r = if gemm_order { 0 } else { q };
            for l in 0..8 {
                acc[r][l] = a(32 * k + 8 * q + l).mul_add(bc[8 * q + l], acc[r][l]);
            }
        }
    }
    if gemm_order {
        return hsum8(acc[0]);
    }
    let x: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    let t: [f32; 4] = std::array::from_fn(|i| x[i] + x[i + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `out[i] = dot(&a[i·row_stride..][..b.len()], b)` for every `i < out.len()`: many rows
/// against one vector (a router's logits, a V-mask head's outputs), each exactly [`dot`]'s
/// result.
///
/// # Panics
/// If the last row runs past the end of `a`.
pub fn dot_rows(a: &[f32], row_stride: usize, b: &[f32], out: &mut [f32]) {
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            last * row_stride + b.len() <= a.len(),
            "dot_rows: {} rows of {} at a stride of {row_stride} exceed {} values",
            out.len(),
            b.len(),
            a.len()
        );
    }
    // SAFETY: the set in use runs on this CPU; every row is in bounds (checked).
    unsafe { (f32_kernels().dot_rows)(a, row_stride, b, out) }
}

/// The scalar reference of [`dot_rows`].
pub(crate) fn dot_rows_scalar(a: &[f32], row_stride: usize, b: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_scalar(&a[i * row_stride..i * row_stride + b.len()], b);
    }
}

/// `out[i] = dot_chunks32(&a[i·row_stride..], stride, b, gemm_order)` for every `i < out.len()`:
/// several chunked vectors against one (the value sums of one query, one per dimension), each
/// exactly [`dot_chunks32`]'s result; the SIMD path runs several rows' accumulator chains at once.
///
/// # Panics
/// As [`dot_chunks32`], for the last row.
pub fn dot_chunks32_rows(a: &[f32], row_stride: usize, stride: usize, b: &[f32], gemm_order: bool, out: &mut [f32]) {
    assert!(
        b.len() % 32 == 0,
        "dot_chunks32_rows: length {} is not a multiple of 32",
        b.len()
    );
    if let (Some(last), Some(last_chunk)) = (out.len().checked_sub(1), (b.len() / 32).checked_sub(1)) {
        assert!(
            last * row_stride + last_chunk * stride + 32 <= a.len(),
            "dot_chunks32_rows: vectors too short"
        );
    }
    // SAFETY: the set in use runs on this CPU; every chunk is in bounds (checked).
    unsafe { (f32_kernels().dot_chunks32_rows)(a, row_stride, stride, b, gemm_order, out) }
}

/// The scalar reference of [`dot_chunks32_rows`].
pub(crate) fn dot_chunks32_rows_scalar(
    a: &[f32],
    row_stride: usize,
    stride: usize,
    b: &[f32],
    gemm_order: bool,
    out: &mut [f32],
) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_chunks32_scalar(&a[i * row_stride..], stride, b, gemm_order);
    }
}

/// The value sums of several queries at once: for each of `n_b` vectors
/// `b_q = b[q·b_stride..][..len]`, `out[q·out_stride + i] = dot_chunks32(&a[i·row_stride..], stride,
/// b_q, true)` for every `i < rows`, each exactly that (ggml's matrix-kernel order). The SIMD path
/// reads each chunk of `a` once for up to four vectors, so a head's cached values stream from L2
/// once per four queries instead of once per query.
///
/// # Panics
/// If `len` is not a multiple of 32, or a row, vector or output runs past its slice.
#[allow(clippy::too_many_arguments)]
pub fn dot_chunks32_rows_gemm(
    a: &[f32],
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
    if !check_rows_gemm("dot_chunks32_rows_gemm", rows_a, vecs_b, len, (out, out_stride)) {
        return;
    }
    // SAFETY: the set in use runs on this CPU; every access is in bounds (checked).
    unsafe {
        (f32_kernels().dot_chunks32_rows_gemm)(a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride)
    }
}

/// The scalar reference of [`dot_chunks32_rows_gemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_chunks32_rows_gemm_scalar(
    a: &[f32],
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
            out[q * out_stride + i] = dot_chunks32_scalar(&a[i * row_stride..], stride, bq, true);
        }
    }
}

/// `out[l] = dot(key l, b)` for a block of 16 keys stored transposed (`kt`: at least
/// `16 · b.len()` values, element `e` of key `l` at `kt[16e + l]`), each exactly [`dot`]'s result:
/// attention scores with one SIMD lane per key, so each key element is loaded once and no dot
/// product needs its own reduction.
///
/// # Panics
/// If `kt` is shorter than `16 · b.len()`.
pub fn dot16_transposed(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    assert!(kt.len() >= 16 * b.len(), "dot16_transposed: block too short");
    // SAFETY: the set in use runs on this CPU; the block holds 16 · b.len() values (checked).
    unsafe { (f32_kernels().dot16_transposed)(kt, b, out) }
}

/// The scalar reference of [`dot16_transposed`]: per key, [`dot_scalar`]'s order.
pub fn dot16_transposed_scalar(kt: &[f32], b: &[f32], out: &mut [f32; 16]) {
    assert!(kt.len() >= 16 * b.len(), "dot16_transposed: block too short");
    for (l, o) in out.iter_mut().enumerate() {
        *o = dot_by(|e| kt[16 * e + l], b);
    }
}

/// The shape checks of the `dot_chunks32_rows_gemm*` functions (rows of `a`, vectors of `b`,
/// outputs): false when there is nothing to compute.
///
/// # Panics
/// As those functions.
pub(crate) fn check_rows_gemm<A>(
    name: &str,
    (a, row_stride, stride, rows): (&[A], usize, usize, usize),
    (b, b_stride, n_b): (&[f32], usize, usize),
    len: usize,
    (out, out_stride): (&[f32], usize),
) -> bool {
    assert!(len % 32 == 0, "{name}: length {len} is not a multiple of 32");
    if rows == 0 || n_b == 0 {
        return false;
    }
    let fits = |n: usize, stride: usize, width: usize, have: usize| {
        (n - 1)
            .checked_mul(stride)
            .and_then(|o| o.checked_add(width))
            .is_some_and(|e| e <= have)
    };
    let a_width = (len / 32).checked_sub(1).map_or(0, |c| c * stride + 32);
    assert!(
        fits(rows, row_stride, a_width, a.len())
            && fits(n_b, b_stride, len, b.len())
            && fits(n_b, out_stride, rows, out.len()),
        "{name}: shapes exceed the slices"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vecmath::test_inputs;

    /// The many-row products equal their one-row functions and the scalar references bit for
    /// bit, for row counts around the SIMD groups (2 and 8), odd lengths and strided chunks.
    #[test]
    fn row_products_equal_single_rows_bit_for_bit() {
        let x = test_inputs();
        let finite: Vec<f32> = x.iter().copied().filter(|v| v.is_finite() && v.abs() < 1e3).collect();
        let val = |i: usize| finite[(i * 7 + 3) % finite.len()] * 0.01 + (i % 13) as f32 * 0.1;
        let a: Vec<f32> = (0..40_000).map(val).collect();
        for rows in [0usize, 1, 2, 3, 7, 8, 9, 17] {
            for len in [1usize, 31, 32, 64, 70, 96] {
                let b: Vec<f32> = (0..len).map(|i| val(i + 500)).collect();
                let stride = len + 3;
                let mut got = vec![0f32; rows];
                dot_rows(&a, stride, &b, &mut got);
                for (i, g) in got.iter().enumerate() {
                    let row = &a[i * stride..i * stride + len];
                    assert_eq!(g.to_bits(), dot(row, &b).to_bits(), "dot_rows {rows}x{len} [{i}]");
                    assert_eq!(g.to_bits(), dot_scalar(row, &b).to_bits(), "scalar {rows}x{len}");
                }
                if len % 32 != 0 {
                    continue;
                }
                for gemm_order in [false, true] {
                    let (row_stride, chunk_stride) = (32, 32 * 20);
                    let mut got = vec![0f32; rows];
                    dot_chunks32_rows(&a, row_stride, chunk_stride, &b, gemm_order, &mut got);
                    for (i, g) in got.iter().enumerate() {
                        let r = &a[i * row_stride..];
                        let want = dot_chunks32(r, chunk_stride, &b, gemm_order);
                        let scalar = dot_chunks32_scalar(r, chunk_stride, &b, gemm_order);
                        assert_eq!(g.to_bits(), want.to_bits(), "chunks {rows}x{len} {gemm_order}");
                        assert_eq!(g.to_bits(), scalar.to_bits(), "scalar chunks {rows}x{len}");
                    }
                }
            }
        }
    }

    /// The several-vector value sums equal the one-row product bit for bit, for row and vector
    /// counts around the SIMD groups (2 rows, 4 vectors).
    #[test]
    fn gemm_row_products_equal_single_rows_bit_for_bit() {
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 97.0 - 5.0;
        let a: Vec<f32> = (0..30_000).map(val).collect();
        let (row_stride, stride) = (32, 32 * 9);
        for rows in [1usize, 2, 3, 8] {
            for n_b in [1usize, 2, 3, 4, 5, 9] {
                for len in [32usize, 96] {
                    let b_stride = len + 32;
                    let b: Vec<f32> = (0..n_b * b_stride).map(|i| val(i + 77) * 0.1).collect();
                    let out_stride = rows + 1;
                    let mut out = vec![f32::NAN; n_b * out_stride];
                    dot_chunks32_rows_gemm(
                        &a, row_stride, stride, rows, &b, b_stride, n_b, len, &mut out, out_stride,
                    );
                    for q in 0..n_b {
                        let bq = &b[q * b_stride..q * b_stride + len];
                        for i in 0..rows {
                            let want = dot_chunks32(&a[i * row_stride..], stride, bq, true);
                            let got = out[q * out_stride + i];
                            assert_eq!(got.to_bits(), want.to_bits(), "{rows}x{n_b} len {len}");
                        }
                        assert!(out[q * out_stride + rows].is_nan(), "wrote past its rows");
                    }
                }
            }
        }
    }

    /// Keys laid out for [`dot16_transposed`]: rows `keys[j·row_stride..][..len]` for `j < n`, in
    /// blocks of 16 keys, element `e` of key `16i + l` at `out[(i·len + e)·16 + l]` (zeros past `n`).
    ///
    /// # Panics
    /// If the last row runs past the end of `keys`, or `out` is not `⌈n/16⌉·16·len` long.
    fn transpose_keys16(keys: &[f32], row_stride: usize, n: usize, len: usize, out: &mut [f32]) {
        if let Some(last) = n.checked_sub(1) {
            assert!(
                last * row_stride + len <= keys.len(),
                "transpose_keys16: rows past the end"
            );
        }
        assert_eq!(out.len(), n.div_ceil(16) * 16 * len, "transpose_keys16: output size");
        out.fill(0.0);
        for j in 0..n {
            let (block, l) = (j / 16, j % 16);
            let row = &keys[j * row_stride..j * row_stride + len];
            for (e, &v) in row.iter().enumerate() {
                out[(block * len + e) * 16 + l] = v;
            }
        }
    }

    /// Scores of transposed key blocks equal `dot` per key bit for bit, with partial blocks and
    /// lengths with and without a tail past the chunks of 32.
    #[test]
    fn transposed_key_scores_equal_dot_bit_for_bit() {
        let val = |i: usize| ((i * 7919) % 1013) as f32 / 97.0 - 5.0;
        for (n, len, stride) in [
            (1usize, 64usize, 64usize),
            (16, 64, 192),
            (37, 256, 300),
            (20, 70, 70),
            (45, 46, 138),
            (3, 5, 9),
        ] {
            let keys: Vec<f32> = (0..n * stride).map(val).collect();
            let b: Vec<f32> = (0..len).map(|i| val(i + 11) * 0.3).collect();
            let mut kt = vec![0f32; n.div_ceil(16) * 16 * len];
            transpose_keys16(&keys, stride, n, len, &mut kt);
            for block in 0..n.div_ceil(16) {
                let mut out = [0f32; 16];
                dot16_transposed(&kt[block * 16 * len..], &b, &mut out);
                for (l, got) in out.iter().enumerate().take(n - 16 * block) {
                    let j = 16 * block + l;
                    let want = dot(&keys[j * stride..j * stride + len], &b);
                    assert_eq!(got.to_bits(), want.to_bits(), "key {j} of {n}, length {len}");
                }
                let mut o1 = [0f32; 16];
                dot16_transposed_scalar(&kt[block * 16 * len..], &b, &mut o1);
                assert_eq!(o1.map(f32::to_bits), out.map(f32::to_bits), "scalar block {block}");
            }
        }
    }

    #[test]
    fn products_simd_equal_scalar_bit_for_bit() {
        let x = test_inputs();
        let finite: Vec<f32> = x.iter().copied().filter(|v| v.is_finite() && v.abs() < 1e6).collect();
        for len in [0, 1, 7, 31, 32, 33, 64, 95, 256, 1000] {
            let (a, b) = (&finite[..len], &finite[7..7 + len]);
            assert_eq!(dot(a, b).to_bits(), dot_scalar(a, b).to_bits(), "dot len {len}");
        }
        for len in [0, 32, 64, 256, 1024] {
            let (a, b) = (&finite[..len], &finite[3..3 + len]);
            for gemm in [false, true] {
                assert_eq!(
                    dot_chunks32(a, 32, b, gemm).to_bits(),
                    dot_chunks32_scalar(a, 32, b, gemm).to_bits(),
                    "dot_chunks32 len {len}, gemm order {gemm}"
                );
            }
            let want: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let scale: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            for got in [dot(a, b), dot_chunks32(a, 32, b, true)] {
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * scale,
                    "dot len {len}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn chunked_dots_equal_contiguous_bit_for_bit() {
        let x = test_inputs();
        let finite: Vec<f32> = x.iter().copied().filter(|v| v.is_finite() && v.abs() < 1e6).collect();
        let stride = 40;
        for n_chunks in [0, 1, 2, 5] {
            let b = &finite[100..100 + 32 * n_chunks];
            let a = &finite[..stride * n_chunks.max(1)];
            let gathered: Vec<f32> = (0..n_chunks)
                .flat_map(|k| a[k * stride..k * stride + 32].to_vec())
                .collect();
            for gemm in [false, true] {
                let want = if gemm {
                    dot_chunks32_scalar(&gathered, 32, b, true)
                } else {
                    dot(&gathered, b)
                };
                for got in [
                    dot_chunks32(a, stride, b, gemm),
                    dot_chunks32_scalar(a, stride, b, gemm),
                ] {
                    assert_eq!(got.to_bits(), want.to_bits(), "{n_chunks} chunks, gemm order {gemm}");
                }
            }
        }
    }
}
