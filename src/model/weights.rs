//! The model's tensors as zero-copy views into the GGUF file: quantized matrices stay where the
//! file maps them; the small vectors (norm weights, biases) are converted to f32 at load.

use super::config::ModelConfig;
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

/// One transformer block.
pub struct LayerWeights<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: MatRef<'a>,
    pub wk: MatRef<'a>,
    pub wv: MatRef<'a>,
    pub wo: MatRef<'a>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: MatRef<'a>,
    pub up: MatRef<'a>,
    pub down: MatRef<'a>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// All tensors the forward pass reads.
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
        let (d, q, kv, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.n_ff);
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
            layers.push(LayerWeights {
                attn_norm: vector(f, &n("attn_norm.weight"), d)?,
                wq: matrix(f, &n("attn_q.weight"), q, d)?,
                wk: matrix(f, &n("attn_k.weight"), kv, d)?,
                wv: matrix(f, &n("attn_v.weight"), kv, d)?,
                wo: matrix(f, &n("attn_output.weight"), d, q)?,
                bq: opt_vec(n("attn_q.bias"), q, req.qkv_bias_required)?,
                bk: opt_vec(n("attn_k.bias"), kv, req.qkv_bias_required)?,
                bv: opt_vec(n("attn_v.bias"), kv, req.qkv_bias_required)?,
                q_norm: opt_vec(n("attn_q_norm.weight"), c.head_dim, req.qk_norm)?.filter(|_| req.qk_norm),
                k_norm: opt_vec(n("attn_k_norm.weight"), c.head_dim, req.qk_norm)?.filter(|_| req.qk_norm),
                post_attn_norm: opt_vec(n("post_attention_norm.weight"), d, req.post_norms)?
                    .filter(|_| req.post_norms),
                ffn_norm: vector(f, &n("ffn_norm.weight"), d)?,
                gate: matrix(f, &n("ffn_gate.weight"), ff, d)?,
                up: matrix(f, &n("ffn_up.weight"), ff, d)?,
                down: matrix(f, &n("ffn_down.weight"), d, ff)?,
                post_ffn_norm: opt_vec(n("post_ffw_norm.weight"), d, req.post_norms)?.filter(|_| req.post_norms),
            });
        }
        Ok(Weights { token_embd, layers, output_norm, output, rope_freqs })
    }

    /// Bytes of weights read per decoded token (every matrix once; embeddings: one row).
    pub fn bytes_per_token(&self) -> u64 {
        let m = |w: &MatRef| (w.rows() * w.ty().row_bytes(w.cols()).unwrap_or(0)) as u64;
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| m(&l.wq) + m(&l.wk) + m(&l.wv) + m(&l.wo) + m(&l.gate) + m(&l.up) + m(&l.down))
            .sum();
        layers + m(&self.output) + self.token_embd.row(0).len() as u64
    }
}

/// A matrix of `rows` x `cols` (GGUF dims `[cols, rows]`).
fn matrix<'a>(f: &'a GgufFile, name: &str, rows: usize, cols: usize) -> Result<MatRef<'a>, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let expected = [cols as u64, rows as u64];
    if t.info.dims != expected {
        return Err(ModelError::BadTensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: t.info.dims.clone(),
        });
    }
    MatRef::new(t.info.ty, rows, cols, t.data)
        .map_err(|e| ModelError::BadTensor { name: name.to_string(), reason: e.to_string() })
}

/// A vector of `len` values of any format, converted to f32.
fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    if t.info.dims != [len as u64] {
        return Err(ModelError::BadTensorShape { name: name.to_string(), expected: vec![len as u64], found: t.info.dims.clone() });
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
