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
//! `TOMOE_BENCH_FILES=dense.gguf,moe.gguf,...` instead compares GGUF files (e.g. a dense model and
//! its MoE conversions at the same quantization): per file the bytes one decoded token reads
//! (experts weighted by the routing of the run), tg/pp tokens/s, the decode speedup over the first
//! file beside the ratio of bytes, and llama.cpp on every file it can load (not `tomoe-*` ones).
//! Files take turns: each repetition of pp512 runs every file (and the probe), and decoding is cut
//! into bursts of 16 tokens: each round runs every file's burst (in an order that turns from round
//! to round), then llama.cpp's, then pauses for llama.cpp's threads to settle; its speed is the
//! mean over all bursts (not the best run), so the drift of a shared machine hits every file alike.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/oracle_eval.rs"]
mod oracle_eval;

use common::{model_path, RealModel};
use oracle_eval::LlamaOracle;
use rayon::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tomoe::engine::{Context, ContextParams};
use tomoe::huge_pages::HugeBuf;
use tomoe::model::Model;

const N_PROMPT: usize = 512;
const N_GEN: usize = 128;
const N_CTX: usize = 1024;
/// Pause after llama.cpp's bursts, for its spinning threads to go to sleep (see `bench_files`).
const LLAMA_SETTLE_MS: u64 = 50;

fn env_list(key: &str, default: &str) -> Vec<String> {
    std::env::var(key).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_string()).collect()
}

/// Deterministic pseudo-random tokens (speed does not depend on the text); the same for both.
fn tokens(n: usize, n_vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab).collect()
}

/// Read bandwidth of `threads` threads summing a 1 GiB buffer (best of 3), in GB/s. The buffer
/// is on huge pages where the system has them, as the weights' copies and the KV cache are.
fn bandwidth_probe(threads: usize) -> f64 {
    let mut buf = HugeBuf::<f32>::zeroed(1 << 28).unwrap();
    buf.fill(1.0);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
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
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 4) as f64 / best / 1e9
}

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

