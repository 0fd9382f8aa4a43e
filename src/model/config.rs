//! The hyper-parameters of a model, read from GGUF metadata (`{arch}.*` keys, as llama.cpp names
//! them). Each architecture file decides the parts that differ; this file holds what they share.

use super::ModelError;
use crate::gguf::{GgufFile, Value};

/// The supported architectures (`general.architecture`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, TinyLlama, Mistral.
    Llama,
    /// Qwen2: llama plus Q/K/V biases and NEOX RoPE.
    Qwen2,
    /// Gemma 3: sliding-window and global layers, Q/K norms, post-norms, GeGLU, scaled embeddings.
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" RoPE (its converter permutes Q/K rows).
    Adjacent,
    /// Halves (i, i + n_rot/2): GPT-NeoX style.
    Neox,
}

/// The gated feed-forward's activation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with the tanh approximation of GELU.
    GeluTanh,
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_vocab: usize,
    pub d_model: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Dimension of each query/key/value head.
    pub head_dim: usize,
    /// Number of dimensions of each head that RoPE rotates (the first `n_rot`).
    pub n_rot: usize,
    pub rope_style: RopeStyle,
    /// RoPE base of global layers.
    pub rope_base: f32,
    /// RoPE base of sliding-window layers.
    pub rope_base_swa: f32,
    /// Linear RoPE scaling: positions are multiplied by this (1 / scaling factor).
    pub rope_freq_scale: f32,
    pub rms_eps: f32,
    /// The context length the model was trained with.
    pub context_length: usize,
    /// Window of the sliding-window layers: a query at position p sees keys in (p - window, p].
    pub sliding_window: Option<usize>,
    /// Per layer: whether it uses the sliding window.
    pub swa_layers: Vec<bool>,
    /// Scale of the attention scores.
    pub attn_scale: f32,
    /// Where `attn_scale` is applied: to Q after RoPE (Gemma, as llama.cpp's graph does), or to
    /// the scores q·k (llama, qwen2). The two round differently.
    pub scale_q: bool,
    /// Embeddings are multiplied by this (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f32>,
    /// Final logits softcap c: logits = c * tanh(logits / c).
    pub final_logit_softcap: Option<f32>,
    pub activation: Activation,
    /// The ToMoE switches of a `tomoe-*` file (its layers carry the experts).
    pub tomoe: Option<super::tomoe::TomoeConfig>,
    /// A llama.cpp MoE (`{arch}.expert_count`): experts per layer, and how many each token uses.
    pub n_expert: Option<usize>,
    pub n_expert_used: usize,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    /// The RoPE base of layer `il`.
    pub fn rope_base_of(&self, il: usize) -> f32 {
        if self.swa_layers[il] {
            self.rope_base_swa
        } else {
            self.rope_base
        }
    }
}

/// Typed access to the `{arch}.*` metadata keys.
pub(crate) struct Meta<'a> {
    pub file: &'a GgufFile,
    pub arch: &'static str,
}

impl<'a> Meta<'a> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{}", self.arch, suffix)
    }

    fn raw(&self, suffix: &str) -> Option<(String, &'a Value)> {
        let key = self.key(suffix);
        self.file.get(&key).map(|v| (key, v))
    }

    pub fn opt_usize(&self, suffix: &str) -> Result<Option<usize>, ModelError> {
        match self.raw(suffix) {
            None => Ok(None),
            Some((key, v)) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or(ModelError::BadMetadata { key, expected: "a non-negative integer" }),
        }
    }

    pub fn usize(&self, suffix: &str) -> Result<usize, ModelError> {
        self.opt_usize(suffix)?.ok_or_else(|| ModelError::MissingMetadata(self.key(suffix)))
    }

    /// A positive integer (a zero-sized dimension is as bad as a missing one).
    pub fn dim(&self, suffix: &str) -> Result<usize, ModelError> {
        let v = self.usize(suffix)?;
        if v == 0 {
            return Err(ModelError::BadMetadata { key: self.key(suffix), expected: "a positive integer" });
        }
        Ok(v)
    }

    pub fn opt_f32(&self, suffix: &str) -> Result<Option<f32>, ModelError> {
        match self.raw(suffix) {
            None => Ok(None),
            Some((key, v)) => v
                .as_f32()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or(ModelError::BadMetadata { key, expected: "a finite float" }),
        }
    }

    pub fn opt_str(&self, suffix: &str) -> Result<Option<&'a str>, ModelError> {
        match self.raw(suffix) {
            None => Ok(None),
            Some((key, v)) => v.as_str().map(Some).ok_or(ModelError::BadMetadata { key, expected: "a string" }),
        }
    }

    /// A per-layer setting stored either as one integer or as an array of one per layer.
    pub fn opt_per_layer(&self, suffix: &str, n_layer: usize) -> Result<Option<Vec<u64>>, ModelError> {
        match self.raw(suffix) {
            None => Ok(None),
            Some((key, Value::Array(items))) => {
                let vals = items.to_u64s();
                match vals {
                    Some(v) if v.len() == n_layer => Ok(Some(v)),
                    _ => Err(ModelError::BadMetadata { key, expected: "one non-negative integer per layer" }),
                }
            }
            Some((key, v)) => match v.as_u64() {
                Some(x) => Ok(Some(vec![x; n_layer])),
                None => Err(ModelError::BadMetadata { key, expected: "a non-negative integer" }),
            },
        }
    }
}

