//! Matrix-vector and matrix-matrix products of a quantized weight matrix with quantized
//! activations, over row ranges, parallel with rayon.

use rayon::prelude::*;

use crate::blocks::codec;
use crate::dispatch::kernels;
use crate::error::QuantError;
use crate::formats::QuantType;
use crate::kernels::interleave::GROUP;
use crate::vecmath;

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
    ty: QuantType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
    /// The whole groups of 16 rows again, interleaved for the kernel set's `Interleaved16`
    /// (see [`MatRef::interleave`]); matrix-vector products then read these instead. Possibly
    /// followed by extra groups of gathered rows ([`MatRef::interleave_extra`]).
    interleaved: Option<&'a [u8]>,
    /// The same for `InterleavedAxpy16` (see [`MatRef::interleave_for_axpy`]); weighted row sums
    /// ([`swiglu_rows`]) then read these instead.
    axpy_interleaved: Option<&'a [u8]>,
}

impl<'a> MatRef<'a> {
    /// Checks that `cols` is a whole number of blocks and `data` holds exactly the matrix.
    pub fn new(
        ty: QuantType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, QuantError> {
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
    /// (`rows` rounded up to 16): [`swiglu_rows`] and [`axpy_runs`] read those as whole groups
    /// (a MoE expert's scattered rows, packed to stream in one run).
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
        gathered
            .par_chunks_mut(group_bytes)
            .zip(extra)
            .for_each_init(
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
        let whole_groups = data.len() >= expected
            && (data.len() - expected) % (GROUP * self.row_bytes).max(1) == 0;
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
    fn rows_with_extra(&self, copy: Option<&[u8]>) -> usize {
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
        assert!(
            r < self.rows,
            "row {r} out of range for a matrix of {} rows",
            self.rows
        );
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// All the bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The row-major bytes that [`matvec`], [`matmul`] and [`matvec_rows`] over whole groups no
    /// longer read once the matrix has its interleaved copy ([`MatRef::with_interleaved`]): its
    /// whole groups of 16 rows, when the running set takes batches through the interleaved
    /// kernel too (it has one for the format and no tiled kernel, whose batches read the
    /// row-major data). `None` otherwise. A loader may give those bytes back to the system;
    /// other readers (a row lookup, the rows of a MoE expert) still read them.
    pub fn bytes_a_copy_replaces(&self) -> Option<&'a [u8]> {
        let set = kernels();
        (set.interleaved(self.ty).is_some() && set.gemm(self.ty).is_none())
            .then(|| &self.data[..self.rows / GROUP * GROUP * self.row_bytes])
    }
}

/// Activation vectors quantized for one weight format (to its `vec_dot_type`); a reusable
/// buffer, so per-token quantization does not allocate once it has grown.
#[derive(Clone, Debug, Default)]
pub struct QuantizedInput {
    ty: Option<QuantType>,
    cols: usize,
    n_vecs: usize,
    row_bytes: usize,
    data: Vec<u8>,
    /// For Q8_0 activations: d·Σq per block, vector-major (see `kernels::DotSumsFn`).
    sums: Vec<f32>,
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

    pub fn try_quantize(
        &mut self,
        weight_ty: QuantType,
        x: &[f32],
        cols: usize,
    ) -> Result<(), QuantError> {
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
            .ok_or(QuantError::SizeOverflow {
                ty,
                rows: n_vecs,
                cols,
            })?;
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
            let rows = x
                .par_chunks_exact(cols)
                .zip(data.par_chunks_exact_mut(row_bytes));
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
        assert!(
            v < self.n_vecs,
            "vector {v} out of range ({} vectors)",
            self.n_vecs
        );
        &self.data[v * self.row_bytes..(v + 1) * self.row_bytes]
    }
}

fn check_compatible(w: &MatRef, x: &QuantizedInput) {
    assert_eq!(
        x.ty,
        Some(w.ty.vec_dot_type()),
        "activations quantized as {:?}, weights {} need {}",
        x.ty,
        w.ty,
        w.ty.vec_dot_type()
    );
    assert_eq!(
        x.cols, w.cols,
        "activation length {} != weight columns {}",
        x.cols, w.cols
    );
}

/// Rows per rayon task: enough tasks for load balance, enough rows to amortise scheduling.
fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (rows / (threads * 8)).clamp(16, 256).min(rows.max(1))
}

/// The dot product of one weight row with activation vector `v`, using the block-sums variant
/// of the kernel where there is one.
struct RowDot<'x> {
    x: &'x QuantizedInput,
    cols: usize,
    dot: crate::kernels::DotFn,
    with_sums: Option<crate::kernels::DotSumsFn>,
    /// Four rows at a time, bit-identical to `dot`/`with_sums` per row.
    x4: Option<crate::kernels::Dot4Fn>,
    /// Sixteen rows at a time over the matrix's interleaved copy, bit-identical as well.
    /// (Used when the matrix has an interleaved copy.)
    x16: Option<crate::kernels::Interleaved16>,
}

impl<'x> RowDot<'x> {
    fn new(w: &MatRef, x: &'x QuantizedInput) -> Self {
        let set = kernels();
        let with_sums = if x.sums.is_empty() {
            None
        } else {
            set.dot_with_sums(w.ty)
        };
        // The four-row Q4_1 kernel needs the block sums.
        let x4 = set
            .dot_x4(w.ty)
            .filter(|_| with_sums.is_some() || set.dot_with_sums(w.ty).is_none());
        // The interleaved kernels with an offset (Q4_1) need the block sums too.
        let x16 = match (set.interleaved(w.ty), w.interleaved) {
            (Some(k), Some(_)) if with_sums.is_some() || set.dot_with_sums(w.ty).is_none() => {
                Some(k)
            }
            _ => None,
        };
        RowDot {
            x,
            cols: w.cols,
            dot: set.dot(w.ty),
            with_sums,
            x4,
            x16,
        }
    }

