//! Perplexity as llama.cpp's `llama-perplexity` computes it (windows of `n_ctx` starting with BOS,
//! second half of each window scored), for the dense model, a converted one, or an oracle bound.

use super::converted::{reference_forward, ConvertedModel, Routing};
use super::data::{chunk_nll, perplexity_chunks};
use super::dense::DenseModel;
use super::forward::{forward, NoMasks};
use super::oracles::{OracleMasks, Selection};
use super::{ConvertError, Result};

/// What is scored.
#[derive(Copy, Clone)]
pub enum Subject<'a> {
    Dense,
    Converted(&'a ConvertedModel, Routing),
    /// The dense model, attention dense, each token's MLP neurons picked by an oracle
    /// ([`OracleMasks`]) within k per token.
    Oracle(usize, &'a Selection),
}

/// Perplexity and the token-averaged active fraction (1.0 for the dense model; the MLP budget's
/// fraction is not measured for [`Subject::Oracle`], which reports NaN).
pub fn perplexity(
    model: &DenseModel,
    subject: Subject,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    max_chunks: usize,
) -> Result<(f64, f64)> {
    let chunks = perplexity_chunks(tokens, n_ctx, bos, max_chunks);
    if chunks.is_empty() {
        return Err(ConvertError::Data(format!(
            "evaluation text has {} tokens, fewer than one window of {n_ctx}",
            tokens.len()
        )));
    }
    let mut oracle = match subject {
        Subject::Oracle(k, selection) => Some(OracleMasks::new(model, k, selection)?),
        _ => None,
    };
    let (mut nll, mut count, mut active) = (0.0, 0usize, 0.0);
    for (i, w) in chunks.iter().enumerate() {
        let (logits, frac) = match (subject, oracle.as_mut()) {
            (Subject::Converted(cm, routing), _) => {
                // A different random stream per chunk, still reproducible from the seed.
                let r = match routing {
                    Routing::Random(s) => Routing::Random(s.wrapping_add(i as u64)),
                    r => r,
                };
                let (l, s) = reference_forward(model, cm, w, r)?;
                (l, s.active_fraction)
            }
            (_, Some(src)) => (forward(model, w, src)?, f64::NAN),
            _ => (forward(model, w, &mut NoMasks)?, 1.0),
        };
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        let (n, c) = chunk_nll(&flat, model.config.vocab, w);
        nll += n;
        count += c;
        active += frac;
    }
    Ok(((nll / count as f64).exp(), active / chunks.len() as f64))
}