/// The keys every supported architecture shares. `rope_style`, `activation` and the
/// architecture-specific fields are set by the caller.
pub(crate) fn common(meta: &Meta, arch: Arch, n_vocab: usize) -> Result<ModelConfig, ModelError> {
    let d_model = meta.dim("embedding_length")?;
    let n_layer = meta.dim("block_count")?;
    let n_head = match meta.opt_per_layer("attention.head_count", n_layer)? {
        Some(v) => uniform(meta, "attention.head_count", &v)?,
        None => return Err(ModelError::MissingMetadata(meta.key("attention.head_count"))),
    };
    let n_head_kv = match meta.opt_per_layer("attention.head_count_kv", n_layer)? {
        Some(v) => uniform(meta, "attention.head_count_kv", &v)?,
        None => n_head,
    };
    let n_ff = match meta.opt_per_layer("feed_forward_length", n_layer)? {
        Some(v) => uniform(meta, "feed_forward_length", &v)?,
        None => return Err(ModelError::MissingMetadata(meta.key("feed_forward_length"))),
    };
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_ff == 0 {
        return Err(ModelError::BadMetadata {
            key: meta.key("attention.head_count_kv"),
            expected: "positive head counts, head_count a multiple of head_count_kv, positive feed_forward_length",
        });
    }
    let head_dim = match meta.opt_usize("attention.key_length")? {
        Some(k) => k,
        None => d_model / n_head,
    };
    let head_dim_v = meta.opt_usize("attention.value_length")?.unwrap_or(head_dim);
    if head_dim == 0 || head_dim_v != head_dim || head_dim % 2 != 0 {
        return Err(ModelError::Unsupported(format!(
            "key length {head_dim} / value length {head_dim_v}: both must be equal and even"
        )));
    }
    let n_rot = meta.opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
    if n_rot == 0 || n_rot > head_dim || n_rot % 2 != 0 {
        return Err(ModelError::BadMetadata {
            key: meta.key("rope.dimension_count"),
            expected: "an even number no larger than the head dimension",
        });
    }
    let rope_base = meta.opt_f32("rope.freq_base")?.unwrap_or(10000.0);
    let rope_freq_scale = match meta.opt_str("rope.scaling.type")? {
        None | Some("none") => 1.0,
        Some("linear") => match meta.opt_f32("rope.scaling.factor")? {
            Some(f) if f > 0.0 => 1.0 / f,
            _ => 1.0,
        },
        Some(other) => return Err(ModelError::Unsupported(format!("RoPE scaling type {other:?}"))),
    };
    let rms_eps = meta
        .opt_f32("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| ModelError::MissingMetadata(meta.key("attention.layer_norm_rms_epsilon")))?;
    let context_length = meta.opt_usize("context_length")?.unwrap_or(2048);
    let n_expert = meta.opt_usize("expert_count")?.filter(|&e| e > 0);
    let n_expert_used = meta.opt_usize("expert_used_count")?.unwrap_or(1);
    if let Some(e) = n_expert {
        if e > 4096 || n_expert_used == 0 || n_expert_used > e {
            return Err(ModelError::BadMetadata {
                key: meta.key("expert_used_count"),
                expected: "between 1 and expert_count (at most 4096 experts)",
            });
        }
    }
    Ok(ModelConfig {
        arch,
        n_vocab,
        d_model,
        n_layer,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        n_rot,
        rope_style: RopeStyle::Adjacent,
        rope_base,
        rope_base_swa: rope_base,
        rope_freq_scale,
        rms_eps,
        context_length,
        sliding_window: None,
        swa_layers: vec![false; n_layer],
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_q: false,
        embed_scale: None,
        final_logit_softcap: None,
        activation: Activation::Silu,
        tomoe: None,
        n_expert,
        n_expert_used,
    })
}

/// Per-layer values must all be equal: the engine supports uniform layers only.
fn uniform(meta: &Meta, suffix: &str, v: &[u64]) -> Result<usize, ModelError> {
    let first = v[0];
    if v.iter().any(|&x| x != first) {
        return Err(ModelError::Unsupported(format!("{} differs between layers", meta.key(suffix))));
    }
    usize::try_from(first).map_err(|_| ModelError::BadMetadata { key: meta.key(suffix), expected: "a size" })
}
