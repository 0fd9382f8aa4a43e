//! Matrix products and shape checks: matvec / matvec_rows / matmul equal per-row vec_dot, and
//! malformed shapes give typed errors.

mod support;

use tomoe_quant::kernels::scalar::axpy16_q8_0_quantized;
use tomoe_quant::{
    axpy_rows, axpy_runs, gated_rows, matmul, matvec, matvec_rows, run_pieces, swiglu_rows, vec_dot,
    vecmath, ExtraGroup, GateActivation, MatRef, QuantError, QuantType, QuantizedInput,
};

fn random_matrix(ty: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = support::rng(seed);
    let rb = ty.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rb * rows];
    for r in 0..rows {
        let x = support::dense_row(&mut rng, cols);
        tomoe_quant::quantize_row(ty, &x, &mut data[r * rb..(r + 1) * rb]);
    }
    data
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn matvec_and_matmul_equal_rowwise_dots() {
    // 19 vectors: two whole tiles of the tiled kernels and a tail of three.
    let (rows, cols, n_vecs) = (77, 512, 19);
    for ty in QuantType::ALL {
        let data = random_matrix(ty, rows, cols, ty as u64);
        let w = MatRef::new(ty, rows, cols, &data).unwrap();
        let mut rng = support::rng(99);
        let xs: Vec<f32> = (0..n_vecs)
            .flat_map(|_| support::dense_row(&mut rng, cols))
            .collect();

        let mut xq = QuantizedInput::new();
        xq.quantize(ty, &xs, cols);
        assert_eq!(xq.n_vecs(), n_vecs);
        let mut y = vec![0f32; rows * n_vecs];
        matmul(&w, &xq, &mut y);

        let mut x1 = QuantizedInput::new();
        for v in 0..n_vecs {
            x1.quantize(ty, &xs[v * cols..(v + 1) * cols], cols);
            let mut yv = vec![0f32; rows];
            matvec(&w, &x1, &mut yv);
            let mut part = vec![0f32; 10];
            matvec_rows(&w, 30..40, &x1, &mut part);
            for r in 0..rows {
                // Q4_1/Q5_1 products use the activation block sums (rounded as ggml's Q8_1
                // `s`), the others the plain kernel: either way exactly that kernel's result.
                let expect = match tomoe_quant::dispatch::kernels().dot_with_sums(ty) {
                    Some(f) if !x1.block_sums(0).is_empty() => {
                        // SAFETY: the dispatched set runs on this CPU; the row, the vector and
                        // its block sums are sized for `cols`.
                        unsafe { f(cols, w.row(r), x1.vector(0), x1.block_sums(0)) }
                    }
                    _ => vec_dot(ty, cols, w.row(r), x1.vector(0)),
                };
                assert_eq!(yv[r].to_bits(), expect.to_bits(), "{ty} matvec row {r}");
                assert_eq!(
                    y[v * rows + r].to_bits(),
                    yv[r].to_bits(),
                    "{ty} matmul vec {v} row {r}"
                );
            }
            assert_eq!(&part[..], &yv[30..40]);
            // With an interleaved copy (where the set has kernels for it): the same bits, for
            // the whole matrix and for ranges that start and end inside groups of 16.
            if let Some(il) = w.interleave() {
                let wi = w.with_interleaved(&il).unwrap();
                let mut yi = vec![0f32; rows];
                matvec(&wi, &x1, &mut yi);
                assert_eq!(bits(&yi), bits(&yv), "{ty} interleaved matvec");
                if v == 0 {
                    // Batches over the copy (whole groups where the set has no tiled kernel).
                    let mut ym = vec![0f32; rows * n_vecs];
                    matmul(&wi, &xq, &mut ym);
                    assert_eq!(bits(&ym), bits(&y), "{ty} interleaved matmul");
                    if let Some(b) = wi.bytes_a_copy_replaces() {
                        assert_eq!(b.len(), rows / 16 * 16 * w.row_bytes(), "{ty} replaced bytes");
                    }
                }
                for range in [5..70, 16..48, 3..9, 60..77] {
                    let mut part = vec![0f32; range.len()];
                    matvec_rows(&wi, range.clone(), &x1, &mut part);
                    assert_eq!(bits(&part), bits(&yv[range.clone()]), "{ty} rows {range:?}");
                }
                assert!(w.with_interleaved(&il[1..]).is_err());
            }
        }
    }
}

