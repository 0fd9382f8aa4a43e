//! Tiny random models of each dense architecture without a real test model (qwen2 with its
//! Q/K/V biases and an untied output; llama with grouped-query attention and a tied output),
//! written with our GGUF writer and run by both the engine and llama.cpp (the oracle): every
//! position's logits must agree. f32 weights: within 1e-4 (ggml's f32 matrix kernels sum in
//! an order the engine does not mirror); Q8_0 weights: within 1e-6 (the engine rounds as ggml).
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "common/oracle_eval.rs"]
mod oracle_eval;

use oracle_eval::{max_rel_diff, GgmlKernels, LlamaOracle};
use std::path::PathBuf;
use std::sync::Arc;
use tomoe::engine::{Context, ContextParams};
use tomoe::gguf::{GgufFile, GgufWriter, QuantType, Value};
use tomoe::model::Model;
use tomoe_quant::quantize_row;

const D: usize = 64;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const HEAD_DIM: usize = 16;
const FF: usize = 128;
const N_LAYER: usize = 2;
const N_VOCAB: usize = 259;

/// Deterministic values in [-scale, scale).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves, the others are shifted
/// past 255 (so that every byte is a visible token).
fn byte_token(b: u8) -> String {
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        char::from(b).to_string()
    } else {
        let n = (0..b).filter(|&c| !matches!(c, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)).count();
        char::from_u32(256 + n as u32).unwrap().to_string()
    }
}

/// Writes a random model of `arch` ("llama" or "qwen2") with weights in `ty`.
fn tiny_model(arch: &str, ty: QuantType, seed: u64) -> PathBuf {
    let mut w = GgufWriter::new();
    let meta = |k: &str| format!("{arch}.{k}");
    w.add_metadata("general.architecture", Value::String(arch.into()));
    w.add_metadata("general.name", Value::String(format!("tiny {arch}")));
    for (k, v) in [
        ("block_count", N_LAYER),
        ("context_length", 256),
        ("embedding_length", D),
        ("feed_forward_length", FF),
        ("attention.head_count", N_HEAD),
        ("attention.head_count_kv", N_HEAD_KV),
        ("rope.dimension_count", HEAD_DIM),
    ] {
        w.add_metadata(meta(k), Value::U32(v as u32));
    }
    w.add_metadata(meta("attention.layer_norm_rms_epsilon"), Value::F32(1e-6));
    w.add_metadata(meta("rope.freq_base"), Value::F32(10000.0));
    // The 256 byte tokens, one merge ("a b" -> "ab"), BOS and EOS.
    let mut tokens: Vec<Value> = (0..=255u8).map(|b| Value::String(byte_token(b))).collect();
    for t in ["ab", "<s>", "</s>"] {
        tokens.push(Value::String(t.into()));
    }
    let types: Vec<Value> = (0..N_VOCAB).map(|i| Value::I32(if i < 257 { 1 } else { 3 })).collect();
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", Value::String("default".into()));
    w.add_metadata("tokenizer.ggml.tokens", Value::Array(tokens));
    w.add_metadata("tokenizer.ggml.token_type", Value::Array(types));
    w.add_metadata("tokenizer.ggml.merges", Value::Array(vec![Value::String("a b".into())]));
    w.add_metadata("tokenizer.ggml.bos_token_id", Value::U32(257));
    w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(258));

    let mut seed = seed;
    let mut tensor = |w: &mut GgufWriter, name: &str, dims: Vec<u64>, ty: QuantType, scale: f32| {
        seed += 1;
        let n: usize = dims.iter().product::<u64>() as usize;
        let vals = random(n, seed, scale);
        let bytes = match ty {
            QuantType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => {
                let row = dims[0] as usize;
                let mut out = vec![0u8; ty.row_bytes(row).unwrap() * (n / row)];
                for (src, dst) in vals.chunks_exact(row).zip(out.chunks_exact_mut(ty.row_bytes(row).unwrap())) {
                    quantize_row(ty, src, dst);
                }
                out
            }
        };
        w.add_tensor(name, dims, ty, bytes).unwrap();
    };
    let (qd, kvd) = ((N_HEAD * HEAD_DIM) as u64, (N_HEAD_KV * HEAD_DIM) as u64);
    let (d, ff, nv) = (D as u64, FF as u64, N_VOCAB as u64);
    tensor(&mut w, "token_embd.weight", vec![d, nv], ty, 1.0);
    tensor(&mut w, "output_norm.weight", vec![d], QuantType::F32, 1.0);
    if arch == "qwen2" {
        tensor(&mut w, "output.weight", vec![d, nv], ty, 0.3);
    }
    for l in 0..N_LAYER {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensor(&mut w, &b("attn_norm.weight"), vec![d], QuantType::F32, 1.0);
        tensor(&mut w, &b("attn_q.weight"), vec![d, qd], ty, 0.3);
        tensor(&mut w, &b("attn_k.weight"), vec![d, kvd], ty, 0.3);
        tensor(&mut w, &b("attn_v.weight"), vec![d, kvd], ty, 0.3);
        if arch == "qwen2" {
            tensor(&mut w, &b("attn_q.bias"), vec![qd], QuantType::F32, 0.5);
            tensor(&mut w, &b("attn_k.bias"), vec![kvd], QuantType::F32, 0.5);
            tensor(&mut w, &b("attn_v.bias"), vec![kvd], QuantType::F32, 0.5);
        }
        tensor(&mut w, &b("attn_output.weight"), vec![qd, d], ty, 0.3);
        tensor(&mut w, &b("ffn_norm.weight"), vec![d], QuantType::F32, 1.0);
        tensor(&mut w, &b("ffn_gate.weight"), vec![d, ff], ty, 0.3);
        tensor(&mut w, &b("ffn_up.weight"), vec![d, ff], ty, 0.3);
        tensor(&mut w, &b("ffn_down.weight"), vec![ff, d], ty, 0.3);
    }
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-{arch}-{}.gguf", ty.name()));
    w.write_atomic(&path).unwrap();
    path
}

