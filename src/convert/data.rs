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

/// The calibration token streams split into a training part and a held-out tail (for calibrating
/// the mask cut-offs and measuring the active fraction on text the hypernetwork did not train
/// on). Two kinds of text may be mixed: general documents and the model's own chats
/// ([`super::chats`]); `train` holds the general tokens, then the chats' from `chats_from`.
pub struct Calibration {
    pub train: Vec<u32>,
    pub held_out: Vec<u32>,
    /// Where the chats begin in `train` (`train.len()` without chats) and in `held_out`.
    chats_from: usize,
    held_chats_from: usize,
    /// Share of training windows drawn from the chats; `None`: windows are drawn uniformly over
    /// `train`, so each kind in proportion to its tokens.
    chat_share: Option<f64>,
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
        Calibration::mixture(&stream(docs, tokenize), &[], seq_len, held_out_frac, None)
    }

    /// General text and chats, already tokenized; each holds out its last `held_out_frac`
    /// (at least one window). `chat_share`: the share of training windows drawn from the
    /// chats (`None`: in proportion to their tokens).
    pub fn mixture(
        general: &[u32],
        chats: &[u32],
        seq_len: usize,
        held_out_frac: f64,
        chat_share: Option<f64>,
    ) -> Result<Calibration> {
        if seq_len < 2 {
            return Err(ConvertError::InvalidArg(format!(
                "--seq-len {seq_len} must be at least 2"
            )));
        }
        if let Some(s) = chat_share {
            if !(0.0..=1.0).contains(&s) {
                return Err(ConvertError::InvalidArg(format!("--chat-share {s} must be in [0, 1]")));
            }
        }
        if general.is_empty() && chats.is_empty() {
            return Err(ConvertError::Data("the calibration text is empty".into()));
        }
        let split = |s: &[u32], what: &str| -> Result<(Vec<u32>, Vec<u32>)> {
            if s.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            let held = ((s.len() as f64 * held_out_frac) as usize).max(seq_len);
            if s.len() < held + seq_len {
                return Err(ConvertError::Data(format!(
                    "{what} has {} tokens; need at least {} (two windows of --seq-len {seq_len})",
                    s.len(),
                    2 * seq_len
                )));
            }
            Ok((s[..s.len() - held].to_vec(), s[s.len() - held..].to_vec()))
        };
        let (mut train, mut held_out) = split(general, "calibration text")?;
        let (chat_train, chat_held) = split(chats, "the generated chats")?;
        let (chats_from, held_chats_from) = (train.len(), held_out.len());
        train.extend(chat_train);
        held_out.extend(chat_held);
        // A share only means something when both kinds are there.
        let both = chats_from > 0 && chats_from < train.len();
        Ok(Calibration { train, held_out, chats_from, held_chats_from, chat_share: chat_share.filter(|_| both) })
    }

    /// The training window of a step: a position drawn from (seed, step) alone, so a resumed run sees
    /// the same data as an uninterrupted one.
    pub fn window(&self, seed: u64, step: u64, seq_len: usize) -> &[u32] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ step);
        let (lo, hi) = match self.chat_share {
            Some(s) if rng.gen_bool(s) => (self.chats_from, self.train.len()),
            Some(_) => (0, self.chats_from),
            None => (0, self.train.len()),
        };
        let start = rng.gen_range(lo..=hi - seq_len);
        &self.train[start..start + seq_len]
    }

    /// `n` consecutive windows from the start of the training text (the baselines' and the mask
    /// initialisation's calibration activations); with chats, from the start of each kind, the
    /// chats' number in proportion to their share of training windows.
    pub fn leading_windows(&self, seq_len: usize, n: usize) -> Vec<&[u32]> {
        self.windows_of_both(&self.train, self.chats_from, seq_len, n)
    }

    /// Up to `n` consecutive held-out windows (from each kind, as [`Self::leading_windows`]).
    pub fn held_out_windows(&self, seq_len: usize, n: usize) -> Vec<&[u32]> {
        self.windows_of_both(&self.held_out, self.held_chats_from, seq_len, n)
    }

    fn windows_of_both<'a>(&self, s: &'a [u32], chats_from: usize, seq_len: usize, n: usize) -> Vec<&'a [u32]> {
        let (general, chats) = s.split_at(chats_from);
        if general.is_empty() || chats.is_empty() {
            return s.chunks_exact(seq_len).take(n).collect();
        }
        let share = self.chat_share.unwrap_or(chats.len() as f64 / s.len() as f64);
        let n_chats = ((n as f64 * share).round() as usize).min(n);
        let mut w: Vec<&[u32]> = general.chunks_exact(seq_len).take(n - n_chats).collect();
        w.extend(chats.chunks_exact(seq_len).take(n_chats));
        w
    }
}

