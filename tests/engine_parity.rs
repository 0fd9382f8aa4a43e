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
//!
//! With an f16 KV cache the engine computes as llama.cpp with an f16 cache and no flash
//! attention (queries and probabilities rounded to f16, ggml's f16 products): the same checks
//! hold bit for bit against that oracle.
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle_eval.rs"]
mod oracle_eval;

use common::{model_path, RealModel, PARITY_PROMPTS};
use oracle_eval::{argmax, max_rel_diff, GgmlKernels, LlamaOracle, OracleKv};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tomoe::engine::{CacheTypes, Context, ContextParams, KvType, Model};
use tomoe::gguf::{GgufFile, GgufWriter, QuantType};
use tomoe_quant::dequantize_row;

const N_GEN: usize = 64;
const N_CTX: usize = 256;
const EXACT_REL: f32 = 1e-6;

fn context(path: &Path, kv: KvType) -> Context {
    let model = Arc::new(Model::load(path).expect("load model"));
    let p = ContextParams { n_ctx: N_CTX, n_threads: 2, n_batch: 512 };
    let ctx = Context::with_cache_types(model, p, CacheTypes::both(kv)).unwrap();
    assert_eq!(ctx.cache_types(), CacheTypes::both(kv));
    ctx
}

/// The oracle's cache for the engine's: the same type, no flash attention.
fn oracle_kv(kv: KvType) -> OracleKv {
    match kv {
        KvType::F32 => OracleKv::F32,
        KvType::F16 => OracleKv::F16,
    }
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

/// Free-running greedy generation against llama.cpp with the same KV cache type: the same
/// tokens, logits within `tol` at every step.
fn check_exact(path: &Path, name: &str, tol: f32) {
    check_exact_kv(path, name, tol, KvType::F32)
}

fn check_exact_kv(path: &Path, name: &str, tol: f32, kv: KvType) {
    let mut ctx = context(path, kv);
    let mut oracle = LlamaOracle::load_with(path, N_CTX, 2, oracle_kv(kv), GgmlKernels::VecDot);
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
        eprintln!("{name} ({kv} cache) {prompt:?}: 64 greedy tokens equal, worst logits rel diff {worst:.2e}");
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

#[test]
fn smollm2_quantized_f16_cache_matches_llama_cpp_exactly() {
    check_exact_kv(&model_path(RealModel::SmolLm2), "smollm2 q4_1", EXACT_REL, KvType::F16);
}

#[test]
fn gemma3_quantized_f16_cache_matches_llama_cpp_exactly() {
    check_exact_kv(&model_path(RealModel::Gemma3), "gemma3 q4_k_m", EXACT_REL, KvType::F16);
}

/// Every token's logits of a batch (the perplexity path), and a prompt fed one token at a time
/// (n_batch = 1): each equal to llama.cpp's for the same batching. (The two batchings differ
/// from each other by ~1e-2 in both engines: the attention sums round differently.)
fn check_batchings(which: RealModel, kv: KvType) {
    let path = model_path(which);
    let model = Arc::new(Model::load(&path).expect("load model"));
    let mut oracle = LlamaOracle::load_with(&path, 64, 2, oracle_kv(kv), GgmlKernels::VecDot);
    let toks = oracle.tokenize(PARITY_PROMPTS[1], true, false);
    let types = CacheTypes::both(kv);
    let mut a = Context::with_cache_types(model.clone(), ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }, types)
        .unwrap();
    let mut all = vec![0f32; toks.len() * oracle.n_vocab()];
    a.eval_all_logits(&toks, &mut all).unwrap();
    let want = oracle.eval(&toks, 0, true);
    let rel = max_rel_diff(&all, &want);
    assert!(rel <= EXACT_REL, "{which:?} ({kv} cache): all-token logits of a batch differ from llama.cpp's by {rel}");
    if kv == KvType::F16 {
        // The oracle's f16 cache shows: an f32 cache lands measurably apart from it.
        let p = ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 };
        let mut f32_ctx = Context::with_cache_types(model.clone(), p, CacheTypes::both(KvType::F32)).unwrap();
        let mut f32_all = vec![0f32; all.len()];
        f32_ctx.eval_all_logits(&toks, &mut f32_all).unwrap();
        let apart = max_rel_diff(&f32_all, &want);
        assert!(apart > 100.0 * EXACT_REL, "{which:?}: an f32 cache is only {apart:e} from llama.cpp's f16 one");
        eprintln!("{which:?}: f16 cache bit-identical to llama.cpp's; an f32 cache is {apart:.2e} apart");
    }

    let mut b =
        Context::with_cache_types(model, ContextParams { n_ctx: 64, n_threads: 2, n_batch: 1 }, types).unwrap();
    let lb = b.eval(&toks).unwrap().to_vec();
    assert_eq!(b.pos(), toks.len());
    oracle.clear();
    let mut want = Vec::new();
    for (i, &t) in toks.iter().enumerate() {
        want = oracle.eval(&[t], i, false);
    }
    let rel = max_rel_diff(&lb, &want);
    assert!(rel <= EXACT_REL, "{which:?} ({kv} cache): token-at-a-time logits differ from llama.cpp's by {rel}");
}

#[test]
fn smollm2_batch_and_single_token_paths_match_llama_cpp() {
    check_batchings(RealModel::SmolLm2, KvType::F32);
}

#[test]
fn gemma3_batch_and_single_token_paths_match_llama_cpp() {
    check_batchings(RealModel::Gemma3, KvType::F32);
}

#[test]
fn smollm2_f16_cache_batch_and_single_token_paths_match_llama_cpp() {
    check_batchings(RealModel::SmolLm2, KvType::F16);
}

#[test]
fn gemma3_f16_cache_batch_and_single_token_paths_match_llama_cpp() {
    check_batchings(RealModel::Gemma3, KvType::F16);
}