/// Every position's logits of 40 tokens in one batch, and then 8 more decoded one at a time.
fn check(arch: &str, ty: QuantType, tol: f32) {
    let path = tiny_model(arch, ty, 7);
    let tokens: Vec<u32> =
        std::iter::once(257).chain(random(47, 3, 1.0).iter().map(|v| ((v + 1.0) * 127.9) as u32)).collect();
    let (prompt, rest) = tokens.split_at(40);
    let model = Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{arch}: {e}")));
    let mut ctx = Context::new(model, ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }).unwrap();
    let mut oracle = LlamaOracle::load_with(&path, 64, 2, true, GgmlKernels::Default);
    let mut ours = Vec::new();
    ctx.eval_all_logits(prompt, &mut ours).unwrap();
    let want = oracle.eval(prompt, 0, true);
    let rel = max_rel_diff(&ours, &want);
    assert!(rel <= tol, "{arch} {ty}: batch logits differ by {rel:e}");
    let mut worst = rel;
    for (i, &t) in rest.iter().enumerate() {
        let ours = ctx.eval(&[t]).unwrap().to_vec();
        let want = oracle.eval(&[t], prompt.len() + i, false);
        let rel = max_rel_diff(&ours, &want);
        assert!(rel <= tol, "{arch} {ty}: decoded token {i} logits differ by {rel:e}");
        worst = worst.max(rel);
    }
    eprintln!("{arch} {ty}: worst logits rel diff {worst:.2e} over 48 positions");
}

#[test]
fn tiny_qwen2_matches_llama_cpp() {
    check("qwen2", QuantType::F32, 1e-4);
    check("qwen2", QuantType::Q8_0, 1e-6);
}

#[test]
fn tiny_llama_gqa_matches_llama_cpp() {
    check("llama", QuantType::F32, 1e-4);
    check("llama", QuantType::Q8_0, 1e-6);
}

/// A mapped file's matrices are read from the copies made at load: interleaved where the kernel
/// set has kernels for them, plain (on huge pages) where the system has transparent huge pages;
/// a file in memory gets no plain copies. Every logit is the same bits either way.
#[test]
fn copies_give_the_bits_of_the_file() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]") || mode.contains("[madvise]"));
    for (arch, ty) in [("qwen2", QuantType::F32), ("llama", QuantType::Q8_0)] {
        let path = tiny_model(arch, ty, 7);
        let mapped = Arc::new(Model::load(&path).unwrap());
        let file = GgufFile::from_bytes(std::fs::read(&path).unwrap()).unwrap();
        let in_memory = Arc::new(Model::from_gguf(file).unwrap());
        if ty == QuantType::F32 {
            // No kernel set interleaves f32: only plain copies, of a mapped file only.
            assert_eq!(in_memory.copies_bytes(), 0);
            assert_eq!(mapped.copies_bytes() > 0, thp, "{arch} {ty}: plain copies where THP is on");
        }
        let logits = |model: Arc<Model>| {
            let mut ctx = Context::new(model, ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 }).unwrap();
            let mut all = Vec::new();
            ctx.eval_all_logits(&[257, 97, 98, 99, 32, 100], &mut all).unwrap();
            for t in [101, 102, 103] {
                all.extend_from_slice(ctx.eval(&[t]).unwrap());
            }
            all.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(logits(mapped), logits(in_memory), "{arch} {ty}: the copies change the logits");
    }
}
