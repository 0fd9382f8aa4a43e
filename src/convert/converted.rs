//! The converted model as it will be exported: per layer the kept Q/K dims, the union neurons in
//! storage order, each expert's storage rows, the router and the V-mask head. Its deterministic
//! reference forward (argmax routing, `z + offset > 0` masks) gathers rows exactly as the runtime
//! will, and measures the active block parameters per token.

use super::dense::DenseModel;
use super::forward::{
    activation, apply_rope, attention, embed, head_norm, linear, post_norm, repeat_kv, rms_norm,
    softcap, split_heads, window_mask, Ropes,
};
use super::hyper::{v_head, HyperNet, MASK_OFFSET};
use super::{ConvertError, Result};
use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How the experts were made (`tomoe.method` in the file).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    ToMoe,
    StaticPrune,
    Moefication,
    Clustered,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::ToMoe => "tomoe",
            Method::StaticPrune => "static-prune",
            Method::Moefication => "moefication",
            Method::Clustered => "clustered",
        }
    }
}

/// The dynamic V-mask head of one layer (see docs/FORMAT.md).
#[derive(Clone)]
pub struct VMaskHead {
    pub w_a: Tensor,
    pub b_state: Tensor,
    pub ln_w: Tensor,
    pub ln_b: Tensor,
    pub w_dec: Tensor,
    /// `mask_j = z_j + offset > 0`.
    pub offset: f32,
    /// Cap on active dims, 0 = none.
    pub top_k: usize,
}

#[derive(Clone)]
pub struct ConvertedLayer {
    /// Kept head dims in the rotate-half layout, ascending, closed under j ↔ j ± hd/2.
    pub qk_keep: Vec<usize>,
    /// Dense neuron index of each storage row.
    pub union: Vec<usize>,
    /// Per expert, its storage rows, ascending.
    pub experts: Vec<Vec<usize>>,
    /// Router [E, d].
    pub router: Tensor,
    pub vmask: Option<VMaskHead>,
    /// Per expert, a vector [E, d] added to its MLP output (before any post-norm).
    pub expert_bias: Option<Tensor>,
}

#[derive(Clone)]
pub struct ConvertedModel {
    pub method: Method,
    pub layers: Vec<ConvertedLayer>,
    pub target_p: f64,
    /// Measured on held-out text by [`calibrate`] / [`reference_forward`].
    pub measured_p: f64,
    /// Semantics switches (docs/FORMAT.md): o_proj input masked by the query's V mask; `1/sqrt(dq)`.
    pub output_mask: bool,
    pub scale_pruned: bool,
}

/// How tokens pick experts in the reference forward.
#[derive(Copy, Clone, Debug)]
pub enum Routing {
    Learned,
    /// Uniformly random expert per (token, layer), from a seed: the "does the router matter" control.
    Random(u64),
    /// The expert whose output is nearest the dense MLP's ([`super::oracles::best_experts`]): what
    /// a perfect router would reach with these experts.
    BestExpert,
}

/// Orders neurons so that each expert's rows form few contiguous runs: neurons with the same
/// membership signature are adjacent, and signatures follow a greedy nearest-neighbour (Hamming)
/// path starting from the most shared one.
pub fn storage_order(members: &[Vec<bool>]) -> Vec<usize> {
    use std::collections::BTreeMap;
    let mut groups: BTreeMap<Vec<bool>, Vec<usize>> = BTreeMap::new();
    for (i, sig) in members.iter().enumerate() {
        if sig.iter().any(|&b| b) {
            groups.entry(sig.clone()).or_default().push(i);
        }
    }
    let mut sigs: Vec<(Vec<bool>, Vec<usize>)> = groups.into_iter().collect();
    let mut order = Vec::new();
    if sigs.is_empty() {
        return order;
    }
    let count = |s: &[bool]| s.iter().filter(|&&b| b).count();
    let first = (0..sigs.len())
        .max_by_key(|&i| (count(&sigs[i].0), std::cmp::Reverse(i)))
        .unwrap_or(0);
    let (mut cur, idx) = sigs.swap_remove(first);
    order.extend(idx);
    while !sigs.is_empty() {
        let dist = |s: &[bool]| s.iter().zip(&cur).filter(|(a, b)| a != b).count();
        let next = (0..sigs.len())
            .min_by_key(|&i| (dist(&sigs[i].0), std::cmp::Reverse(count(&sigs[i].0)), i))
            .unwrap_or(0);
        let (s, idx) = sigs.remove(next);
        order.extend(idx);
        cur = s;
    }
    order
}

