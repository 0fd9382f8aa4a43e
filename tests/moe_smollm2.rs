//! SmolLM2 converted to ToMoE (a random conversion: 4 experts over random halves of the neurons,
//! three quarters of the RoPE pairs kept, a random V-mask head), exported as f32 and run sparsely
//! by the runtime: the logits of several prompts match the converter's reference forward within
//! 1e-3 relative, in a batch and decoded token by token; the runtime's expert histogram shows
//! the router at work.
#![cfg(feature = "convert")]

mod common;
mod convert_util;

use candle_core::Device;
use common::{model_path, RealModel};
use convert_util::{max_rel_diff, rand_uniform};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use tomoe::convert::converted::{reference_forward, ConvertedLayer, ConvertedModel, Method, Routing, VMaskHead};
use tomoe::convert::export::build_tomoe;
use tomoe::convert::gguf_in::load_gguf;
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::gguf::QuantType;

#[test]
fn smollm2_tomoe_runtime_matches_reference_forward() {
    let dense = load_gguf(&model_path(RealModel::SmolLm2), &Device::Cpu).unwrap();
    let c = dense.config.clone();
    let (hd, half) = (c.head_dim, c.head_dim / 2);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let layers = (0..c.n_layers)
        .map(|_| {
            let masks: Vec<Vec<bool>> = (0..4).map(|_| (0..c.m).map(|_| rng.gen_bool(0.5)).collect()).collect();
            let pairs: Vec<usize> = (0..half).filter(|i| i % 4 != 3).collect();
            let mut keep: Vec<usize> = pairs.iter().copied().chain(pairs.iter().map(|p| p + half)).collect();
            keep.sort();
            let vmask = VMaskHead {
                w_a: rand_uniform(&mut rng, &[128, c.d], 0.05),
                b_state: rand_uniform(&mut rng, &[128], 0.1),
                ln_w: rand_uniform(&mut rng, &[128], 1.0),
                ln_b: rand_uniform(&mut rng, &[128], 0.1),
                w_dec: rand_uniform(&mut rng, &[hd, 128], 0.3),
                offset: 0.2,
                top_k: 0,
            };
            let router = rand_uniform(&mut rng, &[4, c.d], 0.1);
            ConvertedLayer::from_expert_masks(&masks, c.m, keep, router, Some(vmask))
        })
        .collect();
    let cm = ConvertedModel {
        method: Method::ToMoe,
        layers,
        target_p: 0.5,
        measured_p: 0.5,
        output_mask: false,
        scale_pruned: false,
    };
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-tomoe-random-f32.gguf");
    build_tomoe(&dense, &cm, QuantType::F32).unwrap().write_atomic(&path).unwrap();
    let rt = Arc::new(Model::load(&path).unwrap());
    let nv = rt.config().n_vocab;
    for prompt in ["The capital of France is", "Once upon a time, in a small village by the sea", "def add(a, b):"] {
        let tokens = rt.tokenizer().encode(prompt, true, false);
        let (want, _) = reference_forward(&dense, &cm, &tokens, Routing::Learned).unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let mut ctx = Context::new(rt.clone(), ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }).unwrap();
        let mut got = Vec::new();
        ctx.eval_all_logits(&tokens, &mut got).unwrap();
        let r = max_rel_diff(&got, &want);
        assert!(r <= 1e-3, "{prompt:?}: batch logits differ from the reference by {r:e}");
        let mut one = Context::new(rt.clone(), ContextParams { n_ctx: 64, n_threads: 2, n_batch: 1 }).unwrap();
        let mut worst = 0f32;
        for (i, &t) in tokens.iter().enumerate() {
            worst = worst.max(max_rel_diff(one.eval(&[t]).unwrap(), &want[i * nv..(i + 1) * nv]));
        }
        assert!(worst <= 1e-3, "{prompt:?}: decoded logits differ from the reference by {worst:e}");
        let used: Vec<usize> = one.expert_counts().iter().map(|l| l.iter().filter(|&&n| n > 0).count()).collect();
        assert!(used.iter().any(|&u| u > 1), "{prompt:?}: every layer sent all tokens to one expert");
        eprintln!("{prompt:?}: batch {r:.2e}, decode {worst:.2e}, experts used per layer {used:?}");
    }
    std::fs::remove_file(&path).ok();
}