/// `TOMOE_BENCH_FILES`: each file against the first (see the file comment).
fn bench_files(files: &[String], threads: &[usize], reps: usize) {
    println!(
        "| file | threads | MiB/token | bytes ratio to first | tg tomoe | decode speedup | GB/s | probe GB/s | of probe \
         | tg llama.cpp | tomoe / llama.cpp | pp tomoe | pp llama.cpp |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &t in threads {
        // Every file loaded at once, then each repetition runs them all in turn (and the probe),
        // so that the machine's drift over minutes hits every file alike.
        let runs: Vec<_> = files
            .iter()
            .map(|file| {
                let path = std::path::PathBuf::from(file);
                let model = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{file}: {e}")));
                let ctx = Context::new(model.clone(), ContextParams { n_ctx: N_CTX, n_threads: t, n_batch: N_PROMPT })
                    .unwrap();
                let oracle = model.config().tomoe.is_none().then(|| LlamaOracle::load(&path, N_CTX, t));
                (path, model, ctx, oracle, Speeds { pp: 0.0, tg: 0.0 }, Speeds { pp: 0.0, tg: 0.0 })
            })
            .collect();
        let mut runs = runs;
        let mut probe = 0f64;
        // Prompt processing: best of `reps`, the files in turn.
        for _ in 0..reps {
            probe = probe.max(bandwidth_probe(t));
            for (_, model, ctx, oracle, ours, theirs) in runs.iter_mut() {
                let prompt = tokens(N_PROMPT, model.config().n_vocab as u32);
                ctx.clear();
                let s = Instant::now();
                ctx.eval(&prompt).unwrap();
                ours.pp = ours.pp.max(N_PROMPT as f64 / s.elapsed().as_secs_f64());
                if let Some(o) = oracle.as_mut() {
                    o.clear();
                    let s = Instant::now();
                    std::hint::black_box(o.eval(&prompt, 0, false));
                    theirs.pp = theirs.pp.max(N_PROMPT as f64 / s.elapsed().as_secs_f64());
                }
            }
        }
        // Decoding: `reps` passes of tg128, each cut into bursts of 16 tokens that take turns
        // between the files (then llama.cpp): a slow spell of the shared machine, seconds long,
        // then slows every file alike instead of one file's whole run. tokens/s over all bursts.
        const BURST: usize = 16;
        let mut time = vec![(0f64, 0f64); runs.len()];
        for _ in 0..reps {
            for (_, _, ctx, oracle, _, _) in runs.iter_mut() {
                ctx.clear();
                ctx.eval(&[1]).unwrap();
                if let Some(o) = oracle.as_mut() {
                    o.clear();
                    o.eval(&[1], 0, false);
                }
            }
            for b in 0..N_GEN / BURST {
                // The files' bursts, in an order that turns each round so that no file always
                // runs after the same one; then llama.cpp's, apart, since its worker threads spin
                // for a while after each graph. (ToMoE p = 0.7 at two threads runs at 0.5-0.6 of
                // its speed alone in this bench in some runs, before and after this change; the
                // cause is not known.)
                for j in 0..runs.len() {
                    let i = (j + b) % runs.len();
                    let (_, model, ctx, _, _, _) = &mut runs[i];
                    let gen = tokens(N_GEN + 1, model.config().n_vocab as u32);
                    let burst = &gen[1 + b * BURST..1 + (b + 1) * BURST];
                    let s = Instant::now();
                    for &tok in burst {
                        std::hint::black_box(ctx.eval(&[tok]).unwrap());
                    }
                    time[i].0 += s.elapsed().as_secs_f64();
                }
                for (i, (_, model, _, oracle, _, _)) in runs.iter_mut().enumerate() {
                    if let Some(o) = oracle.as_mut() {
                        let gen = tokens(N_GEN + 1, model.config().n_vocab as u32);
                        let burst = &gen[1 + b * BURST..1 + (b + 1) * BURST];
                        let s = Instant::now();
                        for (k, &tok) in burst.iter().enumerate() {
                            std::hint::black_box(o.eval(&[tok], 1 + b * BURST + k, false));
                        }
                        time[i].1 += s.elapsed().as_secs_f64();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(LLAMA_SETTLE_MS));
            }
        }
        for (run, (ours, theirs)) in runs.iter_mut().zip(&time) {
            let n = (reps * N_GEN / BURST * BURST) as f64;
            run.4.tg = n / ours;
            run.5.tg = if *theirs > 0.0 { n / theirs } else { 0.0 };
        }
        let mut first: Option<(f64, f64)> = None;
        for (path, model, ctx, oracle, ours, theirs) in &runs {
            let bytes = model.weights().bytes_per_token(ctx.expert_counts()) as f64;
            let (b0, tg0) = *first.get_or_insert((bytes, ours.tg));
            let gbs = ours.tg * bytes / 1e9;
            let name = path.file_name().unwrap().to_string_lossy();
            let (ltg, lpp, ratio) = match oracle {
                Some(_) => {
                    (format!("{:.1}", theirs.tg), format!("{:.1}", theirs.pp), format!("{:.2}", ours.tg / theirs.tg))
                }
                None => ("–".into(), "–".into(), "–".into()),
            };
            println!(
                "| {name} | {t} | {:.1} | {:.2} | {:.1} | {:.2} | {gbs:.2} | {probe:.1} | {:.0}% | {ltg} | {ratio} | {:.1} | {lpp} |",
                bytes / 1048576.0,
                b0 / bytes,
                ours.tg,
                ours.tg / tg0,
                100.0 * gbs / probe,
                ours.pp,
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let reps: usize = std::env::var("TOMOE_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let threads: Vec<usize> = env_list("TOMOE_BENCH_THREADS", "1,2").iter().map(|s| s.parse().unwrap()).collect();
    println!("kernels: {}, reps: {reps}", tomoe_quant::kernel_name());
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
        let which = match name.as_str() {
            "smollm2" => RealModel::SmolLm2,
            "gemma3" => RealModel::Gemma3,
            other => panic!("unknown model {other:?} (smollm2, gemma3)"),
        };
        let path = model_path(which);
        let model = Arc::new(Model::load(&path).unwrap());
        let n_vocab = model.config().n_vocab as u32;
        let all = tokens(N_PROMPT + N_GEN + 1, n_vocab);
        let (prompt, gen) = (&all[..N_PROMPT], &all[N_PROMPT..]);
        let bytes = model.weights().bytes_per_token(&[]);
        for &t in &threads {
            let mut ctx =
                Context::new(model.clone(), ContextParams { n_ctx: N_CTX, n_threads: t, n_batch: N_PROMPT }).unwrap();
            let mut oracle = LlamaOracle::load(&path, N_CTX, t);
            let (mut ours, mut theirs) = (Speeds { pp: 0.0, tg: 0.0 }, Speeds { pp: 0.0, tg: 0.0 });
            for _ in 0..reps {
                bench_tomoe(&mut ctx, prompt, gen, &mut ours);
                bench_llama(&mut oracle, prompt, gen, &mut theirs);
            }
            drop(oracle);
            let probe = bandwidth_probe(t);
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
