//! Loading and running a model: [`Model`] (a [`ModelFile`](crate::model::ModelFile) and its
//! decoding plan: the weights' copies for the kernel set and how decoding reads the ToMoE
//! experts, made as [`LoadOptions`] say), and the forward pass of a [`Context`]: KV cache,
//! single-token (matrix-vector) and batch (matrix-matrix) paths, one thread pool per context.

mod cpus;
mod forward;
pub mod kl_divergence;
mod kv_cache;
mod load;
mod memory;
mod moe;
pub mod ops;
mod parallel;
pub mod perplexity;
mod plan;
mod team;

use forward::{forward, Logits, Scratch};
pub use cpus::default_threads;
use kv_cache::KvCache;
pub use kv_cache::KvType;
pub use load::{LoadError, LoadOptions, Model};
pub use memory::peak_resident_bytes;
pub use plan::ExpertReads;
use std::sync::Arc;
use team::Team;

/// Why an evaluation could not run. The context is unchanged when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the input is empty")]
    EmptyInput,
    #[error("{needed} tokens do not fit in the context of {n_ctx} (use a larger -c, or a shorter prompt)")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange { token: u32, n_vocab: usize },
    #[error("invalid context parameters: {0}")]
    BadParams(String),
    #[error("could not start the thread pool: {0}")]
    ThreadPool(String),
    #[error("could not map memory for the KV cache ({0}); try a smaller context (-c)")]
    KvMemory(std::io::Error),
}

/// Parameters of one context.
#[derive(Clone, Debug)]
pub struct ContextParams {
    /// Tokens the KV cache holds.
    pub n_ctx: usize,
    /// Threads used for compute (the whole process's compute threads); by default one per
    /// physical core ([`default_threads`]).
    pub n_threads: usize,
    /// Tokens per forward batch in prompt processing.
    pub n_batch: usize,
}

impl Default for ContextParams {
    fn default() -> Self {
        ContextParams { n_ctx: 4096, n_threads: default_threads(), n_batch: 512 }
    }
}

/// The element types of a context's KV cache (llama.cpp's `--cache-type-k` and
/// `--cache-type-v`), apart from [`ContextParams`] so that its struct literals stay valid. With
/// f16, attention rounds as llama.cpp's CPU backend does with an f16 cache and no flash
/// attention. A ToMoE layer with compactly cached values keeps those values in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheTypes {
    pub k: KvType,
    pub v: KvType,
}

impl CacheTypes {
    /// Both keys and values of one type.
    pub const fn both(ty: KvType) -> CacheTypes {
        CacheTypes { k: ty, v: ty }
    }
}

impl Default for CacheTypes {
    fn default() -> Self {
        CacheTypes::both(KvType::F32)
    }
}

/// One sequence being evaluated: the KV cache, the scratch buffers and the thread pool. Nothing
/// is allocated per token.
pub struct Context {
    model: Arc<Model>,
    params: ContextParams,
    pool: rayon::ThreadPool,
    /// Spinning threads for decoding's many short regions (rayon's pool runs prompt batches).
    team: Team,
    kv: KvCache,
    scratch: Scratch,
    pos: usize,
}

impl Context {
    pub fn new(model: Arc<Model>, p: ContextParams) -> Result<Context, EngineError> {
        Context::with_cache_types(model, p, CacheTypes::default())
    }

