//! Status codes, the thread-local error message, and the guard every entry point runs in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of every fallible call. `TOMOE_OK` is 0; for any other value, `tomoe_last_error()`
/// on the same thread describes what went wrong.
#[repr(i32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum tomoe_status {
    TOMOE_OK = 0,
    /// A required pointer argument is NULL.
    TOMOE_ERR_NULL_ARGUMENT = 1,
    /// A handle is not a live handle of the expected kind (already freed, never created, or of
    /// another kind).
    TOMOE_ERR_INVALID_HANDLE = 2,
    /// An argument is out of range: a token id beyond the vocabulary, a misaligned pointer, a NaN
    /// sampling parameter, ...
    TOMOE_ERR_INVALID_ARGUMENT = 3,
    /// A string argument is not valid UTF-8.
    TOMOE_ERR_INVALID_UTF8 = 4,
    /// The model file could not be read, is not valid GGUF, or describes an unsupported model.
    TOMOE_ERR_MODEL_LOAD = 5,
    /// The output buffer is too small; the size needed was written to the length argument.
    TOMOE_ERR_BUFFER_TOO_SMALL = 6,
    /// The tokens do not fit in the context (its `n_ctx`); nothing was evaluated.
    TOMOE_ERR_CONTEXT_FULL = 7,
    /// The model file has no chat template.
    TOMOE_ERR_NO_CHAT_TEMPLATE = 8,
    /// The chat template failed to render these messages.
    TOMOE_ERR_CHAT_TEMPLATE = 9,
    /// Creating a context or evaluating tokens failed.
    TOMOE_ERR_ENGINE = 10,
    /// The context is in use by another call: concurrent use from two threads, or a call from
    /// inside the generation callback on the context that is generating.
    TOMOE_ERR_BUSY = 11,
    /// An earlier call on this context failed inside the engine; its state is unknown.
    /// `tomoe_context_clear` makes it usable again.
    TOMOE_ERR_POISONED = 12,
    /// An internal error (a bug in tomoe) was caught at the library boundary.
    TOMOE_ERR_INTERNAL = 13,
}

/// A failed call: the code returned to C and the message kept for `tomoe_last_error`.
#[derive(Debug)]
pub(crate) struct CapiError {
    pub(crate) status: tomoe_status,
    pub(crate) message: String,
}

impl CapiError {
    pub(crate) fn new(status: tomoe_status, message: impl Into<String>) -> Self {
        CapiError {
            status,
            message: message.into(),
        }
    }

    /// A NULL pointer where `what` was required.
    pub(crate) fn null(what: &str) -> Self {
        Self::new(
            tomoe_status::TOMOE_ERR_NULL_ARGUMENT,
            format!("{what} is NULL"),
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(tomoe_status::TOMOE_ERR_INVALID_ARGUMENT, message)
    }

    /// An error from the Rust API, with its chain of causes, under `status`.
    pub(crate) fn from_error(
        status: tomoe_status,
        context: &str,
        err: &dyn std::error::Error,
    ) -> Self {
        let mut message = format!("{context}: {err}");
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(status, message)
    }
}

thread_local! {
    /// Message of the last failed call on this thread; empty after a successful one.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A NUL inside the message would cut it short in C; it cannot come from our own messages
    // but may come from a file name, so it is replaced rather than trusted.
    let bytes: Vec<u8> = message
        .bytes()
        .map(|b| if b == 0 { b'?' } else { b })
        .collect();
    let message = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = message);
}

fn clear_last_error() {
    LAST_ERROR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if !slot.as_bytes().is_empty() {
            *slot = CString::default();
        }
    });
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs the body of an entry point: clears the thread's error message, turns an `Err` into its
/// status code plus message, and stops any panic at the boundary (unwinding into C is undefined
/// behaviour). `AssertUnwindSafe` holds because shared state is either immutable (the model) or
/// behind a mutex that a panic poisons (a context), which later calls report as
/// `TOMOE_ERR_POISONED`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), CapiError>) -> tomoe_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => tomoe_status::TOMOE_OK,
        Ok(Err(err)) => {
            set_last_error(&err.message);
            err.status
        }
        Err(payload) => {
            set_last_error(&format!(
                "internal error (panic): {}",
                panic_message(payload.as_ref())
            ));
            tomoe_status::TOMOE_ERR_INTERNAL
        }
    }
}

/// The message of the last failed call on the calling thread, or "" if the last call succeeded.
/// The string is owned by the library and stays valid until the next tomoe call on this thread.
/// Never NULL.
#[no_mangle]
pub extern "C" fn tomoe_last_error() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

/// A short constant name for a status code ("TOMOE_OK", "TOMOE_ERR_BUSY", ...); "unknown status"
/// for a value that is not a status code. Never NULL; the string is static.
#[no_mangle]
pub extern "C" fn tomoe_status_name(status: i32) -> *const c_char {
    use tomoe_status::*;
    let name: &'static [u8] = match status {
        s if s == TOMOE_OK as i32 => b"TOMOE_OK\0",
        s if s == TOMOE_ERR_NULL_ARGUMENT as i32 => b"TOMOE_ERR_NULL_ARGUMENT\0",
        s if s == TOMOE_ERR_INVALID_HANDLE as i32 => b"TOMOE_ERR_INVALID_HANDLE\0",
        s if s == TOMOE_ERR_INVALID_ARGUMENT as i32 => b"TOMOE_ERR_INVALID_ARGUMENT\0",
        s if s == TOMOE_ERR_INVALID_UTF8 as i32 => b"TOMOE_ERR_INVALID_UTF8\0",
        s if s == TOMOE_ERR_MODEL_LOAD as i32 => b"TOMOE_ERR_MODEL_LOAD\0",
        s if s == TOMOE_ERR_BUFFER_TOO_SMALL as i32 => b"TOMOE_ERR_BUFFER_TOO_SMALL\0",
        s if s == TOMOE_ERR_CONTEXT_FULL as i32 => b"TOMOE_ERR_CONTEXT_FULL\0",
        s if s == TOMOE_ERR_NO_CHAT_TEMPLATE as i32 => b"TOMOE_ERR_NO_CHAT_TEMPLATE\0",
        s if s == TOMOE_ERR_CHAT_TEMPLATE as i32 => b"TOMOE_ERR_CHAT_TEMPLATE\0",
        s if s == TOMOE_ERR_ENGINE as i32 => b"TOMOE_ERR_ENGINE\0",
        s if s == TOMOE_ERR_BUSY as i32 => b"TOMOE_ERR_BUSY\0",
        s if s == TOMOE_ERR_POISONED as i32 => b"TOMOE_ERR_POISONED\0",
        s if s == TOMOE_ERR_INTERNAL as i32 => b"TOMOE_ERR_INTERNAL\0",
        _ => b"unknown status\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: never NULL; valid until the next call on this thread.
        unsafe { CStr::from_ptr(tomoe_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_stops_at_the_guard() {
        let st = guard(|| panic!("boom {}", 42));
        assert_eq!(st, tomoe_status::TOMOE_ERR_INTERNAL);
        assert_eq!(last_error(), "internal error (panic): boom 42");
        assert_eq!(guard(|| Ok(())), tomoe_status::TOMOE_OK);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn errors_keep_their_code_and_message() {
        let st = guard(|| Err(CapiError::new(tomoe_status::TOMOE_ERR_BUSY, "in\0use")));
        assert_eq!(st, tomoe_status::TOMOE_ERR_BUSY);
        assert_eq!(
            last_error(),
            "in?use",
            "an interior NUL does not cut the message"
        );
    }
}
