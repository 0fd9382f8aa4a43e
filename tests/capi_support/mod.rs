//! Safe wrappers over the C ABI for the capi_* tests: each call's status is checked, and a failed
//! call panics with the library's error message.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr;

use tomoe::capi::*;

pub fn last_error() -> String {
    // SAFETY: never NULL; valid until the next call on this thread.
    unsafe { CStr::from_ptr(tomoe_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[track_caller]
pub fn check(st: tomoe_status) {
    assert_eq!(st, tomoe_status::TOMOE_OK, "{}", last_error());
}

/// A model handle, freed on drop.
pub struct CModel(pub *mut tomoe_model);

// SAFETY: the C ABI promises that a model handle may be used from any thread concurrently.
unsafe impl Send for CModel {}
// SAFETY: as above.
unsafe impl Sync for CModel {}

impl CModel {
    pub fn load(path: &Path) -> CModel {
        let path = CString::new(path.to_str().unwrap()).unwrap();
        let mut m = ptr::null_mut();
        // SAFETY: valid pointers.
        check(unsafe { tomoe_model_load(path.as_ptr(), &mut m) });
        CModel(m)
    }

    pub fn from_memory(bytes: &[u8]) -> CModel {
        let mut m = ptr::null_mut();
        // SAFETY: `bytes.len()` readable bytes.
        check(unsafe { tomoe_model_load_from_memory(bytes.as_ptr(), bytes.len(), &mut m) });
        CModel(m)
    }

    pub fn info(&self) -> tomoe_model_info {
        let mut info = std::mem::MaybeUninit::uninit();
        // SAFETY: valid output pointer; filled on success.
        check(unsafe { tomoe_model_get_info(self.0, info.as_mut_ptr()) });
        // SAFETY: initialised by the successful call.
        unsafe { info.assume_init() }
    }

    pub fn tokenize(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let text = CString::new(text).unwrap();
        let mut n = 0;
        // SAFETY: size query with a NULL buffer of capacity 0.
        let st = unsafe {
            tomoe_tokenize(
                self.0,
                text.as_ptr(),
                add_bos,
                parse_special,
                ptr::null_mut(),
                0,
                &mut n,
            )
        };
        assert!(
            st == tomoe_status::TOMOE_OK || st == tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL,
            "{}",
            last_error()
        );
        let mut ids = vec![0u32; n];
        let mut n2 = 0;
        // SAFETY: `ids.len()` writable ids.
        check(unsafe {
            tomoe_tokenize(
                self.0,
                text.as_ptr(),
                add_bos,
                parse_special,
                ids.as_mut_ptr(),
                ids.len(),
                &mut n2,
            )
        });
        assert_eq!(n, n2);
        ids
    }

    pub fn detokenize(&self, ids: &[u32]) -> String {
        let mut len = 0;
        // SAFETY: size query.
        let st = unsafe {
            tomoe_detokenize(
                self.0,
                ids.as_ptr(),
                ids.len(),
                ptr::null_mut(),
                0,
                &mut len,
            )
        };
        assert_eq!(
            st,
            tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL,
            "{}",
            last_error()
        );
        let mut buf = vec![0u8; len + 1];
        // SAFETY: `buf.len()` writable bytes.
        check(unsafe {
            tomoe_detokenize(
                self.0,
                ids.as_ptr(),
                ids.len(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut len,
            )
        });
        assert_eq!(buf[len], 0, "NUL-terminated");
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    pub fn chat(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> String {
        let owned: Vec<(CString, CString)> = messages
            .iter()
            .map(|(r, c)| (CString::new(*r).unwrap(), CString::new(*c).unwrap()))
            .collect();
        let msgs: Vec<tomoe_chat_message> = owned
            .iter()
            .map(|(r, c)| tomoe_chat_message {
                role: r.as_ptr(),
                content: c.as_ptr(),
            })
            .collect();
        let mut len = 0;
        // SAFETY: size query; messages valid.
        let st = unsafe {
            tomoe_chat_apply(
                self.0,
                msgs.as_ptr(),
                msgs.len(),
                add_generation_prompt,
                ptr::null_mut(),
                0,
                &mut len,
            )
        };
        assert_eq!(
            st,
            tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL,
            "{}",
            last_error()
        );
        let mut buf = vec![0u8; len + 1];
        // SAFETY: `buf.len()` writable bytes; messages valid.
        check(unsafe {
            tomoe_chat_apply(
                self.0,
                msgs.as_ptr(),
                msgs.len(),
                add_generation_prompt,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut len,
            )
        });
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }
}

impl Drop for CModel {
    fn drop(&mut self) {
        check(tomoe_model_free(self.0));
    }
}

/// What the generation callback saw.
#[derive(Default, Debug)]
pub struct Collected {
    pub tokens: Vec<u32>,
    pub text: Vec<u8>,
    /// Return false (stop) once this many tokens were seen.
    pub stop_after: Option<usize>,
    /// A context handle to call into from inside the callback, and the status that call got.
    pub reenter: Option<*mut tomoe_context>,
    pub reenter_status: Option<tomoe_status>,
}

/// The generation callback: records tokens and text into a `Collected`.
pub unsafe extern "C" fn collect(
    user: *mut c_void,
    token: u32,
    piece: *const c_char,
    len: usize,
) -> bool {
    // SAFETY: `user` is the `&mut Collected` passed to tomoe_generate by `CContext::generate`.
    let c = unsafe { &mut *(user as *mut Collected) };
    // SAFETY: the library passes `len` readable bytes followed by a NUL.
    let bytes = unsafe { std::slice::from_raw_parts(piece.cast::<u8>(), len + 1) };
    assert_eq!(bytes[len], 0, "the piece is NUL-terminated");
    c.text.extend_from_slice(&bytes[..len]);
    if token != TOMOE_TOKEN_NONE {
        c.tokens.push(token);
    }
    if let Some(ctx) = c.reenter {
        let mut pos = 0;
        // SAFETY: valid output pointer.
        c.reenter_status = Some(unsafe { tomoe_context_pos(ctx, &mut pos) });
    }
    c.stop_after.is_none_or(|n| c.tokens.len() < n)
}

/// A context handle, freed on drop.
pub struct CContext(pub *mut tomoe_context);

// SAFETY: a context handle may move between threads (one call at a time is enforced by the
// library with TOMOE_ERR_BUSY).
unsafe impl Send for CContext {}

impl CContext {
    pub fn new(model: &CModel, n_ctx: u32, n_threads: u32, seed: u64) -> CContext {
        let params = tomoe_context_params {
            n_ctx,
            n_threads,
            n_batch: 0,
            seed,
            ..tomoe_context_default_params()
        };
        let mut c = ptr::null_mut();
        // SAFETY: valid pointers.
        check(unsafe { tomoe_context_new(model.0, &params, &mut c) });
        CContext(c)
    }

    pub fn set_sampling(&self, p: &tomoe_sampling_params) {
        // SAFETY: valid pointer.
        check(unsafe { tomoe_context_set_sampling(self.0, p) });
    }

    pub fn greedy(&self) {
        let mut p = tomoe_sampling_default_params();
        p.temperature = 0.0;
        self.set_sampling(&p);
    }

    /// Runs tomoe_generate; returns its status, what the callback saw, and the result struct.
    pub fn try_generate(
        &self,
        prompt: &str,
        max_tokens: u32,
        mut c: Collected,
    ) -> (tomoe_status, Collected, tomoe_generate_result) {
        let prompt = CString::new(prompt).unwrap();
        let mut res = tomoe_generate_result {
            n_prompt_tokens: 0,
            n_generated: 0,
            stop_reason: tomoe_stop_reason::TOMOE_STOP_EOG,
        };
        // SAFETY: valid pointers; `c` outlives the call.
        let st = unsafe {
            tomoe_generate(
                self.0,
                prompt.as_ptr(),
                max_tokens,
                Some(collect),
                (&mut c as *mut Collected).cast(),
                &mut res,
            )
        };
        (st, c, res)
    }

    pub fn generate(&self, prompt: &str, max_tokens: u32) -> (Collected, tomoe_generate_result) {
        let (st, c, res) = self.try_generate(prompt, max_tokens, Collected::default());
        check(st);
        (c, res)
    }

    pub fn eval(&self, tokens: &[u32]) -> tomoe_status {
        // SAFETY: `tokens.len()` ids.
        unsafe { tomoe_context_eval(self.0, tokens.as_ptr(), tokens.len()) }
    }

    pub fn logits(&self, n_vocab: usize) -> Vec<f32> {
        let mut out = vec![0f32; n_vocab];
        // SAFETY: `n_vocab` writable floats.
        check(unsafe { tomoe_context_logits(self.0, out.as_mut_ptr(), out.len()) });
        out
    }

    pub fn sample(&self) -> u32 {
        let mut t = 0;
        // SAFETY: valid output pointer.
        check(unsafe { tomoe_context_sample(self.0, &mut t) });
        t
    }

    pub fn pos(&self) -> usize {
        let mut p = 0;
        // SAFETY: valid output pointer.
        check(unsafe { tomoe_context_pos(self.0, &mut p) });
        p
    }

    pub fn clear(&self) {
        check(tomoe_context_clear(self.0));
    }
}

impl Drop for CContext {
    fn drop(&mut self) {
        check(tomoe_context_free(self.0));
    }
}
