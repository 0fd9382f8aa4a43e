//! Hugging Face model folders: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, `tokenizer.json` (+ `tokenizer_config.json` for BOS/EOS and the chat
//! template), converted to the GGUF tokenizer keys llama.cpp uses.

use super::dense::{assemble, Arch, DenseConfig, DenseModel};
use super::{io_err, ConvertError, Result};
use crate::gguf::Value;
use candle_core::{Device, Tensor};
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ConvertError::Config {
        path: path.into(),
        msg: e.to_string(),
    })
}

/// Parses `config.json` into the dense configuration; rejects what the forward pass does not model.
pub fn parse_config(path: &Path) -> Result<DenseConfig> {
    let j = read_json(path)?;
    let cfg_err = |msg: String| ConvertError::Config {
        path: path.into(),
        msg,
    };
    let arch_name = j
        .get("model_type")
        .and_then(Json::as_str)
        .ok_or_else(|| cfg_err("no model_type".into()))?;
    let arch = Arch::from_name(arch_name)?;
    if arch == Arch::Gemma3 {
        return Err(ConvertError::Unsupported(
            "Gemma 3 from a Hugging Face folder (convert it to GGUF first, then pass the .gguf)".into(),
        ));
    }
    let usize_key = |k: &str| -> Result<usize> {
        j.get(k)
            .and_then(Json::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| cfg_err(format!("missing or non-integer `{k}`")))
    };
    let f32_key = |k: &str, default: f32| -> f32 {
        j.get(k)
            .and_then(Json::as_f64)
            .map(|v| v as f32)
            .unwrap_or(default)
    };
    if let Some(rs) = j.get("rope_scaling") {
        if !rs.is_null() {
            return Err(ConvertError::Unsupported(format!(
                "rope_scaling {rs} (only plain RoPE is modelled)"
            )));
        }
    }
    if j.get("hidden_act")
        .and_then(Json::as_str)
        .is_some_and(|a| a != "silu")
    {
        return Err(ConvertError::Unsupported(format!(
            "hidden_act {} (only silu)",
            j["hidden_act"]
        )));
    }
    let d = usize_key("hidden_size")?;
    let n_heads = usize_key("num_attention_heads")?;
    let head_dim = match j.get("head_dim").and_then(Json::as_u64) {
        Some(h) => h as usize,
        None if n_heads > 0 && d % n_heads == 0 => d / n_heads,
        None => {
            return Err(cfg_err(format!(
                "hidden_size {d} not divisible by {n_heads} heads and no head_dim"
            )))
        }
    };
    let config = DenseConfig {
        arch,
        n_layers: usize_key("num_hidden_layers")?,
        d,
        m: usize_key("intermediate_size")?,
        n_heads,
        n_kv_heads: j
            .get("num_key_value_heads")
            .and_then(Json::as_u64)
            .map(|v| v as usize)
            .unwrap_or(n_heads),
        head_dim,
        vocab: usize_key("vocab_size")?,
        rms_eps: f32_key("rms_norm_eps", 1e-6),
        rope_theta: f32_key("rope_theta", 10000.0),
        context_length: usize_key("max_position_embeddings").unwrap_or(2048),
        tied_embeddings: j
            .get("tie_word_embeddings")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        gemma3: None,
    };
    config.validate().map_err(|e| cfg_err(e.to_string()))?;
    Ok(config)
}

/// The safetensors files of a folder: the shards named by the index, else `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let j = read_json(&index)?;
        let map = j
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| ConvertError::Config {
                path: index.clone(),
                msg: "no weight_map object".into(),
            })?;
        let mut files = BTreeSet::new();
        for (name, file) in map {
            let f = file.as_str().ok_or_else(|| ConvertError::Config {
                path: index.clone(),
                msg: format!("weight_map[{name}] is not a string"),
            })?;
            if f.contains('/') || f.contains("..") {
                return Err(ConvertError::Config {
                    path: index.clone(),
                    msg: format!("shard path `{f}` leaves the folder"),
                });
            }
            files.insert(dir.join(f));
        }
        return Ok(files.into_iter().collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ConvertError::Config {
        path: dir.into(),
        msg: "no model.safetensors or model.safetensors.index.json".into(),
    })
}

