//! Tokenization speed against llama.cpp in the same run: the evaluation novel (persuasion.txt,
//! ~470 KB) encoded whole with BOS, by our tokenizer and by `llama_tokenize`, for both real
//! models; then detokenized. Criterion reports each; the closing table gives ours / llama.cpp
//! as a time ratio (below 1 = faster than llama.cpp).
//!
//! Build and run as BENCHMARKS.md says:
//! `RUSTFLAGS="-C target-cpu=native" CARGO_TARGET_DIR=/root/.cache/tomoe/target-native cargo bench --bench tokenizer`

#[cfg(target_arch = "x86_64")]
#[path = "../tests/common/mod.rs"]
mod common;
#[cfg(target_arch = "x86_64")]
#[path = "../tests/common/oracle.rs"]
mod oracle;

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::time::{Duration, Instant};

    use common::RealModel;
    use criterion::Criterion;
    use tomoe::gguf::GgufFile;
    use tomoe::tokenizer::Tokenizer;

    let text = common::austen("persuasion.txt");
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    let mut ratios = Vec::new();
    for (name, model) in [
        ("smollm2", RealModel::SmolLm2),
        ("gemma3", RealModel::Gemma3),
    ] {
        let path = common::model_path(model);
        let file = GgufFile::open(&path).unwrap();
        let tok = Tokenizer::from_gguf(&file).unwrap();
        let vocab = oracle::VocabOracle::load(&path);
        let ids = tok.encode(&text, true, false);
        assert_eq!(
            ids,
            vocab.tokenize(text.as_bytes(), true, false),
            "the two tokenizers must agree"
        );

        let mut g = c.benchmark_group(format!("{name}/persuasion"));
        g.throughput(criterion::Throughput::Bytes(text.len() as u64));
        g.bench_function("encode/tomoe", |b| {
            b.iter(|| tok.encode(std::hint::black_box(&text), true, false))
        });
        g.bench_function("encode/llama.cpp", |b| {
            b.iter(|| vocab.tokenize(std::hint::black_box(text.as_bytes()), true, false))
        });
        g.bench_function("decode/tomoe", |b| {
            b.iter(|| tok.detokenize(std::hint::black_box(&ids), false, false))
        });
        g.bench_function("decode/llama.cpp", |b| {
            b.iter(|| vocab.detokenize(std::hint::black_box(&ids), false, false))
        });
        g.finish();

        // Ratio table from medians of interleaved runs (same process, same load).
        let median = |f: &mut dyn FnMut()| {
            let mut t: Vec<f64> = (0..7)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed().as_secs_f64()
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[3]
        };
        let enc_ours = median(&mut || drop(std::hint::black_box(tok.encode(&text, true, false))));
        let enc_llama = median(&mut || {
            drop(std::hint::black_box(vocab.tokenize(
                text.as_bytes(),
                true,
                false,
            )))
        });
        let dec_ours =
            median(&mut || drop(std::hint::black_box(tok.detokenize(&ids, false, false))));
        let dec_llama =
            median(&mut || drop(std::hint::black_box(vocab.detokenize(&ids, false, false))));
        ratios.push((name, ids.len(), enc_ours, enc_llama, dec_ours, dec_llama));
    }
    c.final_summary();
    println!("\nmodel    tokens   encode ms (tomoe / llama.cpp = ratio)   decode ms (tomoe / llama.cpp = ratio)");
    for (name, n, eo, el, dof, dl) in ratios {
        println!(
            "{name:8} {n:7}   {:8.2} / {:8.2} = {:5.2}            {:8.2} / {:8.2} = {:5.2}",
            eo * 1e3,
            el * 1e3,
            eo / el,
            dof * 1e3,
            dl * 1e3,
            dof / dl
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("the tokenizer benchmark compares against llama.cpp, which is linked on x86-64 only");
}
