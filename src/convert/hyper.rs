//! The hypernetwork that generates every mask, and the straight-through Gumbel estimators.
//!
//! Learned inputs [2L modules × E × 32] → bidirectional GRU over the module axis (64 per direction) →
//! a 128-d embedding per (module, expert). Module `2l` is layer l's attention, `2l+1` its MLP.
//! - MLP: mask logits `Linear(128→m)(gelu(LN(emb_e)))` per expert; router `Linear(d→E)` on h2.
//! - Attention: `e_l` = mean of the module's E embeddings. Q/K half-mask logits
//!   `Linear(128→hd/2)(gelu(LN(e_l)))`, repeated ×2 over rotate-half pairs; the dynamic V-mask head
//!   `W_dec · gelu(LN(W_a·h1 + e_l))` (`e_l` is the head's `b_state`).

use super::dense::DenseConfig;
use super::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const INPUT_DIM: usize = 32;
pub const GRU_HIDDEN: usize = 64;
pub const EMB_DIM: usize = 2 * GRU_HIDDEN;
pub const VMASK_HIDDEN: usize = 128;
pub const LN_EPS: f64 = 1e-5;
/// E[gelu(X)] for X ~ N(1, 1): the mean output of a unit LayerNorm with bias 1, through gelu.
const GELU_OF_UNIT_NORMAL_PLUS_ONE: f64 = 0.98;
/// The mask offset of the method: a mask is on when `z + 3 > 0`.
pub const MASK_OFFSET: f64 = 3.0;

/// Standard normal samples from a seeded generator (Box–Muller), so initialisation is reproducible.
pub fn randn_vec(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
        })
        .collect()
}

/// Uniform samples in (eps, 1-eps), the base of the Gumbel and logistic noise.
fn uniform_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(1e-6f32..1.0 - 1e-6)).collect()
}

/// Logistic noise `log U - log(1-U)` (difference of two Gumbels) of the given shape.
pub fn logistic_noise(rng: &mut ChaCha8Rng, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = uniform_vec(rng, n)
        .into_iter()
        .map(|u| u.ln() - (1.0 - u).ln())
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// Gumbel noise `-log(-log U)`.
pub fn gumbel_noise(rng: &mut ChaCha8Rng, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f32> = uniform_vec(rng, n)
        .into_iter()
        .map(|u| -(-u.ln()).ln())
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// Straight-through Gumbel-sigmoid: forward `round(sigmoid((z + noise + 3)/τ))`, gradient of the soft value.
pub fn st_gumbel_sigmoid(z: &Tensor, noise: Option<&Tensor>, tau: f64) -> Result<Tensor> {
    let zn = match noise {
        Some(n) => (z + n)?,
        None => z.clone(),
    };
    let soft = candle_nn::ops::sigmoid(&((zn + MASK_OFFSET)? / tau)?)?;
    let hard = soft.ge(0.5)?.to_dtype(DType::F32)?;
    Ok(((hard - &soft)?.detach() + soft)?)
}

/// Straight-through Gumbel-softmax over the last dim: forward one-hot of the argmax, soft gradient.
/// Returns (routing weights [T, E], the soft probabilities, the chosen expert per row).
pub fn st_gumbel_softmax(
    logits: &Tensor,
    noise: Option<&Tensor>,
    temp: f64,
) -> Result<(Tensor, Tensor, Vec<u32>)> {
    let ln = match noise {
        Some(n) => (logits + n)?,
        None => logits.clone(),
    };
    let soft = super::forward::softmax_last(&(ln / temp)?)?;
    let choice: Vec<u32> = soft.argmax(D::Minus1)?.to_vec1()?;
    let (t, e) = soft.dims2()?;
    let mut onehot = vec![0f32; t * e];
    for (i, &c) in choice.iter().enumerate() {
        onehot[i * e + c as usize] = 1.0;
    }
    let hard = Tensor::from_vec(onehot, (t, e), soft.device())?;
    Ok((((hard - &soft)?.detach() + &soft)?, soft, choice))
}

pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc
        .broadcast_div(&(var + LN_EPS)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)?)
}

/// All trainable parameters, in a fixed order (checkpoints and AdamW rely on it).
pub struct HyperNet {
    pub n_layers: usize,
    pub n_experts: usize,
    pub d: usize,
    pub m: usize,
    pub head_dim: usize,
    vars: Vec<(String, Var)>,
}

