//! Helpers shared by the integration tests: where the real models and the test texts are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The real models of the test suite, fetched by `scripts/fetch-models.sh` (checksum-verified).
#[derive(Clone, Copy, Debug)]
pub enum RealModel {
    /// SmolLM2-135M-Instruct, Q4_1 (llama architecture, byte-level BPE, ChatML template).
    SmolLm2,
    /// Gemma 3 270M, Q4_K_M (gemma3 architecture, SentencePiece).
    Gemma3,
}

/// The prompts of the generation parity tests against llama.cpp (`engine_parity*.rs`).
pub const PARITY_PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
];

/// Directory of the cached models: `$TOMOE_MODELS`, else `~/.cache/tomoe/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOMOE_MODELS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set; set TOMOE_MODELS instead");
    PathBuf::from(home).join(".cache/tomoe/models")
}

/// Path of a real model. A missing model fails the test (it is never skipped): run
/// `scripts/fetch-models.sh` first, as `.ci/run` does.
pub fn model_path(model: RealModel) -> PathBuf {
    let file = match model {
        RealModel::SmolLm2 => "smollm2-135m-instruct-q4_1.gguf",
        RealModel::Gemma3 => "gemma-3-270m-q4_k_m.gguf",
    };
    let path = models_dir().join(file);
    assert!(
        path.is_file(),
        "test model {} is missing: run `scripts/fetch-models.sh` (or set TOMOE_MODELS)",
        path.display()
    );
    path
}

/// One of the Austen novels copied into `tests/data/austen/` (persuasion.txt is the evaluation text).
pub fn austen(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/austen").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The resident KiB of this process's mappings of `path` (`/proc/self/smaps`; 0 where there is
/// none).
pub fn mapped_rss_kib(path: &std::path::Path) -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let name = path.to_string_lossy();
    let mut ours = false;
    let mut total = 0;
    for line in smaps.lines() {
        if line.contains('-') && line.split_whitespace().count() >= 5 && !line.ends_with(" kB") {
            ours = line.ends_with(&*name);
        } else if let Some(kb) = line.strip_prefix("Rss:").filter(|_| ours) {
            total += kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap();
        }
    }
    total
}
