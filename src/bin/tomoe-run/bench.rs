//! `tomoe-run bench`.

use crate::{context, load, ModelArgs, Res};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// The GGUF model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Prompt tokens to process.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions (the best is reported).
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    #[command(flatten)]
    model_args: ModelArgs,
}

pub fn run(a: BenchArgs) -> Res<()> {
    let model = load(&a.model)?;
    let mut args = a.model_args;
    args.ctx_size = args.ctx_size.max(a.n_prompt + a.n_gen + 1);
    let mut ctx = context(&model, &args)?;
    let n_vocab = model.config().n_vocab as u32;
    // Deterministic pseudo-random tokens: the speed does not depend on the text.
    let prompt: Vec<u32> = (0..a.n_prompt as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
        .collect();
    let weight_bytes: u64 = model.gguf().tensors().iter().map(|t| t.n_bytes).sum();
    let (mut best_pp, mut best_tg) = (f64::MAX, f64::MAX);
    for _ in 0..a.repetitions.max(1) {
        ctx.clear();
        let t = Instant::now();
        ctx.eval(&prompt)?;
        best_pp = best_pp.min(t.elapsed().as_secs_f64());
        ctx.clear();
        ctx.eval(&prompt[..1])?;
        let t = Instant::now();
        let mut id = prompt[0];
        for _ in 0..a.n_gen {
            let logits = ctx.eval(&[id])?;
            id = argmax(logits);
        }
        best_tg = best_tg.min(t.elapsed().as_secs_f64());
    }
    let pp = a.n_prompt as f64 / best_pp;
    let tg = a.n_gen as f64 / best_tg;
    println!(
        "model: {} ({}, {:.1} MiB of weights; {:.1} MiB of copies for decoding)",
        a.model.display(),
        model.config().arch.name(),
        weight_bytes as f64 / 1048576.0,
        model.copies_bytes() as f64 / 1048576.0
    );
    println!(
        "threads: {}  kernels: {}",
        ctx.params().n_threads,
        tomoe_quant::kernel_name()
    );
    println!("pp{}: {:.1} tokens/s", a.n_prompt, pp);
    // Bytes one token reads, with the experts weighted by how this run routed its tokens.
    let usage = ctx.expert_counts();
    let bytes_per_token = model.weights().bytes_per_token(usage);
    println!(
        "tg{}: {:.1} tokens/s  ({:.2} GB/s of weights read, {:.1} MiB per token)",
        a.n_gen,
        tg,
        tg * bytes_per_token as f64 / 1e9,
        bytes_per_token as f64 / 1048576.0
    );
    if usage.iter().any(|l| !l.is_empty()) {
        let n_expert = usage.iter().map(Vec::len).max().unwrap_or(0);
        let mut total = vec![0u64; n_expert];
        for l in usage {
            l.iter().enumerate().for_each(|(e, &k)| total[e] += k);
        }
        let all: u64 = total.iter().sum::<u64>().max(1);
        let shares: Vec<String> = total
            .iter()
            .map(|&k| format!("{:.1}%", 100.0 * k as f64 / all as f64))
            .collect();
        println!("expert usage (tokens routed, all layers): [{}]", shares.join(", "));
        for (il, l) in usage.iter().enumerate() {
            let n: u64 = l.iter().sum::<u64>().max(1);
            let row: Vec<String> = l
                .iter()
                .map(|&k| format!("{:>3.0}", 100.0 * k as f64 / n as f64))
                .collect();
            println!("  layer {il:>2} %: {}", row.join(" "));
        }
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
