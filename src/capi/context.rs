//! Contexts: creating them, evaluating tokens, sampling, and streaming generation.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::args::{out_arg, out_slice_arg, slice_arg, str_arg, write_out};
use super::handles::{self, tomoe_context, tomoe_model};
use super::status::{guard, tomoe_status, CapiError};
use super::text::{check_tokens, TOMOE_TOKEN_NONE};
use crate::chat::{Sampler, SamplerParams};
use crate::engine::{CacheTypes, Context, ContextParams, KvType, Model};
use crate::generate::{GenerateError, GenerateOptions, Generator, StopReason};

/// Parameters of a new context; start from `tomoe_context_default_params()`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
#[allow(non_camel_case_types)]
pub struct tomoe_context_params {
    /// Maximum number of tokens the context holds (prompt plus generated); 0 = the model's
    /// training context length. The KV cache is sized for it up front.
    pub n_ctx: u32,
    /// Worker threads for evaluation; 0 = one per physical core (big cores on a hybrid CPU).
    pub n_threads: u32,
    /// Most prompt tokens evaluated in one batch; 0 = the default (512).
    pub n_batch: u32,
    /// Seed of the sampler's random stream (same seed, same parameters, same tokens).
    pub seed: u64,
    /// Element type of the cached keys: `TOMOE_KV_F32` or `TOMOE_KV_F16` (llama.cpp's
    /// `type_k`, with ggml's type numbers).
    pub type_k: u32,
    /// Element type of the cached values, as `type_k`.
    pub type_v: u32,
}

/// A KV cache of f32 values (ggml's `GGML_TYPE_F32`).
pub const TOMOE_KV_F32: u32 = 0;
/// A KV cache of f16 values (ggml's `GGML_TYPE_F16`): half the memory; attention rounds as
/// llama.cpp's CPU backend with an f16 cache and no flash attention.
pub const TOMOE_KV_F16: u32 = 1;

fn kv_type(code: u32, which: &str) -> Result<KvType, CapiError> {
    match code {
        TOMOE_KV_F32 => Ok(KvType::F32),
        TOMOE_KV_F16 => Ok(KvType::F16),
        _ => Err(CapiError::invalid(format!(
            "{which} {code} is not a KV cache type (TOMOE_KV_F32 or TOMOE_KV_F16)"
        ))),
    }
}

fn kv_code(ty: KvType) -> u32 {
    match ty {
        KvType::F32 => TOMOE_KV_F32,
        KvType::F16 => TOMOE_KV_F16,
    }
}

/// How tokens are chosen from the logits; start from `tomoe_sampling_default_params()` (llama.cpp's
/// defaults).
#[repr(C)]
#[derive(Copy, Clone, Debug)]
#[allow(non_camel_case_types)]
pub struct tomoe_sampling_params {
    /// Softmax temperature; <= 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches top_p; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 disables.
    pub min_p: f32,
    /// Penalty for tokens among the last `repeat_last_n` of the context; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at; 0 disables.
    pub repeat_last_n: u32,
}

/// Why `tomoe_generate` stopped.
#[repr(i32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum tomoe_stop_reason {
    /// The model produced an end-of-generation token (not passed to the callback, not added to
    /// the context).
    TOMOE_STOP_EOG = 0,
    /// `max_tokens` tokens were generated.
    TOMOE_STOP_MAX_TOKENS = 1,
    /// The callback returned false.
    TOMOE_STOP_CALLBACK = 2,
    /// The context is full.
    TOMOE_STOP_CONTEXT_FULL = 3,
}

/// What one `tomoe_generate` call did.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
#[allow(non_camel_case_types)]
pub struct tomoe_generate_result {
    /// Tokens the prompt was split into.
    pub n_prompt_tokens: u32,
    /// Tokens generated (each one passed to the callback).
    pub n_generated: u32,
    pub stop_reason: tomoe_stop_reason,
}

