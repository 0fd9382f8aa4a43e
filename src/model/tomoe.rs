//! The ToMoE parts of a `tomoe-llama` / `tomoe-qwen2` / `tomoe-gemma3` file (docs/FORMAT.md),
//! validated at load so that the forward pass can index without checks: per layer the kept Q/K
//! dims, the experts' row runs, the router and the optional dynamic V-mask head.

use super::tomoe_schema as schema;
use super::weights::matrix;
use super::ModelError;
use crate::gguf::{GgufFile, Value};
use std::ops::Range;
use tomoe_quant::MatRef;

/// File-wide switches of the ToMoE semantics.
#[derive(Clone, Debug)]
pub struct TomoeConfig {
    pub n_expert: usize,
    /// The o_proj input of every head is multiplied by the query token's V mask.
    pub output_mask: bool,
    /// Softmax scale `1/sqrt(dq)` instead of `1/sqrt(hd)`.
    pub scale_pruned: bool,
    /// The converter's measured active fraction ([`super::tomoe_schema::ACTIVE_FRACTION`]), if present.
    pub active_fraction: Option<f32>,
}

/// The dynamic V mask of one layer: `z = W_dec · gelu(LayerNorm(W_a · h1 + b))`,
/// `mask_j = z_j + offset > 0` (at most `top_k` dims, at least the largest).
#[derive(Clone, Debug)]
pub struct VMask<'a> {
    pub hidden: usize,
    /// `hidden` rows of `d_model`, in the file's format (the other weights' when quantized).
    pub w_a: MatRef<'a>,
    pub b: Vec<f32>,
    pub ln_w: Vec<f32>,
    pub ln_b: Vec<f32>,
    pub ln_eps: f32,
    /// `head_dim` rows of `hidden`.
    pub w_dec: Vec<f32>,
    pub offset: f32,
    /// 0 = no cap.
    pub top_k: usize,
}

/// The kept Q/K dims of one layer's heads (all of them when the file prunes none).
#[derive(Clone, Debug)]
pub struct PrunedQk {
    /// Q/K dims kept per head.
    pub dq: usize,
    /// For each stored RoPE pair, the original pair whose frequency it rotates with.
    pub qk_pairs: Vec<usize>,
}

/// The MLP of one ToMoE layer: the union of its experts' rows and the router that picks one
/// expert per token.
#[derive(Clone, Debug)]
pub struct TomoeMlp<'a> {
    /// `union` rows of `d_model` each.
    pub gate: MatRef<'a>,
    pub up: MatRef<'a>,
    /// The transposed down projection (`ffn_down_t`): one row of `d_model` output weights per
    /// storage row of gate/up.
    pub down_t: MatRef<'a>,
    /// Router: `n_expert` rows of `d_model`.
    pub router: Vec<f32>,
    /// Per expert, `d_model` values added to its output (`ffn_down_exps.bias`), if the file has it.
    pub expert_bias: Option<Vec<f32>>,
    /// Per expert, its storage-row runs (disjoint, sorted).
    pub expert_runs: Vec<Vec<Range<usize>>>,
    /// Per expert, its storage rows (the runs, flattened).
    pub expert_rows: Vec<Vec<usize>>,
    /// Storage rows of the layer (`u`, the union of the experts).
    pub union: usize,
}

impl TomoeMlp<'_> {
    pub fn n_expert(&self) -> usize {
        self.expert_runs.len()
    }
}

fn bad(key: &str, expected: &'static str) -> ModelError {
    ModelError::BadMetadata { key: key.to_string(), expected }
}

fn u32_array(f: &GgufFile, key: &str) -> Result<Option<Vec<usize>>, ModelError> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .values()
            .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<Vec<usize>>>()
            .map(Some)
            .ok_or_else(|| bad(key, "an array of non-negative integers")),
        Some(_) => Err(bad(key, "an array of non-negative integers")),
    }
}

fn f32_array(f: &GgufFile, key: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    match f.get(key) {
        Some(Value::Array(items)) if items.len() == len => items
            .values()
            .map(|v| v.as_f32().filter(|x| x.is_finite()))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad(key, "finite floats")),
        Some(_) => Err(bad(key, "one float per layer")),
        None => Err(ModelError::MissingMetadata(key.to_string())),
    }
}

