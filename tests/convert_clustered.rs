//! The clustered conversion on a tiny random llama: the router fit learns separable labels, every
//! expert has the budget's k neurons, the active fraction is the target, and the fitted routers
//! keep the converted model closer to the dense one than random routing does.
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::Device;
use convert_util::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tomoe::convert::baselines::mlp_budget;
use tomoe::convert::clustered::{clustered, fit_router};
use tomoe::convert::converted::{reference_forward, Routing};
use tomoe::convert::forward::{forward, NoMasks};
use tomoe::convert::hf::load_hf;

#[test]
fn the_router_fit_learns_separable_labels() {
    // Three classes, each the sign pattern of one coordinate pair; no bias needed.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = rand_uniform(&mut rng, &[300, 6], 1.0);
    let rows: Vec<Vec<f32>> = x.to_vec2().unwrap();
    let labels: Vec<usize> = rows
        .iter()
        .map(|r| (0..3).max_by(|&a, &b| (r[2 * a] - r[2 * a + 1]).total_cmp(&(r[2 * b] - r[2 * b + 1]))).unwrap())
        .collect();
    let (w, agree) = fit_router(&x, &labels, 3).unwrap();
    assert_eq!(w.dims(), &[3, 6]);
    assert!(agree > 0.97, "the fit labels {agree} of the tokens right");
    let got: Vec<u32> = x.matmul(&w.t().unwrap()).unwrap().argmax(1).unwrap().to_vec1().unwrap();
    let right = got.iter().zip(&labels).filter(|(&a, &b)| a as usize == b).count() as f64 / 300.0;
    assert!((right - agree).abs() < 1e-12);
    assert!(fit_router(&x, &labels[1..], 3).is_err(), "a label short");
    assert!(fit_router(&x, &labels, 2).is_err(), "labels beyond the experts");
}

#[test]
fn clustered_experts_keep_the_budget_and_routing_matters() {
    let dir = scratch("clustered");
    write_hf(&dir, &LLAMA, 5, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let text = byte_tokens(&"It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ".repeat(8));
    let windows: Vec<&[u32]> = text.chunks(64).take(12).collect();
    let (calib, held) = windows.split_at(10);
    let cm = clustered(&model, 0.6, 4, calib, held).unwrap();
    let k = mlp_budget(&model, 0.6).unwrap();
    for l in &cm.layers {
        assert_eq!(l.experts.len(), 4);
        assert!(l.experts.iter().all(|e| e.len() == k), "experts of {:?} rows, budget {k}", l.experts.iter().map(Vec::len).collect::<Vec<_>>());
        assert_eq!(l.qk_keep.len(), model.config.head_dim);
    }
    assert!((cm.measured_p - 0.6).abs() < 0.01, "active fraction {}", cm.measured_p);

    let tokens = &text[..96];
    let dense = forward(&model, tokens, &mut NoMasks).unwrap();
    let dist = |r: Routing| -> f32 {
        let (l, _) = reference_forward(&model, &cm, tokens, r).unwrap();
        (l - &dense).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    let learned = dist(Routing::Learned);
    let random: Vec<f32> = (0..3).map(|s| dist(Routing::Random(s))).collect();
    assert!(random.iter().all(|&r| learned < r), "learned routing {learned}, random {random:?}");
}
