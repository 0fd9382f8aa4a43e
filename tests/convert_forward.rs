//! The converter's model loading and forward passes on tiny random llama / GQA llama / qwen2 models:
//! the converted model's reference forward (row gathers, Q/K index, union rows, expert rows) equals
//! the dense forward when every mask is on; masks that remove something change the output; bad
//! folders give typed errors.
#![cfg(feature = "convert")]

mod convert_util;

use candle_core::Device;
use convert_util::*;
use tomoe::convert::converted::{all_on, reference_forward, ConvertedLayer, Routing};
use tomoe::convert::forward::{forward, NoMasks};
use tomoe::convert::hf::load_hf;
use tomoe::convert::ConvertError;

fn check_all_on_matches_dense(t: &Tiny, name: &str, shards: usize) {
    let dir = scratch(name);
    write_hf(&dir, t, 7, shards);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.config.n_kv_heads, t.kv_heads);
    let tokens = byte_tokens("It is a truth universally acknowledged, that a single man");
    let dense = forward(&model, &tokens, &mut NoMasks).unwrap();
    assert_eq!(dense.dims(), &[tokens.len(), t.vocab]);
    let cm = all_on(&model, 3).unwrap();
    let (conv, stats) = reference_forward(&model, &cm, &tokens, Routing::Learned).unwrap();
    let diff = max_abs_diff(&dense, &conv);
    assert!(
        diff < 1e-4,
        "{name}: reference forward differs from dense by {diff}"
    );
    assert!(
        (stats.active_fraction - 1.0).abs() < 1e-9,
        "all-on active fraction {}",
        stats.active_fraction
    );
    let scale = dense
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        scale > 0.1,
        "logits are degenerate ({scale}); the comparison would prove nothing"
    );

    // Dropping half the Q/K pairs and a quarter of the neurons must change the logits and the count.
    let mut pruned = cm.clone();
    let hd = model.config.head_dim;
    for l in &mut pruned.layers {
        let keep: Vec<usize> = (0..hd / 4).chain(hd / 2..hd / 2 + hd / 4).collect();
        let masks = vec![
            (0..model.config.m)
                .map(|i| i % 4 != 0)
                .collect::<Vec<bool>>();
            3
        ];
        *l =
            ConvertedLayer::from_expert_masks(&masks, model.config.m, keep, l.router.clone(), None);
    }
    let (p_logits, p_stats) =
        reference_forward(&model, &pruned, &tokens, Routing::Learned).unwrap();
    assert!(
        max_abs_diff(&dense, &p_logits) > 1e-3,
        "{name}: pruning did not change the output"
    );
    let c = &model.config;
    let attn = 2.0 * (c.d * (c.n_heads + c.n_kv_heads) * hd) as f64;
    let mlp = 3.0 * (c.d * c.m) as f64;
    let want = (attn * 0.5 / 2.0 + attn / 2.0 + mlp * 0.75) / (attn + mlp);
    assert!(
        (p_stats.active_fraction - want).abs() < 1e-9,
        "active {} want {want}",
        p_stats.active_fraction
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn llama_all_masks_on_equals_dense() {
    check_all_on_matches_dense(&LLAMA, "llama", 1);
}

#[test]
fn gqa_llama_sharded_all_masks_on_equals_dense() {
    check_all_on_matches_dense(&LLAMA_GQA, "gqa", 3);
}

#[test]
fn qwen2_with_biases_all_masks_on_equals_dense() {
    check_all_on_matches_dense(&QWEN2, "qwen2", 2);
}

#[test]
fn tokenizer_metadata_is_carried_over() {
    let dir = scratch("tok");
    write_hf(&dir, &LLAMA, 1, 1);
    let model = load_hf(&dir, &Device::Cpu).unwrap();
    let get = |k: &str| {
        model
            .tokenizer_meta
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    use tomoe::gguf::Value;
    assert_eq!(
        get("tokenizer.ggml.model"),
        Some(Value::String("gpt2".into()))
    );
    assert_eq!(get("tokenizer.ggml.bos_token_id"), Some(Value::U32(258)));
    assert_eq!(get("tokenizer.ggml.eos_token_id"), Some(Value::U32(259)));
    match get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => {
            assert_eq!(a.len(), 260);
            assert_eq!(a.get(258), Some(Value::String("<s>".into())));
        }
        other => panic!("tokens: {other:?}"),
    }
    assert_eq!(
        get("tokenizer.ggml.merges"),
        Some(Value::from(vec!["t h", "h e"]))
    );
    assert!(matches!(
        get("tokenizer.chat_template"),
        Some(Value::String(_))
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_folders_give_typed_errors() {
    let dir = scratch("bad");
    write_hf(&dir, &LLAMA, 1, 1);
    let cfg = config_json(&LLAMA);

    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"llama\"", "\"mamba\""),
    )
    .unwrap();
    assert!(
        matches!(load_hf(&dir, &Device::Cpu), Err(ConvertError::UnsupportedArch(a)) if a == "mamba")
    );

    // Wrong intermediate size: the first MLP tensor has the wrong shape.
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\":128", "\"intermediate_size\":100"),
    )
    .unwrap();
    match load_hf(&dir, &Device::Cpu) {
        Err(ConvertError::BadShape { name, .. }) => {
            assert!(name.contains("mlp.gate_proj"), "{name}")
        }
        other => panic!("expected BadShape, got {:?}", other.err()),
    }

    // More layers than stored: a missing tensor.
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"num_hidden_layers\":2", "\"num_hidden_layers\":3"),
    )
    .unwrap();
    match load_hf(&dir, &Device::Cpu) {
        Err(ConvertError::MissingTensor(name)) => {
            assert!(name.starts_with("model.layers.2."), "{name}")
        }
        other => panic!("expected MissingTensor, got {:?}", other.err()),
    }

    std::fs::write(
        dir.join("config.json"),
        cfg.replace(
            "\"rope_scaling\":null",
            "\"rope_scaling\":{\"type\":\"yarn\"}",
        ),
    )
    .unwrap();
    assert!(matches!(
        load_hf(&dir, &Device::Cpu),
        Err(ConvertError::Unsupported(_))
    ));

    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(matches!(
        load_hf(&dir, &Device::Cpu),
        Err(ConvertError::Config { .. })
    ));

    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert!(matches!(
        load_hf(&dir, &Device::Cpu),
        Err(ConvertError::Config { .. })
    ));

    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(
        load_hf(&dir, &Device::Cpu),
        Err(ConvertError::Config { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn frozen_linear_gives_the_input_gradient_of_a_plain_matmul() {
    use candle_core::{Tensor, Var};
    use tomoe::convert::forward::{frozen_linear, linear};
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
    // A non-linear loss so the gradient depends on the output values too.
    let loss = |y: Tensor| y.sqr().unwrap().sum_all().unwrap();
    let plain = linear(x.as_tensor(), &w, Some(&b)).unwrap();
    let frozen = frozen_linear(x.as_tensor(), &w, Some(&b)).unwrap();
    let diff = (&plain - &frozen)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(
        diff.to_scalar::<f32>().unwrap(),
        0.0,
        "forward values differ"
    );
    let g_plain = loss(plain).backward().unwrap();
    let g_frozen = loss(frozen).backward().unwrap();
    let (gp, gf) = (
        g_plain.get(x.as_tensor()).unwrap(),
        g_frozen.get(x.as_tensor()).unwrap(),
    );
    let rel = ((gp - gf)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap())
        / gp.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    assert!(rel < 1e-6, "input gradients differ by {rel}");
    assert!(
        g_frozen.get(&w).is_none(),
        "a gradient was computed for the frozen weight"
    );
}