    /// `out[i] = W[rows.start + i] · x[v]`: whole groups of 16 rows from the interleaved copy
    /// where there is one, the others four rows at a time where the set can.
    #[inline(always)]
    fn rows(&self, w: &MatRef, rows: std::ops::Range<usize>, v: usize, out: &mut [f32]) {
        if self.x16.is_some() && w.interleaved.is_some() {
            let (g0, g1) = (rows.start.next_multiple_of(GROUP), rows.end / GROUP * GROUP);
            if g0 < g1 {
                let (head, rest) = out.split_at_mut(g0 - rows.start);
                let (mid, tail) = rest.split_at_mut(g1 - g0);
                self.plain_rows(w, rows.start..g0, v, head);
                // The rows past the last group come row by row after it (a pruned ToMoE Q or K
                // matrix's last 4-12): ask for them now.
                crate::kernels::prefetch(w.data, g1 * w.row_bytes..rows.end * w.row_bytes);
                for (g, o) in (g0 / GROUP..g1 / GROUP).zip(mid.chunks_exact_mut(GROUP)) {
                    self.group(w, g, v, o.try_into().expect("16 outputs"));
                }
                self.plain_rows(w, g1..rows.end, v, tail);
                return;
            }
        }
        self.plain_rows(w, rows, v, out)
    }

    /// `out[i] = W[16g + i] · x[v]` for the whole group `g`: from the interleaved copy where
    /// there is one (its kernel prefetches ahead, on into group g + 1), else row by row.
    #[inline(always)]
    fn group(&self, w: &MatRef, g: usize, v: usize, out: &mut [f32; GROUP]) {
        self.group_lanes(w, g, 0..GROUP, v, out, Some(g + 1))
    }

