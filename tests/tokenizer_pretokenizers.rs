//! Every supported BPE pre-tokenizer against llama.cpp. No real model of each family is in the
//! test set, so SmolLM2's vocabulary and merges are re-labelled with each pre-tokenizer name
//! (a copy of its metadata, no tensors, written with GgufWriter) and both tokenizers load that
//! file: the ids must agree on the hard strings, random text and a whole novel.
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle.rs"]
mod oracle;

use std::path::PathBuf;

use common::RealModel;
use oracle::cases::{HARD_STRINGS, RANDOM_PIECES};
use oracle::VocabOracle;
use rand::{Rng, SeedableRng};
use tomoe::gguf::{GgufFile, GgufWriter, Value};
use tomoe::tokenizer::Tokenizer;

/// SmolLM2's metadata with `tokenizer.ggml.pre` replaced (or removed, for `None`).
fn relabelled(pre: Option<&str>) -> PathBuf {
    let src = GgufFile::open(&common::model_path(RealModel::SmolLm2)).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        if k == "tokenizer.ggml.pre" {
            if let Some(p) = pre {
                w.add_metadata(k.clone(), Value::String(p.to_string()));
            }
        } else {
            w.add_metadata(k.clone(), v.clone());
        }
    }
    let path = std::env::temp_dir().join(format!(
        "tomoe-pre-{}-{}.gguf",
        pre.unwrap_or("none"),
        std::process::id()
    ));
    w.write_atomic(&path).unwrap();
    path
}

fn check(pre: Option<&str>) {
    let path = relabelled(pre);
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let oracle = VocabOracle::load(&path);
    std::fs::remove_file(&path).unwrap();

    for s in HARD_STRINGS {
        for special in [false, true] {
            let ours = tok.encode(s, true, special);
            assert_eq!(
                ours,
                oracle.tokenize(s.as_bytes(), true, special),
                "{pre:?}: tokens of {s:?} (parse_special {special})"
            );
            // The detokenizer's space clean-up depends on the pre-tokenizer too.
            assert_eq!(
                tok.detokenize(&ours, false, false),
                oracle.detokenize(&ours, false, false),
                "{pre:?}: text of {s:?}"
            );
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for _ in 0..1000 {
        let n = rng.gen_range(1..12);
        let s: String = (0..n)
            .map(|_| RANDOM_PIECES[rng.gen_range(0..RANDOM_PIECES.len())])
            .collect();
        assert_eq!(
            tok.encode(&s, false, false),
            oracle.tokenize(s.as_bytes(), false, false),
            "{pre:?}: tokens of {s:?}"
        );
    }
    let text = common::austen("persuasion.txt");
    let ours = tok.encode(&text, true, false);
    let theirs = oracle.tokenize(text.as_bytes(), true, false);
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("{pre:?}: persuasion.txt differs at token {i}");
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{pre:?}: persuasion.txt token count"
    );
    assert_eq!(
        tok.detokenize(&ours, false, false),
        oracle.detokenize(&theirs, false, false),
        "{pre:?}: persuasion.txt text"
    );
}

#[test]
fn gpt2_family() {
    check(Some("gpt-2"));
    check(Some("trillion")); // gpt-2 splitting without the space clean-up
}

#[test]
fn starcoder_family() {
    check(Some("starcoder"));
}

#[test]
fn llama3_family() {
    check(Some("llama3")); // whole-word lookup before merging
    check(Some("dbrx"));
}

#[test]
fn qwen2_family() {
    check(Some("qwen2"));
    check(Some("stablelm2"));
}

#[test]
fn default_when_missing() {
    check(None);
    check(Some("default"));
}

#[test]
fn unknown_pre_tokenizer_is_an_error() {
    let path = relabelled(Some("no-such-pre"));
    let result = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    let err = result
        .err()
        .expect("an unknown pre-tokenizer must not load");
    assert!(err.to_string().contains("no-such-pre"), "{err}");
}
