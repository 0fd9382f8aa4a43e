//! Picks the kernel set once, at first use, from the CPU's features (so one binary runs on
//! any x86-64 or aarch64), and hands out per-format dot-product functions.

use std::sync::OnceLock;

use crate::formats::QuantType;
use crate::kernels::{scalar, DotFn};

/// A named set of dot-product kernels, indexed by `QuantType as usize`.
pub struct KernelSet {
    pub name: &'static str,
    pub dots: [DotFn; 14],
}

impl KernelSet {
    #[inline(always)]
    pub fn dot(&self, ty: QuantType) -> DotFn {
        self.dots[ty as usize]
    }
}

/// The scalar reference set (always available).
pub fn scalar_set() -> KernelSet {
    KernelSet {
        name: "scalar",
        dots: [
            scalar::dot_f32,
            scalar::dot_f16,
            scalar::dot_bf16,
            scalar::dot_q4_0,
            scalar::dot_q4_1,
            scalar::dot_q5_0,
            scalar::dot_q5_1,
            scalar::dot_q8_0,
            scalar::dot_q2_k,
            scalar::dot_q3_k,
            scalar::dot_q4_k,
            scalar::dot_q5_k,
            scalar::dot_q6_k,
            scalar::dot_q8_k,
        ],
    }
}

/// Every kernel set this CPU can run, best last (scalar first). For tests and benchmarks that
/// compare the sets; the runtime uses [`kernels`].
pub fn available_sets() -> Vec<KernelSet> {
    #[allow(unused_mut)]
    let mut sets = vec![scalar_set()];
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = crate::kernels::avx2::kernel_set() {
            sets.push(s);
        }
        if let Some(s) = crate::kernels::avx512::kernel_set() {
            sets.push(s);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if let Some(s) = crate::kernels::neon::kernel_set(false) {
            sets.push(s);
        }
        if let Some(s) = crate::kernels::neon::kernel_set(true) {
            sets.push(s);
        }
    }
    sets
}

static BEST: OnceLock<KernelSet> = OnceLock::new();

/// The best kernel set for this CPU (detected once).
pub fn kernels() -> &'static KernelSet {
    BEST.get_or_init(|| available_sets().pop().expect("the scalar set is always present"))
}
