//! An f16 KV cache on ToMoE layers, which llama.cpp cannot run (no oracle): pruned Q/K dims
//! (keys narrower than 32 dims, so every f16 score is the products' tail) with and without a
//! dynamic V mask (whose compactly cached values stay f32). On tiny random conversions
//! exported as f32, the logits with an f16 cache stay within 1e-2 (relative) of an f32 cache's,
//! in a batch and decoded token by token, and differ from them (the f16 path ran).
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::Device;
use convert_util::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tomoe::convert::converted::{ConvertedLayer, ConvertedModel, Method, VMaskHead};
use tomoe::convert::export::build_tomoe;
use tomoe::convert::hf::load_hf;
use tomoe::engine::{CacheTypes, Context, ContextParams, KvType, Model};
use tomoe::gguf::QuantType;

/// 4 experts over random halves of the neurons, half the RoPE pairs kept, a V-mask head
/// (capped at half the head dims) if `vmask`.
fn conversion(t: &Tiny, hd: usize, seed: u64, vmask: bool) -> ConvertedModel {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let half = hd / 2;
    let layers = (0..t.layers)
        .map(|_| {
            let masks: Vec<Vec<bool>> = (0..4).map(|_| (0..t.m).map(|_| rng.gen_bool(0.5)).collect()).collect();
            let pairs: Vec<usize> = (0..half).filter(|_| rng.gen_bool(0.5)).collect();
            let pairs = if pairs.is_empty() { vec![0] } else { pairs };
            let mut keep: Vec<usize> = pairs.iter().copied().chain(pairs.iter().map(|p| p + half)).collect();
            keep.sort();
            let head = vmask.then(|| VMaskHead {
                w_a: rand_uniform(&mut rng, &[128, t.d], 0.2),
                b_state: rand_uniform(&mut rng, &[128], 0.2),
                ln_w: rand_uniform(&mut rng, &[128], 1.0),
                ln_b: rand_uniform(&mut rng, &[128], 0.2),
                w_dec: rand_uniform(&mut rng, &[hd, 128], 0.3),
                offset: 0.1,
                top_k: hd / 2,
            });
            ConvertedLayer::from_expert_masks(&masks, t.m, keep, rand_uniform(&mut rng, &[4, t.d], 1.0), head)
        })
        .collect();
    ConvertedModel {
        method: Method::ToMoe,
        layers,
        target_p: 0.5,
        measured_p: 0.5,
        output_mask: false,
        scale_pruned: true,
    }
}

/// Every token's logits with `types`, from a batch and token by token.
fn logits(rt: &Arc<Model>, tokens: &[u32], types: CacheTypes, want_types: CacheTypes) -> (Vec<f32>, Vec<f32>) {
    let p = ContextParams {
        n_ctx: 128,
        n_threads: 2,
        n_batch: 128,
    };
    let mut ctx = Context::with_cache_types(rt.clone(), p.clone(), types).unwrap();
    assert_eq!(ctx.cache_types(), want_types);
    let mut batch = Vec::new();
    ctx.eval_all_logits(tokens, &mut batch).unwrap();
    let mut one = Context::with_cache_types(rt.clone(), ContextParams { n_batch: 1, ..p }, types).unwrap();
    let mut decoded = Vec::new();
    for &tok in tokens {
        decoded.extend_from_slice(one.eval(&[tok]).unwrap());
    }
    (batch, decoded)
}

fn check(t: &Tiny, name: &str, seed: u64, vmask: bool) {
    let dir = scratch(name);
    write_hf(&dir, t, seed, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    let cm = conversion(t, model.config.head_dim, seed, vmask);
    let path = dir.join("tomoe.gguf");
    build_tomoe(&model, &cm, QuantType::F32)
        .unwrap()
        .write_atomic(&path)
        .unwrap();
    let rt = Arc::new(Model::load(&path).unwrap());
    assert!(rt.config().head_dim < 32, "{name}: keys as narrow as the test means");
    let tokens = byte_tokens("It is a truth universally acknowledged, that a single man in possession");
    let f32s = CacheTypes::both(KvType::F32);
    let f16s = CacheTypes::both(KvType::F16);
    // Compactly cached values stay f32.
    let got16 = if vmask {
        CacheTypes {
            k: KvType::F16,
            v: KvType::F32,
        }
    } else {
        f16s
    };
    let (b32, d32) = logits(&rt, &tokens, f32s, f32s);
    let (b16, d16) = logits(&rt, &tokens, f16s, got16);
    let (rb, rd) = (max_rel_diff(&b16, &b32), max_rel_diff(&d16, &d32));
    assert!(
        rb <= 1e-2 && rd <= 1e-2,
        "{name}: f16 cache {rb:e} (batch), {rd:e} (decoded) from f32's"
    );
    assert!(
        rb > 0.0 && rd > 0.0,
        "{name}: f16 cache logits equal the f32 cache's: the f16 path did not run"
    );
    eprintln!("{name}: f16 cache vs f32: batch {rb:.2e}, decoded {rd:.2e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tomoe_pruned_keys_f16_cache_is_close_to_f32() {
    check(&LLAMA_GQA, "kv-f16-tomoe-pruned", 21, false);
}

#[test]
fn tomoe_compact_values_f16_cache_is_close_to_f32() {
    check(&LLAMA, "kv-f16-tomoe-compact", 22, true);
}