    /// `out[i] = W[16g + lanes.start + i] · x[v]`: the whole group `g` through the interleaved
    /// kernel where the copy holds it (the other lanes computed and dropped: streaming the group
    /// costs less than a few rows' scattered reads), else row by row. `next`: the group read
    /// after this one, which the kernel prefetches the start of (`None`: none).
    #[inline(always)]
    fn group_lanes(
        &self,
        w: &MatRef,
        g: usize,
        lanes: std::ops::Range<usize>,
        v: usize,
        out: &mut [f32],
        next: Option<usize>,
    ) {
        let gb = GROUP * w.row_bytes;
        let (k, data) = match (self.x16, w.interleaved) {
            (Some(k), Some(data)) if (g + 1) * gb <= data.len() => (k, data),
            _ => return self.plain_rows(w, g * GROUP + lanes.start..g * GROUP + lanes.end, v, out),
        };
        let mut all = [0f32; GROUP];
        // SAFETY: the set's kernel runs on this CPU; group g lies in `data` (checked above), and
        // the vector and its sums are sized for `cols` (the kernel checks). `next` is only
        // prefetched.
        unsafe {
            (k.dot16)(
                self.cols,
                &data[g * gb..(g + 1) * gb],
                self.x.vector(v),
                self.x.block_sums(v),
                &mut all,
                group_start(data, gb, next),
            )
        };
        out.copy_from_slice(&all[lanes]);
    }

    /// `out[i] = W[rows.start + i] · x[v]` from the row-major data, four rows at a time where the
    /// set can.
    #[inline(always)]
    fn plain_rows(&self, w: &MatRef, rows: std::ops::Range<usize>, v: usize, out: &mut [f32]) {
        // Rows are read once, in order. Short rows make short streams that the hardware
        // prefetcher never gets ahead of: ask for the bytes PREFETCH_AHEAD ahead (within this
        // task's rows) so the loads overlap the arithmetic instead of stalling on memory.
        let ahead = crate::kernels::PREFETCH_AHEAD;
        let end = rows.end * w.row_bytes;
        let short = w.row_bytes <= crate::kernels::PREFETCH_MAX_ROW_BYTES;
        let prefetch_from = |r: usize, n: usize| {
            if short {
                let at = r * w.row_bytes + ahead;
                crate::kernels::prefetch(w.data, at..(at + n * w.row_bytes).min(end));
            }
        };
        let mut r = rows.start;
        if let Some(f) = self.x4 {
            let (xv, sums) = (self.x.vector(v), self.x.block_sums(v));
            while r + 4 <= rows.end {
                prefetch_from(r, 4);
                // SAFETY: as in `dot`; the four rows are rows of `w`, row_bytes(cols) long.
                let y = unsafe {
                    f(
                        self.cols,
                        [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)],
                        xv,
                        sums,
                    )
                };
                out[r - rows.start..r - rows.start + 4].copy_from_slice(&y);
                r += 4;
            }
        }
        for rr in r..rows.end {
            prefetch_from(rr, 1);
            out[rr - rows.start] = self.dot(w.row(rr), v);
        }
    }

    #[inline(always)]
    fn dot(&self, w_row: &[u8], v: usize) -> f32 {
        // SAFETY: the kernel set only contains functions this CPU supports; rows and vectors
        // are row_bytes(cols) long and the block sums one per block, as the kernels require
        // (and check).
        unsafe {
            match self.with_sums {
                Some(f) => f(self.cols, w_row, self.x.vector(v), self.x.block_sums(v)),
                None => (self.dot)(self.cols, w_row, self.x.vector(v)),
            }
        }
    }
}

/// The shape checks of a product over some rows of `w` with one vector of `x` into `y`, one
/// output per row.
fn check_rows(w: &MatRef, rows: &std::ops::Range<usize>, x: &QuantizedInput, y: &[f32]) {
    check_compatible(w, x);
    assert!(x.n_vecs >= 1, "no activation vector");
    assert!(
        rows.start <= rows.end && rows.end <= w.rows,
        "rows {rows:?} out of range ({} rows)",
        w.rows
    );
    assert_eq!(y.len(), rows.len(), "output length");
}

