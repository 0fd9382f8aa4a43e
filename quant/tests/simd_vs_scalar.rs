//! Property tests: every SIMD kernel set this CPU (or emulator) can run equals the scalar
//! reference on random rows with odd numbers of blocks. Each set's functions are called
//! directly, not only the dispatched best one.

mod support;

use tomoe_quant::dispatch::{available_sets, scalar_set};
use tomoe_quant::{kernel_name, quantize_row, QuantType};

#[test]
fn kernel_in_use_is_reported() {
    let name = kernel_name();
    eprintln!(
        "kernel set in use: {name}; available: {:?}",
        available_sets().iter().map(|s| s.name).collect::<Vec<_>>()
    );
    #[cfg(target_arch = "aarch64")]
    assert!(
        name.starts_with("neon"),
        "aarch64 must run a NEON kernel set, got {name}"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert_ne!(
            name, "scalar",
            "an AVX2 CPU must not fall back to scalar kernels"
        );
    }
}

#[test]
fn every_simd_set_equals_scalar() {
    let scalar = scalar_set();
    let sets = available_sets();
    assert!(!sets.is_empty());
    let mut rng = support::rng(7);
    for set in sets.iter().filter(|s| s.name != "scalar") {
        for ty in QuantType::ALL {
            let vt = ty.vec_dot_type();
            let mut worst = 0f64;
            // Odd block counts, and for the unblocked float formats odd element counts (tails).
            let lens: Vec<usize> = if ty.block_size() == 1 {
                vec![1, 7, 31, 33, 95, 257, 1031]
            } else {
                [1usize, 3, 7, 33]
                    .iter()
                    .map(|b| b * ty.block_size())
                    .collect()
            };
            for &n in &lens {
                for trial in 0..6 {
                    let wf = support::row(&mut rng, n, trial + 5);
                    let xf = support::row(&mut rng, n, 5 + (trial + 1) % 3);
                    let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
                    let mut x = vec![0u8; vt.row_bytes(n).unwrap()];
                    quantize_row(ty, &wf, &mut w);
                    quantize_row(vt, &xf, &mut x);
                    // SAFETY: `available_sets` only lists sets the CPU supports; rows sized for n.
                    let (want, got) =
                        unsafe { (scalar.dot(ty)(n, &w, &x), set.dot(ty)(n, &w, &x)) };
                    // The block-sums variants (Q4_1, Q5_1) against the scalar block-sums
                    // reference with the same sums (rounded to f16 as ggml's Q8_1 `s`, so
                    // they differ from the plain product by more than float rounding).
                    let with_sums = set.dot_with_sums(ty).map(|f| {
                        let mut xq = tomoe_quant::QuantizedInput::new();
                        xq.quantize(ty, &xf, n);
                        assert_eq!(xq.vector(0), &x[..]);
                        let sums = xq.block_sums(0);
                        let reference = scalar.dot_with_sums(ty).expect("scalar block-sums kernel");
                        // SAFETY: as above; one block sum per block.
                        unsafe { (f(n, &w, &x, sums), reference(n, &w, &x, sums)) }
                    });
                    let mut wd = vec![0f32; n];
                    let mut xd = vec![0f32; n];
                    tomoe_quant::dequantize_row(ty, &w, &mut wd);
                    tomoe_quant::dequantize_row(vt, &x, &mut xd);
                    let abs_terms = support::abs_terms(ty, &w, &wd, &xd);
                    let err = support::rel_err(got, want, abs_terms);
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-5,
                        "{} {ty} n={n} trial {trial}: simd {got} scalar {want} (rel {err:e})",
                        set.name
                    );
                    if let Some((gs, want)) = with_sums {
                        let err = support::rel_err(gs, want, abs_terms);
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-5,
                            "{} {ty} with block sums n={n}: {gs} scalar {want} (rel {err:e})",
                            set.name
                        );
                    }
                }
            }
            eprintln!(
                "{} {ty}: worst relative difference to scalar {worst:e}",
                set.name
            );
        }
    }
}

