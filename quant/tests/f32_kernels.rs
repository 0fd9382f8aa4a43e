//! Every kernel set's f32 vector math (`KernelSet::f32`) against the scalar set's, bit for bit,
//! on random inputs with odd lengths and tails; and which entries each set replaces.
#![allow(clippy::too_many_arguments)]

mod support;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tomoe_quant::dispatch::{available_sets, kernels, scalar_set, KernelSet};
use tomoe_quant::kernels::f32_table::F32Kernels;
use tomoe_quant::vecmath::{f16_to_f32, f32_to_f16};

/// Lengths around every vector width and unroll: 0..=70, then longer ones with tails.
fn lengths() -> Vec<usize> {
    (0..=70).chain([95, 127, 128, 129, 255, 256, 1000, 1031]).collect()
}

/// Lengths for the chunked products (whole chunks of 32).
const CHUNKED: [usize; 6] = [0, 32, 64, 96, 256, 1024];

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// Values rounded to f16, as the f16 products take them.
fn f16_values(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| f16_to_f32(f32_to_f16(rng.gen_range(-scale..scale))))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Equal bits, or both NaN.
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn simd_sets() -> Vec<KernelSet> {
    available_sets().into_iter().filter(|s| s.name != "scalar").collect()
}

#[test]
fn each_set_lists_the_f32_entries_it_replaces() {
    let scalar = scalar_set();
    assert!(scalar.f32.overrides(&scalar.f32).is_empty());
    for set in available_sets() {
        let replaced = set.f32.overrides(&scalar.f32);
        eprintln!("{}: f32 entries replaced: {replaced:?}", set.name);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if set.name != "scalar" {
            assert!(
                replaced.contains(&"dot") && replaced.contains(&"exp_sub_sum") && replaced.contains(&"rope"),
                "{}",
                set.name
            );
        }
    }
    // The runtime's set is one of them, its table included.
    let used = kernels();
    let same_table = available_sets()
        .iter()
        .any(|s| s.name == used.name && s.f32.overrides(&used.f32).is_empty());
    assert!(same_table, "the set in use ({}) has its own f32 table", used.name);
}

#[test]
fn activations_equal_scalar() {
    let s = scalar_set().f32;
    let mut rng = support::rng(11);
    for set in simd_sets() {
        let f = set.f32;
        for n in lengths() {
            let mut x = uniform(&mut rng, n, -30.0, 30.0);
            // Past the polynomial's normal range, and the saturations.
            for (i, v) in [-95.0f32, 90.0, -150.0, 200.0, -0.0].into_iter().enumerate() {
                if i * 7 < n {
                    x[i * 7] = v;
                }
            }
            let up = uniform(&mut rng, n, -3.0, 3.0);
            let (mut a, mut b) = (x.clone(), x.clone());
            // SAFETY: the set runs on this CPU (available_sets); the lengths are equal.
            unsafe { ((f.swiglu)(&mut a, &up), (s.swiglu)(&mut b, &up)) };
            assert!(same(&a, &b), "{} swiglu n {n}", set.name);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut a, mut b) = (x.clone(), x.clone());
            // SAFETY: as above; exp_sub_sum has no shape to check.
            let (sa, sb) = unsafe { ((f.exp_sub_sum)(&mut a, max), (s.exp_sub_sum)(&mut b, max)) };
            assert_eq!(sa.to_bits(), sb.to_bits(), "{} exp_sub_sum n {n}", set.name);
            assert!(same(&a, &b), "{} exp_sub_sum values n {n}", set.name);
        }
    }
}

