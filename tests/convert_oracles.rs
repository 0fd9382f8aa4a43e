//! The routing oracles on a tiny random llama: the per-token top-k mask keeps exactly each token's
//! k largest contributions, and the best-expert routing picks the expert nearest the dense MLP output.
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::{Device, Tensor};
use convert_util::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tomoe::convert::converted::{all_on, reference_forward, ConvertedLayer, Routing};
use tomoe::convert::dense::DenseModel;
use tomoe::convert::forward::{forward, MaskSource, NoMasks};
use tomoe::convert::hf::load_hf;
use tomoe::convert::oracles::{best_experts, PerTokenTopK};

fn tiny(name: &str) -> DenseModel {
    let dir = scratch(name);
    write_hf(&dir, &LLAMA, 5, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    model
}

/// `[T][m]` neuron outputs `silu(g·h)·(u·h)` and `[m]` down-column norms, in plain loops.
fn neuron_outputs(model: &DenseModel, l: usize, h2: &Tensor) -> (Vec<Vec<f32>>, Vec<f32>) {
    let lw = &model.layers[l];
    let (g, u, dn): (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<Vec<f32>>) = (
        lw.w_gate.to_vec2().unwrap(),
        lw.w_up.to_vec2().unwrap(),
        lw.w_down.to_vec2().unwrap(),
    );
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let acts = h2
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|h| {
            (0..g.len())
                .map(|i| {
                    let gi = dot(&g[i], h);
                    gi / (1.0 + (-gi).exp()) * dot(&u[i], h)
                })
                .collect()
        })
        .collect();
    let norms = (0..g.len()).map(|i| dn.iter().map(|row| row[i] * row[i]).sum::<f32>().sqrt()).collect();
    (acts, norms)
}

#[test]
fn per_token_top_k_keeps_each_tokens_largest_contributions() {
    let model = tiny("oracle-topk");
    let m = model.config.m;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h2 = rand_uniform(&mut rng, &[9, model.config.d], 1.0);
    for (l, k) in [(0, 1), (1, 37), (0, m - 1)] {
        let mask: Vec<Vec<f32>> =
            PerTokenTopK::new(&model, k).unwrap().mlp_mask(l, &h2).unwrap().unwrap().to_vec2().unwrap();
        let (acts, norms) = neuron_outputs(&model, l, &h2);
        for (t, row) in mask.iter().enumerate() {
            assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), k, "layer {l} token {t}");
            assert!(row.iter().all(|&v| v == 0.0 || v == 1.0));
            let score = |i: usize| acts[t][i].abs() * norms[i];
            let kept_min = (0..m).filter(|&i| row[i] == 1.0).map(score).fold(f32::INFINITY, f32::min);
            let dropped_max = (0..m).filter(|&i| row[i] == 0.0).map(score).fold(0f32, f32::max);
            assert!(kept_min >= dropped_max * (1.0 - 1e-5), "k {k}: kept {kept_min} < dropped {dropped_max}");
        }
    }
    // Keeping every neuron is the dense model.
    let tokens = byte_tokens("It is a truth universally acknowledged");
    let dense = forward(&model, &tokens, &mut NoMasks).unwrap();
    let all = forward(&model, &tokens, &mut PerTokenTopK::new(&model, m).unwrap()).unwrap();
    assert!(max_abs_diff(&dense, &all) < 1e-5);
    let some = forward(&model, &tokens, &mut PerTokenTopK::new(&model, m / 4).unwrap()).unwrap();
    assert!(max_abs_diff(&dense, &some) > 1e-3, "dropping 3/4 of the neurons changed nothing");
}

#[test]
fn best_expert_routing_picks_the_nearest_expert() {
    let model = tiny("oracle-best");
    let (m, hd) = (model.config.m, model.config.head_dim);
    let tokens = byte_tokens("It is a truth universally acknowledged");
    let dense = forward(&model, &tokens, &mut NoMasks).unwrap();
    // Experts: none, the even neurons, all of them. Only "all" reproduces the dense output, and
    // the router (zeros: argmax takes expert 0, the empty one) would never pick it.
    let masks = [vec![false; m], (0..m).map(|i| i % 2 == 0).collect(), vec![true; m]];
    let mut cm = all_on(&model, 3).unwrap();
    for l in &mut cm.layers {
        let router = Tensor::zeros((3, model.config.d), candle_core::DType::F32, &Device::Cpu).unwrap();
        *l = ConvertedLayer::from_expert_masks(&masks, m, (0..hd).collect(), router, None);
    }
    let (best, stats) = reference_forward(&model, &cm, &tokens, Routing::BestExpert).unwrap();
    assert!(max_abs_diff(&dense, &best) < 1e-4);
    assert!(stats.expert_counts.iter().all(|c| c == &vec![0, 0, tokens.len()]), "{:?}", stats.expert_counts);
    let (learned, _) = reference_forward(&model, &cm, &tokens, Routing::Learned).unwrap();
    assert!(max_abs_diff(&dense, &learned) > 1e-3);

    // Experts of even and odd neurons: the pick is the one with the smaller distance, computed here
    // in plain loops.
    let halves = [(0..m).map(|i| i % 2 == 0).collect(), (0..m).map(|i| i % 2 == 1).collect::<Vec<bool>>()];
    let router = Tensor::zeros((2, model.config.d), candle_core::DType::F32, &Device::Cpu).unwrap();
    let layer = ConvertedLayer::from_expert_masks(&halves, m, (0..hd).collect(), router, None);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let h2 = rand_uniform(&mut rng, &[16, model.config.d], 1.0);
    let got = best_experts(false, &model.layers[1], &layer, &h2).unwrap();
    let (acts, _) = neuron_outputs(&model, 1, &h2);
    let down: Vec<Vec<f32>> = model.layers[1].w_down.to_vec2().unwrap();
    let mut picks = [0usize; 2];
    for (t, act) in acts.iter().enumerate() {
        // The error of keeping one half is the other half's output.
        let err = |parity: usize| -> f32 {
            down.iter()
                .map(|row| (0..m).filter(|i| i % 2 != parity).map(|i| row[i] * act[i]).sum::<f32>().powi(2))
                .sum()
        };
        let want = if err(0) <= err(1) { 0 } else { 1 };
        assert_eq!(got[t], want, "token {t}: errors {} {}", err(0), err(1));
        picks[want] += 1;
    }
    assert!(picks[0] > 0 && picks[1] > 0, "one half always wins ({picks:?}): the test proves little");
}