/// Every four-row kernel gives, per row, exactly its set's single-row result (the engine's
/// agreement with llama.cpp depends on it), on odd block counts.
#[test]
fn four_row_kernels_equal_single_row_bit_for_bit() {
    let mut rng = support::rng(31);
    for set in available_sets() {
        for ty in QuantType::ALL {
            let Some(f4) = set.dot_x4(ty) else { continue };
            let vt = ty.vec_dot_type();
            for blocks in [1usize, 3, 18, 33] {
                let n = blocks * ty.block_size();
                let rows: Vec<Vec<u8>> = (0..4)
                    .map(|k| {
                        let wf = support::row(&mut rng, n, 5 + k);
                        let mut w = vec![0u8; ty.row_bytes(n).unwrap()];
                        quantize_row(ty, &wf, &mut w);
                        w
                    })
                    .collect();
                let xf = support::dense_row(&mut rng, n);
                let mut xq = tomoe_quant::QuantizedInput::new();
                xq.quantize(ty, &xf, n);
                let (x, sums) = (xq.vector(0), xq.block_sums(0));
                assert_eq!(x.len(), vt.row_bytes(n).unwrap());
                // SAFETY: the set runs on this CPU; rows, vector and sums are sized for n.
                let got = unsafe { f4(n, [&rows[0], &rows[1], &rows[2], &rows[3]], x, sums) };
                for (k, row) in rows.iter().enumerate() {
                    let want = unsafe {
                        match set.dot_with_sums(ty) {
                            Some(f) => f(n, row, x, sums),
                            None => set.dot(ty)(n, row, x),
                        }
                    };
                    assert_eq!(
                        got[k].to_bits(),
                        want.to_bits(),
                        "{} {ty} x4 row {k}, {blocks} blocks",
                        set.name
                    );
                }
            }
        }
    }
}

/// Every dot product over unpacked rows gives exactly its set's single-row result, on quantized
/// rows and on rows of random bytes (every level and scale the format can hold).
#[test]
fn unpacked_rows_equal_single_row_bit_for_bit() {
    let mut rng = support::rng(37);
    let mut checked = 0;
    for set in available_sets() {
        // The SIMD sets unpack these formats for prompts: a set that lost them must fail here.
        if set.name != "scalar" {
            for ty in [QuantType::Q4_K, QuantType::Q6_K] {
                assert!(set.unpacked_rows(ty).is_some(), "{} does not unpack {ty} rows", set.name);
            }
        }
        for ty in QuantType::ALL {
            let Some(u) = set.unpacked_rows(ty) else { continue };
            for (blocks, raw) in [(1usize, false), (3, false), (8, false), (1, true), (5, true)] {
                let n = blocks * ty.block_size();
                let mut row = vec![0u8; ty.row_bytes(n).unwrap()];
                quantize_row(ty, &support::row(&mut rng, n, 5 + blocks % 3), &mut row);
                if raw {
                    rand::Rng::fill(&mut rng, &mut row[..]);
                    // Finite f16 scales (d, and Q4_K's dmin): exponents below the maximum.
                    for block in row.chunks_exact_mut(ty.type_size()) {
                        let at = match ty {
                            QuantType::Q4_K => 0..4,
                            _ => ty.type_size() - 2..ty.type_size(),
                        };
                        for b in block[at].iter_mut().skip(1).step_by(2) {
                            *b &= 0x3B;
                        }
                    }
                }
                let mut xq = tomoe_quant::QuantizedInput::new();
                xq.quantize(ty, &support::dense_row(&mut rng, n), n);
                let x = xq.vector(0);
                let mut unpacked = vec![0u8; blocks * u.block_bytes];
                // SAFETY: the set runs on this CPU; row, buffer and vector are sized for n.
                let (got, want) = unsafe {
                    (u.unpack)(n, &row, &mut unpacked);
                    ((u.dot)(n, &unpacked, x), set.dot(ty)(n, &row, x))
                };
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{} {ty} unpacked row, {blocks} blocks, raw bytes {raw}: {got} != {want}",
                    set.name
                );
                checked += 1;
            }
        }
    }
    eprintln!("{checked} unpacked rows equal to the single-row kernel");
}

