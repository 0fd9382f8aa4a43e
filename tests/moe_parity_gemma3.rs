//! The Gemma 3 paths of the converter and the sparse runtime on a tiny random model: a tiny GQA
//! llama turned into a gemma3 (random Q/K norms and post-norms, a sliding window of 4 on the first
//! layer with its own RoPE base, a logit softcap, GeGLU). The converted model's reference forward
//! with every mask on equals the dense forward; random conversions (4 experts, a V-mask head, with
//! and without the output mask) exported as f32 run in the runtime with the reference's logits
//! within 2e-3 relative (the runtime's GELU is ggml's f16 table), batched and decoded.
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::Device;
use convert_util::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tomoe::convert::converted::{
    all_on, reference_forward, ConvertedLayer, ConvertedModel, Method, Routing, VMaskHead,
};
use tomoe::convert::dense::{Arch, DenseModel, Gemma3Params};
use tomoe::convert::export::build_tomoe;
use tomoe::convert::forward::{forward, NoMasks};
use tomoe::convert::hf::load_hf;
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::gguf::QuantType;

/// The tiny GQA llama of `convert_util` with Gemma 3's extra parts (random norm weights).
fn tiny_gemma3(name: &str, seed: u64) -> (DenseModel, std::path::PathBuf) {
    let dir = scratch(name);
    write_hf(&dir, &LLAMA_GQA, seed, 1);
    let mut m = load_hf(&dir, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (d, hd) = (m.config.d, m.config.head_dim);
    // Weights around 1, as Gemma's norms after llama.cpp folds in the "1 +".
    let mut norm = |len: usize| (rand_uniform(&mut rng, &[len], 0.5) + 1.0).unwrap();
    for lw in &mut m.layers {
        lw.q_norm = Some(norm(hd));
        lw.k_norm = Some(norm(hd));
        lw.post_attn_norm = Some(norm(d));
        lw.post_ffn_norm = Some(norm(d));
    }
    m.config.arch = Arch::Gemma3;
    m.config.rope_theta = 1e6;
    m.config.gemma3 = Some(Gemma3Params {
        rope_theta_local: 10_000.0,
        sliding_window: Some(4),
        swa_layers: (0..m.config.n_layers).map(|l| l % 2 == 0).collect(),
        attn_scale: 1.0 / (hd as f32).sqrt(),
        final_logit_softcap: Some(3.0),
    });
    m.config.validate().unwrap();
    (m, dir)
}

/// 4 experts over random neuron sets, every Q/K dim (Gemma keeps them all), a random V-mask head.
fn random_conversion(m: &DenseModel, seed: u64, output_mask: bool) -> ConvertedModel {
    let c = &m.config;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layers = (0..c.n_layers)
        .map(|_| {
            let masks: Vec<Vec<bool>> = (0..4).map(|_| (0..c.m).map(|_| rng.gen_bool(0.5)).collect()).collect();
            let vmask = VMaskHead {
                w_a: rand_uniform(&mut rng, &[128, c.d], 0.2),
                b_state: rand_uniform(&mut rng, &[128], 0.2),
                ln_w: rand_uniform(&mut rng, &[128], 1.0),
                ln_b: rand_uniform(&mut rng, &[128], 0.2),
                w_dec: rand_uniform(&mut rng, &[c.head_dim, 128], 0.3),
                offset: 0.1,
                top_k: if output_mask { c.head_dim / 2 } else { 0 },
            };
            let router = rand_uniform(&mut rng, &[4, c.d], 1.0);
            let mut layer =
                ConvertedLayer::from_expert_masks(&masks, c.m, (0..c.head_dim).collect(), router, Some(vmask));
            // Expert biases (added before the post-FFN norm) in one of the two conversions.
            if !output_mask {
                layer.expert_bias = Some(rand_uniform(&mut rng, &[4, c.d], 0.5));
            }
            layer
        })
        .collect();
    ConvertedModel {
        method: Method::ToMoe,
        layers,
        target_p: 0.5,
        measured_p: 0.5,
        output_mask,
        scale_pruned: false,
    }
}

const TEXT: &str = "It is a truth universally acknowledged, that a single man in possession";

#[test]
fn tiny_gemma3_reference_forward_with_every_mask_on_equals_the_dense_forward() {
    let (m, dir) = tiny_gemma3("gemma3-all-on", 21);
    let tokens = byte_tokens(TEXT);
    let dense = forward(&m, &tokens, &mut NoMasks).unwrap();
    let (conv, _) = reference_forward(&m, &all_on(&m, 2).unwrap(), &tokens, Routing::Learned).unwrap();
    let diff = max_abs_diff(&dense, &conv);
    assert!(diff < 1e-4, "reference forward differs from dense by {diff}");
    // The softcap bounds the logits.
    let max = dense.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max > 0.1 && max <= 3.0, "logit scale {max}");
    std::fs::remove_dir_all(&dir).ok();
}

fn check(name: &str, seed: u64, output_mask: bool) {
    let (m, dir) = tiny_gemma3(name, seed);
    let cm = random_conversion(&m, seed, output_mask);
    let path = dir.join("tomoe.gguf");
    build_tomoe(&m, &cm, QuantType::F32)
        .unwrap()
        .write_atomic(&path)
        .unwrap();
    let tokens = byte_tokens(TEXT);
    let (want, stats) = reference_forward(&m, &cm, &tokens, Routing::Learned).unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        stats
            .expert_counts
            .iter()
            .any(|c| c.iter().filter(|&&n| n > 0).count() > 1),
        "{name}: one expert took every token"
    );
    let rt = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{name}: runtime load: {e}")));
    let c = rt.config();
    assert_eq!((c.sliding_window, c.swa_layers.clone()), (Some(4), vec![true, false]));
    let nv = c.n_vocab;
    let mut ctx = Context::new(
        rt.clone(),
        ContextParams {
            n_ctx: 128,
            n_threads: 2,
            n_batch: 128,
        },
    )
    .unwrap();
    let mut batch = Vec::new();
    ctx.eval_all_logits(&tokens, &mut batch).unwrap();
    let r = max_rel_diff(&batch, &want);
    let mut one = Context::new(
        rt,
        ContextParams {
            n_ctx: 128,
            n_threads: 2,
            n_batch: 1,
        },
    )
    .unwrap();
    let mut worst = 0f32;
    for (i, &tok) in tokens.iter().enumerate() {
        worst = worst.max(max_rel_diff(one.eval(&[tok]).unwrap(), &want[i * nv..(i + 1) * nv]));
    }
    eprintln!("{name}: batch {r:.2e}, decode {worst:.2e}");
    assert!(
        r <= 2e-3,
        "{name}: batch logits differ from the reference forward by {r:e}"
    );
    assert!(
        worst <= 2e-3,
        "{name}: decoded logits differ from the reference forward by {worst:e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tiny_gemma3_sparse_matches_reference() {
    check("moe-gemma3", 22, false);
}

#[test]
fn tiny_gemma3_sparse_matches_reference_with_output_mask() {
    check("moe-gemma3-om", 23, true);
}
