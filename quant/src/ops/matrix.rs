//! A borrowed quantized matrix and its row-interleaved copies.

use rayon::prelude::*;

use crate::dispatch::kernels;
use crate::error::QuantError;
use crate::formats::QuantType;
use crate::kernels::interleave::GROUP;

/// Which kernel a row-interleaved copy of a matrix is laid out for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CopyLayout {
    /// Matrix-vector products (`kernels::Interleaved16`): [`MatRef::interleave`].
    MatVec,
    /// Weighted row sums (`kernels::InterleavedAxpy16`), for a transposed matrix read by rows:
    /// [`MatRef::interleave_for_axpy`].
    Axpy,
}

/// A kernel set's packing of 16 rows (of `cols` columns) into an interleaved group.
type PackFn = fn(usize, &[u8], &mut [u8]);

/// The rows of an extra group of an interleaved copy ([`MatRef::interleave_extra`]): rows of
/// the matrix, `None` for a row of zeros.
pub type ExtraGroup = [Option<usize>; GROUP];

/// A borrowed row-major quantized matrix: `rows` rows of `cols` elements, each row
/// `ty.row_bytes(cols)` bytes.
#[derive(Copy, Clone, Debug)]
pub struct MatRef<'a> {
    pub(super) ty: QuantType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_bytes: usize,
    pub(super) data: &'a [u8],
    /// The whole groups of 16 rows again, interleaved for the kernel set's `Interleaved16`
    /// (see [`MatRef::interleave`]); matrix-vector products then read these instead. Possibly
    /// followed by extra groups of gathered rows ([`MatRef::interleave_extra`]).
    pub(super) interleaved: Option<&'a [u8]>,
    /// The same for `InterleavedAxpy16` (see [`MatRef::interleave_for_axpy`]); weighted row sums
    /// ([`swiglu_rows`]) then read these instead.
    pub(super) axpy_interleaved: Option<&'a [u8]>,
}

