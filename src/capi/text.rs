//! Text in and out: tokenize, detokenize, special tokens, chat templates.

use std::ffi::c_char;

use super::args::{out_arg, slice_arg, str_arg, write_array, write_out, write_string};
use super::handles::{self, tomoe_model};
use super::status::{guard, tomoe_status, CapiError};
use crate::chat::ChatMessage;
use crate::tokenizer::Tokenizer;

/// The value of a token out-parameter when the model has no such token.
pub const TOMOE_TOKEN_NONE: u32 = 0xFFFF_FFFF;

/// One chat message for `tomoe_chat_apply`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
#[allow(non_camel_case_types)]
pub struct tomoe_chat_message {
    /// "system", "user" or "assistant" (NUL-terminated UTF-8).
    pub role: *const c_char,
    /// The message text (NUL-terminated UTF-8).
    pub content: *const c_char,
}

pub(crate) fn check_tokens(tokenizer: &Tokenizer, tokens: &[u32]) -> Result<(), CapiError> {
    let vocab = tokenizer.vocab_size();
    match tokens.iter().position(|&t| t as usize >= vocab) {
        Some(i) => Err(CapiError::invalid(format!(
            "token {} at index {i} is outside the vocabulary ({vocab} tokens)",
            tokens[i]
        ))),
        None => Ok(()),
    }
}

/// Splits `text` into token ids. `add_bos` adds the beginning-of-sequence token when the model's
/// metadata says it uses one (as llama.cpp's `add_special`); `parse_special` turns special-token
/// text such as `<|im_start|>` into its token instead of plain text.
///
/// All `*n_tokens` ids are written when they fit in `capacity`; otherwise nothing is written,
/// `*n_tokens` holds the count needed, and the result is `TOMOE_ERR_BUFFER_TOO_SMALL` (so a
/// capacity of 0 with a NULL `tokens` asks for the size).
///
/// # Safety
/// `text` is NUL-terminated; `tokens` points to `capacity` writable ids (or is NULL with
/// `capacity` 0); `n_tokens` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_tokenize(
    model: *const tomoe_model,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    tokens: *mut u32,
    capacity: usize,
    n_tokens: *mut usize,
) -> tomoe_status {
    guard(|| {
        let n_tokens = out_arg(n_tokens, "n_tokens")?;
        let state = handles::model(model)?;
        // SAFETY: NUL-terminated by contract.
        let text = unsafe { str_arg(text, "text") }?;
        let ids = state.model.tokenizer().encode(text, add_bos, parse_special);
        // SAFETY: `capacity` writable ids by contract; checked length pointer.
        unsafe {
            write_array(&ids, tokens, capacity, n_tokens, "tokens", |cap| {
                format!("the text is {} tokens; the buffer holds {cap}", ids.len())
            })
        }
    })
}

/// Turns token ids back into text (invalid UTF-8 from partial tokens becomes U+FFFD). Writes the
/// text and a NUL when it fits in `capacity` bytes; `*text_len` always receives the text's length
/// without the NUL (`TOMOE_ERR_BUFFER_TOO_SMALL` when it does not fit).
///
/// # Safety
/// `tokens` points to `n_tokens` ids; `buf` to `capacity` writable bytes (or NULL with `capacity`
/// 0); `text_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_detokenize(
    model: *const tomoe_model,
    tokens: *const u32,
    n_tokens: usize,
    buf: *mut c_char,
    capacity: usize,
    text_len: *mut usize,
) -> tomoe_status {
    guard(|| {
        let text_len = out_arg(text_len, "text_len")?;
        let state = handles::model(model)?;
        // SAFETY: `n_tokens` ids by contract.
        let ids = unsafe { slice_arg(tokens, n_tokens, "tokens") }?;
        let tokenizer = state.model.tokenizer();
        check_tokens(tokenizer, ids)?;
        let text = tokenizer.decode(ids);
        // SAFETY: buffer and length pointer by contract; `text_len` checked.
        unsafe { write_string(text.as_bytes(), buf, capacity, text_len) }
    })
}

