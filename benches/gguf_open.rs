//! Opening a GGUF file (map + parse + validate the whole header, vocabulary included) against
//! llama.cpp's gguf_init_from_file (no_alloc: header only), on both real models, same run.
//!
//! RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=/root/.cache/tomoe/target-native \
//!     cargo bench --bench gguf_open

#[cfg(target_arch = "x86_64")]
use std::ffi::CString;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use tomoe::gguf::GgufFile;

fn model(file: &str) -> PathBuf {
    let dir = std::env::var_os("TOMOE_MODELS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME or TOMOE_MODELS")).join(".cache/tomoe/models")
    });
    let path = dir.join(file);
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh", path.display());
    path
}

fn bench_open(c: &mut Criterion) {
    for (label, file) in [("smollm2", "smollm2-135m-instruct-q4_1.gguf"), ("gemma3", "gemma-3-270m-q4_k_m.gguf")] {
        let path = model(file);
        let mut group = c.benchmark_group(format!("gguf_open/{label}"));
        group.bench_function("tomoe", |b| b.iter(|| GgufFile::open(&path).unwrap()));
        #[cfg(target_arch = "x86_64")]
        {
            use llama_cpp_sys_2 as sys;
            let c_path = CString::new(path.to_str().unwrap()).unwrap();
            group.bench_function("llama.cpp", |b| {
                b.iter(|| {
                    let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
                    // SAFETY: c_path is NUL-terminated; the context is checked and freed once.
                    unsafe {
                        let ctx = sys::gguf_init_from_file(c_path.as_ptr(), params);
                        assert!(!ctx.is_null());
                        sys::gguf_free(ctx);
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_open);
criterion_main!(benches);
