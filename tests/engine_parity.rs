//! The engine against llama.cpp (the oracle) on the real models, fed the same token ids
//! (tokenized by llama.cpp, so that this tests the forward pass alone). Relative difference of
//! two logit vectors = max|a - b| / max|b| over the vocabulary (b: llama.cpp's).
//!
//! The engine computes as llama.cpp's CPU backend does with an f32 KV cache, no flash
//! attention and ggml's per-row `vec_dot` kernels for K-quants (`GgmlKernels::VecDot`: no
//! weight repacking, no tiled K-quant path): the same 8-bit activation quantizers (ties to
//! even), the same summation order in every product, ggml's exp polynomial in SiLU and softmax
//! and its f16 GELU table (`tomoe_quant::vecmath`). That matters because these models have
//! activation outliers of several hundred: a one-ulp difference anywhere flips the rounding of
//! an 8-bit activation downstream, and two engines that round differently land 2-6% apart in
//! the logits (llama.cpp with its default f16 KV cache is 6% away from itself with an f32
//! one). So, on both models as shipped (SmolLM2: Q4_1, Q8_0; Gemma 3: Q4_K, Q5_0, Q6_K, Q8_0):
//! free-running greedy generation, the same 64 tokens and logits within 1e-6 (measured:
//! bit-identical) at every step. llama.cpp's default kernels for Q4_K/Q6_K sum in orders of
//! their own; `engine_parity_default_kernels.rs` compares against those.
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle_eval.rs"]
mod oracle_eval;

use common::{model_path, RealModel, PARITY_PROMPTS};
use oracle_eval::{argmax, max_rel_diff, GgmlKernels, LlamaOracle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tomoe::engine::{Context, ContextParams};
use tomoe::gguf::{GgufFile, GgufWriter, QuantType};
use tomoe::model::Model;
use tomoe_quant::dequantize_row;

const N_GEN: usize = 64;
const N_CTX: usize = 256;
const EXACT_REL: f32 = 1e-6;

fn context(path: &Path) -> Context {
    let model = Arc::new(Model::load(path).expect("load model"));
    Context::new(model, ContextParams { n_ctx: N_CTX, n_threads: 2, n_batch: 512 }).unwrap()
}

/// Writes an f32 copy of `src` (same metadata, every tensor dequantized) next to the test
/// binaries.
fn f32_copy(src: &Path, name: &str) -> PathBuf {
    let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        if k != "general.file_type" {
            w.add_metadata(k.clone(), v.clone());
        }
    }
    for t in f.tensors() {
        let n = t.dims.iter().product::<u64>() as usize;
        let mut vals = vec![0f32; n];
        dequantize_row(t.ty, f.tensor(&t.name).unwrap().data, &mut vals);
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(t.name.clone(), t.dims.clone(), QuantType::F32, bytes).unwrap();
    }
    w.write_atomic(&dst).unwrap();
    dst
}

/// Free-running greedy generation against llama.cpp with an f32 KV cache: the same tokens,
/// logits within `tol` at every step.
fn check_exact(path: &Path, name: &str, tol: f32) {
    let mut ctx = context(path);
    let mut oracle = LlamaOracle::load_with(path, N_CTX, 2, true, GgmlKernels::VecDot);
    for prompt in PARITY_PROMPTS {
        let toks = oracle.tokenize(prompt, true, false);
        let (want, want_logits) = oracle.greedy(&toks, N_GEN);
        ctx.clear();
        let mut logits = ctx.eval(&toks).unwrap().to_vec();
        let mut worst = 0f32;
        for i in 0..N_GEN {
            let rel = max_rel_diff(&logits, &want_logits[i]);
            worst = worst.max(rel);
            assert!(rel <= tol, "{name} {prompt:?} step {i}: logits differ by {rel:e}");
            let t = argmax(&logits);
            assert_eq!(t, want[i], "{name} {prompt:?}: greedy token {i} differs");
            if i + 1 < N_GEN {
                logits.copy_from_slice(ctx.eval(&[t]).unwrap());
            }
        }
        eprintln!("{name} {prompt:?}: 64 greedy tokens equal, worst logits rel diff {worst:.2e}");
    }
}

#[test]
fn smollm2_f32_matches_llama_cpp_exactly() {
    let path = f32_copy(&model_path(RealModel::SmolLm2), "smollm2-f32.gguf");
    // f32 weights take ggml's f32 matrix kernels, whose summation order is not mirrored.
    check_exact(&path, "smollm2 f32", 1e-4);
}

#[test]
fn smollm2_quantized_matches_llama_cpp_exactly() {
    check_exact(&model_path(RealModel::SmolLm2), "smollm2 q4_1", EXACT_REL);
}

#[test]
#[ignore = "known gap (issue 3): gemma3 f32 logits differ from llama.cpp by 3.0e-4 (limit 1e-4): ggml's f32 matrix kernels sum in an order not mirrored"]
fn gemma3_f32_matches_llama_cpp_exactly() {
    let path = f32_copy(&model_path(RealModel::Gemma3), "gemma3-f32.gguf");
    check_exact(&path, "gemma3 f32", 1e-4);
}

#[test]
fn gemma3_quantized_matches_llama_cpp_exactly() {
    check_exact(&model_path(RealModel::Gemma3), "gemma3 q4_k_m", EXACT_REL);
}

/// Every token's logits of a batch (the perplexity path), and a prompt fed one token at a time
/// (n_batch = 1): each equal to llama.cpp's for the same batching. (The two batchings differ
/// from each other by ~1e-2 in both engines: the attention sums round differently.)
fn check_batchings(which: RealModel) {
    let path = model_path(which);
    let model = Arc::new(Model::load(&path).expect("load model"));
    let mut oracle = LlamaOracle::load_with(&path, 64, 2, true, GgmlKernels::VecDot);
    let toks = oracle.tokenize(PARITY_PROMPTS[1], true, false);
    let mut a = Context::new(model.clone(), ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }).unwrap();
    let mut all = vec![0f32; toks.len() * oracle.n_vocab()];
    a.eval_all_logits(&toks, &mut all).unwrap();
    let want = oracle.eval(&toks, 0, true);
    let rel = max_rel_diff(&all, &want);
    assert!(rel <= EXACT_REL, "{which:?}: all-token logits of a batch differ from llama.cpp's by {rel}");

    let mut b = Context::new(model, ContextParams { n_ctx: 64, n_threads: 2, n_batch: 1 }).unwrap();
    let lb = b.eval(&toks).unwrap().to_vec();
    assert_eq!(b.pos(), toks.len());
    oracle.clear();
    let mut want = Vec::new();
    for (i, &t) in toks.iter().enumerate() {
        want = oracle.eval(&[t], i, false);
    }
    let rel = max_rel_diff(&lb, &want);
    assert!(rel <= EXACT_REL, "{which:?}: token-at-a-time logits differ from llama.cpp's by {rel}");
}

#[test]
fn smollm2_batch_and_single_token_paths_match_llama_cpp() {
    check_batchings(RealModel::SmolLm2);
}

#[test]
fn gemma3_batch_and_single_token_paths_match_llama_cpp() {
    check_batchings(RealModel::Gemma3);
}
