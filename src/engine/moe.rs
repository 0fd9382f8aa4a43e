//! The sparse parts of a ToMoE layer (docs/FORMAT.md): the router, the chosen expert's MLP over
//! only its storage rows, and the dynamic V mask. Decoding reads only the rows of the token's
//! expert (gate, up, and the transposed down projection); a batch is grouped by expert and each
//! group runs matrix-matrix products over the expert's row runs.

use super::parallel::{for_each_part, matvec_fused, part_count, MatJob};
use super::plan::ExpertReads;
use crate::model::tomoe::{TomoeMlp, VMask};
use crate::model::StackedExperts;
use rayon::prelude::*;
use tomoe_quant::{axpy_runs, gated_rows, matmul, run_pieces, vecmath, GateActivation, MatRef, QuantizedInput};

/// Grow-only buffers of the sparse MLP (no allocation per token once grown).
#[derive(Default)]
pub struct MoeScratch {
    /// Per thread part: a partial sum of the down projection (`parts × d`).
    partials: Vec<f32>,
    /// The parts' shares of an expert's rows (`parts + 1` bounds).
    bounds: Vec<usize>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// A batch's tokens grouped by expert.
    group: Vec<usize>,
    x: Vec<f32>,
    run_out: Vec<f32>,
    /// A batch's down projections, one row per token of the expert's group.
    down: Vec<f32>,
    /// The activations of an expert's group in the order decoding reads its rows.
    coeffs: Vec<f32>,
    xq: QuantizedInput,
    /// llama.cpp MoE: the token quantized for the up projection's format.
    xu: QuantizedInput,
    /// Per token of the batch: its expert.
    pub choice: Vec<usize>,
    /// The V-mask head's intermediates, and its input layer `W_a·h1` for each token of a batch.
    pub vmask: VMaskScratch,
    pub vmask_in: Vec<f32>,
    /// llama.cpp MoE: router probabilities, the chosen experts, an expert's output.
    probs: Vec<f32>,
    chosen: Vec<usize>,
    expert_out: Vec<f32>,
    act_q: QuantizedInput,
}

#[derive(Default)]
pub struct VMaskScratch {
    a: Vec<f64>,
    g: Vec<f32>,
    z: Vec<f32>,
    on: Vec<usize>,
}

/// A raw pointer shared by the threads of one region, each writing its own disjoint part.
#[derive(Copy, Clone)]
struct SharedMut(*mut f32);
// SAFETY: only dereferenced inside `for_each_part` regions on index ranges that are disjoint
// between parts, while the slice it came from stays mutably borrowed by the caller.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// The expert of each token: argmax of the router logits (the lowest index on ties).
pub fn route(m: &TomoeMlp, h2: &[f32], d: usize, out: &mut Vec<usize>) {
    out.clear();
    let mut logits = [0f32; 64];
    let n = m.router.len() / d;
    for x in h2.chunks_exact(d) {
        let mut best = (0, f32::NEG_INFINITY);
        // Each expert's `dot` (the same bits), up to 64 experts at a time.
        for e0 in (0..n).step_by(64) {
            let k = (n - e0).min(64);
            vecmath::dot_rows(&m.router[e0 * d..], d, x, &mut logits[..k]);
            for (i, &v) in logits[..k].iter().enumerate() {
                if v > best.1 {
                    best = (e0 + i, v);
                }
            }
        }
        out.push(best.0);
    }
}

