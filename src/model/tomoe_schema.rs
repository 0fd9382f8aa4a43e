//! The names a ToMoE GGUF file adds to its base architecture's (docs/FORMAT.md): architecture
//! names, `tomoe.*` metadata keys and the ToMoE-only tensor names. The converter's writer
//! (`convert::export`) and the runtime's reader ([`super::tomoe`]) both take them from here, so the
//! two cannot drift apart.

/// `general.architecture` of a ToMoE file over a llama base (RoPE pairs adjacent).
pub const ARCH_LLAMA: &str = "tomoe-llama";
/// `general.architecture` of a ToMoE file over a qwen2 base (RoPE pairs by halves).
pub const ARCH_QWEN2: &str = "tomoe-qwen2";
/// `general.architecture` of a ToMoE file over a gemma3 base (RoPE pairs by halves).
pub const ARCH_GEMMA3: &str = "tomoe-gemma3";
/// The prefix shared by every ToMoE architecture name.
pub const ARCH_PREFIX: &str = "tomoe-";

/// The format version the converter writes and the runtime reads, in [`FORMAT_VERSION_KEY`].
pub const FORMAT_VERSION: u32 = 1;

/// u32: the ToMoE format version ([`FORMAT_VERSION`]).
pub const FORMAT_VERSION_KEY: &str = "tomoe.format_version";
/// String: the dense architecture the file was converted from (`llama`, `qwen2`, `gemma3`).
pub const BASE_ARCHITECTURE: &str = "tomoe.base_architecture";
/// String: how the experts were made (`tomoe`, `static-prune`, `moefication`).
pub const METHOD: &str = "tomoe.method";
/// String: the RoPE pairing of the stored Q/K rows, [`ROPE_PAIRING_ADJACENT`] or
/// [`ROPE_PAIRING_HALF`]; must agree with the architecture ([`rope_pairing`]).
pub const ROPE_PAIRING: &str = "tomoe.rope_pairing";
/// The value of [`ROPE_PAIRING`] in `tomoe-llama` files: pairs `(2i, 2i+1)`.
pub const ROPE_PAIRING_ADJACENT: &str = "adjacent";
/// The value of [`ROPE_PAIRING`] in `tomoe-qwen2` and `tomoe-gemma3` files: pairs `(i, i + hd/2)`.
pub const ROPE_PAIRING_HALF: &str = "half";
/// Bool: the o_proj input of every head is multiplied by the query token's V mask.
pub const OUTPUT_MASK: &str = "tomoe.attention.output_mask";
/// Bool: the softmax scale is `1/sqrt(dq)` instead of `1/sqrt(hd)`.
pub const SCALE_PRUNED: &str = "tomoe.attention.scale_pruned";
/// u32: the width of the V-mask heads.
pub const VMASK_HIDDEN_SIZE: &str = "tomoe.vmask.hidden_size";
/// f32: the LayerNorm epsilon of the V-mask heads.
pub const VMASK_LAYER_NORM_EPSILON: &str = "tomoe.vmask.layer_norm_epsilon";
/// Array of f32, one per layer: the V mask's cut-off offset.
pub const VMASK_OFFSET: &str = "tomoe.vmask.offset";
/// Array of u32, one per layer: the most V dims the mask keeps (0: no cap).
pub const VMASK_TOP_K: &str = "tomoe.vmask.top_k";
/// f32: the active fraction the conversion was asked for.
pub const TARGET_ACTIVE_FRACTION: &str = "tomoe.target_active_fraction";
/// f32: the active fraction the converter measured (active / dense block parameters per token).
pub const ACTIVE_FRACTION: &str = "tomoe.active_fraction";

/// Array of u32: layer `layer`'s kept Q/K head dims, in the stored pairing (absent: all kept).
pub fn qk_index(layer: usize) -> String {
    format!("tomoe.blk.{layer}.qk_index")
}

/// Array of u32: layer `layer`'s row runs, `start, len` pairs over its storage rows.
pub fn expert_runs(layer: usize) -> String {
    format!("tomoe.blk.{layer}.expert_runs")
}

