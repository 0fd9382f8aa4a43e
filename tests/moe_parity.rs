//! The runtime's sparse execution of ToMoE files against the converter's reference forward, on
//! tiny random models (llama, GQA llama, qwen2): converted models with differing experts, pruned
//! Q/K pairs, a dynamic V mask (with and without the output-mask and pruned-scale switches) and,
//! for odd seeds, expert biases, exported as f32, loaded by `tomoe::engine::Model` and run through `Context`: every position's
//! logits within 1e-3 relative (max |a - b| / max |b|), for a whole batch (the grouped-by-expert
//! path) and token by token (the decode path).
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::Device;
use convert_util::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tomoe::convert::converted::{reference_forward, ConvertedLayer, ConvertedModel, Method, Routing, VMaskHead};
use tomoe::convert::export::build_tomoe;
use tomoe::convert::hf::load_hf;
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::gguf::QuantType;

/// A converted model with random structure: 4 experts of random neuron sets, half the RoPE
/// pairs kept (whole pairs, in the rotate-half layout the converter uses), a V-mask head.
fn random_conversion(t: &Tiny, hd: usize, seed: u64, output_mask: bool, scale_pruned: bool) -> ConvertedModel {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let half = hd / 2;
    let layers = (0..t.layers)
        .map(|_| {
            let masks: Vec<Vec<bool>> = (0..4).map(|_| (0..t.m).map(|_| rng.gen_bool(0.5)).collect()).collect();
            random_layer(&mut rng, t, hd, half, masks, seed)
        })
        .collect();
    ConvertedModel { method: Method::ToMoe, layers, target_p: 0.5, measured_p: 0.5, output_mask, scale_pruned }
}

