//! Gemma 3 270M (Q4_K_M) through the converter. The converter's dense candle forward (scaled
//! embeddings, Q/K norms, post-norms, sliding-window layers with their own RoPE base, GeGLU, tied
//! output) gives the runtime's logits, on the model dequantized to F32 and on the original
//! file. A short ToMoE conversion (a few training steps, calibrated, the sliding window shrunk so
//! that it matters on a short text) exported as f32 runs sparsely in the runtime with the logits
//! of the converter's reference forward, in a batch and decoded token by token.
#![cfg(feature = "convert")]

mod common;
mod convert_util;

use candle_core::Device;
use common::{model_path, RealModel};
use convert_util::{config_json, max_rel_diff, scratch, write_hf, LLAMA};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tomoe::convert::converted::{calibrate, reference_forward, Routing};
use tomoe::convert::data::Calibration;
use tomoe::convert::dense::Arch;
use tomoe::convert::export::build_tomoe;
use tomoe::convert::forward::{forward, NoMasks};
use tomoe::convert::gguf_in::load_gguf;
use tomoe::convert::hf::load_hf;
use tomoe::convert::train::{train, CheckpointPlan, TrainParams};
use tomoe::convert::ConvertError;
use tomoe::engine::{Context, ContextParams, LoadOptions, Model};
use tomoe::gguf::{GgufFile, GgufWriter, QuantType};

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// The two model tests hold a few GB each: one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The runtime's logits of every position; `copies`: the decoding copies of the weights (only
/// decoding reads them: without, a batch needs no more memory than the mapped file).
fn runtime_logits(path: &Path, tokens: &[u32], n_batch: usize, copies: bool) -> Vec<f32> {
    let opts = LoadOptions {
        copies,
        ..LoadOptions::default()
    };
    let rt = Arc::new(Model::load_with(path, &opts).unwrap());
    let mut ctx = Context::new(
        rt,
        ContextParams {
            n_ctx: 256,
            n_threads: 2,
            n_batch,
        },
    )
    .unwrap();
    let mut out = Vec::new();
    if n_batch == 1 {
        for &t in tokens {
            out.extend_from_slice(ctx.eval(&[t]).unwrap());
        }
    } else {
        ctx.eval_all_logits(tokens, &mut out).unwrap();
    }
    out
}

/// A copy of a GGUF with every tensor dequantized to F32 (same metadata).
fn dequantized_copy(src: &Path, dst: &Path) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    for info in f.tensors() {
        let t = f.tensor(&info.name).unwrap();
        let cols = info.dims[0] as usize;
        let rb = info.ty.row_bytes(cols).unwrap();
        let mut out = vec![0f32; t.data.len() / rb * cols];
        for (s, d) in t.data.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
            tomoe_quant::dequantize_row(info.ty, s, d);
        }
        let bytes = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor(info.name.clone(), info.dims.clone(), QuantType::F32, bytes)
            .unwrap();
    }
    w.write_atomic(dst).unwrap();
}

/// The largest |a - b| over the largest |b| of each position's logits, the worst position.
fn worst_row_rel(a: &[f32], b: &[f32], nv: usize) -> f32 {
    a.chunks(nv)
        .zip(b.chunks(nv))
        .map(|(x, y)| max_rel_diff(x, y))
        .fold(0f32, f32::max)
}

fn argmaxes(x: &[f32], nv: usize) -> Vec<usize> {
    x.chunks(nv)
        .map(|r| (0..nv).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap_or(0))
        .collect()
}

#[test]
fn gemma3_dense_forward_matches_the_runtime() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let path = model_path(RealModel::Gemma3);
    let dense = load_gguf(&path, &Device::Cpu).unwrap();
    let c = &dense.config;
    assert_eq!(c.arch, Arch::Gemma3);
    let g = c.gemma3.as_ref().expect("gemma3 parameters");
    assert!(c.tied_embeddings && dense.layers[0].q_norm.is_some() && dense.layers[0].post_ffn_norm.is_some());
    assert_eq!(
        g.swa_layers.iter().filter(|&&b| !b).count(),
        c.n_layers / 6,
        "every 6th layer global"
    );
    let rt = Model::load(&path).unwrap();
    let tokens = rt.tokenizer().encode(common::PARITY_PROMPTS[1], true, false);
    let nv = c.vocab;
    let ours: Vec<f32> = forward(&dense, &tokens, &mut NoMasks)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    drop(dense); // the F32 copy below takes as much memory again

    let f32_path = tmp("gemma3-270m-dequantized-f32.gguf");
    dequantized_copy(&path, &f32_path);
    let theirs = runtime_logits(&f32_path, &tokens, 64, false);
    std::fs::remove_file(&f32_path).ok();
    let r = worst_row_rel(&ours, &theirs, nv);
    eprintln!("dense f32: worst position's max diff / logit scale {r:.2e}");
    assert!(
        r < 2e-3,
        "dense F32 weights: converter forward vs runtime differ by {r:e} of the logit scale"
    );
    assert_eq!(argmaxes(&ours, nv), argmaxes(&theirs, nv));

    // The original file: the runtime quantizes the activations for the Q4_K/Q6_K/Q5_0/Q8_0 dots
    // (about 6e-2 of the logit scale apart), the next tokens agree.
    let q = runtime_logits(&path, &tokens, 64, false);
    let rq = worst_row_rel(&ours, &q, nv);
    let top = argmaxes(&ours, nv)
        .iter()
        .zip(argmaxes(&q, nv))
        .filter(|(a, b)| **a == *b)
        .count();
    eprintln!("dense Q4_K_M: worst {rq:.2e}, top-1 agreement {top}/{}", tokens.len());
    assert!(
        rq < 0.15,
        "Q4_K_M: converter forward vs runtime differ by {rq:e} of the logit scale"
    );
    assert!(
        top + 1 >= tokens.len(),
        "Q4_K_M: top-1 tokens agree at {top} of {} positions",
        tokens.len()
    );
}

