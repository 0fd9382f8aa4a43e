//! The C ABI (`include/tomoe.h`, generated from this module by cbindgen).
//!
//! Conventions, for every function:
//! - Fallible calls return a [`tomoe_status`]; on failure `tomoe_last_error()` on the same thread
//!   holds a message. No panic crosses the boundary (`status::guard`).
//! - Handles ([`tomoe_model`], [`tomoe_context`]) are opaque tokens checked against a registry
//!   ([`handles`]): a NULL, freed or made-up handle is an error code, never a crash.
//! - One model may be shared by any number of contexts on any threads; one context serves one
//!   call at a time.
//! - Strings are NUL-terminated UTF-8. Output strings and arrays go into caller buffers; the
//!   length needed is always reported, so a caller can size the buffer with a first call.
//!
//! Layout: [`status`] (codes, messages, the guard), [`args`] (checked raw arguments),
//! [`handles`] (the registry), [`model`], [`text`], [`context`].

// C names (`tomoe_model`, `tomoe_status`): the generated header must read like C.
#![allow(non_camel_case_types)]

pub mod args;
pub mod context;
pub mod handles;
pub mod model;
pub mod status;
pub mod text;

pub use context::*;
pub use handles::{tomoe_context, tomoe_model};
pub use model::*;
pub use status::*;
pub use text::*;

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

/// The library version ("0.1.0"), static, NUL-terminated.
#[no_mangle]
pub extern "C" fn tomoe_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The matrix kernel set chosen for this CPU at run time ("avx512-vnni", "avxvnni", "avx2",
/// "neon-dotprod", "neon", "scalar"), static, NUL-terminated.
#[no_mangle]
pub extern "C" fn tomoe_kernel_name() -> *const c_char {
    static NAME: OnceLock<CString> = OnceLock::new();
    // Feature detection does not panic, but no entry point may unwind into C.
    std::panic::catch_unwind(|| {
        NAME.get_or_init(|| CString::new(tomoe_quant::kernel_name()).unwrap_or_default())
            .as_ptr()
    })
    .unwrap_or(c"unknown".as_ptr())
}
