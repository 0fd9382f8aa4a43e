//! The dense model as the converter sees it: hyperparameters and F32 candle tensors in the Hugging Face
//! layout (`[out, in]` matrices, rotate-half Q/K rows), whatever file it came from.

use super::{ConvertError, Result};
use candle_core::{DType, Device, Tensor};

/// The supported families. llama and qwen2 differ in Q/K/V biases and in how llama.cpp stores
/// RoPE pairs; gemma3 adds Q/K norms, post-norms, sliding-window layers and a GELU-gated MLP.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Gemma3,
}

impl Arch {
    pub fn from_name(s: &str) -> Result<Arch> {
        match s {
            "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" => Ok(Arch::Gemma3),
            other => Err(ConvertError::UnsupportedArch(other.to_string())),
        }
    }
    /// The base architecture name in GGUF (`general.architecture` of the dense file).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
        }
    }
    pub fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }
    /// RMS norms on each Q and K head, and norms on the attention and MLP outputs (Gemma 3).
    pub fn has_qk_and_post_norms(self) -> bool {
        self == Arch::Gemma3
    }
    /// The gated MLP's activation: GELU (tanh form) for Gemma 3, SiLU otherwise.
    pub fn gelu_mlp(self) -> bool {
        self == Arch::Gemma3
    }
}

/// The Gemma 3 specifics of a dense configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3Params {
    /// RoPE base of the sliding-window (local) layers; `rope_theta` is the global layers'.
    pub rope_theta_local: f32,
    /// Window of the local layers: a query at position p sees keys in (p - window, p].
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is a local (sliding-window) layer.
    pub swa_layers: Vec<bool>,
    /// Scale of the attention scores (1/sqrt(head_dim), as llama.cpp sets it).
    pub attn_scale: f32,
    /// Final logits softcap c: logits = c · tanh(logits / c).
    pub final_logit_softcap: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DenseConfig {
    pub arch: Arch,
    pub n_layers: usize,
    pub d: usize,
    pub m: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub context_length: usize,
    pub tied_embeddings: bool,
    /// Set exactly when `arch` is Gemma 3.
    pub gemma3: Option<Gemma3Params>,
}

impl DenseConfig {
    /// Checks the invariants the forward pass relies on (GQA divisibility, even head dim, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ConvertError::InvalidArg(m));
        if self.n_layers == 0 || self.d == 0 || self.m == 0 || self.vocab == 0 {
            return bad(format!("empty model dimensions: {self:?}"));
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "head counts {} / {} (KV) are not a valid GQA split",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} must be even for RoPE", self.head_dim));
        }
        // NaN and infinity fail too.
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(self.rms_eps) || !positive(self.rope_theta) {
            return bad("rms_norm_eps and rope_theta must be positive and finite".into());
        }
        match (&self.gemma3, self.arch == Arch::Gemma3) {
            (None, false) => {}
            (Some(g), true) => {
                if g.swa_layers.len() != self.n_layers {
                    return bad(format!("{} sliding-window flags for {} layers", g.swa_layers.len(), self.n_layers));
                }
                if !positive(g.rope_theta_local) || !positive(g.attn_scale) {
                    return bad("the local RoPE base and the attention scale must be positive and finite".into());
                }
                if g.final_logit_softcap.is_some_and(|c| !positive(c)) || g.sliding_window == Some(0) {
                    return bad("the logit softcap and the sliding window must be positive".into());
                }
            }
            _ => return bad("Gemma 3 parameters without the gemma3 architecture, or the reverse".into()),
        }
        Ok(())
    }

    /// The RoPE base of layer `l`.
    pub fn rope_base(&self, l: usize) -> f32 {
        match &self.gemma3 {
            Some(g) if g.swa_layers[l] => g.rope_theta_local,
            _ => self.rope_theta,
        }
    }

    /// The attention window of layer `l` (`None`: all earlier positions).
    pub fn window(&self, l: usize) -> Option<usize> {
        self.gemma3.as_ref().and_then(|g| if g.swa_layers[l] { g.sliding_window } else { None })
    }

    /// The scale of the attention scores when every head dim is kept.
    pub fn attn_scale(&self) -> f64 {
        match &self.gemma3 {
            Some(g) => g.attn_scale as f64,
            None => 1.0 / (self.head_dim as f64).sqrt(),
        }
    }

    /// The factor the embeddings are multiplied by (Gemma: sqrt(d)).
    pub fn embed_scale(&self) -> Option<f64> {
        self.gemma3.as_ref().map(|_| (self.d as f64).sqrt())
    }

    /// Parameters of the prunable blocks (q,k,v,o projections and the MLP) over all layers.
    pub fn dense_block_params(&self) -> f64 {
        let attn = 2.0 * (self.d * (self.n_heads + self.n_kv_heads) * self.head_dim) as f64;
        let mlp = 3.0 * (self.d * self.m) as f64;
        self.n_layers as f64 * (attn + mlp)
    }
}

/// One decoder layer's weights, HF layout.
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    pub ffn_norm: Tensor,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
    /// Gemma 3: RMS norm weights of each Q and K head `[hd]`, and of the attention and MLP
    /// outputs `[d]` (GGUF convention: the "1 +" folded in).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub post_attn_norm: Option<Tensor>,
    pub post_ffn_norm: Option<Tensor>,
}