/// y[i] = W[rows.start + i] · x for the given rows (x holds one vector); single-threaded, for
/// callers that partition the work themselves.
///
/// # Panics
/// On mismatched shapes: x not quantized for `w`, `rows` out of range, `y.len() != rows.len()`.
pub fn matvec_rows(w: &MatRef, rows: std::ops::Range<usize>, x: &QuantizedInput, y: &mut [f32]) {
    check_rows(w, &rows, x, y);
    RowDot::new(w, x).rows(w, rows, 0, y);
}

/// y = W · x for one activation vector, parallel over rows.
pub fn matvec(w: &MatRef, x: &QuantizedInput, y: &mut [f32]) {
    check_compatible(w, x);
    assert_eq!(x.n_vecs, 1, "matvec takes one vector, got {}", x.n_vecs);
    assert_eq!(y.len(), w.rows, "output length");
    // Whole groups per task over an interleaved copy, so that none is split into rows.
    let chunk = match w.interleaved {
        Some(_) => rows_per_task(w.rows).next_multiple_of(GROUP),
        None => rows_per_task(w.rows),
    };
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, ys)| {
        let start = i * chunk;
        matvec_rows(w, start..start + ys.len(), x, ys);
    });
}

/// y[v * rows + r] = W[r] · x[v] for every vector of `x`, parallel over row blocks (each task
/// reads its rows once for all vectors).
pub fn matmul(w: &MatRef, x: &QuantizedInput, y: &mut [f32]) {
    check_compatible(w, x);
    assert_eq!(y.len(), w.rows * x.n_vecs, "output length");
    if x.n_vecs == 0 || w.rows == 0 {
        return;
    }
    if let Some(gemm) = kernels().gemm(w.ty) {
        return matmul_tiled(gemm, w, x, y);
    }
    let row_dot = RowDot::new(w, x);
    // Over an interleaved copy the tasks take whole groups, each read from the copy for every
    // vector while it is in cache: fewer instructions than four plain rows at a time, and the
    // matrix's row-major bytes are then never read (see `MatRef::bytes_a_copy_replaces`).
    let grouped = row_dot.x16.is_some() && w.interleaved.is_some();
    let chunk = match grouped {
        true => rows_per_task(w.rows).next_multiple_of(GROUP),
        false => rows_per_task(w.rows),
    };
    let n_chunks = w.rows.div_ceil(chunk);
    // Each task produces its rows for every vector; results are scattered afterwards so the
    // tasks never alias `y`.
    let parts: Vec<Vec<f32>> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let rows = c * chunk..((c + 1) * chunk).min(w.rows);
            let n = rows.len();
            let mut out = vec![0.0f32; n * x.n_vecs];
            // A group of 16 (or four rows) at a time, for every vector while its rows are in
            // cache.
            let mut r = rows.start;
            while r < rows.end {
                let g = match grouped && r % GROUP == 0 && r + GROUP <= rows.end {
                    true => GROUP,
                    false => (rows.end - r).min(4),
                };
                for v in 0..x.n_vecs {
                    let o = v * n + (r - rows.start);
                    row_dot.rows(w, r..r + g, v, &mut out[o..o + g]);
                }
                r += g;
            }
            out
        })
        .collect();
    for (c, part) in parts.iter().enumerate() {
        let start = c * chunk;
        let n = part.len() / x.n_vecs;
        for v in 0..x.n_vecs {
            y[v * w.rows + start..v * w.rows + start + n]
                .copy_from_slice(&part[v * n..(v + 1) * n]);
        }
    }
}

