//! `tomoe-run perplexity`: llama-perplexity's method and output. On stdout: the running
//! perplexity after each chunk (`[1]12.3456,[2]11.9876,...`), then
//! `Final estimate: PPL = 12.3456 +/- 0.12345` (the error as llama.cpp computes it, see
//! [`PerplexityState::ppl_error`]), then a summary line
//! `perplexity: 12.3456 (N tokens scored, C chunks of n_ctx, T s)`. Progress goes to stderr.

use crate::{context, load, ModelArgs, Res};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tomoe::engine::perplexity::{n_chunks, score_chunk, PerplexityState};

#[derive(Args)]
pub struct PerplexityArgs {
    /// The GGUF model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text file to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    #[command(flatten)]
    model_args: ModelArgs,
}

pub fn run(a: PerplexityArgs) -> Res<()> {
    let model = load(&a.model)?;
    let text = std::fs::read(&a.file).map_err(|e| format!("cannot read {}: {e}", a.file.display()))?;
    let text = String::from_utf8(text).map_err(|e| format!("{} is not valid UTF-8: {e}", a.file.display()))?;
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
            a.file.display(),
            tokens.len()
        )
        .into());
    }
    let mut ctx = context(&model, &a.model_args)?;
    let bos = if tok.adds_bos() { tok.bos() } else { None };
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
        if i == 0 {
            let per_pass = start.elapsed().as_secs_f64();
            eprintln!(
                "perplexity: {per_pass:.2} seconds per pass - ETA {}",
                eta(per_pass * chunks as f64)
            );
        }
        // llama-perplexity's running output: the perplexity over the chunks scored so far.
        write!(out, "[{}]{:.4},", i + 1, state.ppl())?;
        out.flush()?;
    }
    writeln!(out)?;
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
