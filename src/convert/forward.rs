//! The frozen dense model's forward pass (one sequence, all positions at once) with optional
//! multiplicative masks, as training sees it: a Q/K head-dim mask, a per-token V mask, a per-token MLP
//! neuron mask. The teacher is the same pass with no masks. Gemma 3's specifics (scaled embeddings,
//! Q/K norms, post-norms, sliding-window layers with their own RoPE base, GELU-gated MLP, logit
//! softcap) are helpers here that the converted model's reference forward shares.

use super::dense::{DenseConfig, DenseModel};
use super::Result;
use candle_core::{DType, Device, Tensor, D};

/// Supplies the masks of each layer from that layer's normalised hidden states.
pub trait MaskSource {
    /// From the attention input `h1` `[T, d]`: the Q/K dim mask `[hd]` and the V mask `[T, hd]`.
    fn attn_masks(&mut self, layer: usize, h1: &Tensor)
        -> Result<(Option<Tensor>, Option<Tensor>)>;
    /// From the MLP input `h2` [T, d]: the neuron mask [T, m].
    fn mlp_mask(&mut self, layer: usize, h2: &Tensor) -> Result<Option<Tensor>>;
    /// Added to the MLP output [T, d] of the last `mlp_mask` call's tokens, before any post-norm.
    fn mlp_bias(&mut self, _layer: usize) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The teacher: every mask off.
pub struct NoMasks;

impl MaskSource for NoMasks {
    fn attn_masks(&mut self, _: usize, _: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, None))
    }
    fn mlp_mask(&mut self, _: usize, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?
        .broadcast_mul(w)?)
}

/// `x · wᵀ (+ b)` for x [T, in], w [out, in].
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// The gradient path of `x · wᵀ` for a frozen `w`: forward returns the product computed outside the
/// graph, backward gives only `∂L/∂x = g · w`. Candle's matmul backward would also compute `∂L/∂w`,
/// as expensive as the input gradient and thrown away for the frozen model's weights.
struct FrozenLinearGrad {
    y: Tensor,
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinearGrad {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let v: Vec<f32> = self.y.flatten_all()?.to_vec1()?;
        Ok((candle_core::CpuStorage::F32(v), self.y.shape().clone()))
    }

    /// On the GPU the product stays there: the output is a device-to-device copy of it (the op
    /// cannot hand out `y`'s own buffer).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (storage, layout) = self.y.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(s) => Ok((s.try_clone(layout)?, self.y.shape().clone())),
            _ => candle_core::bail!("frozen-linear: the product is not on the CUDA device"),
        }
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// Whether `frozen_linear`'s custom op runs on this device (CPU, and CUDA in a `cuda` build); on
/// others it falls back to a plain matmul, whose backward also computes the unused `∂L/∂w`.
fn frozen_op_on(dev: &Device) -> bool {
    dev.is_cpu() || (cfg!(feature = "cuda") && dev.is_cuda())
}

/// `x · wᵀ (+ b)` for the frozen model's weights: no gradient is computed for `w` (or `b`).
pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = if x.track_op() && frozen_op_on(x.device()) && x.rank() == 2 && x.dtype() == DType::F32
    {
        let y = x.detach().matmul(&w.t()?)?;
        x.apply_op1(FrozenLinearGrad { y, w: w.detach() })?
    } else {
        x.matmul(&w.t()?)?
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// RoPE angles of the rotate-half layout at full head dim: (cos, sin), each [T, hd].
pub fn rope_tables(c: &DenseConfig, n_tokens: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    rope_tables_base(c.head_dim, c.rope_theta, n_tokens, dev)
}

/// The RoPE tables of every layer: the global base's, and the local layers' where they differ.
pub struct Ropes {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

impl Ropes {
    pub fn new(c: &DenseConfig, n_tokens: usize, dev: &Device) -> Result<Ropes> {
        let local = match &c.gemma3 {
            Some(g) if g.swa_layers.iter().any(|&b| b) && g.rope_theta_local != c.rope_theta => {
                Some(rope_tables_base(c.head_dim, g.rope_theta_local, n_tokens, dev)?)
            }
            _ => None,
        };
        Ok(Ropes { global: rope_tables(c, n_tokens, dev)?, local })
    }

    /// Layer `l`'s (cos, sin).
    pub fn layer(&self, c: &DenseConfig, l: usize) -> &(Tensor, Tensor) {
        match &self.local {
            Some(t) if c.rope_base(l) != c.rope_theta => t,
            _ => &self.global,
        }
    }
}

/// The tokens' embeddings [T, d], scaled where the architecture scales them (Gemma: sqrt(d)).
pub fn embed(model: &DenseModel, tokens: &[u32]) -> Result<Tensor> {
    let dev = model.embed.device();
    let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), dev)?;
    let x = model.embed.index_select(&ids, 0)?;
    Ok(match model.config.embed_scale() {
        Some(s) => (x * s)?,
        None => x,
    })
}