/// The file-wide part, checked against the architecture (`tomoe-llama` pairs RoPE dims
/// adjacently, `tomoe-qwen2` and `tomoe-gemma3` by halves).
pub(crate) fn config(f: &GgufFile, arch: &str) -> Result<TomoeConfig, ModelError> {
    match f.get(schema::FORMAT_VERSION_KEY).and_then(Value::as_u64) {
        Some(v) if v == u64::from(schema::FORMAT_VERSION) => {}
        Some(v) => {
            return Err(ModelError::Unsupported(format!(
                "ToMoE format version {v} (this runtime reads {})",
                schema::FORMAT_VERSION
            )))
        }
        None => return Err(ModelError::MissingMetadata(schema::FORMAT_VERSION_KEY.into())),
    }
    let pairing = f.get(schema::ROPE_PAIRING).and_then(Value::as_str);
    let want = schema::rope_pairing(arch).unwrap_or(schema::ROPE_PAIRING_HALF);
    if pairing != Some(want) {
        let expected = if want == schema::ROPE_PAIRING_ADJACENT { "\"adjacent\"" } else { "\"half\"" };
        return Err(bad(schema::ROPE_PAIRING, expected));
    }
    let count_key = schema::arch_key(arch, schema::EXPERT_COUNT);
    let n_expert = f
        .get(&count_key)
        .and_then(Value::as_u64)
        .and_then(|x| usize::try_from(x).ok())
        .filter(|&e| e > 0 && e <= 4096)
        .ok_or_else(|| bad(&count_key, "an expert count in 1..=4096"))?;
    if let Some(u) = f.get(&schema::arch_key(arch, schema::EXPERT_USED_COUNT)).and_then(Value::as_u64) {
        if u != 1 {
            return Err(ModelError::Unsupported(format!("ToMoE files route to one expert, this one to {u}")));
        }
    }
    let flag = |k: &str| f.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok(TomoeConfig {
        n_expert,
        output_mask: flag(schema::OUTPUT_MASK),
        scale_pruned: flag(schema::SCALE_PRUNED),
        active_fraction: f.get(schema::ACTIVE_FRACTION).and_then(Value::as_f32),
    })
}

/// Layer `il`'s kept Q/K dims (`tomoe.blk.N.qk_index`, all when absent), as stored pairs.
pub(crate) fn qk_shape(f: &GgufFile, il: usize, head_dim: usize, adjacent: bool) -> Result<PrunedQk, ModelError> {
    let key = schema::qk_index(il);
    let half = head_dim / 2;
    let Some(idx) = u32_array(f, &key)? else {
        return Ok(PrunedQk { dq: head_dim, qk_pairs: (0..half).collect() });
    };
    let dq = idx.len();
    let valid_order = idx.windows(2).all(|w| w[0] < w[1]) || !adjacent;
    if dq == 0 || dq % 2 != 0 || dq > head_dim || idx.iter().any(|&j| j >= head_dim) || !valid_order {
        return Err(bad(&key, "an even number of distinct head dims, below the head dimension"));
    }
    let pairs: Option<Vec<usize>> = if adjacent {
        // [2a, 2a+1, 2b, 2b+1, ...]
        idx.chunks_exact(2).map(|p| (p[0] % 2 == 0 && p[1] == p[0] + 1).then_some(p[0] / 2)).collect()
    } else {
        // [a, b, ..., a + hd/2, b + hd/2, ...], first half ascending
        let (lo, hi) = idx.split_at(dq / 2);
        let ascending = lo.windows(2).all(|w| w[0] < w[1]);
        lo.iter().zip(hi).map(|(&a, &b)| (ascending && a < half && b == a + half).then_some(a)).collect()
    };
    let qk_pairs = pairs.ok_or_else(|| bad(&key, "whole RoPE pairs in the file's pairing"))?;
    Ok(PrunedQk { dq, qk_pairs })
}

