//! The C ABI on the real SmolLM2 model: what it returns equals what the Rust API returns, and
//! its streaming, stopping, continuing, context limits and re-entrancy behave as documented.

mod capi_support;
mod common;

use std::ffi::CString;
use std::sync::Arc;

use capi_support::*;
use tomoe::capi::*;
use tomoe::chat::{ChatMessage, Sampler, SamplerParams};
use tomoe::engine::{Context, ContextParams, Model};

const PROMPT: &str =
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
/// A prompt whose greedy reply is long (no end-of-generation within 12 tokens).
const STORY: &str =
    "<|im_start|>user\nTell me a long story about a cat.<|im_end|>\n<|im_start|>assistant\n";

fn smollm2() -> std::path::PathBuf {
    common::model_path(common::RealModel::SmolLm2)
}

/// Greedy (or seeded) generation with the Rust API only: the reference for the C ABI.
fn rust_generate(
    model: &Arc<Model>,
    prompt: &str,
    n: usize,
    params: SamplerParams,
    n_threads: usize,
) -> Vec<u32> {
    let tok = model.tokenizer();
    let mut ctx = Context::new(
        Arc::clone(model),
        ContextParams {
            n_ctx: 512,
            n_threads,
            n_batch: 512,
        },
    )
    .unwrap();
    let mut history = tok.encode(prompt, true, true);
    let mut logits = ctx.eval(&history).unwrap().to_vec();
    let mut sampler = Sampler::new(params, tok.vocab_size());
    let mut out = Vec::new();
    while out.len() < n {
        let t = sampler.sample(&mut logits.clone(), &history);
        if tok.is_eog(t) {
            break;
        }
        out.push(t);
        history.push(t);
        logits = ctx.eval(&[t]).unwrap().to_vec();
    }
    out
}

fn greedy() -> SamplerParams {
    SamplerParams {
        temperature: 0.0,
        ..SamplerParams::default()
    }
}

#[test]
fn model_info_describes_the_file() {
    let m = CModel::load(&smollm2());
    let info = m.info();
    let arch: Vec<u8> = info
        .architecture
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    assert_eq!(arch, b"llama");
    assert_eq!(
        (
            info.n_vocab,
            info.n_layer,
            info.n_embd,
            info.n_head,
            info.n_head_kv,
            info.n_expert,
            info.n_expert_used
        ),
        (49152, 30, 576, 9, 3, 0, 0)
    );
    assert_eq!(info.n_ctx_train, 8192);
    // Dense: every weight is active. SmolLM2-135M: ~134.5 M parameters (tied embeddings).
    assert_eq!(info.n_active_params, info.n_params);
    assert!(
        (130_000_000..140_000_000).contains(&info.n_params),
        "{}",
        info.n_params
    );
}

#[test]
fn model_info_reports_the_memory_beyond_the_mapped_file() {
    let info = CModel::load(&smollm2()).info();
    let bytes = std::fs::read(smollm2()).unwrap();
    assert_eq!(info.file_bytes, bytes.len() as u64);
    // The decoding copies are those the Rust API makes with the same (default) options.
    let rust = Model::load(&smollm2()).unwrap();
    assert_eq!(info.copies_bytes, rust.copies_bytes() as u64);
    drop(rust);
    let from_memory = CModel::from_memory(&bytes).info();
    assert_eq!(from_memory.file_bytes, bytes.len() as u64);

    // Without copies the model holds nothing beyond the file.
    let path = CString::new(smollm2().to_str().unwrap()).unwrap();
    let mut params = tomoe_model_default_params();
    params.copies = false;
    let mut model = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path, a valid parameter struct and output pointer.
    check(unsafe { tomoe_model_load_with_params(path.as_ptr(), &params, &mut model) });
    let m = CModel(model);
    assert_eq!(m.info().copies_bytes, 0);
    assert_eq!(m.info().file_bytes, bytes.len() as u64);
}

