//! Training the hypernetwork on tiny random models: reproducible to the bit, resumable to the bit,
//! pulls the active fraction to p, and the calibrated deterministic export lands within ±0.02 of p.
#![cfg(feature = "convert")]

mod common;
mod convert_util;

use candle_core::Device;
use convert_util::*;
use tomoe::convert::converted::{calibrate, mean_pairwise_jaccard, measure_active};
use tomoe::convert::data::Calibration;
use tomoe::convert::dense::DenseModel;
use tomoe::convert::hyper::HyperNet;
use tomoe::convert::train::{train, CheckpointPlan, MaskInit, StepStats, TrainParams};
use tomoe::convert::ConvertError;

fn tiny(name: &str) -> (DenseModel, Calibration) {
    tiny_training(name, &Device::Cpu, common::austen("emma.txt").chars().take(30_000).collect())
}

fn params(steps: u64) -> TrainParams {
    tiny_train_params(steps)
}

/// Trains without checkpoints and returns the hypernetwork with every step's statistics.
fn train_logged(
    model: &DenseModel,
    calib: &Calibration,
    tp: &TrainParams,
) -> (HyperNet, Vec<StepStats>) {
    let mut log = Vec::new();
    let hn = train(model, calib, tp, &CheckpointPlan::default(), &mut |_, s| {
        log.push(*s)
    })
    .unwrap();
    (hn, log)
}

