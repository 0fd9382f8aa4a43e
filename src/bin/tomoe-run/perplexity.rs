//! `tomoe-run perplexity`: llama-perplexity's method and output. On stdout: the running
//! perplexity after each chunk (`[1]12.3456,[2]11.9876,...`), then
//! `Final estimate: PPL = 12.3456 +/- 0.12345` (the error as llama.cpp computes it, see
//! [`PerplexityState::ppl_error`]), then a summary line
//! `perplexity: 12.3456 (N tokens scored, C chunks of n_ctx, T s)`. Progress goes to stderr.
//!
//! `--kl-divergence-base FILE` also saves the model's log-probabilities over the scored
//! positions (and the text's tokens) to FILE; `--kl-divergence --kl-divergence-base FILE` then
//! evaluates another model (`-m`, same vocabulary) on the same chunks and prints
//! llama-perplexity's KL-divergence report: a row per chunk, then the perplexity, KL-divergence
//! and token-probability statistics, and a summary line
//! `kl-divergence: mean KLD x, same top n/N (p %), PPL(Q) q, PPL(base) b (N positions, ...)`.
//! The computations and the file format are in [`tomoe::engine::kl_divergence`].

use crate::{context, load, LoadArgs, ModelArgs, Res};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tomoe::engine::kl_divergence::{percentile, BaseReader, BaseWriter, Estimate, KldStats};
use tomoe::engine::perplexity::{eval_chunk, n_chunks, score_chunk, PerplexityState};

#[derive(Args)]
pub struct PerplexityArgs {
    /// The GGUF model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text file to score (not with --kl-divergence, which takes the tokens from the base
    /// file).
    #[arg(
        short = 'f',
        long = "file",
        required_unless_present = "kl_divergence",
        conflicts_with = "kl_divergence"
    )]
    file: Option<PathBuf>,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    /// With -f: also save the model's log-probabilities over the scored positions to FILE, as
    /// the base that --kl-divergence compares other models with (an existing FILE is replaced).
    /// With --kl-divergence: the base file to compare with.
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare the model with the base file of --kl-divergence-base over the same chunks
    /// (n_ctx and the tokens come from the file): KL divergence, same top token, PPL(Q) vs
    /// PPL(base), Δp.
    #[arg(long = "kl-divergence", requires = "kl_divergence_base")]
    kl_divergence: bool,
    #[command(flatten)]
    model_args: ModelArgs,
    #[command(flatten)]
    load: LoadArgs,
}