/// Contiguous runs `(start, len)` of a sorted list of rows.
pub fn runs(rows: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &r in rows {
        match out.last_mut() {
            Some((s, l)) if *s + *l == r => *l += 1,
            _ => out.push((r, 1)),
        }
    }
    out
}

impl ConvertedLayer {
    /// Builds a layer from per-expert dense-neuron masks `[E][m]`: union, storage order, expert rows.
    pub fn from_expert_masks(
        masks: &[Vec<bool>],
        m: usize,
        qk_keep: Vec<usize>,
        router: Tensor,
        vmask: Option<VMaskHead>,
    ) -> ConvertedLayer {
        let members: Vec<Vec<bool>> = (0..m)
            .map(|i| masks.iter().map(|e| e[i]).collect())
            .collect();
        let union = storage_order(&members);
        let experts = (0..masks.len())
            .map(|e| {
                union
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| masks[e][n])
                    .map(|(row, _)| row)
                    .collect()
            })
            .collect();
        ConvertedLayer {
            qk_keep,
            union,
            experts,
            router,
            vmask,
            expert_bias: None,
        }
    }
}

/// Decodes the trained hypernetwork deterministically with the cut-off `z + 3 + shift > 0`.
pub fn decode(
    model: &DenseModel,
    hn: &HyperNet,
    shift: f64,
    target_p: f64,
    mlp_only: bool,
) -> Result<ConvertedModel> {
    let c = &model.config;
    let emb = hn.embeddings()?;
    let mut layers = Vec::with_capacity(c.n_layers);
    let thr = MASK_OFFSET + shift;
    for l in 0..c.n_layers {
        let z: Vec<Vec<f32>> = hn.mlp_logits(&emb, l)?.to_vec2()?;
        let masks: Vec<Vec<bool>> = z
            .iter()
            .map(|row| row.iter().map(|&v| v as f64 + thr > 0.0).collect())
            .collect();
        let zq: Vec<f32> = hn.qk_half_logits(&emb, l)?.to_vec1()?;
        let half = c.head_dim / 2;
        let mut keep_half: Vec<usize> = (0..half).filter(|&j| zq[j] as f64 + thr > 0.0).collect();
        if keep_half.is_empty() {
            // At least one RoPE pair stays, so attention scores stay defined.
            let best = (0..half)
                .max_by(|&a, &b| zq[a].total_cmp(&zq[b]))
                .unwrap_or(0);
            keep_half.push(best);
        }
        let qk_keep: Vec<usize> = keep_half
            .iter()
            .copied()
            .chain(keep_half.iter().map(|j| j + half))
            .collect();
        let g = |n: String| hn.get(&n).detach();
        let vmask = VMaskHead {
            w_a: g(format!("attn.{l}.va.w")),
            b_state: hn.attn_state(&emb, l)?.detach(),
            ln_w: g(format!("attn.{l}.vln.w")),
            ln_b: g(format!("attn.{l}.vln.b")),
            w_dec: g(format!("attn.{l}.vdec.w")),
            offset: thr as f32,
            top_k: 0,
        };
        let (qk_keep, vmask) = if mlp_only {
            ((0..c.head_dim).collect(), None)
        } else if c.arch.has_qk_and_post_norms() {
            // A Q/K norm needs the whole head: such heads keep every dim.
            ((0..c.head_dim).collect(), Some(vmask))
        } else {
            (qk_keep, Some(vmask))
        };
        layers.push(ConvertedLayer::from_expert_masks(
            &masks,
            c.m,
            qk_keep,
            g(format!("mlp.{l}.router")),
            vmask,
        ));
    }
    Ok(ConvertedModel {
        method: Method::ToMoe,
        layers,
        target_p,
        measured_p: f64::NAN,
        output_mask: false,
        scale_pruned: false,
    })
}

