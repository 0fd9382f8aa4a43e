//! What routing could reach: oracles that see each token's MLP neuron outputs, which no router
//! can. Against learned routing they tell whether the router, the experts, or the structure of
//! routing itself falls short.
//! - [`best_experts`]: each token takes the converted file's expert whose output lies closest to
//!   the dense MLP's.
//! - [`OracleMasks`]: masks for the dense forward, attention dense, at a budget of k neurons per
//!   token: a token's own top-k neurons, the same chosen from the gate alone, the best whole
//!   groups of neurons, or the best of a set of expert masks ([`Selection`]).
//! - [`neuron_groups`] and [`token_experts`] build such groups and experts from calibration
//!   contributions by clustering.

use super::converted::ConvertedLayer;
use super::dense::{DenseModel, LayerWeights};
use super::baselines::calibration_activations;
use super::forward::{activation, linear, MaskSource};
use super::{ConvertError, Result};
use candle_core::{Tensor, D};

/// The dense MLP's neuron outputs before the down projection: `act(gate·h2) ⊙ (up·h2)`, [T, m].
fn neuron_outputs(gelu: bool, lw: &LayerWeights, h2: &Tensor) -> Result<Tensor> {
    Ok((activation(gelu, &linear(h2, &lw.w_gate, None)?)? * linear(h2, &lw.w_up, None)?)?)
}

/// ‖column i‖ of w [rows, cols] (dim 0) or ‖row i‖ (dim 1).
fn norms(w: &Tensor, dim: usize) -> Result<Tensor> {
    Ok(w.sqr()?.sum(dim)?.sqrt()?)
}

/// Per token, the expert of `cl` whose MLP output is nearest (L2) to the dense MLP output.
pub fn best_experts(gelu: bool, lw: &LayerWeights, cl: &ConvertedLayer, h2: &Tensor) -> Result<Vec<usize>> {
    let dev = h2.device();
    let act = neuron_outputs(gelu, lw, h2)?;
    let dense = linear(&act, &lw.w_down, None)?;
    let mut dist: Vec<Vec<f32>> = Vec::with_capacity(cl.experts.len());
    for (e, rows) in cl.experts.iter().enumerate() {
        let neurons: Vec<u32> = rows.iter().map(|&r| cl.union[r] as u32).collect();
        let mut y = if neurons.is_empty() {
            dense.zeros_like()?
        } else {
            let idx = Tensor::from_vec(neurons.clone(), neurons.len(), dev)?;
            linear(&act.index_select(&idx, 1)?, &lw.w_down.index_select(&idx, 1)?, None)?
        };
        if let Some(b) = &cl.expert_bias {
            y = y.broadcast_add(&b.get(e)?)?;
        }
        dist.push((&dense - y)?.sqr()?.sum(D::Minus1)?.to_vec1()?);
    }
    let t = h2.dims2()?.0;
    Ok((0..t)
        .map(|ti| (0..dist.len()).min_by(|&a, &b| dist[a][ti].total_cmp(&dist[b][ti])).unwrap_or(0))
        .collect())
}

/// How a token picks its MLP neurons, knowing their outputs. Per-layer sets index dense neurons.
pub enum Selection {
    /// Its own k neurons with the largest contribution `|act_i| · ‖down_i‖`.
    Neurons,
    /// Its own k neurons with the largest `|act(gate_i)| · ‖up_i‖ · ‖down_i‖`: what the gate alone
    /// tells, as a router that computed the whole gate projection would know.
    GateOnly,
    /// Whole groups, the largest summed squared contribution first, while they fit in k neurons.
    Groups(Vec<Vec<Vec<usize>>>),
    /// One of these masks, the one keeping the largest summed squared contribution.
    BestOf(Vec<Vec<Vec<usize>>>),
    /// [`Selection::BestOf`] plus, per layer, each expert's bias [E, d] added to its output.
    BestOfBiased(Vec<Vec<Vec<usize>>>, Vec<Tensor>),
}