#[test]
fn matref_rejects_bad_shapes() {
    let data = vec![0u8; 18 * 4];
    assert!(MatRef::new(QuantType::Q4_0, 2, 64, &data).is_ok());
    assert_eq!(
        MatRef::new(QuantType::Q4_0, 2, 48, &data).unwrap_err(),
        QuantError::RowNotBlockMultiple {
            ty: QuantType::Q4_0,
            cols: 48,
            block: 32
        }
    );
    assert!(matches!(
        MatRef::new(QuantType::Q4_0, 3, 64, &data),
        Err(QuantError::DataLength {
            expected: 108,
            actual: 72,
            ..
        })
    ));
    assert!(matches!(
        MatRef::new(QuantType::Q4_0, usize::MAX, 64, &data),
        Err(QuantError::SizeOverflow { .. })
    ));
    let mut x = QuantizedInput::new();
    assert!(matches!(
        x.try_quantize(QuantType::Q4_K, &[0.0; 250], 100),
        Err(QuantError::InputLength { .. })
    ));
    assert!(matches!(
        x.try_quantize(QuantType::Q4_K, &[0.0; 200], 100),
        Err(QuantError::RowNotBlockMultiple { .. })
    ));
}

#[test]
fn axpy_rows_equals_dequantized_weighted_sum() {
    let (rows, cols) = (9, 768);
    for ty in QuantType::ALL {
        let data = random_matrix(ty, rows, cols, 40 + ty as u64);
        let w = MatRef::new(ty, rows, cols, &data).unwrap();
        let picked = [7usize, 0, 3, 3];
        let coeffs = [0.5f32, -1.25, 2.0, 0.125];
        let mut y = vec![1.0f32; cols];
        tomoe_quant::axpy_rows(&w, &picked, &coeffs, &mut y);
        let mut expect = vec![1.0f32; cols];
        let mut row = vec![0f32; cols];
        for (&r, &a) in picked.iter().zip(&coeffs) {
            tomoe_quant::dequantize_row(ty, w.row(r), &mut row);
            for (e, v) in expect.iter_mut().zip(&row) {
                *e += a * v;
            }
        }
        assert_eq!(y, expect, "{ty}");
    }
}

