//! KL divergence of a model's next-token distributions from a base model's, as llama-perplexity's
//! `--kl-divergence` computes it: the base model's log-probabilities over the text's scored
//! positions are saved once (compactly, in a "base file"), and any other model with the same
//! vocabulary is then evaluated on the same chunks and compared position by position.
//!
//! For each scored position (the second half of each chunk, as in [`super::perplexity`]):
//! - KLD = Σᵢ p_base(i) · (ln p_base(i) − ln q(i)), KL(base ‖ Q), in nats;
//! - "same top": whether both models' most probable tokens (argmax, first index on ties) agree;
//! - the negative log-likelihood of the actual next token under both models (PPL(Q) and
//!   PPL(base)), and Δp = q(next) − p_base(next).
//!
//! [`KldStats`] accumulates them (f64) and gives llama-perplexity's means and standard errors.
//!
//! # Encoding of the base log-probabilities
//!
//! Full f32 log-probabilities cost 4 bytes per vocabulary entry and position (192 KiB per
//! position for a 49152-token vocabulary). Like llama.cpp, each entry is stored as a u16 code on
//! a fixed log-probability grid below the position's most probable token:
//!
//! ```text
//! ln p(i) = top_log_prob − (65535 − code(i)) · STEP,   STEP = LOG_PROB_RANGE / 65535 = 16 / 65535
//! ```
//!
//! so the top token has code 65535, and entries more than [`LOG_PROB_RANGE`] (16 nats) below it
//! — probabilities below e⁻¹⁶ ≈ 1.1e-7 of the top one's — have code 0, "below the range", and
//! are left out of the KL sum (llama.cpp leaves out those below e⁻¹⁶ too). Every other entry
//! decodes within [`MAX_DECODE_ERROR`] (half a step, 1.22e-4 nats, plus the f32 rounding of
//! `top_log_prob`) of its exact value. The actual next token's exact negative log-likelihood and
//! the exact argmax are stored beside the codes, so PPL(base) and "same top" carry no
//! quantization error at all.
//!
//! # Base file layout (version 1; all integers and floats little-endian)
//!
//! ```text
//! offset  size                         field
//! 0       8                            magic "TOMOEKLD"
//! 8       4    u32                     version = 1
//! 12      4    u32                     n_ctx: chunk length in tokens (at least 4)
//! 16      4    u32                     n_vocab
//! 20      4    u32                     n_chunks (at least 1)
//! 24      4·n_chunks·n_ctx  u32[]      the tokens of the scored chunks, as tokenized (before any
//!                                      BOS replaces a chunk's first token), chunk after chunk
//! then, for each chunk c and each scored position j = n_ctx/2 .. n_ctx−2 (n_ctx − 1 − n_ctx/2
//! positions per chunk), one record of 16 + 2·n_vocab bytes: the distribution after token j,
//! predicting token j + 1:
//!   +0    8    f64                     nll: −ln p of the actual next token (exact)
//!   +8    4    f32                     top_log_prob: ln p of the most probable token (−logsumexp)
//!   +12   4    u32                     argmax: the most probable token (first on ties)
//!   +16   2·n_vocab  u16[]             code(i) for each token i, as above (code(argmax) = 65535)
//! ```
//!
//! The file's size is exactly 24 + 4·n_chunks·n_ctx + n_chunks·(n_ctx − 1 − n_ctx/2)·(16 + 2·n_vocab)
//! bytes; [`BaseReader::open`] checks the magic, the version and that size before it allocates
//! anything, and each record's consistency (finite values, argmax in the vocabulary and coded
//! 65535) as it is read. [`BaseWriter`] writes to a temporary file beside the target and renames
//! it over the target when complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The first 8 bytes of a base file.
pub const MAGIC: [u8; 8] = *b"TOMOEKLD";
/// The base file version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes before the tokens.
pub const HEADER_BYTES: usize = 24;
/// Log-probabilities more than this many nats below the position's top one are not stored.
pub const LOG_PROB_RANGE: f64 = 16.0;
/// The code of the most probable token; codes count steps of [`LOG_PROB_STEP`] up from the floor.
pub const TOP_CODE: u16 = u16::MAX;
/// Log-probability difference between adjacent codes.
pub const LOG_PROB_STEP: f64 = LOG_PROB_RANGE / TOP_CODE as f64;
/// Bound on |decoded − exact| for an entry stored with a code above 0: half a step, plus the f32
/// rounding of the top log-probability (|top_log_prob| ≤ ln n_vocab < 24 for any u32 vocabulary).
pub const MAX_DECODE_ERROR: f64 = LOG_PROB_STEP / 2.0 + 1e-6;
/// Bytes of a record before the codes.
const RECORD_HEAD: usize = 16;

// ---------------------------------------------------------------------------------------------
// Log-softmax and KL on full rows.

/// The log-softmax of a row of logits, without materializing it: ln p(i) = logit(i) − max − lse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogSoftmax {
    /// The most probable index (the first on ties).
    pub argmax: usize,
    /// The largest logit.
    pub max: f64,
    /// ln Σᵢ exp(logit(i) − max), in f64 (0 ≤ lse ≤ ln n).
    pub lse: f64,
}

impl LogSoftmax {
    /// Panics on an empty row.
    pub fn new(row: &[f32]) -> LogSoftmax {
        assert!(!row.is_empty(), "log-softmax of an empty row");
        let (mut argmax, mut max) = (0, row[0]);
        for (i, &x) in row.iter().enumerate().skip(1) {
            if x > max {
                (argmax, max) = (i, x);
            }
        }
        let max = max as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        LogSoftmax {
            argmax,
            max,
            lse: sum.ln(),
        }
    }

    /// ln p(i) for logit `x` = row\[i\].
    pub fn log_prob(&self, x: f32) -> f64 {
        x as f64 - self.max - self.lse
    }
}

