//! tomoe-quant against ggml (llama.cpp through llama-cpp-sys-2): identical quantized bytes,
//! identical dequantized values, and dot products within 1e-5 relative, for every format.
#![cfg(target_arch = "x86_64")]

mod support;

use llama_cpp_sys_2 as sys;
use std::sync::Once;
use tomoe_quant::{dequantize_row, quantize_row, vec_dot, QuantType};

fn init() {
    static INIT: Once = Once::new();
    // SAFETY: ggml_cpu_init only fills ggml's global lookup tables; called once.
    INIT.call_once(|| unsafe { sys::ggml_cpu_init() });
}

extern "C" {
    fn dequantize_row_q8_K(x: *const std::ffi::c_void, y: *mut f32, k: i64);
}

fn gtype(ty: QuantType) -> sys::ggml_type {
    ty.ggml_id() as sys::ggml_type
}

fn ggml_quantize(ty: QuantType, x: &[f32], n_per_row: usize) -> Vec<u8> {
    let rows = x.len() / n_per_row;
    let mut out = vec![0u8; ty.row_bytes(n_per_row).unwrap() * rows];
    // SAFETY: src holds rows*n_per_row floats, dst exactly rows*row_size bytes; null imatrix.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            gtype(ty),
            x.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(written, out.len());
    out
}

fn ggml_from_float(ty: QuantType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    // SAFETY: traits of a valid type; from_float writes row_bytes(n) bytes.
    unsafe {
        let f = (*sys::ggml_get_type_traits_cpu(gtype(ty)))
            .from_float
            .expect("from_float");
        f(x.as_ptr(), out.as_mut_ptr().cast(), x.len() as i64);
    }
    out
}

/// ggml's own product of a Q4_1/Q5_1 row with `x` quantized by ggml to Q8_1 (36-byte blocks:
/// f16 d, f16 s = d·Σq, 32 × i8), the format ggml pairs them with.
fn ggml_vec_dot_q8_1(ty: QuantType, n: usize, w: &[u8], x: &[f32]) -> f32 {
    let mut xq = vec![0u8; n / 32 * 36];
    // SAFETY: the traits of a valid type; from_float writes n/32 Q8_1 blocks into `xq`.
    unsafe {
        let q81 = (*sys::ggml_get_type_traits_cpu(sys::GGML_TYPE_Q8_1))
            .from_float
            .expect("from_float");
        q81(x.as_ptr(), xq.as_mut_ptr().cast(), n as i64);
    }
    ggml_vec_dot(ty, n, w, &xq)
}

