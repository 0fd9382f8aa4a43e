//! The C ABI's error paths without a model: NULL and made-up handles, bad paths and bytes,
//! status names, and the thread-local error message.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use tomoe::capi::*;

fn last_error() -> String {
    // SAFETY: tomoe_last_error never returns NULL and the string lives until the next call.
    unsafe { CStr::from_ptr(tomoe_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A pointer that was never a handle; the library must not dereference it.
fn made_up<T>() -> *mut T {
    0xdead_bee0usize as *mut T
}

#[test]
fn null_arguments_are_reported() {
    let mut model: *mut tomoe_model = made_up();
    // SAFETY: every pointer is NULL or valid; testing NULL handling.
    let st = unsafe { tomoe_model_load(ptr::null(), &mut model) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_NULL_ARGUMENT);
    assert!(
        model.is_null(),
        "the output handle is set to NULL on failure"
    );
    assert!(
        last_error().contains("path"),
        "message names the argument: {}",
        last_error()
    );

    let path = CString::new("/nonexistent.gguf").unwrap();
    // SAFETY: as above.
    let st = unsafe { tomoe_model_load(path.as_ptr(), ptr::null_mut()) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_NULL_ARGUMENT);
    assert!(last_error().contains("out_model"), "{}", last_error());

    // SAFETY: as above.
    let st = unsafe { tomoe_model_load_from_memory(ptr::null(), 10, &mut model) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_NULL_ARGUMENT);

    let mut info = std::mem::MaybeUninit::<tomoe_model_info>::uninit();
    // SAFETY: as above.
    let st = unsafe { tomoe_model_get_info(ptr::null(), info.as_mut_ptr()) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_NULL_ARGUMENT);
    assert!(last_error().contains("model"), "{}", last_error());

    let mut ctx: *mut tomoe_context = made_up();
    // SAFETY: as above.
    let st = unsafe { tomoe_context_new(ptr::null(), ptr::null(), &mut ctx) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_NULL_ARGUMENT);
    assert!(ctx.is_null());

    // SAFETY: as above.
    let st = unsafe {
        tomoe_generate(
            ptr::null_mut(),
            c"hi".as_ptr(),
            4,
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, tomoe_status::TOMOE_ERR_NULL_ARGUMENT);

    // Freeing NULL is a no-op, as free(NULL).
    assert_eq!(tomoe_model_free(ptr::null_mut()), tomoe_status::TOMOE_OK);
    assert_eq!(tomoe_context_free(ptr::null_mut()), tomoe_status::TOMOE_OK);
    assert_eq!(last_error(), "", "a successful call clears the message");
}

#[test]
fn made_up_handles_are_rejected_without_dereferencing() {
    let mut n = 0usize;
    let mut info = std::mem::MaybeUninit::<tomoe_model_info>::uninit();
    // SAFETY: the handles are never dereferenced (that is what this test checks); the other
    // pointers are valid.
    unsafe {
        assert_eq!(
            tomoe_model_get_info(made_up(), info.as_mut_ptr()),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
        assert!(
            last_error().contains("not a live model handle"),
            "{}",
            last_error()
        );
        assert_eq!(
            tomoe_tokenize(
                made_up(),
                c"hello".as_ptr(),
                true,
                false,
                ptr::null_mut(),
                0,
                &mut n
            ),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
        assert_eq!(
            tomoe_context_pos(made_up(), &mut n),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
        assert_eq!(
            tomoe_context_clear(made_up()),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
        assert_eq!(
            tomoe_context_eval(made_up(), ptr::null(), 0),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
        // A misaligned or odd value is just as unknown.
        assert_eq!(
            tomoe_model_free(3usize as *mut tomoe_model),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
        assert_eq!(
            tomoe_context_free(made_up()),
            tomoe_status::TOMOE_ERR_INVALID_HANDLE
        );
    }
}

#[test]
fn bad_files_and_bytes_give_load_errors() {
    let mut model: *mut tomoe_model = made_up();
    let path = CString::new("/nonexistent/dir/model.gguf").unwrap();
    // SAFETY: valid pointers.
    let st = unsafe { tomoe_model_load(path.as_ptr(), &mut model) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_MODEL_LOAD);
    assert!(model.is_null());
    assert!(
        last_error().contains("/nonexistent/dir/model.gguf"),
        "{}",
        last_error()
    );

    let garbage = b"GGUF\x03\x00\x00\x00 this is not a model at all".to_vec();
    // SAFETY: valid pointers; `garbage.len()` readable bytes.
    let st = unsafe { tomoe_model_load_from_memory(garbage.as_ptr(), garbage.len(), &mut model) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_MODEL_LOAD);
    assert!(model.is_null());
    assert!(!last_error().is_empty());

    // SAFETY: an empty image: the pointer is valid for 0 bytes.
    let st = unsafe { tomoe_model_load_from_memory(garbage.as_ptr(), 0, &mut model) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_MODEL_LOAD);

    let not_utf8: &[u8] = b"/tmp/\xff\xfe.gguf\0";
    // SAFETY: NUL-terminated.
    let st = unsafe { tomoe_model_load(not_utf8.as_ptr().cast::<c_char>(), &mut model) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_UTF8);
}

#[test]
fn status_names_cover_every_code() {
    let name = |s: i32| {
        // SAFETY: tomoe_status_name returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(tomoe_status_name(s)) }
            .to_str()
            .unwrap()
            .to_owned()
    };
    use tomoe_status::*;
    let all = [
        TOMOE_OK,
        TOMOE_ERR_NULL_ARGUMENT,
        TOMOE_ERR_INVALID_HANDLE,
        TOMOE_ERR_INVALID_ARGUMENT,
        TOMOE_ERR_INVALID_UTF8,
        TOMOE_ERR_MODEL_LOAD,
        TOMOE_ERR_BUFFER_TOO_SMALL,
        TOMOE_ERR_CONTEXT_FULL,
        TOMOE_ERR_NO_CHAT_TEMPLATE,
        TOMOE_ERR_CHAT_TEMPLATE,
        TOMOE_ERR_ENGINE,
        TOMOE_ERR_BUSY,
        TOMOE_ERR_POISONED,
        TOMOE_ERR_INTERNAL,
    ];
    for st in all {
        assert_eq!(name(st as i32), format!("{st:?}"));
    }
    assert_eq!(name(-1), "unknown status");
    assert_eq!(name(all.len() as i32), "unknown status");
}

#[test]
fn error_messages_are_per_thread() {
    let mut model: *mut tomoe_model = ptr::null_mut();
    // SAFETY: valid pointers; NULL path on purpose.
    unsafe { tomoe_model_load(ptr::null(), &mut model) };
    assert!(!last_error().is_empty());
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "", "another thread does not see this thread's error");
    assert!(!last_error().is_empty(), "and this thread keeps its own");
}

#[test]
fn version_and_kernel_names_are_static_strings() {
    // SAFETY: both return static NUL-terminated strings.
    let version = unsafe { CStr::from_ptr(tomoe_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // SAFETY: as above.
    let kernels = unsafe { CStr::from_ptr(tomoe_kernel_name()) }
        .to_str()
        .unwrap();
    assert_eq!(kernels, tomoe_quant::kernel_name());
}

#[test]
fn default_parameters_are_usable() {
    let c = tomoe_context_default_params();
    assert_eq!((c.n_ctx, c.n_threads, c.n_batch), (2048, 0, 512));
    let s = tomoe_sampling_default_params();
    let d = tomoe::chat::SamplerParams::default();
    assert_eq!(s.temperature, d.temperature);
    assert_eq!(s.top_k as usize, d.top_k);
    assert_eq!(s.top_p, d.top_p);
    assert_eq!(s.min_p, d.min_p);
    assert_eq!(s.repeat_penalty, d.repeat_penalty);
    assert_eq!(s.repeat_last_n as usize, d.repeat_last_n);
}