/// ln softmax(row), in f64, into `out`.
pub fn log_softmax(row: &[f32], out: &mut Vec<f64>) {
    let ls = LogSoftmax::new(row);
    out.clear();
    out.extend(row.iter().map(|&x| ls.log_prob(x)));
}

/// KL(P ‖ Q) = Σᵢ p(i) (ln p(i) − ln q(i)) of the distributions softmax(p_logits) and
/// softmax(q_logits), exactly (f64, every entry). Panics when the rows' lengths differ.
pub fn kl_divergence_logits(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    assert_eq!(p_logits.len(), q_logits.len(), "KL of rows of different lengths");
    let (p, q) = (LogSoftmax::new(p_logits), LogSoftmax::new(q_logits));
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&a, &b)| {
            let lp = p.log_prob(a);
            lp.exp() * (lp - q.log_prob(b))
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// One position's encoded base distribution.

/// Bytes of one position's record for a vocabulary of `n_vocab`.
pub fn record_bytes(n_vocab: usize) -> usize {
    RECORD_HEAD + 2 * n_vocab
}

/// Encodes the distribution softmax(`logits`) with next token `target` into `out`
/// ([`record_bytes`] long; layout in the module doc). Returns the target's exact nll (f64).
/// Panics when `out`'s length does not fit or `target` is outside the row.
pub fn encode_record(logits: &[f32], target: usize, out: &mut [u8]) -> f64 {
    assert_eq!(out.len(), record_bytes(logits.len()), "record buffer of the wrong size");
    let ls = LogSoftmax::new(logits);
    let nll = -ls.log_prob(logits[target]);
    out[0..8].copy_from_slice(&nll.to_le_bytes());
    out[8..12].copy_from_slice(&(-ls.lse as f32).to_le_bytes());
    out[12..16].copy_from_slice(&(ls.argmax as u32).to_le_bytes());
    for (&x, c) in logits.iter().zip(out[RECORD_HEAD..].chunks_exact_mut(2)) {
        // Steps above the floor; NaN and everything within half a step of the floor give 0.
        let steps = (x as f64 - ls.max + LOG_PROB_RANGE) / LOG_PROB_STEP;
        let code = if steps >= 0.5 {
            steps.round().min(TOP_CODE as f64) as u16
        } else {
            0
        };
        c.copy_from_slice(&code.to_le_bytes());
    }
    nll
}

/// A decoded view of one record.
#[derive(Clone, Copy, Debug)]
pub struct BaseRow<'a> {
    /// ln p of the most probable token.
    pub top_log_prob: f64,
    /// −ln p of the actual next token.
    pub nll: f64,
    /// The most probable token.
    pub argmax: usize,
    codes: &'a [u8],
}

impl<'a> BaseRow<'a> {
    /// Reads and checks a record of a vocabulary of `n_vocab`; `Err` says what is wrong.
    pub fn parse(rec: &'a [u8], n_vocab: usize) -> Result<BaseRow<'a>, String> {
        if rec.len() != record_bytes(n_vocab) || n_vocab == 0 {
            return Err(format!("{} bytes for a vocabulary of {n_vocab}", rec.len()));
        }
        let nll = f64::from_le_bytes(rec[0..8].try_into().unwrap());
        let top = f32::from_le_bytes(rec[8..12].try_into().unwrap()) as f64;
        let argmax = u32::from_le_bytes(rec[12..16].try_into().unwrap()) as usize;
        // top = −lse with 0 ≤ lse ≤ ln n_vocab (f32-rounded).
        let lse_max = (n_vocab as f64).ln() + 1e-4;
        if !(top.is_finite() && top <= 1e-6 && top >= -lse_max) {
            return Err(format!("top log-probability {top} outside [-ln {n_vocab}, 0]"));
        }
        if !(nll.is_finite() && nll >= -1e-6) {
            return Err(format!("next-token nll {nll} is not a finite non-negative number"));
        }
        if argmax >= n_vocab {
            return Err(format!("argmax {argmax} outside the vocabulary of {n_vocab}"));
        }
        let row = BaseRow {
            top_log_prob: top,
            nll,
            argmax,
            codes: &rec[RECORD_HEAD..],
        };
        if row.code(argmax) != TOP_CODE {
            return Err(format!(
                "the argmax {argmax} has code {}, not {TOP_CODE}",
                row.code(argmax)
            ));
        }
        Ok(row)
    }

    pub fn n_vocab(&self) -> usize {
        self.codes.len() / 2
    }

    /// The stored code of token `i`.
    pub fn code(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.codes[2 * i], self.codes[2 * i + 1]])
    }

    /// The decoded ln p of token `i`; `None` when it is below the stored range (code 0).
    pub fn log_prob(&self, i: usize) -> Option<f64> {
        match self.code(i) {
            0 => None,
            c => Some(self.top_log_prob - (TOP_CODE - c) as f64 * LOG_PROB_STEP),
        }
    }
}

/// One position compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    /// KL(base ‖ Q) over the stored entries.
    pub kld: f64,
    /// −ln q(next).
    pub nll: f64,
    /// −ln p_base(next).
    pub nll_base: f64,
    /// Whether both argmaxes agree.
    pub same_top: bool,
    /// q(next) − p_base(next).
    pub p_diff: f64,
}

/// Compares Q's `logits` at one position (next token `target`) with the base's `row`. Panics
/// when the lengths differ or `target` is outside the row.
pub fn compare(row: &BaseRow, logits: &[f32], target: usize) -> Position {
    assert_eq!(row.n_vocab(), logits.len(), "base and model vocabularies differ");
    let q = LogSoftmax::new(logits);
    let mut kld = 0.0;
    for (i, &x) in logits.iter().enumerate() {
        if let Some(lp) = row.log_prob(i) {
            kld += lp.exp() * (lp - q.log_prob(x));
        }
    }
    let nll = -q.log_prob(logits[target]);
    Position {
        kld,
        nll,
        nll_base: row.nll,
        same_top: q.argmax == row.argmax,
        p_diff: (-nll).exp() - (-row.nll).exp(),
    }
}

