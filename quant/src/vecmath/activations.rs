//! Element-wise activations and the softmax sum: ggml's `exp`, SiLU/SwiGLU, the f16-table GELU
//! of GeGLU, and `exp_sub_sum`.

use super::{f32_kernels, hsum8};

/// Bit patterns of the constants of the exp approximation (range reduction by ln2 split in two
/// parts, then a degree-5 polynomial of the reduced argument).
pub(crate) const SHIFT: u32 = 0x4b40_0000; // 1.5 * 2^23: adding it rounds to an integer
pub(crate) const INV_LN2: u32 = 0x3fb8_aa3b;
pub(crate) const LN2_HI: u32 = 0x3f31_7200;
pub(crate) const LN2_LO: u32 = 0x35bf_be8e;
pub(crate) const C5: u32 = 0x3c07_2010;
pub(crate) const C4: u32 = 0x3d2b_9f17;
pub(crate) const C3: u32 = 0x3e2a_af33;
pub(crate) const C2: u32 = 0x3eff_fedb;
pub(crate) const C1: u32 = 0x3f7f_fff6;

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// e^x with ggml's vectorised approximation (≤ 1.5 ulp from the true value; exactly 0 below
/// about -104, +inf above about 89, NaN for NaN).
#[inline]
pub fn exp(x: f32) -> f32 {
    let z = x.mul_add(c(INV_LN2), c(SHIFT));
    let n = z - c(SHIFT);
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1) * b);
    let an = n.abs();
    if an <= 126.0 || an.is_nan() {
        return j.mul_add(k, k);
    }
    // |n| > 126: 2^n is not a normal float; scale in two steps (or saturate past 192).
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    if an > 192.0 {
        return s1 * s1;
    }
    let s2 = f32::from_bits(e.wrapping_sub(g));
    s2.mul_add(j, s2) * s1
}

/// x / (1 + e^-x), with [`exp`].
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(0.0 - x))
}

/// x / (1 + e^-x) with libm's `exp`: what ggml uses for the elements after the last full SIMD
/// vector.
#[inline]
pub(crate) fn silu_libm(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In place: `gate[i] = silu(gate[i]) * up[i]`, rounding as ggml's `ggml_vec_swiglu_f32` does
/// (8-lane vectors, then libm for the tail).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    // SAFETY: the set in use runs on this CPU; the lengths are equal (checked).
    unsafe { (f32_kernels().swiglu)(gate, up) }
}

/// [`swiglu`] with the vector formula for every element, the tail too (through a zero-padded
/// vector), so that an element's result does not depend on where it sits in the slice: the MoE
/// expert MLPs, which cut the same rows differently for one token and for a batch.
pub fn swiglu_lanes(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    let full = gate.len() / 8 * 8;
    swiglu(&mut gate[..full], &up[..full]);
    let n = gate.len() - full;
    if n > 0 {
        let (mut g, mut u) = ([0f32; 8], [0f32; 8]);
        g[..n].copy_from_slice(&gate[full..]);
        u[..n].copy_from_slice(&up[full..]);
        swiglu(&mut g, &u);
        gate[full..].copy_from_slice(&g[..n]);
    }
}

/// The scalar reference of [`swiglu`].
pub fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / 8 * 8;
    for (g, &u) in gate[..full].iter_mut().zip(&up[..full]) {
        *g = silu(*g) * u;
    }
    for (g, &u) in gate[full..].iter_mut().zip(&up[full..]) {
        *g = silu_libm(*g) * u;
    }
}

/// In place: `x[i] = exp(x[i] - max)`, returning `Σ x[i]` accumulated as ggml's
/// `ggml_vec_soft_max_f32` does: per 8-lane vector a float sum (in the order of its horizontal
/// add), added into an f64; libm `exp` for the tail.
pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f64 {
    // SAFETY: the set in use runs on this CPU; it needs nothing else.
    unsafe { (f32_kernels().exp_sub_sum)(x, max) }
}