#[test]
fn gemma3_short_conversion_runs_sparsely_like_the_reference() {
    let _one = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let path = model_path(RealModel::Gemma3);
    let mut dense = load_gguf(&path, &Device::Cpu).unwrap();
    // A window of 8 so that the local layers' window cuts into the short texts below.
    dense.config.gemma3.as_mut().unwrap().sliding_window = Some(8);
    let rt0 = Model::load(&path).unwrap();
    let tok = |s: &str| rt0.tokenizer().encode(s, true, false);
    let text: String = common::austen("emma.txt").chars().take(12_000).collect();
    let calib = Calibration::new(&[text], &tok, 32, 0.2).unwrap();
    let tp = TrainParams {
        p: 0.6,
        steps: 2,
        seq_len: 32,
        lr: 5e-3,
        experts: 4,
        ..TrainParams::default()
    };
    let t0 = std::time::Instant::now();
    let hn = train(&dense, &calib, &tp, &CheckpointPlan::default(), &mut |_, _| {}).unwrap();
    eprintln!("trained {} steps in {:.1} s", tp.steps, t0.elapsed().as_secs_f64());
    let (cm, _) = calibrate(&dense, &hn, tp.p, false, &calib.held_out_windows(32, 1), 4).unwrap();
    eprintln!(
        "calibrated: measured p {:.3} after {:.1} s",
        cm.measured_p,
        t0.elapsed().as_secs_f64()
    );
    assert!(cm
        .layers
        .iter()
        .all(|l| l.qk_keep.len() == dense.config.head_dim && l.vmask.is_some()));
    let out = tmp("gemma3-270m-tomoe-f32.gguf");
    build_tomoe(&dense, &cm, QuantType::F32)
        .unwrap()
        .write_atomic(&out)
        .unwrap();

    let tokens = tok(common::PARITY_PROMPTS[0]);
    let tokens: Vec<u32> = tokens
        .iter()
        .chain(&tok(" and the river flows to the sea")[1..])
        .copied()
        .collect();
    assert!(tokens.len() > 8, "the text must be longer than the window");
    let (want, stats) = reference_forward(&dense, &cm, &tokens, Routing::Learned).unwrap();
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let nv = dense.config.vocab;
    let dense_logits: Vec<f32> = forward(&dense, &tokens, &mut NoMasks)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    drop(dense);
    let batch = runtime_logits(&out, &tokens, 64, false);
    let decode = runtime_logits(&out, &tokens, 1, true);
    std::fs::remove_file(&out).ok();
    let (rb, rd) = (worst_row_rel(&batch, &want, nv), worst_row_rel(&decode, &want, nv));
    eprintln!(
        "tomoe f32: batch {rb:.2e}, decode {rd:.2e}, experts per layer {:?}",
        stats.expert_counts
    );
    assert!(
        rb < 2e-3 && rd < 2e-3,
        "sparse runtime vs reference forward: batch {rb:e}, decode {rd:e}"
    );
    // The conversion changed the model (else the comparison proves nothing new).
    assert!(
        worst_row_rel(&dense_logits, &want, nv) > 1e-3,
        "the conversion did not change the logits"
    );
}

/// A Gemma 3 Hugging Face folder is refused with a message that says what to do instead.
#[test]
fn gemma3_hf_folder_is_refused_clearly() {
    let dir = scratch("gemma3-hf");
    write_hf(&dir, &LLAMA, 1, 1);
    let cfg = config_json(&LLAMA).replace("\"llama\"", "\"gemma3_text\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    match load_hf(&dir, &Device::Cpu) {
        Err(ConvertError::Unsupported(m)) => assert!(m.contains("GGUF"), "{m}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).ok();
}
