//! Dense GGUF input (llama, qwen2, gemma3): every tensor dequantized to F32 with `tomoe_quant`,
//! renamed to the HF names, and llama's Q/K rows un-permuted from llama.cpp's adjacent-pair RoPE
//! layout to HF's rotate-half layout (qwen2 and gemma3 files are already rotate-half). Gemma's
//! norm weights stay as GGUF stores them, with the "1 +" folded in.

use super::dense::{assemble, Arch, DenseConfig, DenseModel, Gemma3Params};
use super::{ConvertError, Result};
use crate::gguf::{GgufFile, Value};
use candle_core::{Device, Tensor};
use std::path::Path;

/// Index map from rotate-half rows to adjacent-pair rows within one head: `hf[j*half + i] = gguf[2i + j]`.
pub fn adjacent_of_half(head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..head_dim).map(|r| 2 * (r % half) + r / half).collect()
}

fn dequantize(f: &GgufFile, name: &str) -> Result<Option<Tensor>> {
    let Some(t) = f.tensor(name) else {
        return Ok(None);
    };
    let dims: Vec<usize> = t.info.dims.iter().map(|&d| d as usize).collect();
    let cols = dims[0];
    let rows: usize = dims[1..].iter().product();
    let ty = t.info.ty;
    let rb = ty.row_bytes(cols).ok_or_else(|| ConvertError::BadShape {
        name: name.into(),
        got: dims.clone(),
        want: vec![],
    })?;
    if t.data.len() != rb * rows {
        return Err(ConvertError::BadShape {
            name: name.into(),
            got: dims,
            want: vec![],
        });
    }
    let mut out = vec![0f32; rows * cols];
    for (src, dst) in t.data.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        tomoe_quant::dequantize_row(ty, src, dst);
    }
    // ggml order [ne0, ne1, ...] is the reverse of the row-major shape.
    let shape: Vec<usize> = dims.iter().rev().copied().collect();
    Ok(Some(Tensor::from_vec(out, shape, &Device::Cpu)?))
}

fn meta_u(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            ConvertError::InvalidArg(format!("metadata `{key}` is not an unsigned integer"))
        }),
    }
}

/// The Gemma 3 keys, read as the runtime reads them (`model::gemma3`): by default every 6th layer
/// is global, the local layers rotate with base 10000.
fn gemma3_params(
    f: &GgufFile,
    a: &str,
    n_layers: usize,
    d: usize,
    n_heads: usize,
    head_dim: usize,
) -> Result<Gemma3Params> {
    let f32_key = |k: &str| f.get(&format!("{a}.{k}")).and_then(Value::as_f32);
    let window = meta_u(f, &format!("{a}.attention.sliding_window"))?.filter(|&w| w > 0);
    let key = format!("{a}.attention.sliding_window_pattern");
    let swa_layers = match f.get(&key) {
        _ if window.is_none() => vec![false; n_layers],
        Some(Value::Array(items)) => {
            let flags: Option<Vec<bool>> = items.values().map(|v| v.as_bool()).collect();
            flags
                .filter(|v| v.len() == n_layers)
                .ok_or_else(|| ConvertError::InvalidArg(format!("metadata `{key}` is not one bool per layer")))?
        }
        other => {
            let pattern = match other {
                None => 6,
                Some(_) => meta_u(f, &key)?.unwrap_or(6),
            };
            (0..n_layers).map(|il| pattern == 0 || il % pattern < pattern - 1).collect()
        }
    };
    // Gemma 3 27B scales by d / n_heads instead of the head dimension (as llama.cpp).
    let scale_dim = if n_layers == 62 { d / n_heads.max(1) } else { head_dim };
    Ok(Gemma3Params {
        rope_theta_local: f32_key("rope.freq_base_swa").unwrap_or(10000.0),
        sliding_window: window,
        swa_layers,
        attn_scale: 1.0 / (scale_dim.max(1) as f32).sqrt(),
        final_logit_softcap: f32_key("final_logit_softcapping").filter(|&c| c > 0.0),
    })
}