/// llama.cpp is the oracle for the parameter count (sum of all tensor elements).
#[cfg(target_arch = "x86_64")]
#[test]
fn parameter_count_matches_llama_cpp() {
    use llama_cpp_sys_2 as ll;
    let path = smollm2();
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: plain llama.cpp C calls on a valid path; the model is freed before returning.
    let expected = unsafe {
        ll::llama_backend_init();
        let mut params = ll::llama_model_default_params();
        params.n_gpu_layers = 0;
        let model = ll::llama_model_load_from_file(c_path.as_ptr(), params);
        assert!(
            !model.is_null(),
            "llama.cpp failed to load {}",
            path.display()
        );
        let n = ll::llama_model_n_params(model);
        ll::llama_model_free(model);
        n
    };
    assert_eq!(CModel::load(&path).info().n_params, expected);
}

#[test]
fn tokenize_detokenize_and_chat_match_the_rust_api() {
    let rust = Model::load(&smollm2()).unwrap();
    let m = CModel::load(&smollm2());
    let tok = rust.tokenizer();
    for text in ["Hello, world!", "  Ünïcödé ✓ and 日本語", PROMPT, ""] {
        for (bos, special) in [(true, true), (false, false), (true, false)] {
            assert_eq!(
                m.tokenize(text, bos, special),
                tok.encode(text, bos, special),
                "{text:?} {bos} {special}"
            );
        }
        let ids = tok.encode(text, false, true);
        assert_eq!(m.detokenize(&ids), tok.decode(&ids));
    }

    // A buffer one id too small: nothing written, the size needed reported.
    let text = CString::new("one two three").unwrap();
    let mut ids = [u32::MAX; 2];
    let mut n = 0;
    // SAFETY: `ids.len()` writable ids.
    let st = unsafe {
        tomoe_tokenize(
            m.0,
            text.as_ptr(),
            false,
            false,
            ids.as_mut_ptr(),
            ids.len(),
            &mut n,
        )
    };
    assert_eq!(st, tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL);
    assert_eq!(n, 3);
    assert_eq!(ids, [u32::MAX; 2]);

    // Token ids beyond the vocabulary are an error, not an out-of-bounds read.
    let mut len = 0;
    let bad = [1u32, 49152];
    // SAFETY: valid pointers.
    let st = unsafe {
        tomoe_detokenize(
            m.0,
            bad.as_ptr(),
            bad.len(),
            std::ptr::null_mut(),
            0,
            &mut len,
        )
    };
    assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_ARGUMENT);
    let mut eog = false;
    // SAFETY: valid pointers.
    assert_eq!(
        unsafe { tomoe_token_is_eog(m.0, u32::MAX, &mut eog) },
        tomoe_status::TOMOE_ERR_INVALID_ARGUMENT
    );

    // Special tokens and raw token bytes.
    let (mut bos, mut eos) = (0, 0);
    // SAFETY: valid output pointers.
    check(unsafe { tomoe_special_tokens(m.0, &mut bos, &mut eos) });
    assert_eq!(bos, tok.bos().unwrap_or(TOMOE_TOKEN_NONE));
    assert_eq!(eos, tok.eos().unwrap_or(TOMOE_TOKEN_NONE));
    // SAFETY: valid output pointer.
    check(unsafe { tomoe_token_is_eog(m.0, eos, &mut eog) });
    assert!(eog);
    let hello = tok.encode("Hello", false, false)[0];
    let mut bytes = [0u8; 64];
    let mut nb = 0;
    // SAFETY: `bytes.len()` writable bytes.
    check(unsafe { tomoe_token_bytes(m.0, hello, bytes.as_mut_ptr(), bytes.len(), &mut nb) });
    assert_eq!(&bytes[..nb], tok.token_bytes(hello));

    // The chat template.
    let messages = [
        ("system", "Be brief."),
        ("user", "Hi!"),
        ("assistant", "Hello."),
        ("user", "Bye?"),
    ];
    let rust_messages: Vec<ChatMessage> = messages
        .iter()
        .map(|(r, c)| ChatMessage {
            role: r.to_string(),
            content: c.to_string(),
        })
        .collect();
    let template = rust.chat_template().expect("SmolLM2 has a chat template");
    for add in [true, false] {
        assert_eq!(
            m.chat(&messages, add),
            template.render(&rust_messages, add).unwrap()
        );
    }
    assert!(m
        .chat(&messages[1..2], true)
        .contains("<|im_start|>assistant"));
}

