//! A kernel set as one table: for each weight format, every kernel the set runs on it (as
//! ggml's `type_traits_cpu[GGML_TYPE_…]`). A set starts as the scalar set and each ISA file
//! replaces the entries it speeds up, so a format no ISA file mentions keeps the reference
//! kernels; the dispatcher (`crate::dispatch`) only chooses among the finished sets.

use std::ops::{Index, IndexMut};

use super::f32_table::F32Kernels;
use super::{
    scalar, AxpyFn, Dot4Fn, DotFn, DotSumsFn, GemmKernel, Interleaved16, InterleavedAxpy16, QuantizeActsFn,
    UnpackedRows,
};
use crate::formats::QuantType;

/// What one set runs on one weight format.
#[derive(Copy, Clone)]
pub struct FormatKernels {
    /// Dot product of a weight row with an activation row (see [`DotFn`]).
    pub dot: DotFn,
    /// The dot product taking precomputed activation block sums (see [`DotSumsFn`]).
    pub dot_with_sums: Option<DotSumsFn>,
    /// Four rows at once (see [`Dot4Fn`]); for Q4_1/Q5_1 it takes the block sums.
    pub dot_x4: Option<Dot4Fn>,
    /// Row-scaled accumulation (see [`AxpyFn`]).
    pub axpy: Option<AxpyFn>,
    /// Tiled matrix-matrix product (see [`GemmKernel`]).
    pub gemm: Option<GemmKernel>,
    /// Matrix-vector product over row-interleaved weights (see [`Interleaved16`]).
    pub interleaved: Option<Interleaved16>,
    /// Weighted row sums over row-interleaved weights (see [`InterleavedAxpy16`]).
    pub interleaved_axpy: Option<InterleavedAxpy16>,
    /// Dot products over rows unpacked for many vectors (see [`UnpackedRows`]).
    pub unpacked_rows: Option<UnpackedRows>,
}

impl FormatKernels {
    /// Only the single-row dot product.
    const fn dot_only(dot: DotFn) -> Self {
        FormatKernels {
            dot,
            dot_with_sums: None,
            dot_x4: None,
            axpy: None,
            gemm: None,
            interleaved: None,
            interleaved_axpy: None,
            unpacked_rows: None,
        }
    }
}

/// A named set of kernels, one [`FormatKernels`] per format (index it by [`QuantType`]).
#[derive(Clone)]
pub struct KernelSet {
    pub name: &'static str,
    formats: [FormatKernels; QuantType::COUNT],
    /// The Q8_0 activation quantizer (see [`QuantizeActsFn`]).
    pub quantize_q8_0_acts: QuantizeActsFn,
    /// The f32 vector math of `crate::vecmath` (see [`F32Kernels`]).
    pub f32: F32Kernels,
}

impl Index<QuantType> for KernelSet {
    type Output = FormatKernels;
    #[inline(always)]
    fn index(&self, ty: QuantType) -> &FormatKernels {
        &self.formats[ty as usize]
    }
}

impl IndexMut<QuantType> for KernelSet {
    #[inline(always)]
    fn index_mut(&mut self, ty: QuantType) -> &mut FormatKernels {
        &mut self.formats[ty as usize]
    }
}

impl KernelSet {
    /// The scalar reference set: a dot product for every format, the block-sum variants of
    /// Q4_1/Q5_1, the Q8_0 row-scaled accumulation and the scalar f32 math. Always available.
    pub fn scalar() -> KernelSet {
        let mut set = KernelSet {
            name: "scalar",
            formats: QuantType::ALL.map(|ty| FormatKernels::dot_only(scalar_dot(ty))),
            quantize_q8_0_acts: scalar::quantize_q8_0_acts,
            f32: F32Kernels::scalar(),
        };
        set[QuantType::Q4_1].dot_with_sums = Some(scalar::dot_q4_1_sums);
        set[QuantType::Q5_1].dot_with_sums = Some(scalar::dot_q5_1_sums);
        set[QuantType::Q8_0].axpy = Some(scalar::axpy_q8_0);
        set
    }

    /// This set under another name, to be changed into a new one.
    pub fn renamed(&self, name: &'static str) -> KernelSet {
        KernelSet { name, ..self.clone() }
    }