/// `matmul` with the set's tiled kernel: the vectors packed once (into this thread's reused
/// buffer), then parallel over row chunks, each writing its rows of `y` in place.
fn matmul_tiled(gemm: crate::kernels::GemmKernel, w: &MatRef, x: &QuantizedInput, y: &mut [f32]) {
    thread_local! {
        static PACKED: std::cell::RefCell<crate::kernels::PackedActs> = Default::default();
    }
    /// `y`'s start, shared by the tasks; each writes only its own rows of every vector.
    struct Out(*mut f32);
    // SAFETY: the tasks write disjoint elements of `y`, which stays mutably borrowed throughout.
    unsafe impl Sync for Out {}
    impl Out {
        fn at(&self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }
    let out = Out(y.as_mut_ptr());
    let threads = rayon::current_num_threads().max(1);
    let chunk = (w.rows / (threads * 4))
        .clamp(32, 512)
        .next_multiple_of(2)
        .min(w.rows);
    PACKED.with_borrow_mut(|packed| {
        // SAFETY: the dispatcher hands out only kernels this CPU supports; `pack` and `run`
        // check the shapes of the vectors, their block sums and the rows. `y` holds `rows`
        // outputs for each of `n_vecs` vectors (checked by `matmul`), so task `c` writes
        // `y[v · rows + r]` for its own rows `r` only.
        unsafe { (gemm.pack)(w.cols, &x.data, x.row_bytes, &x.sums, packed) };
        let packed = &*packed;
        (0..w.rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let rows = c * chunk..((c + 1) * chunk).min(w.rows);
            let bytes = &w.data[rows.start * w.row_bytes..rows.end * w.row_bytes];
            let at = out.at(rows.start);
            // SAFETY: as above.
            unsafe { (gemm.run)(w.cols, bytes, w.row_bytes, packed, at, w.rows) };
        });
    });
}

/// `y += Σ_r silu(gate_r · xg) · (up_r · xu) · down_t[r]` over rows `rows` of an expert's `runs`
/// (counted through the runs in order: a thread's share of the expert): the SwiGLU MLP of a MoE
/// expert, `down_t` its transposed down projection. The rows go in the pieces of
/// [`run_pieces`], so that each row's three weight rows are read together, once. Grouped pieces
/// come from the matrices' interleaved copies where they have them ([`MatRef::with_interleaved`],
/// [`MatRef::with_axpy_interleaved`]), the other rows from the row-major data. Each group's
/// kernels prefetch on into the group read next, across the gaps between runs. SiLU takes the
/// vector formula for every element (as [`vecmath::swiglu_lanes`]); the gate and up products
/// are [`matvec_rows`]' bits, and the down projection is [`axpy_runs`]' over those activations
/// when the rows are split between calls at the ends of pieces (as threads split an expert; a
/// cut inside a grouped piece makes two pieces, whose coefficients are quantized apart).
///
/// # Panics
/// On mismatched shapes: gate/up/down_t of different row counts, a run out of range, `rows`
/// beyond the runs' rows, inputs not quantized for `gate`/`up`, `y.len() != down_t.cols()`.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_rows(
    gate: &MatRef,
    up: &MatRef,
    down_t: &MatRef,
    runs: &[std::ops::Range<usize>],
    rows: std::ops::Range<usize>,
    xg: &QuantizedInput,
    xu: &QuantizedInput,
    y: &mut [f32],
) {
    check_compatible(gate, xg);
    check_compatible(up, xu);
    assert!(
        gate.rows == up.rows && up.rows == down_t.rows,
        "swiglu_rows: gate, up and down_t have {}, {} and {} rows",
        gate.rows,
        up.rows,
        down_t.rows
    );
    let total = runs_rows(
        runs,
        gate.rows,
        gate.rows_with_extra(gate.interleaved)
            .min(up.rows_with_extra(up.interleaved))
            .min(down_t.rows_with_extra(down_t.axpy_interleaved)),
    );
    assert!(
        rows.start <= rows.end && rows.end <= total,
        "rows {rows:?} beyond the runs' {total} rows"
    );
    assert!(xg.n_vecs >= 1 && xu.n_vecs >= 1, "no activation vector");
    assert_eq!(y.len(), down_t.cols, "output length");
    let (dg, du) = (RowDot::new(gate, xg), RowDot::new(up, xu));
    let down = GroupAxpy::new(down_t);
    let mut pieces = run_pieces(runs, rows);
    while let Some(Piece {
        rows: piece,
        grouped,
        ..
    }) = pieces.next()
    {
        let (r, end) = (piece.start, piece.end);
        let (k, lo, n) = (r / GROUP, r % GROUP, piece.len());
        // Lanes past `n` stay 0: silu(0) · 0 = 0, never read.
        let (mut g, mut u) = ([0f32; GROUP], [0f32; GROUP]);
        // A piece of `n` rows of group k: from the interleaved copies if it is long enough, and
        // then `next` is the group these streams read after it.
        let next = if grouped {
            next_group(pieces.clone(), k)
        } else {
            None
        };
        if grouped {
            // The rows of a piece read alone next come from the row-major data, a short read
            // each that the kernels' prefetch does not reach: ask for them now (faster ToMoE
            // decoding, BENCHMARKS.md).
            if let Some(p) = pieces.clone().next().filter(|p| !p.grouped) {
                for w in [gate, up, down_t] {
                    let rb = w.row_bytes;
                    crate::kernels::prefetch(w.data, p.rows.start * rb..p.rows.end * rb);
                }
            }
            dg.group_lanes(gate, k, lo..lo + n, 0, &mut g[..n], next);
            du.group_lanes(up, k, lo..lo + n, 0, &mut u[..n], next);
        } else {
            dg.plain_rows(gate, r..end, 0, &mut g[..n]);
            du.plain_rows(up, r..end, 0, &mut u[..n]);
        }
        // All 16 lanes take the vector formula, as in `swiglu_lanes`.
        vecmath::swiglu(&mut g, &u);
        down.piece(r, &g[..n], grouped, next, y);
    }
}