fn ggml_dequantize(ty: QuantType, q: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    if ty == QuantType::F32 {
        // ggml has no to_float for f32 itself: the bytes are the values.
        for (o, b) in out.iter_mut().zip(q.chunks_exact(4)) {
            *o = f32::from_le_bytes(b.try_into().unwrap());
        }
        return out;
    }
    if ty == QuantType::Q8_K {
        // Not in ggml's type-traits table, but exported by ggml-base.
        // SAFETY: q holds n/256 Q8_K blocks; out n floats.
        unsafe { dequantize_row_q8_K(q.as_ptr().cast(), out.as_mut_ptr(), n as i64) };
        return out;
    }
    // SAFETY: q holds row_bytes(n) bytes of type ty; out n floats.
    unsafe {
        let f = (*sys::ggml_get_type_traits(gtype(ty)))
            .to_float
            .expect("to_float");
        f(q.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    out
}

/// ggml's `vec_dot` of `ty` on one row: `x` in the vec_dot type ggml pairs with `ty` (Q8_0,
/// Q8_1 or Q8_K, or the float type itself).
fn ggml_vec_dot(ty: QuantType, n: usize, w: &[u8], x: &[u8]) -> f32 {
    assert!(w.len() >= ty.row_bytes(n).unwrap() && !x.is_empty());
    let mut s = 0f32;
    // SAFETY: w and x are rows of n values in ty and its ggml vec_dot_type (checked by the
    // callers' construction, w's length above); nrc = 1.
    unsafe {
        let f = (*sys::ggml_get_type_traits_cpu(gtype(ty)))
            .vec_dot
            .expect("vec_dot");
        f(
            n as i32,
            &mut s,
            0,
            w.as_ptr().cast(),
            0,
            x.as_ptr().cast(),
            0,
            1,
        );
    }
    s
}

/// Row lengths: odd numbers of blocks, including one block.
fn lengths(ty: QuantType) -> Vec<usize> {
    [1, 3, 7, 16]
        .iter()
        .map(|b| b * ty.block_size().max(32))
        .collect()
}

#[test]
fn quantization_is_byte_identical_to_ggml() {
    init();
    let mut rng = support::rng(1);
    for ty in QuantType::ALL {
        if ty == QuantType::Q8_K {
            continue; // not quantizable by ggml_quantize_chunk: checked against from_float below
        }
        let mut checked = 0;
        for n in lengths(ty) {
            for kind in 0..24 {
                let x = support::row(&mut rng, n, kind);
                let mut mine = vec![0u8; ty.row_bytes(n).unwrap()];
                quantize_row(ty, &x, &mut mine);
                let theirs = ggml_quantize(ty, &x, n);
                if let Some(i) = mine.iter().zip(&theirs).position(|(a, b)| a != b) {
                    panic!(
                        "{ty}: n={n} kind={kind}: first differing byte {i} (block {}): ours {} ggml {}",
                        i / ty.type_size(),
                        mine[i],
                        theirs[i]
                    );
                }
                checked += 1;
            }
        }
        eprintln!("{ty}: {checked} rows byte-identical");
    }
}

#[test]
fn activation_quantizers_match_ggml_from_float() {
    init();
    let mut rng = support::rng(2);
    for ty in [
        QuantType::Q8_0,
        QuantType::Q8_K,
        QuantType::F16,
        QuantType::BF16,
    ] {
        for kind in 1..40 {
            let x = support::row(&mut rng, 7 * 256, kind);
            let mut mine = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            quantize_row(ty, &x, &mut mine);
            let theirs = ggml_from_float(ty, &x);
            assert_eq!(mine, theirs, "{ty} kind {kind}");
        }
    }
}

#[test]
fn dequantization_is_identical_to_ggml() {
    init();
    let mut rng = support::rng(3);
    for ty in QuantType::ALL {
        for n in lengths(ty) {
            for kind in 0..16 {
                let x = support::row(&mut rng, n, kind);
                let q = if ty == QuantType::Q8_K {
                    ggml_from_float(ty, &x)
                } else {
                    ggml_quantize(ty, &x, n)
                };
                if ty == QuantType::Q8_K && kind % 8 == 0 {
                    continue; // ggml leaves bsums of an all-zero Q8_K block uninitialised
                }
                let mut mine = vec![0f32; n];
                dequantize_row(ty, &q, &mut mine);
                let theirs = ggml_dequantize(ty, &q, n);
                for (i, (a, b)) in mine.iter().zip(&theirs).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{ty} n={n} kind={kind} [{i}]: ours {a} ggml {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn dot_products_match_ggml_within_1e5() {
    init();
    let mut rng = support::rng(4);
    for ty in QuantType::ALL {
        if ty == QuantType::Q8_K {
            continue; // ggml has no Q8_K x Q8_K dot product
        }
        let mut worst = 0f64;
        for n in lengths(ty).into_iter().chain([4096]) {
            for _ in 0..8 {
                let wf = support::dense_row(&mut rng, n);
                let xf = support::dense_row(&mut rng, n);
                let w = ggml_quantize(ty, &wf, n);
                let wd = ggml_dequantize(ty, &w, n);
                let vt = ty.vec_dot_type();
                // Q4_1 and Q5_1 use Q8_1 activations in ggml, Q8_0 here: compare both against
                // the exact (f64) dot product of ggml's own dequantized operands.
                let legacy_min = matches!(ty, QuantType::Q4_1 | QuantType::Q5_1);
                let x = ggml_from_float(vt, &xf);
                let xd = ggml_dequantize(vt, &x, n);
                let abs_terms: f64 = wd
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let reference = if legacy_min {
                    wd.iter()
                        .zip(&xd)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32
                } else {
                    ggml_vec_dot(ty, n, &w, &x)
                };
                let ours = vec_dot(ty, n, &w, &x);
                let err = support::rel_err(ours, reference, abs_terms);
                worst = worst.max(err);
                assert!(
                    err <= 1e-5,
                    "{ty} n={n}: ours {ours} reference {reference} rel err {err:e}"
                );
                // The matvec path (which for Q4_1/Q5_1 uses the activation block sums kept by
                // QuantizedInput) against the same reference.
                let mut xq = tomoe_quant::QuantizedInput::new();
                xq.quantize(ty, &xf, n);
                assert_eq!(
                    xq.vector(0),
                    &x[..],
                    "{ty}: activation bytes differ from ggml's"
                );
                let one_row = tomoe_quant::MatRef::new(ty, 1, n, &w).unwrap();
                let mut y = [0f32];
                tomoe_quant::matvec_rows(&one_row, 0..1, &xq, &mut y);
                // For Q4_1/Q5_1 the block sums round as the `s` of ggml's Q8_1 blocks, so the
                // matvec path must give ggml's own Q8_1 product (to summation order).
                let reference = if legacy_min {
                    ggml_vec_dot_q8_1(ty, n, &w, &xf)
                } else {
                    reference
                };
                let err = support::rel_err(y[0], reference, support::abs_terms(ty, &w, &wd, &xd));
                worst = worst.max(err);
                assert!(
                    err <= 1e-5,
                    "{ty} n={n}: matvec {} reference {reference} rel err {err:e}",
                    y[0]
                );
            }
        }
        eprintln!(
            "{ty}: worst relative error {worst:e} (kernel {})",
            tomoe_quant::kernel_name()
        );
    }
}
