//! The `--llama-cpp-compat` export (a plain llama MoE file: router, experts copied and
//! zero-padded) of a SmolLM2 conversion (4 random experts over random halves of the neurons,
//! Q8_0) runs in the dense engine's llama.cpp-style MoE path and in llama.cpp itself: the same 16
//! greedy tokens on several prompts and logits within 1e-2 relative at every step.
#![cfg(all(feature = "convert", target_arch = "x86_64"))]

mod common;
#[path = "common/oracle_eval.rs"]
mod oracle_eval;

use candle_core::{Device, Tensor};
use common::{model_path, RealModel};
use oracle_eval::{argmax, max_rel_diff, GgmlKernels, LlamaOracle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use tomoe::convert::converted::{ConvertedLayer, ConvertedModel, Method};
use tomoe::convert::export::build_llama_compat;
use tomoe::convert::gguf_in::load_gguf;
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::gguf::QuantType;

#[test]
fn llama_cpp_compat_export_runs_the_same_in_both_engines() {
    let dense = load_gguf(&model_path(RealModel::SmolLm2), &Device::Cpu).unwrap();
    let c = dense.config.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let layers = (0..c.n_layers)
        .map(|_| {
            let masks: Vec<Vec<bool>> = (0..4).map(|_| (0..c.m).map(|_| rng.gen_bool(0.6)).collect()).collect();
            let router: Vec<f32> = (0..4 * c.d).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
            let router = Tensor::from_vec(router, (4, c.d), &Device::Cpu).unwrap();
            ConvertedLayer::from_expert_masks(&masks, c.m, (0..c.head_dim).collect(), router, None)
        })
        .collect();
    let cm = ConvertedModel {
        method: Method::ToMoe,
        layers,
        target_p: 0.6,
        measured_p: 0.6,
        output_mask: false,
        scale_pruned: false,
    };
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-compat-q8_0.gguf");
    build_llama_compat(&dense, &cm, QuantType::Q8_0).unwrap().write_atomic(&path).unwrap();
    drop(dense);

    let rt = Arc::new(Model::load(&path).unwrap());
    assert_eq!(rt.config().n_expert, Some(4));
    let mut oracle = LlamaOracle::load_with(&path, 128, 2, true, GgmlKernels::Default);
    let mut ctx = Context::new(rt, ContextParams { n_ctx: 128, n_threads: 2, n_batch: 128 }).unwrap();
    for prompt in ["The capital of France is", "Once upon a time, in a small village by the sea, there lived"] {
        let toks = oracle.tokenize(prompt, true, false);
        let (want, want_logits) = oracle.greedy(&toks, 16);
        ctx.clear();
        let mut logits = ctx.eval(&toks).unwrap().to_vec();
        let mut worst = 0f32;
        for i in 0..16 {
            let rel = max_rel_diff(&logits, &want_logits[i]);
            worst = worst.max(rel);
            assert!(rel <= 1e-2, "{prompt:?} step {i}: logits differ by {rel:e}");
            let t = argmax(&logits);
            assert_eq!(t, want[i], "{prompt:?}: greedy token {i} differs");
            if i + 1 < 16 {
                logits.copy_from_slice(ctx.eval(&[t]).unwrap());
            }
        }
        eprintln!("{prompt:?}: 16 greedy tokens equal, worst logits rel diff {worst:.2e}");
    }
    std::fs::remove_file(&path).ok();
}
