//! Loading, describing and freeing models.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

use super::args::{out_arg, slice_arg, str_arg, write_out};
use super::handles::{self, tomoe_model};
use super::status::{guard, tomoe_status, CapiError};
use crate::gguf::GgufFile;
use crate::model::tomoe_schema as schema;
use crate::engine::{LoadOptions, Model};

/// Length of `tomoe_model_info::architecture`, NUL included.
pub const TOMOE_ARCH_NAME_LEN: usize = 32;

/// What a model is: filled by `tomoe_model_get_info`.
///
/// Fields are only ever appended: `copies_bytes` and `file_bytes` came last. The struct has no
/// size field, so a program must be built against the header of the library it runs with (one
/// built against an older header passes a smaller struct).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
#[allow(non_camel_case_types)]
pub struct tomoe_model_info {
    /// `general.architecture` of the file ("llama", "gemma3", ...), NUL-terminated (truncated to
    /// fit if longer).
    pub architecture: [c_char; TOMOE_ARCH_NAME_LEN],
    /// Number of tokens in the vocabulary (the length of a logits vector).
    pub n_vocab: u32,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Hidden size.
    pub n_embd: u32,
    /// Number of decoder layers.
    pub n_layer: u32,
    /// Attention query heads.
    pub n_head: u32,
    /// Attention key/value heads.
    pub n_head_kv: u32,
    /// Experts per MLP layer; 0 for a dense model.
    pub n_expert: u32,
    /// Experts each token uses; 0 for a dense model.
    pub n_expert_used: u32,
    /// All weights stored in the file (every tensor's element count).
    pub n_params: u64,
    /// Weights one token reads: `n_params` for a dense model; for a ggml Mixture-of-Experts model
    /// the expert weights count by the share of experts a token uses; for a ToMoE model the
    /// decoder-block projections count by the file's measured `tomoe.active_fraction` (an average
    /// over tokens) of the dense model's.
    pub n_active_params: u64,
    /// Bytes the model holds in memory beyond the file: the copies of the matrices that decoding
    /// reads, made at load (`tomoe_model_params::copies`); 0 without copies.
    pub copies_bytes: u64,
    /// Size of the GGUF file in bytes: mapped for `tomoe_model_load*` (resident as its pages are
    /// read), a copy in memory for `tomoe_model_load_from_memory`. A model's memory is at most
    /// `file_bytes + copies_bytes`, plus each context's KV cache: a mapped file's pages behind
    /// the copies are given back, so such a model holds its copies and the file's other bytes.
    pub file_bytes: u64,
}

/// How `tomoe_model_load_with_params` loads a model; start from `tomoe_model_default_params()`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
#[allow(non_camel_case_types)]
pub struct tomoe_model_params {
    /// `sizeof(tomoe_model_params)` in the caller's build, as `tomoe_model_default_params()`
    /// sets it: later versions only append fields, and read those the caller's size covers.
    pub size: usize,
    /// Copy the matrices that decoding reads into one buffer at load: faster decoding for more
    /// memory; false runs from the file alone. Default: true, false when the environment
    /// variable TOMOE_NO_COPIES is set.
    pub copies: bool,
    /// The kernel set by name ("scalar", "avx2", "avxvnni", "avx512-vnni", "neon", "neon-dotprod"; see
    /// `tomoe_kernel_name()`), or NULL: TOMOE_KERNELS, else the set the process uses. The set is
    /// process-wide and chosen once, by the first load that names one or else at the first
    /// computation: a name this CPU lacks, or other than the set in use, gives
    /// `TOMOE_ERR_INVALID_ARGUMENT`.
    pub kernels: *const c_char,
}

/// A loaded model and its description, as kept in the handle registry.
pub(crate) struct ModelState {
    pub(crate) model: Arc<Model>,
    pub(crate) info: tomoe_model_info,
}

fn meta_u32(file: &GgufFile, key: &str) -> u32 {
    // Some architectures store per-layer arrays (e.g. head_count_kv); the first entry describes
    // the model well enough for an info struct.
    let value = match file.get(key) {
        Some(v) => v,
        None => return 0,
    };
    let first = value.as_array().and_then(|a| a.get(0));
    first
        .as_ref()
        .unwrap_or(value)
        .as_u64()
        .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// The description of a model, from its GGUF metadata and tensor shapes.
fn describe(file: &GgufFile, n_vocab: usize) -> tomoe_model_info {
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let mut architecture = [0 as c_char; TOMOE_ARCH_NAME_LEN];
    for (dst, &src) in architecture
        .iter_mut()
        .zip(arch.as_bytes().iter().take(TOMOE_ARCH_NAME_LEN - 1))
    {
        *dst = src as c_char;
    }
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let n_expert = meta_u32(file, &key("expert_count"));
    let n_expert_used = meta_u32(file, &key("expert_used_count"));

    let elements = |dims: &[u64]| dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d));
    let n_params = file
        .tensors()
        .iter()
        .fold(0u64, |acc, t| acc.saturating_add(elements(&t.dims)));
    let n_active_params = active_params(file, arch, n_params, n_expert, n_expert_used);

    tomoe_model_info {
        architecture,
        n_vocab: u32::try_from(n_vocab).unwrap_or(u32::MAX),
        n_ctx_train: meta_u32(file, &key("context_length")),
        n_embd: meta_u32(file, &key("embedding_length")),
        n_layer: meta_u32(file, &key("block_count")),
        n_head: meta_u32(file, &key("attention.head_count")),
        n_head_kv: meta_u32(file, &key("attention.head_count_kv")),
        n_expert,
        n_expert_used,
        n_params,
        n_active_params,
        copies_bytes: 0,
        file_bytes: 0,
    }
}