#[test]
fn generation_matches_the_rust_api_and_streams_all_text() {
    let rust = Arc::new(Model::load(&smollm2()).unwrap());
    let expected = rust_generate(&rust, PROMPT, 16, greedy(), 2);
    assert!(!expected.is_empty());

    let m = CModel::load(&smollm2());
    let ctx = CContext::new(&m, 512, 2, 0);
    ctx.greedy();
    let (got, res) = ctx.generate(PROMPT, 16);
    assert_eq!(got.tokens, expected);
    assert_eq!(res.n_generated as usize, expected.len());
    assert_eq!(
        res.n_prompt_tokens as usize,
        rust.tokenizer().encode(PROMPT, true, true).len()
    );
    let want_stop = if expected.len() == 16 {
        tomoe_stop_reason::TOMOE_STOP_MAX_TOKENS
    } else {
        tomoe_stop_reason::TOMOE_STOP_EOG
    };
    assert_eq!(res.stop_reason, want_stop);
    // The streamed pieces add up to the decoded text.
    assert_eq!(
        String::from_utf8(got.text).unwrap(),
        rust.tokenizer().decode(&expected)
    );
    assert_eq!(ctx.pos(), res.n_prompt_tokens as usize + expected.len());
    println!("greedy reply: {:?}", rust.tokenizer().decode(&expected));

    // Seeded sampling is reproducible, and the same through the C ABI as through Rust.
    let params = SamplerParams {
        temperature: 0.8,
        seed: 7,
        ..SamplerParams::default()
    };
    let expected = rust_generate(&rust, PROMPT, 12, params.clone(), 2);
    let ctx = CContext::new(&m, 512, 2, 7);
    let mut p = tomoe_sampling_default_params();
    p.temperature = 0.8;
    ctx.set_sampling(&p);
    assert_eq!(ctx.generate(PROMPT, 12).0.tokens, expected);
}

#[test]
fn path_and_memory_loads_agree() {
    let bytes = std::fs::read(smollm2()).unwrap();
    let from_memory = CModel::from_memory(&bytes);
    drop(bytes); // the library copied what it needs
    let from_path = CModel::load(&smollm2());
    assert_eq!(from_memory.info().n_params, from_path.info().n_params);
    let run = |m: &CModel| {
        let c = CContext::new(m, 256, 2, 0);
        c.greedy();
        c.generate(PROMPT, 8).0.tokens
    };
    assert_eq!(run(&from_memory), run(&from_path));
}

#[test]
fn stopping_in_the_callback_and_continuing_gives_the_uninterrupted_tokens() {
    let m = CModel::load(&smollm2());
    let whole = {
        let c = CContext::new(&m, 512, 2, 0);
        c.greedy();
        c.generate(STORY, 12).0.tokens
    };
    assert_eq!(
        whole.len(),
        12,
        "the prompt must not hit end-of-generation this early"
    );

    let c = CContext::new(&m, 512, 2, 0);
    c.greedy();
    let (st, first, res) = c.try_generate(
        STORY,
        12,
        Collected {
            stop_after: Some(5),
            ..Default::default()
        },
    );
    check(st);
    assert_eq!(res.stop_reason, tomoe_stop_reason::TOMOE_STOP_CALLBACK);
    assert_eq!(first.tokens, whole[..5]);
    // The 5th token is part of the context although not evaluated yet.
    let prompt_len = res.n_prompt_tokens as usize;
    assert_eq!(c.pos(), prompt_len + 5);
    let (rest, res) = c.generate("", 7);
    assert_eq!(res.n_prompt_tokens, 0);
    assert_eq!(rest.tokens, whole[5..]);

    // The token-by-token path (eval + sample) agrees too.
    c.clear();
    assert_eq!(c.pos(), 0);
    let mut ids = m.tokenize(STORY, true, true);
    check(c.eval(&ids));
    let n_vocab = m.info().n_vocab as usize;
    let mut manual = Vec::new();
    for _ in 0..12 {
        let logits = c.logits(n_vocab);
        let t = c.sample();
        let argmax = logits
            .iter()
            .enumerate()
            .fold(0, |best, (i, &v)| if v > logits[best] { i } else { best });
        assert_eq!(
            t as usize, argmax,
            "greedy sampling picks the largest logit"
        );
        manual.push(t);
        check(c.eval(&[t]));
    }
    assert_eq!(manual, whole);
    ids.extend(&manual);
    assert_eq!(c.pos(), ids.len());
}

