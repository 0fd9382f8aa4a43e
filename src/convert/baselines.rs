//! Baselines at the same active-parameter fraction, exported in the same format:
//! - static structured pruning of MLP neurons (one expert; importance = calibration activation norm ×
//!   down-projection column norm), attention dense;
//! - MoEfication: neurons clustered by co-activation into E groups, tokens labelled by the group that
//!   fires most, router = the normalised mean MLP input of each label (cluster centroid), each expert
//!   = the neurons most active on its tokens; attention dense.
//!
//! Both spend the whole budget in the MLP: k neurons per token with
//! `attn_dense + 3·d·k·L = p · dense`.

use super::converted::{ConvertedLayer, ConvertedModel, Method};
use super::dense::DenseModel;
use super::forward::{forward, linear, MaskSource};
use super::{ConvertError, Result};
use candle_core::{DType, Tensor};

/// Records each layer's MLP input h2 during a dense forward.
struct RecordMlpInputs {
    h2: Vec<Vec<Tensor>>,
}

impl MaskSource for RecordMlpInputs {
    fn attn_masks(&mut self, _: usize, _: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, None))
    }
    fn mlp_mask(&mut self, l: usize, h2: &Tensor) -> Result<Option<Tensor>> {
        self.h2[l].push(h2.clone());
        Ok(None)
    }
}

/// Per layer: the MLP inputs [N, d] and the absolute neuron activations |act(g)·u| [N, m].
pub(super) fn calibration_activations(
    model: &DenseModel,
    windows: &[&[u32]],
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut rec = RecordMlpInputs {
        h2: vec![Vec::new(); model.config.n_layers],
    };
    for w in windows {
        forward(model, w, &mut rec)?;
    }
    model
        .layers
        .iter()
        .zip(rec.h2)
        .map(|(lw, hs)| {
            let h2 = Tensor::cat(&hs, 0)?;
            let gelu = model.config.arch.gelu_mlp();
            let act = (super::forward::activation(gelu, &linear(&h2, &lw.w_gate, None)?)?
                * linear(&h2, &lw.w_up, None)?)?
            .abs()?;
            Ok((h2, act))
        })
        .collect()
}

/// Per layer, each MLP neuron's importance: the norm of its activation over the calibration tokens
/// times the norm of its down-projection column (what it can add to the residual stream).
pub fn neuron_importance(model: &DenseModel, calib: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
    let acts = calibration_activations(model, calib)?;
    model
        .layers
        .iter()
        .zip(&acts)
        .map(|(lw, (_, act))| {
            let act_norm: Vec<f32> = act.sqr()?.sum(0)?.sqrt()?.to_vec1()?;
            let w_norm: Vec<f32> = lw.w_down.sqr()?.sum(0)?.sqrt()?.to_vec1()?;
            Ok(act_norm.iter().zip(&w_norm).map(|(a, w)| a * w).collect())
        })
        .collect()
}

/// Neurons per token that give active fraction `p` with attention dense.
pub fn mlp_budget(model: &DenseModel, p: f64) -> Result<usize> {
    let c = &model.config;
    if !(p > 0.0 && p <= 1.0) {
        return Err(ConvertError::InvalidArg(format!(
            "--p {p} must be in (0, 1]"
        )));
    }
    let attn = 2.0 * (c.d * (c.n_heads + c.n_kv_heads) * c.head_dim) as f64 * c.n_layers as f64;
    let k = ((p * c.dense_block_params() - attn) / (3.0 * (c.d * c.n_layers) as f64)).round();
    if k < 1.0 {
        return Err(ConvertError::InvalidArg(format!(
            "p = {p} is below the attention's share; a static MLP baseline cannot reach it"
        )));
    }
    Ok((k as usize).min(c.m))
}

fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

pub(super) fn finish(
    model: &DenseModel,
    layers: Vec<ConvertedLayer>,
    method: Method,
    p: f64,
    held_out: &[&[u32]],
) -> Result<ConvertedModel> {
    let mut cm = ConvertedModel {
        method,
        layers,
        target_p: p,
        measured_p: f64::NAN,
        output_mask: false,
        scale_pruned: false,
    };
    cm.measured_p = super::converted::measure_active(model, &cm, held_out)?;
    Ok(cm)
}

/// Static structured pruning of MLP neurons.
pub fn static_prune(
    model: &DenseModel,
    p: f64,
    calib: &[&[u32]],
    held_out: &[&[u32]],
) -> Result<ConvertedModel> {
    let c = &model.config;
    let k = mlp_budget(model, p)?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for score in neuron_importance(model, calib)? {
        let mut keep = vec![false; c.m];
        for i in top_k(&score, k) {
            keep[i] = true;
        }
        let router = Tensor::zeros((1, c.d), DType::F32, model.embed.device())?;
        layers.push(ConvertedLayer::from_expert_masks(
            &[keep],
            c.m,
            (0..c.head_dim).collect(),
            router,
            None,
        ));
    }
    finish(model, layers, Method::StaticPrune, p, held_out)
}