/// The fused SwiGLU MLP over row ranges equals its three steps (gate and up products,
/// `swiglu_lanes`, `axpy_rows`) bit for bit, and `axpy_runs` its last step, with and without the
/// interleaved copies, on runs that start and end inside groups of 16, experts of several runs,
/// and however the rows are cut between calls; and it is the MLP (against an f64 sum of the
/// dequantized rows).
#[test]
fn swiglu_rows_equals_its_steps() {
    let (rows, cols) = (77usize, 96usize);
    for ty in [
        QuantType::Q8_0,
        QuantType::Q4_1,
        QuantType::Q4_K,
        QuantType::F32,
    ] {
        let cols = cols.next_multiple_of(ty.block_size());
        let down_ty = if ty == QuantType::Q4_K {
            QuantType::Q8_0
        } else {
            ty
        };
        let (gd, ud, dd) = (
            random_matrix(ty, rows, cols, 70),
            random_matrix(ty, rows, cols, 71),
            random_matrix(down_ty, rows, cols, 72),
        );
        let gate = MatRef::new(ty, rows, cols, &gd).unwrap();
        let up = MatRef::new(ty, rows, cols, &ud).unwrap();
        let down = MatRef::new(down_ty, rows, cols, &dd).unwrap();
        let (gi, ui, di) = (
            gate.interleave(),
            up.interleave(),
            down.interleave_for_axpy(),
        );
        let plain = [gate, up, down];
        let il = [
            gi.as_ref()
                .map_or(gate, |c| gate.with_interleaved(c).unwrap()),
            ui.as_ref().map_or(up, |c| up.with_interleaved(c).unwrap()),
            di.as_ref()
                .map_or(down, |c| down.with_axpy_interleaved(c).unwrap()),
        ];
        if ty == QuantType::Q8_0 && ["avx2", "avxvnni", "avx512-vnni"].contains(&tomoe_quant::kernel_name()) {
            assert!(
                gi.is_some() && di.is_some(),
                "the set interleaves Q8_0 both ways"
            );
        }
        let mut rng = support::rng(73);
        let x = support::dense_row(&mut rng, cols);
        let (mut xg, mut xu) = (QuantizedInput::new(), QuantizedInput::new());
        xg.quantize(ty, &x, cols);
        xu.quantize(ty, &x, cols);
        // Single runs, and experts of several runs (across groups, within one, out of order).
        #[allow(clippy::single_range_in_vec_init)] // an expert of one run is a slice of one range
        let experts: [&[std::ops::Range<usize>]; 10] = [
            &[0..77],
            &[5..70],
            &[16..48],
            &[3..9],
            &[17..21],
            &[40..47],
            &[60..77],
            &[20..20],
            &[3..9, 17..21, 24..47, 60..77],
            &[48..64, 1..2, 5..12, 13..16],
        ];
        for runs in experts {
            let idx: Vec<usize> = runs.iter().flat_map(|r| r.clone()).collect();
            let n = idx.len();
            let (mut g, mut u) = (vec![0f32; n], vec![0f32; n]);
            let mut i = 0;
            for r in runs {
                matvec_rows(&gate, r.clone(), &xg, &mut g[i..i + r.len()]);
                matvec_rows(&up, r.clone(), &xu, &mut u[i..i + r.len()]);
                i += r.len();
            }
            let g_raw = g.clone();
            vecmath::swiglu_lanes(&mut g, &u);
            let start = support::dense_row(&mut rng, cols);
            let mut want = start.clone();
            axpy_rows(&down, &idx, &g, &mut want);
            // With the interleaved axpy (Q8_0 on AVX-512), its grouped pieces' coefficients are
            // quantized per block (`axpy16_q8_0_quantized`); the other pieces are `axpy_rows`.
            let mut want_il = start.clone();
            let mut i = 0;
            for p in run_pieces(runs, 0..n) {
                let (k, lo, m) = (p.rows.start / 16, p.rows.start % 16, p.rows.len());
                let c = &g[i..i + m];
                if p.grouped && di.is_some() && k < rows / 16 {
                    let rb = down.row_bytes();
                    let mut lanes = [0f32; 16];
                    lanes[lo..lo + m].copy_from_slice(c);
                    let group = &dd[16 * k * rb..16 * (k + 1) * rb];
                    axpy16_q8_0_quantized(cols, group, &lanes, lo..lo + m, &mut want_il);
                } else {
                    let rows: Vec<usize> = p.rows.collect();
                    axpy_rows(&down, &rows, c, &mut want_il);
                }
                i += m;
            }
            for ([ga, ua, da], want) in [(plain, &want), (il, &want_il)] {
                let mut got = start.clone();
                swiglu_rows(&ga, &ua, &da, runs, 0..n, &xg, &xu, &mut got);
                assert_eq!(bits(&got), bits(want), "{ty} runs {runs:?}");
                // Cut in two at the end of a piece (as threads split an expert): the same bits.
                let ends = run_pieces(runs, 0..n).scan(0, |end, p| {
                    *end += p.rows.len();
                    Some(*end)
                });
                let mid = ends.min_by_key(|&e| e.abs_diff(n / 3)).unwrap_or(0);
                let mut cut = start.clone();
                swiglu_rows(&ga, &ua, &da, runs, 0..mid, &xg, &xu, &mut cut);
                swiglu_rows(&ga, &ua, &da, runs, mid..n, &xg, &xu, &mut cut);
                assert_eq!(bits(&cut), bits(want), "{ty} runs {runs:?} cut at {mid}");
                // The down projection alone over the runs (a batch's tokens): the same bits.
                let mut down_only = start.clone();
                axpy_runs(&da, runs, &g, &mut down_only);
                assert_eq!(bits(&down_only), bits(want), "{ty} axpy_runs {runs:?}");
            }
            // GeGLU experts (Gemma): the same rows with `geglu`, the bits of a batch's steps.
            let mut gg = g_raw;
            vecmath::geglu(&mut gg, &u);
            for [ga, ua, da] in [plain, il] {
                let mut got = start.clone();
                let act = GateActivation::GeluTanh;
                gated_rows(act, &ga, &ua, &da, runs, 0..n, &xg, &xu, &mut got);
                let mut want = start.clone();
                axpy_runs(&da, runs, &gg, &mut want);
                assert_eq!(bits(&got), bits(&want), "{ty} geglu runs {runs:?}");
            }
            // The MLP itself, in f64 over the dequantized rows and the activations as the
            // kernels see them (quantized): what is left is rounding, of the f32 sums and, for
            // Q4_1, of its activations' f16 block sums (weighted by the rows' minimums).
            let deq = |m: &MatRef, r: usize| {
                let mut v = vec![0f32; cols];
                tomoe_quant::dequantize_row(m.ty(), m.row(r), &mut v);
                v
            };
            let mut xq = vec![0f32; cols];
            tomoe_quant::dequantize_row(ty.vec_dot_type(), xg.vector(0), &mut xq);
            let dot = |a: &[f32]| {
                a.iter()
                    .zip(&xq)
                    .map(|(&p, &q)| p as f64 * q as f64)
                    .sum::<f64>()
            };
            let mut exact: Vec<f64> = start.iter().map(|&v| v as f64).collect();
            // The size of the terms summed, for the error's scale (the sum may cancel).
            let mut size: Vec<f64> = exact.iter().map(|v| v.abs()).collect();
            for &r in &idx {
                let (gv, uv) = (dot(&deq(&gate, r)), dot(&deq(&up, r)));
                let a = gv / (1.0 + (-gv).exp()) * uv;
                for ((e, m), w) in exact.iter_mut().zip(&mut size).zip(deq(&down, r)) {
                    *e += a * w as f64;
                    *m += (a * w as f64).abs();
                }
            }
            let scale = size.iter().fold(1e-3f64, |m, &v| m.max(v));
            let err = want
                .iter()
                .zip(&exact)
                .fold(0f64, |m, (&a, b)| m.max((a as f64 - b).abs()));
            assert!(
                err <= if ty == QuantType::Q4_1 { 5e-3 } else { 1e-3 } * scale,
                "{ty} runs {runs:?}: error {err} of {scale}"
            );
            // With 8-bit coefficients: each errs by at most half of 1/127 of its block's largest.
            let err_il = want_il
                .iter()
                .zip(&exact)
                .fold(0f64, |m, (&a, b)| m.max((a as f64 - b).abs()));
            assert!(
                err_il <= 5e-3 * scale,
                "{ty} runs {runs:?}: error {err_il} of {scale} with 8-bit coefficients"
            );
        }
    }
}

