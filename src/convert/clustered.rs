//! Token-clustered experts with fitted routers: a conversion without distillation.
//!
//! Layer after layer, from the MLP inputs h2 that the layers converted before it produce (as the
//! runtime will feed them, not the dense model's):
//! 1. tokens are clustered by which neurons they need (their squared contributions
//!    `(|act_i| · ‖down_i‖)²`, [`token_experts`]); each cluster's expert is the k neurons it
//!    needs most, k the MLP budget of the active fraction p with attention dense;
//! 2. each token is labelled with the expert that keeps the most of its contribution;
//! 3. the router `[E, d]` is fitted to those labels from h2 (softmax regression, full batch,
//!    AdamW);
//! 4. each expert gets a bias: the mean output of the neurons it drops over the tokens its router
//!    sends it ([`expert_biases`]).
//!
//! Why: with a perfect router, such experts keep far more of what each token's own top-k neurons
//! keep than the distilled ToMoE experts do, which are little more than one static mask
//! (docs/CONVERSION.md, "How much routing could gain").

use super::baselines::{finish, mlp_budget};
use super::converted::{ConvertedLayer, ConvertedModel, Method};
use super::dense::DenseModel;
use super::forward::{attention_block, embed, mlp_block, rms_norm, NoMasks, Ropes};
use super::oracles::{
    argmax_rows, best_expert_labels, expert_biases, expert_mask, layer_contributions, one_hot, token_experts,
};
use super::train::AdamW;
use super::{ConvertError, Result};
use candle_core::{DType, Tensor, Var, D};

/// Steps of the router fit and its learning rate.
const ROUTER_STEPS: usize = 300;
const ROUTER_LR: f64 = 1e-2;

/// Softmax regression without bias from `x` [N, d] to `labels`: the router [E, d] and the share
/// of tokens it labels right.
pub fn fit_router(x: &Tensor, labels: &[usize], n_experts: usize) -> Result<(Tensor, f64)> {
    let (n, d) = x.dims2()?;
    if labels.len() != n || labels.iter().any(|&l| l >= n_experts) {
        return Err(ConvertError::InvalidArg(format!(
            "router fit: {} labels in 0..{n_experts} wanted for {n} rows",
            labels.len()
        )));
    }
    let target = one_hot(labels, n_experts, x.device())?;
    let w = Var::from_tensor(&Tensor::zeros((n_experts, d), DType::F32, x.device())?)?;
    let vars = [("router".to_string(), w.clone())];
    let mut opt = AdamW::new(&vars, ROUTER_LR, 0.0)?;
    for _ in 0..ROUTER_STEPS {
        let logits = x.matmul(&w.as_tensor().t()?)?;
        let top = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits.broadcast_sub(&top)?.exp()?.sum_keepdim(D::Minus1)?.log()? + top)?;
        let picked = (&logits * &target)?.sum_keepdim(D::Minus1)?;
        let nll = ((lse - picked)?.sum_all()? / n as f64)?;
        opt.step(&vars, &nll)?;
    }
    let w = w.as_tensor().detach();
    let got: Vec<u32> = x.matmul(&w.t()?)?.argmax(D::Minus1)?.to_vec1()?;
    let right = got.iter().zip(labels).filter(|(&a, &b)| a as usize == b).count();
    Ok((w, right as f64 / n.max(1) as f64))
}

/// The converted model: `n_experts` token-clustered experts per layer, attention dense.
///
/// Layer after layer: each layer's experts and router are fitted on the MLP inputs that the
/// layers converted before it produce, as the runtime will feed them, not the dense model's.
pub fn clustered(
    model: &DenseModel,
    p: f64,
    n_experts: usize,
    calib: &[&[u32]],
    held_out: &[&[u32]],
) -> Result<ConvertedModel> {
    let c = &model.config;
    if n_experts == 0 {
        return Err(ConvertError::InvalidArg("--experts must be at least 1".into()));
    }
    let k = mlp_budget(model, p)?;
    let dev = model.embed.device();
    let gelu = c.arch.gelu_mlp();
    let mut xs = calib.iter().map(|w| embed(model, w)).collect::<Result<Vec<_>>>()?;
    let ropes = calib.iter().map(|w| Ropes::new(c, w.len(), dev)).collect::<Result<Vec<_>>>()?;
    let mut layers = Vec::with_capacity(c.n_layers);
    for (l, lw) in model.layers.iter().enumerate() {
        let mids = xs
            .iter()
            .zip(&ropes)
            .map(|(x, r)| attention_block(model, l, x, r, &mut NoMasks))
            .collect::<Result<Vec<_>>>()?;
        let h2s = mids.iter().map(|m| rms_norm(m, &lw.ffn_norm, c.rms_eps)).collect::<Result<Vec<_>>>()?;
        let h2 = Tensor::cat(&h2s, 0)?;
        let contrib = layer_contributions(gelu, lw, &h2)?;
        let experts = token_experts(&contrib, n_experts, k)?;
        let labels = best_expert_labels(&contrib.sqr()?, &experts)?;
        let (router, agree) = fit_router(&h2, &labels, n_experts)?;
        eprintln!("layer {l}: router picks the best expert for {:.1} % of the calibration tokens", 100.0 * agree);
        let picks = argmax_rows(&h2.matmul(&router.t()?)?)?;
        let bias = expert_biases(gelu, lw, &h2, &experts, &picks)?;
        let mut at = 0;
        xs = mids
            .iter()
            .zip(&h2s)
            .map(|(mid, h)| {
                let t = h.dims2()?.0;
                let mine = &picks[at..at + t];
                at += t;
                let mask = expert_mask(&experts, mine, c.m, dev)?;
                let idx = Tensor::from_vec(mine.iter().map(|&e| e as u32).collect(), t, dev)?;
                mlp_block(model, l, mid, h, Some(&mask), Some(&bias.index_select(&idx, 0)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let masks: Vec<Vec<bool>> = experts
            .iter()
            .map(|set| {
                let mut keep = vec![false; c.m];
                set.iter().for_each(|&i| keep[i] = true);
                keep
            })
            .collect();
        let mut layer = ConvertedLayer::from_expert_masks(&masks, c.m, (0..c.head_dim).collect(), router, None);
        layer.expert_bias = Some(bias);
        layers.push(layer);
    }
    finish(model, layers, Method::Clustered, p, held_out)
}