/// Every tiled matrix-matrix kernel gives, per (row, vector), exactly its set's single-row
/// result, for row and vector counts that leave partial tiles (tiles are 2 rows × 16 vectors)
/// and odd block counts.
#[test]
fn tiled_kernels_equal_single_row_bit_for_bit() {
    let mut rng = support::rng(47);
    for set in available_sets() {
        // Where the CPU has i8mm the dotprod set has smmla tiles: fail rather than skip them.
        #[cfg(target_arch = "aarch64")]
        if set.name == "neon-dotprod" && std::arch::is_aarch64_feature_detected!("i8mm") {
            for ty in [QuantType::Q4_0, QuantType::Q8_0] {
                assert!(set.gemm(ty).is_some(), "{} has no tiled {ty} kernel", set.name);
            }
        }
        for ty in QuantType::ALL {
            let Some(gemm) = set.gemm(ty) else { continue };
            let mut checked = 0;
            for (n_rows, n_vecs, blocks) in [
                (1, 1, 1),
                (4, 16, 3),
                (7, 9, 18),
                (13, 17, 5),
                (2, 33, 33),
                (3, 40, 2),
            ] {
                let n = blocks * ty.block_size();
                let rb = ty.row_bytes(n).unwrap();
                let mut w = vec![0u8; rb * n_rows];
                for (k, row) in w.chunks_exact_mut(rb).enumerate() {
                    quantize_row(ty, &support::row(&mut rng, n, 5 + k), row);
                }
                let xf: Vec<f32> = (0..n_vecs)
                    .flat_map(|_| support::dense_row(&mut rng, n))
                    .collect();
                let mut xq = tomoe_quant::QuantizedInput::new();
                xq.quantize(ty, &xf, n);
                let xrb = ty.vec_dot_type().row_bytes(n).unwrap();
                let x: Vec<u8> = (0..n_vecs).flat_map(|v| xq.vector(v).to_vec()).collect();
                let sums: Vec<f32> = (0..n_vecs)
                    .flat_map(|v| xq.block_sums(v).to_vec())
                    .collect();
                let mut out = vec![f32::NAN; n_rows * n_vecs];
                let mut packed = tomoe_quant::kernels::PackedActs::default();
                // SAFETY: the set runs on this CPU; rows, vectors and sums are sized for n.
                unsafe {
                    (gemm.pack)(n, &x, xrb, &sums, &mut packed);
                    (gemm.run)(n, &w, rb, &packed, out.as_mut_ptr(), n_rows);
                }
                for v in 0..n_vecs {
                    for (r, row) in w.chunks_exact(rb).enumerate() {
                        let (xv, sv) = (xq.vector(v), xq.block_sums(v));
                        // SAFETY: as above.
                        let want = unsafe {
                            match set.dot_with_sums(ty) {
                                Some(f) => f(n, row, xv, sv),
                                None => set.dot(ty)(n, row, xv),
                            }
                        };
                        assert_eq!(
                            out[v * n_rows + r].to_bits(),
                            want.to_bits(),
                            "{} {ty} gemm row {r} of {n_rows}, vector {v} of {n_vecs}, {blocks} blocks",
                            set.name
                        );
                        checked += 1;
                    }
                }
            }
            eprintln!(
                "{} {ty}: {checked} tiled (row, vector) results equal to the single-row kernel",
                set.name
            );
        }
    }
}

/// 16 random rows of `n` values in format `ty` (row `k` of the shape `kind(k)` of `support::row`)
/// and the group `pack` makes of them: the input of the interleaved kernels' tests.
/// The f16 at the start of `b` (a block's scale) as f32.
fn f16_at(b: &[u8]) -> f32 {
    tomoe_quant::blocks::float::read_f16(b, 0)
}

fn random_group(
    rng: &mut rand_chacha::ChaCha8Rng,
    ty: QuantType,
    n: usize,
    kind: impl Fn(usize) -> usize,
    pack: fn(usize, &[u8], &mut [u8]),
) -> (Vec<u8>, Vec<u8>) {
    let rb = ty.row_bytes(n).unwrap();
    let mut rows = vec![0u8; 16 * rb];
    for (k, row) in rows.chunks_exact_mut(rb).enumerate() {
        quantize_row(ty, &support::row(rng, n, kind(k)), row);
    }
    let mut group = vec![0u8; 16 * rb];
    pack(n, &rows, &mut group);
    (rows, group)
}

