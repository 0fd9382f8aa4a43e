//! A pure view of one model file: the configuration from GGUF metadata (one file per
//! architecture), the tokenizer, the chat template and the weights as views into the mapped
//! file. The decoding copies and read plans are the engine's (`engine::Model`).

mod config;
mod gemma3;
mod llama;
mod qwen2;
pub mod random;
pub mod tomoe;
pub mod tomoe_schema;
mod weights;

pub use config::{Activation, Arch, ModelConfig, RopeStyle};
pub use weights::{Attention, DenseMlp, LayerWeights, Mlp, StackedExperts, Weights};

use crate::chat::{ChatError, ChatTemplate};
use crate::gguf::{GgufError, GgufFile};
use crate::tokenizer::{Tokenizer, TokenizerError};
use config::Meta;
use std::path::Path;
use weights::LayerTensors;

/// A supported architecture: its `general.architecture` name, how its configuration reads the
/// metadata, the layer tensors it requires, and whether its files are ToMoE conversions.
struct ArchEntry {
    name: &'static str,
    config: fn(&Meta, usize) -> Result<ModelConfig, ModelError>,
    tensors: LayerTensors,
    tomoe: bool,
}

static ARCHS: [ArchEntry; 6] = [
    ArchEntry { name: "llama", config: llama::config, tensors: llama::TENSORS, tomoe: false },
    ArchEntry { name: "qwen2", config: qwen2::config, tensors: qwen2::TENSORS, tomoe: false },
    ArchEntry { name: "gemma3", config: gemma3::config, tensors: gemma3::TENSORS, tomoe: false },
    ArchEntry { name: "tomoe-llama", config: llama::config, tensors: llama::TENSORS, tomoe: true },
    ArchEntry { name: "tomoe-qwen2", config: qwen2::config, tensors: qwen2::TENSORS, tomoe: true },
    ArchEntry { name: "tomoe-gemma3", config: gemma3::config, tensors: gemma3::TENSORS, tomoe: true },
];

/// The names of [`ARCHS`], comma-separated, for [`ModelError::UnknownArch`]'s message.
fn supported_archs() -> String {
    ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

/// Why a file is not a model this runtime reads. Each variant names the key or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("the file has no `general.architecture` key")]
    MissingArch,
    #[error("unknown architecture {0:?} (supported: {})", supported_archs())]
    UnknownArch(String),
    #[error("metadata key `{0}` is missing")]
    MissingMetadata(String),
    #[error("metadata key `{key}` must be {expected}")]
    BadMetadata { key: String, expected: &'static str },
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{name}` has dims {found:?}, expected {expected:?}")]
    BadTensorShape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("chat template: {0}")]
    Chat(#[from] ChatError),
}

/// A model file opened for running: its configuration, tokenizer, chat template and weights, all
/// read from the file and the weights' matrices left in it (views into the mapping). Nothing is
/// copied and no kernel is chosen: the engine's `engine::Model` makes the decoding copies.
pub struct ModelFile {
    // Declared before `file`: views into it, dropped first.
    weights: Weights<'static>,
    config: ModelConfig,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    /// Why the file's own template was replaced by ChatML, if it was.
    template_warning: Option<String>,
    file: Box<GgufFile>,
}

impl ModelFile {
    /// Opens (memory-maps) and validates `path`.
    pub fn open(path: &Path) -> Result<ModelFile, ModelError> {
        ModelFile::from_gguf(GgufFile::open(path)?)
    }

    /// Validates an opened file.
    pub fn from_gguf(f: GgufFile) -> Result<ModelFile, ModelError> {
        let file = Box::new(f);
        let arch_name = file.get("general.architecture").and_then(|v| v.as_str()).ok_or(ModelError::MissingArch)?;
        let entry = ARCHS
            .iter()
            .find(|a| a.name == arch_name)
            .ok_or_else(|| ModelError::UnknownArch(arch_name.to_string()))?;
        let (arch, tensors) = (entry.name, entry.tensors);
        let n_vocab = match file.tensor("token_embd.weight") {
            Some(t) if t.info.dims.len() == 2 => usize::try_from(t.info.dims[1]).map_err(|_| {
                ModelError::BadTensor { name: "token_embd.weight".into(), reason: "too many rows".into() }
            })?,
            Some(t) => {
                return Err(ModelError::BadTensor {
                    name: "token_embd.weight".into(),
                    reason: format!("{} dims, expected 2", t.info.dims.len()),
                })
            }
            None => return Err(ModelError::MissingTensor("token_embd.weight".into())),
        };
        let meta = Meta { file: &file, arch };
        let mut config = (entry.config)(&meta, n_vocab)?;
        if entry.tomoe {
            config.tomoe = Some(tomoe::config(&file, arch)?);
        }
        let tokenizer = Tokenizer::from_gguf(&file)?;
        // A template that does not parse (or has the wrong type) must not make the model
        // unusable: chat falls back to ChatML, as llama.cpp does, and says so.
        let (chat_template, template_warning) = match ChatTemplate::from_gguf(&file) {
            Ok(t) => (t, None),
            Err(e) => {
                let chatml = ChatTemplate::builtin("chatml").expect("built in");
                let warning = format!("the model's chat template cannot be used ({e}); using ChatML instead");
                (Some(ChatTemplate::with_file_tokens(&file, chatml)?), Some(warning))
            }
        };
        // SAFETY: the views borrow the GgufFile inside `file`, a Box that this ModelFile owns,
        // never mutates, never moves out of, and drops after `weights` (field order); its heap
        // address is stable when the ModelFile moves. The 'static lifetime never escapes:
        // `weights()` hands them out bounded by `&self`, and `weights_static` only to a caller
        // that promises the same bound.
        let file_ref: &'static GgufFile = unsafe { &*(&*file as *const GgufFile) };
        let weights = Weights::load(file_ref, &config, tensors)?;
        Ok(ModelFile { weights, config, tokenizer, chat_template, template_warning, file })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The chat template: the file's own, ChatML if the file's could not be used (see
    /// [`ModelFile::chat_template_warning`]), `None` if the file has none.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
    /// Set when the file's chat template does not parse and ChatML replaced it: the reason.
    pub fn chat_template_warning(&self) -> Option<&str> {
        self.template_warning.as_deref()
    }
    /// The weights as the file holds them (views into it).
    pub fn weights(&self) -> &Weights<'_> {
        &self.weights
    }
    /// [`ModelFile::weights`] with the lifetime they have inside this ModelFile, for an owner
    /// that builds views of its own from them (the engine's decoding copies).
    ///
    /// # Safety
    /// The views, and every view made from them, must be dropped before this ModelFile is (a
    /// move of the ModelFile keeps them valid: the file they view is boxed).
    pub(crate) unsafe fn weights_static(&self) -> &Weights<'static> {
        &self.weights
    }
    /// The underlying file (metadata and tensor table).
    pub fn gguf(&self) -> &GgufFile {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_arch_lists_every_supported_name() {
        let msg = ModelError::UnknownArch("gpt2".into()).to_string();
        assert!(msg.starts_with("unknown architecture \"gpt2\" (supported: llama, "), "{msg}");
        for a in &ARCHS {
            assert!(msg.contains(a.name), "{msg} lacks {}", a.name);
        }
    }
}
