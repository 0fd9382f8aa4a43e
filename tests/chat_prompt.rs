//! Chat prompts on tiny models with chat templates of their own: exactly one BOS when both the
//! tokenizer and the template add it, and a template that does not parse falls back to ChatML
//! with a warning instead of failing the load.

#[path = "common/tiny.rs"]
mod tiny;

use std::process::Command;
use std::sync::Arc;
use tomoe::chat::{ChatMessage, Sampler, SamplerParams};
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::generate::{chat_tokens, GenerateOptions, Generator};
use tomoe::gguf::{QuantType, Value};

const BOS: u32 = 257;

fn model_with(template: &str, add_bos: bool, name: &str) -> Arc<Model> {
    let extra = [
        ("tokenizer.chat_template", Value::String(template.into())),
        ("tokenizer.ggml.add_bos_token", Value::Bool(add_bos)),
    ];
    let path = tiny::tiny_model_with("llama", QuantType::Q8_0, 7, &extra, name);
    Arc::new(Model::load(&path).unwrap())
}

const BOS_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}\
                            {% if add_generation_prompt %}[assistant]{% endif %}";

#[test]
fn a_template_starting_with_bos_gives_one_bos() {
    let msgs = [ChatMessage::new("user", "hi")];
    for add_bos in [true, false] {
        let model = model_with(BOS_TEMPLATE, add_bos, &format!("tiny-bos-{add_bos}.gguf"));
        let tok = model.tokenizer();
        let template = model.chat_template().unwrap();
        assert!(model.chat_template_warning().is_none());
        let rendered = template.render(&msgs, true).unwrap();
        assert!(rendered.starts_with("<s>[user]hi"), "{rendered}");
        // Tokenized naively, the tokenizer's BOS and the template's make two.
        let naive = tok.encode(&rendered, true, true);
        assert_eq!(
            naive.iter().take_while(|&&t| t == BOS).count(),
            if add_bos { 2 } else { 1 }
        );
        let tokens = chat_tokens(tok, template, &msgs, true).unwrap();
        assert_eq!(tokens[0], BOS, "add_bos {add_bos}");
        assert_eq!(
            tokens.iter().filter(|&&t| t == BOS).count(),
            1,
            "add_bos {add_bos}: {tokens:?}"
        );
        assert_eq!(&tokens[1..], &naive[naive.len() - tokens.len() + 1..]);

        // The generator evaluates exactly that prompt.
        let ctx = Context::new(
            model.clone(),
            ContextParams {
                n_ctx: 64,
                n_threads: 1,
                n_batch: 64,
            },
        )
        .unwrap();
        let greedy = SamplerParams {
            temperature: 0.0,
            ..SamplerParams::default()
        };
        let mut gen = Generator::new(ctx, Sampler::new(greedy, model.config().n_vocab));
        let out = gen
            .generate(&tokens, &GenerateOptions::max_tokens(3), |_| true)
            .unwrap();
        assert_eq!(out.n_prompt, tokens.len());
        assert_eq!(&gen.tokens()[..tokens.len()], &tokens[..]);
    }
}

#[test]
fn text_not_at_the_start_keeps_its_bos() {
    let model = model_with(BOS_TEMPLATE, true, "tiny-bos-later.gguf");
    let tok = model.tokenizer();
    assert_eq!(tok.encode_prompt("<s>ab", false), vec![BOS, 256]);
    assert_eq!(tok.encode_prompt("<s>ab", true), vec![BOS, 256]);
    assert_eq!(tok.encode_prompt("ab", true), vec![BOS, 256]);
}

#[test]
fn a_template_that_does_not_parse_falls_back_to_chatml() {
    let model = model_with(
        "{% for m in messages %}{{ m.content }",
        true,
        "tiny-broken-template.gguf",
    );
    let warning = model.chat_template_warning().expect("a warning");
    assert!(warning.contains("ChatML"), "{warning}");
    let rendered = model
        .chat_template()
        .unwrap()
        .render(&[ChatMessage::new("user", "hi")], true)
        .unwrap();
    assert_eq!(rendered, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");

    // The CLI chats with it, saying why; a built-in template chosen by name silences that.
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiny-broken-template.gguf");
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
            .arg(&path)
            .args(["-n", "4", "--temp", "0", "-c", "64", "-t", "1"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(
        err.contains("warning: the model's chat template cannot be used"),
        "{err}"
    );
    assert!(err.contains("tokens/s"), "{err}");
    let err = run(&["--chat-template", "llama3"]);
    assert!(!err.contains("warning"), "{err}");
    let err = Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
        .arg(&path)
        .args(["--chat-template", "no-such-template"])
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        msg.contains("not a built-in template (chatml, llama3, gemma, llama2)"),
        "{msg}"
    );
}