/// Every row-interleaved matrix-vector kernel gives, per row, exactly its set's single-row
/// result, on odd block counts.
#[test]
fn interleaved_kernels_equal_single_row_bit_for_bit() {
    let mut rng = support::rng(59);
    for set in available_sets() {
        // The NEON sets have row-interleaved kernels for these formats: a set that lost them
        // must fail here rather than skip its checks.
        #[cfg(target_arch = "aarch64")]
        if set.name.starts_with("neon") {
            for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0, QuantType::Q8_0] {
                assert!(
                    set.interleaved(ty).is_some(),
                    "{} has no interleaved {ty} kernel",
                    set.name
                );
            }
            for ty in [QuantType::Q4_0, QuantType::Q5_0] {
                assert!(
                    set.interleaved(ty).is_some_and(|il| il.unpacked.is_some()),
                    "{} does not unpack {ty} groups",
                    set.name
                );
            }
        }
        for ty in QuantType::ALL {
            let Some(il) = set.interleaved(ty) else {
                continue;
            };
            let (mut checked, mut unpacked) = (0, 0);
            // The unpacked groups of all cases go through one buffer, grown and shrunk.
            let mut buf = Vec::new();
            // `raw`: every quant byte random (Q8_0's -128 included, which no quantizer
            // writes), so a kernel whose i16 sums could saturate would differ. 67 blocks: more
            // than the kernels keep activation sums for at a time.
            let cases = [
                (1usize, false),
                (3, false),
                (18, false),
                (67, false),
                (33, false),
                (3, true),
                (33, true),
            ];
            for (blocks, raw) in cases {
                let n = blocks * ty.block_size();
                let rb = ty.row_bytes(n).unwrap();
                let (mut rows, mut group) =
                    random_group(&mut rng, ty, n, |k| 5 + k % 3, il.pack);
                if raw {
                    // The scale (and Q4_1's minimum) stay: finite f16 from the quantizer.
                    let (ts, head) = (ty.type_size(), if ty == QuantType::Q4_1 { 4 } else { 2 });
                    for block in rows.chunks_exact_mut(ts) {
                        rand::Rng::fill(&mut rng, &mut block[head..]);
                    }
                    (il.pack)(n, &rows, &mut group);
                }
                let mut xq = tomoe_quant::QuantizedInput::new();
                xq.quantize(ty, &support::dense_row(&mut rng, n), n);
                let (x, sums) = (xq.vector(0), xq.block_sums(0));
                // The stream's next group only steers the prefetch: the same bits either way.
                let (mut out, mut again) = ([0f32; 16], [0f32; 16]);
                // SAFETY: the set runs on this CPU; the group, vector and sums are sized for n.
                unsafe { (il.dot16)(n, &group, x, sums, &mut out, std::ptr::null()) };
                // SAFETY: as above; `next` is only prefetched.
                unsafe { (il.dot16)(n, &group, x, sums, &mut again, group.as_ptr()) };
                assert_eq!(out.map(f32::to_bits), again.map(f32::to_bits));
                if let Some(u) = il.unpacked {
                    // SAFETY: as above; the buffer is sized by `unpack`.
                    unsafe {
                        (u.unpack)(n, &group, &mut buf);
                        (u.dot16)(n, &buf, x, sums, &mut again, std::ptr::null());
                    }
                    assert_eq!(
                        out.map(f32::to_bits),
                        again.map(f32::to_bits),
                        "{} {ty} unpacked group, {blocks} blocks, raw bytes {raw}",
                        set.name
                    );
                    unpacked += 1;
                }
                for (r, row) in rows.chunks_exact(rb).enumerate() {
                    // SAFETY: as above.
                    let want = unsafe {
                        match set.dot_with_sums(ty) {
                            Some(f) => f(n, row, x, sums),
                            None => set.dot(ty)(n, row, x),
                        }
                    };
                    assert_eq!(
                        out[r].to_bits(),
                        want.to_bits(),
                        "{} {ty} interleaved row {r}, {blocks} blocks, raw bytes {raw}",
                        set.name
                    );
                    checked += 1;
                }
            }
            eprintln!(
                "{} {ty}: {checked} interleaved rows equal to the single-row kernel; {unpacked} \
                 unpacked groups equal to the packed ones",
                set.name
            );
        }
    }
}

