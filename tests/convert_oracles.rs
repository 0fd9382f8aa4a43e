//! The routing oracles on a tiny random llama: each selection keeps what it says (a token's k
//! largest contributions, the gate's, whole groups, the best mask), the best-expert routing picks
//! the expert nearest the dense MLP output, and the clusterings group what fires together.
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::{Device, Tensor};
use convert_util::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tomoe::convert::converted::{all_on, reference_forward, ConvertedLayer, Routing};
use tomoe::convert::dense::DenseModel;
use tomoe::convert::forward::{forward, MaskSource, NoMasks};
use tomoe::convert::hf::load_hf;
use tomoe::convert::oracles::{best_experts, expert_biases, neuron_groups, token_experts, OracleMasks, Selection};

fn tiny(name: &str) -> DenseModel {
    let dir = scratch(name);
    write_hf(&dir, &LLAMA, 5, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    model
}

/// `[T][m]` neuron outputs `silu(g·h)·(u·h)` and `[m]` down-column norms, in plain loops.
fn neuron_outputs(model: &DenseModel, l: usize, h2: &Tensor) -> (Vec<Vec<f32>>, Vec<f32>) {
    let (acts, _, norms) = outputs_and_gates(model, l, h2);
    (acts, norms)
}

/// Also the gate-only scores `|silu(g·h)|·‖up_i‖` (before the down norm).
fn outputs_and_gates(model: &DenseModel, l: usize, h2: &Tensor) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>) {
    let lw = &model.layers[l];
    let (g, u, dn): (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<Vec<f32>>) = (
        lw.w_gate.to_vec2().unwrap(),
        lw.w_up.to_vec2().unwrap(),
        lw.w_down.to_vec2().unwrap(),
    );
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let silu = |x: f32| x / (1.0 + (-x).exp());
    let hs = h2.to_vec2::<f32>().unwrap();
    let acts = hs.iter().map(|h| (0..g.len()).map(|i| silu(dot(&g[i], h)) * dot(&u[i], h)).collect()).collect();
    let gates = hs
        .iter()
        .map(|h| (0..g.len()).map(|i| silu(dot(&g[i], h)).abs() * dot(&u[i], &u[i]).sqrt()).collect())
        .collect();
    let norms = (0..g.len()).map(|i| dn.iter().map(|row| row[i] * row[i]).sum::<f32>().sqrt()).collect();
    (acts, gates, norms)
}

fn mask_of(model: &DenseModel, k: usize, sel: &Selection, l: usize, h2: &Tensor) -> Vec<Vec<f32>> {
    OracleMasks::new(model, k, sel).unwrap().mlp_mask(l, h2).unwrap().unwrap().to_vec2().unwrap()
}

/// Every kept score is at least every dropped one.
fn keeps_the_largest(row: &[f32], score: impl Fn(usize) -> f32) -> bool {
    let m = row.len();
    let kept_min = (0..m).filter(|&i| row[i] == 1.0).map(&score).fold(f32::INFINITY, f32::min);
    let dropped_max = (0..m).filter(|&i| row[i] == 0.0).map(&score).fold(0f32, f32::max);
    kept_min >= dropped_max * (1.0 - 1e-5)
}

#[test]
fn per_token_selections_keep_what_they_say() {
    let model = tiny("oracle-topk");
    let m = model.config.m;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h2 = rand_uniform(&mut rng, &[9, model.config.d], 1.0);
    for (l, k) in [(0, 1), (1, 37), (0, m - 1)] {
        let (acts, gates, norms) = outputs_and_gates(&model, l, &h2);
        let neurons = mask_of(&model, k, &Selection::Neurons, l, &h2);
        let gate = mask_of(&model, k, &Selection::GateOnly, l, &h2);
        for t in 0..9 {
            for row in [&neurons[t], &gate[t]] {
                assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), k, "layer {l} token {t}");
                assert!(row.iter().all(|&v| v == 0.0 || v == 1.0));
            }
            assert!(keeps_the_largest(&neurons[t], |i| acts[t][i].abs() * norms[i]), "k {k} token {t}");
            assert!(keeps_the_largest(&gate[t], |i| gates[t][i] * norms[i]), "gate k {k} token {t}");
        }
        if k > 1 && k < m - 1 {
            assert_ne!(neurons, gate, "the gate alone picked the same neurons: the test cannot tell them apart");
        }
    }

    // Groups of 4 under a budget of 10: the two groups of most energy, whole.
    let groups: Vec<Vec<usize>> = (0..m / 4).map(|j| (4 * j..4 * j + 4).rev().collect()).collect();
    let sel = Selection::Groups(vec![groups.clone(); 2]);
    let (acts, norms) = neuron_outputs(&model, 1, &h2);
    for (t, row) in mask_of(&model, 10, &sel, 1, &h2).iter().enumerate() {
        let e: Vec<f32> = groups.iter().map(|g| g.iter().map(|&i| (acts[t][i].abs() * norms[i]).powi(2)).sum()).collect();
        let mut order: Vec<usize> = (0..e.len()).collect();
        order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
        let want: Vec<f32> = (0..m).map(|i| (i / 4 == order[0] || i / 4 == order[1]) as u8 as f32).collect();
        assert_eq!(row, &want, "token {t}");
    }
    // Best of three masks: the one keeping the most energy.
    let masks: Vec<Vec<usize>> = vec![(0..m / 2).collect(), (m / 2..m).collect(), (0..m).step_by(3).collect()];
    let sel = Selection::BestOf(vec![masks.clone(); 2]);
    let mut picked = [0usize; 3];
    for (t, row) in mask_of(&model, 0, &sel, 1, &h2).iter().enumerate() {
        let e: Vec<f32> = masks.iter().map(|s| s.iter().map(|&i| (acts[t][i].abs() * norms[i]).powi(2)).sum()).collect();
        let best = (0..3).max_by(|&a, &b| e[a].total_cmp(&e[b])).unwrap();
        picked[best] += 1;
        let want: Vec<f32> = (0..m).map(|i| masks[best].contains(&i) as u8 as f32).collect();
        assert_eq!(row, &want, "token {t}");
    }
    assert!(picked.iter().filter(|&&n| n > 0).count() > 1, "one mask always wins ({picked:?})");

    // Keeping every neuron is the dense model.
    let tokens = byte_tokens("It is a truth universally acknowledged");
    let dense = forward(&model, &tokens, &mut NoMasks).unwrap();
    let all = forward(&model, &tokens, &mut OracleMasks::new(&model, m, &Selection::Neurons).unwrap()).unwrap();
    assert!(max_abs_diff(&dense, &all) < 1e-5);
    let some = forward(&model, &tokens, &mut OracleMasks::new(&model, m / 4, &Selection::Neurons).unwrap()).unwrap();
    assert!(max_abs_diff(&dense, &some) > 1e-3, "dropping 3/4 of the neurons changed nothing");
}