#[test]
fn products_equal_scalar() {
    let s = scalar_set().f32;
    let mut rng = support::rng(12);
    for set in simd_sets() {
        let (f, name) = (set.f32, set.name);
        for n in lengths() {
            let (a, b) = (support::dense_row(&mut rng, n), support::dense_row(&mut rng, n));
            // SAFETY: the set runs on this CPU; the lengths are equal.
            let (x, y) = unsafe { ((f.dot)(&a, &b), (s.dot)(&a, &b)) };
            assert_eq!(x.to_bits(), y.to_bits(), "{name} dot n {n}");
            let rows = 1 + n % 11;
            let stride = n + 3;
            let m = support::dense_row(&mut rng, rows * stride);
            let (mut x, mut y) = (vec![0f32; rows], vec![0f32; rows]);
            // SAFETY: `rows` rows of n at `stride` lie inside m.
            unsafe {
                (
                    (f.dot_rows)(&m, stride, &b, &mut x),
                    (s.dot_rows)(&m, stride, &b, &mut y),
                )
            };
            assert_eq!(bits(&x), bits(&y), "{name} dot_rows {rows}x{n}");
            let mut kt = support::dense_row(&mut rng, 16 * n);
            kt.push(1.0); // a block may be longer than its keys
            let (mut x, mut y) = ([0f32; 16], [0f32; 16]);
            // SAFETY: the block holds 16 · n values.
            unsafe {
                (
                    (f.dot16_transposed)(&kt, &b, &mut x),
                    (s.dot16_transposed)(&kt, &b, &mut y),
                )
            };
            assert_eq!(bits(&x), bits(&y), "{name} dot16_transposed n {n}");
        }
        for len in CHUNKED {
            let b = support::dense_row(&mut rng, len);
            let stride = 40;
            let a = support::dense_row(&mut rng, 12 * 32 + stride * (len / 32).max(1));
            for gemm in [false, true] {
                // SAFETY: every chunk of 32 at `stride` lies inside a.
                let (x, y) = unsafe {
                    (
                        (f.dot_chunks32)(&a, stride, &b, gemm),
                        (s.dot_chunks32)(&a, stride, &b, gemm),
                    )
                };
                assert_eq!(x.to_bits(), y.to_bits(), "{name} dot_chunks32 {len} gemm {gemm}");
                for rows in 0..=9 {
                    let (mut x, mut y) = (vec![0f32; rows], vec![0f32; rows]);
                    // SAFETY: rows at a row stride of 32 (≤ 12 of them) inside a, as above.
                    unsafe {
                        (f.dot_chunks32_rows)(&a, 32, stride, &b, gemm, &mut x);
                        (s.dot_chunks32_rows)(&a, 32, stride, &b, gemm, &mut y);
                    }
                    assert_eq!(bits(&x), bits(&y), "{name} dot_chunks32_rows {rows}x{len} gemm {gemm}");
                }
            }
            if len == 0 {
                continue;
            }
            for rows in 1..=5 {
                for n_b in 1..=6 {
                    let bs = support::dense_row(&mut rng, n_b * (len + 5));
                    let out_stride = rows + 2;
                    let (mut x, mut y) = (vec![f32::NAN; n_b * out_stride], vec![f32::NAN; n_b * out_stride]);
                    // SAFETY: rows, vectors and outputs lie inside their slices.
                    unsafe {
                        (f.dot_chunks32_rows_gemm)(&a, 32, stride, rows, &bs, len + 5, n_b, len, &mut x, out_stride);
                        (s.dot_chunks32_rows_gemm)(&a, 32, stride, rows, &bs, len + 5, n_b, len, &mut y, out_stride);
                    }
                    assert!(same(&x, &y), "{name} dot_chunks32_rows_gemm {rows}x{n_b}x{len}");
                }
            }
        }
    }
}