/// Every set's activation quantizer equals the scalar reference bit for bit: random rows, a
/// block of zeros, values at exact halves of a step (ties round to even), one huge outlier.
#[test]
fn activation_quantizers_equal_scalar_bit_for_bit() {
    let scalar = scalar_set();
    let mut rng = support::rng(53);
    let mut rows: Vec<Vec<f32>> = (0..20)
        .map(|k| support::row(&mut rng, 32 * (1 + k % 7), 5 + k % 3))
        .collect();
    let mut special = vec![0f32; 96];
    for (i, v) in special[32..64].iter_mut().enumerate() {
        *v = i as f32 - 15.5; // amax 16.5 scales these to odd multiples of half a step, some exact ties
    }
    special[64] = 127.0;
    special[65] = 0.5;
    special[66] = -1.5;
    special[67] = 2.5;
    special[80] = 3.0e30;
    special[81] = -1.0e-30;
    rows.push(special);
    for set in available_sets() {
        for src in &rows {
            let nb = src.len() / 32;
            let (mut want_q, mut got_q) = (vec![0u8; 34 * nb], vec![0u8; 34 * nb]);
            let (mut want_s, mut got_s) = (vec![0f32; nb], vec![0f32; nb]);
            // SAFETY: the set runs on this CPU; buffers sized for the row.
            unsafe {
                (scalar.quantize_q8_0_acts)(src, &mut want_q, &mut want_s);
                (set.quantize_q8_0_acts)(src, &mut got_q, &mut got_s);
            }
            assert_eq!(
                got_q,
                want_q,
                "{} quants of a {}-value row",
                set.name,
                src.len()
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got_s), bits(&want_s), "{} block sums", set.name);
        }
    }
}

/// Every set's row-scaled accumulation equals the scalar reference bit for bit, for row counts
/// that leave 1–3 rows after the groups of four, repeated and out-of-order rows, and odd widths.
#[test]
fn axpy_kernels_equal_scalar_bit_for_bit() {
    let mut rng = support::rng(47);
    let scalar = scalar_set();
    for set in available_sets() {
        for ty in QuantType::ALL {
            let (Some(f), Some(reference)) = (set.axpy(ty), scalar.axpy(ty)) else {
                continue;
            };
            let mut checked = 0;
            for blocks in [1usize, 3, 18] {
                let n = blocks * ty.block_size();
                let row_bytes = ty.row_bytes(n).unwrap();
                let n_rows = 11;
                let mut w = vec![0u8; n_rows * row_bytes];
                for r in 0..n_rows {
                    let wf = support::row(&mut rng, n, 3 + r);
                    quantize_row(ty, &wf, &mut w[r * row_bytes..(r + 1) * row_bytes]);
                }
                for count in [0usize, 1, 2, 3, 4, 5, 7, 9] {
                    let rows: Vec<usize> = (0..count).map(|k| (k * 7 + 3) % n_rows).collect();
                    let coeffs = support::dense_row(&mut rng, count);
                    let start = support::dense_row(&mut rng, n);
                    let (mut got, mut want) = (start.clone(), start);
                    // SAFETY: the set runs on this CPU; the kernels check rows and lengths.
                    unsafe {
                        f(n, &w, row_bytes, &rows, &coeffs, &mut got);
                        reference(n, &w, row_bytes, &rows, &coeffs, &mut want);
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{} {ty} axpy, {blocks} blocks, {count} rows",
                        set.name
                    );
                    checked += 1;
                }
            }
            eprintln!("{} {ty}: {checked} axpy cases equal to scalar", set.name);
        }
    }
}