    /// Sets the single-row dot products of the listed formats.
    pub fn set_dots(&mut self, dots: &[(QuantType, DotFn)]) {
        for &(ty, f) in dots {
            self[ty].dot = f;
        }
    }

    /// Sets the four-row dot products of the listed formats.
    pub fn set_dots_x4(&mut self, dots: &[(QuantType, Dot4Fn)]) {
        for &(ty, f) in dots {
            self[ty].dot_x4 = Some(f);
        }
    }

    /// Removes every kernel that depends on the single-row ones being a particular set's (the
    /// four-row, tiled and interleaved products, bit-identical to them), for a set that
    /// replaces single-row kernels of another.
    pub fn clear_derived(&mut self) {
        for f in &mut self.formats {
            (f.dot_x4, f.gemm, f.interleaved, f.interleaved_axpy) = (None, None, None, None);
            f.unpacked_rows = None;
        }
    }

    #[inline(always)]
    pub fn dot(&self, ty: QuantType) -> DotFn {
        self[ty].dot
    }

    #[inline(always)]
    pub fn dot_with_sums(&self, ty: QuantType) -> Option<DotSumsFn> {
        self[ty].dot_with_sums
    }

    #[inline(always)]
    pub fn dot_x4(&self, ty: QuantType) -> Option<Dot4Fn> {
        self[ty].dot_x4
    }

    #[inline(always)]
    pub fn axpy(&self, ty: QuantType) -> Option<AxpyFn> {
        self[ty].axpy
    }

    #[inline(always)]
    pub fn gemm(&self, ty: QuantType) -> Option<GemmKernel> {
        self[ty].gemm
    }

    #[inline(always)]
    pub fn interleaved(&self, ty: QuantType) -> Option<Interleaved16> {
        self[ty].interleaved
    }

    #[inline(always)]
    pub fn interleaved_axpy(&self, ty: QuantType) -> Option<InterleavedAxpy16> {
        self[ty].interleaved_axpy
    }

    #[inline(always)]
    pub fn unpacked_rows(&self, ty: QuantType) -> Option<UnpackedRows> {
        self[ty].unpacked_rows
    }
}

/// The scalar dot product of a format. Never inlined, so that every caller gets the same
/// address for a function that the compiler might otherwise copy into each codegen unit.
#[inline(never)]
fn scalar_dot(ty: QuantType) -> DotFn {
    use QuantType::*;
    match ty {
        F32 => scalar::dot_f32,
        F16 => scalar::dot_f16,
        BF16 => scalar::dot_bf16,
        Q4_0 => scalar::dot_q4_0,
        Q4_1 => scalar::dot_q4_1,
        Q5_0 => scalar::dot_q5_0,
        Q5_1 => scalar::dot_q5_1,
        Q8_0 => scalar::dot_q8_0,
        Q2_K => scalar::dot_q2_k,
        Q3_K => scalar::dot_q3_k,
        Q4_K => scalar::dot_q4_k,
        Q5_K => scalar::dot_q5_k,
        Q6_K => scalar::dot_q6_k,
        Q8_K => scalar::dot_q8_k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scalar_set_has_a_dot_for_every_format_and_nothing_derived() {
        let s = KernelSet::scalar();
        for ty in QuantType::ALL {
            assert!(s.dot(ty) as usize == scalar_dot(ty) as usize, "{ty}");
            assert!(
                s.dot_x4(ty).is_none()
                    && s.gemm(ty).is_none()
                    && s.interleaved(ty).is_none()
                    && s.unpacked_rows(ty).is_none(),
                "{ty}"
            );
        }
        assert!(s.dot_with_sums(QuantType::Q4_1).is_some() && s.dot_with_sums(QuantType::Q4_0).is_none());
        assert!(s.axpy(QuantType::Q8_0).is_some() && s.axpy(QuantType::Q4_0).is_none());
    }

    #[test]
    fn a_renamed_set_changes_apart_from_its_origin() {
        let s = KernelSet::scalar();
        let mut t = s.renamed("other");
        t.set_dots(&[(QuantType::Q8_0, scalar::dot_q4_0)]);
        assert_eq!((s.name, t.name), ("scalar", "other"));
        assert!(s.dot(QuantType::Q8_0) as usize == scalar::dot_q8_0 as DotFn as usize);
        assert!(t.dot(QuantType::Q8_0) as usize == scalar::dot_q4_0 as DotFn as usize);
    }
}