/// One token's MLP: `proj = Σ_{i ∈ expert} down_t[i] · act(gate[i]·h2) · (up[i]·h2)`, over the
/// expert's rows only, the rows split between the threads, each thread reading its rows' gate,
/// up and down weights together (`gated_rows`) into a partial sum. `xg`/`xu`: `h2` quantized for
/// the gate/up formats; the expert's rows read as `reads` says.
#[allow(clippy::too_many_arguments)]
pub fn mlp_one(
    m: &TomoeMlp,
    reads: Option<&ExpertReads>,
    act: GateActivation,
    expert: usize,
    xg: &QuantizedInput,
    xu: &QuantizedInput,
    proj: &mut [f32],
    s: &mut MoeScratch,
) {
    let (gate, up, down_t) = (&m.gate, &m.up, &m.down_t);
    let d = proj.len();
    proj.fill(0.0);
    let (runs, _) = ExpertReads::of(reads, m, expert);
    if runs.is_empty() {
        return;
    }
    // Each part's share `bounds[p]..bounds[p + 1]` of the expert's rows, of equal time (not of
    // equal count).
    let n_parts = part_count();
    split_by_cost(runs, n_parts, &mut s.bounds);
    let bounds = &s.bounds;
    s.partials.resize(n_parts * d, 0.0);
    let partials = SharedMut(s.partials.as_mut_ptr());
    let partials = &partials;
    for_each_part(|p, parts| {
        // SAFETY: part `p` < `parts` == `n_parts` owns floats `p*d .. (p+1)*d` of `partials`.
        let y = unsafe { std::slice::from_raw_parts_mut(partials.0.add(p * d), d) };
        y.fill(0.0);
        debug_assert_eq!(parts, n_parts);
        gated_rows(act, gate, up, down_t, runs, bounds[p]..bounds[p + 1], xg, xu, y);
    });
    for part in s.partials.chunks_exact(d).take(n_parts) {
        proj.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
}

/// Cuts an expert's rows (its `runs`, flattened) into `parts` shares of about equal time, at the
/// ends of the pieces `run_pieces` times (a run's cut at multiples of 16):
/// `bounds[p]..bounds[p + 1]` is share `p`. Each cut goes to the piece end nearest its target,
/// so a share is off by at most half a piece's cost. Long runs stream through the interleaved
/// kernels; short ones pay the memory latency at every start, so shares by row count, or by a
/// cost without the start, leave one thread far behind (BENCHMARKS.md).
fn split_by_cost(runs: &[std::ops::Range<usize>], parts: usize, bounds: &mut Vec<usize>) {
    let all = 0..runs.iter().map(|r| r.len()).sum();
    let pieces = || run_pieces(runs, all.clone()).map(|p| (p.rows.len(), p.cost));
    let total: usize = pieces().map(|(_, c)| c).sum();
    bounds.clear();
    bounds.push(0);
    let (mut row, mut cost) = (0, 0);
    for (n, c) in pieces() {
        // Cut before this piece for every target it would overshoot by more than it reaches.
        while bounds.len() < parts && 2 * (bounds.len() * total / parts) <= 2 * cost + c {
            bounds.push(row);
        }
        row += n;
        cost += c;
    }
    while bounds.len() <= parts {
        bounds.push(row);
    }
}

/// A batch's MLP: tokens grouped by expert; per group, gate and up as matrix-matrix products
/// over the expert's row runs, then each token's transposed down rows. `h2`: `n` rows of `d`.
/// `gelu`: the experts are GeGLU (Gemma), else SwiGLU. The down projection reads the rows as
/// decoding does (`reads`).
pub fn mlp_batch(
    m: &TomoeMlp,
    reads: Option<&ExpertReads>,
    gelu: bool,
    h2: &[f32],
    proj: &mut [f32],
    s: &mut MoeScratch,
) {
    let (gate, up, down_t) = (&m.gate, &m.up, &m.down_t);
    let d = gate.cols();
    let n = h2.len() / d;
    proj[..n * d].fill(0.0);
    for e in 0..m.n_expert() {
        let rows = &m.expert_rows[e];
        let nr = rows.len();
        s.group.clear();
        s.group.extend((0..n).filter(|&t| s.choice[t] == e));
        let ne = s.group.len();
        if ne == 0 || nr == 0 {
            continue;
        }
        s.x.clear();
        for &t in &s.group {
            s.x.extend_from_slice(&h2[t * d..(t + 1) * d]);
        }
        s.gate.resize(ne * nr, 0.0);
        s.up.resize(ne * nr, 0.0);
        for (w, out) in [(gate, &mut s.gate), (up, &mut s.up)] {
            s.xq.quantize(w.ty(), &s.x, d);
            let mut col = 0;
            for run in &m.expert_runs[e] {
                let len = run.len();
                let rb = w.row_bytes();
                let sub = MatRef::new(w.ty(), len, d, &w.data()[run.start * rb..run.end * rb])
                    .expect("runs validated against the matrix at load");
                s.run_out.resize(ne * len, 0.0);
                matmul(&sub, &s.xq, &mut s.run_out);
                for v in 0..ne {
                    out[v * nr + col..v * nr + col + len].copy_from_slice(&s.run_out[v * len..(v + 1) * len]);
                }
                col += len;
            }
        }
        if gelu {
            // Element by element (a table lookup), so the same for any cut of the rows.
            vecmath::geglu(&mut s.gate[..ne * nr], &s.up[..ne * nr]);
        } else {
            vecmath::swiglu_lanes(&mut s.gate[..ne * nr], &s.up[..ne * nr]);
        }
        // Each token's down projection (the expert's transposed rows, weighted by its
        // activations), the tokens in parallel, then into their rows of `proj`. The rows go as
        // decoding reads them (`reads`, so that both sum alike), the activations taken in that
        // order.
        let (runs, order) = ExpertReads::of(reads, m, e);
        let (act, nc) = if order.is_empty() {
            (&s.gate, nr)
        } else {
            s.coeffs.clear();
            for v in 0..ne {
                let a = &s.gate[v * nr..(v + 1) * nr];
                s.coeffs.extend(order.iter().map(|i| i.map_or(0.0, |i| a[i as usize])));
            }
            (&s.coeffs, order.len())
        };
        s.down.resize(ne * d, 0.0);
        s.down[..ne * d].par_chunks_mut(d).enumerate().for_each(|(v, y)| {
            y.fill(0.0);
            axpy_runs(down_t, runs, &act[v * nc..(v + 1) * nc], y);
        });
        for (v, &t) in s.group.iter().enumerate() {
            proj[t * d..(t + 1) * d].copy_from_slice(&s.down[v * d..(v + 1) * d]);
        }
    }
}

/// Rows `e·n .. (e+1)·n` of `w` as a matrix (one expert's slice of a stacked tensor).
fn expert_rows<'a>(w: &MatRef<'a>, e: usize, n: usize) -> MatRef<'a> {
    let rb = w.row_bytes();
    MatRef::new(w.ty(), n, w.cols(), &w.data()[e * n * rb..(e + 1) * n * rb])
        .expect("expert slice of a validated tensor")
}

