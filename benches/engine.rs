//! Dense inference speed against llama.cpp, in one process, on the real models: prompt
//! processing (pp512: one batch of 512 tokens from an empty context) and generation (tg128:
//! 128 single-token decodes after one token), for 1 and 2 threads, beside a memory-bandwidth
//! probe. Runs alternate between the engines (tomoe, llama.cpp, tomoe, ...) and each keeps its
//! best of `TOMOE_BENCH_REPS` (default 3) so that drift on a shared machine hits both alike.
//!
//! Build llama.cpp at its best (AVX-512 where the CPU has it) by compiling with
//! `RUSTFLAGS="-C target-cpu=native"`; see BENCHMARKS.md for the command.
//!
//! Environment: `TOMOE_BENCH_MODELS` (`smollm2,gemma3`), `TOMOE_BENCH_THREADS` (`1,2`),
//! `TOMOE_BENCH_REPS` (`3`).
//!
//! `TOMOE_BENCH_MEMORY=1` instead measures peak resident memory (Linux's VmHWM) at a 512-token
//! context, a 16-token prompt (`TOMOE_BENCH_MEMORY_PROMPT`: up to 496) and 16 decoded tokens: tomoe with an f32 and an f16 KV cache (and
//! the f16 cache without the decoding copies) and llama.cpp at its defaults (f16 cache), each
//! run a process of its own, on `TOMOE_BENCH_MODELS`; beside each cache's bytes at 4096 tokens.
//!
//! `TOMOE_BENCH_FILES=dense.gguf,moe.gguf,...` instead compares GGUF files (e.g. a dense model and
//! its MoE conversions at the same quantization): per file the bytes one decoded token reads
//! (experts weighted by the routing of the run), tg/pp tokens/s, the decode speedup over the first
//! file beside the ratio of bytes, and llama.cpp on every file it can load (not `tomoe-*` ones).
//! Each run (tomoe or llama.cpp on one file: pp512, then tg128) is a process of its own, the
//! files taking turns in an order that changes each repetition, and each keeps its best of
//! `TOMOE_BENCH_REPS`: a user runs one model per process, and models sharing a process evict
//! each other from the last-level cache (on the bench machine, whose L3 held a whole SmolLM2,
//! two p = 0.5 contexts in one process decoded at 126-128 tokens/s, one alone at 134-145).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/oracle_eval.rs"]
mod oracle_eval;

use common::{model_path, RealModel};
use oracle_eval::LlamaOracle;
use rayon::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tomoe::engine::{peak_resident_bytes, CacheTypes, Context, ContextParams, KvType, LoadOptions, Model};
use tomoe::gguf::GgufFile;
use tomoe::huge_pages::HugeBuf;

const N_PROMPT: usize = 512;
const N_GEN: usize = 128;
const N_CTX: usize = 1024;

fn env_list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect()
}

/// Deterministic pseudo-random tokens (speed does not depend on the text); the same for both.
fn tokens(n: usize, n_vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
        .collect()
}

/// The read-bandwidth ceiling for decoding a model of `model_bytes` with `threads` threads, in
/// GB/s: the better of summing a 1 GiB buffer (memory) and summing, over and over, a buffer of
/// the model's size (which a large last-level cache may hold, as it may hold the model).
fn bandwidth_probe(threads: usize, model_bytes: usize) -> f64 {
    read_bandwidth(threads, 1 << 30).max(read_bandwidth(threads, model_bytes))
}

