//! Tiny random models of each dense architecture without a real test model (qwen2 with its
//! Q/K/V biases and an untied output; llama with grouped-query attention and a tied output),
//! written with our GGUF writer and run by both the engine and llama.cpp (the oracle): every
//! position's logits must agree. f32 weights: within 1e-4 (ggml's f32 matrix kernels sum in
//! an order the engine does not mirror); Q8_0 weights: within 1e-6 (the engine rounds as ggml).
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle_eval.rs"]
mod oracle_eval;

#[path = "common/tiny.rs"]
mod tiny;

use oracle_eval::{max_rel_diff, GgmlKernels, LlamaOracle};
use std::sync::Arc;
use tiny::tiny_model;
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::model::random::values as random;
use tomoe::gguf::{GgufFile, QuantType};

/// Every position's logits of 40 tokens in one batch, and then 8 more decoded one at a time.
fn check(arch: &str, ty: QuantType, tol: f32) {
    let path = tiny_model(arch, ty, 7);
    let tokens: Vec<u32> =
        std::iter::once(257).chain(random(47, 3, 1.0).iter().map(|v| ((v + 1.0) * 127.9) as u32)).collect();
    let (prompt, rest) = tokens.split_at(40);
    let model = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{arch}: {e}")));
    let mut ctx = Context::new(model, ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }).unwrap();
    let mut oracle = LlamaOracle::load_with(&path, 64, 2, true, GgmlKernels::Default);
    let mut ours = Vec::new();
    ctx.eval_all_logits(prompt, &mut ours).unwrap();
    let want = oracle.eval(prompt, 0, true);
    let rel = max_rel_diff(&ours, &want);
    assert!(rel <= tol, "{arch} {ty}: batch logits differ by {rel:e}");
    let mut worst = rel;
    for (i, &t) in rest.iter().enumerate() {
        let ours = ctx.eval(&[t]).unwrap().to_vec();
        let want = oracle.eval(&[t], prompt.len() + i, false);
        let rel = max_rel_diff(&ours, &want);
        assert!(rel <= tol, "{arch} {ty}: decoded token {i} logits differ by {rel:e}");
        worst = worst.max(rel);
    }
    eprintln!("{arch} {ty}: worst logits rel diff {worst:.2e} over 48 positions");
}

#[test]
fn tiny_qwen2_matches_llama_cpp() {
    check("qwen2", QuantType::F32, 1e-4);
    check("qwen2", QuantType::Q8_0, 1e-6);
}

#[test]
fn tiny_llama_gqa_matches_llama_cpp() {
    check("llama", QuantType::F32, 1e-4);
    check("llama", QuantType::Q8_0, 1e-6);
}

/// A mapped file's matrices are read from the copies made at load: interleaved where the kernel
/// set has kernels for them, plain (on huge pages) where the system has transparent huge pages;
/// a file in memory gets no plain copies. Every logit is the same bits either way.
#[test]
fn copies_give_the_bits_of_the_file() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]") || mode.contains("[madvise]"));
    for (arch, ty) in [("qwen2", QuantType::F32), ("llama", QuantType::Q8_0)] {
        let path = tiny_model(arch, ty, 7);
        let mapped = Arc::new(Model::load(&path).unwrap());
        let file = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
        let in_memory = Arc::new(Model::from_gguf(file).unwrap());
        if ty == QuantType::F32 {
            // No kernel set interleaves f32: only plain copies, of a mapped file only.
            assert_eq!(in_memory.copies_bytes(), 0);
            assert_eq!(mapped.copies_bytes() > 0, thp, "{arch} {ty}: plain copies where THP is on");
        }
        let logits = |model: Arc<Model>| {
            let mut ctx = Context::new(model, ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }).unwrap();
            let mut all = Vec::new();
            ctx.eval_all_logits(&[257, 97, 98, 99, 32, 100], &mut all).unwrap();
            for t in [101, 102, 103] {
                all.extend_from_slice(ctx.eval(&[t]).unwrap());
            }
            all.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(logits(mapped), logits(in_memory), "{arch} {ty}: the copies change the logits");
    }
}