/// The documents' tokens, one after another (blank documents skipped).
pub fn stream(docs: &[String], tokenize: &dyn Fn(&str) -> Vec<u32>) -> Vec<u32> {
    let mut s = Vec::new();
    for d in docs {
        if !d.trim().is_empty() {
            s.extend(tokenize(d));
        }
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kind_of_text_holds_out_its_tail() {
        let general: Vec<u32> = (0..100).collect();
        let c = Calibration::mixture(&general, &[], 8, 0.1, Some(0.5)).unwrap();
        assert_eq!(c.train, (0..90).collect::<Vec<_>>());
        assert_eq!(c.held_out, (90..100).collect::<Vec<_>>());
        assert_eq!(c.leading_windows(8, 2), [&c.train[..8], &c.train[8..16]]);
        // Only chats: the same, from the chats.
        let c = Calibration::mixture(&[], &general, 8, 0.1, None).unwrap();
        assert_eq!(c.train.len(), 90);
        assert!(c.window(1, 3, 8).iter().all(|&t| t < 90));
    }

    #[test]
    fn the_chat_share_decides_where_windows_come_from() {
        let general: Vec<u32> = (0..1000).collect();
        let chats: Vec<u32> = (10_000..10_100).collect();
        for share in [0.0, 0.25, 1.0] {
            let c = Calibration::mixture(&general, &chats, 16, 0.1, Some(share)).unwrap();
            let from_chats = (0..4000).filter(|&s| c.window(7, s, 16)[0] >= 10_000).count();
            let got = from_chats as f64 / 4000.0;
            assert!((got - share).abs() < 0.03, "share {share}: {got}");
            // No window straddles the two kinds.
            assert!((0..500).all(|s| {
                let w = c.window(7, s, 16);
                w.iter().all(|&t| t >= 10_000) || w.iter().all(|&t| t < 10_000)
            }));
        }
        // Without a share: in proportion to tokens (90 of 990 training tokens are chats; the
        // windows that straddle are few).
        let c = Calibration::mixture(&general, &chats, 16, 0.1, None).unwrap();
        let from_chats = (0..4000).filter(|&s| c.window(7, s, 16)[15] >= 10_000).count() as f64 / 4000.0;
        assert!((from_chats - 90.0 / 990.0).abs() < 0.03, "{from_chats}");
    }

    #[test]
    fn leading_and_held_out_windows_come_from_both_kinds_by_share() {
        let general: Vec<u32> = (0..1000).collect();
        let chats: Vec<u32> = (10_000..10_500).collect();
        let c = Calibration::mixture(&general, &chats, 16, 0.2, Some(0.25)).unwrap();
        let w = c.leading_windows(16, 8);
        assert_eq!(w.len(), 8);
        assert_eq!(w.iter().filter(|w| w[0] >= 10_000).count(), 2);
        assert_eq!(w[0][0], 0);
        assert_eq!(w[6][0], 10_000);
        let h = c.held_out_windows(16, 4);
        assert_eq!(h[0][0], 800);
        assert_eq!(h[3][0], 10_400);
    }

    #[test]
    fn too_little_text_of_either_kind_is_an_error_naming_it() {
        let general: Vec<u32> = (0..1000).collect();
        let e = Calibration::mixture(&general, &[1, 2, 3], 16, 0.1, None).err().unwrap().to_string();
        assert!(e.contains("generated chats"), "{e}");
        assert!(Calibration::mixture(&general, &[], 16, 0.1, Some(1.5)).is_err());
        assert!(Calibration::mixture(&[], &[], 16, 0.1, None).is_err());
    }
}