/// Receives each generated token during `tomoe_generate`: its id and the text it completes
/// (`piece`, `piece_len` bytes plus a NUL; valid only during the call; may be empty when the token
/// is the first part of a multi-byte character). Return true to continue, false to stop. After
/// the last token, text still held back (an incomplete character) is delivered with token
/// `TOMOE_TOKEN_NONE`, and the return value of that call is ignored.
#[allow(non_camel_case_types)]
pub type tomoe_token_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        token: u32,
        piece: *const c_char,
        piece_len: usize,
    ) -> bool,
>;

const DEFAULT_N_CTX: u32 = 2048;
const DEFAULT_N_BATCH: u32 = 512;

/// A context as kept in the handle registry: the public [`Generator`] (context, sampler, the
/// tokens evaluated and their logits) plus the C ABI's lazily evaluated last token.
pub(crate) struct ContextState {
    model: Arc<Model>,
    gen: Generator,
    n_ctx: usize,
    seed: u64,
    sampling: tomoe_sampling_params,
    /// The last generated token: already given to the caller and part of the context, but not
    /// evaluated yet (the generator keeps the last token it samples out of its context).
    /// Evaluating it lazily saves a forward pass when generation stops.
    pending: Option<u32>,
    /// The callback's piece plus its NUL.
    piece: Vec<u8>,
}

fn sampler_params(p: &tomoe_sampling_params, seed: u64) -> SamplerParams {
    SamplerParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n as usize,
        seed,
    }
}

fn check_sampling(p: &tomoe_sampling_params) -> Result<(), CapiError> {
    let checks = [
        (p.temperature.is_finite(), "temperature must be finite"),
        ((0.0..=1.0).contains(&p.top_p), "top_p must be in [0, 1]"),
        ((0.0..=1.0).contains(&p.min_p), "min_p must be in [0, 1]"),
        (
            p.repeat_penalty.is_finite() && p.repeat_penalty > 0.0,
            "repeat_penalty must be finite and > 0",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, message)) => Err(CapiError::invalid(*message)),
        None => Ok(()),
    }
}

impl ContextState {
    /// The number of tokens in the context, the pending one included.
    fn pos(&self) -> usize {
        self.gen.tokens().len() + usize::from(self.pending.is_some())
    }

    /// `TOMOE_ERR_CONTEXT_FULL` unless `n` more tokens fit in the context.
    fn check_room(&self, n: usize) -> Result<(), CapiError> {
        if self.pos() + n > self.n_ctx {
            return Err(CapiError::new(
                tomoe_status::TOMOE_ERR_CONTEXT_FULL,
                format!(
                    "{n} tokens do not fit: the context holds {} of {}",
                    self.pos(),
                    self.n_ctx
                ),
            ));
        }
        Ok(())
    }

    /// Evaluates the pending token (if any) followed by `tokens`, all or nothing.
    fn eval(&mut self, tokens: &[u32]) -> Result<(), CapiError> {
        self.check_room(tokens.len())?;
        let input: Vec<u32> = self.pending.iter().chain(tokens).copied().collect();
        self.gen.eval(&input).map_err(engine_error)?;
        self.pending = None;
        Ok(())
    }

    /// Samples the next token from the current logits (which it leaves unchanged).
    fn sample(&mut self) -> Result<u32, CapiError> {
        self.eval(&[])?;
        self.gen.sample().ok_or_else(empty_context)
    }

    fn clear(&mut self) {
        self.gen.clear();
        self.pending = None;
    }

