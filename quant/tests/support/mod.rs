//! Random test rows shared by the quant tests.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A row of `n` values like LLM weights/activations: roughly Gaussian, a random scale per row,
/// occasional outliers; `kind` selects special shapes that stress the quantizers' edge cases.
pub fn row(rng: &mut ChaCha8Rng, n: usize, kind: usize) -> Vec<f32> {
    let scale: f32 = 10f32.powf(rng.gen_range(-3.0..1.0));
    match kind % 8 {
        0 => vec![0.0; n],
        1 => vec![scale; n],
        2 => {
            let mut v = vec![0.0; n];
            v[rng.gen_range(0..n)] = -scale;
            v
        }
        3 => (0..n).map(|_| rng.gen_range(0.0..scale)).collect(), // all positive
        4 => (0..n).map(|_| -rng.gen_range(0.0..scale)).collect(), // all negative
        _ => (0..n)
            .map(|_| {
                let g: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum::<f32>() * 0.866;
                let outlier = if rng.gen_ratio(1, 64) { 8.0 } else { 1.0 };
                g * scale * outlier
            })
            .collect(),
    }
}

/// Plain Gaussian-like rows (no special shapes): for dot products, where zeros would make the
/// relative error meaningless.
pub fn dense_row(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    row(rng, n, 5)
}

/// |a - b| relative to the size of the terms: dot products of n values cancel, so the error
/// of a sum is measured against Σ|w_i·x_i| (as a float sum's rounding bound is), and also
/// reported against |b|.
pub fn rel_err(a: f32, b: f32, abs_terms: f64) -> f64 {
    let d = (a as f64 - b as f64).abs();
    d / (b.abs() as f64).max(abs_terms * 1e-2).max(f64::MIN_POSITIVE)
}