/// Read bandwidth of `threads` threads summing a buffer of `bytes` as many times as it takes to
/// read 1 GiB (best of 3), in GB/s. The buffer is on huge pages where the system has them, as
/// the weights' copies and the KV cache are.
fn read_bandwidth(threads: usize, bytes: usize) -> f64 {
    let mut buf = HugeBuf::<f32>::zeroed(bytes.div_ceil(1 << 18) << 16).unwrap();
    buf.fill(1.0);
    let passes = (1usize << 30).div_ceil(buf.len() * 4);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..passes {
            let s: f32 = pool.install(|| {
                buf.par_chunks(1 << 16)
                    .map(|c| {
                        let mut acc = [0f32; 16];
                        for v in c.chunks_exact(16) {
                            for i in 0..16 {
                                acc[i] += v[i];
                            }
                        }
                        acc.iter().sum::<f32>()
                    })
                    .sum()
            });
            std::hint::black_box(s);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    (passes * buf.len() * 4) as f64 / best / 1e9
}

#[derive(Clone, Copy)]
struct Speeds {
    pp: f64,
    tg: f64,
}

fn bench_tomoe(ctx: &mut Context, prompt: &[u32], gen: &[u32], best: &mut Speeds) {
    ctx.clear();
    let t = Instant::now();
    ctx.eval(prompt).unwrap();
    best.pp = best.pp.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
    ctx.clear();
    ctx.eval(&gen[..1]).unwrap();
    let t = Instant::now();
    for &tok in &gen[1..] {
        std::hint::black_box(ctx.eval(&[tok]).unwrap());
    }
    best.tg = best.tg.max((gen.len() - 1) as f64 / t.elapsed().as_secs_f64());
}

fn bench_llama(o: &mut LlamaOracle, prompt: &[u32], gen: &[u32], best: &mut Speeds) {
    o.clear();
    let t = Instant::now();
    std::hint::black_box(o.eval(prompt, 0, false));
    best.pp = best.pp.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
    o.clear();
    o.eval(&gen[..1], 0, false);
    let t = Instant::now();
    for (i, &tok) in gen[1..].iter().enumerate() {
        std::hint::black_box(o.eval(&[tok], i + 1, false));
    }
    best.tg = best.tg.max((gen.len() - 1) as f64 / t.elapsed().as_secs_f64());
}

/// One engine on one file in this process (a child of `bench_files`): prints `pp tg bytes`,
/// prompt processing and decoding tokens/s and, for tomoe, the bytes a decoded token read.
fn bench_child(engine: &str, file: &str, threads: usize) {
    let path = std::path::PathBuf::from(file);
    let (mut speeds, mut bytes) = (Speeds { pp: 0.0, tg: 0.0 }, 0u64);
    if engine == "tomoe" {
        let model = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{file}: {e}")));
        let all = tokens(N_PROMPT + N_GEN + 1, model.config().n_vocab as u32);
        let params = ContextParams {
            n_ctx: N_CTX,
            n_threads: threads,
            n_batch: N_PROMPT,
        };
        let mut ctx = Context::new(model.clone(), params).unwrap();
        bench_tomoe(&mut ctx, &all[..N_PROMPT], &all[N_PROMPT..], &mut speeds);
        bytes = model.weights().bytes_per_token(ctx.expert_counts());
    } else {
        let mut oracle = LlamaOracle::load(&path, N_CTX, threads);
        let all = tokens(N_PROMPT + N_GEN + 1, oracle.n_vocab() as u32);
        bench_llama(&mut oracle, &all[..N_PROMPT], &all[N_PROMPT..], &mut speeds);
    }
    println!("{} {} {bytes}", speeds.pp, speeds.tg);
}

/// The runs of the memory table (`TOMOE_BENCH_MEMORY`): label, engine, KV cache, copies.
const MEMORY_RUNS: [(&str, &str, KvType, bool); 4] = [
    ("tomoe, f32 cache", "tomoe", KvType::F32, true),
    ("tomoe, f16 cache", "tomoe", KvType::F16, true),
    ("tomoe, f16 cache, no copies", "tomoe", KvType::F16, false),
    ("llama.cpp, defaults (f16 cache)", "llama", KvType::F16, true),
];
const MEMORY_CTX: usize = 512;
const MEMORY_TOKENS: usize = 16;

/// The prompt of the memory runs: `TOMOE_BENCH_MEMORY_PROMPT`, else `MEMORY_TOKENS`.
fn memory_prompt() -> usize {
    let n = std::env::var("TOMOE_BENCH_MEMORY_PROMPT").map_or(MEMORY_TOKENS, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("TOMOE_BENCH_MEMORY_PROMPT={v:?} is not a token count"))
    });
    assert!(
        (1..=MEMORY_CTX - MEMORY_TOKENS).contains(&n),
        "TOMOE_BENCH_MEMORY_PROMPT: 1 to {}",
        MEMORY_CTX - MEMORY_TOKENS
    );
    n
}

/// One run of the memory table in this process (a child of `bench_memory`): a `MEMORY_CTX`
/// context, a prompt of `memory_prompt()` tokens and `MEMORY_TOKENS` decoded; prints the peak resident
/// bytes.
fn memory_child(run: usize, file: &str, threads: usize) {
    let (_, engine, kv, copies) = MEMORY_RUNS[run];
    let (path, n_prompt) = (std::path::PathBuf::from(file), memory_prompt());
    if engine == "tomoe" {
        let opts = LoadOptions {
            copies,
            ..LoadOptions::default()
        };
        let model = Arc::new(Model::load_with(&path, &opts).unwrap_or_else(|e| panic!("{file}: {e}")));
        let all = tokens(n_prompt + MEMORY_TOKENS, model.config().n_vocab as u32);
        let params = ContextParams {
            n_ctx: MEMORY_CTX,
            n_threads: threads,
            n_batch: MEMORY_CTX,
        };
        let mut ctx = Context::with_cache_types(model, params, CacheTypes { k: kv, v: kv }).unwrap();
        ctx.eval(&all[..n_prompt]).unwrap();
        for &t in &all[n_prompt..] {
            std::hint::black_box(ctx.eval(&[t]).unwrap());
        }
    } else {
        // The vocabulary size from llama.cpp itself: nothing of ours is loaded in its process.
        let mut oracle = LlamaOracle::load(&path, MEMORY_CTX, threads);
        let all = tokens(n_prompt + MEMORY_TOKENS, oracle.n_vocab() as u32);
        oracle.eval(&all[..n_prompt], 0, false);
        for (i, &t) in all[n_prompt..].iter().enumerate() {
            std::hint::black_box(oracle.eval(&[t], n_prompt + i, false));
        }
    }
    println!("{}", peak_resident_bytes().expect("VmHWM in /proc/self/status (Linux only)"));
}

