//! The model's tensors as zero-copy views into the GGUF file: quantized matrices stay where the
//! file maps them; the small vectors (norm weights, biases) are converted to f32 at load. The
//! engine's decoding plan clones them with its matrices pointed at its copies.

use super::config::ModelConfig;
use super::tomoe::{self, PrunedQk, TomoeMlp, VMask};
use super::ModelError;
use crate::gguf::GgufFile;
use tomoe_quant::{dequantize_row, MatRef, QuantType};

/// Which optional per-layer tensors an architecture requires.
#[derive(Copy, Clone, Debug)]
pub(crate) struct LayerTensors {
    /// `attn_{q,k,v}.bias` must exist (else they are loaded when present).
    pub qkv_bias_required: bool,
    /// `attn_q_norm`, `attn_k_norm` (RMS norm over each head).
    pub qk_norm: bool,
    /// `post_attention_norm`, `post_ffw_norm`.
    pub post_norms: bool,
}

/// One transformer block: `x += attention(x)`, then `x += mlp(x)`, each block with its own
/// input norm and (Gemma) norm of its output.
#[derive(Clone)]
pub struct LayerWeights<'a> {
    pub attn_norm: Vec<f32>,
    pub attn: Attention<'a>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub mlp: Mlp<'a>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// The self-attention of one layer.
#[derive(Clone)]
pub struct Attention<'a> {
    /// `n_head · dq` rows of `d_model` (`dq`: the pruned head width, else `head_dim`).
    pub wq: MatRef<'a>,
    /// `n_head_kv · dq` rows of `d_model`.
    pub wk: MatRef<'a>,
    pub wv: MatRef<'a>,
    pub wo: MatRef<'a>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// RMS norms over each Q/K head (Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// ToMoE: the Q/K dims each head keeps.
    pub pruned_qk: Option<PrunedQk>,
    /// ToMoE: the dynamic V mask, which zeroes each token's dropped value dims.
    pub vmask: Option<VMask<'a>>,
}

impl Attention<'_> {
    /// The width of a query/key head: the kept dims of a pruned layer, else `head_dim`.
    pub fn qk_width(&self, head_dim: usize) -> usize {
        self.pruned_qk.as_ref().map_or(head_dim, |p| p.dq)
    }
}

/// The feed-forward network of one layer, one variant per kind of MLP.
#[derive(Clone)]
pub enum Mlp<'a> {
    /// A gated MLP of `n_ff` neurons.
    Dense(DenseMlp<'a>),
    /// A llama.cpp MoE MLP (`ffn_*_exps`).
    Stacked(StackedExperts<'a>),
    /// A ToMoE MLP: one expert per token, each a subset of the layer's rows.
    Tomoe(TomoeMlp<'a>),
}

impl<'a> Mlp<'a> {
    /// The ToMoE MLP, if this is one.
    pub fn tomoe(&self) -> Option<&TomoeMlp<'a>> {
        match self {
            Mlp::Tomoe(m) => Some(m),
            _ => None,
        }
    }
}

/// `down · act(gate · x) ⊙ (up · x)`.
#[derive(Clone)]
pub struct DenseMlp<'a> {
    /// `n_ff` rows of `d_model`.
    pub gate: MatRef<'a>,
    pub up: MatRef<'a>,
    /// `d_model` rows of `n_ff`.
    pub down: MatRef<'a>,
}

/// A llama MoE MLP as llama.cpp defines it (Mixtral; also tomoe-convert's `--llama-cpp-compat`
/// output): softmax over the router logits, the `n_used` most probable experts, their weights
/// renormalised to sum to 1, each a SwiGLU MLP of `width` neurons.
#[derive(Clone)]
pub struct StackedExperts<'a> {
    pub n_expert: usize,
    pub n_used: usize,
    pub width: usize,
    /// `n_expert` rows of `d_model`.
    pub router: Vec<f32>,
    /// `n_expert · width` rows of `d_model` (expert `e`'s rows `e·width ..`).
    pub gate: MatRef<'a>,
    pub up: MatRef<'a>,
    /// `n_expert · d_model` rows of `width` (expert `e`'s rows `e·d_model ..`).
    pub down: MatRef<'a>,
}