#[test]
fn logits_through_the_c_abi_equal_the_engine_logits() {
    let rust = Arc::new(Model::load(&smollm2()).unwrap());
    let ids = rust.tokenizer().encode("The quick brown fox", true, false);
    let mut ctx = Context::new(
        Arc::clone(&rust),
        ContextParams {
            n_ctx: 64,
            n_threads: 2,
            n_batch: 512,
        },
    )
    .unwrap();
    let expected = ctx.eval(&ids).unwrap().to_vec();

    let m = CModel::load(&smollm2());
    let c = CContext::new(&m, 64, 2, 0);
    check(c.eval(&ids));
    assert_eq!(c.logits(expected.len()), expected);
    // Too small a buffer is refused.
    let mut small = vec![0f32; expected.len() - 1];
    // SAFETY: `small.len()` writable floats.
    let st = unsafe { tomoe_context_logits(c.0, small.as_mut_ptr(), small.len()) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_BUFFER_TOO_SMALL);
    // Out-of-vocabulary tokens are refused before anything is evaluated.
    assert_eq!(
        c.eval(&[1, u32::MAX]),
        tomoe_status::TOMOE_ERR_INVALID_ARGUMENT
    );
    assert_eq!(c.pos(), ids.len());
}

#[test]
fn the_context_length_is_enforced() {
    let m = CModel::load(&smollm2());
    let prompt_len = m.tokenize(PROMPT, true, true).len();
    let c = CContext::new(&m, (prompt_len - 1) as u32, 2, 0);
    let (st, got, _) = c.try_generate(PROMPT, 4, Collected::default());
    assert_eq!(st, tomoe_status::TOMOE_ERR_CONTEXT_FULL, "{}", last_error());
    assert!(got.tokens.is_empty());
    assert_eq!(c.pos(), 0, "nothing was evaluated");

    let c = CContext::new(&m, (prompt_len + 3) as u32, 2, 0);
    c.greedy();
    let (got, res) = c.generate(PROMPT, 100);
    assert_eq!(res.stop_reason, tomoe_stop_reason::TOMOE_STOP_CONTEXT_FULL);
    assert_eq!(got.tokens.len(), 3);
    assert_eq!(c.pos(), prompt_len + 3);
    let (st, _, _) = c.try_generate("more", 1, Collected::default());
    assert_eq!(st, tomoe_status::TOMOE_ERR_CONTEXT_FULL);
}

#[test]
fn calls_into_a_generating_context_are_refused_not_deadlocked() {
    let m = CModel::load(&smollm2());
    let c = CContext::new(&m, 256, 2, 0);
    c.greedy();
    let (st, got, _) = c.try_generate(
        PROMPT,
        2,
        Collected {
            reenter: Some(c.0),
            ..Default::default()
        },
    );
    check(st);
    assert_eq!(got.reenter_status, Some(tomoe_status::TOMOE_ERR_BUSY));
}

