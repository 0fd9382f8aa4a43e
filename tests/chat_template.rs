//! Chat templates on the real models, against llama.cpp's own chat formatting
//! (`llama_chat_apply_template`, which recognises a template's style and renders it natively):
//! SmolLM2's Jinja template must render multi-turn conversations exactly as llama.cpp's ChatML,
//! and the rendered prompt must tokenize as llama.cpp tokenizes it. Gemma 3 (base model) has no
//! template: `from_gguf` says so with `Ok(None)`.
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle.rs"]
mod oracle;

use common::RealModel;
use tomoe::chat::{ChatMessage, ChatTemplate};
use tomoe::gguf::GgufFile;
use tomoe::tokenizer::Tokenizer;

fn conversation(with_system: bool) -> Vec<(&'static str, &'static str)> {
    let mut c = vec![
        ("user", "Who wrote Persuasion?"),
        ("assistant", "Jane Austen, in 1817.\n"),
        ("user", "  And Emma?  Ünïcödé 日本 🦀"),
    ];
    if with_system {
        c.insert(0, ("system", "You answer briefly."));
    }
    c
}

fn messages(c: &[(&str, &str)]) -> Vec<ChatMessage> {
    c.iter().map(|(r, t)| ChatMessage::new(*r, *t)).collect()
}

#[test]
fn smollm2_template_renders_like_llama_cpp() {
    let path = common::model_path(RealModel::SmolLm2);
    let file = GgufFile::open(&path).unwrap();
    let tmpl = ChatTemplate::from_gguf(&file)
        .unwrap()
        .expect("SmolLM2 has a chat template");
    let source = file
        .get("tokenizer.chat_template")
        .unwrap()
        .as_str()
        .unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let vocab = oracle::VocabOracle::load(&path);

    for add_gen in [false, true] {
        for n in 1..=4 {
            let conv = &conversation(true)[..n];
            let ours = tmpl.render(&messages(conv), add_gen).unwrap();
            let theirs =
                oracle::chat_apply_builtin(source, conv, add_gen).expect("llama.cpp knows ChatML");
            assert_eq!(
                ours, theirs,
                "{n} messages, add_generation_prompt {add_gen}"
            );
            assert_eq!(
                tok.encode(&ours, true, true),
                vocab.tokenize(ours.as_bytes(), true, true)
            );
        }
    }

    // Without a system message the template adds its default one (llama.cpp's ChatML does not).
    let conv = conversation(false);
    let ours = tmpl.render(&messages(&conv), true).unwrap();
    let default_system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    assert_eq!(
        ours,
        format!(
            "{default_system}{}",
            oracle::chat_apply_builtin("chatml", &conv, true).unwrap()
        )
    );
    let ids = tok.encode(&ours, false, true);
    assert_eq!(
        ids[0], 1,
        "<|im_start|> is one token when special tokens are parsed"
    );
    assert!(
        tok.encode(&ours, false, false)[0] != 1,
        "and text otherwise"
    );
}

#[test]
fn gemma3_base_has_no_template() {
    let file = GgufFile::open(&common::model_path(RealModel::Gemma3)).unwrap();
    assert!(ChatTemplate::from_gguf(&file).unwrap().is_none());
}

/// A Gemma-style template written for this test (system turn merged into the first user turn,
/// roles must alternate), exercising namespace, filters, loop state and raise_exception.
const GEMMA_STYLE: &str = r#"{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- if messages[0]['role'] == 'system' -%}
    {%- set ns.system = messages[0]['content'] | trim -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
    {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('roles must alternate user/assistant') }}
    {%- endif -%}
    {%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}
    <start_of_turn>{{ role }}
{% if loop.first and ns.system %}{{ ns.system }}

{% endif %}{{ m['content'] | trim }}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt -%}
<start_of_turn>model
{% endif -%}"#;

#[test]
fn gemma_style_template_renders_like_llama_cpp_gemma() {
    let tmpl = ChatTemplate::new(GEMMA_STYLE, "", "").unwrap();
    for with_system in [false, true] {
        for add_gen in [false, true] {
            let conv = conversation(with_system);
            let ours = tmpl.render(&messages(&conv), add_gen).unwrap();
            let theirs = oracle::chat_apply_builtin("gemma", &conv, add_gen).unwrap();
            assert_eq!(
                ours, theirs,
                "system {with_system}, add_generation_prompt {add_gen}"
            );
        }
    }
    let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = tmpl.render(&bad, true).unwrap_err().to_string();
    assert!(err.contains("roles must alternate"), "{err}");
}