/// A llama.cpp MoE MLP for each of the `h2.len() / d` tokens, as llama.cpp computes it: softmax
/// over the router logits, the `n_used` most probable experts (the lower index first on ties),
/// their probabilities renormalised to sum to 1, `Σ weight_e · down_e(swiglu(gate_e·h, up_e·h))`.
pub fn mlp_llama_experts(x: &StackedExperts, h2: &[f32], proj: &mut [f32], s: &mut MoeScratch) {
    let d = x.gate.cols();
    let w = x.width;
    s.gate.resize(w, 0.0);
    s.up.resize(w, 0.0);
    s.expert_out.resize(d, 0.0);
    for (h, out) in h2.chunks_exact(d).zip(proj.chunks_exact_mut(d)) {
        s.probs.clear();
        s.probs.extend(x.router.chunks_exact(d).map(|r| vecmath::dot(r, h)));
        let max = s.probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = s.probs.iter_mut().fold(0f32, |acc, p| {
            *p = (*p - max).exp();
            acc + *p
        });
        s.probs.iter_mut().for_each(|p| *p /= sum);
        s.chosen.clear();
        s.chosen.extend(0..x.n_expert);
        let probs = &s.probs;
        s.chosen.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        s.chosen.truncate(x.n_used);
        let total: f32 = s.chosen.iter().map(|&e| probs[e]).sum();
        out.fill(0.0);
        s.xq.quantize(x.gate.ty(), h, d);
        s.xu.quantize(x.up.ty(), h, d);
        for i in 0..s.chosen.len() {
            let e = s.chosen[i];
            let weight = s.probs[e] / total;
            let (g, u) = (expert_rows(&x.gate, e, w), expert_rows(&x.up, e, w));
            matvec_fused(&mut [
                MatJob { w: &g, x: &s.xq, y: &mut s.gate[..w] },
                MatJob { w: &u, x: &s.xu, y: &mut s.up[..w] },
            ]);
            vecmath::swiglu(&mut s.gate[..w], &s.up[..w]);
            s.act_q.quantize(x.down.ty(), &s.gate[..w], w);
            let dn = expert_rows(&x.down, e, d);
            matvec_fused(&mut [MatJob { w: &dn, x: &s.act_q, y: &mut s.expert_out[..d] }]);
            out.iter_mut().zip(&s.expert_out).for_each(|(o, y)| *o += y * weight);
        }
    }
}

