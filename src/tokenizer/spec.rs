//! The plain data a tokenizer is built from (the `tokenizer.ggml.*` metadata), and its errors.

use crate::gguf::Strings;

/// A tokenizer's description as stored in GGUF metadata; optional fields are absent keys.
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer ("smollm", "llama3", "qwen2", "gpt-2", ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Strings,
    /// `tokenizer.ggml.scores` (SentencePiece merge priorities).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: "left right", highest priority first (BPE only).
    pub merges: Strings,
    /// Special token ids from `tokenizer.ggml.{bos,eos,eot,eom,unknown,padding,...}_token_id`.
    pub special: SpecialIds,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
}

/// Special token ids as the metadata states them (each may be absent).
#[derive(Clone, Debug, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: &'static str },
    #[error("metadata key `{key}` has the wrong type: expected {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("tokenizer model `{0}` is not supported (supported: gpt2, llama)")]
    UnsupportedModel(String),
    #[error("BPE pre-tokenizer `{0}` is not supported (supported: default, gpt-2 family, smollm/starcoder family, llama3 family, qwen2 family)")]
    UnsupportedPreTokenizer(String),
    #[error("the vocabulary is empty")]
    EmptyVocab,
    #[error("token {id} is listed twice in the vocabulary")]
    DuplicateToken { id: u32 },
    #[error("`{key}` has {got} entries but the vocabulary has {expected}")]
    LengthMismatch {
        key: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("merge rule {index} (`{rule}`) is not of the form `left right`")]
    BadMerge { index: usize, rule: String },
    #[error("the vocabulary has more than 2^31 tokens")]
    VocabTooLarge,
    #[error("the model adds a {which} token but has no valid {which} token id")]
    MissingSpecial { which: &'static str },
}
