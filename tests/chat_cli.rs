//! The interactive chat of `tomoe-run`, driven through a pseudo-terminal by
//! `tests/chat/pty_chat.py` as a person would use it: a conversation longer than the context
//! goes on with the oldest turns dropped, `/clear` forgets it, Ctrl-C stops an answer and, at
//! an empty prompt, quits; `/bye` quits.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn scenario(name: &str) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/chat/pty_chat.py");
    let model = common::model_path(common::RealModel::SmolLm2);
    let out = Command::new("python3")
        .arg(&script)
        .arg(name)
        .arg(env!("CARGO_BIN_EXE_tomoe-run"))
        .arg(&model)
        .output()
        .expect("python3 is needed to drive the chat through a pseudo-terminal");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{transcript}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!transcript.contains("panicked"), "{transcript}");
    transcript
}

#[test]
fn a_chat_longer_than_the_context_goes_on() {
    let t = scenario("long");
    // Four answers, each followed by its speed, then the one after /clear.
    assert_eq!(t.matches("tokens/s | prompt:").count(), 5, "{t}");
    assert!(t.contains("the oldest turn was dropped"), "{t}");
    assert!(t.contains("[conversation cleared]"), "{t}");
    assert!(t.trim_end().ends_with("OK"), "{t}");
}

#[test]
fn ctrl_c_stops_the_answer_and_the_chat_goes_on() {
    let t = scenario("interrupt");
    assert!(t.contains("[stopped]"), "{t}");
    assert!(t.trim_end().ends_with("OK"), "{t}");
}
