//! llama.cpp as the oracle for the engine: logits, greedy generation and perplexity through
//! `llama_decode`, behind a small safe wrapper. Include with
//! `#[path = "common/oracle_eval.rs"] mod oracle_eval;` in x86-64-only test files.
#![allow(dead_code)]

use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::Path;
use std::sync::OnceLock;

/// The kernel choice this process made at its first load (see `GgmlKernels`).
static BACKEND: OnceLock<GgmlKernels> = OnceLock::new();

/// Which of ggml's CPU matrix kernels the oracle runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlKernels {
    /// llama.cpp as a user runs it: Q4_K weights repacked into row-interleaved blocks at load
    /// (its `--no-repack` turns that off), and K-quant products of 8 or more tokens on its
    /// tiled kernels (`GGML_CPU_TILED_MM`). Both sum in orders of their own.
    Default,
    /// Weights not repacked and the tiled path off: every K-quant product through ggml's
    /// per-row `vec_dot` kernels, the order the engine mirrors (legacy formats in a batch
    /// still take llamafile's tinyBLAS, which the engine mirrors too).
    VecDot,
}

/// llama.cpp's log messages, shown only with `TOMOE_ORACLE_LOG=1` (e.g. to see why it rejects
/// a file).
unsafe extern "C" fn silent_log(
    _level: sys::ggml_log_level,
    text: *const std::os::raw::c_char,
    _user: *mut std::os::raw::c_void,
) {
    if std::env::var_os("TOMOE_ORACLE_LOG").is_some() && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated message.
        eprint!("{}", unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// One backend per process, with one kernel choice: ggml reads `GGML_CPU_TILED_MM` once, so a
/// test binary cannot mix the two. llama.cpp's logging is silenced (it writes to stderr
/// otherwise).
fn init_backend(kernels: GgmlKernels) {
    let chosen = *BACKEND.get_or_init(|| {
        // Before any llama.cpp call, so before ggml's first read of it.
        match kernels {
            GgmlKernels::Default => std::env::remove_var("GGML_CPU_TILED_MM"),
            GgmlKernels::VecDot => std::env::set_var("GGML_CPU_TILED_MM", "0"),
        }
        // SAFETY: called once per process before any other llama.cpp call; the callback is a
        // `extern "C"` function with the signature llama.cpp expects and ignores its arguments.
        unsafe {
            sys::llama_log_set(Some(silent_log), std::ptr::null_mut());
            sys::llama_backend_init();
        }
        kernels
    });
    assert_eq!(chosen, kernels, "one test binary loads the oracle with one kernel choice");
}

/// The KV cache of the oracle's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleKv {
    /// llama.cpp's defaults: an f16 cache, flash attention as llama.cpp chooses.
    Default,
    /// An f32 cache and no flash attention: attention rounds nothing to f16.
    F32,
    /// An f16 cache and no flash attention: the f16 products of ggml's matrix kernels, which
    /// the engine's f16 cache mirrors.
    F16,
}

/// `true`: [`OracleKv::F32`] (exact comparisons); `false`: [`OracleKv::Default`].
impl From<bool> for OracleKv {
    fn from(f32_kv: bool) -> OracleKv {
        if f32_kv {
            OracleKv::F32
        } else {
            OracleKv::Default
        }
    }
}

/// A llama.cpp model with one context (one sequence).
pub struct LlamaOracle {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
    vocab: *const sys::llama_vocab,
    n_vocab: usize,
    n_ctx: usize,
    batch: sys::llama_batch,
}

impl LlamaOracle {
    /// Loads `path` on the CPU with a context of `n_ctx` tokens, `n_ctx` tokens per decode,
    /// llama.cpp's default f16 KV cache and its default kernels.
    pub fn load(path: &Path, n_ctx: usize, n_threads: usize) -> LlamaOracle {
        LlamaOracle::load_with(path, n_ctx, n_threads, false, GgmlKernels::Default)
    }

    /// As `load`; `kv`: the KV cache (see `OracleKv`; `true` is an f32 cache without flash
    /// attention, for exact comparisons); `kernels`: see `GgmlKernels`.
    pub fn load_with(
        path: &Path,
        n_ctx: usize,
        n_threads: usize,
        kv: impl Into<OracleKv>,
        kernels: GgmlKernels,
    ) -> LlamaOracle {
        let kv = kv.into();
        init_backend(kernels);
        let cpath = CString::new(path.to_str().expect("model path is UTF-8")).unwrap();
        // SAFETY: plain C calls with valid arguments; every returned pointer is checked for null
        // before use and freed in Drop.
        unsafe {
            let mut mp = sys::llama_model_default_params();
            mp.n_gpu_layers = 0;
            mp.use_extra_bufts = kernels == GgmlKernels::Default;
            let model = sys::llama_model_load_from_file(cpath.as_ptr(), mp);
            assert!(!model.is_null(), "llama.cpp failed to load {}", path.display());
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = n_ctx as u32;
            cp.n_batch = n_ctx as u32;
            cp.n_ubatch = n_ctx as u32;
            cp.n_seq_max = 1;
            cp.n_threads = n_threads as i32;
            cp.n_threads_batch = n_threads as i32;
            cp.no_perf = true;
            let exact = match kv {
                OracleKv::Default => None,
                OracleKv::F32 => Some(sys::GGML_TYPE_F32),
                OracleKv::F16 => Some(sys::GGML_TYPE_F16),
            };
            if let Some(ty) = exact {
                cp.type_k = ty;
                cp.type_v = ty;
                cp.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_DISABLED;
            }
            let ctx = sys::llama_init_from_model(model, cp);
            assert!(!ctx.is_null(), "llama.cpp failed to create a context for {}", path.display());
            let vocab = sys::llama_model_get_vocab(model);
            let n_vocab = sys::llama_vocab_n_tokens(vocab) as usize;
            let batch = sys::llama_batch_init(n_ctx as i32, 0, 1);
            LlamaOracle { model, ctx, vocab, n_vocab, n_ctx, batch }
        }
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Whether the model's vocabulary asks for a BOS token at the start of a sequence.
    pub fn add_bos(&self) -> bool {
        // SAFETY: `vocab` is valid for the life of `model`.
        unsafe { sys::llama_vocab_get_add_bos(self.vocab) }
    }

    pub fn bos(&self) -> u32 {
        // SAFETY: as above.
        unsafe { sys::llama_vocab_bos(self.vocab) as u32 }
    }

    /// `llama_tokenize` with `add_special` (BOS if the model adds one) and `parse_special`.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = vec![0i32; text.len() + 8];
        // SAFETY: `text` is valid for `text.len()` bytes; `out` has room for `out.len()` tokens;
        // a negative return is the needed size, and we retry with exactly that.
        unsafe {
            let mut n = sys::llama_tokenize(
                self.vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                out.as_mut_ptr(),
                out.len() as i32,
                add_special,
                parse_special,
            );
            if n < 0 {
                out.resize((-n) as usize, 0);
                n = sys::llama_tokenize(
                    self.vocab,
                    text.as_ptr().cast(),
                    text.len() as i32,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                );
            }
            assert!(n >= 0, "llama_tokenize failed");
            out.truncate(n as usize);
        }
        out.into_iter().map(|t| t as u32).collect()
    }

    /// Forgets the sequence (KV cache cleared).
    pub fn clear(&mut self) {
        // SAFETY: `ctx` is valid; clearing the memory of a live context is always allowed.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), true) }
    }

    /// Decodes `tokens` at positions `pos0..`; returns the logits of every token if `all`,
    /// else of the last one only (row-major, `n_vocab` per token).
    pub fn eval(&mut self, tokens: &[u32], pos0: usize, all: bool) -> Vec<f32> {
        assert!(!tokens.is_empty() && tokens.len() <= self.n_ctx, "batch of {} tokens", tokens.len());
        let n = tokens.len();
        // SAFETY: the batch was allocated for n_ctx >= n tokens with one sequence id each, so
        // every write below is in bounds; logits are read only for tokens marked as outputs,
        // each `n_vocab` floats long as llama.cpp documents.
        unsafe {
            let b = &mut self.batch;
            b.n_tokens = n as i32;
            for (i, &t) in tokens.iter().enumerate() {
                *b.token.add(i) = t as i32;
                *b.pos.add(i) = (pos0 + i) as i32;
                *b.n_seq_id.add(i) = 1;
                *(*b.seq_id.add(i)).add(0) = 0;
                *b.logits.add(i) = (all || i + 1 == n) as i8;
            }
            let rc = sys::llama_decode(self.ctx, *b);
            assert_eq!(rc, 0, "llama_decode failed with {rc}");
            let first = if all { 0 } else { n - 1 };
            let mut out = Vec::with_capacity((n - first) * self.n_vocab);
            for i in first..n {
                let p = sys::llama_get_logits_ith(self.ctx, i as i32);
                assert!(!p.is_null(), "no logits for token {i}");
                out.extend_from_slice(std::slice::from_raw_parts(p, self.n_vocab));
            }
            out
        }
    }

    /// Greedy generation from a cleared context: `n` tokens after `prompt` (argmax, first index
    /// wins ties), with the logits each token was chosen from.
    pub fn greedy(&mut self, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        self.clear();
        let mut logits = self.eval(prompt, 0, false);
        let mut out = Vec::with_capacity(n);
        let mut all = Vec::with_capacity(n);
        let mut pos = prompt.len();
        for i in 0..n {
            let t = argmax(&logits);
            out.push(t);
            if i + 1 < n {
                let next = self.eval(&[t], pos, false);
                all.push(std::mem::replace(&mut logits, next));
                pos += 1;
            }
        }
        all.push(logits);
        (out, all)
    }

    /// llama-perplexity's method over the first `max_chunks` chunks of `n_ctx` tokens (`tokens` is
    /// the whole text tokenized with BOS if the model adds one): each chunk starts with BOS if
    /// the model adds one, only the second half of each chunk is scored. Returns (ppl, chunks).
    pub fn perplexity(&mut self, tokens: &[u32], n_ctx: usize, max_chunks: usize) -> (f64, usize) {
        assert!(n_ctx <= self.n_ctx);
        let n_chunks = (tokens.len() / n_ctx).min(max_chunks);
        assert!(n_chunks > 0, "text too short for one chunk of {n_ctx} tokens");
        let first = n_ctx / 2;
        let (mut nll, mut count) = (0f64, 0usize);
        let mut chunk = vec![0u32; n_ctx];
        for c in 0..n_chunks {
            chunk.copy_from_slice(&tokens[c * n_ctx..(c + 1) * n_ctx]);
            if self.add_bos() {
                chunk[0] = self.bos();
            }
            self.clear();
            let logits = self.eval(&chunk, 0, true);
            for j in first..n_ctx - 1 {
                let row = &logits[j * self.n_vocab..(j + 1) * self.n_vocab];
                nll -= log_softmax_at(row, chunk[j + 1] as usize);
                count += 1;
            }
        }
        ((nll / count as f64).exp(), n_chunks)
    }
}

impl Drop for LlamaOracle {
    fn drop(&mut self) {
        // SAFETY: each pointer was created in `load`, is non-null and freed exactly once here,
        // the context before the model it borrows.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ctx);
            sys::llama_model_free(self.model);
        }
    }
}

/// Index of the largest value; the first one on ties (as the engine's greedy sampler).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Largest minus second-largest value: how far the greedy choice is from a tie.
pub fn top2_margin(v: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// log(softmax(row)[target]) in f64.
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

/// max|a-b| / max|b| over the vocabulary: the logits' relative difference used in the tests.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    diff / scale
}
