//! Parallel regions of the forward pass, run on the context's spinning [`Team`] when one is
//! installed (decoding) and on rayon's pool otherwise; and matrix-vector products of several
//! matrices in ONE region: the rows of all of them are split evenly between the threads, so a
//! layer pays one fork/join for Q, K and V together (and one for gate and up).

use super::team::{self, Team};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tomoe_quant::{matvec_rows, MatRef, QuantizedInput};

/// Runs `f(part, parts)` for every `part in 0..parts`, one part per thread of the current team
/// (or of rayon's current pool).
pub fn for_each_part(f: impl Fn(usize, usize) + Sync) {
    let parts = part_count();
    team::with_current(|t: Option<&Team>| match t {
        Some(t) => t.run(&|p| f(p, parts)),
        None => (0..parts).into_par_iter().for_each(|p| f(p, parts)),
    })
}

/// Runs `a` and `b`: on two threads of the current team (or of rayon's pool) where it has two,
/// else `a` then `b`. For two short serial tasks that do not depend on each other.
pub fn join2(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    let (a, b) = (Mutex::new(Some(a)), Mutex::new(Some(b)));
    for_each_part(|p, parts| {
        if p == 0 {
            if let Some(a) = a.lock().unwrap().take() {
                a();
            }
        }
        if p == 1 % parts {
            if let Some(b) = b.lock().unwrap().take() {
                b();
            }
        }
    });
}

/// The number of parts [`for_each_part`] splits work into on this thread.
pub fn part_count() -> usize {
    team::with_current(|t| t.map_or_else(|| rayon::current_num_threads().max(1), Team::size))
}

/// `f(r, &mut a[r.start*a_len..r.end*a_len], &mut b[r.start*b_len..r.end*b_len])` for one
/// contiguous range `r` of `0..count` per thread, in parallel (the ranges cover `0..count`).
pub fn for_each_chunk_range(
    a: &mut [f32],
    a_len: usize,
    b: &mut [f32],
    b_len: usize,
    count: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32], &mut [f32]) + Sync,
) {
    assert!(a.len() >= count * a_len && b.len() >= count * b_len, "chunks out of range");
    let (pa, pb) = (OutPtr(a.as_mut_ptr()), OutPtr(b.as_mut_ptr()));
    let (pa, pb) = (&pa, &pb);
    for_each_part(|p, parts| {
        let r = p * count / parts..(p + 1) * count / parts;
        // SAFETY: chunks `r` of `a` and of `b` are in bounds (asserted above); the parts' ranges
        // are disjoint, so no two threads touch the same chunk, and both slices stay mutably
        // borrowed for the whole call.
        let (ca, cb) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.0.add(r.start * a_len), r.len() * a_len),
                std::slice::from_raw_parts_mut(pb.0.add(r.start * b_len), r.len() * b_len),
            )
        };
        f(r, ca, cb);
    });
}

/// y = W·x for one matrix; `y.len() == w.rows()`.
pub struct MatJob<'j, 'w> {
    pub w: &'j MatRef<'w>,
    pub x: &'j QuantizedInput,
    pub y: &'j mut [f32],
}

/// A raw output pointer shared by the threads, each writing its own disjoint rows.
#[derive(Copy, Clone)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only dereferenced in `matvec_fused` on row ranges that are disjoint
// between threads, while the `&mut [f32]` it came from is borrowed for the whole region.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

const MAX_JOBS: usize = 4;

/// Rows of a chunk of `matvec_fused`'s shared last quarter: four groups of 16.
const CHUNK_ROWS: usize = 64;

/// Runs every job over the union of their rows: a contiguous share per thread, then chunks that
/// the threads take as they finish.
pub fn matvec_fused(jobs: &mut [MatJob]) {
    matvec_fused_then(jobs, |_| {});
}