impl<'a> MatRef<'a> {
    /// Checks that `cols` is a whole number of blocks and `data` holds exactly the matrix.
    pub fn new(ty: QuantType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let row_bytes = ty.row_bytes(cols).ok_or(if cols % ty.block_size() != 0 {
            QuantError::RowNotBlockMultiple {
                ty,
                cols,
                block: ty.block_size(),
            }
        } else {
            QuantError::SizeOverflow { ty, rows, cols }
        })?;
        let expected = row_bytes
            .checked_mul(rows)
            .ok_or(QuantError::SizeOverflow { ty, rows, cols })?;
        if data.len() != expected {
            return Err(QuantError::DataLength {
                ty,
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(MatRef {
            ty,
            rows,
            cols,
            row_bytes,
            data,
            interleaved: None,
            axpy_interleaved: None,
        })
    }

    /// The matrix's whole groups of 16 rows interleaved for the running kernel set's
    /// matrix-vector kernel (`kernels::Interleaved16`), or `None` if the set has none for this
    /// format (or the matrix has fewer than 16 rows). Attach it with [`MatRef::with_interleaved`].
    /// Decoding then runs a few instructions per weight quad for 16 rows at once instead of a
    /// dozen per row; the results are bit-identical.
    pub fn interleave(&self) -> Option<Vec<u8>> {
        self.interleave_extra(&[])
    }

    /// [`MatRef::interleave`], followed by `extra` groups of gathered rows: each lists the
    /// matrix rows it holds, `None` for a row of zeros. With extra groups, the matrix's last
    /// group comes whole too, padded with zero rows. Once attached, the copy's group `k` holds
    /// rows `16k..16k + 16`, the extra groups' rows counting on from the end of the last group
    /// (`rows` rounded up to 16): [`swiglu_rows`](super::swiglu_rows) and
    /// [`axpy_runs`](super::axpy_runs) read those as whole groups (a MoE expert's scattered rows,
    /// packed to stream in one run).
    ///
    /// # Panics
    /// If an extra row is out of range.
    pub fn interleave_extra(&self, extra: &[ExtraGroup]) -> Option<Vec<u8>> {
        self.interleave_to_vec(CopyLayout::MatVec, extra)
    }

    /// The matrix's whole groups of 16 rows interleaved for the running kernel set's weighted
    /// row sums (`kernels::InterleavedAxpy16`), or `None` as for [`MatRef::interleave`]. Attach
    /// it with [`MatRef::with_axpy_interleaved`]; for a transposed down projection read by rows.
    pub fn interleave_for_axpy(&self) -> Option<Vec<u8>> {
        self.interleave_for_axpy_extra(&[])
    }

    /// [`MatRef::interleave_for_axpy`] with extra groups, as [`MatRef::interleave_extra`].
    ///
    /// # Panics
    /// As [`MatRef::interleave_extra`].
    pub fn interleave_for_axpy_extra(&self, extra: &[ExtraGroup]) -> Option<Vec<u8>> {
        self.interleave_to_vec(CopyLayout::Axpy, extra)
    }

    fn interleave_to_vec(&self, layout: CopyLayout, extra: &[ExtraGroup]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; self.copy_len(layout, extra.len())?];
        self.interleave_into(layout, extra, &mut out, |_| {})?;
        Some(out)
    }

    /// Bytes of the `layout` copy with `n_extra` extra groups ([`MatRef::interleave_extra`]), or
    /// `None` where there is no such copy (no kernel in the running set, or no whole group): so a
    /// caller can lay many copies out in one buffer before writing them.
    pub fn copy_len(&self, layout: CopyLayout, n_extra: usize) -> Option<usize> {
        self.pack_fn(layout)?;
        let whole = self.rows / GROUP;
        if whole == 0 {
            return None;
        }
        let last = usize::from(n_extra > 0 && self.rows % GROUP != 0);
        Some((whole + last + n_extra) * GROUP * self.row_bytes)
    }

    /// Writes the `layout` copy with `extra` groups into `out`, which must be
    /// [`MatRef::copy_len`] bytes; `None` (nothing written) where there is no such copy. The
    /// whole groups go in slices of a few MiB, after each of which `packed` gets the row-major
    /// bytes packed so far (a prefix of [`MatRef::data`]): a loader can give them back as it
    /// goes, so that a large matrix and its copy are never both resident.
    ///
    /// # Panics
    /// If `out` is not that size, or an extra row is out of range.
    pub fn interleave_into(
        &self,
        layout: CopyLayout,
        extra: &[ExtraGroup],
        out: &mut [u8],
        mut packed: impl FnMut(&'a [u8]),
    ) -> Option<()> {
        let len = self.copy_len(layout, extra.len())?;
        assert_eq!(out.len(), len, "the copy's buffer is not copy_len bytes");
        let pack = self.pack_fn(layout)?;
        let whole = self.rows / GROUP;
        // With extra groups, the last partial group as one of them (its own rows, then zeros).
        let last: Option<ExtraGroup> = (!extra.is_empty() && self.rows % GROUP != 0)
            .then(|| std::array::from_fn(|l| Some(whole * GROUP + l).filter(|&r| r < self.rows)));
        let extra: Vec<&ExtraGroup> = last.iter().chain(extra).collect();
        let group_bytes = GROUP * self.row_bytes;
        let (own, gathered) = out.split_at_mut(whole * group_bytes);
        let slice = (8 << 20) / group_bytes.max(1) * group_bytes + group_bytes;
        for (i, o) in own.chunks_mut(slice).enumerate() {
            let src = &self.data[i * slice..i * slice + o.len()];
            o.par_chunks_mut(group_bytes)
                .zip(src.par_chunks_exact(group_bytes))
                .for_each(|(o, rows)| pack(self.cols, rows, o));
            packed(&self.data[..i * slice + o.len()]);
        }
        gathered.par_chunks_mut(group_bytes).zip(extra).for_each_init(
            || vec![0u8; group_bytes],
            |rows, (o, g)| {
                for (dst, src) in rows.chunks_exact_mut(self.row_bytes).zip(g) {
                    match src {
                        Some(r) => dst.copy_from_slice(self.row(*r)),
                        // All-zero bytes are zero rows in every format (scales of 0).
                        None => dst.fill(0),
                    }
                }
                pack(self.cols, rows, o);
            },
        );
        Some(())
    }

    fn pack_fn(&self, layout: CopyLayout) -> Option<PackFn> {
        let set = kernels();
        match layout {
            CopyLayout::MatVec => set.interleaved(self.ty).map(|k| k.pack),
            CopyLayout::Axpy => set.interleaved_axpy(self.ty).map(|k| k.pack),
        }
    }

    /// This matrix with `data` as its `layout` copy: [`MatRef::with_interleaved`] or
    /// [`MatRef::with_axpy_interleaved`].
    ///
    /// # Errors
    /// As those.
    pub fn with_copy(self, layout: CopyLayout, data: &'a [u8]) -> Result<Self, QuantError> {
        match layout {
            CopyLayout::MatVec => self.with_interleaved(data),
            CopyLayout::Axpy => self.with_axpy_interleaved(data),
        }
    }

    /// This matrix with `data` (from [`MatRef::interleave`]) as its interleaved copy.
    ///
    /// # Errors
    /// If `data` is not the size of the matrix's whole groups of 16 rows.
    pub fn with_interleaved(self, data: &'a [u8]) -> Result<Self, QuantError> {
        self.check_groups_len(data)?;
        Ok(MatRef {
            interleaved: Some(data),
            ..self
        })
    }

    /// This matrix with `data` (from [`MatRef::interleave_for_axpy`]) as its copy for weighted
    /// row sums.
    ///
    /// # Errors
    /// If `data` is not the size of the matrix's whole groups of 16 rows.
    pub fn with_axpy_interleaved(self, data: &'a [u8]) -> Result<Self, QuantError> {
        self.check_groups_len(data)?;
        Ok(MatRef {
            axpy_interleaved: Some(data),
            ..self
        })
    }

    /// A copy must hold the matrix's whole groups, then any number of extra ones (the first
    /// the last partial group, if any).
    fn check_groups_len(&self, data: &[u8]) -> Result<(), QuantError> {
        let expected = self.rows / GROUP * GROUP * self.row_bytes;
        let whole_groups = data.len() >= expected && (data.len() - expected) % (GROUP * self.row_bytes).max(1) == 0;
        if !whole_groups {
            return Err(QuantError::DataLength {
                ty: self.ty,
                rows: self.rows,
                cols: self.cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(())
    }

    /// The rows of the matrix and of the extra groups of `copy` (one of its copies): rows past
    /// `rows` are readable only as whole groups of that copy.
    pub(super) fn rows_with_extra(&self, copy: Option<&[u8]>) -> usize {
        let groups = copy.map_or(0, |c| c.len() / (GROUP * self.row_bytes).max(1));
        self.rows.max(groups * GROUP)
    }

    pub fn ty(&self) -> QuantType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// The bytes of row `r`. Panics if `r >= rows`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        assert!(r < self.rows, "row {r} out of range for a matrix of {} rows", self.rows);
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// All the bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The row-major bytes that [`matvec`](super::matvec), [`matmul`](super::matmul) and
    /// [`matvec_rows`](super::matvec_rows) over whole groups no
    /// longer read once the matrix has its interleaved copy ([`MatRef::with_interleaved`]): its
    /// whole groups of 16 rows, when the running set has an interleaved kernel for the format
    /// (batches then run over the copy too, not through a tiled kernel). `None` otherwise. A
    /// loader may give those bytes back to the system; other readers (a row lookup, the rows
    /// of a MoE expert) still read them.
    pub fn bytes_a_copy_replaces(&self) -> Option<&'a [u8]> {
        kernels()
            .interleaved(self.ty)
            .is_some()
            .then(|| &self.data[..self.rows / GROUP * GROUP * self.row_bytes])
    }
}