/// `TOMOE_BENCH_MEMORY`: the memory table (see the file comment).
fn bench_memory(models: &[String], threads: usize) {
    let mib = |b: f64| b / 1048576.0;
    print!("| model |");
    for (label, ..) in MEMORY_RUNS {
        print!(" {label} |");
    }
    println!(" tomoe / llama.cpp (f16 cache) | KV cache at 4096 tokens, f32 / f16 |");
    println!("|---|{}---|---|", "---|".repeat(MEMORY_RUNS.len()));
    for name in models {
        let path = model_path(real_model(name));
        let file = path.to_str().expect("a UTF-8 path");
        let peaks: Vec<f64> = (0..MEMORY_RUNS.len())
            .map(|run| {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .env("TOMOE_BENCH_MEMORY_CHILD", format!("{run},{threads},{file}"))
                    .stderr(std::process::Stdio::null())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{} on {file} failed", MEMORY_RUNS[run].0);
                String::from_utf8(out.stdout).unwrap().trim().parse::<f64>().unwrap()
            })
            .collect();
        // The caches' sizes at 4096 tokens, without the copies (they do not change them).
        let opts = LoadOptions {
            copies: false,
            ..LoadOptions::default()
        };
        let model = Arc::new(Model::load_with(&path, &opts).unwrap());
        let kv = |ty| {
            let params = ContextParams {
                n_ctx: 4096,
                n_threads: 1,
                n_batch: 512,
            };
            Context::with_cache_types(model.clone(), params, CacheTypes { k: ty, v: ty })
                .unwrap()
                .kv_bytes()
        };
        let (kv32, kv16) = (kv(KvType::F32), kv(KvType::F16));
        print!("| {name} |");
        for p in &peaks {
            print!(" {:.1} MiB |", mib(*p));
        }
        println!(
            " {:.2} | {:.0} / {:.0} MiB |",
            peaks[1] / peaks[MEMORY_RUNS.len() - 1],
            mib(kv32 as f64),
            mib(kv16 as f64)
        );
    }
}

fn real_model(name: &str) -> RealModel {
    match name {
        "smollm2" => RealModel::SmolLm2,
        "gemma3" => RealModel::Gemma3,
        other => panic!("unknown model {other:?} (smollm2, gemma3)"),
    }
}

/// Runs `bench_child` in a process of its own and returns its `(pp, tg, bytes)`.
fn run_child(engine: &str, file: &str, threads: usize) -> (f64, f64, u64) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("TOMOE_BENCH_CHILD", format!("{engine},{threads},{file}"))
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{engine} on {file} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
}

