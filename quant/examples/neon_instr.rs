//! Calls each NEON matrix-vector kernel (single-row, row-interleaved, interleaved axpy, the
//! unpacking of a row and the dot product over it, and the tiled matrix-matrix kernel on 16 rows
//! by 16 vectors) once on
//! 64 and once on 128 blocks of 32 weights, between calls of a marker function, so that an
//! instruction trace (`scripts/neon-instr-table.sh`: `qemu-aarch64 -d in_asm,exec,nochain`)
//! gives the instructions each kernel executes per block: the difference of the two calls over
//! 64 blocks, free of the per-call work. Prints one line per measured pair of calls, in order:
//! `label rows blocks` (rows, or (row, vector) pairs, per call: 1, 16 or 256).

#[cfg(target_arch = "aarch64")]
fn main() {
    use std::hint::black_box;
    use tomoe_quant::dispatch::available_sets;
    use tomoe_quant::{quantize_row, QuantType, QuantizedInput};

    /// The trace's delimiter: every call of it starts or ends a measured call.
    #[inline(never)]
    fn mark() {
        black_box(());
    }

    println!("mark {:#x}", mark as fn() as usize);
    let formats = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q2_K,
        QuantType::Q3_K,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];
    for set in available_sets().iter().filter(|s| s.name.starts_with("neon")) {
        for ty in formats {
            for blocks in [64usize, 128] {
                let n = 32 * blocks;
                let rb = ty.row_bytes(n).unwrap();
                let wf: Vec<f32> = (0..16 * n).map(|i| ((i * 7919 % 997) as f32 - 498.0) * 1e-3).collect();
                let mut rows = vec![0u8; 16 * rb];
                for (r, row) in rows.chunks_exact_mut(rb).enumerate() {
                    quantize_row(ty, &wf[r * n..(r + 1) * n], row);
                }
                let xf: Vec<f32> = (0..n).map(|i| ((i * 104_729 % 1009) as f32 - 504.0) * 1e-3).collect();
                let mut xq = QuantizedInput::new();
                xq.quantize(ty, &xf, n);
                let (x, sums) = (xq.vector(0), xq.block_sums(0));
                let label = |what: &str| format!("{}/{ty}/{what}", set.name);
                let single = set.dot_with_sums(ty);
                mark();
                // SAFETY: the set runs on this CPU; row, vector and sums hold n values.
                unsafe {
                    match single {
                        Some(f) => black_box(f(n, &rows[..rb], x, sums)),
                        None => black_box(set.dot(ty)(n, &rows[..rb], x)),
                    };
                }
                mark();
                println!("{} 1 {blocks}", label("dot"));
                if let Some(il) = set.interleaved(ty) {
                    let mut group = vec![0u8; 16 * rb];
                    (il.pack)(n, &rows, &mut group);
                    let mut out = [0f32; 16];
                    mark();
                    // SAFETY: as above; the group holds 16 rows of n values; `next` is only
                    // prefetched (given, so that every block prefetches as in a stream).
                    unsafe { (il.dot16)(n, &group, x, sums, &mut out, group.as_ptr()) };
                    mark();
                    black_box(out);
                    println!("{} 16 {blocks}", label("dot16"));
                    if let Some(un) = il.unpacked {
                        let mut buf = Vec::new();
                        mark();
                        // SAFETY: as above; `unpack` sizes the buffer.
                        unsafe { (un.unpack)(n, &group, &mut buf) };
                        mark();
                        println!("{} 16 {blocks}", label("unpack16"));
                        mark();
                        // SAFETY: as above; the buffer holds the unpacked group.
                        unsafe { (un.dot16)(n, &buf, x, sums, &mut out, std::ptr::null()) };
                        mark();
                        black_box(out);
                        println!("{} 16 {blocks}", label("unpacked16"));
                    }
                }
                if let Some(gemm) = set.gemm(ty) {
                    // 16 rows by 16 vectors (the activation row, repeated): per (row, vector).
                    let xs: Vec<u8> = x.iter().copied().cycle().take(16 * x.len()).collect();
                    let ss: Vec<f32> = sums.iter().copied().cycle().take(16 * sums.len()).collect();
                    let mut packed = tomoe_quant::kernels::PackedActs::default();
                    let mut out = vec![0f32; 16 * 16];
                    // SAFETY: as above; 16 vectors of n values, and their block sums.
                    unsafe { (gemm.pack)(n, &xs, x.len(), &ss, &mut packed) };
                    mark();
                    // SAFETY: as above; `out` holds 16 vectors' results for 16 rows.
                    unsafe { (gemm.run)(n, &rows, rb, &packed, out.as_mut_ptr(), 16) };
                    mark();
                    black_box(&out);
                    println!("{} 256 {blocks}", label("gemm"));
                }
                if let Some(u) = set.unpacked_rows(ty) {
                    // The unpacking once per row, then the dot product per (row, vector).
                    let mut unpacked = vec![0u8; n / ty.block_size() * u.block_bytes];
                    mark();
                    // SAFETY: as above; the buffer holds one unpacked row of n values.
                    unsafe { (u.unpack)(n, &rows[..rb], &mut unpacked) };
                    mark();
                    println!("{} 1 {blocks}", label("unpack"));
                    mark();
                    // SAFETY: as above.
                    unsafe { black_box((u.dot)(n, &unpacked, x)) };
                    mark();
                    println!("{} 1 {blocks}", label("unpacked"));
                }
                if let Some(ax) = set.interleaved_axpy(ty) {
                    let mut group = vec![0u8; 16 * rb];
                    (ax.pack)(n, &rows, &mut group);
                    let coeffs: [f32; 16] = std::array::from_fn(|r| 0.25 + r as f32 * 0.1);
                    let mut y = vec![0f32; n];
                    mark();
                    // SAFETY: as above; y holds n values.
                    unsafe { (ax.axpy16)(n, &group, &coeffs, 0..16, &mut y, group.as_ptr()) };
                    mark();
                    black_box(&y);
                    println!("{} 16 {blocks}", label("axpy16"));
                }
            }
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn main() {
    eprintln!("neon_instr: aarch64 only");
}