/// Extra groups of gathered rows (`interleave_extra`): an expert's runs over them give the bits
/// of the same runs over a matrix whose rows are those gathered rows (the same groups, so the
/// same kernels and the same quantized coefficients), through `swiglu_rows` and `axpy_runs`, and
/// a zero row adds nothing; for a matrix of whole groups and one whose last group is partial
/// (which the copy then holds whole, padded). Runs into the extra rows other than in whole
/// groups, or into a partial group's padding, are refused.
#[test]
#[allow(clippy::single_range_in_vec_init)] // runs of one range: slices of one range, on purpose
fn extra_groups_read_as_the_gathered_rows() {
    let (cols, ty) = (96usize, QuantType::Q8_0);
    let rb = ty.row_bytes(cols).unwrap();
    for rows in [64usize, 56] {
        let (gd, ud, dd) = (
            random_matrix(ty, rows, cols, 90),
            random_matrix(ty, rows, cols, 91),
            random_matrix(ty, rows, cols, 92),
        );
        let mats = [&gd, &ud, &dd].map(|d| MatRef::new(ty, rows, cols, d).unwrap());
        // Two extra groups: scattered rows, the second padded with zero rows.
        let picked = [
            3, 4, 9, 17, 18, 19, 30, 31, 33, 40, 41, 47, 50, 51, 52, 55, 1, 2, 53,
        ];
        let slot = |i: usize| picked.get(i).copied();
        let extra: Vec<ExtraGroup> = (0..2)
            .map(|j| std::array::from_fn(|l| slot(16 * j + l)))
            .collect();
        // The reference: a matrix made of the gathered rows (zeros for the padding).
        let gathered = |d: &[u8]| -> Vec<u8> {
            (0..32)
                .flat_map(|i| match slot(i) {
                    Some(r) => d[r * rb..(r + 1) * rb].to_vec(),
                    None => vec![0u8; rb],
                })
                .collect()
        };
        let (gg, gu, gdn) = (gathered(&gd), gathered(&ud), gathered(&dd));
        let refs = [&gg, &gu, &gdn].map(|d| MatRef::new(ty, 32, cols, d).unwrap());
        let (Some(c0), Some(c1), Some(c2)) = (
            mats[0].interleave_extra(&extra),
            mats[1].interleave_extra(&extra),
            mats[2].interleave_for_axpy_extra(&extra),
        ) else {
            // No interleaved kernels for Q8_0 in this set: nothing reads extra groups.
            assert!(!["avx2", "avxvnni", "avx512-vnni"].contains(&tomoe_quant::kernel_name()));
            return;
        };
        assert_eq!(c0.len(), (rows.div_ceil(16) + 2) * 16 * rb, "{rows} rows");
        let (r0, r1, r2) = (
            refs[0].interleave().unwrap(),
            refs[1].interleave().unwrap(),
            refs[2].interleave_for_axpy().unwrap(),
        );
        let (gate, up, down) = (
            mats[0].with_interleaved(&c0).unwrap(),
            mats[1].with_interleaved(&c1).unwrap(),
            mats[2].with_axpy_interleaved(&c2).unwrap(),
        );
        let (rgate, rup, rdown) = (
            refs[0].with_interleaved(&r0).unwrap(),
            refs[1].with_interleaved(&r1).unwrap(),
            refs[2].with_axpy_interleaved(&r2).unwrap(),
        );
        let mut rng = support::rng(93);
        let x = support::dense_row(&mut rng, cols);
        let mut xq = QuantizedInput::new();
        xq.quantize(ty, &x, cols);
        let start = support::dense_row(&mut rng, cols);
        // A group of the matrix, then both extra groups.
        let e0 = rows.next_multiple_of(16);
        let runs = [16..32, e0..e0 + 32];
        let (mut got, mut want) = (start.clone(), start.clone());
        swiglu_rows(&gate, &up, &down, &runs, 0..48, &xq, &xq, &mut got);
        // The reference in two calls: the matrix's group, then the gathered matrix.
        swiglu_rows(&gate, &up, &down, &[16..32], 0..16, &xq, &xq, &mut want);
        swiglu_rows(&rgate, &rup, &rdown, &[0..32], 0..32, &xq, &xq, &mut want);
        assert_eq!(bits(&got), bits(&want), "{rows} rows");
        // A thread's share that starts at the extra groups.
        let mut share = start.clone();
        swiglu_rows(&gate, &up, &down, &runs, 16..48, &xq, &xq, &mut share);
        let mut share_ref = start.clone();
        swiglu_rows(
            &rgate,
            &rup,
            &rdown,
            &[0..32],
            0..32,
            &xq,
            &xq,
            &mut share_ref,
        );
        assert_eq!(bits(&share), bits(&share_ref), "{rows} rows");
        // The down projection alone, with coefficients for the padding rows too (which add 0).
        let coeffs: Vec<f32> = (0..48).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (start.clone(), start.clone());
        axpy_runs(&down, &runs, &coeffs, &mut a);
        axpy_runs(&down, &[16..32], &coeffs[..16], &mut b);
        axpy_runs(&rdown, &[0..32], &coeffs[16..], &mut b);
        assert_eq!(bits(&a), bits(&b), "{rows} rows");
        // Refused: runs into the extra rows not in whole groups, into the padding, or past them.
        let mut bad = vec![e0 - 4..e0 + 8, e0..e0 + 8, e0 + 32..e0 + 48];
        if rows % 16 != 0 {
            bad.push(rows..e0);
        }
        for run in bad {
            let r = std::panic::catch_unwind(|| {
                let mut y = start.clone();
                axpy_runs(
                    &down,
                    std::slice::from_ref(&run),
                    &vec![1.0; run.len()],
                    &mut y,
                );
            });
            assert!(r.is_err(), "{rows} rows: run {run:?}");
        }
        // A copy that is not a whole number of groups is refused.
        assert!(mats[0].with_interleaved(&c0[..c0.len() - rb]).is_err());
    }
}