/// `TOMOE_BENCH_FILES`: each file against the first (see the file comment).
fn bench_files(files: &[String], threads: &[usize], reps: usize) {
    println!(
        "| file | threads | MiB/token | bytes ratio to first | tg tomoe | decode speedup | GB/s | probe GB/s | of probe \
         | tg llama.cpp | tomoe / llama.cpp | pp tomoe | pp llama.cpp |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // llama.cpp runs every file but ours (`tomoe-*` architectures).
    let llama: Vec<bool> = files
        .iter()
        .map(|f| {
            let file = GgufFile::open(std::path::Path::new(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            !file
                .get("general.architecture")
                .and_then(|v| v.as_str())
                .is_some_and(|a| a.starts_with("tomoe-"))
        })
        .collect();
    let first_len = std::fs::metadata(&files[0]).unwrap().len() as usize;
    for &t in threads {
        let mut ours = vec![(Speeds { pp: 0.0, tg: 0.0 }, 0u64); files.len()];
        let mut theirs: Vec<Speeds> = files.iter().map(|_| Speeds { pp: 0.0, tg: 0.0 }).collect();
        let mut probe = 0f64;
        for rep in 0..reps {
            probe = probe.max(bandwidth_probe(t, first_len));
            // Each run in a process of its own, the files in an order that turns each
            // repetition: so that no file always follows the same one.
            for j in 0..files.len() {
                let i = (j + rep) % files.len();
                let (pp, tg, bytes) = run_child("tomoe", &files[i], t);
                let best = &mut ours[i];
                (best.0.pp, best.0.tg, best.1) = (best.0.pp.max(pp), best.0.tg.max(tg), bytes);
                if llama[i] {
                    let (pp, tg, _) = run_child("llama", &files[i], t);
                    (theirs[i].pp, theirs[i].tg) = (theirs[i].pp.max(pp), theirs[i].tg.max(tg));
                }
            }
        }
        let (b0, tg0) = (ours[0].1 as f64, ours[0].0.tg);
        for (i, file) in files.iter().enumerate() {
            let ((speeds, bytes), theirs) = (&ours[i], &theirs[i]);
            let bytes = *bytes as f64;
            let gbs = speeds.tg * bytes / 1e9;
            let name = std::path::Path::new(file).file_name().unwrap().to_string_lossy();
            let (ltg, lpp, ratio) = if llama[i] {
                (
                    format!("{:.1}", theirs.tg),
                    format!("{:.1}", theirs.pp),
                    format!("{:.2}", speeds.tg / theirs.tg),
                )
            } else {
                ("–".into(), "–".into(), "–".into())
            };
            println!(
                "| {name} | {t} | {:.1} | {:.2} | {:.1} | {:.2} | {gbs:.2} | {probe:.1} | {:.0}% | {ltg} | {ratio} | {:.1} | {lpp} |",
                bytes / 1048576.0,
                b0 / bytes,
                speeds.tg,
                speeds.tg / tg0,
                100.0 * gbs / probe,
                speeds.pp,
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    if let Ok(child) = std::env::var("TOMOE_BENCH_CHILD") {
        let mut f = child.splitn(3, ',');
        let (engine, threads, file) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        return bench_child(engine, file, threads.parse().unwrap());
    }
    if let Ok(child) = std::env::var("TOMOE_BENCH_MEMORY_CHILD") {
        let mut f = child.splitn(3, ',');
        let (run, threads, file) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        return memory_child(run.parse().unwrap(), file, threads.parse().unwrap());
    }
    let reps: usize = std::env::var("TOMOE_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let threads: Vec<usize> = env_list("TOMOE_BENCH_THREADS", "1,2")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    println!("kernels: {}, reps: {reps}", tomoe_quant::kernel_name());
    if std::env::var_os("TOMOE_BENCH_MEMORY").is_some() {
        return bench_memory(&env_list("TOMOE_BENCH_MODELS", "smollm2,gemma3"), threads[0]);
    }
    if let Ok(files) = std::env::var("TOMOE_BENCH_FILES") {
        let files: Vec<String> = files.split(',').map(str::to_string).collect();
        return bench_files(&files, &threads, reps);
    }
    println!(
        "| model | threads | pp{N_PROMPT} tomoe | pp{N_PROMPT} llama.cpp | ratio | tg{N_GEN} tomoe | tg{N_GEN} llama.cpp | ratio \
         | tomoe decode GB/s | probe GB/s | of probe |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for name in env_list("TOMOE_BENCH_MODELS", "smollm2,gemma3") {
        let path = model_path(real_model(&name));
        let model = Arc::new(Model::load(&path).unwrap());
        let n_vocab = model.config().n_vocab as u32;
        let all = tokens(N_PROMPT + N_GEN + 1, n_vocab);
        let (prompt, gen) = (&all[..N_PROMPT], &all[N_PROMPT..]);
        let bytes = model.weights().bytes_per_token(&[]);
        for &t in &threads {
            let mut ctx = Context::new(
                model.clone(),
                ContextParams {
                    n_ctx: N_CTX,
                    n_threads: t,
                    n_batch: N_PROMPT,
                },
            )
            .unwrap();
            let mut oracle = LlamaOracle::load(&path, N_CTX, t);
            let (mut ours, mut theirs) = (Speeds { pp: 0.0, tg: 0.0 }, Speeds { pp: 0.0, tg: 0.0 });
            for _ in 0..reps {
                bench_tomoe(&mut ctx, prompt, gen, &mut ours);
                bench_llama(&mut oracle, prompt, gen, &mut theirs);
            }
            drop(oracle);
            let probe = bandwidth_probe(t, std::fs::metadata(&path).unwrap().len() as usize);
            let gbs = ours.tg * bytes as f64 / 1e9;
            println!(
                "| {name} | {t} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {gbs:.2} | {probe:.1} | {:.0}% |",
                ours.pp,
                theirs.pp,
                ours.pp / theirs.pp,
                ours.tg,
                theirs.tg,
                ours.tg / theirs.tg,
                100.0 * gbs / probe
            );
        }
    }
}