/// Contributions [N, m] in which neuron i and neuron i + m/2 fire together on one set of tokens
/// out of four: a pairing the neuron clustering must find; tokens fall in two patterns that the
/// token clustering must separate.
#[test]
fn clusterings_group_what_fires_together() {
    let (n, m) = (60, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut rows = vec![0f32; n * m];
    for t in 0..n {
        for i in 0..m / 2 {
            let on = (t + i) % 4 == 0;
            let v = if on { 1.0 + rng.gen_range(0.0..0.5f32) } else { rng.gen_range(0.0..0.05f32) };
            rows[t * m + i] = v;
            rows[t * m + i + m / 2] = v * 0.7;
        }
    }
    let contrib = Tensor::from_vec(rows, (n, m), &Device::Cpu).unwrap();
    let mut groups = neuron_groups(&contrib, 2).unwrap();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    assert_eq!(groups, vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);

    // Tokens 0..30 use neurons 0..4, tokens 30..60 neurons 4..8.
    let rows: Vec<f32> = (0..n)
        .flat_map(|t| (0..m).map(move |i| if (t < 30) == (i < 4) { 1.0 + (t * i % 7) as f32 * 0.1 } else { 0.01 }))
        .collect();
    let contrib = Tensor::from_vec(rows, (n, m), &Device::Cpu).unwrap();
    let mut experts = token_experts(&contrib, 2, 4).unwrap();
    for e in &mut experts {
        e.sort();
    }
    experts.sort();
    assert_eq!(experts, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
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

/// An expert's bias is the mean, over the tokens labelled with it, of what the neurons it drops
/// put out (`Σ_i∉e down[:, i] · act_i`), in plain loops; an expert with no token gets zeros.
#[test]
fn expert_biases_are_the_mean_output_of_the_dropped_neurons() {
    let model = tiny("oracle-bias");
    let (m, d) = (model.config.m, model.config.d);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let h2 = rand_uniform(&mut rng, &[10, d], 1.0);
    let experts: Vec<Vec<usize>> = vec![(0..m / 2).collect(), (m / 4..m).step_by(2).collect(), vec![1, 2]];
    let labels = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1];
    let got: Vec<Vec<f32>> =
        expert_biases(false, &model.layers[1], &h2, &experts, &labels).unwrap().to_vec2().unwrap();
    let (acts, _) = neuron_outputs(&model, 1, &h2);
    let down: Vec<Vec<f32>> = model.layers[1].w_down.to_vec2().unwrap();
    for (e, set) in experts.iter().enumerate() {
        let tokens: Vec<usize> = (0..labels.len()).filter(|&t| labels[t] == e).collect();
        for o in 0..d {
            let mut want = 0f32;
            for &t in &tokens {
                want += (0..m).filter(|i| !set.contains(i)).map(|i| down[o][i] * acts[t][i]).sum::<f32>();
            }
            want /= tokens.len().max(1) as f32;
            assert!((got[e][o] - want).abs() <= 1e-4 * (1.0 + want.abs()), "expert {e} output {o}: {} vs {want}", got[e][o]);
        }
    }
    assert!(got[2].iter().all(|&v| v == 0.0), "an expert no token goes to has no bias");
    assert!(got[0].iter().any(|&v| v.abs() > 1e-3), "the test would not see a missing bias");
}
