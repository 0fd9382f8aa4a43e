//! Perplexity by llama-perplexity's method: the text is cut into non-overlapping chunks of
//! `n_ctx` tokens, each evaluated from an empty context and starting with BOS when the model
//! adds one (it replaces the chunk's first token), and only the second half of each chunk is
//! scored, so every scored token has at least n_ctx/2 tokens of context. The KL divergence from
//! a base model over the same chunks is in [`super::kl_divergence`].

use super::kl_divergence::{mean_and_error, LogSoftmax};
use super::{Context, EngineError};

/// Running result.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerplexityState {
    /// Sum of the scored tokens' negative log-likelihoods (natural log).
    pub nll_sum: f64,
    /// Sum of their squares (for [`PerplexityState::ppl_error`]).
    pub nll2_sum: f64,
    /// Tokens scored.
    pub count: usize,
    pub chunks: usize,
}

impl PerplexityState {
    /// exp(mean nll).
    pub fn ppl(&self) -> f64 {
        (self.nll_sum / self.count.max(1) as f64).exp()
    }

    /// Adds one scored token's negative log-likelihood.
    pub fn add(&mut self, nll: f64) {
        self.nll_sum += nll;
        self.nll2_sum += nll * nll;
        self.count += 1;
    }

    /// The standard error of [`PerplexityState::ppl`], as llama-perplexity computes it (the
    /// "+/-" of its final estimate): ppl · sqrt((mean(nll²) − mean(nll)²) / (count − 1)).
    /// `None` with fewer than two tokens scored. Rounding can make the variance of (nearly)
    /// equal values slightly negative; it counts as 0.
    pub fn ppl_error(&self) -> Option<f64> {
        (self.count >= 2).then(|| self.ppl() * mean_and_error(self.nll_sum, self.nll2_sum, self.count).error)
    }
}

/// Number of whole chunks of `n_ctx` tokens in `n_tokens`, at most `max_chunks`.
pub fn n_chunks(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> usize {
    let n = n_tokens / n_ctx.max(1);
    max_chunks.map_or(n, |m| n.min(m))
}

/// Evaluates chunk `i` of `tokens` (the whole text, tokenized) with `ctx`, whose n_ctx is the
/// chunk size, from an empty context: `chunk` receives the tokens evaluated (`bos`, if the model
/// adds one, replaces the first), `logits` the logits after every one of them.
pub fn eval_chunk(
    ctx: &mut Context,
    tokens: &[u32],
    i: usize,
    bos: Option<u32>,
    chunk: &mut Vec<u32>,
    logits: &mut Vec<f32>,
) -> Result<(), EngineError> {
    let n_ctx = ctx.params().n_ctx;
    chunk.clear();
    chunk.extend_from_slice(&tokens[i * n_ctx..(i + 1) * n_ctx]);
    if let Some(b) = bos {
        chunk[0] = b;
    }
    ctx.clear();
    ctx.eval_all_logits(chunk, logits)
}

/// Scores chunk `i` of `tokens` (the whole text, tokenized) with `ctx`, whose n_ctx is the
/// chunk size. `bos`: the token that replaces each chunk's first one, if the model adds BOS.
/// Leaves the chunk evaluated in `chunk` and its logits in `logits` (see [`eval_chunk`]).
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
    eval_chunk(ctx, tokens, i, bos, chunk, logits)?;
    for j in n_ctx / 2..n_ctx - 1 {
        state.add(-log_softmax_at(&logits[j * nv..(j + 1) * nv], chunk[j + 1] as usize));
    }
    state.chunks += 1;
    Ok(())
}

/// `log(softmax(row)[target])`, in f64.
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    LogSoftmax::new(row).log_prob(row[target])
}

#[cfg(test)]
mod tests {
    use super::PerplexityState;

    #[test]
    fn ppl_error_is_llama_perplexity_formula() {
        let nll = [2.0, 3.0, 1.5, 2.5, 4.0];
        let mut s = PerplexityState::default();
        assert_eq!(s.ppl_error(), None);
        nll.iter().for_each(|&x| s.add(x));
        assert_eq!(s.count, 5);
        // mean 2.6, mean of squares 37.5 / 5 = 7.5, variance 7.5 - 6.76 = 0.74,
        // error = e^2.6 * sqrt(0.74 / 4).
        let ppl = 2.6f64.exp();
        assert!((s.ppl() - ppl).abs() < 1e-12 * ppl);
        let want = ppl * (0.74f64 / 4.0).sqrt();
        let got = s.ppl_error().unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
        // The same as the sample standard deviation of nll over sqrt(n), times ppl.
        let sd = (nll.iter().map(|x| (x - 2.6) * (x - 2.6)).sum::<f64>() / 4.0).sqrt();
        assert!((got - ppl * sd / 5f64.sqrt()).abs() < 1e-9 * want);
        // One token: no error; equal values: zero (up to rounding).
        let mut one = PerplexityState::default();
        one.add(1.0);
        assert_eq!(one.ppl_error(), None);
        let mut same = PerplexityState::default();
        (0..4).for_each(|_| same.add(0.1));
        assert!(same.ppl_error().unwrap() < 1e-6);
    }
}
