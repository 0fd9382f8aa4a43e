//! Training on CUDA: a few steps of a tiny model give the losses of the same steps on the CPU
//! (within 1e-3 relative), the same seed gives the same run twice on the GPU, and a checkpoint
//! moves between the CPU and the GPU both ways. Plus, on the CPU, the time budget that
//! `scripts/device-convert.sh` gives a conversion (`train_until`).
//!
//! The GPU tests need a build with `--features cuda` (scripts/build-cuda.sh) and an NVIDIA GPU.
//! Without the feature they are `ignored`, so a plain run does not count them as passed; in a
//! `cuda` build where no device opens they print `skipped: <reason>` and return, unless
//! `TOMOE_REQUIRE_CUDA=1` (set by the device script), where that is a failure.
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::Device;
use convert_util::*;
use std::path::PathBuf;
use tomoe::convert::data::Calibration;
use tomoe::convert::dense::DenseModel;
use tomoe::convert::hyper::HyperNet;
use tomoe::convert::train::{train, train_until, CheckpointPlan, StepStats, TrainParams};

/// The CUDA device, or None with the reason printed.
fn cuda_or_skip() -> Option<Device> {
    let required = std::env::var("TOMOE_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let reason = if !cfg!(feature = "cuda") {
        "this build has no `cuda` feature".to_string()
    } else {
        match Device::new_cuda(0) {
            Ok(d) => return Some(d),
            Err(e) => format!("no CUDA device could be opened: {e}"),
        }
    };
    assert!(!required, "TOMOE_REQUIRE_CUDA=1 but {reason}");
    eprintln!("skipped: {reason}");
    None
}

/// Calibration text: an Austen novel from the repository (tests run from its root too, as on the
/// GPU machine, where the test binary is carried without the source tree's absolute path).
fn text() -> String {
    let rel = "tests/data/austen/emma.txt";
    let path = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel),
        PathBuf::from(rel),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| panic!("{rel} not found (run from the repository root)"));
    std::fs::read_to_string(path)
        .unwrap()
        .chars()
        .take(30_000)
        .collect()
}

/// The same tiny model loaded onto `dev`.
fn tiny(name: &str, dev: &Device) -> (DenseModel, Calibration) {
    tiny_training(name, dev, text())
}

fn params(steps: u64) -> TrainParams {
    tiny_train_params(steps)
}

/// Trains and returns the hypernetwork with each step's (index, statistics).
fn run(
    model: &DenseModel,
    calib: &Calibration,
    tp: &TrainParams,
    plan: &CheckpointPlan,
) -> (HyperNet, Vec<(u64, StepStats)>) {
    let mut log = Vec::new();
    let hn = train(model, calib, tp, plan, &mut |s, st| log.push((s, *st))).unwrap();
    (hn, log)
}

fn assert_losses_agree(what: &str, a: &[(u64, StepStats)], b: &[(u64, StepStats)]) {
    assert_eq!(
        a.iter().map(|x| x.0).collect::<Vec<_>>(),
        b.iter().map(|x| x.0).collect::<Vec<_>>(),
        "{what}: different steps"
    );
    for ((step, x), (_, y)) in a.iter().zip(b) {
        let rel = (x.loss - y.loss).abs() / x.loss.abs().max(1e-6);
        eprintln!(
            "{what}: step {step}: loss {} vs {} (rel {rel:.2e})",
            x.loss, y.loss
        );
        assert!(
            rel <= 1e-3,
            "{what}: step {step}: loss {} vs {} (relative difference {rel:.2e} > 1e-3)",
            x.loss,
            y.loss
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs `--features cuda` and an NVIDIA GPU"
)]
fn training_steps_agree_between_cpu_and_cuda() {
    let Some(gpu) = cuda_or_skip() else { return };
    let tp = params(5);
    let none = CheckpointPlan::default();
    let (model, calib) = tiny("agree-cpu", &Device::Cpu);
    let (_, cpu) = run(&model, &calib, &tp, &none);
    let (model, calib) = tiny("agree-gpu", &gpu);
    let (hn, gpu_log) = run(&model, &calib, &tp, &none);
    assert!(
        hn.vars()[0].1.device().is_cuda(),
        "the hypernetwork was not trained on the GPU"
    );
    assert_losses_agree("cpu vs cuda", &cpu, &gpu_log);
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs `--features cuda` and an NVIDIA GPU"
)]
fn the_same_seed_gives_the_same_run_on_cuda() {
    let Some(gpu) = cuda_or_skip() else { return };
    let (model, calib) = tiny("repro-gpu", &gpu);
    let none = CheckpointPlan::default();
    let (_, a) = run(&model, &calib, &params(4), &none);
    let (_, b) = run(&model, &calib, &params(4), &none);
    let bits = |l: &[(u64, StepStats)]| l.iter().map(|x| x.1.loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b), "same seed, different losses on CUDA");
}