/// Per-head RMS norm of x [heads, T, hd] (Gemma's Q/K norms); `x` itself without a weight.
pub fn head_norm(x: Tensor, w: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    match w {
        Some(w) => rms_norm(&x, w, eps),
        None => Ok(x),
    }
}

/// The block output `y` through its post-norm (Gemma), or unchanged.
pub fn post_norm(y: Tensor, w: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    match w {
        Some(w) => rms_norm(&y, w, eps),
        None => Ok(y),
    }
}

/// The final logits through the architecture's softcap, if it has one.
pub fn softcap(c: &DenseConfig, logits: Tensor) -> Result<Tensor> {
    match c.gemma3.as_ref().and_then(|g| g.final_logit_softcap) {
        Some(cap) => Ok(((logits / cap as f64)?.tanh()? * cap as f64)?),
        None => Ok(logits),
    }
}

/// RoPE angles with base `base`: (cos, sin), each [T, hd].
pub fn rope_tables_base(hd: usize, base: f32, n_tokens: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(n_tokens * hd);
    let mut sin = Vec::with_capacity(n_tokens * hd);
    for pos in 0..n_tokens {
        for j in 0..hd {
            let i = j % half;
            let freq = (base as f64).powf(-2.0 * i as f64 / hd as f64);
            let a = pos as f64 * freq;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (n_tokens, hd), dev)?,
        Tensor::from_vec(sin, (n_tokens, hd), dev)?,
    ))
}

/// Rotate-half RoPE on x [heads, T, hd'] with tables [T, hd'].
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let half = hd / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// Additive causal mask [T, T]: 0 on and below the diagonal, -inf above.
pub fn causal_mask(n: usize, dev: &Device) -> Result<Tensor> {
    window_mask(n, None, dev)
}

/// The first key position query `r` sees: 0, or within the sliding window (keys in (r - w, r]).
fn first_seen(r: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (r + 1).saturating_sub(w))
}

/// Additive causal mask [T, T], also -inf left of the sliding window when there is one.
pub fn window_mask(n: usize, window: Option<usize>, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * n)
        .map(|k| {
            let (r, col) = (k / n, k % n);
            if col > r || col < first_seen(r, window) {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (n, n), dev)?)
}

/// [T, heads·hd] → [heads, T, hd].
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (t, w) = x.dims2()?;
    Ok(x.reshape((t, heads, w / heads))?
        .transpose(0, 1)?
        .contiguous()?)
}

/// Repeats KV heads [Hkv, T, hd] to [H, T, hd] (GQA: query head h reads KV head h / (H/Hkv)).
pub fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (hkv, t, hd) = x.dims3()?;
    Ok(x.unsqueeze(1)?
        .expand((hkv, groups, t, hd))?
        .reshape((hkv * groups, t, hd))?)
}

/// Softmax over the last dim that gradients flow through. candle-nn's fused `softmax_last_dim`
/// has no backward and returns an untracked tensor, so gradients silently stop at it (this once
/// froze every router and cut the Q/K masks off the distillation loss); the composed softmax is
/// used whenever the input is part of a graph being differentiated.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(x)?
    })
}

/// `softmax(scale · x + causal)` over the last dim of a contiguous F32 CPU tensor [.., T, T]
/// (row r of each [T, T] block sees columns 0..=r, or the last `window` of them), with its own
/// backward: one parallel pass each way instead of candle's composed softmax (about ten
/// single-threaded passes and their temporaries, the largest elementwise cost of a training step).
struct ScaledCausalSoftmax {
    scale: f32,
    window: Option<usize>,
}

/// The F32 slice of a contiguous CPU tensor's storage, or None (any other case takes the fallback).
fn f32_slice<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout) -> Option<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Some(&v[a..b]),
        _ => None,
    }
}

impl candle_core::CustomOp1 for ScaledCausalSoftmax {
    fn name(&self) -> &'static str {
        "scaled-causal-softmax"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = f32_slice(s, l)
            .ok_or_else(|| candle_core::Error::Msg("scaled-causal-softmax: not contiguous F32".into()))?;
        let n = *l.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .enumerate()
            .for_each(|(i, (o, r))| {
                let seen = first_seen(i % n, self.window)..(i % n) + 1;
                let mx = r[seen.clone()]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
                let mut sum = 0f32;
                for (o, &v) in o[seen.clone()].iter_mut().zip(&r[seen.clone()]) {
                    *o = (v * self.scale - mx).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o[seen].iter_mut().for_each(|o| *o *= inv);
            });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?))
    }
}