/// Weights one token reads (see `tomoe_model_info::n_active_params`).
fn active_params(
    file: &GgufFile,
    arch: &str,
    n_params: u64,
    n_expert: u32,
    n_expert_used: u32,
) -> u64 {
    let elements = |dims: &[u64]| dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d));
    let sum_where = |keep: &dyn Fn(&str) -> bool| {
        file.tensors()
            .iter()
            .filter(|t| keep(&t.name))
            .fold(0u64, |acc, t| acc.saturating_add(elements(&t.dims)))
    };
    // A ToMoE file (docs/FORMAT.md) records the active share of the decoder-block projections,
    // measured by the converter against the dense model's block projections; everything else
    // (embeddings, norms, routers, V-mask heads) is read for every token.
    let fraction = file.get(schema::ACTIVE_FRACTION).and_then(|v| v.as_f32());
    if let (true, Some(fraction)) = (arch.starts_with(schema::ARCH_PREFIX), fraction) {
        const PROJECTIONS: [&str; 7] = [
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            schema::FFN_DOWN_T,
        ];
        // `blk.N.<projection>`
        let is_projection = |name: &str| {
            PROJECTIONS.iter().any(|p| {
                name.strip_suffix(p)
                    .is_some_and(|layer| layer.ends_with('.'))
            })
        };
        let stored = sum_where(&is_projection);
        let key = |suffix: &str| format!("{arch}.{suffix}");
        let get = |suffix: &str| u64::from(meta_u32(file, &key(suffix)));
        let (d, m, layers) = (
            get("embedding_length"),
            get("feed_forward_length"),
            get("block_count"),
        );
        let (heads, kv_heads, hd) = (
            get("attention.head_count"),
            get("attention.head_count_kv"),
            get("attention.key_length"),
        );
        // Dense block: q,k and v,o over full head dims, plus gate, up and down.
        let dense_block = layers * (2 * d * (heads + kv_heads) * hd + 3 * d * m);
        let active_block =
            (f64::from(fraction.clamp(0.0, 1.0)) * dense_block as f64).round() as u64;
        return n_params.saturating_sub(stored).saturating_add(active_block);
    }
    // Stacked expert tensors (`blk.N.ffn_{gate,up,down}_exps.weight`, the ggml convention) are
    // read only for the experts a token is routed to.
    let expert_params = sum_where(&|name| name.contains("_exps"));
    if n_expert > 0 && expert_params > 0 {
        let used = u64::from(n_expert_used.min(n_expert));
        n_params - expert_params + expert_params / u64::from(n_expert) * used
    } else {
        n_params
    }
}

/// Loads `file`, whose size is `file_bytes`.
fn load(file: GgufFile, file_bytes: u64, opts: &LoadOptions) -> Result<ModelState, CapiError> {
    // The description is taken before the model takes ownership of the file.
    let info_without_vocab = describe(&file, 0);
    let model = Model::from_gguf_with(file, opts).map_err(|e| {
        CapiError::from_error(tomoe_status::TOMOE_ERR_MODEL_LOAD, "loading the model", &e)
    })?;
    let n_vocab = model.tokenizer().vocab_size();
    let info = tomoe_model_info {
        n_vocab: u32::try_from(n_vocab).unwrap_or(u32::MAX),
        copies_bytes: model.copies_bytes() as u64,
        file_bytes,
        ..info_without_vocab
    };
    Ok(ModelState {
        model: Arc::new(model),
        info,
    })
}

/// The size of the file at `path`, just opened (0 if it cannot be read again).
fn file_size(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn load_error(what: &str, e: &crate::gguf::GgufError) -> CapiError {
    CapiError::from_error(tomoe_status::TOMOE_ERR_MODEL_LOAD, what, e)
}

/// Loads a GGUF model file (memory-mapped, fully validated). On success `*out_model` is a new
/// handle, to be released with `tomoe_model_free`; on failure it is set to NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_model_load(
    path: *const c_char,
    out_model: *mut *mut tomoe_model,
) -> tomoe_status {
    // SAFETY: the same contract, with the default parameters (NULL).
    unsafe { tomoe_model_load_with_params(path, std::ptr::null(), out_model) }
}

