//! Matrix-vector throughput (GB/s of weights read) on a 4096×4096 matrix per format, 1 thread
//! and all threads, beside ggml's own kernels on the same bytes (its `from_float` + `vec_dot`
//! driven from Rust over the rows, split over threads the same way) and a memory-bandwidth
//! probe. Both sides include quantizing the activation vector.
//!
//! Run: `RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=/root/.cache/tomoe/target-native \
//!       cargo bench -p tomoe-quant --bench matvec`, then `python3 quant/benches/table.py`.

#[cfg(target_arch = "x86_64")]
mod bench {
    use criterion::{black_box, Criterion, Throughput};
    use llama_cpp_sys_2 as sys;
    use rand::{Rng, SeedableRng};
    use rayon::prelude::*;
    use std::time::Duration;
    use tomoe_quant::{matvec, matvec_rows, MatRef, QuantType, QuantizedInput};

    const ROWS: usize = 4096;
    const COLS: usize = 4096;

    fn chunk_rows() -> usize {
        (ROWS / (rayon::current_num_threads() * 8)).clamp(16, 256)
    }

    /// 4096 rows: 256 distinct random rows quantized once, tiled (quantizing 16M values per
    /// k-quant format would dominate the run; the memory traffic is the same).
    fn matrix(ty: QuantType) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(ty as u64);
        let rb = ty.row_bytes(COLS).unwrap();
        let distinct = 256;
        let mut base = vec![0u8; rb * distinct];
        for r in 0..distinct {
            let x: Vec<f32> = (0..COLS).map(|_| rng.gen_range(-1.0f32..1.0) * 0.05).collect();
            tomoe_quant::quantize_row(ty, &x, &mut base[r * rb..(r + 1) * rb]);
        }
        let mut data = Vec::with_capacity(rb * ROWS);
        for _ in 0..ROWS / distinct {
            data.extend_from_slice(&base);
        }
        data
    }

    struct Ggml {
        from_float: unsafe extern "C" fn(*const f32, *mut std::ffi::c_void, i64),
        vec_dot: unsafe extern "C" fn(i32, *mut f32, usize, *const std::ffi::c_void, usize, *const std::ffi::c_void, usize, i32),
        x_bytes: usize,
    }

    fn ggml(ty: QuantType) -> Ggml {
        // SAFETY: the traits tables are static; the types are valid ggml types.
        unsafe {
            let t = &*sys::ggml_get_type_traits_cpu(ty.ggml_id() as sys::ggml_type);
            let vt = t.vec_dot_type;
            let bt = &*sys::ggml_get_type_traits(vt);
            let x_bytes = COLS / bt.blck_size as usize * bt.type_size;
            Ggml { from_float: (*sys::ggml_get_type_traits_cpu(vt)).from_float.unwrap(), vec_dot: t.vec_dot.unwrap(), x_bytes }
        }
    }

    impl Ggml {
        fn dot_rows(&self, w: &[u8], rb: usize, x: &[u8], y: &mut [f32], first: usize) {
            for (i, out) in y.iter_mut().enumerate() {
                let r = first + i;
                // SAFETY: row r is rb bytes inside w; x is the quantized activation row.
                unsafe { (self.vec_dot)(COLS as i32, out, 0, w[r * rb..].as_ptr().cast(), 0, x.as_ptr().cast(), 0, 1) };
            }
        }
    }

    fn bandwidth_probe(c: &mut Criterion) {
        // 512 MiB: far beyond the last-level cache.
        let buf: Vec<f32> = vec![1.0; 128 << 20];
        let mut g = c.benchmark_group("bandwidth");
        g.throughput(Throughput::Bytes((buf.len() * 4) as u64)).sample_size(10).warm_up_time(Duration::from_secs(1));
        g.bench_function("sum/1t", |b| b.iter(|| black_box(sum(&buf))));
        g.bench_function("sum/all", |b| {
            b.iter(|| black_box(buf.par_chunks(1 << 20).map(sum).sum::<f32>()))
        });
        g.finish();
    }

    fn sum(x: &[f32]) -> f32 {
        // Eight independent sums so that the adds vectorise and memory is the limit.
        let mut acc = [0f32; 16];
        for c in x.chunks_exact(16) {
            for k in 0..16 {
                acc[k] += c[k];
            }
        }
        acc.iter().sum()
    }

    fn matvec_bench(c: &mut Criterion) {
        // SAFETY: fills ggml's global tables once.
        unsafe { sys::ggml_cpu_init() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let xf: Vec<f32> = (0..COLS).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        eprintln!("tomoe-quant kernel set: {}; threads: {}", tomoe_quant::kernel_name(), rayon::current_num_threads());
        for ty in QuantType::ALL {
            if ty == QuantType::Q8_K {
                continue; // an activation format, not a weight format
            }
            let data = matrix(ty);
            let rb = ty.row_bytes(COLS).unwrap();
            let w = MatRef::new(ty, ROWS, COLS, &data).unwrap();
            let mut g = c.benchmark_group(format!("matvec/{}", ty.name()));
            g.throughput(Throughput::Bytes(data.len() as u64))
                .sample_size(20)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            let mut xq = QuantizedInput::new();
            let mut y = vec![0f32; ROWS];
            g.bench_function("tomoe/1t", |b| {
                b.iter(|| {
                    xq.quantize(ty, &xf, COLS);
                    matvec_rows(&w, 0..ROWS, &xq, &mut y);
                    black_box(&y);
                })
            });
            g.bench_function("tomoe/all", |b| {
                b.iter(|| {
                    xq.quantize(ty, &xf, COLS);
                    matvec(&w, &xq, &mut y);
                    black_box(&y);
                })
            });
            let gg = ggml(ty);
            let mut xg = vec![0u8; gg.x_bytes];
            g.bench_function("ggml/1t", |b| {
                b.iter(|| {
                    // SAFETY: xg holds the quantized row of COLS values.
                    unsafe { (gg.from_float)(xf.as_ptr(), xg.as_mut_ptr().cast(), COLS as i64) };
                    gg.dot_rows(&data, rb, &xg, &mut y, 0);
                    black_box(&y);
                })
            });
            let chunk = chunk_rows();
            g.bench_function("ggml/all", |b| {
                b.iter(|| {
                    // SAFETY: as above.
                    unsafe { (gg.from_float)(xf.as_ptr(), xg.as_mut_ptr().cast(), COLS as i64) };
                    y.par_chunks_mut(chunk).enumerate().for_each(|(i, ys)| gg.dot_rows(&data, rb, &xg, ys, i * chunk));
                    black_box(&y);
                })
            });
            g.finish();
        }
    }

    pub fn main() {
        let mut c = Criterion::default().configure_from_args();
        bandwidth_probe(&mut c);
        matvec_bench(&mut c);
        c.final_summary();
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    bench::main();
}