/// All tensors the forward pass reads.
#[derive(Clone)]
pub struct Weights<'a> {
    /// `n_vocab` rows of `d_model`.
    pub token_embd: MatRef<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    pub output_norm: Vec<f32>,
    /// `output`, or `token_embd` when the model ties them.
    pub output: MatRef<'a>,
    /// Per-pair RoPE frequency divisors (Llama 3.1 `rope_freqs`), if the model has them.
    pub rope_freqs: Option<Vec<f32>>,
}

impl<'a> Weights<'a> {
    pub(crate) fn load(f: &'a GgufFile, c: &ModelConfig, req: LayerTensors) -> Result<Weights<'a>, ModelError> {
        let (d, kv, ff) = (c.d_model, c.kv_dim(), c.n_ff);
        let token_embd = matrix(f, "token_embd.weight", c.n_vocab, d)?;
        let output = match f.tensor("output.weight") {
            Some(_) => matrix(f, "output.weight", c.n_vocab, d)?,
            None => token_embd,
        };
        let output_norm = vector(f, "output_norm.weight", d)?;
        let rope_freqs = match f.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(f, "rope_freqs.weight", c.n_rot / 2)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for il in 0..c.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let opt_vec = |name: String, len: usize, required: bool| -> Result<Option<Vec<f32>>, ModelError> {
                if required || f.tensor(&name).is_some() {
                    vector(f, &name, len).map(Some)
                } else {
                    Ok(None)
                }
            };
            // ToMoE: pruned Q/K rows, a V mask, the experts' union of rows in gate/up and the
            // transposed down projection.
            let pruned_qk = match &c.tomoe {
                Some(_) => Some(tomoe::qk_shape(f, il, c.head_dim, c.rope_style == super::RopeStyle::Adjacent)?),
                None => None,
            };
            let kd = pruned_qk.as_ref().map_or(c.head_dim, |p| p.dq);
            let (q, kv_k) = (c.n_head * kd, c.n_head_kv * kd);
            let (mlp, vmask) = match (&c.tomoe, c.n_expert) {
                (Some(tc), _) => {
                    let u = union_rows(f, il, d, ff)?;
                    let mats = [
                        matrix(f, &n("ffn_gate.weight"), u, d)?,
                        matrix(f, &n("ffn_up.weight"), u, d)?,
                        matrix(f, &n(super::tomoe_schema::FFN_DOWN_T), u, d)?,
                    ];
                    let load = |name: &str, dims: &[usize]| tensor_f32(f, name, dims);
                    let (m, vmask) = tomoe::layer(f, il, c.n_layer, tc, d, c.head_dim, mats, load)?;
                    (Mlp::Tomoe(m), vmask)
                }
                (None, Some(ne)) => (Mlp::Stacked(stacked_experts(f, il, c, ne)?), None),
                (None, None) => {
                    let gate = matrix(f, &n("ffn_gate.weight"), ff, d)?;
                    let up = matrix(f, &n("ffn_up.weight"), ff, d)?;
                    let down = matrix(f, &n("ffn_down.weight"), d, ff)?;
                    (Mlp::Dense(DenseMlp { gate, up, down }), None)
                }
            };
            let attn = Attention {
                wq: matrix(f, &n("attn_q.weight"), q, d)?,
                wk: matrix(f, &n("attn_k.weight"), kv_k, d)?,
                wv: matrix(f, &n("attn_v.weight"), kv, d)?,
                wo: matrix(f, &n("attn_output.weight"), d, c.q_dim())?,
                bq: opt_vec(n("attn_q.bias"), q, req.qkv_bias_required)?,
                bk: opt_vec(n("attn_k.bias"), kv_k, req.qkv_bias_required)?,
                bv: opt_vec(n("attn_v.bias"), kv, req.qkv_bias_required)?,
                q_norm: opt_vec(n("attn_q_norm.weight"), c.head_dim, req.qk_norm)?.filter(|_| req.qk_norm),
                k_norm: opt_vec(n("attn_k_norm.weight"), c.head_dim, req.qk_norm)?.filter(|_| req.qk_norm),
                pruned_qk,
                vmask,
            };
            layers.push(LayerWeights {
                attn_norm: vector(f, &n("attn_norm.weight"), d)?,
                attn,
                post_attn_norm: opt_vec(n("post_attention_norm.weight"), d, req.post_norms)?.filter(|_| req.post_norms),
                ffn_norm: vector(f, &n("ffn_norm.weight"), d)?,
                mlp,
                post_ffn_norm: opt_vec(n("post_ffw_norm.weight"), d, req.post_norms)?.filter(|_| req.post_norms),
            });
        }
        Ok(Weights { token_embd, layers, output_norm, output, rope_freqs })
    }

