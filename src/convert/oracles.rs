//! What routing could reach: two oracles that see the dense MLP output, which no router can.
//! - [`best_experts`]: each token takes the file's expert whose output lies closest to the dense
//!   MLP's. Against learned routing it tells whether the router or the experts fall short.
//! - [`PerTokenTopK`]: each token keeps its own k neurons that add most to its output (no experts
//!   at all), attention dense: about the best any per-token choice of MLP neurons does at a budget.

use super::converted::ConvertedLayer;
use super::dense::{DenseModel, LayerWeights};
use super::forward::{activation, linear, MaskSource};
use super::Result;
use candle_core::{Tensor, D};

/// The dense MLP's neuron outputs before the down projection: `act(gate·h2) ⊙ (up·h2)`, [T, m].
fn neuron_outputs(gelu: bool, lw: &LayerWeights, h2: &Tensor) -> Result<Tensor> {
    Ok((activation(gelu, &linear(h2, &lw.w_gate, None)?)? * linear(h2, &lw.w_up, None)?)?)
}

/// Per token, the expert of `cl` whose MLP output is nearest (L2) to the dense MLP output.
pub fn best_experts(gelu: bool, lw: &LayerWeights, cl: &ConvertedLayer, h2: &Tensor) -> Result<Vec<usize>> {
    let dev = h2.device();
    let act = neuron_outputs(gelu, lw, h2)?;
    let dense = linear(&act, &lw.w_down, None)?;
    let mut dist: Vec<Vec<f32>> = Vec::with_capacity(cl.experts.len());
    for rows in &cl.experts {
        let neurons: Vec<u32> = rows.iter().map(|&r| cl.union[r] as u32).collect();
        let y = if neurons.is_empty() {
            dense.zeros_like()?
        } else {
            let idx = Tensor::from_vec(neurons.clone(), neurons.len(), dev)?;
            linear(&act.index_select(&idx, 1)?, &lw.w_down.index_select(&idx, 1)?, None)?
        };
        dist.push((&dense - y)?.sqr()?.sum(D::Minus1)?.to_vec1()?);
    }
    let t = h2.dims2()?.0;
    Ok((0..t)
        .map(|ti| (0..dist.len()).min_by(|&a, &b| dist[a][ti].total_cmp(&dist[b][ti])).unwrap_or(0))
        .collect())
}

/// A mask source for the dense forward: per token, the `k` neurons with the largest
/// `|act_i| · ‖down_i‖`, every other neuron off; attention untouched.
pub struct PerTokenTopK<'a> {
    model: &'a DenseModel,
    k: usize,
    down_norms: Vec<Tensor>,
}

impl<'a> PerTokenTopK<'a> {
    pub fn new(model: &'a DenseModel, k: usize) -> Result<PerTokenTopK<'a>> {
        let down_norms = model
            .layers
            .iter()
            .map(|lw| Ok(lw.w_down.sqr()?.sum(0)?.sqrt()?))
            .collect::<Result<_>>()?;
        Ok(PerTokenTopK { model, k, down_norms })
    }
}

impl MaskSource for PerTokenTopK<'_> {
    fn attn_masks(&mut self, _: usize, _: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, None))
    }

    fn mlp_mask(&mut self, l: usize, h2: &Tensor) -> Result<Option<Tensor>> {
        let gelu = self.model.config.arch.gelu_mlp();
        let score = neuron_outputs(gelu, &self.model.layers[l], h2)?
            .abs()?
            .broadcast_mul(&self.down_norms[l])?;
        let (t, m) = score.dims2()?;
        let k = self.k.min(m);
        let mut mask = vec![0f32; t * m];
        for (ti, row) in score.to_vec2::<f32>()?.iter().enumerate() {
            let mut idx: Vec<usize> = (0..m).collect();
            if k < m {
                idx.select_nth_unstable_by(k, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            }
            for &i in &idx[..k] {
                mask[ti * m + i] = 1.0;
            }
        }
        Ok(Some(Tensor::from_vec(mask, (t, m), h2.device())?))
    }
}