/// Per-token V mask from logits z [T, hd]: `z + offset > 0`, capped at top_k, at least one dim.
fn v_mask_rows(z: &[Vec<f32>], offset: f32, top_k: usize) -> Vec<Vec<f32>> {
    z.iter()
        .map(|row| {
            let mut on: Vec<usize> = (0..row.len()).filter(|&j| row[j] + offset > 0.0).collect();
            if top_k > 0 && on.len() > top_k {
                on.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                on.truncate(top_k);
            }
            if on.is_empty() {
                on.push(
                    (0..row.len())
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                        .unwrap_or(0),
                );
            }
            let mut m = vec![0f32; row.len()];
            for j in on {
                m[j] = 1.0;
            }
            m
        })
        .collect()
}

/// What a reference forward measured.
#[derive(Clone, Debug, Default)]
pub struct ForwardStats {
    /// Active block parameters per token / dense block parameters, averaged over tokens.
    pub active_fraction: f64,
    /// Tokens routed to each expert, per layer.
    pub expert_counts: Vec<Vec<usize>>,
}

fn idx_tensor(idx: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<u32>>(),
        idx.len(),
        dev,
    )?)
}

/// The converted model's deterministic forward: logits [T, vocab] and the measured statistics.
pub fn reference_forward(
    model: &DenseModel,
    cm: &ConvertedModel,
    tokens: &[u32],
    routing: Routing,
) -> Result<(Tensor, ForwardStats)> {
    let c = &model.config;
    if cm.layers.len() != c.n_layers {
        return Err(ConvertError::InvalidArg(format!(
            "converted model has {} layers, dense {}",
            cm.layers.len(),
            c.n_layers
        )));
    }
    let dev = model.embed.device();
    let t = tokens.len();
    let hd = c.head_dim;
    if c.arch.has_qk_and_post_norms() && cm.layers.iter().any(|l| l.qk_keep.len() != hd) {
        return Err(ConvertError::Unsupported(
            "pruned Q/K dims with Q/K norms (a norm needs the whole head)".into(),
        ));
    }
    let mut x = embed(model, tokens)?;
    let ropes = Ropes::new(c, t, dev)?;
    let causal = window_mask(t, None, dev)?;
    let local = match c.gemma3.as_ref().and_then(|g| g.sliding_window) {
        Some(w) => Some(window_mask(t, Some(w), dev)?),
        None => None,
    };
    let groups = c.n_heads / c.n_kv_heads;
    let dh = (c.d * (c.n_heads + c.n_kv_heads)) as f64;
    let mut active = 0.0f64;
    let mut rng = match routing {
        Routing::Random(s) => Some(ChaCha8Rng::seed_from_u64(s)),
        Routing::Learned | Routing::BestExpert => None,
    };
    let mut stats = ForwardStats::default();
    for (l, (lw, cl)) in model.layers.iter().zip(&cm.layers).enumerate() {
        let h1 = rms_norm(&x, &lw.attn_norm, c.rms_eps)?;
        let (cos, sin) = ropes.layer(c, l);
        // Q/K: gather the kept rows of every head; RoPE at full hd, gathered at the kept dims.
        let dq = cl.qk_keep.len();
        let rows = |heads: usize| -> Vec<usize> {
            (0..heads)
                .flat_map(|h| cl.qk_keep.iter().map(move |&j| h * hd + j))
                .collect()
        };
        let (qr, kr) = (
            idx_tensor(&rows(c.n_heads), dev)?,
            idx_tensor(&rows(c.n_kv_heads), dev)?,
        );
        let keep = idx_tensor(&cl.qk_keep, dev)?;
        let (cos_k, sin_k) = (cos.index_select(&keep, 1)?, sin.index_select(&keep, 1)?);
        let bias = |b: &Option<Tensor>, r: &Tensor| -> Result<Option<Tensor>> {
            Ok(match b {
                Some(b) => Some(b.index_select(r, 0)?),
                None => None,
            })
        };
        let q = linear(
            &h1,
            &lw.wq.index_select(&qr, 0)?,
            bias(&lw.bq, &qr)?.as_ref(),
        )?;
        let k = linear(
            &h1,
            &lw.wk.index_select(&kr, 0)?,
            bias(&lw.bk, &kr)?.as_ref(),
        )?;
        // Q/K norms (only with every dim kept, checked above), then RoPE.
        let q = head_norm(split_heads(&q, c.n_heads)?, lw.q_norm.as_ref(), c.rms_eps)?;
        let k = head_norm(split_heads(&k, c.n_kv_heads)?, lw.k_norm.as_ref(), c.rms_eps)?;
        let q = apply_rope(&q, &cos_k, &sin_k)?;
        let k = apply_rope(&k, &cos_k, &sin_k)?;
        let mut v = split_heads(&linear(&h1, &lw.wv, lw.bv.as_ref())?, c.n_kv_heads)?;
        let mut vmask_t = None;
        match &cl.vmask {
            Some(vm) => {
                let z: Vec<Vec<f32>> =
                    v_head(&h1, &vm.w_a, &vm.b_state, &vm.ln_w, &vm.ln_b, &vm.w_dec)?.to_vec2()?;
                let rows = v_mask_rows(&z, vm.offset, vm.top_k);
                for r in &rows {
                    active += dh * r.iter().sum::<f32>() as f64;
                }
                let mt = Tensor::from_vec(rows.concat(), (t, hd), dev)?;
                v = v.broadcast_mul(&mt)?;
                vmask_t = Some(mt);
            }
            None => active += dh * (hd * t) as f64,
        }
        active += dh * (dq * t) as f64;
        let scale = if cm.scale_pruned && c.gemma3.is_none() {
            1.0 / (dq as f64).sqrt()
        } else {
            c.attn_scale()
        };
        let mask = match (&local, c.window(l)) {
            (Some(m), Some(_)) => m,
            _ => &causal,
        };
        let mut att = attention(
            &q,
            &repeat_kv(&k, groups)?,
            &repeat_kv(&v, groups)?,
            scale,
            mask,
        )?;
        if let (true, Some(mt)) = (cm.output_mask, &vmask_t) {
            let (_, w) = att.dims2()?;
            att = att
                .reshape((t, c.n_heads, hd))?
                .broadcast_mul(&mt.unsqueeze(1)?)?
                .reshape((t, w))?;
        }
        x = (x + post_norm(linear(&att, &lw.wo, None)?, lw.post_attn_norm.as_ref(), c.rms_eps)?)?;

        // MLP: union rows, per-token expert rows.
        let h2 = rms_norm(&x, &lw.ffn_norm, c.rms_eps)?;
        let n_exp = cl.experts.len();
        let choice: Vec<usize> = match rng.as_mut() {
            Some(r) => (0..t).map(|_| r.gen_range(0..n_exp)).collect(),
            None if n_exp == 1 => vec![0; t],
            None if matches!(routing, Routing::BestExpert) => {
                super::oracles::best_experts(c.arch.gelu_mlp(), lw, cl, &h2)?
            }
            None => linear(&h2, &cl.router, None)?
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|e| e as usize)
                .collect(),
        };
        let mut counts = vec![0usize; n_exp];
        let u = cl.union.len();
        let mut row_mask = vec![0f32; t * u];
        for (ti, &e) in choice.iter().enumerate() {
            counts[e] += 1;
            active += (3 * c.d * cl.experts[e].len()) as f64;
            for &r in &cl.experts[e] {
                row_mask[ti * u + r] = 1.0;
            }
        }
        stats.expert_counts.push(counts);
        if u > 0 {
            let ui = idx_tensor(&cl.union, dev)?;
            let gate = linear(&h2, &lw.w_gate.index_select(&ui, 0)?, None)?;
            let up = linear(&h2, &lw.w_up.index_select(&ui, 0)?, None)?;
            let act = ((activation(c.arch.gelu_mlp(), &gate)? * up)?
                * Tensor::from_vec(row_mask, (t, u), dev)?)?;
            let down_t = lw.w_down.index_select(&ui, 1)?.t()?; // [u, d]: one row per neuron
            let mut y = act.matmul(&down_t)?;
            if let Some(b) = &cl.expert_bias {
                let picked: Vec<u32> = choice.iter().map(|&e| e as u32).collect();
                y = (y + b.index_select(&Tensor::from_vec(picked, t, dev)?, 0)?)?;
            }
            x = (x + post_norm(y, lw.post_ffn_norm.as_ref(), c.rms_eps)?)?;
        }
    }
    let h = rms_norm(&x, &model.output_norm, c.rms_eps)?;
    let logits = softcap(c, linear(&h, model.output_weight(), None)?.to_dtype(DType::F32)?)?;
    stats.active_fraction = active / (t as f64 * c.dense_block_params());
    Ok((logits, stats))
}