    /// Bytes of weights one decoded token reads: every matrix once, the embedding table one row
    /// (unless tied to the output, read whole as the output); in MoE layers only the chosen
    /// experts' rows, averaged with `usage` (per layer, tokens per expert; uniform when empty),
    /// plus the router and V-mask head (every V row counted: an upper bound under the V mask).
    pub fn bytes_per_token(&self, usage: &[Vec<u64>]) -> u64 {
        let m = |w: &MatRef| (w.rows() * w.row_bytes()) as u64;
        let mut total = m(&self.output) + self.token_embd.row_bytes() as u64;
        for (il, l) in self.layers.iter().enumerate() {
            let a = &l.attn;
            total += m(&a.wq) + m(&a.wk) + m(&a.wv) + m(&a.wo);
            if let Some(v) = &a.vmask {
                total += v.w_a.data().len() as u64 + 4 * v.w_dec.len() as u64;
            }
            match &l.mlp {
                Mlp::Dense(x) => total += m(&x.gate) + m(&x.up) + m(&x.down),
                Mlp::Stacked(x) => {
                    total += (x.n_used * x.width * (x.gate.row_bytes() + x.up.row_bytes())) as u64
                        + (x.n_used * self.token_embd.cols() * x.down.row_bytes()) as u64
                        + 4 * x.router.len() as u64;
                }
                Mlp::Tomoe(moe) => {
                    let rb = (moe.gate.row_bytes() + moe.up.row_bytes() + moe.down_t.row_bytes()) as f64;
                    let counts = usage.get(il).filter(|c| c.iter().sum::<u64>() > 0);
                    let rows: f64 = match counts {
                        Some(c) => {
                            let n: u64 = c.iter().sum();
                            moe.expert_rows.iter().zip(c).map(|(r, &k)| r.len() as f64 * k as f64).sum::<f64>()
                                / n as f64
                        }
                        None => moe.expert_rows.iter().map(|r| r.len() as f64).sum::<f64>() / moe.n_expert() as f64,
                    };
                    total += (rows * rb) as u64 + 4 * moe.router.len() as u64;
                }
            }
        }
        total
    }
}

/// A matrix of `rows` x `cols` (GGUF dims `[cols, rows]`).
pub(super) fn matrix<'a>(f: &'a GgufFile, name: &str, rows: usize, cols: usize) -> Result<MatRef<'a>, ModelError> {
    matrix_dims(f, name, rows, cols, &[cols as u64, rows as u64])
}

/// `rows` x `cols` over a tensor whose GGUF dims must be `dims` (e.g. experts stacked in 3-D).
fn matrix_dims<'a>(
    f: &'a GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
    dims: &[u64],
) -> Result<MatRef<'a>, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if t.info.dims != dims {
        return Err(ModelError::BadTensorShape {
            name: name.to_string(),
            expected: dims.to_vec(),
            found: t.info.dims.clone(),
        });
    }
    MatRef::new(t.info.ty, rows, cols, t.data)
        .map_err(|e| ModelError::BadTensor { name: name.to_string(), reason: e.to_string() })
}

