//! Model configuration from GGUF metadata, one file per architecture, and the weights as views
//! into the memory-mapped file or into the copies made at load (on huge pages).

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
use crate::huge_pages::HugeBuf;
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

/// Why a model could not be loaded. Each variant names the key or tensor at fault.
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
    #[error(
        "could not map memory for the weights' copies ({0}); load without copies (`--no-copies`, \
         TOMOE_NO_COPIES=1) to run from the mapped file alone"
    )]
    CopyMemory(std::io::Error),
    #[error(transparent)]
    Kernels(#[from] tomoe_quant::dispatch::SelectKernelsError),
}

/// How [`Model::load_with`] loads a model. `LoadOptions::default()` takes each option from its
/// environment variable, so that programs without the option still offer it: `TOMOE_NO_COPIES`
/// (set: `copies: false`) and `TOMOE_KERNELS` (a kernel set name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Copy the matrices that decoding reads into one buffer at load: row-interleaved where the
    /// kernel set has interleaved kernels, plain (on huge pages) for a mapped file. Faster
    /// decoding for more memory; `false` runs from the mapped file alone
    /// ([`Model::copies_bytes`] is 0).
    pub copies: bool,
    /// The kernel set, by name ("scalar", "avx2", "avxvnni", "avx512-vnni", "neon", "neon-dotprod": those
    /// of `tomoe_quant::dispatch::available_sets()`); `None`: the set the process uses
    /// (chosen at its first use: `TOMOE_KERNELS`, else the best this CPU runs). The set is
    /// process-wide and chosen once (`tomoe_quant::dispatch::select_kernels`): a name this CPU
    /// lacks, or other than the set already in use, fails the load with [`ModelError::Kernels`].
    pub kernels: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            copies: std::env::var_os("TOMOE_NO_COPIES").is_none(),
            kernels: std::env::var("TOMOE_KERNELS").ok().filter(|name| !name.is_empty()),
        }
    }
}

/// A loaded model: configuration, weights (views into the mapped file), tokenizer and chat
/// template. Immutable, shared between contexts with `Arc`.
pub struct Model {
    // Declared before `file`: views into it, dropped first.
    weights: Weights<'static>,
    /// The matrices' decoding copies (see `Weights::make_copies`), viewed by `weights`;
    /// declared after it, so dropped after it.
    copies: HugeBuf<u8>,
    config: ModelConfig,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    /// Why the file's own template was replaced by ChatML, if it was.
    template_warning: Option<String>,
    file: Box<GgufFile>,
}

impl Model {
    /// Opens (memory-maps) and validates `path`, with the default [`LoadOptions`] (those of the
    /// environment).
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// Opens (memory-maps) and validates `path`, as `opts` says.
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        Model::from_gguf_with(GgufFile::open(path)?, opts)
    }

    /// Validates an opened file, with the default [`LoadOptions`].
    pub fn from_gguf(f: GgufFile) -> Result<Model, ModelError> {
        Model::from_gguf_with(f, &LoadOptions::default())
    }

    /// Validates an opened file, as `opts` says.
    pub fn from_gguf_with(f: GgufFile, opts: &LoadOptions) -> Result<Model, ModelError> {
        // First: the copies' layout depends on the kernel set.
        if let Some(name) = &opts.kernels {
            tomoe_quant::dispatch::select_kernels(name)?;
        }
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
        // SAFETY: the views borrow the GgufFile inside `file`, a Box that this Model owns, never
        // mutates, never moves out of, and drops after `weights` (field order); its heap
        // address is stable when the Model moves. The 'static lifetime never escapes: `weights()`
        // hands them out bounded by `&self`.
        let file_ref: &'static GgufFile = unsafe { &*(&*file as *const GgufFile) };
        let mut weights = Weights::load(file_ref, &config, tensors)?;
        let copies = if !opts.copies {
            HugeBuf::zeroed(0).map_err(ModelError::CopyMemory)?
        } else {
            // Plain copies only of a mapped file: a buffer in memory is not worth a second copy.
            let plain = file_ref.is_mapped() && crate::huge_pages::available();
            // Copying a matrix reads its bytes in; nothing reads them again. Each is given back as
            // it is copied, and all together at the end, the pages between them included.
            let mut given_back = Vec::new();
            let copies = weights
                .make_copies(plain, |bytes| {
                    file_ref.release(bytes);
                    given_back.push(bytes);
                })
                .map_err(ModelError::CopyMemory)?;
            file_ref.release_many(given_back);
            copies
        };
        Ok(Model { weights, copies, config, tokenizer, chat_template, template_warning, file })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// The chat template: the file's own, ChatML if the file's could not be used (see
    /// [`Model::chat_template_warning`]), `None` if the file has none.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
    /// Set when the file's chat template does not parse and ChatML replaced it: the reason.
    pub fn chat_template_warning(&self) -> Option<&str> {
        self.template_warning.as_deref()
    }
    /// Bytes of the matrices' copies made at load: interleaved where the kernel set has
    /// interleaved kernels, plain where the system has huge pages (0 without copies:
    /// [`LoadOptions::copies`]).
    pub fn copies_bytes(&self) -> usize {
        self.copies.len()
    }
    pub fn weights(&self) -> &Weights<'_> {
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