/// MoEfication with `n_experts` top-1 experts of `k` neurons each.
pub fn moefication(
    model: &DenseModel,
    p: f64,
    n_experts: usize,
    calib: &[&[u32]],
    held_out: &[&[u32]],
    seed: u64,
) -> Result<ConvertedModel> {
    let c = &model.config;
    if n_experts == 0 || n_experts > c.m {
        return Err(ConvertError::InvalidArg(format!(
            "--experts {n_experts} must be in 1..={}",
            c.m
        )));
    }
    let k = mlp_budget(model, p)?;
    let acts = calibration_activations(model, calib)?;
    let dev = model.embed.device();
    let mut layers = Vec::with_capacity(c.n_layers);
    for (h2, act) in &acts {
        // Neuron features: activation columns, unit norm (co-activation = cosine similarity).
        let feats = act.t()?.contiguous()?; // [m, N]
        let feats = feats.broadcast_div(&(feats.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-6)?)?;
        // Spherical k-means, centres seeded by evenly spaced neurons of a seeded permutation.
        let mut order: Vec<usize> = (0..c.m).collect();
        let mut state = seed.wrapping_add(0x9e37_79b9);
        for i in (1..order.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
        let init: Vec<u32> = (0..n_experts)
            .map(|e| order[e * c.m / n_experts] as u32)
            .collect();
        let mut centres = feats.index_select(&Tensor::from_vec(init, n_experts, dev)?, 0)?;
        let mut assign: Vec<u32> = Vec::new();
        for _ in 0..10 {
            assign = feats.matmul(&centres.t()?)?.argmax(1)?.to_vec1()?;
            let mut rows = Vec::with_capacity(n_experts);
            for e in 0..n_experts {
                let members: Vec<u32> = (0..c.m as u32)
                    .filter(|&i| assign[i as usize] == e as u32)
                    .collect();
                let row = if members.is_empty() {
                    centres.get(e)?
                } else {
                    feats
                        .index_select(&Tensor::from_vec(members.clone(), members.len(), dev)?, 0)?
                        .mean(0)?
                };
                rows.push(
                    (row.clone()
                        / (row.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64 + 1e-6))?,
                );
            }
            centres = Tensor::stack(&rows, 0)?;
        }
        // Label each token with the cluster whose neurons fire most on it.
        let assign_ref = &assign;
        let onehot: Vec<f32> = (0..c.m)
            .flat_map(|i| (0..n_experts).map(move |e| (e as u32 == assign_ref[i]) as u8 as f32))
            .collect();
        let member = Tensor::from_vec(onehot, (c.m, n_experts), dev)?;
        let labels: Vec<u32> = act.matmul(&member)?.argmax(1)?.to_vec1()?;
        let mean_act: Vec<f32> = act.mean(0)?.to_vec1()?;
        let mut masks = Vec::with_capacity(n_experts);
        let mut router_rows = Vec::with_capacity(n_experts);
        for e in 0..n_experts {
            let toks: Vec<u32> = (0..labels.len() as u32)
                .filter(|&t| labels[t as usize] == e as u32)
                .collect();
            let (score, centroid): (Vec<f32>, Tensor) = if toks.is_empty() {
                // No token prefers this cluster: its own neurons first, then the globally active ones.
                let s = (0..c.m)
                    .map(|i| mean_act[i] + if assign[i] == e as u32 { 1e6 } else { 0.0 })
                    .collect();
                (s, Tensor::zeros(c.d, DType::F32, dev)?)
            } else {
                let ti = Tensor::from_vec(toks.clone(), toks.len(), dev)?;
                (
                    act.index_select(&ti, 0)?.mean(0)?.to_vec1()?,
                    h2.index_select(&ti, 0)?.mean(0)?,
                )
            };
            let mut keep = vec![false; c.m];
            for i in top_k(&score, k) {
                keep[i] = true;
            }
            masks.push(keep);
            let norm = centroid.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
            router_rows.push(if norm > 0.0 {
                (centroid / norm)?
            } else {
                centroid
            });
        }
        let router = Tensor::stack(&router_rows, 0)?;
        layers.push(ConvertedLayer::from_expert_masks(
            &masks,
            c.m,
            (0..c.head_dim).collect(),
            router,
            None,
        ));
    }
    finish(model, layers, Method::Moefication, p, held_out)
}
