//! Perplexity by llama-perplexity's method: the text is cut into non-overlapping chunks of
//! `n_ctx` tokens, each evaluated from an empty context and starting with BOS when the model
//! adds one (it replaces the chunk's first token), and only the second half of each chunk is
//! scored, so every scored token has at least n_ctx/2 tokens of context.

use super::{Context, EngineError};

/// Running result.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerplexityState {
    pub nll_sum: f64,
    pub count: usize,
    pub chunks: usize,
}

impl PerplexityState {
    pub fn ppl(&self) -> f64 {
        (self.nll_sum / self.count.max(1) as f64).exp()
    }
}

/// Number of whole chunks of `n_ctx` tokens in `n_tokens`, at most `max_chunks`.
pub fn n_chunks(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> usize {
    let n = n_tokens / n_ctx.max(1);
    max_chunks.map_or(n, |m| n.min(m))
}

/// Scores chunk `i` of `tokens` (the whole text, tokenized) with `ctx`, whose n_ctx is the
/// chunk size. `bos`: the token that replaces each chunk's first one, if the model adds BOS.
pub fn score_chunk(
    ctx: &mut Context,
    tokens: &[u32],
    i: usize,
    bos: Option<u32>,
    chunk: &mut Vec<u32>,
    logits: &mut Vec<f32>,
    state: &mut PerplexityState,
) -> Result<(), EngineError> {
    let n_ctx = ctx.params().n_ctx;
    let nv = ctx.model().config().n_vocab;
    chunk.clear();
    chunk.extend_from_slice(&tokens[i * n_ctx..(i + 1) * n_ctx]);
    if let Some(b) = bos {
        chunk[0] = b;
    }
    ctx.clear();
    ctx.eval_all_logits(chunk, logits)?;
    for j in n_ctx / 2..n_ctx - 1 {
        state.nll_sum -= log_softmax_at(&logits[j * nv..(j + 1) * nv], chunk[j + 1] as usize);
        state.count += 1;
    }
    state.chunks += 1;
    Ok(())
}

/// log(softmax(row)[target]), in f64.
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}
