//! `tomoe-run perplexity`.

use crate::{context, load, ModelArgs, Res};
use clap::Args;
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
    eprintln!("{} tokens, {chunks} chunks of {n_ctx}", tokens.len());
    let (mut chunk, mut logits, mut state) = (Vec::new(), Vec::new(), PerplexityState::default());
    let start = Instant::now();
    for i in 0..chunks {
        score_chunk(&mut ctx, &tokens, i, bos, &mut chunk, &mut logits, &mut state)?;
        let done = i + 1;
        let eta = start.elapsed().as_secs_f64() / done as f64 * (chunks - done) as f64;
        let width = 30 * done / chunks;
        eprint!(
            "\r[{}{}] {done}/{chunks}  ppl {:.4}  ETA {:.0}s ",
            "#".repeat(width),
            " ".repeat(30 - width),
            state.ppl(),
            eta
        );
    }
    eprintln!();
    println!(
        "perplexity: {:.4} ({} tokens scored, {chunks} chunks of {n_ctx}, {:.1}s)",
        state.ppl(),
        state.count,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
