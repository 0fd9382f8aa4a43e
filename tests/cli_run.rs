//! `tomoe-run` end to end on the real SmolLM2 file: one-shot greedy generation equals the
//! library's greedy tokens, and bad input (missing file, prompt longer than the context, a
//! non-GGUF file) gives a clear error and a non-zero exit, never a panic.

mod common;

use std::process::Command;
use std::sync::Arc;
use tomoe::engine::{Context, ContextParams, Model};

fn tomoe_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
}

#[test]
fn one_shot_greedy_matches_the_library() {
    let path = common::model_path(common::RealModel::SmolLm2);
    let prompt = "The capital of France is";
    let out = tomoe_run()
        .arg(&path)
        .args(["-p", prompt, "-n", "12", "--temp", "0", "-t", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));

    let model = Arc::new(Model::load(&path).unwrap());
    let mut ctx = Context::new(
        model.clone(),
        ContextParams {
            n_ctx: 256,
            n_threads: 2,
            n_batch: 64,
        },
    )
    .unwrap();
    let tokens = model.tokenizer().encode(prompt, true, true);
    let mut logits = ctx.eval(&tokens).unwrap().to_vec();
    let mut generated = Vec::new();
    for _ in 0..12 {
        let id = logits
            .iter()
            .enumerate()
            .fold(0, |b, (i, &x)| if x > logits[b] { i } else { b }) as u32;
        if model.tokenizer().is_eog(id) {
            break;
        }
        generated.push(id);
        logits = ctx.eval(&[id]).unwrap().to_vec();
    }
    let expected = model.tokenizer().decode(&generated);
    assert!(!expected.trim().is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), expected.trim_end());
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let path = common::model_path(common::RealModel::SmolLm2);
    let long = "word ".repeat(100);
    let out = tomoe_run()
        .arg(&path)
        .args(["-p", &long, "-n", "4", "-c", "32"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("larger -c"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn missing_and_non_gguf_files_are_clear_errors() {
    let out = tomoe_run()
        .args(["/nonexistent/model.gguf", "-p", "hi"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load /nonexistent/model.gguf"), "stderr: {err}");

    let text = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/austen/README.md");
    let out = tomoe_run().arg("info").arg(&text).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot read"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn info_lists_every_tensor() {
    let path = common::model_path(common::RealModel::SmolLm2);
    let out = tomoe_run().arg("info").arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let n = tomoe::gguf::GgufFile::open(&path).unwrap().tensors().len();
    assert!(text.contains(&format!("tensors ({n},")), "{text}");
    assert!(text.contains("blk.29.ffn_down.weight"));
    assert!(text.contains("model: 30 layers, d=576"));
}
