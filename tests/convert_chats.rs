//! The converter's generated chats (Magpie) on the real models: the pre-query prompt is the
//! template's opening of a user turn, the model writes distinct questions and answers them,
//! the same seed gives the same chats, and the cache is reused and resumed.
#![cfg(feature = "convert")]

mod common;

use common::{model_path, RealModel};
use tomoe::chat::ChatTemplate;
use tomoe::convert::chats::{load_or_generate, pre_query_prompt, render, ChatGenParams};
use tomoe::engine::Model;

fn params(n: usize, seed: u64) -> ChatGenParams {
    ChatGenParams {
        n,
        seed,
        max_answer_tokens: 48,
        ..ChatGenParams::default()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tomoe-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn pre_query_prompts_open_a_user_turn() {
    let smol = Model::load(&model_path(RealModel::SmolLm2)).unwrap();
    let p = pre_query_prompt(smol.chat_template().unwrap()).unwrap();
    assert!(p.ends_with("<|im_start|>user\n"), "{p:?}");
    assert!(
        p.starts_with("<|im_start|>system\n"),
        "SmolLM2's template adds its system prompt: {p:?}"
    );
    // Gemma 3 270M is a base model without a template; its family's built-in one.
    let gemma = Model::load(&model_path(RealModel::Gemma3)).unwrap();
    assert!(gemma.chat_template().is_none());
    let t = ChatTemplate::with_file_tokens(gemma.gguf(), ChatTemplate::builtin("gemma").unwrap()).unwrap();
    let p = pre_query_prompt(&t).unwrap();
    assert_eq!(p, "<bos><start_of_turn>user\n");
}

#[test]
fn smollm2_writes_distinct_reproducible_chats_and_the_cache_is_reused() {
    let model = model_path(RealModel::SmolLm2);
    let dir = temp_dir("chats");
    let mut calls = 0;
    let (a, stats) = load_or_generate(&model, &params(6, 11), 2, &dir, &mut |_, _| calls += 1).unwrap();
    assert_eq!(stats.generated, a.len());
    assert!(a.len() >= 5, "at most one of six slots may stay empty: {a:?}");
    assert!(calls >= 7, "progress is reported per slot");
    for c in &a {
        assert!(c.user.split_whitespace().count() >= 3, "{c:?}");
        assert!(!c.assistant.is_empty() && !c.user.contains("<|im_"), "{c:?}");
    }
    let mut users: Vec<_> = a.iter().map(|c| c.user.to_lowercase()).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), a.len(), "questions are distinct");

    // The complete set is read back, not generated again.
    let (b, stats) = load_or_generate(&model, &params(6, 11), 2, &dir, &mut |_, _| {}).unwrap();
    assert_eq!((stats.generated, &b), (0, &a));

    // The same seed elsewhere gives the same chats; another seed others.
    let dir2 = temp_dir("chats2");
    let (c, _) = load_or_generate(&model, &params(6, 11), 1, &dir2, &mut |_, _| {}).unwrap();
    assert_eq!(c, a, "one thread or two, the same chats");
    let (d, _) = load_or_generate(&model, &params(6, 12), 2, &dir2, &mut |_, _| {}).unwrap();
    assert_ne!(d, a);

    // A stopped run resumes: keep the header and the first two slots, and half a line.
    let dir3 = temp_dir("chats3");
    std::fs::create_dir_all(&dir3).unwrap();
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&file).unwrap();
    let cut = text.match_indices("{\"next\":2}\n").next().unwrap().0 + "{\"next\":2}\n".len();
    let copy = dir3.join(file.file_name().unwrap());
    std::fs::write(&copy, format!("{}{{\"slot\":2,\"us", &text[..cut])).unwrap();
    let (e, stats) = load_or_generate(&model, &params(6, 11), 2, &dir3, &mut |_, _| {}).unwrap();
    assert_eq!(e, a, "a resumed run gives the chats of an uninterrupted one");
    assert!(stats.generated < a.len() && stats.generated >= a.len() - 2);
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        text,
        "the cut line is replaced"
    );

    // Fewer chats are the first ones of the set, read from its file; more extend it.
    let (f, stats) = load_or_generate(&model, &params(3, 11), 2, &dir, &mut |_, _| {}).unwrap();
    assert_eq!(stats.generated, 0);
    assert_eq!(f, a.iter().filter(|c| c.slot < 3).cloned().collect::<Vec<_>>());
    let dir4 = temp_dir("chats4");
    load_or_generate(&model, &params(3, 11), 2, &dir4, &mut |_, _| {}).unwrap();
    let (g, stats) = load_or_generate(&model, &params(6, 11), 2, &dir4, &mut |_, _| {}).unwrap();
    assert_eq!(g, a);
    assert!(stats.generated > 0 && stats.generated < a.len());

    let rendered = render(Model::load(&model).unwrap().chat_template().unwrap(), &a).unwrap();
    assert!(rendered[0].contains("<|im_start|>assistant\n") && rendered[0].contains(&a[0].assistant));
    for d in [dir, dir2, dir3, dir4] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_model_file_that_is_not_a_model_is_a_clear_error() {
    let dir = temp_dir("chats-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\0\0\0truncated").unwrap();
    let e = load_or_generate(&bad, &params(2, 1), 1, &dir, &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("bad.gguf"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
