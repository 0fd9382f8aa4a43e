//! Sparse products: a MoE expert's scattered rows (runs of rows, gathered groups), the SwiGLU MLP
//! over them and weighted sums of a transposed down projection's rows.

use super::dense::{check_compatible, group_start, RowDot};
use super::{MatRef, QuantizedInput};
use crate::blocks::codec;
use crate::dispatch::kernels;
use crate::kernels::interleave::GROUP;
use crate::vecmath;

/// `y += Σ_r silu(gate_r · xg) · (up_r · xu) · down_t[r]` over rows `rows` of an expert's `runs`
/// (counted through the runs in order: a thread's share of the expert): the SwiGLU MLP of a MoE
/// expert, `down_t` its transposed down projection. The rows go in the pieces of
/// [`run_pieces`], so that each row's three weight rows are read together, once. Grouped pieces
/// come from the matrices' interleaved copies where they have them ([`MatRef::with_interleaved`],
/// [`MatRef::with_axpy_interleaved`]), the other rows from the row-major data. Each group's
/// kernels prefetch on into the group read next, across the gaps between runs. SiLU takes the
/// vector formula for every element (as [`vecmath::swiglu_lanes`]); the gate and up products
/// are [`matvec_rows`](super::matvec_rows)' bits, and the down projection is [`axpy_runs`]' over those activations
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
    gated_rows(GateActivation::Silu, gate, up, down_t, runs, rows, xg, xu, y)
}

/// The activation of a gated MLP's gate.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GateActivation {
    /// SwiGLU: `silu(g) · u` ([`vecmath::swiglu`]).
    Silu,
    /// GeGLU with ggml's tanh GELU: `gelu(g) · u` ([`vecmath::geglu`]).
    GeluTanh,
}

/// [`swiglu_rows`] with either gate activation.
#[allow(clippy::too_many_arguments)]
pub fn gated_rows(
    act: GateActivation,
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
        rows: piece, grouped, ..
    }) = pieces.next()
    {
        let (r, end) = (piece.start, piece.end);
        let (k, lo, n) = (r / GROUP, r % GROUP, piece.len());
        // Lanes past `n` stay 0: silu(0) · 0 = 0, never read.
        let (mut g, mut u) = ([0f32; GROUP], [0f32; GROUP]);
        // A piece of `n` rows of group k: from the interleaved copies if it is long enough, and
        // then `next` is the group these streams read after it.
        let next = if grouped { next_group(pieces.clone(), k) } else { None };
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
        match act {
            GateActivation::Silu => vecmath::swiglu(&mut g, &u),
            GateActivation::GeluTanh => vecmath::geglu(&mut g, &u),
        }
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
    let total = runs_rows(runs, down_t.rows, down_t.rows_with_extra(down_t.axpy_interleaved));
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
            run.end <= rows || (run.start >= rows && run.start % GROUP == 0 && run.end % GROUP == 0),
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
            let mut cost = if grouped { GROUP } else { SCATTERED_ROW_COST * n };
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

/// `y += Σ_i coeffs[i] · dequant(W[rows[i]])`: a weighted sum of weight rows (for a transposed
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
