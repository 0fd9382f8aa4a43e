//! Picks the kernel set once, at first use, from the CPU's features (so one binary runs on
//! any x86-64 or aarch64), and hands out per-format dot-product functions.

use std::sync::OnceLock;

use crate::formats::QuantType;
use crate::kernels::{
    scalar, AxpyFn, Dot4Fn, DotFn, DotSumsFn, GemmKernel, Interleaved16, InterleavedAxpy16,
    QuantizeActsFn,
};

/// A named set of dot-product kernels, indexed by `QuantType as usize`.
pub struct KernelSet {
    pub name: &'static str,
    pub dots: [DotFn; 14],
    /// Faster variants taking precomputed activation block sums (see [`DotSumsFn`]).
    pub dots_with_sums: [Option<DotSumsFn>; 14],
    /// Four-row variants (see [`Dot4Fn`]); for Q4_1/Q5_1 they take the block sums.
    pub dots_x4: [Option<Dot4Fn>; 14],
    /// Row-scaled accumulation (see [`AxpyFn`]).
    pub axpys: [Option<AxpyFn>; 14],
    /// Tiled matrix-matrix products (see [`GemmKernel`]).
    pub gemms: [Option<GemmKernel>; 14],
    /// Matrix-vector products over row-interleaved weights (see [`Interleaved16`]).
    pub interleaved: [Option<Interleaved16>; 14],
    /// Weighted row sums over row-interleaved weights (see [`InterleavedAxpy16`]).
    pub interleaved_axpys: [Option<InterleavedAxpy16>; 14],
    /// The Q8_0 activation quantizer (see [`QuantizeActsFn`]).
    pub quantize_q8_0_acts: QuantizeActsFn,
}

impl KernelSet {
    #[inline(always)]
    pub fn dot(&self, ty: QuantType) -> DotFn {
        self.dots[ty as usize]
    }

    #[inline(always)]
    pub fn dot_with_sums(&self, ty: QuantType) -> Option<DotSumsFn> {
        self.dots_with_sums[ty as usize]
    }

    #[inline(always)]
    pub fn dot_x4(&self, ty: QuantType) -> Option<Dot4Fn> {
        self.dots_x4[ty as usize]
    }

    #[inline(always)]
    pub fn axpy(&self, ty: QuantType) -> Option<AxpyFn> {
        self.axpys[ty as usize]
    }

    #[inline(always)]
    pub fn gemm(&self, ty: QuantType) -> Option<GemmKernel> {
        self.gemms[ty as usize]
    }

    #[inline(always)]
    pub fn interleaved(&self, ty: QuantType) -> Option<Interleaved16> {
        self.interleaved[ty as usize]
    }

    #[inline(always)]
    pub fn interleaved_axpy(&self, ty: QuantType) -> Option<InterleavedAxpy16> {
        self.interleaved_axpys[ty as usize]
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
        dots_with_sums: with_sums(scalar::dot_q4_1_sums, scalar::dot_q5_1_sums),
        dots_x4: [None; 14],
        axpys: q8_0_axpy(scalar::axpy_q8_0),
        gemms: [None; 14],
        interleaved: [None; 14],
        interleaved_axpys: [None; 14],
        quantize_q8_0_acts: scalar::quantize_q8_0_acts,
    }
}

/// An `axpys` table with a Q8_0 kernel.
pub fn q8_0_axpy(f: AxpyFn) -> [Option<AxpyFn>; 14] {
    let mut t = [None; 14];
    t[QuantType::Q8_0 as usize] = Some(f);
    t
}

/// A `dots_x4` table from (format, four-row kernel) pairs (Q4_1/Q5_1 ones take block sums).
pub fn x4<const N: usize>(kernels: [(QuantType, Dot4Fn); N]) -> [Option<Dot4Fn>; 14] {
    let mut t = [None; 14];
    for (ty, f) in kernels {
        t[ty as usize] = Some(f);
    }
    t
}

/// The `dots_with_sums` table of a set that has Q4_1 and Q5_1 variants.
pub fn with_sums(q4_1: DotSumsFn, q5_1: DotSumsFn) -> [Option<DotSumsFn>; 14] {
    let mut t = [None; 14];
    t[QuantType::Q4_1 as usize] = Some(q4_1);
    t[QuantType::Q5_1 as usize] = Some(q5_1);
    t
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

/// The kernel set the runtime uses, chosen once: the best this CPU runs, or the one named by the
/// environment variable `TOMOE_KERNELS` (e.g. `scalar`, `avx2`) when this CPU has it, so that a
/// numerical difference can be traced to a kernel set without rebuilding.
pub fn kernels() -> &'static KernelSet {
    BEST.get_or_init(|| {
        let mut sets = available_sets();
        if let Ok(name) = std::env::var("TOMOE_KERNELS") {
            if let Some(i) = sets.iter().position(|s| s.name == name) {
                return sets.swap_remove(i);
            }
            let names: Vec<&str> = sets.iter().map(|s| s.name).collect();
            eprintln!("tomoe: TOMOE_KERNELS={name:?} is not available on this CPU (have: {names:?}); using the best");
        }
        sets.pop().expect("the scalar set is always present")
    })
}

/// Why [`select_kernels`] did not choose the named kernel set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectKernelsError {
    /// No set of that name runs on this CPU.
    #[error("kernel set {name:?} is not available on this CPU (available: {})", available.join(", "))]
    NotAvailable {
        name: String,
        /// The names of [`available_sets`].
        available: Vec<&'static str>,
    },
    /// The process already uses another set (chosen by an earlier call, or at the first use of
    /// [`kernels`]).
    #[error(
        "kernel set {requested:?} cannot be chosen: this process already uses {chosen:?} (the set is chosen once per process)"
    )]
    AlreadyChosen {
        requested: String,
        chosen: &'static str,
    },
}

/// Chooses the process-wide kernel set by name (one of [`available_sets`]' names) and returns it.
///
/// The set is global and chosen once per process, as ggml's CPU backend picks its kernels: by
/// the first call of this function, or else at the first use of [`kernels`] (the set named by
/// `TOMOE_KERNELS`, or the best). Call it before anything computes; a later call naming the set
/// in use succeeds, one naming another fails with [`SelectKernelsError::AlreadyChosen`].
pub fn select_kernels(name: &str) -> Result<&'static KernelSet, SelectKernelsError> {
    let mut sets = available_sets();
    let Some(i) = sets.iter().position(|s| s.name == name) else {
        let available = sets.iter().map(|s| s.name).collect();
        return Err(SelectKernelsError::NotAvailable {
            name: name.to_string(),
            available,
        });
    };
    let wanted = sets.swap_remove(i);
    let chosen = BEST.get_or_init(|| wanted);
    if chosen.name == name {
        Ok(chosen)
    } else {
        Err(SelectKernelsError::AlreadyChosen {
            requested: name.to_string(),
            chosen: chosen.name,
        })
    }
}
