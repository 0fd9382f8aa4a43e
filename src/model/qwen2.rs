//! `qwen2`: the llama layout with Q/K/V biases (required) and RoPE on halves (NEOX style).

use super::config::{common, Activation, Arch, Meta, ModelConfig, RopeStyle};
use super::weights::LayerTensors;
use super::ModelError;

pub(crate) const TENSORS: LayerTensors = LayerTensors { qkv_bias_required: true, qk_norm: false, post_norms: false };

pub(crate) fn config(meta: &Meta, n_vocab: usize) -> Result<ModelConfig, ModelError> {
    let mut c = common(meta, Arch::Qwen2, n_vocab)?;
    c.rope_style = RopeStyle::Neox;
    c.activation = Activation::Silu;
    Ok(c)
}
