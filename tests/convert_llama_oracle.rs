//! llama.cpp as the oracle for the converter's conventions: a tiny random llama written as a dense
//! GGUF with llama.cpp's permuted Q/K rows gives the same logits in llama.cpp and in the converter's
//! forward (so the un-permutation and RoPE pairing agree), and an MLP-only conversion exported with
//! `--llama-cpp-compat` gives in llama.cpp the logits of the converter's reference forward.
#![cfg(all(feature = "convert", target_arch = "x86_64"))]

mod common;
mod convert_util;

use candle_core::{Device, Tensor};
use convert_util::*;
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::path::Path;
use tomoe::convert::converted::{calibrate, reference_forward, Routing};
use tomoe::convert::data::Calibration;
use tomoe::convert::dense::DenseModel;
use tomoe::convert::forward::{forward, NoMasks};
use tomoe::convert::gguf_in::{adjacent_of_half, load_gguf};
use tomoe::convert::hf::tokenizer_metadata;
use tomoe::convert::train::{train, CheckpointPlan, TrainParams};
use tomoe::gguf::{GgufWriter, QuantType, Value};

/// Writes the random model of `t` as a dense F32 llama GGUF, Q/K rows permuted as llama.cpp stores them.
fn write_dense_gguf(t: &Tiny, seed: u64, path: &Path, tok_dir: &Path) {
    let tensors = tensors(t, seed);
    let hd = t.d / t.heads;
    let mut w = GgufWriter::new();
    let u = |v: usize| Value::U32(v as u32);
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_metadata("general.name", Value::String("tiny".into()));
    w.add_metadata("llama.block_count", u(t.layers));
    w.add_metadata("llama.context_length", u(512));
    w.add_metadata("llama.embedding_length", u(t.d));
    w.add_metadata("llama.feed_forward_length", u(t.m));
    w.add_metadata("llama.attention.head_count", u(t.heads));
    w.add_metadata("llama.attention.head_count_kv", u(t.kv_heads));
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    w.add_metadata("llama.rope.freq_base", Value::F32(10000.0));
    w.add_metadata("llama.rope.dimension_count", u(hd));
    w.add_metadata("llama.vocab_size", u(t.vocab));
    for (k, v) in tokenizer_metadata(tok_dir, tomoe::convert::dense::Arch::Llama).unwrap() {
        w.add_metadata(k, v);
    }
    let within = adjacent_of_half(hd); // hf row r of a head ← adjacent row within[r]
    let mut put = |name: &str, hf: &str, heads: Option<usize>| {
        let x = &tensors[hf];
        let x = match heads {
            Some(h) => {
                let mut rows = vec![0u32; h * hd];
                for head in 0..h {
                    for (r, &a) in within.iter().enumerate() {
                        rows[head * hd + a] = (head * hd + r) as u32;
                    }
                }
                x.index_select(&Tensor::from_vec(rows, h * hd, &Device::Cpu).unwrap(), 0).unwrap()
            }
            None => x.clone(),
        };
        let dims: Vec<u64> = x.dims().iter().rev().map(|&d| d as u64).collect();
        let bytes = x.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor(name, dims, QuantType::F32, bytes).unwrap();
    };
    put("token_embd.weight", "model.embed_tokens.weight", None);
    put("output_norm.weight", "model.norm.weight", None);
    if !t.tied {
        put("output.weight", "lm_head.weight", None);
    }
    for l in 0..t.layers {
        let p = format!("model.layers.{l}");
        put(&format!("blk.{l}.attn_norm.weight"), &format!("{p}.input_layernorm.weight"), None);
        put(&format!("blk.{l}.attn_q.weight"), &format!("{p}.self_attn.q_proj.weight"), Some(t.heads));
        put(&format!("blk.{l}.attn_k.weight"), &format!("{p}.self_attn.k_proj.weight"), Some(t.kv_heads));
        put(&format!("blk.{l}.attn_v.weight"), &format!("{p}.self_attn.v_proj.weight"), None);
        put(&format!("blk.{l}.attn_output.weight"), &format!("{p}.self_attn.o_proj.weight"), None);
        put(&format!("blk.{l}.ffn_norm.weight"), &format!("{p}.post_attention_layernorm.weight"), None);
        put(&format!("blk.{l}.ffn_gate.weight"), &format!("{p}.mlp.gate_proj.weight"), None);
        put(&format!("blk.{l}.ffn_up.weight"), &format!("{p}.mlp.up_proj.weight"), None);
        put(&format!("blk.{l}.ffn_down.weight"), &format!("{p}.mlp.down_proj.weight"), None);
    }
    w.write_atomic(path).unwrap();
}