/// Array of u32, `expert_count + 1`: where each expert's runs start in [`expert_runs`].
pub fn expert_offsets(layer: usize) -> String {
    format!("tomoe.blk.{layer}.expert_offsets")
}

/// The llama.cpp hyperparameter key `suffix` under the architecture `arch` (`{arch}.{suffix}`).
pub fn arch_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// [`arch_key`] suffix, u32: experts per layer.
pub const EXPERT_COUNT: &str = "expert_count";
/// [`arch_key`] suffix, u32: experts each token is routed to (1 in ToMoE files).
pub const EXPERT_USED_COUNT: &str = "expert_used_count";

/// The name of layer `layer`'s tensor `suffix` (`blk.{layer}.{suffix}`).
pub fn layer_tensor(layer: usize, suffix: &str) -> String {
    format!("blk.{layer}.{suffix}")
}

/// [`layer_tensor`] suffix, F32 `[d, E]`: the router (llama.cpp's name for it).
pub const ROUTER: &str = "ffn_gate_inp.weight";
/// [`layer_tensor`] suffix, F32 `[d, E]` (optional): per expert, a vector added to its MLP
/// output, standing in for the mean output of the neurons it drops (gpt-oss's name for it).
pub const EXPERT_BIAS: &str = "ffn_down_exps.bias";
/// [`layer_tensor`] suffix, `[d, u]`: the down projection transposed, a row per storage row.
pub const FFN_DOWN_T: &str = "ffn_down_t.weight";
/// [`layer_tensor`] suffix, `[d, hidden]`: the V-mask head's input matrix `W_a` (optional group
/// with the other `VMASK_*` tensors: absent, the layer's V is not masked).
pub const VMASK_IN_WEIGHT: &str = "vmask_in.weight";
/// [`layer_tensor`] suffix, F32 `[hidden]`: the V-mask head's input bias.
pub const VMASK_IN_BIAS: &str = "vmask_in.bias";
/// [`layer_tensor`] suffix, F32 `[hidden]`: the V-mask head's LayerNorm weight.
pub const VMASK_NORM_WEIGHT: &str = "vmask_norm.weight";
/// [`layer_tensor`] suffix, F32 `[hidden]`: the V-mask head's LayerNorm bias.
pub const VMASK_NORM_BIAS: &str = "vmask_norm.bias";
/// [`layer_tensor`] suffix, F32 `[hidden, hd]`: the V-mask head's output matrix `W_dec`.
pub const VMASK_OUT_WEIGHT: &str = "vmask_out.weight";

/// The [`ROPE_PAIRING`] value a ToMoE architecture requires; `None` for other architectures.
pub fn rope_pairing(arch: &str) -> Option<&'static str> {
    match arch {
        ARCH_LLAMA => Some(ROPE_PAIRING_ADJACENT),
        ARCH_QWEN2 | ARCH_GEMMA3 => Some(ROPE_PAIRING_HALF),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formatted names are docs/FORMAT.md's.
    #[test]
    fn names_match_the_format_document() {
        assert_eq!(qk_index(3), "tomoe.blk.3.qk_index");
        assert_eq!(expert_runs(0), "tomoe.blk.0.expert_runs");
        assert_eq!(expert_offsets(11), "tomoe.blk.11.expert_offsets");
        assert_eq!(arch_key(ARCH_LLAMA, EXPERT_COUNT), "tomoe-llama.expert_count");
        assert_eq!(layer_tensor(2, VMASK_OUT_WEIGHT), "blk.2.vmask_out.weight");
        assert_eq!(rope_pairing(ARCH_QWEN2), Some("half"));
        assert_eq!(rope_pairing(ARCH_GEMMA3), Some("half"));
        assert_eq!(rope_pairing("llama"), None);
        assert!(ARCH_LLAMA.starts_with(ARCH_PREFIX) && ARCH_QWEN2.starts_with(ARCH_PREFIX));
    }
}
