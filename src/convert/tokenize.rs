//! The model's tokenizer, built from the `tokenizer.ggml.*` metadata the converter carries over
//! (the same keys whether the model came from a GGUF or a converted tokenizer.json).

use super::{ConvertError, Result};
use crate::gguf::{Strings, Value};
use crate::tokenizer::{SpecialIds, Tokenizer, TokenizerSpec};

fn strings(meta: &[(String, Value)], key: &str) -> Result<Option<Strings>> {
    let Some((_, v)) = meta.iter().find(|(k, _)| k == key) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| ConvertError::Tokenizer(format!("`{key}` is not an array")))?;
    let strings = arr
        .as_strings()
        .ok_or_else(|| ConvertError::Tokenizer(format!("`{key}` is not an array of strings")))?;
    Ok(Some(strings.clone()))
}

pub fn tokenizer_from_meta(meta: &[(String, Value)]) -> Result<Tokenizer> {
    let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let id = |k: &str| get(k).and_then(Value::as_u64).map(|v| v as u32);
    let model = get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::Tokenizer("no tokenizer.ggml.model".into()))?;
    let token_types = get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.values().map(|v| v.as_i64().unwrap_or(1) as i32).collect());
    let scores = get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .map(|a| a.values().map(|v| v.as_f32().unwrap_or(0.0)).collect());
    let spec = TokenizerSpec {
        model: model.to_string(),
        pre: get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .map(str::to_string),
        tokens: strings(meta, "tokenizer.ggml.tokens")?
            .ok_or_else(|| ConvertError::Tokenizer("no tokenizer.ggml.tokens".into()))?,
        scores,
        token_types,
        merges: strings(meta, "tokenizer.ggml.merges")?.unwrap_or_default(),
        special: SpecialIds {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot: id("tokenizer.ggml.eot_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            ..SpecialIds::default()
        },
        add_bos: get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool),
        add_eos: get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool),
        add_space_prefix: get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool),
    };
    Tokenizer::from_spec(spec).map_err(|e| ConvertError::Tokenizer(e.to_string()))
}
