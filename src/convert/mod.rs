//! The converter (feature `convert`): dense model → trained routers and expert masks → MoE GGUF.
//!
//! Data flows through the modules in this order:
//! - [`dense`]: the dense model's configuration and weights as candle tensors (HF rotate-half Q/K
//!   layout), loaded from a Hugging Face folder ([`hf`]) or a dense GGUF ([`gguf_in`]).
//! - [`forward`]: the frozen model's forward pass with optional masks (teacher = no masks).
//! - [`hyper`]: the hypernetwork (learned inputs → bidirectional GRU → per-module heads) and the
//!   straight-through Gumbel estimators.
//! - [`data`]: calibration text → token ids → training/held-out windows.
//! - [`train`]: losses, AdamW, the training loop, checkpoints.
//! - [`converted`]: the converted model (union neurons, expert sets, routers, qk_index, V-mask
//!   heads), its deterministic reference forward, active-parameter measurement and calibration.
//! - [`baselines`]: static structured pruning and MoEfication at the same active fraction.
//! - [`export`]: the ToMoE GGUF (docs/FORMAT.md) and the llama.cpp-compatible MoE GGUF.

pub mod baselines;
pub mod converted;
pub mod data;
pub mod dense;
pub mod eval;
pub mod export;
pub mod forward;
pub mod gguf_in;
pub mod hf;
pub mod hyper;
pub mod tokenize;
pub mod train;

use std::path::PathBuf;

/// Everything that can go wrong in a conversion; each variant names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("unsupported architecture `{0}` (supported: llama, qwen2)")]
    UnsupportedArch(String),
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {want:?}")]
    BadShape { name: String, got: Vec<usize>, want: Vec<usize> },
    #[error("invalid argument: {0}")]
    InvalidArg(String),
    #[error("calibration data: {0}")]
    Data(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("GGUF: {0}")]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ConvertError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ConvertError {
    let path = path.into();
    move |source| ConvertError::Io { path, source }
}
