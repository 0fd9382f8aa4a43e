//! Property tests: every SIMD kernel set this CPU (or emulator) can run equals the scalar
//! reference on random rows with odd numbers of blocks. Each set's functions are called
//! directly, not only the dispatched best one.

mod support;

use tomoe_quant::dispatch::{available_sets, scalar_set};
use tomoe_quant::{kernel_name, quantize_row, QuantType};

#[test]
fn kernel_in_use_is_reported() {
    let name = kernel_name();
    eprintln!("kernel set in use: {name}; available: {:?}", available_sets().iter().map(|s| s.name).collect::<Vec<_>>());
    #[cfg(target_arch = "aarch64")]
    assert!(name.starts_with("neon"), "aarch64 must run a NEON kernel set, got {name}");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert_ne!(name, "scalar", "an AVX2 CPU must not fall back to scalar kernels");
    }
}

#[test]
fn every_simd_set_equals_scalar() {
    let scalar = scalar_set();
    let sets = available_sets();
    assert!(!sets.is_empty());
    let mut rng = support::rng(7);
    for set in sets.iter().filter(|s| s.name != "scalar") {
        for ty in QuantType::ALL {
            let vt = ty.vec_dot_type();
            let mut worst = 0f64;
            // Odd block counts, and for the unblocked float formats odd element counts (tails).
            let lens: Vec<usize> = if ty.block_size() == 1 {
                vec![1, 7, 31, 33, 95, 257, 1031]
            } else {
                [1usize, 3, 7, 33].iter().map(|b| b * ty.block_size()).collect()
            };
            for &n in &lens {
                for trial in 0..6 {
                    let wf = support::row(&mut rng, n, trial + 5);
                    let xf = support::row(&mut rng, n, 5 + (trial + 1) % 3);
                    let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
                    let mut x = vec![0u8; vt.row_bytes(n).unwrap()];
                    quantize_row(ty, &wf, &mut w);
                    quantize_row(vt, &xf, &mut x);
                    // SAFETY: `available_sets` only lists sets the CPU supports; rows sized for n.
                    let (want, got) = unsafe { (scalar.dot(ty)(n, &w, &x), set.dot(ty)(n, &w, &x)) };
                    let mut wd = vec![0f32; n];
                    let mut xd = vec![0f32; n];
                    tomoe_quant::dequantize_row(ty, &w, &mut wd);
                    tomoe_quant::dequantize_row(vt, &x, &mut xd);
                    let abs_terms: f64 = wd.iter().zip(&xd).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let err = support::rel_err(got, want, abs_terms);
                    worst = worst.max(err);
                    assert!(err <= 1e-5, "{} {ty} n={n} trial {trial}: simd {got} scalar {want} (rel {err:e})", set.name);
                }
            }
            eprintln!("{} {ty}: worst relative difference to scalar {worst:e}", set.name);
        }
    }
}
