//! Calibration data: plain-text or JSONL files → one token stream → training windows and a held-out
//! tail, plus llama-perplexity-style evaluation chunks.

use super::{io_err, ConvertError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Reads a calibration file. `.jsonl`: one JSON value per line, either a string or an object with a
/// `text` field; anything else: the whole file is one document.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl");
    if !is_jsonl {
        return Ok(vec![text]);
    }
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| ConvertError::Data(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let doc = match &v {
            serde_json::Value::String(s) => s.clone(),
            o => o
                .get("text")
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    ConvertError::Data(format!(
                        "{}:{}: expected a string or an object with `text`",
                        path.display(),
                        i + 1
                    ))
                })?,
        };
        docs.push(doc);
    }
    Ok(docs)
}

/// The calibration token stream split into a training part and a held-out tail (for calibrating the
/// mask cut-offs and measuring the active fraction on text the hypernetwork did not train on).
pub struct Calibration {
    pub train: Vec<u32>,
    pub held_out: Vec<u32>,
}

impl Calibration {
    /// Tokenizes every document (with BOS where the model adds one) and holds out the last
    /// `held_out_frac` of the stream (at least one window of `seq_len`).
    pub fn new(
        docs: &[String],
        tokenize: &dyn Fn(&str) -> Vec<u32>,
        seq_len: usize,
        held_out_frac: f64,
    ) -> Result<Calibration> {
        if seq_len < 2 {
            return Err(ConvertError::InvalidArg(format!(
                "--seq-len {seq_len} must be at least 2"
            )));
        }
        let mut stream = Vec::new();
        for d in docs {
            if !d.trim().is_empty() {
                stream.extend(tokenize(d));
            }
        }
        if stream.is_empty() {
            return Err(ConvertError::Data("the calibration text is empty".into()));
        }
        let held = ((stream.len() as f64 * held_out_frac) as usize).max(seq_len);
        if stream.len() < held + seq_len {
            return Err(ConvertError::Data(format!(
                "calibration text has {} tokens; need at least {} (two windows of --seq-len {seq_len})",
                stream.len(),
                2 * seq_len
            )));
        }
        let held_out = stream.split_off(stream.len() - held);
        Ok(Calibration {
            train: stream,
            held_out,
        })
    }

    /// The training window of a step: a position drawn from (seed, step) alone, so a resumed run sees
    /// the same data as an uninterrupted one.
    pub fn window(&self, seed: u64, step: u64, seq_len: usize) -> &[u32] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ step);
        let start = rng.gen_range(0..=self.train.len() - seq_len);
        &self.train[start..start + seq_len]
    }

    /// Up to `n` consecutive windows from the start of the training text (the baselines' and the
    /// mask initialisation's calibration activations).
    pub fn leading_windows(&self, seq_len: usize, n: usize) -> Vec<&[u32]> {
        self.train.chunks_exact(seq_len).take(n).collect()
    }

    /// Up to `n` consecutive held-out windows.
    pub fn held_out_windows(&self, seq_len: usize, n: usize) -> Vec<&[u32]> {
        self.held_out.chunks_exact(seq_len).take(n).collect()
    }
}

/// llama-perplexity chunks: `tokens` split into `n_ctx` windows whose first token is replaced by BOS
/// (when the model has one); scored positions are the second half of each window.
pub fn perplexity_chunks(
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    max_chunks: usize,
) -> Vec<Vec<u32>> {
    tokens
        .chunks_exact(n_ctx)
        .take(max_chunks)
        .map(|c| {
            let mut w = c.to_vec();
            if let Some(b) = bos {
                w[0] = b;
            }
            w
        })
        .collect()
}

/// Sum of negative log-likelihoods of `window[j+1]` under `logits[j]` for j in [n/2, n-1), and the count.
pub fn chunk_nll(logits: &[f32], vocab: usize, window: &[u32]) -> (f64, usize) {
    let n = window.len();
    let mut nll = 0.0;
    let mut count = 0;
    for j in n / 2..n - 1 {
        let row = &logits[j * vocab..(j + 1) * vocab];
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = row
            .iter()
            .map(|&v| ((v - max) as f64).exp())
            .sum::<f64>()
            .ln()
            + max as f64;
        nll += lse - row[window[j + 1] as usize] as f64;
        count += 1;
    }
    (nll, count)
}