/// The V mask of one token from `w_a_h1` = `W_a·h1` (its attention input through the head's
/// first matrix): 1 for the kept dims, 0 elsewhere.
pub fn v_mask(vm: &VMask, w_a_h1: &[f32], mask: &mut [f32], s: &mut VMaskScratch) {
    let (hid, hd) = (vm.hidden, mask.len());
    // a = W_a·h1 + b, then LayerNorm and exact (erf) GELU in f64.
    s.a.clear();
    s.a.extend(w_a_h1.iter().zip(&vm.b).map(|(&x, &b)| (x + b) as f64));
    let mean = s.a.iter().sum::<f64>() / hid as f64;
    let var = s.a.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / hid as f64;
    let inv = 1.0 / (var + vm.ln_eps as f64).sqrt();
    s.g.resize(hid, 0.0);
    for ((g, &x), (&w, &b)) in s.g.iter_mut().zip(&s.a).zip(vm.ln_w.iter().zip(&vm.ln_b)) {
        let y = (x - mean) * inv * w as f64 + b as f64;
        *g = (0.5 * y * (1.0 + erf(y / std::f64::consts::SQRT_2))) as f32;
    }
    // Each row's `dot` (the same bits), several rows at a time.
    s.z.resize(hd, 0.0);
    vecmath::dot_rows(&vm.w_dec, hid, &s.g, &mut s.z);
    let z = &s.z;
    s.on.clear();
    s.on.extend((0..hd).filter(|&j| z[j] + vm.offset > 0.0));
    if vm.top_k > 0 && s.on.len() > vm.top_k {
        s.on.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
        s.on.truncate(vm.top_k);
    }
    if s.on.is_empty() {
        s.on.push((0..hd).fold(0, |b, j| if z[j] > z[b] { j } else { b }));
    }
    mask.fill(0.0);
    for &j in &s.on {
        mask[j] = 1.0;
    }
}

/// The error function: its Maclaurin series (Horner in x², no divisions) below 0.5, where
/// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) is weakest relative to the value, and that fit
/// above. It runs for every hidden unit of every V-mask head on every decoded token, serially:
/// both branches are computed and one kept, and the exponential is plain arithmetic (Horner with
/// a multiply and an add: `mul_add` is a libm call where the build has no FMA), so that the
/// loop over the units runs in SIMD lanes (a libm `exp` per unit took half the head's time).
#[inline]
fn erf(x: f64) -> f64 {
    let (s, x) = (x.signum(), x.abs());
    let x2 = x * x;
    // Twelve terms: the thirteenth is below 1e-17 of the sum at 0.5.
    let series = x * ERF_SERIES.iter().rev().fold(0f64, |acc, &c| acc * x2 + c);
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let fit = 1.0 - poly * exp_neg(x2);
    s * if x < 0.5 { series } else { fit }
}

/// e^-z for z ≥ 0 (0 past 700) within an ulp or two of libm: e^-z = 2^k · e^r with
/// k = round(-z / ln 2), r = -z - k ln 2 in [-ln 2 / 2, ln 2 / 2] (ln 2 split in two, so r is
/// exact), and e^r by its Taylor series to r^13 (the next term is below 5e-18).
#[inline]
fn exp_neg(z: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let w = -z.min(700.0);
    let k = (w * std::f64::consts::LOG2_E).round();
    let r = (w - k * LN2_HI) - k * LN2_LO;
    let p = EXP_TAYLOR.iter().rev().fold(0f64, |acc, &c| acc * r + c);
    // k is in -1010..=0: 2^k is a normal number.
    p * f64::from_bits(((1023 + k as i64) as u64) << 52)
}

/// e^r = Σ_k EXP_TAYLOR[k] · r^k: 1 / k!.
const EXP_TAYLOR: [f64; 14] = {
    let mut c = [1f64; 14];
    let mut k = 1;
    while k < 14 {
        c[k] = c[k - 1] / k as f64;
        k += 1;
    }
    c
};