/// The raw bytes of one token (not NUL-terminated; they may be part of a UTF-8 sequence).
/// Same buffer convention as `tomoe_detokenize`, except that no NUL is counted or written.
///
/// # Safety
/// `buf` points to `capacity` writable bytes (or is NULL with `capacity` 0); `n_bytes` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_token_bytes(
    model: *const tomoe_model,
    token: u32,
    buf: *mut u8,
    capacity: usize,
    n_bytes: *mut usize,
) -> tomoe_status {
    guard(|| {
        let n_bytes = out_arg(n_bytes, "n_bytes")?;
        let state = handles::model(model)?;
        let tokenizer = state.model.tokenizer();
        check_tokens(tokenizer, &[token])?;
        let bytes = tokenizer.token_bytes(token);
        // SAFETY: `capacity` writable bytes by contract; checked length pointer.
        unsafe {
            write_array(bytes, buf, capacity, n_bytes, "buf", |cap| {
                format!(
                    "token {token} is {} bytes; the buffer holds {cap}",
                    bytes.len()
                )
            })
        }
    })
}

/// The beginning- and end-of-sequence tokens (`TOMOE_TOKEN_NONE` if the model has none). Either
/// output pointer may be NULL.
///
/// # Safety
/// `bos` and `eos` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_special_tokens(
    model: *const tomoe_model,
    bos: *mut u32,
    eos: *mut u32,
) -> tomoe_status {
    guard(|| {
        let state = handles::model(model)?;
        let tokenizer = state.model.tokenizer();
        for (ptr, value, what) in [(bos, tokenizer.bos(), "bos"), (eos, tokenizer.eos(), "eos")] {
            if !ptr.is_null() {
                let ptr = out_arg(ptr, what)?;
                // SAFETY: checked output pointer.
                unsafe { write_out(ptr, value.unwrap_or(TOMOE_TOKEN_NONE)) };
            }
        }
        Ok(())
    })
}

/// Whether `token` ends generation (end of sequence, end of turn, `<|im_end|>`, ...).
///
/// # Safety
/// `is_eog` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_token_is_eog(
    model: *const tomoe_model,
    token: u32,
    is_eog: *mut bool,
) -> tomoe_status {
    guard(|| {
        let is_eog = out_arg(is_eog, "is_eog")?;
        let state = handles::model(model)?;
        let tokenizer = state.model.tokenizer();
        check_tokens(tokenizer, &[token])?;
        // SAFETY: checked output pointer.
        unsafe { write_out(is_eog, tokenizer.is_eog(token)) };
        Ok(())
    })
}

/// Renders a conversation with the model's chat template into a prompt for `tomoe_generate`.
/// `add_generation_prompt` appends the opening of the assistant's turn. Same buffer convention as
/// `tomoe_detokenize`. `TOMOE_ERR_NO_CHAT_TEMPLATE` when the file has none.
///
/// # Safety
/// `messages` points to `n_messages` messages whose strings are NUL-terminated; `buf` to
/// `capacity` writable bytes (or NULL with `capacity` 0); `text_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn tomoe_chat_apply(
    model: *const tomoe_model,
    messages: *const tomoe_chat_message,
    n_messages: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    capacity: usize,
    text_len: *mut usize,
) -> tomoe_status {
    guard(|| {
        let text_len = out_arg(text_len, "text_len")?;
        let state = handles::model(model)?;
        // SAFETY: `n_messages` messages by contract.
        let messages = unsafe { slice_arg(messages, n_messages, "messages") }?;
        let mut owned = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            // SAFETY: NUL-terminated strings by contract.
            let role = unsafe { str_arg(m.role, &format!("messages[{i}].role")) }?;
            // SAFETY: as above.
            let content = unsafe { str_arg(m.content, &format!("messages[{i}].content")) }?;
            owned.push(ChatMessage {
                role: role.to_owned(),
                content: content.to_owned(),
            });
        }
        let template = state.model.chat_template().ok_or_else(|| {
            CapiError::new(
                tomoe_status::TOMOE_ERR_NO_CHAT_TEMPLATE,
                "the model has no chat template",
            )
        })?;
        let text = template
            .render(&owned, add_generation_prompt)
            .map_err(|e| {
                CapiError::from_error(
                    tomoe_status::TOMOE_ERR_CHAT_TEMPLATE,
                    "rendering the chat template",
                    &e,
                )
            })?;
        // SAFETY: buffer and length pointer by contract; `text_len` checked.
        unsafe { write_string(text.as_bytes(), buf, capacity, text_len) }
    })
}