/// As `random_conversion`, with experts of long runs: expert `k` keeps a window of half the
/// neurons starting at `k·m/8` and every third neuron elsewhere, so each expert's storage rows
/// hold whole groups of 16 (the decode path's interleaved kernels) as well as short runs.
fn run_conversion(t: &Tiny, hd: usize, seed: u64) -> ConvertedModel {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let half = hd / 2;
    let layers = (0..t.layers)
        .map(|_| {
            let masks: Vec<Vec<bool>> = (0..4)
                .map(|k| {
                    (0..t.m).map(|i| (k * t.m / 8..k * t.m / 8 + t.m / 2).contains(&i) || i % 3 == k % 3).collect()
                })
                .collect();
            random_layer(&mut rng, t, hd, half, masks, seed)
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

/// A layer of the given expert masks with random kept RoPE pairs, router and V-mask head.
fn random_layer(
    rng: &mut ChaCha8Rng,
    t: &Tiny,
    hd: usize,
    half: usize,
    masks: Vec<Vec<bool>>,
    seed: u64,
) -> ConvertedLayer {
    let pairs: Vec<usize> = (0..half).filter(|_| rng.gen_bool(0.5)).collect();
    let pairs = if pairs.is_empty() { vec![0] } else { pairs };
    let mut keep: Vec<usize> = pairs.iter().copied().chain(pairs.iter().map(|p| p + half)).collect();
    keep.sort();
    let vmask = VMaskHead {
        w_a: rand_uniform(rng, &[128, t.d], 0.2),
        b_state: rand_uniform(rng, &[128], 0.2),
        ln_w: rand_uniform(rng, &[128], 1.0),
        ln_b: rand_uniform(rng, &[128], 0.2),
        w_dec: rand_uniform(rng, &[hd, 128], 0.3),
        offset: 0.1,
        top_k: if seed.is_multiple_of(2) { hd / 2 } else { 0 },
    };
    let mut layer = ConvertedLayer::from_expert_masks(&masks, t.m, keep, rand_uniform(rng, &[4, t.d], 1.0), Some(vmask));
    // Expert biases (`ffn_down_exps.bias`) in the conversions of odd seeds.
    if !seed.is_multiple_of(2) {
        layer.expert_bias = Some(rand_uniform(rng, &[4, t.d], 0.5));
    }
    layer
}

fn check(t: &Tiny, name: &str, seed: u64, output_mask: bool, scale_pruned: bool) {
    let _ = check_with(
        t,
        name,
        seed,
        |hd| random_conversion(t, hd, seed, output_mask, scale_pruned),
        QuantType::F32,
        Some(1e-3),
    );
}

/// The conversion `convert(head_dim)` of a random tiny model, exported as `ty`: batch and
/// decoded logits within 1e-3 (relative) of each other and, given `tol`, of the reference forward
/// (an f32 export; quantized weights can flip the router's and the V mask's discrete choices).
/// Returns how many expert runs hold a whole group of 16 storage rows, and how many experts
/// decoding reads with their scattered rows gathered into extra groups.
fn check_with(
    t: &Tiny,
    name: &str,
    seed: u64,
    convert: impl Fn(usize) -> ConvertedModel,
    ty: QuantType,
    tol: Option<f32>,
) -> (usize, usize) {
    let dir = scratch(name);
    write_hf(&dir, t, seed, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    let cm = convert(model.config.head_dim);
    let path = dir.join("tomoe.gguf");
    build_tomoe(&model, &cm, ty).unwrap().write_atomic(&path).unwrap();

    let tokens = byte_tokens("It is a truth universally acknowledged, that a single man in possession");
    let (want, stats) = reference_forward(&model, &cm, &tokens, Routing::Learned).unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        stats.expert_counts.iter().any(|c| c.iter().filter(|&&n| n > 0).count() > 1),
        "{name}: one expert took every token; the test would not exercise routing"
    );

    let rt = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{name}: runtime load: {e}")));
    let nv = rt.config().n_vocab;
    // Expert runs that hold a whole group of 16 storage rows (decoded through the interleaved
    // kernels where the CPU has them).
    let whole_group_runs = rt
        .weights()
        .layers
        .iter()
        .filter_map(|l| l.mlp.tomoe())
        .flat_map(|m| m.expert_runs.iter().flatten())
        .filter(|r| r.end / 16 * 16 > r.start.next_multiple_of(16))
        .count();
    let gathered = (0..rt.config().n_layer)
        .filter_map(|il| rt.expert_reads(il))
        .flat_map(|r| &r.order)
        .filter(|o| !o.is_empty())
        .count();
    let mut ctx = Context::new(rt.clone(), ContextParams { n_ctx: 128, n_threads: 2, n_batch: 128 }).unwrap();
    let mut batch = Vec::new();
    ctx.eval_all_logits(&tokens, &mut batch).unwrap();
    let r = max_rel_diff(&batch, &want);
    assert!(tol.is_none_or(|tol| r <= tol), "{name}: batch logits differ from the reference forward by {r:e}");

    let mut one = Context::new(rt, ContextParams { n_ctx: 128, n_threads: 2, n_batch: 1 }).unwrap();
    let (mut worst, mut apart) = (0f32, 0f32);
    for (i, &tok) in tokens.iter().enumerate() {
        let got = one.eval(&[tok]).unwrap();
        worst = worst.max(max_rel_diff(got, &want[i * nv..(i + 1) * nv]));
        apart = apart.max(max_rel_diff(got, &batch[i * nv..(i + 1) * nv]));
    }
    assert!(
        tol.is_none_or(|tol| worst <= tol),
        "{name}: decoded logits differ from the reference forward by {worst:e}"
    );
    assert!(apart <= 1e-3, "{name}: decoded logits differ from the batch's by {apart:e}");
    let counts: Vec<u64> = one.expert_counts().iter().map(|l| l.iter().sum()).collect();
    assert!(counts.iter().all(|&c| c == tokens.len() as u64), "every token routed once per layer: {counts:?}");
    eprintln!(
        "{name}: batch {r:.2e}, decode {worst:.2e}, apart {apart:.2e} (tokens per expert, layer 0: {:?})",
        one.expert_counts()[0]
    );
    std::fs::remove_dir_all(&dir).ok();
    (whole_group_runs, gathered)
}

#[test]
fn tiny_llama_sparse_matches_reference() {
    check(&LLAMA, "moe-llama", 11, false, false);
}

#[test]
fn tiny_gqa_llama_sparse_matches_reference_with_output_mask() {
    check(&LLAMA_GQA, "moe-gqa", 12, true, true);
}

#[test]
fn tiny_qwen2_sparse_matches_reference() {
    check(&QWEN2, "moe-qwen2", 13, false, true);
}

/// Q8_0 weights with experts of long runs: the decode path reads whole groups of 16 rows from the
/// interleaved copies (gate, up and the transposed down projection, where the CPU's kernel set
/// has them), the experts' other rows gathered into extra groups of the copies (or, without the
/// copies, from the file), and agrees with the batch path.
#[test]
fn tiny_llama_q8_0_long_runs_decode_matches_batch() {
    let (runs, gathered) =
        check_with(&LLAMA, "moe-llama-q8", 14, |hd| run_conversion(&LLAMA, hd, 14), QuantType::Q8_0, None);
    assert!(runs > 0, "no expert run holds a whole group of 16 rows: the test would not reach the group kernels");
    if tomoe_quant::kernel_name() == "avx512-vnni" {
        assert!(gathered > 0, "the set interleaves Q8_0 both ways, yet no expert was gathered");
    }
}

/// An expert-bias tensor whose shape does not match the layer's experts is refused at load with
/// the tensor's name, not read out of bounds.
#[test]
fn misshapen_expert_bias_is_a_load_error() {
    let dir = scratch("moe-bad-bias");
    write_hf(&dir, &LLAMA, 15, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    let mut cm = random_conversion(&LLAMA, model.config.head_dim, 15, false, false);
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    cm.layers[1].expert_bias = Some(rand_uniform(&mut rng, &[3, LLAMA.d], 0.5));
    let path = dir.join("tomoe.gguf");
    build_tomoe(&model, &cm, QuantType::F32).unwrap().write_atomic(&path).unwrap();
    let err = Model::load(&path).err().expect("a 3-expert bias in a 4-expert layer must not load").to_string();
    assert!(err.contains("blk.1.ffn_down_exps.bias"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