/// A checkpoint written on one device resumes on the other: 3 steps, checkpoint, 3 more there;
/// the resumed steps agree with a straight run on the first device.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs `--features cuda` and an NVIDIA GPU"
)]
fn a_checkpoint_moves_between_cpu_and_cuda() {
    let Some(gpu) = cuda_or_skip() else { return };
    let none = CheckpointPlan::default();
    for (from, to, name) in [
        (Device::Cpu, gpu.clone(), "cpu-to-gpu"),
        (gpu.clone(), Device::Cpu, "gpu-to-cpu"),
    ] {
        let dir = scratch(name);
        let plan = CheckpointPlan {
            path: Some(dir.join("ck.safetensors")),
            every: 3,
            resume: true,
        };
        let (model, calib) = tiny(&format!("{name}-a"), &from);
        let (_, straight) = run(&model, &calib, &params(6), &none);
        run(&model, &calib, &params(3), &plan);
        let (model, calib) = tiny(&format!("{name}-b"), &to);
        let (hn, resumed) = run(&model, &calib, &params(6), &plan);
        assert_eq!(
            hn.vars()[0].1.device().is_cuda(),
            to.is_cuda(),
            "{name}: resumed on the wrong device"
        );
        assert_losses_agree(name, &straight[3..], &resumed);
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// `train_until` with a deadline already past runs one step, checkpoints it, and a resume without
/// a deadline finishes the run exactly as an uninterrupted one (CPU).
#[test]
fn a_time_budget_stops_training_after_a_step_and_checkpoints() {
    let (model, calib) = tiny("budget", &Device::Cpu);
    let dir = scratch("budget-ck");
    let plan = CheckpointPlan {
        path: Some(dir.join("ck.safetensors")),
        every: 50,
        resume: true,
    };
    let past = Some(std::time::Instant::now());
    let mut seen = Vec::new();
    let (_, done) = train_until(&model, &calib, &params(4), &plan, past, &mut |s, _| {
        seen.push(s)
    })
    .unwrap();
    assert_eq!(
        (done, seen.clone()),
        (1, vec![0]),
        "one step, then the budget stops it"
    );
    assert!(dir.join("ck.json").is_file(), "no checkpoint at the stop");
    let (hn, done) = train_until(&model, &calib, &params(4), &plan, None, &mut |s, _| {
        seen.push(s)
    })
    .unwrap();
    assert_eq!(
        (done, seen),
        (4, vec![0, 1, 2, 3]),
        "the resume must continue at step 1"
    );
    let (straight, _) = run(&model, &calib, &params(4), &CheckpointPlan::default());
    let bits = |h: &HyperNet| {
        h.snapshot()
            .into_iter()
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .map(f32::to_bits)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bits(&hn),
        bits(&straight),
        "stopped and resumed differs from straight"
    );
    std::fs::remove_dir_all(&dir).ok();
}