/// Default model parameters: `size` set, copies unless TOMOE_NO_COPIES is set, `kernels` NULL.
#[no_mangle]
pub extern "C" fn tomoe_model_default_params() -> tomoe_model_params {
    tomoe_model_params {
        size: std::mem::size_of::<tomoe_model_params>(),
        copies: LoadOptions::default().copies,
        kernels: std::ptr::null(),
    }
}

/// The load options of a caller's parameters (NULL: the defaults).
///
/// # Safety
/// `params` is NULL or points to a `tomoe_model_params` of the size its `size` field says, whose
/// `kernels` is NULL or a NUL-terminated string.
unsafe fn load_options(params: *const tomoe_model_params) -> Result<LoadOptions, CapiError> {
    let mut opts = LoadOptions::default();
    if params.is_null() {
        return Ok(opts);
    }
    // SAFETY: the size field comes first in every version; read unaligned so a packed caller
    // struct is no problem.
    let size = unsafe { params.cast::<usize>().read_unaligned() };
    let ours = std::mem::size_of::<tomoe_model_params>();
    if size != ours {
        return Err(CapiError::invalid(format!(
            "params->size is {size}, this library's tomoe_model_params has {ours} bytes: \
             start from tomoe_model_default_params() and build against this library's tomoe.h"
        )));
    }
    // SAFETY: a whole struct of this version, by the size check and the caller's contract.
    let p = unsafe { params.read_unaligned() };
    opts.copies = p.copies;
    if !p.kernels.is_null() {
        // SAFETY: NUL-terminated by contract.
        let name = unsafe { str_arg(p.kernels, "params->kernels") }?;
        // Checked here, before the file is read, to report a bad argument as one.
        tomoe_quant::dispatch::select_kernels(name)
            .map_err(|e| CapiError::invalid(format!("params->kernels: {e}")))?;
        opts.kernels = Some(name.to_string());
    }
    Ok(opts)
}

/// Loads a GGUF model file as `params` says (NULL: the defaults, as `tomoe_model_load`). On
/// success `*out_model` is a new handle, to be released with `tomoe_model_free`; on failure it
/// is set to NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `params` is NULL or points to a
/// `tomoe_model_params` filled in from `tomoe_model_default_params()`; `out_model` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_model_load_with_params(
    path: *const c_char,
    params: *const tomoe_model_params,
    out_model: *mut *mut tomoe_model,
) -> tomoe_status {
    guard(|| {
        let out_model = out_arg(out_model, "out_model")?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_model, std::ptr::null_mut()) };
        // SAFETY: NUL-terminated by contract.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: by contract.
        let opts = unsafe { load_options(params) }?;
        let file = GgufFile::open(Path::new(path))
            .map_err(|e| load_error(&format!("opening {path}"), &e))?;
        let handle = handles::insert_model(load(file, file_size(path), &opts)?)?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_model, handle) };
        Ok(())
    })
}

/// Loads a model from a GGUF file image in memory. The bytes are copied: the caller may free
/// `data` as soon as this returns. On failure `*out_model` is set to NULL.
///
/// # Safety
/// `data` points to `len` readable bytes; `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_model_load_from_memory(
    data: *const u8,
    len: usize,
    out_model: *mut *mut tomoe_model,
) -> tomoe_status {
    guard(|| {
        let out_model = out_arg(out_model, "out_model")?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_model, std::ptr::null_mut()) };
        if data.is_null() {
            return Err(CapiError::null("data"));
        }
        // SAFETY: `len` readable bytes by contract.
        let bytes = unsafe { slice_arg(data, len, "data") }?;
        let file = GgufFile::from_bytes(bytes.to_vec())
            .map_err(|e| load_error("reading the GGUF image in memory", &e))?;
        let handle = handles::insert_model(load(file, len as u64, &LoadOptions::default())?)?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_model, handle) };
        Ok(())
    })
}

/// Releases a model handle. Contexts created from it stay valid: the model's memory is released
/// when the last of them is freed. NULL is accepted and does nothing; a handle that is not live
/// gives `TOMOE_ERR_INVALID_HANDLE`.
#[no_mangle]
pub extern "C" fn tomoe_model_free(model: *mut tomoe_model) -> tomoe_status {
    guard(|| {
        if model.is_null() {
            return Ok(());
        }
        drop(handles::remove_model(model)?);
        Ok(())
    })
}

/// Describes a model (architecture, sizes, experts, parameters, memory).
///
/// # Safety
/// `out_info` is NULL or points to a writable `tomoe_model_info`.
#[no_mangle]
pub unsafe extern "C" fn tomoe_model_get_info(
    model: *const tomoe_model,
    out_info: *mut tomoe_model_info,
) -> tomoe_status {
    guard(|| {
        let out_info = out_arg(out_info, "out_info")?;
        let state = handles::model(model)?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_info, state.info) };
        Ok(())
    })
}
