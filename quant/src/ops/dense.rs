//! Dense products: every row of a matrix with one vector (decoding) or many (prompts).

use rayon::prelude::*;

use super::{MatRef, QuantizedInput};
use crate::dispatch::kernels;
use crate::kernels::interleave::GROUP;

pub(super) fn check_compatible(w: &MatRef, x: &QuantizedInput) {
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
pub(super) struct RowDot<'x> {
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
    pub(super) fn new(w: &MatRef, x: &'x QuantizedInput) -> Self {
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
            (Some(k), Some(_)) if with_sums.is_some() || set.dot_with_sums(w.ty).is_none() => Some(k),
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
    pub(super) fn group_lanes(
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
    pub(super) fn plain_rows(&self, w: &MatRef, rows: std::ops::Range<usize>, v: usize, out: &mut [f32]) {
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

/// `y[i] = W[rows.start + i] · x` for the given rows (x holds one vector); single-threaded, for
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

/// `y[v * rows + r] = W[r] · x[v]` for every vector of `x`, parallel over row blocks (each task
/// reads its rows once for all vectors).
pub fn matmul(w: &MatRef, x: &QuantizedInput, y: &mut [f32]) {
    check_compatible(w, x);
    assert_eq!(y.len(), w.rows * x.n_vecs, "output length");
    if x.n_vecs == 0 || w.rows == 0 {
        return;
    }
    let row_dot = RowDot::new(w, x);
    // Over an interleaved copy the tasks take whole groups, each read from the copy for every
    // vector while it is in cache: fewer instructions than four plain rows at a time, as fast as
    // the tiled kernels, and the matrix's row-major bytes are then never read, so that a loader
    // can give them back (`MatRef::bytes_a_copy_replaces`; BENCHMARKS.md, peak memory).
    let grouped = row_dot.x16.is_some() && w.interleaved.is_some();
    if let (Some(gemm), false) = (kernels().gemm(w.ty), grouped) {
        return matmul_tiled(gemm, w, x, y);
    }
    if let (Some(u), false, 2..) = (kernels().unpacked_rows(w.ty), grouped, x.n_vecs) {
        if row_dot.with_sums.is_none() && w.cols > 0 {
            return matmul_unpacked_rows(u, w, x, y);
        }
    }
    let chunk = match grouped {
        true => rows_per_task(w.rows).next_multiple_of(GROUP),
        false => rows_per_task(w.rows),
    };
    // With two vectors or more, decoding a group once pays for itself.
    let unpacked = row_dot.x16.and_then(|k| k.unpacked).filter(|_| grouped && x.n_vecs >= 2);
    let out = Out(y.as_mut_ptr());
    (0..w.rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let rows = c * chunk..((c + 1) * chunk).min(w.rows);
        let mut buf = Vec::new();
        // A group of 16 (or four rows) at a time, for every vector while its rows are in cache.
        let mut r = rows.start;
        while r < rows.end {
            let g = match grouped && r % GROUP == 0 && r + GROUP <= rows.end {
                true => GROUP,
                false => (rows.end - r).min(4),
            };
            if let (Some(u), Some(data), GROUP) = (unpacked, w.interleaved, g) {
                let gb = GROUP * w.row_bytes;
                // SAFETY: the set's kernels run on this CPU and check the lengths; a whole group
                // of rows lies in the interleaved copy (`MatRef::with_interleaved`).
                unsafe { (u.unpack)(w.cols, &data[r * w.row_bytes..r * w.row_bytes + gb], &mut buf) };
                for v in 0..x.n_vecs {
                    // SAFETY: as below; `buf` holds the unpacked group.
                    unsafe {
                        let o = std::slice::from_raw_parts_mut(out.at(v * w.rows + r), GROUP);
                        let o: &mut [f32; GROUP] = o.try_into().expect("16 outputs");
                        (u.dot16)(w.cols, &buf, x.vector(v), x.block_sums(v), o, std::ptr::null());
                    }
                }
                r += g;
                continue;
            }
            for v in 0..x.n_vecs {
                // SAFETY: `y` holds `rows` outputs for each of `n_vecs` vectors (checked above)
                // and stays mutably borrowed throughout; this task alone writes rows `rows` of
                // every vector, so the `g` outputs at `v · rows + r` are its own.
                let o = unsafe { std::slice::from_raw_parts_mut(out.at(v * w.rows + r), g) };
                row_dot.rows(w, r..r + g, v, o);
            }
            r += g;
        }
    });
}

/// Rows unpacked at a time by [`matmul_unpacked_rows`]: 16 rows of 2048 Q6_K values take 72 KiB,
/// which stay in the L2 cache while every vector is taken in turn.
const UNPACKED_ROWS: usize = 16;

/// `matmul` over rows unpacked once ([`crate::kernels::UnpackedRows`]): parallel over row
/// chunks, each unpacked [`UNPACKED_ROWS`] at a time and then multiplied with every vector.
fn matmul_unpacked_rows(u: crate::kernels::UnpackedRows, w: &MatRef, x: &QuantizedInput, y: &mut [f32]) {
    let chunk = rows_per_task(w.rows).next_multiple_of(UNPACKED_ROWS);
    let rb = w.cols / w.ty.block_size() * u.block_bytes;
    let out = Out(y.as_mut_ptr());
    (0..w.rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let rows = c * chunk..((c + 1) * chunk).min(w.rows);
        let mut buf = vec![0u8; UNPACKED_ROWS * rb];
        for r0 in rows.clone().step_by(UNPACKED_ROWS) {
            let n = (rows.end - r0).min(UNPACKED_ROWS);
            for (i, b) in buf.chunks_exact_mut(rb).take(n).enumerate() {
                // SAFETY: the set's kernels run on this CPU and check the lengths.
                unsafe { (u.unpack)(w.cols, w.row(r0 + i), b) };
            }
            for v in 0..x.n_vecs {
                let xv = x.vector(v);
                // SAFETY: as in `matmul`: this task alone writes rows `rows` of every vector.
                let o = unsafe { std::slice::from_raw_parts_mut(out.at(v * w.rows + r0), n) };
                for (o, b) in o.iter_mut().zip(buf.chunks_exact(rb)) {
                    // SAFETY: as above.
                    *o = unsafe { (u.dot)(w.cols, b, xv) };
                }
            }
        }
    });
}

/// `y`'s start, shared by the tasks of a matrix-matrix product; each writes only its own rows
/// of every vector.
struct Out(*mut f32);
// SAFETY: the tasks write disjoint elements of `y`, which stays mutably borrowed throughout.
unsafe impl Sync for Out {}
impl Out {
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `matmul` with the set's tiled kernel: the vectors packed once (into this thread's reused
/// buffer), then parallel over row chunks, each writing its rows of `y` in place.
fn matmul_tiled(gemm: crate::kernels::GemmKernel, w: &MatRef, x: &QuantizedInput, y: &mut [f32]) {
    thread_local! {
        static PACKED: std::cell::RefCell<crate::kernels::PackedActs> = Default::default();
    }
    let out = Out(y.as_mut_ptr());
    let threads = rayon::current_num_threads().max(1);
    let chunk = (w.rows / (threads * 4)).clamp(32, 512).next_multiple_of(2).min(w.rows);
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

/// The start of group `g` (of `gb` bytes) of an interleaved copy, for the kernels to prefetch;
/// null for `None` or a group past the copy's end.
pub(super) fn group_start(data: &[u8], gb: usize, g: Option<usize>) -> *const u8 {
    match g {
        Some(g) if (g + 1) * gb <= data.len() => data[g * gb..].as_ptr(),
        _ => std::ptr::null(),
    }
}