pub struct DenseModel {
    pub config: DenseConfig,
    pub embed: Tensor,
    /// `None` when the output projection is the embedding (tied).
    pub output: Option<Tensor>,
    pub output_norm: Tensor,
    pub layers: Vec<LayerWeights>,
    /// Tokenizer and chat-template metadata to carry into the exported file (GGUF key/values).
    pub tokenizer_meta: Vec<(String, crate::gguf::Value)>,
    pub name: String,
}

impl DenseModel {
    pub fn output_weight(&self) -> &Tensor {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}

/// Takes a tensor from a name → tensor source, converts it to F32 on `dev` and checks its shape.
pub(crate) fn take(
    get: &mut dyn FnMut(&str) -> Result<Option<Tensor>>,
    name: &str,
    shape: &[usize],
    dev: &Device,
) -> Result<Tensor> {
    let t = get(name)?.ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
    if t.dims() != shape {
        return Err(ConvertError::BadShape {
            name: name.to_string(),
            got: t.dims().to_vec(),
            want: shape.to_vec(),
        });
    }
    Ok(t.to_dtype(DType::F32)?.to_device(dev)?)
}

/// Builds the model from a tensor source that uses HF names and layout (the GGUF loader maps its own
/// names and un-permutes Q/K before handing tensors here).
pub(crate) fn assemble(
    config: DenseConfig,
    get: &mut dyn FnMut(&str) -> Result<Option<Tensor>>,
    dev: &Device,
    tokenizer_meta: Vec<(String, crate::gguf::Value)>,
    name: String,
) -> Result<DenseModel> {
    config.validate()?;
    let c = &config;
    let (d, m, hd) = (c.d, c.m, c.head_dim);
    let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
    let embed = take(get, "model.embed_tokens.weight", &[c.vocab, d], dev)?;
    let output_norm = take(get, "model.norm.weight", &[d], dev)?;
    let output = if c.tied_embeddings {
        None
    } else {
        Some(take(get, "lm_head.weight", &[c.vocab, d], dev)?)
    };
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let p = format!("model.layers.{l}");
        let bias = |get: &mut dyn FnMut(&str) -> Result<Option<Tensor>>,
                    n: &str,
                    len: usize|
         -> Result<Option<Tensor>> {
            if c.arch.has_qkv_bias() {
                Ok(Some(take(
                    get,
                    &format!("{p}.self_attn.{n}.bias"),
                    &[len],
                    dev,
                )?))
            } else {
                Ok(None)
            }
        };
        // Gemma names its pre-MLP norm `pre_feedforward_layernorm` and uses
        // `post_attention_layernorm` for the attention output's norm (llama's pre-MLP norm).
        let gemma = c.arch.has_qk_and_post_norms();
        let opt = |get: &mut dyn FnMut(&str) -> Result<Option<Tensor>>, n: &str, len: usize| -> Result<Option<Tensor>> {
            if gemma {
                Ok(Some(take(get, &format!("{p}.{n}"), &[len], dev)?))
            } else {
                Ok(None)
            }
        };
        let ffn_norm_name = if gemma { "pre_feedforward_layernorm" } else { "post_attention_layernorm" };
        layers.push(LayerWeights {
            q_norm: opt(get, "self_attn.q_norm.weight", hd)?,
            k_norm: opt(get, "self_attn.k_norm.weight", hd)?,
            post_attn_norm: opt(get, "post_attention_layernorm.weight", d)?,
            post_ffn_norm: opt(get, "post_feedforward_layernorm.weight", d)?,
            attn_norm: take(get, &format!("{p}.input_layernorm.weight"), &[d], dev)?,
            wq: take(get, &format!("{p}.self_attn.q_proj.weight"), &[qd, d], dev)?,
            wk: take(get, &format!("{p}.self_attn.k_proj.weight"), &[kvd, d], dev)?,
            wv: take(get, &format!("{p}.self_attn.v_proj.weight"), &[kvd, d], dev)?,
            wo: take(get, &format!("{p}.self_attn.o_proj.weight"), &[d, qd], dev)?,
            bq: bias(get, "q_proj", qd)?,
            bk: bias(get, "k_proj", kvd)?,
            bv: bias(get, "v_proj", kvd)?,
            ffn_norm: take(get, &format!("{p}.{ffn_norm_name}.weight"), &[d], dev)?,
            w_gate: take(get, &format!("{p}.mlp.gate_proj.weight"), &[m, d], dev)?,
            w_up: take(get, &format!("{p}.mlp.up_proj.weight"), &[m, d], dev)?,
            w_down: take(get, &format!("{p}.mlp.down_proj.weight"), &[d, m], dev)?,
        });
    }
    Ok(DenseModel {
        config,
        embed,
        output,
        output_norm,
        layers,
        tokenizer_meta,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::{Arch, DenseConfig};

    #[test]
    fn validate_refuses_eps_and_theta_that_are_not_positive_and_finite() {
        let ok = DenseConfig {
            arch: Arch::Llama,
            n_layers: 2,
            d: 8,
            m: 16,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            vocab: 10,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            context_length: 64,
            tied_embeddings: true,
            gemma3: None,
        };
        assert!(ok.validate().is_ok());
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            for c in [
                DenseConfig { rms_eps: bad, ..ok.clone() },
                DenseConfig { rope_theta: bad, ..ok.clone() },
            ] {
                let e = c.validate().expect_err("a bad eps or theta");
                assert!(e.to_string().contains("positive and finite"), "{e}");
            }
        }
    }
}