/// Active fraction over several windows (token-weighted).
pub fn measure_active(model: &DenseModel, cm: &ConvertedModel, windows: &[&[u32]]) -> Result<f64> {
    let mut sum = 0.0;
    let mut n = 0usize;
    for w in windows {
        let (_, s) = reference_forward(model, cm, w, Routing::Learned)?;
        sum += s.active_fraction * w.len() as f64;
        n += w.len();
    }
    if n == 0 {
        return Err(ConvertError::Data(
            "no held-out windows to measure the active fraction on".into(),
        ));
    }
    Ok(sum / n as f64)
}

/// Finds the global cut-off shift whose deterministic model is closest to `target_p` on the held-out
/// windows (bisection: the active fraction grows with the shift). Returns the model, with
/// `measured_p` set, and the shift.
pub fn calibrate(
    model: &DenseModel,
    hn: &HyperNet,
    target_p: f64,
    mlp_only: bool,
    windows: &[&[u32]],
    iters: usize,
) -> Result<(ConvertedModel, f64)> {
    let eval = |shift: f64| -> Result<(ConvertedModel, f64)> {
        let mut cm = decode(model, hn, shift, target_p, mlp_only)?;
        cm.measured_p = measure_active(model, &cm, windows)?;
        let r = cm.measured_p;
        Ok((cm, r))
    };
    let (mut lo, mut hi) = (-30.0f64, 30.0f64);
    let mut best = eval(0.0)?;
    let mut best_shift = 0.0;
    for _ in 0..iters {
        if (best.1 - target_p).abs() < 0.002 {
            break;
        }
        let mid = 0.5 * (lo + hi);
        let cand = eval(mid)?;
        if cand.1 < target_p {
            lo = mid;
        } else {
            hi = mid;
        }
        if (cand.1 - target_p).abs() < (best.1 - target_p).abs() {
            best = cand;
            best_shift = mid;
        }
    }
    Ok((best.0, best_shift))
}