impl HyperNet {
    pub fn new(c: &DenseConfig, n_experts: usize, seed: u64, dev: &Device) -> Result<HyperNet> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut vars = Vec::new();
        let mut add =
            |name: String, shape: &[usize], std: f32, rng: &mut ChaCha8Rng| -> Result<()> {
                let n: usize = shape.iter().product();
                let v = if std == 0.0 {
                    vec![0.0; n]
                } else {
                    randn_vec(rng, n, std)
                };
                vars.push((name, Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?));
                Ok(())
            };
        let (l2, e, h) = (2 * c.n_layers, n_experts, GRU_HIDDEN);
        add("inputs".into(), &[l2, e, INPUT_DIM], 1.0, &mut rng)?;
        let gstd = 1.0 / (h as f32).sqrt();
        for dir in ["f", "b"] {
            add(
                format!("gru.{dir}.w_ih"),
                &[3 * h, INPUT_DIM],
                gstd,
                &mut rng,
            )?;
            add(format!("gru.{dir}.w_hh"), &[3 * h, h], gstd, &mut rng)?;
            add(format!("gru.{dir}.b_ih"), &[3 * h], 0.0, &mut rng)?;
            add(format!("gru.{dir}.b_hh"), &[3 * h], 0.0, &mut rng)?;
        }
        let ones = |n| Tensor::ones(n, DType::F32, dev);
        let dstd = 1.0 / (EMB_DIM as f32).sqrt();
        for l in 0..c.n_layers {
            add(format!("attn.{l}.ln.b"), &[EMB_DIM], 0.0, &mut rng)?;
            add(
                format!("attn.{l}.qk.w"),
                &[c.head_dim / 2, EMB_DIM],
                dstd,
                &mut rng,
            )?;
            add(format!("attn.{l}.qk.b"), &[c.head_dim / 2], 0.0, &mut rng)?;
            add(
                format!("attn.{l}.va.w"),
                &[VMASK_HIDDEN, c.d],
                1.0 / (c.d as f32).sqrt(),
                &mut rng,
            )?;
            add(format!("attn.{l}.vln.b"), &[VMASK_HIDDEN], 0.0, &mut rng)?;
            add(
                format!("attn.{l}.vdec.w"),
                &[c.head_dim, VMASK_HIDDEN],
                1.0 / (VMASK_HIDDEN as f32).sqrt(),
                &mut rng,
            )?;
            add(format!("mlp.{l}.ln.b"), &[EMB_DIM], 0.0, &mut rng)?;
            add(format!("mlp.{l}.dec.w"), &[c.m, EMB_DIM], dstd, &mut rng)?;
            add(format!("mlp.{l}.dec.b"), &[c.m], 0.0, &mut rng)?;
            add(
                format!("mlp.{l}.router"),
                &[n_experts, c.d],
                1.0 / (c.d as f32).sqrt(),
                &mut rng,
            )?;
        }
        // LayerNorm gains start at 1 (not random).
        for l in 0..c.n_layers {
            for name in [
                format!("attn.{l}.ln.w"),
                format!("attn.{l}.vln.w"),
                format!("mlp.{l}.ln.w"),
            ] {
                let n = if name.contains("vln") {
                    VMASK_HIDDEN
                } else {
                    EMB_DIM
                };
                vars.push((name, Var::from_tensor(&ones(n)?)?));
            }
        }
        Ok(HyperNet {
            n_layers: c.n_layers,
            n_experts,
            d: c.d,
            m: c.m,
            head_dim: c.head_dim,
            vars,
        })
    }

    /// Starts training from static pruning instead of from all-on masks: every expert of layer l
    /// keeps about the `k` neurons of highest `importance[l]` (the mask bias puts `z + 3` at
    /// `±2` standard deviations of log-importance around the k-th neuron; the random decoder weights
    /// make the experts differ a little), routers start at zero (uniform routing), and Q/K and V
    /// dims start on with a margin the mask noise rarely crosses. The active fraction then starts
    /// near its target with attention dense, where the baselines are, and distillation moves
    /// neurons between experts and budget between modules from there.
    pub fn init_from_importance(&self, importance: &[Vec<f32>], k: usize) -> Result<()> {
        let dev = self.get("inputs").device().clone();
        for (l, imp) in importance.iter().enumerate().take(self.n_layers) {
            let logs: Vec<f64> = imp.iter().map(|&v| (v as f64).max(1e-30).ln()).collect();
            let mut sorted = logs.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kk = k.clamp(1, sorted.len());
            // The cut between the k-th and (k+1)-th neuron.
            let cut = match sorted.get(kk) {
                Some(next) => 0.5 * (sorted[kk - 1] + next),
                None => sorted[kk - 1] - 1.0,
            };
            let n = logs.len() as f64;
            let mean = logs.iter().sum::<f64>() / n;
            let sd = (logs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
                .sqrt()
                .max(1e-6);
            let bias: Vec<f32> = logs
                .iter()
                .map(|v| (-MASK_OFFSET + (2.0 * (v - cut) / sd).clamp(-6.0, 6.0)) as f32)
                .collect();
            self.set(
                &format!("mlp.{l}.dec.b"),
                Tensor::from_vec(bias, self.m, &dev)?,
            )?;
            let router = self.get(&format!("mlp.{l}.router")).zeros_like()?;
            self.set(&format!("mlp.{l}.router"), router)?;
            let qk = Tensor::full(MASK_OFFSET as f32, self.head_dim / 2, &dev)?;
            self.set(&format!("attn.{l}.qk.b"), qk)?;
            // V logits `W_dec · gelu(LN(·))`, with no bias: the LN bias lifts the gelu outputs to
            // about 1 on average and a constant added to W_dec turns that into z ≈ +3.
            self.set(
                &format!("attn.{l}.vln.b"),
                Tensor::ones(VMASK_HIDDEN, DType::F32, &dev)?,
            )?;
            let w_dec = self.get(&format!("attn.{l}.vdec.w"));
            let lift = MASK_OFFSET / (VMASK_HIDDEN as f64 * GELU_OF_UNIT_NORMAL_PLUS_ONE);
            self.set(&format!("attn.{l}.vdec.w"), (w_dec + lift)?)?;
        }
        Ok(())
    }

    fn set(&self, name: &str, t: Tensor) -> Result<()> {
        let var = self
            .vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .expect("hypernetwork parameter name");
        var.set(&t)?;
        Ok(())
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn get(&self, name: &str) -> &Tensor {
        // Names are generated by `new`; a miss is a programming error inside this module.
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .expect("hypernetwork parameter name")
    }

    fn gru_dir(&self, dir: &str, xs: &[Tensor], reverse: bool) -> Result<Vec<Tensor>> {
        let (w_ih, w_hh) = (
            self.get(&format!("gru.{dir}.w_ih")),
            self.get(&format!("gru.{dir}.w_hh")),
        );
        let (b_ih, b_hh) = (
            self.get(&format!("gru.{dir}.b_ih")),
            self.get(&format!("gru.{dir}.b_hh")),
        );
        let hsz = GRU_HIDDEN;
        let mut h = Tensor::zeros((self.n_experts, hsz), DType::F32, xs[0].device())?;
        let mut out = vec![None; xs.len()];
        let order: Vec<usize> = if reverse {
            (0..xs.len()).rev().collect()
        } else {
            (0..xs.len()).collect()
        };
        for s in order {
            let gi = super::forward::linear(&xs[s], w_ih, Some(b_ih))?;
            let gh = super::forward::linear(&h, w_hh, Some(b_hh))?;
            let chunk = |t: &Tensor, i: usize| t.narrow(1, i * hsz, hsz);
            let r = candle_nn::ops::sigmoid(&(chunk(&gi, 0)? + chunk(&gh, 0)?)?)?;
            let z = candle_nn::ops::sigmoid(&(chunk(&gi, 1)? + chunk(&gh, 1)?)?)?;
            let n = (chunk(&gi, 2)? + (r * chunk(&gh, 2)?)?)?.tanh()?;
            h = ((z.affine(-1.0, 1.0)? * n)? + (z * &h)?)?;
            out[s] = Some(h.clone());
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every step visited"))
            .collect())
    }

    /// Embeddings per module: a list of 2L tensors [E, 128].
    pub fn embeddings(&self) -> Result<Vec<Tensor>> {
        let inputs = self.get("inputs");
        let xs: Vec<Tensor> = (0..2 * self.n_layers)
            .map(|s| inputs.get(s))
            .collect::<candle_core::Result<_>>()?;
        let f = self.gru_dir("f", &xs, false)?;
        let b = self.gru_dir("b", &xs, true)?;
        f.iter()
            .zip(&b)
            .map(|(f, b)| Ok(Tensor::cat(&[f, b], 1)?))
            .collect()
    }

    /// MLP mask logits of layer l, [E, m] (on when `z + 3 > 0`).
    pub fn mlp_logits(&self, emb: &[Tensor], l: usize) -> Result<Tensor> {
        let e = &emb[2 * l + 1];
        let g = layer_norm(
            e,
            self.get(&format!("mlp.{l}.ln.w")),
            self.get(&format!("mlp.{l}.ln.b")),
        )?
        .gelu_erf()?;
        super::forward::linear(
            &g,
            self.get(&format!("mlp.{l}.dec.w")),
            Some(self.get(&format!("mlp.{l}.dec.b"))),
        )
    }

    /// The attention module's state vector `e_l` `[128]` (mean over its E embeddings).
    pub fn attn_state(&self, emb: &[Tensor], l: usize) -> Result<Tensor> {
        Ok(emb[2 * l].mean(0)?)
    }

    /// Q/K half-mask logits of layer l, [hd/2].
    pub fn qk_half_logits(&self, emb: &[Tensor], l: usize) -> Result<Tensor> {
        let s = self.attn_state(emb, l)?.unsqueeze(0)?;
        let g = layer_norm(
            &s,
            self.get(&format!("attn.{l}.ln.w")),
            self.get(&format!("attn.{l}.ln.b")),
        )?
        .gelu_erf()?;
        Ok(super::forward::linear(
            &g,
            self.get(&format!("attn.{l}.qk.w")),
            Some(self.get(&format!("attn.{l}.qk.b"))),
        )?
        .squeeze(0)?)
    }

    /// V-mask logits z [T, hd] of layer l from the attention input h1 [T, d].
    pub fn v_logits(&self, emb: &[Tensor], l: usize, h1: &Tensor) -> Result<Tensor> {
        let b_state = self.attn_state(emb, l)?;
        v_head(
            h1,
            self.get(&format!("attn.{l}.va.w")),
            &b_state,
            self.get(&format!("attn.{l}.vln.w")),
            self.get(&format!("attn.{l}.vln.b")),
            self.get(&format!("attn.{l}.vdec.w")),
        )
    }

    /// Router logits [T, E] of layer l from the MLP input h2 [T, d].
    pub fn router_logits(&self, l: usize, h2: &Tensor) -> Result<Tensor> {
        super::forward::linear(h2, self.get(&format!("mlp.{l}.router")), None)
    }

    /// Current parameter values by name (for checkpoints).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Overwrites parameters from a checkpoint; every name must be present with the same shape.
    pub fn restore(&self, get: &dyn Fn(&str) -> Option<Tensor>) -> std::result::Result<(), String> {
        for (n, v) in &self.vars {
            let t = get(n).ok_or_else(|| format!("missing parameter `{n}`"))?;
            if t.dims() != v.dims() {
                return Err(format!(
                    "parameter `{n}` has shape {:?}, expected {:?}",
                    t.dims(),
                    v.dims()
                ));
            }
            v.set(&t).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The dynamic V-mask head: `W_dec · gelu_exact(LN(W_a·h + b_state))`, z [T, hd].
pub fn v_head(
    h: &Tensor,
    w_a: &Tensor,
    b_state: &Tensor,
    ln_w: &Tensor,
    ln_b: &Tensor,
    w_dec: &Tensor,
) -> Result<Tensor> {
    let a = super::forward::linear(h, w_a, Some(b_state))?;
    let g = layer_norm(&a, ln_w, ln_b)?.gelu_erf()?;
    super::forward::linear(&g, w_dec, None)
}

/// Repeats a rotate-half half-mask `[hd/2]` to the full head dim `[hd]` (dim j and j+hd/2 share a bit).
pub fn expand_half(half: &Tensor) -> Result<Tensor> {
    Ok(Tensor::cat(&[half, half], 0)?)
}