/// Every row-interleaved weighted row sum equals its scalar definition
/// (`scalar::axpy16_q8_0_quantized`: coefficients quantized per block) bit for bit, on odd block
/// counts, zero coefficients, a part of the group's rows, blocks whose products all vanish and
/// one that is not finite; and stays within the 8-bit coefficients' rounding of the exact sum
/// (the scalar f32 axpy).
#[test]
fn interleaved_axpy_kernels_equal_scalar_bit_for_bit() {
    let mut rng = support::rng(61);
    let scalar = scalar_set();
    let mut checked = 0;
    for set in available_sets() {
        #[cfg(target_arch = "aarch64")]
        if set.name.starts_with("neon") {
            assert!(
                set.interleaved_axpy(QuantType::Q8_0).is_some(),
                "{} has no interleaved Q8_0 axpy",
                set.name
            );
        }
        for ty in QuantType::ALL {
            let (Some(il), Some(exact)) = (set.interleaved_axpy(ty), scalar.axpy(ty)) else {
                continue;
            };
            let checked_before = checked;
            assert_eq!(ty, QuantType::Q8_0, "the quantized definition is Q8_0's");
            for blocks in [1usize, 2, 3, 5, 18, 33] {
                let n = blocks * ty.block_size();
                let rb = ty.row_bytes(n).unwrap();
                let (rows, group) = random_group(&mut rng, ty, n, |k| 3 + k % 5, il.pack);
                let mut coeffs: [f32; 16] = support::dense_row(&mut rng, 16).try_into().unwrap();
                coeffs[blocks % 16] = 0.0;
                let mut infinite = coeffs;
                infinite[2] = f32::INFINITY;
                let cases: [(std::ops::Range<usize>, [f32; 16]); 7] = [
                    (0..16, coeffs),
                    (0..16, infinite),
                    (3..11, coeffs),
                    (15..16, coeffs),
                    (5..5, coeffs),
                    (0..16, [0.0; 16]),
                    (0..16, std::array::from_fn(|r| coeffs[r] * 1e-39)),
                ];
                for (lanes, c) in cases {
                    let start = support::dense_row(&mut rng, n);
                    let (mut got, mut want, mut f32_sum) = (start.clone(), start.clone(), start);
                    let idx: Vec<usize> = lanes.clone().collect();
                    // SAFETY: the set runs on this CPU; the kernels check the lengths and rows.
                    unsafe {
                        let next = if blocks % 2 == 0 {
                            group.as_ptr()
                        } else {
                            std::ptr::null()
                        };
                        (il.axpy16)(n, &group, &c, lanes.clone(), &mut got, next);
                        exact(n, &rows, rb, &idx, &c[lanes.clone()], &mut f32_sum);
                    }
                    tomoe_quant::kernels::scalar::axpy16_q8_0_quantized(
                        n,
                        &rows,
                        &c,
                        lanes.clone(),
                        &mut want,
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let what = format!("{} {ty}, {blocks} blocks, lanes {lanes:?}", set.name);
                    assert_eq!(bits(&got), bits(&want), "{what}");
                    if c.iter().any(|v| !v.is_finite()) {
                        assert!(got.iter().all(|v| v.is_nan()), "{what}: an infinite coefficient adds NaN");
                        continue;
                    }
                    // Each block's coefficient errs by at most half a step of max |c·d| / 127.
                    for b in 0..blocks {
                        let d = |r: usize| f16_at(&rows[r * rb + 34 * b..]);
                        let step = idx
                            .iter()
                            .map(|&r| (c[r] * d(r)).abs())
                            .fold(0f32, f32::max)
                            / 127.0;
                        let q_sum: f32 = (0..32)
                            .map(|col| {
                                idx.iter()
                                    .map(|&r| (rows[r * rb + 34 * b + 2 + col] as i8 as f32).abs())
                                    .sum::<f32>()
                            })
                            .fold(0f32, f32::max);
                        for col in 32 * b..32 * (b + 1) {
                            let err = (got[col] - f32_sum[col]).abs();
                            assert!(
                                err <= 0.5 * step * q_sum * 1.01
                                    + 1e-5 * f32_sum[col].abs()
                                    + 1e-30,
                                "{what}: column {col} off by {err} (step {step})"
                            );
                        }
                    }
                    checked += 1;
                }
                // A coefficient that is not finite: NaN in its blocks, as the definition says.
                let mut bad = coeffs;
                bad[2] = f32::INFINITY;
                let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
                // SAFETY: as above.
                unsafe { (il.axpy16)(n, &group, &bad, 0..16, &mut got, std::ptr::null()) };
                tomoe_quant::kernels::scalar::axpy16_q8_0_quantized(
                    n,
                    &rows,
                    &bad,
                    0..16,
                    &mut want,
                );
                assert!(got.iter().all(|v| v.is_nan()) && want.iter().all(|v| v.is_nan()));
            }
            eprintln!(
                "{} {ty}: {} interleaved axpy cases equal to scalar",
                set.name,
                checked - checked_before
            );
        }
    }
    eprintln!("{checked} interleaved axpy cases equal to scalar");
}

/// An out-of-range row index is refused (a panic naming the kernel), never read.
#[test]
#[should_panic(expected = "row index out of range")]
fn axpy_refuses_out_of_range_rows() {
    let ty = QuantType::Q8_0;
    let row_bytes = ty.row_bytes(32).unwrap();
    let w = vec![0u8; 2 * row_bytes];
    let mut y = vec![0f32; 32];
    let f = tomoe_quant::dispatch::kernels().axpy(ty).unwrap();
    // SAFETY: dispatched for this CPU; the kernel must reject row 2 of a 2-row matrix.
    unsafe { f(32, &w, row_bytes, &[0, 2], &[1.0, 1.0], &mut y) };
}