/// `y += Σ_i coeffs[i] · down_t[r_i]` over the rows `r_i` of `runs` in order (an expert's
/// transposed down projection, for one token), piece by piece ([`run_pieces`]): a grouped piece
/// through the group's interleaved copy where the set has a kernel for it and the matrix the
/// copy ([`MatRef::with_axpy_interleaved`]; Q8_0 on AVX-512, whose coefficients are quantized
/// per block: `kernels::scalar::axpy16_q8_0_quantized`), the other pieces as [`axpy_rows`].
/// [`swiglu_rows`] gives the same sum when its calls split the rows at the ends of pieces.
///
/// # Panics
/// If `coeffs` does not hold one value per row of the runs, a run is out of range, or
/// `y.len() != down_t.cols()`.
pub fn axpy_runs(down_t: &MatRef, runs: &[std::ops::Range<usize>], coeffs: &[f32], y: &mut [f32]) {
    let total = runs_rows(
        runs,
        down_t.rows,
        down_t.rows_with_extra(down_t.axpy_interleaved),
    );
    assert_eq!(coeffs.len(), total, "one coefficient per row of the runs");
    assert_eq!(y.len(), down_t.cols, "output length");
    let down = GroupAxpy::new(down_t);
    let mut pieces = run_pieces(runs, 0..total);
    let mut i = 0;
    while let Some(Piece { rows, grouped, .. }) = pieces.next() {
        let next = if grouped {
            next_group(pieces.clone(), rows.start / GROUP)
        } else {
            None
        };
        down.piece(rows.start, &coeffs[i..i + rows.len()], grouped, next, y);
        i += rows.len();
    }
}

/// The weighted row sums of a transposed down projection, piece by piece (see [`axpy_runs`]).
struct GroupAxpy<'a> {
    w: &'a MatRef<'a>,
    group: Option<(crate::kernels::Axpy16Fn, &'a [u8])>,
}

impl<'a> GroupAxpy<'a> {
    fn new(w: &'a MatRef<'a>) -> Self {
        let group = match (kernels().interleaved_axpy(w.ty), w.axpy_interleaved) {
            (Some(k), Some(data)) => Some((k.axpy16, data)),
            _ => None,
        };
        GroupAxpy { w, group }
    }

