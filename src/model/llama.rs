//! `llama`: Llama 2/3, SmolLM2, TinyLlama, Mistral. Pre-norm, SwiGLU, RoPE on adjacent pairs
//! (llama.cpp's converter permutes the Q/K rows to that pairing). Q/K/V biases are optional.

use super::config::{common, Activation, Arch, Meta, ModelConfig, RopeStyle};
use super::weights::LayerTensors;
use super::ModelError;

pub(crate) const TENSORS: LayerTensors = LayerTensors { qkv_bias_required: false, qk_norm: false, post_norms: false };

pub(crate) fn config(meta: &Meta, n_vocab: usize) -> Result<ModelConfig, ModelError> {
    let mut c = common(meta, Arch::Llama, n_vocab)?;
    c.rope_style = RopeStyle::Adjacent;
    c.activation = Activation::Silu;
    // Mistral v0.1-style sliding window applies to every layer when present.
    if let Some(w) = meta.opt_usize("attention.sliding_window")?.filter(|&w| w > 0) {
        c.sliding_window = Some(w);
        c.swa_layers = vec![true; c.n_layer];
    }
    Ok(c)
}
