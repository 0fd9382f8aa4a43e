//! The handle registry: what a `tomoe_model*` or `tomoe_context*` given by C refers to.
//!
//! Handles are opaque tokens, never addresses: each is a fresh number from a counter, and the
//! library only ever looks it up in this table. A freed, made-up or wrong-kind handle is therefore
//! an error code (`TOMOE_ERR_INVALID_HANDLE`) instead of a read through a dangling pointer, and a
//! handle value is never reused. Lookups clone an `Arc`, so freeing a handle while another thread
//! is inside a call on it only drops the table's reference; the object lives until that call ends.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use super::context::ContextState;
use super::model::ModelState;
use super::status::{tomoe_status, CapiError};

/// A loaded model (opaque). Shareable: any number of contexts on any threads may use one model.
pub struct tomoe_model {
    _opaque: [u8; 0],
}

/// One generation sequence over a model, with its KV cache and sampler (opaque). A context is
/// used by one call at a time; a concurrent call on the same context gets `TOMOE_ERR_BUSY`.
pub struct tomoe_context {
    _opaque: [u8; 0],
}

struct Registry {
    /// The next handle number; numbers are never reused.
    next: usize,
    models: HashMap<usize, Arc<ModelState>>,
    contexts: HashMap<usize, Arc<Mutex<ContextState>>>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        next: 1,
        models: HashMap::new(),
        contexts: HashMap::new(),
    })
});

/// Handle values are multiples of this, so they look like (and are as aligned as) heap pointers.
const HANDLE_STRIDE: usize = 16;

fn registry() -> MutexGuard<'static, Registry> {
    // The lock is never held across code that can panic (only map operations), so a poisoned
    // lock still guards a consistent table.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registry {
    fn new_handle(&mut self) -> Result<usize, CapiError> {
        let handle = self.next.checked_mul(HANDLE_STRIDE).ok_or_else(|| {
            CapiError::new(tomoe_status::TOMOE_ERR_INTERNAL, "handle numbers exhausted")
        })?;
        self.next += 1;
        Ok(handle)
    }
}

fn invalid(kind: &str, handle: usize) -> CapiError {
    CapiError::new(
        tomoe_status::TOMOE_ERR_INVALID_HANDLE,
        format!(
            "{handle:#x} is not a live {kind} handle (freed, never created, or of another kind)"
        ),
    )
}

pub(crate) fn insert_model(state: ModelState) -> Result<*mut tomoe_model, CapiError> {
    let mut reg = registry();
    let handle = reg.new_handle()?;
    reg.models.insert(handle, Arc::new(state));
    Ok(handle as *mut tomoe_model)
}

pub(crate) fn model(handle: *const tomoe_model) -> Result<Arc<ModelState>, CapiError> {
    if handle.is_null() {
        return Err(CapiError::null("model"));
    }
    let handle = handle as usize;
    registry()
        .models
        .get(&handle)
        .cloned()
        .ok_or_else(|| invalid("model", handle))
}

pub(crate) fn remove_model(handle: *mut tomoe_model) -> Result<Arc<ModelState>, CapiError> {
    let handle = handle as usize;
    registry()
        .models
        .remove(&handle)
        .ok_or_else(|| invalid("model", handle))
}

pub(crate) fn insert_context(state: ContextState) -> Result<*mut tomoe_context, CapiError> {
    let mut reg = registry();
    let handle = reg.new_handle()?;
    reg.contexts.insert(handle, Arc::new(Mutex::new(state)));
    Ok(handle as *mut tomoe_context)
}

pub(crate) fn context(handle: *const tomoe_context) -> Result<Arc<Mutex<ContextState>>, CapiError> {
    if handle.is_null() {
        return Err(CapiError::null("context"));
    }
    let handle = handle as usize;
    registry()
        .contexts
        .get(&handle)
        .cloned()
        .ok_or_else(|| invalid("context", handle))
}

pub(crate) fn remove_context(
    handle: *mut tomoe_context,
) -> Result<Arc<Mutex<ContextState>>, CapiError> {
    let handle = handle as usize;
    registry()
        .contexts
        .remove(&handle)
        .ok_or_else(|| invalid("context", handle))
}