/// A mask source for the dense forward that picks each token's neurons by a [`Selection`] at a
/// budget of `k` neurons per token; attention untouched.
pub struct OracleMasks<'a> {
    model: &'a DenseModel,
    k: usize,
    selection: &'a Selection,
    down_norms: Vec<Tensor>,
    up_norms: Vec<Tensor>,
    picked: Vec<u32>,
}

impl<'a> OracleMasks<'a> {
    pub fn new(model: &'a DenseModel, k: usize, selection: &'a Selection) -> Result<OracleMasks<'a>> {
        let per_layer = |f: &dyn Fn(&LayerWeights) -> Result<Tensor>| model.layers.iter().map(f).collect::<Result<Vec<_>>>();
        Ok(OracleMasks {
            model,
            k: k.min(model.config.m),
            selection,
            down_norms: per_layer(&|lw| norms(&lw.w_down, 0))?,
            up_norms: per_layer(&|lw| norms(&lw.w_up, 1))?,
            picked: Vec::new(),
        })
    }

    /// Each token's neuron scores, [T, m].
    fn scores(&self, l: usize, h2: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (gelu, lw) = (self.model.config.arch.gelu_mlp(), &self.model.layers[l]);
        let s = match self.selection {
            Selection::GateOnly => activation(gelu, &linear(h2, &lw.w_gate, None)?)?
                .abs()?
                .broadcast_mul(&self.up_norms[l])?,
            _ => neuron_outputs(gelu, lw, h2)?.abs()?,
        };
        Ok(s.broadcast_mul(&self.down_norms[l])?.to_vec2()?)
    }
}

/// The `k` largest of `row`, ties to the lower index.
fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx
}

fn energy(row: &[f32], set: &[usize]) -> f32 {
    set.iter().map(|&i| row[i] * row[i]).sum()
}

impl MaskSource for OracleMasks<'_> {
    fn attn_masks(&mut self, _: usize, _: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, None))
    }

    fn mlp_mask(&mut self, l: usize, h2: &Tensor) -> Result<Option<Tensor>> {
        let scores = self.scores(l, h2)?;
        let (t, m) = (scores.len(), self.model.config.m);
        let mut mask = vec![0f32; t * m];
        self.picked.clear();
        for (row, out) in scores.iter().zip(mask.chunks_mut(m)) {
            let keep: Vec<usize> = match self.selection {
                Selection::Neurons | Selection::GateOnly => top_k(row, self.k),
                Selection::Groups(groups) => {
                    let gs = &groups[l];
                    let e: Vec<f32> = gs.iter().map(|g| energy(row, g)).collect();
                    let mut order: Vec<usize> = (0..gs.len()).collect();
                    order.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
                    let mut keep = Vec::with_capacity(self.k);
                    for j in order {
                        if keep.len() + gs[j].len() <= self.k {
                            keep.extend_from_slice(&gs[j]);
                        }
                    }
                    keep
                }
                Selection::BestOf(experts) | Selection::BestOfBiased(experts, _) => {
                    let ex = &experts[l];
                    let best = (0..ex.len()).max_by(|&a, &b| energy(row, &ex[a]).total_cmp(&energy(row, &ex[b])).then(b.cmp(&a)));
                    self.picked.push(best.unwrap_or(0) as u32);
                    best.map(|b| ex[b].clone()).unwrap_or_default()
                }
            };
            for i in keep {
                out[i] = 1.0;
            }
        }
        Ok(Some(Tensor::from_vec(mask, (t, m), h2.device())?))
    }

    fn mlp_bias(&mut self, l: usize) -> Result<Option<Tensor>> {
        match self.selection {
            Selection::BestOfBiased(_, biases) => {
                let idx = Tensor::from_vec(self.picked.clone(), self.picked.len(), biases[l].device())?;
                Ok(Some(biases[l].index_select(&idx, 0)?))
            }
            _ => Ok(None),
        }
    }
}