#[test]
fn f16_math_equals_scalar() {
    let s = scalar_set().f32;
    let mut rng = support::rng(13);
    for set in simd_sets() {
        let (f, name) = (set.f32, set.name);
        for n in lengths() {
            // Any bit pattern (NaN, inf, subnormals), and values near the f16 range's ends.
            let mut src: Vec<f32> = (0..n).map(|_| f32::from_bits(rng.gen())).collect();
            for (i, v) in src.iter_mut().enumerate().filter(|(i, _)| i % 3 == 1) {
                *v = rng.gen_range(-70000.0f32..70000.0) * if i % 2 == 0 { 1.0 } else { 1e-7 };
            }
            let (mut x, mut y) = (vec![0u16; n], vec![0u16; n]);
            // SAFETY: the set runs on this CPU; the lengths are equal.
            unsafe { ((f.f32_to_f16_slice)(&src, &mut x), (s.f32_to_f16_slice)(&src, &mut y)) };
            assert_eq!(x, y, "{name} f32_to_f16_slice n {n}");
            let (mut x, mut y) = (src.clone(), src.clone());
            // SAFETY: as above.
            unsafe { ((f.round_f16)(&mut x), (s.round_f16)(&mut y)) };
            assert!(same(&x, &y), "{name} round_f16 n {n}");
            let b = f16_values(&mut rng, n, 3.0);
            let mut kt: Vec<u16> = f16_values(&mut rng, 16 * n, 6.0)
                .iter()
                .map(|&v| f32_to_f16(v))
                .collect();
            kt.push(0x3c00);
            for gemm in [false, true] {
                let (mut x, mut y) = ([0f32; 16], [0f32; 16]);
                // SAFETY: the block holds 16 · n values.
                unsafe {
                    (f.dot16_transposed_f16)(&kt, &b, gemm, &mut x);
                    (s.dot16_transposed_f16)(&kt, &b, gemm, &mut y);
                }
                assert_eq!(bits(&x), bits(&y), "{name} dot16_transposed_f16 n {n} gemm {gemm}");
            }
        }
        for len in CHUNKED {
            let stride = 5 * 32 + 8;
            let a: Vec<u16> = f16_values(&mut rng, 5 * 32 + stride * (len / 32).max(1), 4.0)
                .iter()
                .map(|&v| f32_to_f16(v))
                .collect();
            for rows in 0..=5 {
                let b = f16_values(&mut rng, len, 1.0);
                let (mut x, mut y) = (vec![0f32; rows], vec![0f32; rows]);
                // SAFETY: every row's chunks lie inside a.
                unsafe {
                    (f.dot_chunks32_rows_f16)(&a, 32, stride, &b, &mut x);
                    (s.dot_chunks32_rows_f16)(&a, 32, stride, &b, &mut y);
                }
                assert_eq!(bits(&x), bits(&y), "{name} dot_chunks32_rows_f16 {rows}x{len}");
                if rows == 0 || len == 0 {
                    continue;
                }
                for n_b in 1..=6 {
                    let bs = f16_values(&mut rng, n_b * len, 1.0);
                    let (mut x, mut y) = (vec![0f32; n_b * rows], vec![0f32; n_b * rows]);
                    // SAFETY: rows, vectors and outputs lie inside their slices.
                    unsafe {
                        (f.dot_chunks32_rows_gemm_f16)(&a, 32, stride, rows, &bs, len, n_b, len, &mut x, rows);
                        (s.dot_chunks32_rows_gemm_f16)(&a, 32, stride, rows, &bs, len, n_b, len, &mut y, rows);
                    }
                    assert_eq!(
                        bits(&x),
                        bits(&y),
                        "{name} dot_chunks32_rows_gemm_f16 {rows}x{n_b}x{len}"
                    );
                }
            }
        }
    }
}

/// A compact V cache: `n_pos` positions of `width` entries, each kept with odds 1 in `one_in`,
/// values in slots of `slot`.
fn compact(rng: &mut ChaCha8Rng, n_pos: usize, width: usize, slot: usize, one_in: u32) -> (Vec<u64>, Vec<f32>) {
    let words = width.div_ceil(64);
    let mut b = vec![0u64; n_pos * words];
    for j in 0..n_pos {
        for i in 0..width {
            if rng.gen_ratio(1, one_in) {
                b[j * words + i / 64] |= 1 << (i % 64);
            }
        }
    }
    (b, uniform(rng, n_pos * slot, -13.0, 13.0))
}