/// Reads the dense configuration from the metadata of a llama/qwen2/gemma3 GGUF.
pub fn gguf_config(f: &GgufFile) -> Result<DenseConfig> {
    let arch_name = f
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::InvalidArg("no general.architecture".into()))?;
    let arch = Arch::from_name(arch_name)?;
    let a = arch.gguf_name();
    let need = |k: &str| -> Result<usize> {
        meta_u(f, &format!("{a}.{k}"))?
            .ok_or_else(|| ConvertError::InvalidArg(format!("metadata `{a}.{k}` is missing")))
    };
    if let Some(s) = f
        .get(&format!("{a}.rope.scaling.type"))
        .and_then(Value::as_str)
    {
        if s != "none" {
            return Err(ConvertError::Unsupported(format!("RoPE scaling `{s}`")));
        }
    }
    let d = need("embedding_length")?;
    let n_heads = need("attention.head_count")?;
    let embd = f
        .tensor("token_embd.weight")
        .ok_or_else(|| ConvertError::MissingTensor("token_embd.weight".into()))?;
    let vocab = *embd
        .info
        .dims
        .get(1)
        .ok_or_else(|| ConvertError::BadShape {
            name: "token_embd.weight".into(),
            got: vec![],
            want: vec![d, 0],
        })? as usize;
    let head_dim = match meta_u(f, &format!("{a}.attention.key_length"))? {
        Some(k) => k,
        None if n_heads > 0 => d / n_heads,
        None => return Err(ConvertError::InvalidArg("attention.head_count is 0".into())),
    };
    let n_layers = need("block_count")?;
    let gemma3 = match arch {
        Arch::Gemma3 => Some(gemma3_params(f, a, n_layers, d, n_heads, head_dim)?),
        _ => None,
    };
    let config = DenseConfig {
        arch,
        n_layers,
        d,
        m: need("feed_forward_length")?,
        n_heads,
        n_kv_heads: meta_u(f, &format!("{a}.attention.head_count_kv"))?.unwrap_or(n_heads),
        head_dim,
        vocab,
        rms_eps: f
            .get(&format!("{a}.attention.layer_norm_rms_epsilon"))
            .and_then(Value::as_f32)
            .unwrap_or(1e-5),
        rope_theta: f
            .get(&format!("{a}.rope.freq_base"))
            .and_then(Value::as_f32)
            .unwrap_or(10000.0),
        context_length: meta_u(f, &format!("{a}.context_length"))?.unwrap_or(2048),
        tied_embeddings: f.tensor("output.weight").is_none(),
        gemma3,
    };
    config.validate()?;
    Ok(config)
}

/// HF name → GGUF name (and whether the rows are llama-permuted Q/K with that many heads).
fn gguf_name(hf: &str, c: &DenseConfig) -> Option<(String, Option<usize>)> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some((s.to_string(), None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, tail) = rest.split_once('.')?;
    let permute_q = (c.arch == Arch::Llama).then_some(c.n_heads);
    let permute_k = (c.arch == Arch::Llama).then_some(c.n_kv_heads);
    let gemma = c.arch.has_qk_and_post_norms();
    let (g, perm) = match tail {
        "post_attention_layernorm.weight" if gemma => ("post_attention_norm.weight", None),
        "pre_feedforward_layernorm.weight" if gemma => ("ffn_norm.weight", None),
        "post_feedforward_layernorm.weight" if gemma => ("post_ffw_norm.weight", None),
        "self_attn.q_norm.weight" if gemma => ("attn_q_norm.weight", None),
        "self_attn.k_norm.weight" if gemma => ("attn_k_norm.weight", None),
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", permute_q),
        "self_attn.k_proj.weight" => ("attn_k.weight", permute_k),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "self_attn.q_proj.bias" => ("attn_q.bias", permute_q),
        "self_attn.k_proj.bias" => ("attn_k.bias", permute_k),
        "self_attn.v_proj.bias" => ("attn_v.bias", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return None,
    };
    Some((format!("blk.{l}.{g}"), perm))
}

/// Loads a dense GGUF onto `dev` (F32, HF layout).
pub fn load_gguf(path: &Path, dev: &Device) -> Result<DenseModel> {
    let f = GgufFile::open(path)?;
    load_gguf_file(&f, dev)
}

pub fn load_gguf_file(f: &GgufFile, dev: &Device) -> Result<DenseModel> {
    let config = gguf_config(f)?;
    let tokenizer_meta: Vec<(String, Value)> = f
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .cloned()
        .collect();
    let name = f
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_string();
    let hd = config.head_dim;
    let c2 = config.clone();
    let mut get = |hf: &str| -> Result<Option<Tensor>> {
        let Some((g, perm)) = gguf_name(hf, &c2) else {
            return Ok(None);
        };
        let Some(t) = dequantize(f, &g)? else {
            return Ok(None);
        };
        match perm {
            None => Ok(Some(t)),
            Some(heads) => {
                let rows = t.dim(0)?;
                if rows != heads * hd {
                    return Err(ConvertError::BadShape {
                        name: g,
                        got: t.dims().to_vec(),
                        want: vec![heads * hd],
                    });
                }
                let within = adjacent_of_half(hd);
                let idx: Vec<u32> = (0..rows)
                    .map(|r| ((r / hd) * hd + within[r % hd]) as u32)
                    .collect();
                Ok(Some(t.index_select(
                    &Tensor::from_vec(idx, rows, t.device())?,
                    0,
                )?))
            }
        }
    };
    assemble(config, &mut get, dev, tokenizer_meta, name)
}