/// Per expert, the mean output of the neurons it drops over the calibration tokens labelled with
/// it, [E, d]: the constant that best stands in for them (least squares).
pub fn expert_biases(gelu: bool, lw: &LayerWeights, h2: &Tensor, experts: &[Vec<usize>], labels: &[usize]) -> Result<Tensor> {
    let act = neuron_outputs(gelu, lw, h2)?;
    let (e, m) = (experts.len(), act.dims2()?.1);
    let counts: Vec<f32> = (0..e).map(|j| labels.iter().filter(|&&x| x == j).count().max(1) as f32).collect();
    let sums = one_hot(labels, e, h2.device())?.t()?.matmul(&act)?;
    let means = sums.broadcast_div(&Tensor::from_vec(counts, (e, 1), h2.device())?)?;
    let dropped = (1.0 - membership(experts, m, h2.device())?.t()?)?;
    linear(&(means * dropped)?, &lw.w_down, None)
}

/// Layer `lw`'s neuron contributions `|act_i| · ‖down_i‖` [N, m] for MLP inputs `h2` [N, d].
pub fn layer_contributions(gelu: bool, lw: &LayerWeights, h2: &Tensor) -> Result<Tensor> {
    Ok(neuron_outputs(gelu, lw, h2)?.abs()?.broadcast_mul(&norms(&lw.w_down, 0)?)?)
}

/// [T, m] with 1 at the neurons of each row's expert.
pub fn expert_mask(experts: &[Vec<usize>], picks: &[usize], m: usize, dev: &candle_core::Device) -> Result<Tensor> {
    Ok(one_hot(picks, experts.len(), dev)?.matmul(&membership(experts, m, dev)?.t()?)?)
}

/// Per layer, the MLP inputs h2 [N, d] and the neuron contributions `|act_i| · ‖down_i‖` [N, m]
/// of every token of `windows`.
pub fn contributions(model: &DenseModel, windows: &[&[u32]]) -> Result<Vec<(Tensor, Tensor)>> {
    calibration_activations(model, windows)?
        .into_iter()
        .zip(&model.layers)
        .map(|((h2, act), lw)| Ok((h2, act.broadcast_mul(&norms(&lw.w_down, 0)?)?)))
        .collect()
}

/// Rows of x scaled to unit L2 norm.
fn unit_rows(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&(x.sqr()?.sum_keepdim(1)?.sqrt()? + 1e-12)?)?)
}

/// Mean of the rows of `x` [n, f] per label, unit norm; a label with no row keeps `old`'s row.
fn centres(x: &Tensor, labels: &[usize], old: &Tensor) -> Result<Tensor> {
    let k = old.dims2()?.0;
    let sums = one_hot(labels, k, x.device())?.t()?.matmul(x)?;
    let counts: Vec<usize> = (0..k).map(|j| labels.iter().filter(|&&l| l == j).count()).collect();
    let rows = (0..k)
        .map(|j| if counts[j] == 0 { old.get(j) } else { sums.get(j) })
        .collect::<candle_core::Result<Vec<_>>>()?;
    unit_rows(&Tensor::stack(&rows, 0)?)
}

/// Seed centres: rows of `x` at evenly spaced positions.
fn seed_centres(x: &Tensor, k: usize) -> Result<Tensor> {
    let n = x.dims2()?.0;
    let idx: Vec<u32> = (0..k).map(|j| (j * n / k) as u32).collect();
    Ok(x.index_select(&Tensor::from_vec(idx, k, x.device())?, 0)?)
}

/// Neurons in `m / g` groups of exactly `g` that fire together: balanced spherical k-means over
/// the neurons' centred contribution columns (co-activation), each neuron to its most similar
/// centre with room left, most similar pairs first. `contrib` is [N, m]; `g` must divide m.
pub fn neuron_groups(contrib: &Tensor, g: usize) -> Result<Vec<Vec<usize>>> {
    let cols = contrib.t()?.contiguous()?;
    let feats = unit_rows(&cols.broadcast_sub(&cols.mean_keepdim(1)?)?)?;
    let m = feats.dims2()?.0;
    if g == 0 || m % g != 0 {
        return Err(ConvertError::InvalidArg(format!("groups of {g} do not divide {m} neurons")));
    }
    let n_groups = m / g;
    let mut c = seed_centres(&feats, n_groups)?;
    let mut labels = vec![0usize; m];
    for _ in 0..10 {
        let sim: Vec<Vec<f32>> = feats.matmul(&c.t()?)?.to_vec2()?;
        let mut pairs: Vec<(f32, usize, usize)> =
            sim.iter().enumerate().flat_map(|(i, r)| r.iter().enumerate().map(move |(j, &s)| (s, i, j))).collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut room, mut placed) = (vec![g; n_groups], vec![false; m]);
        for (_, i, j) in pairs {
            if !placed[i] && room[j] > 0 {
                placed[i] = true;
                room[j] -= 1;
                labels[i] = j;
            }
        }
        c = centres(&feats, &labels, &c)?;
    }
    Ok((0..n_groups).map(|j| (0..m).filter(|&i| labels[i] == j).collect()).collect())
}