/// The input gradient of a row softmax `y` with output gradient `g`: `scale · y ⊙ (g - Σ g⊙y)`.
struct SoftmaxGrad {
    scale: f32,
}

impl candle_core::CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &candle_core::CpuStorage,
        yl: &candle_core::Layout,
        gs: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (Some(y), Some(g)) = (f32_slice(ys, yl), f32_slice(gs, gl)) else {
            candle_core::bail!("softmax-grad: not contiguous F32");
        };
        let n = *yl.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(o, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = self.scale * y * (g - dot);
                }
            });
        Ok((candle_core::CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// The contiguous F32 data of a CPU tensor (a copy only when it is not contiguous).
fn cpu_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// The masked gated activation `act(gate) ⊙ up ⊙ mask` of [T, m] tensors in one parallel pass,
/// with its backward in one more: candle's composed activation and two products, and their
/// backward, make about a dozen single-threaded passes over [T, m] per layer. `act` is SiLU
/// (SwiGLU) or GELU's tanh form (GeGLU, Gemma).
struct MaskedGlu {
    gelu: bool,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044715;

impl MaskedGlu {
    /// act(x) and act'(x).
    fn act(&self, x: f32) -> (f32, f32) {
        if self.gelu {
            let t = (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh();
            let dt = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x);
            (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)
        } else {
            let s = sigmoid(x);
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
    }
}

impl candle_core::CustomOp3 for MaskedGlu {
    fn name(&self) -> &'static str {
        if self.gelu {
            "masked-geglu"
        } else {
            "masked-swiglu"
        }
    }

    fn cpu_fwd(
        &self,
        gs: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
        us: &candle_core::CpuStorage,
        ul: &candle_core::Layout,
        ms: &candle_core::CpuStorage,
        ml: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (Some(g), Some(u), Some(m)) = (f32_slice(gs, gl), f32_slice(us, ul), f32_slice(ms, ml))
        else {
            candle_core::bail!("masked-glu: not contiguous F32");
        };
        if g.len() != u.len() || g.len() != m.len() {
            candle_core::bail!("masked-glu: shapes {:?} {:?} {:?}", gl.dims(), ul.dims(), ml.dims());
        }
        let n = *gl.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(n)
            .zip(g.par_chunks(n).zip(u.par_chunks(n)).zip(m.par_chunks(n)))
            .for_each(|(o, ((g, u), m))| {
                for (((o, &g), &u), &m) in o.iter_mut().zip(g).zip(u).zip(m) {
                    *o = self.act(g).0 * u * m;
                }
            });
        Ok((candle_core::CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        mask: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (g, u, m, go) = (cpu_f32(gate)?, cpu_f32(up)?, cpu_f32(mask)?, cpu_f32(grad)?);
        let n = *gate.dims().last().unwrap_or(&1);
        let (mut dg, mut du, mut dm) = (vec![0f32; g.len()], vec![0f32; g.len()], vec![0f32; g.len()]);
        dg.par_chunks_mut(n)
            .zip(du.par_chunks_mut(n).zip(dm.par_chunks_mut(n)))
            .zip(g.par_chunks(n).zip(u.par_chunks(n)).zip(m.par_chunks(n).zip(go.par_chunks(n))))
            .for_each(|((dg, (du, dm)), ((g, u), (m, go)))| {
                for i in 0..g.len() {
                    let (a, da) = self.act(g[i]);
                    let gm = go[i] * m[i];
                    dg[i] = gm * u[i] * da;
                    du[i] = gm * a;
                    dm[i] = go[i] * a * u[i];
                }
            });
        let (shape, dev) = (gate.shape(), gate.device());
        Ok((
            Some(Tensor::from_vec(dg, shape, dev)?),
            Some(Tensor::from_vec(du, shape, dev)?),
            Some(Tensor::from_vec(dm, shape, dev)?),
        ))
    }
}

/// `silu(gate) ⊙ up (⊙ mask)` over [T, m]: the fused op on the CPU when masked, candle's ops
/// otherwise.
pub fn swiglu(gate: &Tensor, up: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    glu(false, gate, up, mask)
}

/// `act(gate) ⊙ up (⊙ mask)` over [T, m], `act` GELU (tanh form) when `gelu`, SiLU otherwise: the
/// fused op on the CPU when masked, candle's ops otherwise.
pub fn glu(gelu: bool, gate: &Tensor, up: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    match mask {
        Some(m)
            if gate.device().is_cpu()
                && [gate.dtype(), up.dtype(), m.dtype()].iter().all(|&d| d == DType::F32)
                && gate.dims() == m.dims() =>
        {
            Ok(gate
                .contiguous()?
                .apply_op3(&up.contiguous()?, &m.contiguous()?, MaskedGlu { gelu })?)
        }
        Some(m) => Ok(((activation(gelu, gate)? * up)? * m)?),
        None => Ok((activation(gelu, gate)? * up)?),
    }
}

/// GELU (tanh form) or SiLU of `x`, candle's ops.
pub fn activation(gelu: bool, x: &Tensor) -> Result<Tensor> {
    Ok(if gelu { x.gelu()? } else { candle_nn::ops::silu(x)? })
}

/// `softmax(scale · scores + causal mask)` over [.., T, T] (within the sliding `window` if any):
/// the fused op on the CPU, candle's composed ops elsewhere.
pub fn causal_softmax(scores: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    let t = scores.dim(D::Minus1)?;
    if scores.device().is_cpu() && scores.dtype() == DType::F32 && scores.dim(D::Minus2)? == t {
        return Ok(scores.contiguous()?.apply_op1(ScaledCausalSoftmax {
            scale: scale as f32,
            window,
        })?);
    }
    let causal = window_mask(t, window, scores.device())?;
    softmax_last(&(scores * scale)?.broadcast_add(&causal)?)
}

/// Causal attention (within the sliding `window` if any) over [H, T, hd'] q/k and [H, T, hd] v
/// with the given score scale → [T, H·hd].
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    window: Option<usize>,
) -> Result<Tensor> {
    let probs = causal_softmax(&q.matmul(&k.t()?)?, scale, window)?;
    let out = probs.matmul(v)?; // [H, T, hd]
    let (h, t, hd) = out.dims3()?;
    Ok(out.transpose(0, 1)?.contiguous()?.reshape((t, h * hd))?)
}

/// Causal attention over [H, T, hd'] q/k and [H, T, hd] v with the given score scale → [T, H·hd].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: &Tensor,
) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(causal)?;
    let probs = softmax_last(&scores)?;
    let out = probs.matmul(v)?; // [H, T, hd]
    let (h, t, hd) = out.dims3()?;
    Ok(out.transpose(0, 1)?.contiguous()?.reshape((t, h * hd))?)
}

/// Logits [T, vocab] of the whole sequence, with the masks of `masks`.
pub fn forward(model: &DenseModel, tokens: &[u32], masks: &mut dyn MaskSource) -> Result<Tensor> {
    let mut x = embed(model, tokens)?;
    let ropes = Ropes::new(&model.config, tokens.len(), model.embed.device())?;
    for l in 0..model.layers.len() {
        let mid = attention_block(model, l, &x, &ropes, masks)?;
        let h2 = rms_norm(&mid, &model.layers[l].ffn_norm, model.config.rms_eps)?;
        let mask = masks.mlp_mask(l, &h2)?;
        let bias = masks.mlp_bias(l)?;
        x = mlp_block(model, l, &mid, &h2, mask.as_ref(), bias.as_ref())?;
    }
    logits(model, &x)
}

/// Layer `l`'s residual stream after its attention block, from its input `x` [T, d].
pub fn attention_block(model: &DenseModel, l: usize, x: &Tensor, ropes: &Ropes, masks: &mut dyn MaskSource) -> Result<Tensor> {
    let (c, lw) = (&model.config, &model.layers[l]);
    let groups = c.n_heads / c.n_kv_heads;
    let (scale, eps) = (c.attn_scale(), c.rms_eps);
    let h1 = rms_norm(x, &lw.attn_norm, eps)?;
    let (qk_mask, v_mask) = masks.attn_masks(l, &h1)?;
    let (cos, sin) = ropes.layer(c, l);
    let heads = |w: &Tensor, b: Option<&Tensor>, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
        let x = head_norm(split_heads(&frozen_linear(&h1, w, b)?, n)?, norm, eps)?;
        apply_rope(&x, cos, sin)
    };
    let mut q = heads(&lw.wq, lw.bq.as_ref(), c.n_heads, lw.q_norm.as_ref())?;
    let mut k = heads(&lw.wk, lw.bk.as_ref(), c.n_kv_heads, lw.k_norm.as_ref())?;
    if let Some(m) = &qk_mask {
        q = q.broadcast_mul(m)?;
        k = k.broadcast_mul(m)?;
    }
    let mut v = split_heads(&frozen_linear(&h1, &lw.wv, lw.bv.as_ref())?, c.n_kv_heads)?;
    if let Some(m) = &v_mask {
        v = v.broadcast_mul(m)?; // [T, hd] broadcast over KV heads
    }
    let (k, v) = (repeat_kv(&k, groups)?, repeat_kv(&v, groups)?);
    let att = causal_attention(&q, &k, &v, scale, c.window(l))?;
    Ok((x + post_norm(frozen_linear(&att, &lw.wo, None)?, lw.post_attn_norm.as_ref(), eps)?)?)
}

/// Layer `l`'s output from the residual stream `mid` after attention and its MLP input `h2`, the
/// neurons masked by `mask` [T, m] and `bias` [T, d] added to the MLP output.
pub fn mlp_block(model: &DenseModel, l: usize, mid: &Tensor, h2: &Tensor, mask: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let (c, lw) = (&model.config, &model.layers[l]);
    let gate = frozen_linear(h2, &lw.w_gate, None)?;
    let up = frozen_linear(h2, &lw.w_up, None)?;
    let act = glu(c.arch.gelu_mlp(), &gate, &up, mask)?;
    let mut y = frozen_linear(&act, &lw.w_down, None)?;
    if let Some(b) = bias {
        y = (y + b)?;
    }
    Ok((mid + post_norm(y, lw.post_ffn_norm.as_ref(), c.rms_eps)?)?)
}

/// Logits [T, vocab] from the last layer's output.
pub fn logits(model: &DenseModel, x: &Tensor) -> Result<Tensor> {
    let h = rms_norm(x, &model.output_norm, model.config.rms_eps)?;
    softcap(&model.config, frozen_linear(&h, model.output_weight(), None)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::{activation, causal_softmax, glu, softmax_last, window_mask};
    use candle_core::{Device, Tensor, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The fused masked SwiGLU and GeGLU equal candle's composed ops, forward and every input's
    /// gradient.
    #[test]
    fn fused_masked_glu_matches_the_composed_one() {
        let dev = Device::Cpu;
        for gelu in [false, true] {
            let var = |s| Var::from_tensor(&Tensor::randn(0f32, s, (5, 9), &dev).unwrap()).unwrap();
            let (g, u, m) = (var(2.0), var(1.0), var(1.0));
            let w = Tensor::randn(0f32, 1.0, (5, 9), &dev).unwrap();
            let fused = glu(gelu, g.as_tensor(), u.as_tensor(), Some(m.as_tensor())).unwrap();
            let composed =
                ((activation(gelu, g.as_tensor()).unwrap() * u.as_tensor()).unwrap() * m.as_tensor()).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5, "gelu {gelu}");
            let ga = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (composed * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&g, &u, &m] {
                let (a, b) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                assert!(max_diff(b, &Tensor::zeros_like(b).unwrap()) > 1e-3, "no gradient");
                assert!(max_diff(a, b) < 1e-4, "gelu {gelu}: gradients differ by {}", max_diff(a, b));
            }
        }
    }

    /// The fused causal softmax equals candle's composed one, forward and backward, with and
    /// without a sliding window.
    #[test]
    fn fused_causal_softmax_matches_the_composed_one() {
        let dev = Device::Cpu;
        for window in [None, Some(3)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 7, 7), &dev).unwrap()).unwrap();
            let w = Tensor::randn(0f32, 1.0, (3, 7, 7), &dev).unwrap();
            let fused = causal_softmax(x.as_tensor(), 0.3, window).unwrap();
            let mask = window_mask(7, window, &dev).unwrap();
            let composed = softmax_last(&(x.as_tensor() * 0.3).unwrap().broadcast_add(&mask).unwrap()).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-6, "window {window:?}");
            let ga = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (composed * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
            assert!(max_diff(ga, &Tensor::zeros_like(ga).unwrap()) > 1e-3, "no gradient");
            assert!(max_diff(ga, gb) < 1e-6, "gradients differ by {}", max_diff(ga, gb));
        }
        // Row 5 with a window of 3 sees columns 3..=5 only.
        let row: Vec<f32> = window_mask(7, Some(3), &dev).unwrap().get(5).unwrap().to_vec1().unwrap();
        let seen: Vec<usize> = (0..7).filter(|&j| row[j] == 0.0).collect();
        assert_eq!(seen, vec![3, 4, 5]);
    }
}