    /// `y += Σ_i c[i] · W[r + i]` for a piece of rows within one group of 16: through the
    /// group's copy when the piece is `grouped` and the copy holds the group (`next`: the group
    /// read after it, to prefetch), else row by row.
    fn piece(&self, r: usize, c: &[f32], grouped: bool, next: Option<usize>, y: &mut [f32]) {
        let (k, lo, n) = (r / GROUP, r % GROUP, c.len());
        match self.group {
            Some((f, data)) if grouped && (k + 1) * GROUP * self.w.row_bytes <= data.len() => {
                let gb = GROUP * self.w.row_bytes;
                // The kernel takes the group's coefficients by lane.
                let mut lanes = [0f32; GROUP];
                lanes[lo..lo + n].copy_from_slice(c);
                // SAFETY: the set's kernel runs on this CPU; group k lies in the copy (checked
                // above); the kernel checks `y` against `cols` and the lanes; `next` is only
                // prefetched.
                unsafe {
                    f(
                        self.w.cols,
                        &data[k * gb..(k + 1) * gb],
                        &lanes,
                        lo..lo + n,
                        y,
                        group_start(data, gb, next),
                    )
                };
            }
            _ => {
                let idx: [usize; GROUP] = std::array::from_fn(|i| r + i);
                axpy_rows(self.w, &idx[..n], c, y);
            }
        }
    }
}

/// The rows of an expert's `runs` of a matrix of `rows` rows, in all; rows past `rows` (to
/// `extended`) are the extra groups of its copies, which runs may cover in whole groups.
///
/// # Panics
/// If a run is out of range, or covers extra rows but not in whole groups.
fn runs_rows(runs: &[std::ops::Range<usize>], rows: usize, extended: usize) -> usize {
    for run in runs {
        assert!(
            run.start <= run.end && run.end <= extended,
            "run {run:?} out of range ({rows} rows, {extended} with the copies' extra groups)"
        );
        assert!(
            run.end <= rows
                || (run.start >= rows && run.start % GROUP == 0 && run.end % GROUP == 0),
            "run {run:?} covers the extra rows past {rows} but not in whole groups"
        );
    }
    runs.iter().map(|r| r.len()).sum()
}

/// The next group after group `k` that `pieces` (the pieces still to come) read through the
/// interleaved copies: where the streams go on (the next run's, past a gap), to prefetch.
fn next_group(mut pieces: impl Iterator<Item = Piece>, k: usize) -> Option<usize> {
    pieces
        .find(|p| p.grouped && p.rows.start / GROUP != k)
        .map(|p| p.rows.start / GROUP)
}

/// The start of group `g` (of `gb` bytes) of an interleaved copy, for the kernels to prefetch;
/// null for `None` or a group past the copy's end.
fn group_start(data: &[u8], gb: usize, g: Option<usize>) -> *const u8 {
    match g {
        Some(g) if (g + 1) * gb <= data.len() => data[g * gb..].as_ptr(),
        _ => std::ptr::null(),
    }
}

/// A piece of an expert's rows (see [`run_pieces`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The rows, within one group of 16.
    pub rows: std::ops::Range<usize>,
    /// Read through the group's interleaved copies (where the matrices have them: all 16 rows'
    /// bytes, streaming) rather than row by row: a piece of at least `PARTIAL_GROUP_MIN` rows.
    pub grouped: bool,
    /// Its relative time in streamed rows: 16 for a grouped piece, `SCATTERED_ROW_COST` for
    /// each row read alone, and `STREAM_START_COST` more for the first piece of each run,
    /// which starts the streams. (Assumes matrices that have the interleaved copies.)
    pub cost: usize,
}

