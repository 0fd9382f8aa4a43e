//! The generator on the real SmolLM2 file: a follow-up turn that reuses the context's prefix
//! gives the tokens a fresh context gives; max_tokens, stop strings, a full context and a
//! cancel each end a generation with their reason.

mod common;

use std::sync::Arc;
use tomoe::chat::{ChatMessage, Sampler, SamplerParams};
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::generate::{chat_tokens, GenerateError, GenerateOptions, Generator, StopReason};

fn generator(model: &Arc<Model>, n_ctx: usize) -> Generator {
    let ctx = Context::new(
        model.clone(),
        ContextParams {
            n_ctx,
            n_threads: 2,
            n_batch: 64,
        },
    )
    .unwrap();
    let greedy = SamplerParams {
        temperature: 0.0,
        ..SamplerParams::default()
    };
    Generator::new(ctx, Sampler::new(greedy, model.config().n_vocab))
}

fn model() -> Arc<Model> {
    Arc::new(Model::load(&common::model_path(common::RealModel::SmolLm2)).unwrap())
}

#[test]
fn a_reused_prefix_gives_the_tokens_of_a_fresh_context() {
    let model = model();
    let tok = model.tokenizer();
    let template = model.chat_template().unwrap();
    let mut messages = vec![ChatMessage::new("user", "Name three colors.")];
    let mut gen = generator(&model, 512);
    let first = gen
        .generate(
            &chat_tokens(tok, template, &messages, true).unwrap(),
            &GenerateOptions::max_tokens(24),
            |_| true,
        )
        .unwrap();
    assert_eq!(first.n_reused, 0);
    assert!(!first.text.trim().is_empty());
    messages.push(ChatMessage::new("assistant", first.text.clone()));
    messages.push(ChatMessage::new("user", "And three animals?"));
    let prompt = chat_tokens(tok, template, &messages, true).unwrap();
    let second = gen
        .generate(&prompt, &GenerateOptions::max_tokens(24), |_| true)
        .unwrap();
    assert!(
        second.n_reused > first.n_prompt,
        "reused {} of {}",
        second.n_reused,
        prompt.len()
    );
    let fresh = generator(&model, 512)
        .generate(&prompt, &GenerateOptions::max_tokens(24), |_| true)
        .unwrap();
    assert_eq!(fresh.n_reused, 0);
    assert_eq!(second.tokens, fresh.tokens);
    assert_eq!(second.text, fresh.text);
    // The same prompt again: all but its last token reused, the same answer.
    let again = gen
        .generate(&prompt, &GenerateOptions::max_tokens(24), |_| true)
        .unwrap();
    assert_eq!(again.n_reused, prompt.len() - 1);
    assert_eq!(again.tokens, fresh.tokens);
}

#[test]
fn each_stop_condition_reports_its_reason() {
    let model = model();
    let tok = model.tokenizer();
    let prompt = tok.encode_prompt("The capital of France is Paris. The capital of Italy is", true);
    let mut gen = generator(&model, 256);

    let out = gen
        .generate(&prompt, &GenerateOptions::max_tokens(5), |_| true)
        .unwrap();
    assert_eq!((out.stop, out.tokens.len()), (StopReason::MaxTokens, 5));
    assert_eq!(out.stop.finish_reason(), "length");
    let full = out.text.clone();

    // A stop string inside that text: cut before it, and never streamed.
    let word = full.split_whitespace().nth(1).expect("two words").to_string();
    let mut streamed = String::new();
    let opts = GenerateOptions {
        max_tokens: Some(5),
        stop: vec![word.clone()],
    };
    let out = gen
        .generate(&prompt, &opts, |p| {
            streamed.push_str(p);
            true
        })
        .unwrap();
    assert_eq!(out.stop, StopReason::StopString);
    assert_eq!(out.stop.finish_reason(), "stop");
    assert_eq!(out.text, full[..full.find(&word).unwrap()]);
    assert_eq!(streamed, out.text);

    let mut calls = 0;
    let out = gen
        .generate(&prompt, &GenerateOptions::max_tokens(50), |_| {
            calls += 1;
            calls < 3
        })
        .unwrap();
    assert_eq!((out.stop, out.tokens.len()), (StopReason::Cancelled, 3));

    // Room for 11 tokens past the prompt: 11 are evaluated, a twelfth sampled.
    let mut small = generator(&model, prompt.len() + 11);
    let out = small.generate(&prompt, &GenerateOptions::default(), |_| true).unwrap();
    assert_eq!(out.stop, StopReason::ContextFull);
    assert_eq!(out.tokens.len(), 12, "11 evaluated, and the last one sampled");
    let mut tiny = generator(&model, prompt.len());
    assert!(matches!(
        tiny.generate(&prompt, &GenerateOptions::default(), |_| true),
        Err(GenerateError::PromptTooLong { .. })
    ));
    assert!(matches!(
        gen.generate(&[], &GenerateOptions::default(), |_| true),
        Err(GenerateError::EmptyPrompt)
    ));
}