// ---------------------------------------------------------------------------------------------
// Running statistics.

/// A mean (or derived value) and its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub error: f64,
}

/// llama-perplexity's `mean_and_uncertainty`: the mean of the values summed in `sum` and the
/// standard error sqrt((mean(x²) − mean(x)²) / (n − 1)) (0 with fewer than two values or a
/// variance that rounding made negative).
pub fn mean_and_error(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate { value: 0.0, error: 0.0 };
    }
    let n = count as f64;
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let error = if var > 0.0 && count >= 2 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Estimate { value: mean, error }
}

/// The value at `fraction` (0..=1) of `sorted` (ascending), interpolated linearly between the
/// neighbouring ranks as llama-perplexity does (0.5 gives the median). NaN when empty.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let Some((&first, &last)) = sorted.first().zip(sorted.last()) else {
        return f64::NAN;
    };
    if fraction <= 0.0 {
        return first;
    }
    if fraction >= 1.0 {
        return last;
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let t = p - i as f64;
    (1.0 - t) * sorted[i] + t * sorted[(i + 1).min(sorted.len() - 1)]
}

/// Running KL-divergence statistics over compared positions (f64 sums, and every position's KLD
/// and Δp for the percentiles).
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    /// Positions compared.
    pub count: usize,
    /// Positions where both argmaxes agree.
    pub n_same_top: usize,
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub sum_nll_base: f64,
    pub sum_nll_base2: f64,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    /// Every position's KLD, in order.
    pub kld_values: Vec<f64>,
    /// Every position's Δp, in order.
    pub p_diff_values: Vec<f64>,
}

impl KldStats {
    pub fn add(&mut self, p: &Position) {
        self.count += 1;
        self.n_same_top += p.same_top as usize;
        self.sum_nll += p.nll;
        self.sum_nll2 += p.nll * p.nll;
        self.sum_nll_base += p.nll_base;
        self.sum_nll_base2 += p.nll_base * p.nll_base;
        self.sum_nll_nll_base += p.nll * p.nll_base;
        self.sum_kld += p.kld;
        self.sum_kld2 += p.kld * p.kld;
        self.sum_p_diff += p.p_diff;
        let d2 = p.p_diff * p.p_diff;
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.kld_values.push(p.kld);
        self.p_diff_values.push(p.p_diff);
    }

    /// Mean KLD ± its standard error.
    pub fn kld(&self) -> Estimate {
        mean_and_error(self.sum_kld, self.sum_kld2, self.count)
    }

    /// Fraction of positions whose argmaxes agree ± its binomial standard error
    /// sqrt(p(1 − p)/(n − 1)).
    pub fn same_top(&self) -> Estimate {
        if self.count == 0 {
            return Estimate { value: 0.0, error: 0.0 };
        }
        let p = self.n_same_top as f64 / self.count as f64;
        let error = if self.count >= 2 {
            (p * (1.0 - p) / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        };
        Estimate { value: p, error }
    }

    /// Mean nll under Q (ln PPL(Q)) ± its standard error.
    pub fn log_ppl(&self) -> Estimate {
        mean_and_error(self.sum_nll, self.sum_nll2, self.count)
    }

    /// Mean nll under the base (ln PPL(base)) ± its standard error.
    pub fn log_ppl_base(&self) -> Estimate {
        mean_and_error(self.sum_nll_base, self.sum_nll_base2, self.count)
    }

    /// PPL(Q) ± its standard error (ppl · error of ln ppl).
    pub fn ppl(&self) -> Estimate {
        exp_estimate(self.log_ppl())
    }

    /// PPL(base) ± its standard error.
    pub fn ppl_base(&self) -> Estimate {
        exp_estimate(self.log_ppl_base())
    }

    /// The covariance of the two mean nlls (llama-perplexity's: the nlls' covariance over n − 1;
    /// 0 with fewer than two positions).
    pub fn log_ppl_cov(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        (self.sum_nll_nll_base / n - (self.sum_nll / n) * (self.sum_nll_base / n)) / (n - 1.0)
    }

    /// Correlation of ln PPL(Q) and ln PPL(base); `None` when either has no spread.
    pub fn log_ppl_correlation(&self) -> Option<f64> {
        let d = self.log_ppl().error * self.log_ppl_base().error;
        (d > 0.0).then(|| self.log_ppl_cov() / d)
    }

    /// ln(PPL(Q)/PPL(base)) ± its standard error (the two are correlated).
    pub fn log_ppl_ratio(&self) -> Estimate {
        let (q, b) = (self.log_ppl(), self.log_ppl_base());
        let var = q.error * q.error + b.error * b.error - 2.0 * self.log_ppl_cov();
        Estimate {
            value: q.value - b.value,
            error: var.max(0.0).sqrt(),
        }
    }

    /// PPL(Q)/PPL(base) ± its standard error.
    pub fn ppl_ratio(&self) -> Estimate {
        exp_estimate(self.log_ppl_ratio())
    }

    /// PPL(Q) − PPL(base) ± its standard error.
    pub fn ppl_diff(&self) -> Estimate {
        let (q, b) = (self.ppl(), self.ppl_base());
        let cov = q.value * b.value * self.log_ppl_cov();
        let var = q.error * q.error + b.error * b.error - 2.0 * cov;
        Estimate {
            value: q.value - b.value,
            error: var.max(0.0).sqrt(),
        }
    }

    /// Mean Δp ± its standard error.
    pub fn p_diff(&self) -> Estimate {
        mean_and_error(self.sum_p_diff, self.sum_p_diff2, self.count)
    }

    /// RMS Δp ± its standard error.
    pub fn p_diff_rms(&self) -> Estimate {
        let mse = mean_and_error(self.sum_p_diff2, self.sum_p_diff4, self.count);
        let rms = mse.value.sqrt();
        let error = if rms > 0.0 { 0.5 / rms * mse.error } else { 0.0 };
        Estimate { value: rms, error }
    }

    /// The KLD values, ascending (for [`percentile`]).
    pub fn sorted_kld(&self) -> Vec<f64> {
        sorted(&self.kld_values)
    }

    /// The Δp values, ascending.
    pub fn sorted_p_diff(&self) -> Vec<f64> {
        sorted(&self.p_diff_values)
    }
}

fn exp_estimate(log: Estimate) -> Estimate {
    let value = log.value.exp();
    Estimate {
        value,
        error: value * log.error,
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

// ---------------------------------------------------------------------------------------------
// The base file.

/// Why a base file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KldError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is not a KL-divergence base file (wrong magic; write one with \
         `tomoe-run perplexity -m BASE.gguf -f TEXT --kl-divergence-base FILE`)",
        .0.display()
    )]
    NotABaseFile(PathBuf),
    #[error("{}: base file version {version}, this build reads version {VERSION}", path.display())]
    Version { path: PathBuf, version: u32 },
    #[error("{}: bad base file header: {msg}", path.display())]
    BadHeader { path: PathBuf, msg: String },
    #[error(
        "{}: {actual} bytes, but its header (n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunks} chunks) \
         describes {expected}: the file is {}",
        path.display(),
        if actual < expected { "truncated" } else { "longer than its content (corrupt)" }
    )]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
        n_ctx: usize,
        n_vocab: usize,
        n_chunks: usize,
    },
    #[error("{}: chunk {}, position {position}: corrupt record: {msg}", path.display(), chunk + 1)]
    /// `chunk` counts from 0 (the message from 1, as the report's rows).
    Corrupt {
        path: PathBuf,
        chunk: usize,
        position: usize,
        msg: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A base file's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHeader {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunks: usize,
}