/// The scalar reference of [`exp_sub_sum`].
pub fn exp_sub_sum_scalar(x: &mut [f32], max: f32) -> f64 {
    let full = x.len() / 8 * 8;
    let mut sum = 0f64;
    for v in x[..full].chunks_exact_mut(8) {
        for e in v.iter_mut() {
            *e = exp(*e - max);
        }
        sum += hsum8(v.try_into().expect("8 lanes")) as f64;
    }
    for e in x[full..].iter_mut() {
        *e = (*e - max).exp();
        sum += *e as f64;
    }
    sum
}

/// GELU (tanh form) as ggml's CPU backend computes it inside GeGLU: looked up in a table of
/// f16 results indexed by the f16-rounded input (exactly 0 at or below -10, the identity at or
/// above 10). Lossier than evaluating it in f32, but that is what llama.cpp runs.
pub fn gelu_f16_table(x: f32) -> f32 {
    use crate::blocks::float::{f16_to_f32, f32_to_f16};
    use std::sync::OnceLock;
    static TABLE: OnceLock<Box<[u16]>> = OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let table = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| {
                let v = f16_to_f32(h);
                // 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))), with the fused multiply-add
                // that C compilers contract `1 + a·x·x` to.
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                let inner = (0.044715 * v).mul_add(v, 1.0);
                f32_to_f16(0.5 * v * (1.0 + (SQRT_2_OVER_PI * v * inner).tanh()))
            })
            .collect()
    });
    f16_to_f32(table[f32_to_f16(x) as usize])
}

/// In place: `gate[i] = gelu(gate[i]) * up[i]` with [`gelu_f16_table`] (ggml's GeGLU).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "geglu: gate and up differ in length");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = if *g >= 10.0 { *g * u } else { gelu_f16_table(*g) * u };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vecmath::test_inputs;

    #[test]
    fn exp_is_accurate() {
        for &x in &test_inputs() {
            if !(-87.0..=88.0).contains(&x) {
                continue;
            }
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= want * 3e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn simd_equals_scalar_bit_for_bit() {
        let x = test_inputs();
        let up: Vec<f32> = x.iter().map(|v| (v * 0.37).sin()).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, x.len()] {
            let (mut a, mut b) = (x[..len].to_vec(), x[..len].to_vec());
            swiglu(&mut a, &up[..len]);
            swiglu_scalar(&mut b, &up[..len]);
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                    "swiglu len {len} [{i}]: {p} {q}"
                );
            }
            let finite: Vec<f32> = x[..len].iter().copied().filter(|v| v.is_finite()).collect();
            let max = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut a, mut b) = (finite.clone(), finite);
            let (sa, sb) = (exp_sub_sum(&mut a, max), exp_sub_sum_scalar(&mut b, max));
            assert_eq!(sa.to_bits(), sb.to_bits(), "softmax sum len {len}");
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "softmax len {len}"
            );
        }
    }

    #[test]
    fn gelu_table_is_gelu_to_f16_precision() {
        for i in -1200..1200 {
            let x = i as f32 / 100.0;
            let exact = 0.5 * x as f64 * (1.0 + (0.7978845608 * x as f64 * (1.0 + 0.044715 * (x * x) as f64)).tanh());
            let got = gelu_f16_table(x) as f64;
            let tol = if x.abs() >= 10.0 {
                1e-6
            } else {
                2e-3 * exact.abs().max(1e-3) + 1e-4
            };
            assert!((got - exact).abs() <= tol, "gelu({x}) = {got}, want {exact}");
        }
        let (mut g, u) = (vec![-11.0f32, 0.5, 12.0], vec![2.0f32, 3.0, 0.5]);
        geglu(&mut g, &u);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[2], 6.0);
        assert_eq!(g[1], gelu_f16_table(0.5) * 3.0);
    }
}
