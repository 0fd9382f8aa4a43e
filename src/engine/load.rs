//! A model loaded for running: its file ([`ModelFile`]) and the decoding plan made for it
//! (`plan.rs`), as [`LoadOptions`] say.

use super::plan::{DecodePlan, ExpertReads};
use crate::gguf::GgufFile;
use crate::model::{ModelError, ModelFile, Weights};
use std::path::Path;
use tomoe_quant::dispatch::SelectKernelsError;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not a model this runtime runs.
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "could not map memory for the weights' copies ({0}); load without copies (`--no-copies`, \
         TOMOE_NO_COPIES=1) to run from the mapped file alone"
    )]
    CopyMemory(std::io::Error),
    #[error(transparent)]
    Kernels(#[from] SelectKernelsError),
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
    /// lacks, or other than the set already in use, fails the load with [`LoadError::Kernels`].
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

/// A model ready to run: its [`ModelFile`] (configuration, tokenizer, chat template, the file's
/// weights; reached through `Deref`) and the weights as decoding reads them, with the copies made
/// at load. Immutable, shared between contexts with `Arc`.
pub struct Model {
    // Declared before `file`: views into it, dropped first.
    plan: DecodePlan<'static>,
    file: ModelFile,
}

impl Model {
    /// Opens (memory-maps) and validates `path`, with the default [`LoadOptions`] (those of the
    /// environment).
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// Opens (memory-maps) and validates `path`, as `opts` says.
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Model, LoadError> {
        Model::from_gguf_with(GgufFile::open(path).map_err(ModelError::from)?, opts)
    }

    /// Validates an opened file, with the default [`LoadOptions`].
    pub fn from_gguf(f: GgufFile) -> Result<Model, LoadError> {
        Model::from_gguf_with(f, &LoadOptions::default())
    }

    /// Validates an opened file, as `opts` says.
    pub fn from_gguf_with(f: GgufFile, opts: &LoadOptions) -> Result<Model, LoadError> {
        // First: the copies' layout depends on the kernel set.
        if let Some(name) = &opts.kernels {
            tomoe_quant::dispatch::select_kernels(name)?;
        }
        let file = ModelFile::from_gguf(f)?;
        let plan = if opts.copies {
            // SAFETY: the plan's views, made from these, live in `plan`, which this Model drops
            // before `file` (field order) and hands out only bounded by `&self`.
            let views = unsafe { file.weights_static() };
            DecodePlan::new(views, file.gguf()).map_err(LoadError::CopyMemory)?
        } else {
            DecodePlan::file_only()
        };
        Ok(Model { plan, file })
    }

    /// The file, as [`ModelFile`] (also reached through `Deref`).
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// The weights decoding reads: the file's, their matrices pointed at their copies where they
    /// have one.
    pub fn weights(&self) -> &Weights<'_> {
        self.plan.weights().unwrap_or_else(|| self.file.weights())
    }

    /// How decoding reads the experts of layer `il`, a ToMoE layer whose MLP copies hold its
    /// experts' scattered rows gathered into extra groups; `None`: from the experts' own runs.
    pub fn expert_reads(&self, il: usize) -> Option<&ExpertReads> {
        self.plan.expert_reads(il)
    }

    /// Token `t`'s embedding row: read from the file into `buf` where the output's copy replaced
    /// the embedding's bytes (a tied embedding, whose pages were given back), so that they stay
    /// unmapped (`GgufFile::read_unmapped`); else the mapped row.
    pub(crate) fn embedding_row<'b>(&'b self, t: u32, buf: &'b mut Vec<u8>) -> &'b [u8] {
        let row = self.file.weights().token_embd.row(t as usize);
        if self.plan.embedding_given_back() {
            buf.resize(row.len(), 0);
            if self.file.gguf().read_unmapped(row, buf) {
                return buf;
            }
        }
        row
    }

    /// Bytes of the matrices' copies made at load: interleaved where the kernel set has
    /// interleaved kernels, plain where the system has huge pages (0 without copies:
    /// [`LoadOptions::copies`]).
    pub fn copies_bytes(&self) -> usize {
        self.plan.copies_bytes()
    }
}

impl std::ops::Deref for Model {
    type Target = ModelFile;

    fn deref(&self) -> &ModelFile {
        &self.file
    }
}