    /// Appends `prompt` and generates with [`Generator::generate_tokens`]: the sequence handed
    /// to it is what the context holds (the pending token included) followed by the prompt's
    /// tokens, so it evaluates only the pending token and the prompt. Its token budget is capped
    /// by the room left in the context, which keeps every generated token in the context
    /// (evaluated, or pending for the last one); reaching that cap is `TOMOE_STOP_CONTEXT_FULL`.
    fn generate(
        &mut self,
        prompt: &str,
        max_tokens: u32,
        callback: tomoe_token_callback,
        user_data: *mut c_void,
    ) -> Result<tomoe_generate_result, CapiError> {
        // BOS only at the start of a sequence; special-token text is parsed because prompts
        // come from chat templates.
        let prompt_tokens = self
            .model
            .tokenizer()
            .encode_prompt(prompt, self.pos() == 0);
        self.check_room(prompt_tokens.len())?;
        let mut result = tomoe_generate_result {
            n_prompt_tokens: prompt_tokens.len() as u32,
            n_generated: 0,
            stop_reason: tomoe_stop_reason::TOMOE_STOP_MAX_TOKENS,
        };
        let n_seq = self.pos() + prompt_tokens.len();
        let room = self.n_ctx - n_seq;
        if n_seq == 0 || room == 0 {
            // No token to generate from, or no room for one: the generator takes neither an
            // empty sequence nor one that fills the context. Evaluate the prompt all the same.
            self.eval(&prompt_tokens)?;
            result.stop_reason = match (max_tokens, n_seq) {
                (0, _) => tomoe_stop_reason::TOMOE_STOP_MAX_TOKENS,
                (_, 0) => return Err(empty_context()),
                _ => tomoe_stop_reason::TOMOE_STOP_CONTEXT_FULL,
            };
            return Ok(result);
        }
        let seq: Vec<u32> = self
            .gen
            .tokens()
            .iter()
            .chain(&self.pending)
            .chain(&prompt_tokens)
            .copied()
            .collect();
        let budget_is_room = room < max_tokens as usize;
        let opts = GenerateOptions::max_tokens(room.min(max_tokens as usize));
        let ContextState { gen, piece, .. } = self;
        let out = gen.generate_tokens(&seq, &opts, |token, text| {
            emit(
                piece,
                callback,
                user_data,
                token.unwrap_or(TOMOE_TOKEN_NONE),
                text,
            )
        });
        // The sequence's tokens are all evaluated now, unless evaluating them failed.
        self.pending = None;
        let out = out.map_err(|e| match e {
            GenerateError::Engine(e) => engine_error(e),
            GenerateError::EmptyPrompt => empty_context(),
            e @ GenerateError::PromptTooLong { .. } => {
                CapiError::new(tomoe_status::TOMOE_ERR_CONTEXT_FULL, e.to_string())
            }
        })?;
        result.n_generated = out.tokens.len() as u32;
        result.stop_reason = match out.stop {
            StopReason::EndOfGeneration => tomoe_stop_reason::TOMOE_STOP_EOG,
            StopReason::MaxTokens if budget_is_room => tomoe_stop_reason::TOMOE_STOP_CONTEXT_FULL,
            StopReason::MaxTokens => tomoe_stop_reason::TOMOE_STOP_MAX_TOKENS,
            StopReason::ContextFull => tomoe_stop_reason::TOMOE_STOP_CONTEXT_FULL,
            // No stop strings are given: only the callback stops it otherwise.
            StopReason::Cancelled | StopReason::StopString => {
                tomoe_stop_reason::TOMOE_STOP_CALLBACK
            }
        };
        // The generator keeps the last token it sampled (not an end-of-generation one) out of
        // its context: it is the pending token.
        if out.stop != StopReason::EndOfGeneration {
            self.pending = out.tokens.last().copied();
        }
        Ok(result)
    }
}

/// A failed evaluation: `TOMOE_ERR_ENGINE`.
fn engine_error(e: impl Into<GenerateError>) -> CapiError {
    CapiError::from_error(
        tomoe_status::TOMOE_ERR_ENGINE,
        "evaluating tokens",
        &e.into(),
    )
}

fn empty_context() -> CapiError {
    CapiError::invalid("the context is empty: evaluate a prompt first")
}

/// Calls the callback (if any) with `text` as its piece; returns its answer.
fn emit(
    piece: &mut Vec<u8>,
    callback: tomoe_token_callback,
    user_data: *mut c_void,
    token: u32,
    text: &str,
) -> bool {
    let Some(callback) = callback else {
        return true;
    };
    piece.clear();
    piece.extend_from_slice(text.as_bytes());
    piece.push(0);
    // SAFETY: the callback and `user_data` come from the caller, who guarantees the function is
    // callable with them; the piece buffer is NUL-terminated and outlives the call.
    unsafe { callback(user_data, token, piece.as_ptr().cast(), text.len()) }
}

