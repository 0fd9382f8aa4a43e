//! tomoe: run dense and ToMoE (Mixture-of-Experts converted) LLMs on CPUs.
//!
//! The pipeline, in the order data flows:
//! - [`gguf`]: the file format (memory-mapped, validated reader; aligned, atomic writer).
//! - [`model`]: a pure view of a model file: configuration from metadata (one file per
//!   architecture), tokenizer, chat template, weights as views into the file.
//! - [`engine`]: the loaded model (`engine::Model`: the weights' decoding copies and read plans, as
//!   `engine::LoadOptions` say), KV cache, forward pass, batch and single-token paths over
//!   `tomoe_quant` kernels.
//! - [`tokenizer`], [`chat`]: text in and out: BPE/SentencePiece, chat templates, sampling.
//! - [`generate`]: prompt tokens → sampled text, with stop conditions (used by every front end).
//! - `convert` (feature `convert`): dense model → trained routers and masks → MoE GGUF.
//! - `server` (feature `server`): an OpenAI-compatible HTTP server over [`generate`].
//! - [`capi`]: the C ABI.
//! - [`huge_pages`]: buffers on transparent huge pages, for the weights' copies and the KV cache.

pub mod capi;
pub mod chat;
#[cfg(feature = "convert")]
pub mod convert;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod huge_pages;
pub mod model;
#[cfg(feature = "server")]
pub mod server;
pub mod tokenizer;