/// [`matvec_fused`], and `then(y0)` with job 0's finished output, run once, by the thread that
/// computes the last of job 0's rows, while the others go on with the other rows (a serial step
/// that needs only job 0, which the chunks at the end then balance across the threads).
pub fn matvec_fused_then(jobs: &mut [MatJob], then: impl FnOnce(&[f32]) + Send) {
    assert!(jobs.len() <= MAX_JOBS, "at most {MAX_JOBS} matrices per fused region");
    let mut outs = [OutPtr(std::ptr::null_mut()); MAX_JOBS];
    let mut mats: [Option<(&MatRef, &QuantizedInput)>; MAX_JOBS] = [None; MAX_JOBS];
    let mut starts = [0usize; MAX_JOBS + 1];
    for (i, j) in jobs.iter_mut().enumerate() {
        assert_eq!(j.y.len(), j.w.rows(), "output length must equal the matrix rows");
        outs[i] = OutPtr(j.y.as_mut_ptr());
        mats[i] = Some((j.w, j.x));
        starts[i + 1] = starts[i] + j.w.rows();
    }
    let n_jobs = jobs.len();
    let total = starts[n_jobs];
    let (outs, mats, starts) = (&outs, &mats, &starts);
    // Job 0's rows computed so far; `then` runs when they are all done.
    let done0 = AtomicUsize::new(0);
    let then = Mutex::new(Some(then));
    let run_then = || {
        // Taken out first, so that the lock is not held while `then` runs.
        let f = then.lock().unwrap().take();
        if let Some(f) = f {
            if starts[1] == 0 {
                return f(&[]);
            }
            // SAFETY: `outs[0]` points to job 0's `y`, `starts[1]` floats long, mutably borrowed
            // by `jobs` for this whole call. Every row of it has been written (each writer added
            // its rows to `done0` with Release after writing, and this thread's AcqRel add
            // reached the total), and no thread writes job 0's rows again in this region.
            f(unsafe { std::slice::from_raw_parts(outs[0].0, starts[1]) });
        }
    };
    let run_then = &run_then;
    // A cut between two threads' parts, moved to the nearest multiple of 16 rows of the matrix
    // it falls in (monotonic, 0 and `total` fixed), so that no group of the interleaved copies
    // is split: its rows would be read one by one on both sides.
    let cut = |c: usize| match (0..n_jobs).find(|&i| c < starts[i + 1]) {
        Some(i) => starts[i] + ((c - starts[i] + 8) / 16 * 16).min(starts[i + 1] - starts[i]),
        None => total,
    };
    let run = |lo: usize, hi: usize| {
        for (i, &(w, x)) in mats[..n_jobs].iter().flatten().enumerate() {
            let (a, b) = (lo.max(starts[i]), hi.min(starts[i + 1]));
            if a >= b {
                continue;
            }
            let rows = a - starts[i]..b - starts[i];
            // SAFETY: `outs[i]` points to job i's `y`, `w.rows()` floats long, mutably borrowed
            // by `jobs` for this whole call and not otherwise touched meanwhile; `rows` is
            // within it, and the ranges [lo, hi) run (the static shares and the chunks, each
            // chunk taken once through `next`) are disjoint, so no two threads write the same
            // float.
            let y = unsafe { std::slice::from_raw_parts_mut(outs[i].0.add(rows.start), rows.len()) };
            matvec_rows(w, rows, x, y);
            if i == 0 && done0.fetch_add(b - a, Ordering::AcqRel) + (b - a) == starts[1] {
                run_then();
            }
        }
    };
    // Each thread streams its share of the first three quarters; the last quarter goes in chunks
    // to whichever thread is free, since threads do not run at the same speed (cores, even
    // virtual ones, differ, and a share's first bytes may be in cache or not); faster than fixed
    // shares at two threads (BENCHMARKS.md).
    let static_rows = total * 3 / 4;
    let next = AtomicUsize::new(0);
    let n_chunks = (total - static_rows).div_ceil(CHUNK_ROWS);
    for_each_part(|p, parts| {
        run(cut(p * static_rows / parts), cut((p + 1) * static_rows / parts));
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let lo = static_rows + c * CHUNK_ROWS;
            run(cut(lo), cut((lo + CHUNK_ROWS).min(total)));
        }
    });
    // No jobs, or a job 0 without rows.
    run_then();
}

