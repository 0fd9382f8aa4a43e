//! `gemma3`: embeddings scaled by sqrt(d_model); RMS norms on Q and K per head; norms after
//! attention and after the FFN (before each residual add); GeGLU (tanh GELU); NEOX RoPE.
//! Layers alternate between sliding-window (local, RoPE base `rope.freq_base_swa`, default
//! 10000) and global (base `rope.freq_base`): by default every 6th layer (il % 6 == 5) is
//! global, or as `attention.sliding_window_pattern` says (one number, or one bool per layer).
//! The GGUF converter already folds Gemma's "1 + weight" into the norm weights.

use super::config::{common, Activation, Arch, Meta, ModelConfig, RopeStyle};
use super::weights::LayerTensors;
use super::ModelError;
use crate::gguf::Value;

pub(crate) const TENSORS: LayerTensors = LayerTensors { qkv_bias_required: false, qk_norm: true, post_norms: true };

const DEFAULT_SWA_PATTERN: usize = 6;

pub(crate) fn config(meta: &Meta, n_vocab: usize) -> Result<ModelConfig, ModelError> {
    let mut c = common(meta, Arch::Gemma3, n_vocab)?;
    c.rope_style = RopeStyle::Neox;
    c.activation = Activation::GeluTanh;
    c.embed_scale = Some((c.d_model as f32).sqrt());
    c.scale_q = true;
    c.final_logit_softcap = meta.opt_f32("final_logit_softcapping")?.filter(|&s| s > 0.0);
    // Gemma 3 27B scales by d_model / n_head instead of the head dimension (as llama.cpp).
    if c.n_layer == 62 {
        c.attn_scale = 1.0 / ((c.d_model / c.n_head) as f32).sqrt();
    }
    if let Some(w) = meta.opt_usize("attention.sliding_window")?.filter(|&w| w > 0) {
        c.sliding_window = Some(w);
        c.swa_layers = swa_layers(meta, c.n_layer)?;
        c.rope_base_swa = meta.opt_f32("rope.freq_base_swa")?.unwrap_or(10000.0);
    }
    Ok(c)
}

fn swa_layers(meta: &Meta, n_layer: usize) -> Result<Vec<bool>, ModelError> {
    let key = format!("{}.attention.sliding_window_pattern", meta.arch);
    let pattern = match meta.file.get(&key) {
        None => DEFAULT_SWA_PATTERN,
        Some(Value::Array(items)) => {
            let flags: Option<Vec<bool>> = items.values().map(|v| v.as_bool()).collect();
            return match flags {
                Some(f) if f.len() == n_layer => Ok(f),
                _ => Err(ModelError::BadMetadata { key, expected: "one bool per layer" }),
            };
        }
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or(ModelError::BadMetadata { key, expected: "a non-negative integer" })?,
    };
    // As llama.cpp: pattern 0 means every layer is local; otherwise the last of each group of
    // `pattern` layers is global.
    Ok((0..n_layer).map(|il| pattern == 0 || il % pattern < pattern - 1).collect())
}