#[test]
fn expand_equals_scalar() {
    let s = scalar_set().f32;
    let mut rng = support::rng(14);
    for set in simd_sets() {
        let (f, name) = (set.f32, set.name);
        for width in [1usize, 3, 4, 5, 8, 17, 33, 63, 64, 65, 80, 128, 130, 200] {
            for one_in in [1u32, 2, 3, 9] {
                let (n_pos, heads) = (13, 3);
                let slot = heads * width;
                let (b, packed) = compact(&mut rng, n_pos, width, slot, one_in);
                let head = rng.gen_range(0..heads);
                let a = uniform(&mut rng, n_pos, -1.3, 1.3);
                let mut base = uniform(&mut rng, width, -16.0, 16.0);
                base[0] = -0.0;
                let (mut x, mut y) = (base.clone(), base.clone());
                // SAFETY: every position's bits lie within `width` and its values in its slot.
                unsafe {
                    (f.expand_weighted_sum)(&a, &b, &packed, slot, head, &mut x);
                    (s.expand_weighted_sum)(&a, &b, &packed, slot, head, &mut y);
                }
                assert_eq!(
                    bits(&x),
                    bits(&y),
                    "{name} expand_weighted_sum width {width} 1/{one_in}"
                );
                let Some(sums) = f.expand_weighted_sums else { continue };
                let words = width.div_ceil(64);
                for n_q in 1..=4 {
                    let queries: Vec<(usize, &[f32])> = (0..n_q).map(|q| (q * 2, &a[q * 2..n_pos - q])).collect();
                    let rows: Vec<f32> = (0..n_q).flat_map(|_| base.clone()).collect();
                    let (mut x, mut y) = (rows.clone(), rows);
                    // SAFETY: as above, for the positions of every query.
                    unsafe { sums(&queries, &b, &packed, slot, head, width, &mut x) };
                    for (&(first, aq), row) in queries.iter().zip(y.chunks_exact_mut(width)) {
                        let bq = &b[first * words..(first + aq.len()) * words];
                        // SAFETY: as above.
                        unsafe { (s.expand_weighted_sum)(aq, bq, &packed[first * slot..], slot, head, row) };
                    }
                    assert_eq!(bits(&x), bits(&y), "{name} expand_weighted_sums {n_q} width {width}");
                }
            }
        }
    }
}

/// RoPE, both pairings, every pair count around the vector widths: random values and angles,
/// and among them infinities, NaNs, signed zeros and values whose products overflow; the values
/// past the rotated ones stay as they were.
#[test]
fn rope_equals_scalar() {
    let s = scalar_set().f32;
    let mut rng = support::rng(17);
    let special = [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, -f32::MAX, 1e-40];
    for set in simd_sets() {
        let (f, name) = (set.f32, set.name);
        for n in (0..=40).chain([64, 67, 128, 131]) {
            let mut x = uniform(&mut rng, 2 * n + 3, -30.0, 30.0);
            let theta = uniform(&mut rng, n, -7.0, 7.0);
            let (mut cos, mut sin): (Vec<f32>, Vec<f32>) = theta.iter().map(|t| (t.cos(), t.sin())).unzip();
            if n > 0 {
                for _ in 0..3 {
                    let i = rng.gen_range(0..2 * n);
                    x[i] = special[rng.gen_range(0..special.len())];
                    let j = rng.gen_range(0..n);
                    cos[j] = special[rng.gen_range(0..special.len())];
                }
                sin[n - 1] = -0.0;
            }
            for neox in [false, true] {
                let (mut a, mut b) = (x.clone(), x.clone());
                // SAFETY: the set runs on this CPU; x holds 2n values, cos and sin n each.
                unsafe { ((f.rope)(&mut a, &cos, &sin, neox), (s.rope)(&mut b, &cos, &sin, neox)) };
                assert!(same(&a, &b), "{name} rope n {n} neox {neox}");
                assert_eq!(bits(&a[2 * n..]), bits(&x[2 * n..]), "{name} rope n {n}: past the pairs");
            }
        }
    }
}

/// The scalar set's table is what `F32Kernels::scalar` gives.
#[test]
fn the_scalar_set_holds_the_scalar_math() {
    assert!(scalar_set().f32.overrides(&F32Kernels::scalar()).is_empty());
}