/// llama.cpp's logits of the last token of `tokens`.
fn llama_cpp_last_logits(path: &Path, tokens: &[u32], vocab: usize) -> Vec<f32> {
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut toks: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    // SAFETY: plain FFI calls on pointers llama.cpp returned, checked for null; the token buffer
    // outlives the decode; the logits pointer has `vocab` floats for the last output.
    unsafe {
        sys::llama_backend_init();
        let model = sys::llama_model_load_from_file(c_path.as_ptr(), sys::llama_model_default_params());
        assert!(!model.is_null(), "llama.cpp could not load {}", path.display());
        let mut cp = sys::llama_context_default_params();
        cp.n_ctx = 128;
        cp.n_batch = 128;
        cp.n_ubatch = 128;
        cp.n_threads = 2;
        cp.n_threads_batch = 2;
        let ctx = sys::llama_init_from_model(model, cp);
        assert!(!ctx.is_null());
        let batch = sys::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32);
        assert_eq!(sys::llama_decode(ctx, batch), 0, "llama_decode failed");
        let p = sys::llama_get_logits_ith(ctx, -1);
        assert!(!p.is_null());
        let out = std::slice::from_raw_parts(p, vocab).to_vec();
        sys::llama_free(ctx);
        sys::llama_model_free(model);
        out
    }
}

fn last_row(logits: &Tensor) -> Vec<f32> {
    let n = logits.dim(0).unwrap();
    logits.get(n - 1).unwrap().to_vec1().unwrap()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let max = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max > 0.1, "{what}: degenerate logits");
    assert!(diff < 2e-3 * max.max(1.0), "{what}: max diff {diff} (logit scale {max})");
}

#[test]
fn converter_matches_llama_cpp_dense_and_compat_moe() {
    let t = &LLAMA_GQA;
    let dir = scratch("oracle");
    write_hf(&dir, t, 9, 1); // for the tokenizer files
    let dense_path = dir.join("dense.gguf");
    write_dense_gguf(t, 9, &dense_path, &dir);
    let model: DenseModel = load_gguf(&dense_path, &Device::Cpu).unwrap();
    let tokens = byte_tokens("She was the youngest of the two daughters of a most affectionate father");
    let ours = last_row(&forward(&model, &tokens, &mut NoMasks).unwrap());
    let theirs = llama_cpp_last_logits(&dense_path, &tokens, t.vocab);
    assert_close(&ours, &theirs, "dense GGUF: converter forward vs llama.cpp");

    // MLP-only conversion → llama.cpp MoE file → same logits as our reference forward.
    let text: String = common::austen("emma.txt").chars().take(20_000).collect();
    let calib = Calibration::new(&[text], &byte_tokens, 64, 0.1).unwrap();
    let tp = TrainParams { p: 0.8, steps: 15, seq_len: 64, lr: 5e-3, experts: 4, mlp_only: true, ..TrainParams::default() };
    let hn = train(&model, &calib, &tp, &CheckpointPlan::default(), &mut |_, _| {}).unwrap();
    let (cm, _) = calibrate(&model, &hn, tp.p, true, &calib.held_out_windows(64, 2), 20).unwrap();
    assert!(cm.layers.iter().all(|l| l.experts.iter().any(|e| e.len() < l.union.len())), "experts must be proper subsets");
    let compat = dir.join("compat.gguf");
    tomoe::convert::export::export(&model, &cm, QuantType::F32, true, &compat).unwrap();
    let (ref_logits, _) = reference_forward(&model, &cm, &tokens, Routing::Learned).unwrap();
    let theirs = llama_cpp_last_logits(&compat, &tokens, t.vocab);
    assert_close(&last_row(&ref_logits), &theirs, "compat MoE: reference forward vs llama.cpp");
    // And the conversion really changed the model (otherwise the comparison proves nothing new).
    let diff = ours.iter().zip(&last_row(&ref_logits)).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "the MoE conversion did not change the logits");
    std::fs::remove_dir_all(&dir).ok();
}