/// Loads a Hugging Face folder onto `dev` (F32).
pub fn load_hf(dir: &Path, dev: &Device) -> Result<DenseModel> {
    let config = parse_config(&dir.join("config.json"))?;
    let mut all: HashMap<String, Tensor> = HashMap::new();
    for f in safetensors_files(dir)? {
        if !f.is_file() {
            return Err(ConvertError::Io {
                path: f,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let tensors =
            candle_core::safetensors::load(&f, &Device::Cpu).map_err(|e| ConvertError::Config {
                path: f.clone(),
                msg: e.to_string(),
            })?;
        all.extend(tensors);
    }
    let tokenizer_meta = tokenizer_metadata(dir, config.arch)?;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut get = |n: &str| -> Result<Option<Tensor>> { Ok(all.remove(n)) };
    assemble(config, &mut get, dev, tokenizer_meta, name)
}

/// Converts `tokenizer.json` (byte-level BPE) and `tokenizer_config.json` to GGUF tokenizer keys.
/// SentencePiece-style tokenizers are refused: convert such models through a dense GGUF.
pub fn tokenizer_metadata(dir: &Path, arch: Arch) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let j = read_json(&path)?;
    let bad = |msg: String| ConvertError::Tokenizer(format!("{}: {msg}", path.display()));
    let model = j.get("model").ok_or_else(|| bad("no `model`".into()))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE")
        || model.get("byte_fallback").and_then(Json::as_bool) == Some(true)
    {
        return Err(bad(
            "only byte-level BPE tokenizers are converted from tokenizer.json".into(),
        ));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("no model.vocab".into()))?;
    let mut by_id: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |tok: &str, id: u64, ty: i32| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < (1 << 24))
            .ok_or_else(|| bad(format!("token id {id} out of range")))?;
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in vocab {
        put(
            tok,
            id.as_u64()
                .ok_or_else(|| bad(format!("vocab id of `{tok}`")))?,
            1,
        )?;
    }
    let mut special: HashMap<String, u32> = HashMap::new();
    if let Some(added) = j.get("added_tokens").and_then(Json::as_array) {
        for a in added {
            let (Some(tok), Some(id)) = (
                a.get("content").and_then(Json::as_str),
                a.get("id").and_then(Json::as_u64),
            ) else {
                return Err(bad("malformed added_tokens entry".into()));
            };
            let is_special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            put(tok, id, if is_special { 3 } else { 4 })?;
            special.insert(tok.to_string(), id as u32);
        }
    }
    let mut tokens = Vec::with_capacity(by_id.len());
    let mut types = Vec::with_capacity(by_id.len());
    for (i, t) in by_id.into_iter().enumerate() {
        // Holes in the id space get a placeholder, as llama.cpp's converter does.
        let (tok, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), 5));
        tokens.push(tok);
        types.push(ty);
    }
    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        Some(ms) => ms
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or(""),
                    p[1].as_str().unwrap_or("")
                )),
                _ => Err(bad("malformed merge".into())),
            })
            .collect::<Result<_>>()?,
        None => return Err(bad("no model.merges".into())),
    };
    let pre = match arch {
        Arch::Llama => "llama-bpe",
        Arch::Qwen2 => "qwen2",
        Arch::Gemma3 => {
            return Err(ConvertError::Unsupported(
                "a Gemma 3 tokenizer from a Hugging Face folder (use the model's GGUF)".into(),
            ))
        }
    };
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::from(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::from(types)),
        ("tokenizer.ggml.merges".to_string(), Value::from(merges)),
    ];
    let cfg_path = dir.join("tokenizer_config.json");
    if cfg_path.is_file() {
        let c = read_json(&cfg_path)?;
        // A token may be a plain string or an AddedToken object with `content`.
        let tok_name = |k: &str| -> Option<String> {
            match c.get(k)? {
                Json::String(s) => Some(s.clone()),
                o => o.get("content").and_then(Json::as_str).map(str::to_string),
            }
        };
        for (key, gguf_key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ] {
            if let Some(id) = tok_name(key).and_then(|t| special.get(&t).copied()) {
                meta.push((gguf_key.to_string(), Value::U32(id)));
            }
        }
        if let Some(b) = c.get("add_bos_token").and_then(Json::as_bool) {
            meta.push(("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(b)));
        }
        if let Some(t) = c.get("chat_template").and_then(Json::as_str) {
            meta.push((
                "tokenizer.chat_template".to_string(),
                Value::String(t.to_string()),
            ));
        }
    }
    Ok(meta)
}
