//! Tiny random dense models written as Hugging Face folders, for the converter's tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tomoe::convert::data::Calibration;
use tomoe::convert::dense::DenseModel;
use tomoe::convert::hf::load_hf;
use tomoe::convert::train::TrainParams;

pub struct Tiny {
    pub model_type: &'static str,
    pub layers: usize,
    pub d: usize,
    pub m: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
}

/// A llama with 4 heads (MHA) unless changed.
pub const LLAMA: Tiny = Tiny {
    model_type: "llama",
    layers: 2,
    d: 64,
    m: 128,
    heads: 4,
    kv_heads: 4,
    vocab: 260,
    tied: false,
};
/// GQA: 4 query heads share 2 KV heads.
pub const LLAMA_GQA: Tiny = Tiny {
    model_type: "llama",
    layers: 2,
    d: 64,
    m: 128,
    heads: 4,
    kv_heads: 2,
    vocab: 260,
    tied: true,
};
pub const QWEN2: Tiny = Tiny {
    model_type: "qwen2",
    layers: 2,
    d: 64,
    m: 96,
    heads: 4,
    kv_heads: 2,
    vocab: 260,
    tied: true,
};

/// A fresh empty directory under the target dir (tests run in parallel: one per name).
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tomoe-convert-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f32 = rng.gen_range(1e-7f32..1.0);
            let u2: f32 = rng.gen();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos() * std
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// All HF tensors of a random model (norm gains around 1, projections ~ N(0, 1/in)).
pub fn tensors(t: &Tiny, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hd = t.d / t.heads;
    let mut map = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f32, rng: &mut ChaCha8Rng| {
        let mut x = randn(rng, shape, std);
        if name.contains("norm") {
            x = (x + 1.0).unwrap();
        }
        map.insert(name, x);
    };
    put(
        "model.embed_tokens.weight".into(),
        &[t.vocab, t.d],
        1.0,
        &mut rng,
    );
    put("model.norm.weight".into(), &[t.d], 0.1, &mut rng);
    if !t.tied {
        put("lm_head.weight".into(), &[t.vocab, t.d], 0.3, &mut rng);
    }
    let s = 1.0 / (t.d as f32).sqrt();
    for l in 0..t.layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[t.d], 0.1, &mut rng);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[t.d],
            0.1,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[t.heads * hd, t.d],
            s,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[t.kv_heads * hd, t.d],
            s,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[t.kv_heads * hd, t.d],
            s,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[t.d, t.heads * hd],
            s,
            &mut rng,
        );
        if t.model_type == "qwen2" {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                &[t.heads * hd],
                0.1,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                &[t.kv_heads * hd],
                0.1,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                &[t.kv_heads * hd],
                0.1,
                &mut rng,
            );
        }
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[t.m, t.d],
            s,
            &mut rng,
        );
        put(format!("{p}.mlp.up_proj.weight"), &[t.m, t.d], s, &mut rng);
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[t.d, t.m],
            1.0 / (t.m as f32).sqrt(),
            &mut rng,
        );
    }
    map
}

pub fn config_json(t: &Tiny) -> String {
    format!(
        r#"{{"model_type":"{}","architectures":["X"],"hidden_size":{},"intermediate_size":{},"num_hidden_layers":{},
"num_attention_heads":{},"num_key_value_heads":{},"vocab_size":{},"rms_norm_eps":1e-5,"rope_theta":10000.0,
"max_position_embeddings":512,"tie_word_embeddings":{},"hidden_act":"silu","rope_scaling":null}}"#,
        t.model_type, t.d, t.m, t.layers, t.heads, t.kv_heads, t.vocab, t.tied
    )
}

/// GPT-2 byte-to-unicode mapping: the token string of each byte in byte-level BPE vocabularies.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// A byte-level BPE tokenizer.json: 256 byte tokens, two merges, BOS/EOS as special added tokens.
pub fn tokenizer_json(vocab: usize) -> String {
    let mut v: Vec<String> = (0..=255u8)
        .map(|b| serde_json::to_string(&byte_char(b).to_string()).unwrap())
        .collect();
    v.push("\"th\"".into());
    v.push("\"he\"".into());
    let vocab_obj: Vec<String> = v
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{s}:{i}"))
        .collect();
    assert!(vocab >= 260);
    format!(
        r#"{{"model":{{"type":"BPE","byte_fallback":false,"vocab":{{{}}},"merges":["t h",["h","e"]]}},
"added_tokens":[{{"id":258,"content":"<s>","special":true}},{{"id":259,"content":"</s>","special":true}}]}}"#,
        vocab_obj.join(",")
    )
}

/// Writes a random model as a HF folder; `shards` > 1 writes a sharded index.
pub fn write_hf(dir: &Path, t: &Tiny, seed: u64, shards: usize) {
    std::fs::write(dir.join("config.json"), config_json(t)).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(t.vocab)).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token":"<s>","eos_token":"</s>","add_bos_token":true,"chat_template":"{% for m in messages %}{{ m['content'] }}{% endfor %}"}"#,
    )
    .unwrap();
    let all = tensors(t, seed);
    if shards <= 1 {
        candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = Vec::new();
    for s in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let part: HashMap<String, Tensor> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| ((*n).clone(), all[*n].clone()))
            .collect();
        for n in part.keys() {
            weight_map.push(format!("\"{n}\":\"{file}\""));
        }
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        format!(
            r#"{{"metadata":{{}},"weight_map":{{{}}}}}"#,
            weight_map.join(",")
        ),
    )
    .unwrap();
}

/// Byte-level token ids of a text (ids 0..256), for tests that bypass the real tokenizer.
pub fn byte_tokens(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Values uniform in [-scale, scale).
pub fn rand_uniform(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a - b| / max |b|.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A random GQA llama (written as an HF folder, loaded onto `dev`) and `text` cut into training
/// sequences of 64 byte tokens: the setup of the training tests.
pub fn tiny_training(name: &str, dev: &Device, text: String) -> (DenseModel, Calibration) {
    let dir = scratch(name);
    write_hf(&dir, &LLAMA_GQA, 3, 1);
    let model = load_hf(&dir, dev).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let calib = Calibration::new(&[text], &byte_tokens, 64, 0.1).unwrap();
    (model, calib)
}

/// The training tests' settings: p = 0.5, sequences of 64, a fixed seed.
pub fn tiny_train_params(steps: u64) -> TrainParams {
    TrainParams { p: 0.5, steps, seq_len: 64, lr: 5e-3, seed: 11, ..TrainParams::default() }
}