impl BaseHeader {
    /// The first scored position of a chunk.
    pub fn first(&self) -> usize {
        self.n_ctx / 2
    }
    /// Scored positions per chunk: n_ctx/2 .. n_ctx − 1.
    pub fn positions(&self) -> usize {
        self.n_ctx - 1 - self.first()
    }
    /// Bytes of one chunk's records.
    pub fn chunk_bytes(&self) -> u64 {
        self.positions() as u64 * record_bytes(self.n_vocab) as u64
    }
    /// The file's size; `None` if it overflows u64.
    pub fn file_bytes(&self) -> Option<u64> {
        let tokens = (self.n_chunks as u64).checked_mul(self.n_ctx as u64)?.checked_mul(4)?;
        let records = (self.positions() as u64)
            .checked_mul(record_bytes(self.n_vocab) as u64)?
            .checked_mul(self.n_chunks as u64)?;
        (HEADER_BYTES as u64).checked_add(tokens)?.checked_add(records)
    }

    fn check(&self) -> Result<(), String> {
        if self.n_ctx < 4 {
            return Err(format!("n_ctx {} is below 4", self.n_ctx));
        }
        if self.n_vocab == 0 || self.n_vocab > u32::MAX as usize {
            return Err(format!("n_vocab {} is not in 1..2^32", self.n_vocab));
        }
        if self.n_chunks == 0 {
            return Err("no chunks".into());
        }
        if self.n_ctx > u32::MAX as usize || self.n_chunks > u32::MAX as usize {
            return Err("n_ctx or n_chunks does not fit 32 bits".into());
        }
        if self.file_bytes().is_none() {
            return Err("the sizes overflow".into());
        }
        Ok(())
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> KldError + '_ {
    move |source| KldError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a base file: [`BaseWriter::create`] with the tokens, one [`BaseWriter::write_chunk`]
/// per chunk, [`BaseWriter::finish`]. Until `finish`, the data goes to a hidden temporary file
/// beside the target (removed if the writer is dropped unfinished); `finish` renames it over the
/// target.
pub struct BaseWriter {
    header: BaseHeader,
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    chunks_written: usize,
    record: Vec<u8>,
}

impl BaseWriter {
    /// Starts the file for `tokens` (n_chunks · n_ctx of them, the chunks' tokens as tokenized).
    pub fn create(path: &Path, n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<BaseWriter, KldError> {
        if n_ctx == 0 || !tokens.len().is_multiple_of(n_ctx) {
            return Err(KldError::Invalid(format!(
                "{} tokens are not whole chunks of {n_ctx}",
                tokens.len()
            )));
        }
        let header = BaseHeader {
            n_ctx,
            n_vocab,
            n_chunks: tokens.len() / n_ctx,
        };
        header.check().map_err(KldError::Invalid)?;
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(KldError::Invalid(format!(
                "token {t} is outside the vocabulary of {n_vocab}"
            )));
        }
        let name = path
            .file_name()
            .map_or_else(|| "kld".into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let mut w = BaseWriter {
            header,
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            chunks_written: 0,
            record: vec![0; record_bytes(n_vocab)],
        };
        let mut head = Vec::with_capacity(HEADER_BYTES + 4 * tokens.len());
        head.extend_from_slice(&MAGIC);
        for v in [VERSION, n_ctx as u32, n_vocab as u32, header.n_chunks as u32] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        tokens.iter().for_each(|t| head.extend_from_slice(&t.to_le_bytes()));
        w.write(&head)?;
        Ok(w)
    }

    pub fn header(&self) -> BaseHeader {
        self.header
    }

    /// The size the finished file will have.
    pub fn file_bytes(&self) -> u64 {
        self.header.file_bytes().unwrap_or(u64::MAX)
    }

    /// Appends the next chunk's records: `logits` are the base model's logits after every token
    /// of `chunk` (n_ctx · n_vocab), `chunk` the tokens it evaluated (BOS included).
    pub fn write_chunk(&mut self, logits: &[f32], chunk: &[u32]) -> Result<(), KldError> {
        let BaseHeader {
            n_ctx,
            n_vocab,
            n_chunks,
        } = self.header;
        if self.chunks_written == n_chunks {
            return Err(KldError::Invalid(format!(
                "the file holds {n_chunks} chunks; it is complete"
            )));
        }
        if chunk.len() != n_ctx || logits.len() != n_ctx * n_vocab {
            return Err(KldError::Invalid(format!(
                "a chunk of {} tokens and {} logits, for n_ctx {n_ctx} and n_vocab {n_vocab}",
                chunk.len(),
                logits.len()
            )));
        }
        let mut record = std::mem::take(&mut self.record);
        let mut result = Ok(());
        for j in self.header.first()..n_ctx - 1 {
            encode_record(
                &logits[j * n_vocab..(j + 1) * n_vocab],
                chunk[j + 1] as usize,
                &mut record,
            );
            result = self.write(&record);
            if result.is_err() {
                break;
            }
        }
        self.record = record;
        self.chunks_written += 1;
        result
    }

    /// Completes the file: flushes and syncs it and renames it over the target. Returns its size.
    pub fn finish(mut self) -> Result<u64, KldError> {
        let n_chunks = self.header.n_chunks;
        if self.chunks_written != n_chunks {
            return Err(KldError::Invalid(format!(
                "{} of {n_chunks} chunks written",
                self.chunks_written
            )));
        }
        let out = self.out.take().expect("an unfinished writer has its file");
        let file = out.into_inner().map_err(|e| io_err(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        // Makes the rename durable, where the platform can open a directory.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(self.file_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), KldError> {
        let out = self.out.as_mut().expect("an unfinished writer has its file");
        out.write_all(bytes).map_err(io_err(&self.tmp))
    }
}

impl Drop for BaseWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a base file: the header and tokens at [`BaseReader::open`], then one chunk of records
/// at a time.
pub struct BaseReader {
    path: PathBuf,
    header: BaseHeader,
    tokens: Vec<u32>,
    input: BufReader<File>,
    chunk: Vec<u8>,
    next_chunk: usize,
}

impl BaseReader {
    /// Opens `path` and checks its magic, version, dimensions, size and tokens.
    pub fn open(path: &Path) -> Result<BaseReader, KldError> {
        let file = File::open(path).map_err(io_err(path))?;
        let actual = file.metadata().map_err(io_err(path))?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; HEADER_BYTES];
        let got = read_up_to(&mut input, &mut head).map_err(io_err(path))?;
        if got < MAGIC.len() || head[..8] != MAGIC {
            return Err(KldError::NotABaseFile(path.to_path_buf()));
        }
        let u = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
        if got < HEADER_BYTES {
            return Err(KldError::BadHeader {
                path: path.to_path_buf(),
                msg: format!("{actual} bytes: truncated inside the {HEADER_BYTES}-byte header"),
            });
        }
        if u(8) != VERSION {
            return Err(KldError::Version {
                path: path.to_path_buf(),
                version: u(8),
            });
        }
        let header = BaseHeader {
            n_ctx: u(12) as usize,
            n_vocab: u(16) as usize,
            n_chunks: u(20) as usize,
        };
        header.check().map_err(|msg| KldError::BadHeader {
            path: path.to_path_buf(),
            msg,
        })?;
        let expected = header.file_bytes().expect("checked");
        if expected != actual {
            let BaseHeader {
                n_ctx,
                n_vocab,
                n_chunks,
            } = header;
            return Err(KldError::Size {
                path: path.to_path_buf(),
                expected,
                actual,
                n_ctx,
                n_vocab,
                n_chunks,
            });
        }
        // Both fit in memory: they are parts of a file of this size.
        let mut raw = vec![0u8; header.n_chunks * header.n_ctx * 4];
        input.read_exact(&mut raw).map_err(io_err(path))?;
        let tokens: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= header.n_vocab) {
            return Err(KldError::BadHeader {
                path: path.to_path_buf(),
                msg: format!("token {i} is {t}, outside the vocabulary of {}", header.n_vocab),
            });
        }
        Ok(BaseReader {
            path: path.to_path_buf(),
            header,
            tokens,
            input,
            chunk: Vec::new(),
            next_chunk: 0,
        })
    }

    pub fn header(&self) -> BaseHeader {
        self.header
    }

    /// The scored chunks' tokens (n_chunks · n_ctx), as tokenized.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Reads the next chunk's records.
    pub fn read_chunk(&mut self) -> Result<BaseChunk<'_>, KldError> {
        let index = self.next_chunk;
        if index == self.header.n_chunks {
            return Err(KldError::Invalid(format!(
                "{}: all {index} chunks have been read",
                self.path.display()
            )));
        }
        self.chunk.resize(self.header.chunk_bytes() as usize, 0);
        self.input.read_exact(&mut self.chunk).map_err(io_err(&self.path))?;
        self.next_chunk += 1;
        Ok(BaseChunk {
            path: &self.path,
            header: self.header,
            index,
            bytes: &self.chunk,
        })
    }
}

/// Fills as much of `buf` as the input has; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One chunk's records.
pub struct BaseChunk<'a> {
    path: &'a Path,
    header: BaseHeader,
    /// The chunk's index in the file.
    pub index: usize,
    bytes: &'a [u8],
}

impl<'a> BaseChunk<'a> {
    /// The record of scored position `k` (0 ≤ k < positions: the distribution after token
    /// first + k).
    pub fn row(&self, k: usize) -> Result<BaseRow<'a>, KldError> {
        let rb = record_bytes(self.header.n_vocab);
        BaseRow::parse(&self.bytes[k * rb..(k + 1) * rb], self.header.n_vocab).map_err(|msg| KldError::Corrupt {
            path: self.path.to_path_buf(),
            chunk: self.index,
            position: self.header.first() + k,
            msg,
        })
    }