#[cfg(test)]
mod tests {
    use super::{join2, matvec_fused, matvec_fused_then, MatJob};
    use crate::engine::team::{self, Team};
    use tomoe_quant::{matvec_rows, MatRef, QuantType, QuantizedInput};

    /// Both tasks run once, whatever the threads: a team of one (one after the other), of two
    /// (one each) or of three, and rayon's pool.
    #[test]
    fn join2_runs_both_tasks_once() {
        let check = || {
            let (mut a, mut b) = (0, 0);
            join2(|| a += 1, || b += 1);
            assert_eq!((a, b), (1, 1));
        };
        for n in 1..=3 {
            let t = Team::new(n).unwrap();
            team::install(&t, check);
        }
        check();
    }

    fn matrix(rows: usize, cols: usize, seed: usize) -> Vec<u8> {
        let rb = QuantType::Q8_0.row_bytes(cols).unwrap();
        let mut data = vec![0u8; rows * rb];
        for (r, row) in data.chunks_exact_mut(rb).enumerate() {
            let x: Vec<f32> = (0..cols).map(|c| (((r * 31 + c * 17 + seed) % 97) as f32 - 48.0) / 50.0).collect();
            tomoe_quant::quantize_row(QuantType::Q8_0, &x, row);
        }
        data
    }

    /// The fused region of a pruned ToMoE layer (V-mask head input, Q, K: 128, 468, 156 rows of
    /// 96 columns, matrix `i` from seed `seed + i`) and the interleaved copies of its matrices.
    struct Region {
        data: Vec<Vec<u8>>,
        copies: Vec<Option<Vec<u8>>>,
    }

    const COLS: usize = 96;
    const SHAPES: [usize; 3] = [128, 468, 156];

    impl Region {
        fn new(seed: usize) -> Region {
            let data: Vec<Vec<u8>> = SHAPES.iter().enumerate().map(|(i, &r)| matrix(r, COLS, seed + i)).collect();
            let mut region = Region { data, copies: Vec::new() };
            region.copies = region.plain().iter().map(|m| m.interleave()).collect();
            region
        }

        fn plain(&self) -> Vec<MatRef<'_>> {
            self.data.iter().zip(SHAPES).map(|(d, r)| MatRef::new(QuantType::Q8_0, r, COLS, d).unwrap()).collect()
        }