/// The pieces [`swiglu_rows`] and [`axpy_runs`] cut rows `rows` of an expert's `runs` (counted
/// through the runs in order) into: each run's share cut at multiples of 16; with their costs,
/// so that callers can split rows between threads by time, not by count.
pub fn run_pieces(
    runs: &[std::ops::Range<usize>],
    rows: std::ops::Range<usize>,
) -> impl Iterator<Item = Piece> + Clone + '_ {
    let mut first = 0;
    runs.iter()
        .filter_map(move |run| {
            // This run's rows within `rows`.
            let (a, b) = (rows.start.max(first), rows.end.min(first + run.len()));
            let share = (a < b).then(|| run.start + (a - first)..run.start + (b - first));
            first += run.len();
            share
        })
        .flat_map(run_share_pieces)
}

/// One run's share of [`run_pieces`].
fn run_share_pieces(rows: std::ops::Range<usize>) -> impl Iterator<Item = Piece> + Clone {
    let mut r = rows.start;
    std::iter::from_fn(move || {
        (r < rows.end).then(|| {
            let end = ((r / GROUP + 1) * GROUP).min(rows.end);
            let n = end - r;
            let grouped = n >= PARTIAL_GROUP_MIN;
            let mut cost = if grouped {
                GROUP
            } else {
                SCATTERED_ROW_COST * n
            };
            if r == rows.start {
                cost += STREAM_START_COST;
            }
            let piece = Piece {
                rows: r..end,
                grouped,
                cost,
            };
            r = end;
            piece
        })
    })
}

/// The time a run of rows takes to start (the first bytes of its three streams come at memory
/// latency, before the kernels' prefetch runs ahead), in streamed rows. Without it the thread
/// given the short runs of a ToMoE expert finishes far behind; 16 to 24 even the threads
/// (BENCHMARKS.md).
const STREAM_START_COST: usize = 20;

/// The time of a row read alone (four-row kernels, from the row-major data) relative to a row
/// streamed in its group through the interleaved kernels: splitting a ToMoE expert's rows
/// between threads by count leaves the thread given the short runs behind; weighing those rows 3
/// evens them (BENCHMARKS.md).
const SCATTERED_ROW_COST: usize = 3;

/// The fewest rows of a group that [`swiglu_rows`] reads through the group's interleaved copies
/// (all 16 rows' bytes, streaming) rather than row by row from the row-major data: from about
/// 16 / `SCATTERED_ROW_COST` rows on, the whole group is cheaper.
const PARTIAL_GROUP_MIN: usize = 6;

/// y += Σ_i coeffs[i] · dequant(W[rows[i]]): a weighted sum of weight rows (for a transposed
/// down-projection, e.g. of MoE experts, where only some rows are active). Rows are
/// dequantized one block at a time into a stack buffer, so nothing is allocated; the
/// multiply-add loop is left to the compiler's auto-vectorisation (no hand-written SIMD).
///
/// # Panics
/// If `rows` and `coeffs` differ in length, a row is out of range, or `y.len() != w.cols()`.
pub fn axpy_rows(w: &MatRef, rows: &[usize], coeffs: &[f32], y: &mut [f32]) {
    assert_eq!(rows.len(), coeffs.len(), "one coefficient per row");
    assert_eq!(y.len(), w.cols, "output length");
    if let Some(axpy) = crate::dispatch::kernels().axpy(w.ty) {
        // SAFETY: the dispatcher hands out only kernels this CPU supports; the kernel checks
        // every row index and length against `w.data`.
        unsafe { axpy(w.cols, w.data, w.row_bytes, rows, coeffs, y) };
        return;
    }
    let dequantize = codec(w.ty).1;
    let bs = w.ty.block_size();
    let ts = w.ty.type_size();
    // Float formats have 1-element blocks: dequantize 256 of them at a time.
    let step = if bs == 1 { 256 } else { bs };
    let mut buf = [0f32; 256];
    for (&r, &a) in rows.iter().zip(coeffs) {
        let row = w.row(r);
        for (c, out) in y.chunks_mut(step).enumerate() {
            let n = out.len();
            let bytes = &row[c * step / bs * ts..(c * step + n) / bs * ts];
            dequantize(bytes, &mut buf[..n]);
            for (o, v) in out.iter_mut().zip(&buf[..n]) {
                *o += a * v;
            }
        }
    }
}