/// Layer `il`'s MLP (its experts as runs over the storage rows of `[gate, up, down_t]`, its
/// router) and its V-mask head.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer<'a>(
    f: &'a GgufFile,
    il: usize,
    n_layer: usize,
    tc: &TomoeConfig,
    d: usize,
    head_dim: usize,
    [gate, up, down_t]: [MatRef<'a>; 3],
    tensor: impl Fn(&str, &[usize]) -> Result<Vec<f32>, ModelError>,
) -> Result<(TomoeMlp<'a>, Option<VMask<'a>>), ModelError> {
    let union = gate.rows();
    let runs_key = schema::expert_runs(il);
    let offs_key = schema::expert_offsets(il);
    let runs = u32_array(f, &runs_key)?.ok_or_else(|| ModelError::MissingMetadata(runs_key.clone()))?;
    let offs = u32_array(f, &offs_key)?.ok_or_else(|| ModelError::MissingMetadata(offs_key.clone()))?;
    if runs.len() % 2 != 0 {
        return Err(bad(&runs_key, "start, length pairs"));
    }
    let n_runs = runs.len() / 2;
    let e = tc.n_expert;
    if offs.len() != e + 1 || offs[0] != 0 || offs[e] != n_runs || offs.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad(&offs_key, "expert_count + 1 non-decreasing run offsets from 0 to the number of runs"));
    }
    let mut expert_runs = Vec::with_capacity(e);
    let mut expert_rows = Vec::with_capacity(e);
    for x in 0..e {
        let mut rs: Vec<Range<usize>> = Vec::new();
        for r in offs[x]..offs[x + 1] {
            let (start, len) = (runs[2 * r], runs[2 * r + 1]);
            let end = start.checked_add(len).filter(|&end| len > 0 && end <= union);
            let end = end.ok_or_else(|| bad(&runs_key, "runs of length >= 1 inside the layer's storage rows"))?;
            if rs.last().is_some_and(|p: &Range<usize>| p.end > start) {
                return Err(bad(&runs_key, "each expert's runs disjoint and sorted"));
            }
            rs.push(start..end);
        }
        expert_rows.push(rs.iter().flat_map(|r| r.clone()).collect());
        expert_runs.push(rs);
    }
    let name = |suffix: &str| schema::layer_tensor(il, suffix);
    let router = tensor(&name(schema::ROUTER), &[d, e])?;
    let expert_bias = match f.tensor(&name(schema::EXPERT_BIAS)) {
        Some(_) => Some(tensor(&name(schema::EXPERT_BIAS), &[d, e])?),
        None => None,
    };
    let vmask = if f.tensor(&name(schema::VMASK_IN_WEIGHT)).is_some() {
        let hidden = f
            .get(schema::VMASK_HIDDEN_SIZE)
            .and_then(Value::as_u64)
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&h| h > 0 && h <= 65536)
            .ok_or_else(|| bad(schema::VMASK_HIDDEN_SIZE, "a positive width"))?;
        let offset = *f32_array(f, schema::VMASK_OFFSET, n_layer)?.get(il).expect("one per layer");
        let top_k = u32_array(f, schema::VMASK_TOP_K)?.and_then(|v| v.get(il).copied()).unwrap_or(0);
        let ln_eps = f.get(schema::VMASK_LAYER_NORM_EPSILON).and_then(Value::as_f32).unwrap_or(1e-5);
        Some(VMask {
            hidden,
            w_a: matrix(f, &name(schema::VMASK_IN_WEIGHT), hidden, d)?,
            b: tensor(&name(schema::VMASK_IN_BIAS), &[hidden])?,
            ln_w: tensor(&name(schema::VMASK_NORM_WEIGHT), &[hidden])?,
            ln_b: tensor(&name(schema::VMASK_NORM_BIAS), &[hidden])?,
            ln_eps,
            w_dec: tensor(&name(schema::VMASK_OUT_WEIGHT), &[hidden, head_dim])?,
            offset,
            top_k,
        })
    } else {
        None
    };
    let mlp = TomoeMlp {
        gate,
        up,
        down_t,
        router,
        expert_bias,
        expert_runs,
        expert_rows,
        union,
    };
    Ok((mlp, vmask))
}
