//! Activations quantized for a weight format, in a reusable buffer.

use rayon::prelude::*;

use crate::blocks::codec;
use crate::dispatch::kernels;
use crate::error::QuantError;
use crate::formats::QuantType;

/// Activation vectors quantized for one weight format (to its `vec_dot_type`); a reusable
/// buffer, so per-token quantization does not allocate once it has grown.
#[derive(Clone, Debug, Default)]
pub struct QuantizedInput {
    pub(super) ty: Option<QuantType>,
    pub(super) cols: usize,
    pub(super) n_vecs: usize,
    pub(super) row_bytes: usize,
    pub(super) data: Vec<u8>,
    /// For Q8_0 activations: d·Σq per block, vector-major (see `kernels::DotSumsFn`).
    pub(super) sums: Vec<f32>,
}

impl QuantizedInput {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `x` (`n_vecs` vectors of `cols` values, back to back) for dot products with
    /// `weight_ty` rows.
    ///
    /// # Panics
    /// If `cols` is zero or not a multiple of the block size of `weight_ty.vec_dot_type()`, or
    /// `x.len()` is not a multiple of `cols`; [`QuantizedInput::try_quantize`] returns these
    /// as errors instead.
    pub fn quantize(&mut self, weight_ty: QuantType, x: &[f32], cols: usize) {
        if let Err(e) = self.try_quantize(weight_ty, x, cols) {
            panic!("QuantizedInput::quantize: {e}");
        }
    }

    pub fn try_quantize(&mut self, weight_ty: QuantType, x: &[f32], cols: usize) -> Result<(), QuantError> {
        let ty = weight_ty.vec_dot_type();
        if cols == 0 || x.len() % cols != 0 {
            return Err(QuantError::InputLength { len: x.len(), cols });
        }
        let row_bytes = ty.row_bytes(cols).ok_or(QuantError::RowNotBlockMultiple {
            ty,
            cols,
            block: ty.block_size(),
        })?;
        let n_vecs = x.len() / cols;
        let total = row_bytes
            .checked_mul(n_vecs)
            .ok_or(QuantError::SizeOverflow { ty, rows: n_vecs, cols })?;
        self.data.resize(total, 0);
        // One vector's quants (and block sums, for Q8_0 activations).
        let nb = cols / ty.block_size();
        let (data, sums) = (&mut self.data, &mut self.sums);
        if ty == QuantType::Q8_0 {
            sums.resize(n_vecs * nb, 0.0);
        } else {
            sums.clear();
        }
        let quantize_q8_0 = kernels().quantize_q8_0_acts;
        let quantize = codec(ty).0;
        let one = |src: &[f32], dst: &mut [u8], sums: &mut [f32]| {
            if ty == QuantType::Q8_0 {
                // SAFETY: the dispatched set runs on this CPU; the row holds `cols` values,
                // `row_bytes` bytes and `nb` sums, as the kernel requires (and checks).
                unsafe { quantize_q8_0(src, dst, sums) }
            } else {
                quantize(src, dst)
            }
        };
        let sum_len = if sums.is_empty() { 0 } else { nb };
        if n_vecs > 1 {
            // Vectors in parallel (each is quantized on its own).
            let rows = x.par_chunks_exact(cols).zip(data.par_chunks_exact_mut(row_bytes));
            if sum_len == 0 {
                rows.for_each(|(src, dst)| one(src, dst, &mut []));
            } else {
                rows.zip(sums.par_chunks_exact_mut(sum_len))
                    .for_each(|((src, dst), s)| one(src, dst, s));
            }
        } else {
            one(x, data, sums);
        }
        self.ty = Some(ty);
        self.cols = cols;
        self.n_vecs = n_vecs;
        self.row_bytes = row_bytes;
        Ok(())
    }

    pub fn n_vecs(&self) -> usize {
        self.n_vecs
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The activation format (`None` before the first `quantize`).
    pub fn vec_type(&self) -> Option<QuantType> {
        self.ty
    }
    /// d·Σq per block of vector `v` for Q8_0 activations (empty for other formats).
    pub fn block_sums(&self, v: usize) -> &[f32] {
        if self.sums.is_empty() {
            return &[];
        }
        let per = self.sums.len() / self.n_vecs;
        &self.sums[v * per..(v + 1) * per]
    }

    /// The bytes of vector `v`.
    pub fn vector(&self, v: usize) -> &[u8] {
        assert!(v < self.n_vecs, "vector {v} out of range ({} vectors)", self.n_vecs);
        &self.data[v * self.row_bytes..(v + 1) * self.row_bytes]
    }
}