fn values(hn: &HyperNet) -> Vec<(String, Vec<u32>)> {
    hn.snapshot()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn training_is_bit_reproducible_and_resumable() {
    let (model, calib) = tiny("repro");
    let none = CheckpointPlan::default();
    let a = train(&model, &calib, &params(6), &none, &mut |_, _| {}).unwrap();
    let b = train(&model, &calib, &params(6), &none, &mut |_, _| {}).unwrap();
    assert_eq!(values(&a), values(&b), "same seed, different parameters");
    let other = train(
        &model,
        &calib,
        &TrainParams {
            seed: 12,
            ..params(6)
        },
        &none,
        &mut |_, _| {},
    )
    .unwrap();
    assert_ne!(values(&a), values(&other), "the seed has no effect");

    // Interrupted after 3 steps (checkpoint), then resumed to 6: identical to the straight run.
    let dir = scratch("resume");
    let plan = CheckpointPlan {
        path: Some(dir.join("ck.safetensors")),
        every: 3,
        resume: true,
    };
    let mut seen = Vec::new();
    train(&model, &calib, &params(3), &plan, &mut |s, _| seen.push(s)).unwrap();
    let resumed = train(&model, &calib, &params(6), &plan, &mut |s, _| seen.push(s)).unwrap();
    assert_eq!(
        seen,
        vec![0, 1, 2, 3, 4, 5],
        "resume must continue at step 3"
    );
    assert_eq!(
        values(&a),
        values(&resumed),
        "resumed run differs from the uninterrupted one"
    );

    // A checkpoint of other settings is refused.
    let bad = train(
        &model,
        &calib,
        &TrainParams {
            p: 0.6,
            ..params(6)
        },
        &plan,
        &mut |_, _| {},
    );
    assert!(
        matches!(bad, Err(ConvertError::Checkpoint { .. })),
        "{:?}",
        bad.err()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn training_reaches_p_and_calibrated_export_hits_it() {
    let (model, calib) = tiny("reach");
    let tp = TrainParams {
        steps: 60,
        init: MaskInit::AllOn,
        ..params(60)
    };
    let (hn, log) = train_logged(&model, &calib, &tp);
    assert!(log.iter().all(|s| s.loss.is_finite()));
    let first = log[0].ratio as f64;
    let last = log
        .iter()
        .rev()
        .take(5)
        .map(|s| s.ratio as f64)
        .sum::<f64>()
        / 5.0;
    assert!(
        (first - tp.p).abs() > 0.2,
        "the masks start near dense (ratio {first})"
    );
    assert!(
        (last - tp.p).abs() < 0.1,
        "sampled ratio {last} did not approach p = {}",
        tp.p
    );

    let windows = calib.held_out_windows(64, 4);
    let (cm, _shift) = calibrate(&model, &hn, tp.p, false, &windows, 30).unwrap();
    assert!(
        (cm.measured_p - tp.p).abs() <= 0.02,
        "calibrated active fraction {} vs p {}",
        cm.measured_p,
        tp.p
    );
    let again = measure_active(&model, &cm, &windows).unwrap();
    assert_eq!(again, cm.measured_p);
    for l in &cm.layers {
        let j = mean_pairwise_jaccard(l);
        assert!((0.0..=1.0).contains(&j));
        assert!(l
            .experts
            .iter()
            .all(|e| e.iter().all(|&r| r < l.union.len())));
    }
}

#[test]
fn importance_init_starts_at_the_budget_with_attention_on() {
    let (model, calib) = tiny("init");
    let tp = TrainParams {
        init: MaskInit::Importance,
        ..params(1)
    };
    let (hn, log) = train_logged(&model, &calib, &tp);
    // All-on masks start near 1 (the test above); here the sampled ratio starts near p.
    assert!(
        (log[0].ratio as f64 - tp.p).abs() < 0.06,
        "first sampled ratio {}",
        log[0].ratio
    );
    let cm = tomoe::convert::converted::decode(&model, &hn, 0.0, tp.p, false).unwrap();
    let windows = calib.held_out_windows(64, 4);
    let kept = |l: &tomoe::convert::converted::ConvertedLayer| l.qk_keep.len();
    assert!(
        cm.layers.iter().all(|l| kept(l) == model.config.head_dim),
        "a Q/K dim starts off"
    );
    let p = measure_active(&model, &cm, &windows).unwrap();
    assert!(
        (p - tp.p).abs() < 0.06,
        "deterministic active fraction {p} vs p {}",
        tp.p
    );
}

#[test]
fn bad_training_input_is_refused() {
    let (model, calib) = tiny("badtrain");
    for p in [0.0, -0.1, 1.5, f64::NAN] {
        let r = train(
            &model,
            &calib,
            &TrainParams { p, ..params(1) },
            &CheckpointPlan::default(),
            &mut |_, _| {},
        );
        assert!(
            matches!(r, Err(ConvertError::InvalidArg(_))),
            "p = {p}: {:?}",
            r.err()
        );
    }
    let empty = Calibration::new(&["   \n".to_string()], &byte_tokens, 64, 0.1);
    assert!(matches!(empty, Err(ConvertError::Data(_))));
    let short = Calibration::new(&["too short".to_string()], &byte_tokens, 64, 0.1);
    assert!(matches!(short, Err(ConvertError::Data(_))));
}

/// Every trainable part gets a gradient: the routers (which start at zero under importance
/// init, so they move only through the distillation and balance gradients), the MLP and Q/K mask
/// decoders and the V-mask head.
#[test]
fn every_hypernetwork_part_is_trained() {
    let (model, calib) = tiny("grads");
    let tp = TrainParams {
        init: MaskInit::Importance,
        ..params(3)
    };
    let start = HyperNet::new(&model.config, tp.experts, tp.seed, &Device::Cpu).unwrap();
    let before = values(&start);
    let (hn, _) = train_logged(&model, &calib, &tp);
    let after = values(&hn);
    for name in [
        "mlp.0.router",
        "mlp.1.router",
        "attn.0.qk.w",
        "mlp.0.dec.w",
        "attn.0.va.w",
    ] {
        let a = &after.iter().find(|(n, _)| n == name).unwrap().1;
        let b = &before.iter().find(|(n, _)| n == name).unwrap().1;
        assert_ne!(a, b, "{name} did not change in training");
    }
    let router = &after.iter().find(|(n, _)| n == "mlp.0.router").unwrap().1;
    assert!(
        router.iter().any(|&bits| f32::from_bits(bits) != 0.0),
        "the router stayed at zero"
    );
}