/// A converted model with every neuron, Q/K dim and V dim on (one expert = all neurons): its reference
/// forward must equal the dense forward. Used by tests and as the "p = 1" conversion.
pub fn all_on(model: &DenseModel, n_experts: usize) -> Result<ConvertedModel> {
    let c = &model.config;
    let dev = model.embed.device();
    let layers = (0..c.n_layers)
        .map(|_| {
            let masks = vec![vec![true; c.m]; n_experts];
            Ok(ConvertedLayer::from_expert_masks(
                &masks,
                c.m,
                (0..c.head_dim).collect(),
                Tensor::zeros((n_experts, c.d), DType::F32, dev)?,
                None,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(ConvertedModel {
        method: Method::ToMoe,
        layers,
        target_p: 1.0,
        measured_p: 1.0,
        output_mask: false,
        scale_pruned: false,
    })
}

/// Mean pairwise Jaccard overlap |S_a ∩ S_b| / |S_a ∪ S_b| of the expert sets of one layer
/// (1.0 = all experts identical; pairs of two empty experts count as identical).
pub fn mean_pairwise_jaccard(layer: &ConvertedLayer) -> f64 {
    let u = layer.union.len();
    let sets: Vec<Vec<bool>> = layer
        .experts
        .iter()
        .map(|rows| {
            let mut s = vec![false; u];
            for &r in rows {
                s[r] = true;
            }
            s
        })
        .collect();
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for a in 0..sets.len() {
        for b in a + 1..sets.len() {
            let inter = (0..u).filter(|&i| sets[a][i] && sets[b][i]).count();
            let uni = (0..u).filter(|&i| sets[a][i] || sets[b][i]).count();
            sum += if uni == 0 {
                1.0
            } else {
                inter as f64 / uni as f64
            };
            pairs += 1;
        }
    }
    if pairs == 0 {
        1.0
    } else {
        sum / pairs as f64
    }
}