#[test]
fn a_context_outlives_its_freed_model_handle() {
    let m = CModel::load(&smollm2());
    let c = CContext::new(&m, 256, 2, 0);
    c.greedy();
    let handle = m.0;
    drop(m);
    let mut info = std::mem::MaybeUninit::uninit();
    // SAFETY: valid output pointer; the handle is stale on purpose.
    let st = unsafe { tomoe_model_get_info(handle, info.as_mut_ptr()) };
    assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_HANDLE);
    assert_eq!(
        tomoe_model_free(handle),
        tomoe_status::TOMOE_ERR_INVALID_HANDLE,
        "double free is an error code"
    );
    let (got, _) = c.generate(PROMPT, 4);
    assert_eq!(got.tokens.len(), 4);
}

#[test]
fn bad_sampling_parameters_are_refused() {
    let m = CModel::load(&smollm2());
    let c = CContext::new(&m, 64, 1, 0);
    for bad in [
        tomoe_sampling_params {
            temperature: f32::NAN,
            ..tomoe_sampling_default_params()
        },
        tomoe_sampling_params {
            top_p: 1.5,
            ..tomoe_sampling_default_params()
        },
        tomoe_sampling_params {
            repeat_penalty: 0.0,
            ..tomoe_sampling_default_params()
        },
    ] {
        // SAFETY: valid pointer.
        let st = unsafe { tomoe_context_set_sampling(c.0, &bad) };
        assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_ARGUMENT);
    }
    // Sampling from an empty context is an error, not garbage.
    let mut t = 0;
    // SAFETY: valid output pointer.
    assert_eq!(
        unsafe { tomoe_context_sample(c.0, &mut t) },
        tomoe_status::TOMOE_ERR_INVALID_ARGUMENT
    );
    // SAFETY: as above.
    let st = unsafe {
        tomoe_generate(
            c.0,
            c"".as_ptr(),
            4,
            None,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_ARGUMENT);
}

#[test]
fn a_prompt_that_fills_the_context_generates_nothing() {
    let m = CModel::load(&smollm2());
    let prompt_len = m.tokenize(PROMPT, true, true).len();
    let c = CContext::new(&m, prompt_len as u32, 2, 0);
    c.greedy();
    let (got, res) = c.generate(PROMPT, 4);
    assert_eq!(res.stop_reason, tomoe_stop_reason::TOMOE_STOP_CONTEXT_FULL);
    assert!(got.tokens.is_empty());
    assert_eq!(res.n_prompt_tokens as usize, prompt_len);
    assert_eq!(c.pos(), prompt_len, "the prompt was evaluated");

    // max_tokens 0 evaluates the prompt and generates nothing.
    let c = CContext::new(&m, 256, 2, 0);
    let (got, res) = c.generate(PROMPT, 0);
    assert_eq!(res.stop_reason, tomoe_stop_reason::TOMOE_STOP_MAX_TOKENS);
    assert!(got.tokens.is_empty());
    assert_eq!(c.pos(), prompt_len);
}

#[test]
fn generating_after_eval_continues_from_its_logits() {
    let m = CModel::load(&smollm2());
    let whole = {
        let c = CContext::new(&m, 512, 2, 0);
        c.greedy();
        c.generate(STORY, 8).0.tokens
    };
    let c = CContext::new(&m, 512, 2, 0);
    c.greedy();
    let ids = m.tokenize(STORY, true, true);
    check(c.eval(&ids));
    let n_vocab = m.info().n_vocab as usize;
    let before = c.logits(n_vocab);
    let (got, res) = c.generate("", 8);
    assert_eq!(res.n_prompt_tokens, 0);
    assert_eq!(got.tokens, whole);
    assert_eq!(c.pos(), ids.len() + 8);
    // The callback saw every token's id with its piece; the ids decode to the streamed text.
    assert_eq!(
        String::from_utf8(got.text).unwrap(),
        m.detokenize(&got.tokens)
    );

    // Sampling leaves the logits as the engine produced them.
    c.clear();
    check(c.eval(&ids));
    let t = c.sample();
    assert_eq!(c.logits(n_vocab), before);
    assert_eq!(t, whole[0]);
}
