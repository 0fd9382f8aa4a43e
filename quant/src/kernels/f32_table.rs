//! The f32 vector math of a kernel set (`KernelSet::f32`): one entry per hot function of
//! `crate::vecmath`, whose public functions check the shapes and call the entry of the set in
//! use. The scalar set holds the scalar references; each ISA file replaces the entries it
//! speeds up, every one equal to the reference bit for bit (the same summation order).
//!
//! Every entry is unsafe: it may read and write without bounds checks what the `vecmath`
//! function of the same name checks, and a SIMD entry needs its set's CPU features (sets come
//! from `crate::dispatch`, which only hands out sets the CPU runs).

use crate::vecmath::{activations, dots, expand, f16, rope};

/// `(a, row_stride, stride, rows, b, b_stride, n_b, len, out, out_stride)`: the value sums of
/// several queries, as `vecmath::dot_chunks32_rows_gemm` (`A` = f32) and its f16 form (`u16`).
pub type RowsGemmFn<A> = unsafe fn(&[A], usize, usize, usize, &[f32], usize, usize, usize, &mut [f32], usize);

/// `(a, row_stride, stride, b, gemm_order, out)`, as `vecmath::dot_chunks32_rows`.
pub type Chunks32RowsFn = unsafe fn(&[f32], usize, usize, &[f32], bool, &mut [f32]);

/// `(a, bits, packed, slot, head, out)`, as `vecmath::expand_weighted_sum`.
pub type ExpandFn = unsafe fn(&[f32], &[u64], &[f32], usize, usize, &mut [f32]);

/// `(queries, bits, packed, slot, head, width, out)` for one to four queries, as
/// `vecmath::expand_weighted_sums` (`out` their rows of `width`).
pub type ExpandSumsFn = unsafe fn(&[(usize, &[f32])], &[u64], &[f32], usize, usize, usize, &mut [f32]);

/// The f32 helpers of one set; each entry as the `vecmath` function of its name.
#[derive(Copy, Clone)]
pub struct F32Kernels {
    pub exp_sub_sum: unsafe fn(&mut [f32], f32) -> f64,
    pub swiglu: unsafe fn(&mut [f32], &[f32]),
    pub dot: unsafe fn(&[f32], &[f32]) -> f32,
    pub dot_chunks32: unsafe fn(&[f32], usize, &[f32], bool) -> f32,
    pub dot_rows: unsafe fn(&[f32], usize, &[f32], &mut [f32]),
    pub dot_chunks32_rows: Chunks32RowsFn,
    pub dot_chunks32_rows_gemm: RowsGemmFn<f32>,
    pub dot16_transposed: unsafe fn(&[f32], &[f32], &mut [f32; 16]),
    pub f32_to_f16_slice: unsafe fn(&[f32], &mut [u16]),
    pub round_f16: unsafe fn(&mut [f32]),
    pub dot16_transposed_f16: unsafe fn(&[u16], &[f32], bool, &mut [f32; 16]),
    pub dot_chunks32_rows_f16: unsafe fn(&[u16], usize, usize, &[f32], &mut [f32]),
    pub dot_chunks32_rows_gemm_f16: RowsGemmFn<u16>,
    pub expand_weighted_sum: ExpandFn,
    /// Several queries reading each position once; without it each query runs alone.
    pub expand_weighted_sums: Option<ExpandSumsFn>,
    pub rope: unsafe fn(&mut [f32], &[f32], &[f32], bool),
}

impl F32Kernels {
    /// The scalar references. Never inlined, so that every set holds the same address for a
    /// scalar entry (a small function may be copied into each codegen unit that takes it).
    #[inline(never)]
    pub fn scalar() -> F32Kernels {
        F32Kernels {
            exp_sub_sum: activations::exp_sub_sum_scalar,
            swiglu: activations::swiglu_scalar,
            dot: dots::dot_scalar,
            dot_chunks32: dots::dot_chunks32_scalar,
            dot_rows: dots::dot_rows_scalar,
            dot_chunks32_rows: dots::dot_chunks32_rows_scalar,
            dot_chunks32_rows_gemm: dots::dot_chunks32_rows_gemm_scalar,
            dot16_transposed: dots::dot16_transposed_scalar,
            f32_to_f16_slice: f16::f32_to_f16_slice_scalar,
            round_f16: f16::round_f16_scalar,
            dot16_transposed_f16: f16::dot16_transposed_f16_scalar,
            dot_chunks32_rows_f16: f16::dot_chunks32_rows_f16_scalar,
            dot_chunks32_rows_gemm_f16: f16::dot_chunks32_rows_gemm_f16_scalar,
            expand_weighted_sum: expand::expand_scalar,
            expand_weighted_sums: None,
            rope: rope::rope_scalar,
        }
    }

    /// Each entry's name and address (`None` for an absent one): to list what a set replaces.
    pub fn entries(&self) -> [(&'static str, Option<usize>); 16] {
        [
            ("exp_sub_sum", Some(self.exp_sub_sum as usize)),
            ("swiglu", Some(self.swiglu as usize)),
            ("dot", Some(self.dot as usize)),
            ("dot_chunks32", Some(self.dot_chunks32 as usize)),
            ("dot_rows", Some(self.dot_rows as usize)),
            ("dot_chunks32_rows", Some(self.dot_chunks32_rows as usize)),
            ("dot_chunks32_rows_gemm", Some(self.dot_chunks32_rows_gemm as usize)),
            ("dot16_transposed", Some(self.dot16_transposed as usize)),
            ("f32_to_f16_slice", Some(self.f32_to_f16_slice as usize)),
            ("round_f16", Some(self.round_f16 as usize)),
            ("dot16_transposed_f16", Some(self.dot16_transposed_f16 as usize)),
            ("dot_chunks32_rows_f16", Some(self.dot_chunks32_rows_f16 as usize)),
            (
                "dot_chunks32_rows_gemm_f16",
                Some(self.dot_chunks32_rows_gemm_f16 as usize),
            ),
            ("expand_weighted_sum", Some(self.expand_weighted_sum as usize)),
            ("expand_weighted_sums", self.expand_weighted_sums.map(|f| f as usize)),
            ("rope", Some(self.rope as usize)),
        ]
    }

    /// The names of the entries this set replaces in `base` (usually the scalar set's).
    pub fn overrides(&self, base: &F32Kernels) -> Vec<&'static str> {
        self.entries()
            .iter()
            .zip(base.entries())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}