/// Locks a context for one call. A context used by another call gives `TOMOE_ERR_BUSY` rather
/// than waiting (waiting would deadlock a call made from inside the generation callback). A
/// context whose lock a panic poisoned gives `TOMOE_ERR_POISONED`, unless `recover` is set: then
/// it is cleared and handed out as new.
fn lock(
    ctx: &Mutex<ContextState>,
    recover: bool,
) -> Result<MutexGuard<'_, ContextState>, CapiError> {
    match ctx.try_lock() {
        Ok(guard) => Ok(guard),
        Err(TryLockError::WouldBlock) => Err(CapiError::new(
            tomoe_status::TOMOE_ERR_BUSY,
            "the context is in use by another call (another thread, or the generation callback)",
        )),
        Err(TryLockError::Poisoned(poisoned)) if recover => {
            let mut guard = poisoned.into_inner();
            guard.clear();
            ctx.clear_poison();
            Ok(guard)
        }
        Err(TryLockError::Poisoned(_)) => Err(CapiError::new(
            tomoe_status::TOMOE_ERR_POISONED,
            "an earlier call on this context failed internally; call tomoe_context_clear",
        )),
    }
}

/// Runs `body` on the locked state of a context handle.
fn with_context<T>(
    handle: *const tomoe_context,
    body: impl FnOnce(&mut ContextState) -> Result<T, CapiError>,
) -> Result<T, CapiError> {
    let ctx = handles::context(handle)?;
    let mut state = lock(&ctx, false)?;
    body(&mut state)
}

/// Default context parameters: n_ctx 2048, threads = available CPUs, n_batch 512, the
/// sampler's default seed (llama.cpp's default value 0xFFFFFFFF, used here as an ordinary fixed
/// seed: runs are reproducible unless the caller sets its own), and the engine's default KV
/// cache types.
#[no_mangle]
pub extern "C" fn tomoe_context_default_params() -> tomoe_context_params {
    let types = CacheTypes::default();
    tomoe_context_params {
        n_ctx: DEFAULT_N_CTX,
        n_threads: 0,
        n_batch: DEFAULT_N_BATCH,
        seed: SamplerParams::default().seed,
        type_k: kv_code(types.k),
        type_v: kv_code(types.v),
    }
}

/// Default sampling parameters (llama.cpp's defaults).
#[no_mangle]
pub extern "C" fn tomoe_sampling_default_params() -> tomoe_sampling_params {
    let p = SamplerParams::default();
    tomoe_sampling_params {
        temperature: p.temperature,
        top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: u32::try_from(p.repeat_last_n).unwrap_or(u32::MAX),
    }
}

/// Creates a context over a model, with default sampling parameters. `params` may be NULL for
/// the defaults. The context keeps the model alive: the model handle may be freed first. On
/// failure `*out_ctx` is set to NULL.
///
/// # Safety
/// `params` is NULL or points to a `tomoe_context_params`; `out_ctx` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_context_new(
    model: *const tomoe_model,
    params: *const tomoe_context_params,
    out_ctx: *mut *mut tomoe_context,
) -> tomoe_status {
    guard(|| {
        let out_ctx = out_arg(out_ctx, "out_ctx")?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_ctx, std::ptr::null_mut()) };
        let model = handles::model(model)?;
        let params = if params.is_null() {
            tomoe_context_default_params()
        } else {
            // SAFETY: a non-NULL pointer to a parameter struct by contract; read unaligned so a
            // packed caller struct is no problem.
            unsafe { params.read_unaligned() }
        };
        let n_ctx = match params.n_ctx {
            0 if model.info.n_ctx_train > 0 => model.info.n_ctx_train,
            0 => DEFAULT_N_CTX,
            n => n,
        } as usize;
        let n_threads = match params.n_threads {
            0 => crate::engine::default_threads(),
            n => n as usize,
        };
        let n_batch = match params.n_batch {
            0 => DEFAULT_N_BATCH,
            n => n,
        } as usize;
        let types = CacheTypes {
            k: kv_type(params.type_k, "type_k")?,
            v: kv_type(params.type_v, "type_v")?,
        };
        let ctx = Context::with_cache_types(
            Arc::clone(&model.model),
            ContextParams {
                n_ctx,
                n_threads,
                n_batch,
            },
            types,
        )
        .map_err(|e| {
            CapiError::from_error(tomoe_status::TOMOE_ERR_ENGINE, "creating the context", &e)
        })?;
        let sampling = tomoe_sampling_default_params();
        let vocab = model.model.tokenizer().vocab_size();
        let sampler = Sampler::new(sampler_params(&sampling, params.seed), vocab);
        let state = ContextState {
            model: Arc::clone(&model.model),
            gen: Generator::new(ctx, sampler),
            n_ctx,
            seed: params.seed,
            sampling,
            pending: None,
            piece: Vec::new(),
        };
        let handle = handles::insert_context(state)?;
        // SAFETY: checked output pointer.
        unsafe { write_out(out_ctx, handle) };
        Ok(())
    })
}