pub fn run(a: PerplexityArgs) -> Res<()> {
    if a.kl_divergence {
        return run_kl_divergence(a);
    }
    let file = a.file.as_ref().expect("clap requires -f without --kl-divergence");
    let model = load(&a.model, &a.load)?;
    let text = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let text = String::from_utf8(text).map_err(|e| format!("{} is not valid UTF-8: {e}", file.display()))?;
    let tok = model.tokenizer();
    let tokens = tok.encode(&text, true, false);
    let n_ctx = a.model_args.ctx_size;
    if n_ctx < 4 {
        return Err("-c must be at least 4 tokens".into());
    }
    let chunks = n_chunks(tokens.len(), n_ctx, a.chunks);
    if chunks == 0 {
        return Err(format!(
            "{} has {} tokens: fewer than one chunk of -c {n_ctx}",
            file.display(),
            tokens.len()
        )
        .into());
    }
    let mut ctx = context(&model, &a.model_args)?;
    let bos = if tok.adds_bos() { tok.bos() } else { None };
    let mut base = match &a.kl_divergence_base {
        Some(path) => {
            for (what, other) in [("model", &a.model), ("text file", file)] {
                if same_file(path, other) {
                    return Err(format!(
                        "--kl-divergence-base {} is the {what}: not overwriting it",
                        path.display()
                    )
                    .into());
                }
            }
            let nv = model.config().n_vocab;
            let w = BaseWriter::create(path, n_ctx, nv, &tokens[..chunks * n_ctx])?;
            eprintln!(
                "perplexity: saving the base log-probabilities to {} ({}, {} positions of {nv} tokens){}",
                path.display(),
                bytes(w.file_bytes()),
                chunks * w.header().positions(),
                if path.exists() {
                    ", replacing the existing file"
                } else {
                    ""
                },
            );
            Some((path, w))
        }
        None => None,
    };
    eprintln!(
        "perplexity: calculating perplexity over {chunks} chunks, n_ctx={n_ctx}, batch_size={}, {} tokens",
        ctx.params().n_batch,
        tokens.len()
    );
    let (mut chunk, mut logits, mut state) = (Vec::new(), Vec::new(), PerplexityState::default());
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    for i in 0..chunks {
        score_chunk(&mut ctx, &tokens, i, bos, &mut chunk, &mut logits, &mut state)?;
        if let Some((_, w)) = &mut base {
            w.write_chunk(&logits, &chunk)?;
        }
        if i == 0 {
            print_eta("perplexity", start, chunks);
        }
        // llama-perplexity's running output: the perplexity over the chunks scored so far.
        write!(out, "[{}]{:.4},", i + 1, state.ppl())?;
        out.flush()?;
    }
    writeln!(out)?;
    if let Some((path, w)) = base {
        let size = w.finish()?;
        eprintln!("perplexity: wrote {} ({})", path.display(), bytes(size));
    }
    match state.ppl_error() {
        Some(err) => writeln!(out, "Final estimate: PPL = {:.4} +/- {err:.5}", state.ppl())?,
        None => writeln!(out, "Final estimate: PPL = {:.4}", state.ppl())?,
    }
    writeln!(
        out,
        "perplexity: {:.4} ({} tokens scored, {chunks} chunks of {n_ctx}, {:.1}s)",
        state.ppl(),
        state.count,
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// `--kl-divergence`: the model against the base file, as llama-perplexity reports it.
fn run_kl_divergence(a: PerplexityArgs) -> Res<()> {
    let path = a
        .kl_divergence_base
        .as_ref()
        .expect("clap requires --kl-divergence-base");
    let mut base = BaseReader::open(path)?;
    let h = base.header();
    let model = load(&a.model, &a.load)?;
    let nv = model.config().n_vocab;
    if nv != h.n_vocab {
        return Err(format!(
            "{} has a vocabulary of {nv} tokens, but the base file {} was written by a model with {}: \
             the KL divergence compares models with the same vocabulary",
            a.model.display(),
            path.display(),
            h.n_vocab
        )
        .into());
    }
    let n_ctx = h.n_ctx;
    let chunks = a.chunks.map_or(h.n_chunks, |c| c.min(h.n_chunks));
    if chunks == 0 {
        return Err("--chunks 0: nothing to compare".into());
    }
    let args = ModelArgs {
        ctx_size: n_ctx,
        ..a.model_args.clone()
    };
    let mut ctx = context(&model, &args)?;
    let tok = model.tokenizer();
    let bos = if tok.adds_bos() { tok.bos() } else { None };
    eprintln!(
        "kl-divergence: comparing with {} over {chunks} of its {} chunks, n_ctx={n_ctx} (from the file), \
         batch_size={}, {} positions",
        path.display(),
        h.n_chunks,
        ctx.params().n_batch,
        chunks * h.positions()
    );
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              \
         Δp RMS            Same top p"
    )?;
    let (mut chunk, mut logits, mut stats) = (Vec::new(), Vec::new(), KldStats::default());
    let start = Instant::now();
    for i in 0..chunks {
        eval_chunk(&mut ctx, base.tokens(), i, bos, &mut chunk, &mut logits)?;
        base.read_chunk()?.compare(&logits, &chunk, &mut stats)?;
        if i == 0 {
            print_eta("kl-divergence", start, chunks);
        }
        let (ppl, ratio, kld) = (stats.ppl(), stats.log_ppl_ratio(), stats.kld());
        let (rms, top) = (stats.p_diff_rms(), stats.same_top());
        writeln!(
            out,
            "{:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
            i + 1,
            ppl.value,
            ppl.error,
            ratio.value,
            ratio.error,
            kld.value,
            kld.error,
            100.0 * rms.value,
            100.0 * rms.error,
            100.0 * top.value,
            100.0 * top.error
        )?;
        out.flush()?;
    }
    report(&mut out, &stats)?;
    let top = stats.same_top();
    writeln!(
        out,
        "kl-divergence: mean KLD {:.6}, same top {}/{} ({:.3} %), PPL(Q) {:.4}, PPL(base) {:.4} \
         ({} positions, {chunks} chunks of {n_ctx}, {:.1}s)",
        stats.kld().value,
        stats.n_same_top,
        stats.count,
        100.0 * top.value,
        stats.ppl().value,
        stats.ppl_base().value,
        stats.count,
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// llama-perplexity's final KL-divergence report.
fn report(out: &mut impl Write, s: &KldStats) -> std::io::Result<()> {
    let pm = |e: Estimate| format!("{:10.6} ± {:10.6}", e.value, e.error);
    writeln!(out)?;
    writeln!(out, "====== Perplexity statistics ======")?;
    writeln!(out, "Mean PPL(Q)                   : {}", pm(s.ppl()))?;
    writeln!(out, "Mean PPL(base)                : {}", pm(s.ppl_base()))?;
    match s.log_ppl_correlation() {
        Some(c) => writeln!(out, "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * c)?,
        None => writeln!(out, "Cor(ln(PPL(Q)), ln(PPL(base))):    n/a")?,
    }
    writeln!(out, "Mean ln(PPL(Q)/PPL(base))     : {}", pm(s.log_ppl_ratio()))?;
    writeln!(out, "Mean PPL(Q)/PPL(base)         : {}", pm(s.ppl_ratio()))?;
    writeln!(out, "Mean PPL(Q)-PPL(base)         : {}", pm(s.ppl_diff()))?;
    writeln!(out)?;

    writeln!(out, "====== KL divergence statistics ======")?;
    writeln!(out, "Mean    KLD: {}", pm(s.kld()))?;
    let kld = s.sorted_kld();
    let k = |f: f64| percentile(&kld, f);
    writeln!(out, "Maximum KLD: {:10.6}", k(1.0))?;
    for (label, f) in [("99.9%", 0.999), ("99.0%", 0.99), ("95.0%", 0.95), ("90.0%", 0.9)] {
        writeln!(out, "{label}   KLD: {:10.6}", k(f))?;
    }
    writeln!(out, "Median  KLD: {:10.6}", k(0.5))?;
    for (label, f) in [("10.0%", 0.1), (" 5.0%", 0.05), (" 1.0%", 0.01), (" 0.1%", 0.001)] {
        writeln!(out, "{label}   KLD: {:10.6}", k(f))?;
    }
    writeln!(out, "Minimum KLD: {:10.6}", k(0.0))?;
    writeln!(out)?;

    writeln!(out, "====== Token probability statistics ======")?;
    let d = s.p_diff();
    writeln!(out, "Mean    Δp: {:6.3} ± {:5.3} %", 100.0 * d.value, 100.0 * d.error)?;
    let dp = s.sorted_p_diff();
    let p = |f: f64| 100.0 * percentile(&dp, f);
    writeln!(out, "Maximum Δp: {:6.3}%", p(1.0))?;
    for (label, f) in [
        ("99.9%", 0.999),
        ("99.0%", 0.99),
        ("95.0%", 0.95),
        ("90.0%", 0.9),
        ("75.0%", 0.75),
    ] {
        writeln!(out, "{label}   Δp: {:6.3}%", p(f))?;
    }
    writeln!(out, "Median  Δp: {:6.3}%", p(0.5))?;
    for (label, f) in [
        ("25.0%", 0.25),
        ("10.0%", 0.1),
        (" 5.0%", 0.05),
        (" 1.0%", 0.01),
        (" 0.1%", 0.001),
    ] {
        writeln!(out, "{label}   Δp: {:6.3}%", p(f))?;
    }
    writeln!(out, "Minimum Δp: {:6.3}%", p(0.0))?;
    let rms = s.p_diff_rms();
    writeln!(
        out,
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * rms.value,
        100.0 * rms.error
    )?;
    let top = s.same_top();
    writeln!(
        out,
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * top.value,
        100.0 * top.error
    )?;
    writeln!(out)
}

/// llama-perplexity's "seconds per pass - ETA" line, after the first chunk.
fn print_eta(prefix: &str, start: Instant, chunks: usize) {
    let per_pass = start.elapsed().as_secs_f64();
    eprintln!(
        "{prefix}: {per_pass:.2} seconds per pass - ETA {}",
        eta(per_pass * chunks as f64)
    );
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// "1.50 MiB".
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.2} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// "1 hours 2.50 minutes" or "2.50 minutes", as llama-perplexity prints its ETA.
fn eta(seconds: f64) -> String {
    let hours = (seconds / 3600.0).floor();
    let minutes = (seconds - hours * 3600.0) / 60.0;
    if hours > 0.0 {
        format!("{hours:.0} hours {minutes:.2} minutes")
    } else {
        format!("{minutes:.2} minutes")
    }
}