    /// Compares Q's `logits` after every token of `chunk` (n_ctx · n_vocab; the chunk Q
    /// evaluated) with this chunk's records, adding each scored position to `stats`.
    pub fn compare(&self, logits: &[f32], chunk: &[u32], stats: &mut KldStats) -> Result<(), KldError> {
        let BaseHeader { n_ctx, n_vocab, .. } = self.header;
        if chunk.len() != n_ctx || logits.len() != n_ctx * n_vocab {
            return Err(KldError::Invalid(format!(
                "a chunk of {} tokens and {} logits, for n_ctx {n_ctx} and n_vocab {n_vocab}",
                chunk.len(),
                logits.len()
            )));
        }
        let first = self.header.first();
        for k in 0..self.header.positions() {
            let j = first + k;
            let row = self.row(k)?;
            stats.add(&compare(
                &row,
                &logits[j * n_vocab..(j + 1) * n_vocab],
                chunk[j + 1] as usize,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Deterministic pseudo-random logits in [-scale, scale).
    use crate::model::random::values as logits;

    fn exact_log_probs(row: &[f32]) -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row.iter().map(|&x| x as f64 - max - sum.ln()).collect()
    }

    #[test]
    fn log_softmax_by_hand() {
        // softmax([0, ln 2, ln 3 + 0]) ... logits 0, ln 2, ln 5 → p = 1/8, 2/8, 5/8.
        let row = [0.0f32, 2f32.ln(), 5f32.ln()];
        let mut out = Vec::new();
        log_softmax(&row, &mut out);
        for (got, want) in out.iter().zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0f64]) {
            assert!((got - want.ln()).abs() < 1e-6, "{got} vs {}", want.ln());
        }
        let ls = LogSoftmax::new(&row);
        assert_eq!(ls.argmax, 2);
        // Ties: the first index wins.
        assert_eq!(LogSoftmax::new(&[1.0, 3.0, 3.0, 2.0]).argmax, 1);
    }

    #[test]
    fn kl_of_hand_made_distributions() {
        // P = (1/2, 1/4, 1/4), Q = (1/4, 1/4, 1/2): KL = 1/2 ln 2 + 0 + 1/4 ln(1/2) = ln 2 / 4.
        let p = [2f32.ln(), 0.0, 0.0];
        let q = [0.0, 0.0, 2f32.ln()];
        let kl = kl_divergence_logits(&p, &q);
        assert!((kl - 2f64.ln() / 4.0).abs() < 1e-7, "{kl}");
        // KL(Q ‖ P) = 1/4 ln(1/2) + 0 + 1/2 ln 2 = ln 2 / 4 too (symmetric by construction),
        // and a shift of the logits changes nothing; KL(P ‖ P) = 0.
        assert!((kl_divergence_logits(&q, &p) - 2f64.ln() / 4.0).abs() < 1e-7);
        let shifted: Vec<f32> = p.iter().map(|x| x + 3.0).collect();
        assert!(kl_divergence_logits(&shifted, &p).abs() < 1e-7);
        // An asymmetric pair: P = (0.9, 0.1), Q = (0.5, 0.5).
        let (p, q) = ([0.9f32.ln(), 0.1f32.ln()], [0.0f32, 0.0]);
        let want = 0.9 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln();
        assert!((kl_divergence_logits(&p, &q) - want).abs() < 1e-7);
        let back = 0.5 * (0.5f64 / 0.9).ln() + 0.5 * (0.5f64 / 0.1).ln();
        assert!((kl_divergence_logits(&q, &p) - back).abs() < 1e-7);
    }

    #[test]
    fn encode_decode_round_trip_within_the_bound() {
        let mut worst: f64 = 0.0;
        for (seed, n, scale) in [(1, 259, 3.0), (2, 1000, 12.0), (3, 4096, 25.0), (4, 7, 0.01)] {
            let row = logits(n, seed, scale);
            let exact = exact_log_probs(&row);
            let target = n / 3;
            let mut rec = vec![0; record_bytes(n)];
            let nll = encode_record(&row, target, &mut rec);
            assert!((nll + exact[target]).abs() < 1e-9);
            let r = BaseRow::parse(&rec, n).unwrap();
            assert_eq!(r.n_vocab(), n);
            assert_eq!(r.nll, nll, "the nll is stored exactly");
            let top = exact.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(exact[r.argmax], top);
            assert!((r.top_log_prob - top).abs() < 1e-6);
            let mut below = 0;
            for (i, &e) in exact.iter().enumerate() {
                match r.log_prob(i) {
                    Some(d) => {
                        worst = worst.max((d - e).abs());
                        assert!((d - e).abs() <= MAX_DECODE_ERROR, "entry {i}: {d} vs {e}");
                    }
                    None => {
                        // Below the range: at most half a step above the floor.
                        assert!(
                            e <= top - LOG_PROB_RANGE + LOG_PROB_STEP / 2.0 + 1e-9,
                            "{e} vs top {top}"
                        );
                        below += 1;
                    }
                }
            }
            // Logits spread over ±25 put some entries below the range, the others none.
            assert_eq!(below > 0, scale > 8.0, "seed {seed}: {below} below the range");
        }
        // The bound is tight: the worst entry is close to half a step.
        assert!(worst > 0.4 * LOG_PROB_STEP, "{worst}");
    }

    #[test]
    fn equal_logits_encode_exactly() {
        let row = [1.5f32; 10];
        let mut rec = vec![0; record_bytes(10)];
        encode_record(&row, 4, &mut rec);
        let r = BaseRow::parse(&rec, 10).unwrap();
        assert_eq!(r.argmax, 0);
        for i in 0..10 {
            assert_eq!(r.code(i), TOP_CODE);
            assert!((r.log_prob(i).unwrap() + 10f64.ln()).abs() < 1e-6);
        }
    }

    #[test]
    fn corrupt_records_are_refused() {
        let row = logits(50, 9, 4.0);
        let mut rec = vec![0; record_bytes(50)];
        encode_record(&row, 3, &mut rec);
        assert!(BaseRow::parse(&rec, 50).is_ok());
        assert!(BaseRow::parse(&rec, 49).is_err(), "wrong length");
        let with = |o: usize, b: &[u8]| {
            let mut r = rec.clone();
            r[o..o + b.len()].copy_from_slice(b);
            BaseRow::parse(&r, 50).map(|_| ()).unwrap_err()
        };
        assert!(with(8, &f32::NAN.to_le_bytes()).contains("top log-probability"));
        assert!(with(8, &1.0f32.to_le_bytes()).contains("top log-probability"));
        assert!(with(8, &(-100.0f32).to_le_bytes()).contains("top log-probability"));
        assert!(with(0, &f64::INFINITY.to_le_bytes()).contains("nll"));
        assert!(with(0, &(-1.0f64).to_le_bytes()).contains("nll"));
        assert!(with(12, &50u32.to_le_bytes()).contains("argmax 50"));
        let argmax = LogSoftmax::new(&row).argmax;
        let other = (argmax + 1) % 50;
        assert!(with(12, &(other as u32).to_le_bytes()).contains("code"));
    }

    #[test]
    fn compare_against_exact_kl() {
        for (seed, n, scale) in [(11, 259, 2.0), (12, 3000, 10.0), (13, 500, 30.0)] {
            let p = logits(n, seed, scale);
            let mut q = logits(n, seed + 100, scale * 0.3);
            q.iter_mut().zip(&p).for_each(|(q, &p)| *q += p);
            let target = 7;
            let mut rec = vec![0; record_bytes(n)];
            encode_record(&p, target, &mut rec);
            let row = BaseRow::parse(&rec, n).unwrap();
            let pos = compare(&row, &q, target);
            let exact = kl_divergence_logits(&p, &q);
            // Error bound: each stored entry's ln p is off by at most ε, so p·(ln p − ln q)
            // is off by at most (e^ε − 1)·p|ln p − ln q| + e^ε·p·ε; the entries below the range
            // are left out.
            let (lp, lq) = (exact_log_probs(&p), exact_log_probs(&q));
            let eps = MAX_DECODE_ERROR;
            let mut bound = 0.0;
            for i in 0..n {
                let term = lp[i].exp() * (lp[i] - lq[i]);
                bound += match row.log_prob(i) {
                    Some(_) => (eps.exp() - 1.0) * term.abs() + eps.exp() * lp[i].exp() * eps,
                    None => term.abs(),
                };
            }
            assert!(
                (pos.kld - exact).abs() <= bound + 1e-12,
                "{} vs {exact} (bound {bound})",
                pos.kld
            );
            assert!(exact > 10.0 * bound, "the test can tell a wrong KL: {exact} vs {bound}");
            // Reversed KL is another number.
            assert!((kl_divergence_logits(&q, &p) - pos.kld).abs() > 2.0 * bound);
            assert!((pos.nll + lq[target]).abs() < 1e-9);
            assert!((pos.nll_base + lp[target]).abs() < 1e-9);
            assert!((pos.p_diff - (lq[target].exp() - lp[target].exp())).abs() < 1e-6);
            assert_eq!(pos.same_top, LogSoftmax::new(&p).argmax == LogSoftmax::new(&q).argmax);
            // Against itself: KLD within the bound of 0, the same top, Δp ≈ 0.
            let own = compare(&row, &p, target);
            assert!(own.kld.abs() < 2.0 * eps, "{}", own.kld);
            assert!(own.same_top);
            assert!(own.p_diff.abs() < 1e-6);
        }
    }

    #[test]
    fn statistics_by_hand() {
        let positions = [
            (0.5, true, 1.0, 2.0, 0.1),
            (0.1, false, 2.0, 1.0, -0.2),
            (0.3, true, 3.0, 3.0, 0.4),
        ];
        let mut s = KldStats::default();
        for &(kld, same_top, nll, nll_base, p_diff) in &positions {
            s.add(&Position {
                kld,
                nll,
                nll_base,
                same_top,
                p_diff,
            });
        }
        assert_eq!((s.count, s.n_same_top), (3, 2));
        // KLD: mean 0.3, sample sd 0.2, error 0.2 / sqrt 3.
        let k = s.kld();
        assert!((k.value - 0.3).abs() < 1e-12);
        assert!((k.error - 0.2 / 3f64.sqrt()).abs() < 1e-12, "{}", k.error);
        // Same top: 2/3 ± sqrt(2/3 · 1/3 / 2) = 1/3.
        let t = s.same_top();
        assert!((t.value - 2.0 / 3.0).abs() < 1e-12);
        assert!((t.error - 1.0 / 3.0).abs() < 1e-12);
        // ln PPL(Q) = mean(1, 2, 3) = 2 ± 1/sqrt 3; ln PPL(base) = 2 ± 1/sqrt 3.
        assert!((s.ppl().value - 2f64.exp()).abs() < 1e-9);
        assert!((s.ppl().error - 2f64.exp() / 3f64.sqrt()).abs() < 1e-9);
        assert!((s.ppl_base().value - 2f64.exp()).abs() < 1e-9);
        // Covariance of (1,2,3) and (2,1,3) is 0.5 (sample), over n = 3: 1/6. Correlation of
        // the means: (1/6) / (1/3) = 0.5.
        assert!((s.log_ppl_cov() - 1.0 / 6.0).abs() < 1e-12, "{}", s.log_ppl_cov());
        assert!((s.log_ppl_correlation().unwrap() - 0.5).abs() < 1e-12);
        // ln ratio 0 ± sqrt(1/3 + 1/3 − 1/3).
        let r = s.log_ppl_ratio();
        assert!(r.value.abs() < 1e-12);
        assert!((r.error - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.ppl_ratio().value - 1.0).abs() < 1e-12);
        assert!(s.ppl_diff().value.abs() < 1e-9);
        // Δp: mean 0.1; RMS sqrt((0.01 + 0.04 + 0.16) / 3) = sqrt(0.07).
        assert!((s.p_diff().value - 0.1).abs() < 1e-12);
        assert!((s.p_diff_rms().value - 0.07f64.sqrt()).abs() < 1e-12);
        // Percentiles: sorted 0.1, 0.3, 0.5; the median is 0.3, 75 % is 0.4.
        let sorted = s.sorted_kld();
        assert_eq!(sorted, vec![0.1, 0.3, 0.5]);
        assert_eq!(percentile(&sorted, 0.0), 0.1);
        assert_eq!(percentile(&sorted, 1.0), 0.5);
        assert!((percentile(&sorted, 0.5) - 0.3).abs() < 1e-15);
        assert!((percentile(&sorted, 0.75) - 0.4).abs() < 1e-15);
        // An even count: the median is the middle pair's mean.
        assert!((percentile(&[1.0, 2.0, 4.0, 8.0], 0.5) - 3.0).abs() < 1e-15);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(s.sorted_p_diff(), vec![-0.2, 0.1, 0.4]);
        // One position: no errors.
        let mut one = KldStats::default();
        one.add(&Position {
            kld: 0.2,
            nll: 1.0,
            nll_base: 1.0,
            same_top: false,
            p_diff: 0.0,
        });
        assert_eq!(one.kld().error, 0.0);
        assert_eq!(one.same_top(), Estimate { value: 0.0, error: 0.0 });
        assert_eq!(one.log_ppl_correlation(), None);
    }

    #[test]
    fn base_file_round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("tomoe-kld-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("base.kld");
        let (n_ctx, n_vocab, n_chunks) = (8, 30, 2);
        let tokens: Vec<u32> = (0..n_ctx * n_chunks).map(|i| (i * 7 % n_vocab) as u32).collect();
        let mut w = BaseWriter::create(&path, n_ctx, n_vocab, &tokens).unwrap();
        let all: Vec<Vec<f32>> = (0..n_chunks)
            .map(|c| logits(n_ctx * n_vocab, 40 + c as u64, 5.0))
            .collect();
        for (c, l) in all.iter().enumerate() {
            w.write_chunk(l, &tokens[c * n_ctx..(c + 1) * n_ctx]).unwrap();
        }
        assert!(!path.exists(), "nothing at the target before finish");
        let size = w.finish().unwrap();
        assert_eq!(size, fs::metadata(&path).unwrap().len());
        // 24 + 4·16 + 2 chunks · 3 positions · (16 + 60).
        assert_eq!(size, 24 + 64 + 2 * 3 * 76);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

        let mut r = BaseReader::open(&path).unwrap();
        assert_eq!(
            r.header(),
            BaseHeader {
                n_ctx,
                n_vocab,
                n_chunks
            }
        );
        assert_eq!(r.tokens(), &tokens[..]);
        for (c, l) in all.iter().enumerate() {
            let chunk = r.read_chunk().unwrap();
            assert_eq!(chunk.index, c);
            let mut stats = KldStats::default();
            chunk
                .compare(l, &tokens[c * n_ctx..(c + 1) * n_ctx], &mut stats)
                .unwrap();
            assert_eq!(stats.count, 3);
            assert_eq!(stats.n_same_top, 3);
            assert!(stats.kld().value.abs() < 2.0 * MAX_DECODE_ERROR);
            // The first scored position is 4, predicting token 5; its base nll is exact.
            let want = -exact_log_probs(&l[4 * n_vocab..5 * n_vocab])[tokens[c * n_ctx + 5] as usize];
            assert!((chunk.row(0).unwrap().nll - want).abs() < 1e-9);
        }
        assert!(r.read_chunk().is_err());

        // Damage: truncation, trailing bytes, magic, version, sizes, a token, a record.
        let good = fs::read(&path).unwrap();
        let bad = dir.join("bad.kld");
        let open = |bytes: &[u8]| {
            fs::write(&bad, bytes).unwrap();
            BaseReader::open(&bad).map(|_| ()).unwrap_err().to_string()
        };
        assert!(open(&good[..good.len() - 1]).contains("truncated"));
        assert!(open(&[&good[..], &[0]].concat()).contains("longer than its content"));
        assert!(open(&good[..10]).contains("truncated inside the 24-byte header"));
        assert!(open(b"GGUF").contains("not a KL-divergence base file"));
        assert!(open(b"").contains("not a KL-divergence base file"));
        let patched = |o: usize, v: u32| {
            let mut b = good.clone();
            b[o..o + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        assert!(open(&patched(8, 2)).contains("version 2"));
        assert!(open(&patched(12, 2)).contains("n_ctx 2 is below 4"));
        assert!(open(&patched(16, 0)).contains("n_vocab 0"));
        assert!(open(&patched(20, 0)).contains("no chunks"));
        // Huge dimensions: a size mismatch, not an allocation.
        assert!(open(&patched(16, u32::MAX)).contains("truncated"));
        assert!(open(&patched(20, u32::MAX)).contains("truncated"));
        assert!(open(&patched(24 + 4 * 3, n_vocab as u32)).contains("token 3 is 30"));
        // A record whose argmax field points elsewhere: refused when read.
        let rec0 = 24 + 4 * n_ctx * n_chunks;
        let argmax = u32::from_le_bytes(good[rec0 + 12..rec0 + 16].try_into().unwrap());
        fs::write(&bad, patched(rec0 + 12, (argmax + 1) % n_vocab as u32)).unwrap();
        let mut r = BaseReader::open(&bad).unwrap();
        let err = r.read_chunk().unwrap().row(0).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("chunk 1, position 4: corrupt record"), "{err}");

        // An unfinished writer leaves nothing behind, and the old file stays.
        let mut w = BaseWriter::create(&path, n_ctx, n_vocab, &tokens).unwrap();
        w.write_chunk(&all[0], &tokens[..n_ctx]).unwrap();
        drop(w);
        assert_eq!(fs::read(&path).unwrap(), good);
        // finish() refuses an incomplete file; bad arguments are errors, not panics.
        let w = BaseWriter::create(&path, n_ctx, n_vocab, &tokens).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("0 of 2 chunks"));
        assert!(BaseWriter::create(&path, n_ctx, n_vocab, &tokens[1..]).is_err());
        assert!(BaseWriter::create(&path, n_ctx, 5, &tokens).is_err());
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 2, "base.kld and bad.kld only");
        fs::remove_dir_all(&dir).unwrap();
    }
}