    /// [`Context::new`] with a KV cache of the given element types.
    pub fn with_cache_types(model: Arc<Model>, p: ContextParams, types: CacheTypes) -> Result<Context, EngineError> {
        if p.n_ctx == 0 || p.n_threads == 0 || p.n_batch == 0 {
            return Err(EngineError::BadParams(format!(
                "n_ctx ({}), n_threads ({}) and n_batch ({}) must be positive",
                p.n_ctx, p.n_threads, p.n_batch
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(p.n_threads)
            .thread_name(|i| format!("tomoe-{i}"))
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let team = Team::new(p.n_threads).map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let c = model.config();
        let nb = p.n_batch.min(p.n_ctx);
        let layers = &model.weights().layers;
        let k_dims = layers.iter().map(|l| l.attn.wk.rows()).collect();
        // ToMoE layers with a V mask cache only the kept value dims (at most top_k of them).
        let caps: Vec<Option<usize>> = layers
            .iter()
            .map(|l| {
                let vm = l.attn.vmask.as_ref()?;
                Some(if vm.top_k > 0 { vm.top_k } else { c.head_dim })
            })
            .collect();
        let kv = KvCache::new(k_dims, &caps, p.n_ctx, c.kv_dim(), c.head_dim, (types.k, types.v))
            .map_err(EngineError::KvMemory)?;
        let scratch = Scratch::new(c, nb, p.n_ctx);
        Ok(Context { model, params: ContextParams { n_batch: nb, ..p }, pool, team, kv, scratch, pos: 0 })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
    pub fn params(&self) -> &ContextParams {
        &self.params
    }
    /// Number of tokens in the sequence so far (the position of the next one).
    pub fn pos(&self) -> usize {
        self.pos
    }
    /// Forgets the sequence.
    pub fn clear(&mut self) {
        self.pos = 0;
    }
    /// Forgets all but the first `n` tokens of the sequence (nothing if it holds fewer); the
    /// next evaluation continues at position `n`.
    pub fn truncate(&mut self, n: usize) {
        self.pos = self.pos.min(n);
    }
    /// Per layer and expert of a ToMoE model, the tokens routed there so far (empty rows for a
    /// dense model).
    pub fn expert_counts(&self) -> &[Vec<u64>] {
        &self.scratch.expert_counts
    }
    /// Bytes held by the KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }
    /// The element types of the KV cache (values f32 where a ToMoE layer caches them
    /// compactly, whatever was asked).
    pub fn cache_types(&self) -> CacheTypes {
        let (k, v) = self.kv.types();
        CacheTypes { k, v }
    }

    /// Appends `tokens` to the sequence; returns the logits after the last one.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EngineError> {
        self.check(tokens)?;
        let nb = self.params.n_batch;
        let n_chunks = tokens.len().div_ceil(nb);
        let Context { model, pool, team, kv, scratch, pos, .. } = self;
        let mut run = || {
            for (i, chunk) in tokens.chunks(nb).enumerate() {
                let logits = if i + 1 == n_chunks { Logits::Last } else { Logits::None };
                forward(model, kv, scratch, chunk, *pos, logits);
                *pos += chunk.len();
            }
        };
        // One token: many short regions, on the spinning team. A batch: long matrix products on
        // rayon's pool alone (a spinning team beside it would take its cores).
        pool.install(|| if tokens.len() == 1 { team::install(team, run) } else { run() });
        Ok(&self.scratch.logits)
    }

    /// Appends `tokens`; `out` receives the logits after every one of them (`n_vocab` each).
    pub fn eval_all_logits(&mut self, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), EngineError> {
        self.check(tokens)?;
        let nv = self.model.config().n_vocab;
        out.clear();
        out.resize(tokens.len() * nv, 0.0);
        let nb = self.params.n_batch;
        let Context { model, pool, kv, scratch, pos, .. } = self;
        pool.install(|| {
            for (chunk, o) in tokens.chunks(nb).zip(out.chunks_mut(nb * nv)) {
                forward(model, kv, scratch, chunk, *pos, Logits::All(o));
                *pos += chunk.len();
            }
        });
        Ok(())
    }

    fn check(&self, tokens: &[u32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        let needed = self.pos + tokens.len();
        if needed > self.params.n_ctx {
            return Err(EngineError::ContextFull { needed, n_ctx: self.params.n_ctx });
        }
        let n_vocab = self.model.config().n_vocab;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(EngineError::TokenOutOfRange { token, n_vocab });
        }
        Ok(())
    }
}
