//! The dense model as the converter sees it: hyperparameters and F32 candle tensors in the Hugging Face
//! layout (`[out, in]` matrices, rotate-half Q/K rows), whatever file it came from.

use super::{ConvertError, Result};
use candle_core::{DType, Device, Tensor};

/// The two supported families; they differ in Q/K/V biases and in how llama.cpp stores RoPE pairs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub fn from_name(s: &str) -> Result<Arch> {
        match s {
            "llama" | "LlamaForCausalLM" => Ok(Arch::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            other => Err(ConvertError::UnsupportedArch(other.to_string())),
        }
    }
    /// The base architecture name in GGUF (`general.architecture` of the dense file).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
    pub fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }
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
        Ok(())
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
        layers.push(LayerWeights {
            attn_norm: take(get, &format!("{p}.input_layernorm.weight"), &[d], dev)?,
            wq: take(get, &format!("{p}.self_attn.q_proj.weight"), &[qd, d], dev)?,
            wk: take(get, &format!("{p}.self_attn.k_proj.weight"), &[kvd, d], dev)?,
            wv: take(get, &format!("{p}.self_attn.v_proj.weight"), &[kvd, d], dev)?,
            wo: take(get, &format!("{p}.self_attn.o_proj.weight"), &[d, qd], dev)?,
            bq: bias(get, "q_proj", qd)?,
            bk: bias(get, "k_proj", kvd)?,
            bv: bias(get, "v_proj", kvd)?,
            ffn_norm: take(
                get,
                &format!("{p}.post_attention_layernorm.weight"),
                &[d],
                dev,
            )?,
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