/// Releases a context. NULL is accepted and does nothing; a handle that is not live gives
/// `TOMOE_ERR_INVALID_HANDLE`. If another thread is inside a call on it (a caller error), the
/// memory is released when that call returns.
#[no_mangle]
pub extern "C" fn tomoe_context_free(ctx: *mut tomoe_context) -> tomoe_status {
    guard(|| {
        if ctx.is_null() {
            return Ok(());
        }
        drop(handles::remove_context(ctx)?);
        Ok(())
    })
}

/// Sets how tokens are sampled from now on. Restarts the random stream from the context's seed,
/// so the same parameters after the same prompt give the same tokens.
///
/// # Safety
/// `params` points to a `tomoe_sampling_params`.
#[no_mangle]
pub unsafe extern "C" fn tomoe_context_set_sampling(
    ctx: *mut tomoe_context,
    params: *const tomoe_sampling_params,
) -> tomoe_status {
    guard(|| {
        if params.is_null() {
            return Err(CapiError::null("params"));
        }
        // SAFETY: non-NULL pointer to a parameter struct by contract; read unaligned as above.
        let params = unsafe { params.read_unaligned() };
        check_sampling(&params)?;
        with_context(ctx, |state| {
            let vocab = state.model.tokenizer().vocab_size();
            state.sampling = params;
            state
                .gen
                .set_sampler(Sampler::new(sampler_params(&params, state.seed), vocab));
            Ok(())
        })
    })
}

/// Empties the context (KV cache, history) for a new sequence; the sampling parameters stay.
/// Also makes a `TOMOE_ERR_POISONED` context usable again.
#[no_mangle]
pub extern "C" fn tomoe_context_clear(ctx: *mut tomoe_context) -> tomoe_status {
    guard(|| {
        let ctx = handles::context(ctx)?;
        let mut state = lock(&ctx, true)?;
        state.clear();
        let vocab = state.model.tokenizer().vocab_size();
        let (sampling, seed) = (state.sampling, state.seed);
        state
            .gen
            .set_sampler(Sampler::new(sampler_params(&sampling, seed), vocab));
        Ok(())
    })
}

/// The number of tokens in the context.
///
/// # Safety
/// `pos` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_context_pos(
    ctx: *const tomoe_context,
    pos: *mut usize,
) -> tomoe_status {
    guard(|| {
        let pos = out_arg(pos, "pos")?;
        let value = with_context(ctx, |state| Ok(state.pos()))?;
        // SAFETY: checked output pointer.
        unsafe { write_out(pos, value) };
        Ok(())
    })
}