/// The storage rows of layer `il`'s ToMoE MLP: the rows of its `ffn_gate` (at most `ff`).
fn union_rows(f: &GgufFile, il: usize, d: usize, ff: usize) -> Result<usize, ModelError> {
    let name = format!("blk.{il}.ffn_gate.weight");
    let gate = f.tensor(&name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
    match gate.info.dims[..] {
        [cols, rows] if cols == d as u64 && rows <= ff as u64 => Ok(rows as usize),
        _ => {
            Err(ModelError::BadTensorShape { name, expected: vec![d as u64, ff as u64], found: gate.info.dims.clone() })
        }
    }
}

/// Layer `il`'s llama.cpp MoE MLP (`ffn_gate_inp`, `ffn_{gate,up,down}_exps`) of `ne` experts.
fn stacked_experts<'a>(
    f: &'a GgufFile,
    il: usize,
    c: &ModelConfig,
    ne: usize,
) -> Result<StackedExperts<'a>, ModelError> {
    let (d, ff) = (c.d_model, c.n_ff);
    let n = |s: &str| format!("blk.{il}.{s}");
    let gate_exps =
        f.tensor(&n("ffn_gate_exps.weight")).ok_or_else(|| ModelError::MissingTensor(n("ffn_gate_exps.weight")))?;
    let width = match gate_exps.info.dims[..] {
        [cols, w, e] if cols == d as u64 && e == ne as u64 && w > 0 && w <= ff as u64 => w as usize,
        _ => {
            return Err(ModelError::BadTensorShape {
                name: n("ffn_gate_exps.weight"),
                expected: vec![d as u64, ff as u64, ne as u64],
                found: gate_exps.info.dims.clone(),
            })
        }
    };
    let (w64, d64, e64) = (width as u64, d as u64, ne as u64);
    Ok(StackedExperts {
        n_expert: ne,
        n_used: c.n_expert_used,
        width,
        router: tensor_f32(f, &n("ffn_gate_inp.weight"), &[d, ne])?,
        gate: matrix_dims(f, &n("ffn_gate_exps.weight"), ne * width, d, &[d64, w64, e64])?,
        up: matrix_dims(f, &n("ffn_up_exps.weight"), ne * width, d, &[d64, w64, e64])?,
        down: matrix_dims(f, &n("ffn_down_exps.weight"), ne * d, width, &[w64, d64, e64])?,
    })
}

/// A tensor of any format with GGUF dims `dims` (ggml order), converted to f32, flattened.
fn tensor_f32(f: &GgufFile, name: &str, dims: &[usize]) -> Result<Vec<f32>, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let want: Vec<u64> = dims.iter().map(|&x| x as u64).collect();
    if t.info.dims != want {
        return Err(ModelError::BadTensorShape { name: name.to_string(), expected: want, found: t.info.dims.clone() });
    }
    let (row, n) = (dims[0], dims.iter().product::<usize>());
    let rb = t.info.ty.row_bytes(row).filter(|rb| rb * (n / row.max(1)) == t.data.len());
    let Some(rb) = rb else {
        return Err(ModelError::BadTensor { name: name.to_string(), reason: "size does not match its dims".into() });
    };
    let mut out = vec![0f32; n];
    for (src, dst) in t.data.chunks_exact(rb.max(1)).zip(out.chunks_exact_mut(row.max(1))) {
        dequantize_row(t.info.ty, src, dst);
    }
    Ok(out)
}

/// A vector of `len` values of any format, converted to f32.
fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if t.info.dims != [len as u64] {
        return Err(ModelError::BadTensorShape {
            name: name.to_string(),
            expected: vec![len as u64],
            found: t.info.dims.clone(),
        });
    }
    let ty: QuantType = t.info.ty;
    match ty.row_bytes(len) {
        Some(n) if n == t.data.len() => {}
        _ => {
            return Err(ModelError::BadTensor {
                name: name.to_string(),
                reason: format!("{} bytes do not hold {len} values of {}", t.data.len(), ty.name()),
            })
        }
    }
    let mut out = vec![0f32; len];
    dequantize_row(ty, t.data, &mut out);
    Ok(out)
}
