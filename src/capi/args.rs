//! Checked conversions of raw C arguments (strings, arrays, output pointers) into Rust values.
//!
//! What can be checked is checked: NULL, alignment, lengths whose byte size overflows, UTF-8.
//! A non-NULL pointer to freed or too-short memory cannot be detected in C's memory model; the
//! header documents the length each pointer must cover.

use std::ffi::{c_char, CStr};

use super::status::{tomoe_status, CapiError};

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, CapiError> {
    if ptr.is_null() {
        return Err(CapiError::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        CapiError::new(
            tomoe_status::TOMOE_ERR_INVALID_UTF8,
            format!("{what} is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })
}

/// Checks that `len` elements of `T` at `ptr` could form a slice: non-NULL unless empty, aligned,
/// and not larger than `isize::MAX` bytes (the preconditions of `slice::from_raw_parts` that can
/// be checked).
fn check_array<T>(ptr: *const T, len: usize, what: &str) -> Result<(), CapiError> {
    if len == 0 {
        return Ok(());
    }
    if ptr.is_null() {
        return Err(CapiError::null(what));
    }
    if !ptr.is_aligned() {
        return Err(CapiError::invalid(format!(
            "{what} is misaligned (needs {}-byte alignment)",
            std::mem::align_of::<T>()
        )));
    }
    let bytes = len.checked_mul(std::mem::size_of::<T>());
    if !matches!(bytes, Some(b) if b <= isize::MAX as usize) {
        return Err(CapiError::invalid(format!(
            "{what}: length {len} is too large"
        )));
    }
    Ok(())
}

/// An input array argument of `len` elements (NULL allowed when `len` is 0).
///
/// # Safety
/// Unless `len` is 0, `ptr` points to `len` initialised elements valid during the call.
pub(crate) unsafe fn slice_arg<'a, T>(
    ptr: *const T,
    len: usize,
    what: &str,
) -> Result<&'a [T], CapiError> {
    check_array(ptr, len, what)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: checked non-NULL, aligned and small enough; length and validity by contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// An output array argument of `capacity` elements (NULL allowed when `capacity` is 0).
///
/// # Safety
/// Unless `capacity` is 0, `ptr` points to `capacity` writable elements valid during the call,
/// not aliased by any other argument.
pub(crate) unsafe fn out_slice_arg<'a, T>(
    ptr: *mut T,
    capacity: usize,
    what: &str,
) -> Result<&'a mut [T], CapiError> {
    check_array(ptr, capacity, what)?;
    if capacity == 0 {
        return Ok(&mut []);
    }
    // SAFETY: checked non-NULL, aligned and small enough; length, validity and exclusivity by
    // contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, capacity) })
}

/// A required output pointer; returns it checked for NULL and alignment.
pub(crate) fn out_arg<T>(ptr: *mut T, what: &str) -> Result<*mut T, CapiError> {
    check_array(ptr as *const T, 1, what)?;
    Ok(ptr)
}

/// Writes `value` through a checked output pointer.
///
/// # Safety
/// `ptr` came from [`out_arg`] and points to writable memory for one `T`.
pub(crate) unsafe fn write_out<T>(ptr: *mut T, value: T) {
    // SAFETY: non-NULL and aligned (checked by `out_arg`); writable by contract. `write` does not
    // drop the old value, which C may have left uninitialised.
    unsafe { ptr.write(value) }
}

/// Copies `items` into the caller's array when they fit in `capacity`; their count is always
/// stored in `*len_out` first, so a caller can size the array by passing a capacity of 0.
/// `describe(capacity)` says what did not fit.
///
/// # Safety
/// `dst` points to `capacity` writable items (or is NULL when `capacity` is 0); `len_out` is a
/// checked output pointer.
pub(crate) unsafe fn write_array<T: Copy>(
    items: &[T],
    dst: *mut T,
    capacity: usize,
    len_out: *mut usize,
    what: &str,
    describe: impl FnOnce(usize) -> String,
) -> Result<(), CapiError> {
    // SAFETY: checked by `out_arg`; writable by contract.
    unsafe { write_out(len_out, items.len()) };
    if items.len() > capacity {
        return Err(CapiError::new(
            tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL,
            describe(capacity),
        ));
    }
    // SAFETY: `capacity` writable items by contract.
    let out = unsafe { out_slice_arg(dst, capacity, what) }?;
    out[..items.len()].copy_from_slice(items);
    Ok(())
}

/// Copies `text` plus a terminating NUL into the caller's buffer when it fits. The full length
/// (without the NUL) is always stored in `*len_out`, so a caller can size a buffer by passing a
/// capacity of 0.
///
/// # Safety
/// `buf` points to `capacity` writable bytes (or is NULL when `capacity` is 0); `len_out` is a
/// checked output pointer.
pub(crate) unsafe fn write_string(
    text: &[u8],
    buf: *mut c_char,
    capacity: usize,
    len_out: *mut usize,
) -> Result<(), CapiError> {
    // SAFETY: checked by `out_arg`; writable by contract.
    unsafe { write_out(len_out, text.len()) };
    if capacity < text.len() + 1 {
        return Err(CapiError::new(
            tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL,
            format!(
                "the buffer holds {capacity} bytes; {} are needed (text plus NUL)",
                text.len() + 1
            ),
        ));
    }
    // SAFETY: `capacity` writable bytes by contract.
    let out = unsafe { out_slice_arg(buf.cast::<u8>(), capacity, "buffer") }?;
    out[..text.len()].copy_from_slice(text);
    out[text.len()] = 0;
    Ok(())
}