/// Appends tokens to the context and evaluates them (all or nothing: `TOMOE_ERR_CONTEXT_FULL` if
/// they do not fit). Afterwards `tomoe_context_logits` gives the logits after the last token.
///
/// # Safety
/// `tokens` points to `n_tokens` ids.
#[no_mangle]
pub unsafe extern "C" fn tomoe_context_eval(
    ctx: *mut tomoe_context,
    tokens: *const u32,
    n_tokens: usize,
) -> tomoe_status {
    guard(|| {
        // SAFETY: `n_tokens` ids by contract.
        let tokens = unsafe { slice_arg(tokens, n_tokens, "tokens") }?;
        with_context(ctx, |state| {
            check_tokens(state.model.tokenizer(), tokens)?;
            state.eval(tokens)
        })
    })
}

/// Copies the logits after the last evaluated token (`n_vocab` floats, see `tomoe_model_info`)
/// into `logits`; `TOMOE_ERR_BUFFER_TOO_SMALL` if `capacity` is less than `n_vocab`.
///
/// # Safety
/// `logits` points to `capacity` writable floats.
#[no_mangle]
pub unsafe extern "C" fn tomoe_context_logits(
    ctx: *mut tomoe_context,
    logits: *mut f32,
    capacity: usize,
) -> tomoe_status {
    guard(|| {
        with_context(ctx, |state| {
            state.eval(&[])?;
            let values = state.gen.logits();
            if values.is_empty() {
                return Err(empty_context());
            }
            if capacity < values.len() {
                return Err(CapiError::new(
                    tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL,
                    format!(
                        "logits need {} floats; the buffer holds {capacity}",
                        values.len()
                    ),
                ));
            }
            // SAFETY: `capacity` writable floats by contract.
            let out = unsafe { out_slice_arg(logits, capacity, "logits") }?;
            out[..values.len()].copy_from_slice(values);
            Ok(())
        })
    })
}

/// Samples one token from the current logits with the context's sampling parameters. The token
/// is not added to the context: evaluate it with `tomoe_context_eval` to continue.
///
/// # Safety
/// `token` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_context_sample(
    ctx: *mut tomoe_context,
    token: *mut u32,
) -> tomoe_status {
    guard(|| {
        let token = out_arg(token, "token")?;
        let value = with_context(ctx, |state| state.sample())?;
        // SAFETY: checked output pointer.
        unsafe { write_out(token, value) };
        Ok(())
    })
}

/// Appends `prompt` to the context (with BOS if the context is empty, special-token text parsed)
/// and generates up to `max_tokens` tokens, passing each to `callback` (may be NULL). Generation
/// stops at an end-of-generation token, at `max_tokens`, when the callback returns false, or when
/// the context is full; `out_result` (may be NULL) says which and how many tokens. Generated
/// tokens stay in the context, so a later call continues the sequence; `prompt` may be "" to
/// continue without new input. `TOMOE_ERR_CONTEXT_FULL` if the prompt itself does not fit.
///
/// # Safety
/// `prompt` is NUL-terminated; `callback` is NULL or a function callable with `user_data`;
/// `out_result` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_generate(
    ctx: *mut tomoe_context,
    prompt: *const c_char,
    max_tokens: u32,
    callback: tomoe_token_callback,
    user_data: *mut c_void,
    out_result: *mut tomoe_generate_result,
) -> tomoe_status {
    guard(|| {
        // SAFETY: NUL-terminated by contract.
        let prompt = unsafe { str_arg(prompt, "prompt") }?;
        let out_result = if out_result.is_null() {
            None
        } else {
            Some(out_arg(out_result, "out_result")?)
        };
        let result = with_context(ctx, |state| {
            state.generate(prompt, max_tokens, callback, user_data)
        })?;
        if let Some(out) = out_result {
            // SAFETY: checked output pointer.
            unsafe { write_out(out, result) };
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_type_codes_are_ggml_type_numbers() {
        assert_eq!(kv_type(TOMOE_KV_F32, "type_k").unwrap(), KvType::F32);
        assert_eq!(kv_type(TOMOE_KV_F16, "type_v").unwrap(), KvType::F16);
        assert!(kv_type(2, "type_k").is_err());
        let d = tomoe_context_default_params();
        let types = CacheTypes::default();
        assert_eq!((d.type_k, d.type_v), (kv_code(types.k), kv_code(types.v)));
    }
}
