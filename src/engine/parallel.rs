//! Matrix-vector products of several matrices in ONE parallel region: the rows of all of them
//! are split evenly between the threads of the current pool, so a layer pays one fork/join for
//! Q, K and V together (and one for gate and up) instead of one per matrix.

use rayon::prelude::*;
use tomoe_quant::{matvec_rows, MatRef, QuantizedInput};

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

/// Runs every job, splitting the union of their rows into one contiguous part per thread.
pub fn matvec_fused(jobs: &mut [MatJob]) {
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
    let parts = rayon::current_num_threads().max(1).min(total.max(1));
    let (outs, mats, starts) = (&outs, &mats, &starts);
    (0..parts).into_par_iter().for_each(|p| {
        let (lo, hi) = (p * total / parts, (p + 1) * total / parts);
        for (i, &(w, x)) in mats[..n_jobs].iter().flatten().enumerate() {
            let (a, b) = (lo.max(starts[i]), hi.min(starts[i + 1]));
            if a >= b {
                continue;
            }
            let rows = a - starts[i]..b - starts[i];
            // SAFETY: `outs[i]` points to job i's `y`, `w.rows()` floats long, mutably borrowed
            // by `jobs` for this whole call and not otherwise touched meanwhile; `rows` is
            // within it, and the parts [lo, hi) of different threads are disjoint, so no two
            // threads write the same float.
            let y = unsafe { std::slice::from_raw_parts_mut(outs[i].0.add(rows.start), rows.len()) };
            matvec_rows(w, rows, x, y);
        }
    });
}