/// `e` expert masks of `k` neurons from tokens that need the same neurons: spherical k-means of
/// the tokens' squared-contribution rows seeds them, each expert the k neurons with the largest
/// summed squared contribution over its cluster's tokens; then, as Lloyd's iterations on what a
/// mask keeps, each token moves to the expert keeping most of its contribution and each expert
/// becomes its tokens' top k again. `contrib` is [N, m].
pub fn token_experts(contrib: &Tensor, e: usize, k: usize) -> Result<Vec<Vec<usize>>> {
    if e == 0 || e > contrib.dims2()?.0 {
        return Err(ConvertError::InvalidArg(format!("{e} experts from {} tokens", contrib.dims2()?.0)));
    }
    let sq = contrib.sqr()?;
    let feats = unit_rows(&sq)?;
    let mut c = seed_centres(&feats, e)?;
    let mut labels = Vec::new();
    for _ in 0..15 {
        labels = argmax_rows(&feats.matmul(&c.t()?)?)?;
        c = centres(&feats, &labels, &c)?;
    }
    let mut experts = top_k_per_label(&sq, &labels, e, k)?;
    for _ in 0..10 {
        labels = best_expert_labels(&sq, &experts)?;
        let next = top_k_per_label(&sq, &labels, e, k)?;
        if next == experts {
            break;
        }
        experts = next;
    }
    Ok(experts)
}

pub fn argmax_rows(x: &Tensor) -> Result<Vec<usize>> {
    Ok(x.argmax(D::Minus1)?.to_vec1::<u32>()?.into_iter().map(|j| j as usize).collect())
}

/// [N, k] with 1 at each row's label.
pub fn one_hot(labels: &[usize], k: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * k];
    for (i, &j) in labels.iter().enumerate() {
        v[i * k + j] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), k), dev)?)
}

/// Per token (row of the squared contributions `sq` [N, m]), the expert keeping the most of it.
pub fn best_expert_labels(sq: &Tensor, experts: &[Vec<usize>]) -> Result<Vec<usize>> {
    argmax_rows(&sq.matmul(&membership(experts, sq.dims2()?.1, sq.device())?)?)
}

/// [m, E] with 1 where neuron i belongs to expert e.
fn membership(experts: &[Vec<usize>], m: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let mut member = vec![0f32; m * experts.len()];
    for (e, set) in experts.iter().enumerate() {
        for &i in set {
            member[i * experts.len() + e] = 1.0;
        }
    }
    Ok(Tensor::from_vec(member, (m, experts.len()), dev)?)
}

/// Per label, the k neurons of largest summed `sq` over its rows, ascending; a label with no row
/// keeps the k of largest sum over all rows.
fn top_k_per_label(sq: &Tensor, labels: &[usize], e: usize, k: usize) -> Result<Vec<Vec<usize>>> {
    let mass: Vec<Vec<f32>> = one_hot(labels, e, sq.device())?.t()?.matmul(sq)?.to_vec2()?;
    let all: Vec<f32> = sq.sum(0)?.to_vec1()?;
    Ok(mass
        .iter()
        .map(|row| {
            let empty = row.iter().all(|&v| v == 0.0);
            let mut set = top_k(if empty { &all } else { row }, k);
            set.sort_unstable();
            set
        })
        .collect())
}