/// erf(x) = x · Σ_k ERF_SERIES[k] · x^2k: 2/√π · (-1)^k / (k! (2k + 1)).
const ERF_SERIES: [f64; 12] = {
    let mut c = [0f64; 12];
    let mut fact = 1f64;
    let mut k = 0;
    while k < 12 {
        if k > 0 {
            fact *= k as f64;
        }
        let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
        c[k] = sign * std::f64::consts::FRAC_2_SQRT_PI / (fact * (2 * k + 1) as f64);
        k += 1;
    }
    c
};

#[cfg(test)]
mod tests {
    use super::{erf, exp_neg, split_by_cost};
    use tomoe_quant::run_pieces;

    /// The shares cover the expert's rows in order, cut at piece ends, and each is within the
    /// largest piece's cost of an equal share (each cut within half of one), for 1 to 5 parts.
    #[test]
    fn split_by_cost_balances_the_parts() {
        // Long runs, then short ones (which a split by count would give one part).
        let mut runs: Vec<std::ops::Range<usize>> = vec![0..40, 45..47, 50..64, 70..100, 128..160, 161..170, 200..233];
        runs.extend((0..12).map(|k| 240 + 8 * k..243 + 8 * k));
        let rows: Vec<usize> = runs.iter().flat_map(|r| r.clone()).collect();
        // The pieces as (start, end, cost), in flattened row indices.
        let mut pieces = Vec::new();
        let mut base = 0;
        for r in &runs {
            for p in run_pieces(std::slice::from_ref(r), 0..r.len()) {
                pieces.push((base + p.rows.start - r.start, base + p.rows.end - r.start, p.cost));
            }
            base += r.len();
        }
        let ends: Vec<usize> = std::iter::once(0).chain(pieces.iter().map(|p| p.1)).collect();
        // The cost of flattened rows a..b made of whole pieces.
        let cost = |a: usize, b: usize| -> usize { pieces.iter().filter(|p| a <= p.0 && p.1 <= b).map(|p| p.2).sum() };
        let total = cost(0, rows.len());
        let largest = pieces.iter().map(|p| p.2).max().unwrap();
        let mut bounds = Vec::new();
        for parts in 1..=5 {
            split_by_cost(&runs, parts, &mut bounds);
            assert_eq!(bounds.len(), parts + 1);
            assert_eq!((bounds[0], bounds[parts]), (0, rows.len()));
            for p in 0..parts {
                assert!(bounds[p] <= bounds[p + 1] && ends.contains(&bounds[p]), "{parts} parts: {bounds:?}");
                let share = cost(bounds[p], bounds[p + 1]) as f64;
                let want = total as f64 / parts as f64;
                assert!((share - want).abs() <= largest as f64, "{parts} parts: share {share} of {want}");
            }
        }
    }

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf.
        for (x, want) in [
            (0.0f64, 0.0),
            (0.01, 0.011_283_415_555_849_616),
            (0.1, 0.112_462_916_018_285),
            (-0.2, -0.222_702_589_210_478_47),
            (0.3, 0.328_626_759_459_127_4),
            (0.49, 0.511_668_261_188_523),
            (0.5, 0.520_499_877_813_047),
            (1.0, 0.842_700_792_949_715),
            (2.0, 0.995_322_265_018_953),
            (-1.5, -0.966_105_146_475_311),
        ] {
            // The series (below 0.5) to f64 rounding, the fit above to its 1.5e-7.
            let tol = if x.abs() < 0.5 { 1e-15 } else { 2e-7 };
            assert!((erf(x) - want).abs() < tol, "erf({x}) = {}, want {want}", erf(x));
        }
    }

    #[test]
    fn exp_neg_is_libm_exp_to_two_ulps() {
        // Up to 700, where it stops.
        for i in 0..=18_867 {
            let z = i as f64 * 0.0371;
            let (got, want) = (exp_neg(z), (-z).exp());
            assert!((got - want).abs() <= 2.0 * f64::EPSILON * want, "exp(-{z}) = {got}, want {want}");
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(1e6), (-700f64).exp());
    }
}