        fn interleaved(&self) -> Vec<MatRef<'_>> {
            let plain = self.plain();
            plain.iter().zip(&self.copies).map(|(m, c)| c.as_ref().map_or(*m, |c| m.with_interleaved(c).unwrap())).collect()
        }
    }

    /// `x` quantized for Q8_0.
    fn quantized(x: &[f32]) -> QuantizedInput {
        let mut xq = QuantizedInput::new();
        xq.quantize(QuantType::Q8_0, x, x.len());
        xq
    }

    /// Whatever the thread count, and so wherever the parts are cut (moved to whole groups of
    /// 16), the fused products equal `matvec_rows` over each whole matrix,
    /// bit for bit, every row written: the shapes of a pruned ToMoE layer (V-mask head input, Q,
    /// K: 128, 468, 156 rows), with and without the interleaved copies, and a matrix of 259 rows.
    #[test]
    fn fused_products_do_not_depend_on_the_cuts() {
        let (cols, shapes) = (COLS, SHAPES);
        let region = Region::new(0);
        let (plain, il) = (region.plain(), region.interleaved());
        let xq = quantized(&(0..cols).map(|c| ((c * 7 % 13) as f32 - 6.0) / 7.0).collect::<Vec<f32>>());
        let want: Vec<Vec<f32>> = plain
            .iter()
            .map(|m| {
                let mut y = vec![0f32; m.rows()];
                matvec_rows(m, 0..m.rows(), &xq, &mut y);
                y
            })
            .collect();
        let tail_data = matrix(259, cols, 9);
        let mut want_tail = vec![0f32; 259];
        matvec_rows(&MatRef::new(QuantType::Q8_0, 259, cols, &tail_data).unwrap(), 0..259, &xq, &mut want_tail);
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for mats in [&plain, &il] {
                let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![f32::NAN; r]).collect();
                pool.install(|| {
                    let [a, b, c] = &mut ys[..] else { unreachable!() };
                    matvec_fused(&mut [
                        MatJob { w: &mats[0], x: &xq, y: a },
                        MatJob { w: &mats[1], x: &xq, y: b },
                        MatJob { w: &mats[2], x: &xq, y: c },
                    ]);
                });
                for (y, w) in ys.iter().zip(&want) {
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{threads} threads"
                    );
                }
                // One matrix whose rows end inside a group (a tiny vocabulary's output).
                let mut y = vec![f32::NAN; 259];
                let (out, out_x) = (MatRef::new(QuantType::Q8_0, 259, cols, &tail_data).unwrap(), &xq);
                pool.install(|| matvec_fused(&mut [MatJob { w: &out, x: out_x, y: &mut y }]));
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want_tail.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{threads} threads, 259 rows"
                );
            }
        }
    }

    /// `then` runs once per region, whatever the threads, and sees job 0's whole output (the
    /// V-mask head's input layer of a ToMoE layer, then Q, K and V): the same bits as
    /// `matvec_rows`; with job 0 empty, and with no job, it runs once with nothing.
    #[test]
    fn then_runs_once_on_the_first_jobs_finished_output() {
        let (cols, shapes) = (COLS, SHAPES);
        let region = Region::new(3);
        let (plain, il) = (region.plain(), region.interleaved());
        let xq = quantized(&(0..cols).map(|c| ((c * 5 % 11) as f32 - 5.0) / 6.0).collect::<Vec<f32>>());
        let mut want = vec![0f32; shapes[0]];
        matvec_rows(&plain[0], 0..shapes[0], &xq, &mut want);
        let empty_data = matrix(0, cols, 1);
        let empty = MatRef::new(QuantType::Q8_0, 0, cols, &empty_data).unwrap();
        for threads in [1, 2, 3, 5] {
            let t = Team::new(threads).unwrap();
            for mats in [&plain, &il] {
                let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&r| vec![f32::NAN; r]).collect();
                let mut seen = Vec::new();
                let calls = std::sync::atomic::AtomicUsize::new(0);
                team::install(&t, || {
                    let [a, b, c] = &mut ys[..] else { unreachable!() };
                    matvec_fused_then(
                        &mut [
                            MatJob { w: &mats[0], x: &xq, y: a },
                            MatJob { w: &mats[1], x: &xq, y: b },
                            MatJob { w: &mats[2], x: &xq, y: c },
                        ],
                        |y0| {
                            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            seen = y0.to_vec();
                        },
                    );
                });
                assert_eq!(calls.into_inner(), 1, "{threads} threads");
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&seen), bits(&want), "{threads} threads");
                assert_eq!(bits(&ys[0]), bits(&want), "{threads} threads");
            }
            let (mut y0, mut y1) = (vec![], vec![f32::NAN; shapes[1]]);
            let mut lens = Vec::new();
            team::install(&t, || {
                matvec_fused_then(
                    &mut [MatJob { w: &empty, x: &xq, y: &mut y0 }, MatJob { w: &plain[1], x: &xq, y: &mut y1 }],
                    |y| lens.push(y.len()),
                );
                matvec_fused_then(&mut [], |y| lens.push(y.len()));
            });
            assert_eq!(lens, [0, 0], "{threads} threads");
            assert!(y1.iter().all(|v| v.is_finite()));
        }
    }
}
