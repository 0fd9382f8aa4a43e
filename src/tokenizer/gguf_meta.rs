//! Reading a [`TokenizerSpec`] from a GGUF file's `tokenizer.ggml.*` metadata.

use super::{SpecialIds, Tokenizer, TokenizerError, TokenizerSpec};
use crate::gguf::{Array, GgufFile, Strings, Value};

impl Tokenizer {
    /// Builds the tokenizer described by the file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_spec(spec_from_gguf(f)?)
    }
}

fn meta<'a>(f: &'a GgufFile, key: &str) -> Option<&'a Value> {
    f.get(key)
}

fn meta_str(f: &GgufFile, key: &'static str) -> Result<Option<String>, TokenizerError> {
    match meta(f, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or(TokenizerError::WrongType {
                key,
                expected: "string",
            }),
    }
}

fn meta_bool(f: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match meta(f, key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::WrongType {
            key,
            expected: "bool",
        }),
    }
}

fn meta_id(f: &GgufFile, key: &'static str) -> Result<Option<u32>, TokenizerError> {
    match meta(f, key) {
        None => Ok(None),
        // Negative or huge ids (some converters write -1 for "none") mean "absent".
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => Ok(u32::try_from(u).ok()),
            (None, Some(_)) => Ok(None),
            (None, None) => Err(TokenizerError::WrongType {
                key,
                expected: "integer",
            }),
        },
    }
}

fn meta_array<'a>(
    f: &'a GgufFile,
    key: &'static str,
) -> Result<Option<&'a Array>, TokenizerError> {
    match meta(f, key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).ok_or(TokenizerError::WrongType {
            key,
            expected: "array",
        }),
    }
}

fn strings(arr: &Array, key: &'static str) -> Result<Strings, TokenizerError> {
    arr.as_strings().cloned().ok_or(TokenizerError::WrongType {
        key,
        expected: "array of strings",
    })
}

/// Reads the `tokenizer.ggml.*` keys into a [`TokenizerSpec`].
pub fn spec_from_gguf(f: &GgufFile) -> Result<TokenizerSpec, TokenizerError> {
    let model = meta_str(f, "tokenizer.ggml.model")?.ok_or(TokenizerError::MissingKey {
        key: "tokenizer.ggml.model",
    })?;
    let tokens_key = "tokenizer.ggml.tokens";
    let tokens = strings(
        meta_array(f, tokens_key)?.ok_or(TokenizerError::MissingKey { key: tokens_key })?,
        tokens_key,
    )?;
    let scores = match meta_array(f, "tokenizer.ggml.scores")? {
        None => None,
        Some(arr) => Some(
            match arr {
                Array::F32(x) => x.clone(),
                Array::I32(x) => x.iter().map(|&x| x as f32).collect(),
                _ => {
                    return Err(TokenizerError::WrongType {
                        key: "tokenizer.ggml.scores",
                        expected: "array of f32 or i32",
                    })
                }
            },
        ),
    };
    let token_types = match meta_array(f, "tokenizer.ggml.token_type")? {
        None => None,
        Some(arr) => Some(
            match arr {
                Array::I32(x) => x.clone(),
                _ => {
                    return Err(TokenizerError::WrongType {
                        key: "tokenizer.ggml.token_type",
                        expected: "array of i32",
                    })
                }
            },
        ),
    };
    let merges_key = "tokenizer.ggml.merges";
    let merges = match meta_array(f, merges_key)? {
        Some(arr) => strings(arr, merges_key)?,
        None if model == "gpt2" => return Err(TokenizerError::MissingKey { key: merges_key }),
        None => Strings::new(),
    };
    let special = SpecialIds {
        bos: meta_id(f, "tokenizer.ggml.bos_token_id")?,
        eos: meta_id(f, "tokenizer.ggml.eos_token_id")?,
        eot: meta_id(f, "tokenizer.ggml.eot_token_id")?,
        eom: meta_id(f, "tokenizer.ggml.eom_token_id")?,
        unk: meta_id(f, "tokenizer.ggml.unknown_token_id")?,
        sep: meta_id(f, "tokenizer.ggml.seperator_token_id")?,
        pad: meta_id(f, "tokenizer.ggml.padding_token_id")?,
        mask: meta_id(f, "tokenizer.ggml.mask_token_id")?,
        fim_pre: meta_id(f, "tokenizer.ggml.fim_pre_token_id")?
            .or(meta_id(f, "tokenizer.ggml.prefix_token_id")?),
        fim_suf: meta_id(f, "tokenizer.ggml.fim_suf_token_id")?
            .or(meta_id(f, "tokenizer.ggml.suffix_token_id")?),
        fim_mid: meta_id(f, "tokenizer.ggml.fim_mid_token_id")?
            .or(meta_id(f, "tokenizer.ggml.middle_token_id")?),
        fim_pad: meta_id(f, "tokenizer.ggml.fim_pad_token_id")?,
        fim_rep: meta_id(f, "tokenizer.ggml.fim_rep_token_id")?,
        fim_sep: meta_id(f, "tokenizer.ggml.fim_sep_token_id")?,
    };
    Ok(TokenizerSpec {
        model,
        pre: meta_str(f, "tokenizer.ggml.pre")?,
        tokens,
        scores,
        token_types,
        merges,
        special,
        add_bos: meta_bool(f, "tokenizer.ggml.add_bos_token")?,
        add_eos: meta_bool(f, "tokenizer.ggml.add_eos_token")?,
        add_space_prefix: meta_bool(f, "tokenizer.ggml.add_space_prefix")?,
    })
}
