//! End to end through the `tomoe-convert` binary on tiny random models: HF folder → trained ToMoE
//! GGUF (and baselines, and the llama.cpp-compatible MoE), read back by our reader and by the `gguf`
//! Python package's `gguf-dump` (which must be installed: `pip install gguf`; missing = failure).
//! Bad input fails with a clear message and leaves no file behind.
#![cfg(feature = "convert")]

mod common;
mod convert_util;

use convert_util::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tomoe::gguf::{GgufFile, Value};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tomoe-convert"))
}

fn setup(name: &str, t: &Tiny) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    write_hf(&model, t, 5, 2);
    let text: String = common::austen("northangerabbey.txt")
        .chars()
        .take(40_000)
        .collect();
    let calib = dir.join("calib.txt");
    std::fs::write(&calib, text).unwrap();
    (dir, calib)
}

fn convert(dir: &Path, calib: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.arg("--input")
        .arg(dir.join("model"))
        .arg("--calib")
        .arg(calib)
        .arg("--output")
        .arg(out);
    cmd.args([
        "--steps",
        "25",
        "--seq-len",
        "64",
        "--lr",
        "5e-3",
        "--experts",
        "4",
        "--p",
        "0.6",
        "--outtype",
        "f32",
    ]);
    cmd.args(extra);
    cmd.output().unwrap()
}

fn ok(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "tomoe-convert failed: {err}");
    err
}

fn u32s(f: &GgufFile, key: &str) -> Vec<u32> {
    f.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("missing {key}"))
        .values()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn gguf_dump(path: &Path) -> String {
    let out = Command::new("gguf-dump")
        .arg(path)
        .output()
        .expect("gguf-dump not found: install the gguf Python package (pip install gguf)");
    assert!(
        out.status.success(),
        "gguf-dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Structural checks of a ToMoE file against docs/FORMAT.md.
fn check_tomoe_file(path: &Path, t: &Tiny, experts: usize) -> f32 {
    let f = GgufFile::open(path).unwrap();
    assert_eq!(
        f.get("general.architecture").and_then(Value::as_str),
        Some("tomoe-llama")
    );
    assert_eq!(
        f.get("tomoe-llama.expert_count").and_then(Value::as_u64),
        Some(experts as u64)
    );
    assert_eq!(
        f.get("tomoe.rope_pairing").and_then(Value::as_str),
        Some("adjacent")
    );
    assert!(f.get("tokenizer.ggml.tokens").is_some() && f.get("tokenizer.chat_template").is_some());
    let hd = t.d / t.heads;
    for l in 0..t.layers {
        let gate = f.tensor(&format!("blk.{l}.ffn_gate.weight")).unwrap();
        let u = gate.info.dims[1] as u32;
        assert_eq!(gate.info.dims[0], t.d as u64);
        assert_eq!(
            f.tensor(&format!("blk.{l}.ffn_down_t.weight"))
                .unwrap()
                .info
                .dims,
            vec![t.d as u64, u as u64]
        );
        let runs = u32s(&f, &format!("tomoe.blk.{l}.expert_runs"));
        let offs = u32s(&f, &format!("tomoe.blk.{l}.expert_offsets"));
        assert_eq!(offs.len(), experts + 1);
        assert_eq!(offs[0], 0);
        assert_eq!(*offs.last().unwrap() as usize * 2, runs.len());
        let mut covered = vec![false; u as usize];
        for e in 0..experts {
            let mut last_end = 0;
            for r in offs[e]..offs[e + 1] {
                let (s, n) = (runs[2 * r as usize], runs[2 * r as usize + 1]);
                assert!(
                    n >= 1 && s + n <= u && s >= last_end,
                    "layer {l} expert {e}: bad run ({s}, {n})"
                );
                last_end = s + n;
                covered[s as usize..(s + n) as usize]
                    .iter_mut()
                    .for_each(|c| *c = true);
            }
        }
        assert!(
            covered.iter().all(|&c| c),
            "layer {l}: a union row belongs to no expert"
        );
        let dq = match f.get(&format!("tomoe.blk.{l}.qk_index")) {
            Some(v) => {
                let idx: Vec<u64> = v
                    .as_array()
                    .unwrap()
                    .values()
                    .map(|x| x.as_u64().unwrap())
                    .collect();
                for p in idx.chunks(2) {
                    assert!(
                        p.len() == 2 && p[0] % 2 == 0 && p[1] == p[0] + 1,
                        "qk_index must hold whole adjacent pairs: {idx:?}"
                    );
                }
                idx.len()
            }
            None => hd,
        };
        assert_eq!(
            f.tensor(&format!("blk.{l}.attn_q.weight"))
                .unwrap()
                .info
                .dims,
            vec![t.d as u64, (t.heads * dq) as u64]
        );
        assert_eq!(
            f.tensor(&format!("blk.{l}.attn_k.weight"))
                .unwrap()
                .info
                .dims,
            vec![t.d as u64, (t.kv_heads * dq) as u64]
        );
        assert_eq!(
            f.tensor(&format!("blk.{l}.vmask_out.weight"))
                .unwrap()
                .info
                .dims,
            vec![128, hd as u64]
        );
        assert_eq!(
            f.tensor(&format!("blk.{l}.ffn_gate_inp.weight"))
                .unwrap()
                .info
                .dims,
            vec![t.d as u64, experts as u64]
        );
    }
    f.get("tomoe.active_fraction")
        .and_then(Value::as_f32)
        .unwrap()
}

#[test]
fn tiny_llama_and_gqa_convert_end_to_end() {
    for (name, t) in [("e2e-mha", &LLAMA), ("e2e-gqa", &LLAMA_GQA)] {
        let (dir, calib) = setup(name, t);
        let out = dir.join("out.gguf");
        let log = ok(&convert(&dir, &calib, &out, &[]));
        assert!(log.contains("after calibrating the cut-off"), "{log}");
        let p = check_tomoe_file(&out, t, 4);
        assert!(
            (p - 0.6).abs() <= 0.02,
            "{name}: exported active fraction {p} vs 0.6\n{log}"
        );
        let dump = gguf_dump(&out);
        assert!(
            dump.contains("tomoe-llama")
                && dump.contains("blk.1.ffn_down_t.weight")
                && dump.contains("tomoe.blk.0.expert_runs"),
            "{dump}"
        );
        // No temp files left next to the output.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains("tmp") && !n.contains("probe")),
            "{names:?}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn baselines_and_llama_cpp_compat_export() {
    let (dir, calib) = setup("baselines", &LLAMA_GQA);
    for method in ["clustered", "static-prune", "moefication"] {
        let out = dir.join(format!("{method}.gguf"));
        ok(&convert(
            &dir,
            &calib,
            &out,
            &["--method", method, "--outtype", "q8_0"],
        ));
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get("tomoe.method").and_then(Value::as_str), Some(method));
        let p = f
            .get("tomoe.active_fraction")
            .and_then(Value::as_f32)
            .unwrap();
        assert!((p - 0.6).abs() <= 0.03, "{method}: active fraction {p}");
        assert_eq!(
            f.tensor("blk.0.ffn_gate.weight").unwrap().info.ty,
            tomoe::gguf::QuantType::Q8_0
        );
        gguf_dump(&out);
    }
    let out = dir.join("compat.gguf");
    ok(&convert(
        &dir,
        &calib,
        &out,
        &["--llama-cpp-compat", "--p", "0.8"],
    ));
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        f.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(
        f.get("llama.expert_used_count").and_then(Value::as_u64),
        Some(1)
    );
    let w = f
        .get("llama.feed_forward_length")
        .and_then(Value::as_u64)
        .unwrap();
    assert_eq!(
        f.tensor("blk.0.ffn_gate_exps.weight").unwrap().info.dims,
        vec![64, w, 4]
    );
    assert_eq!(
        f.tensor("blk.0.ffn_down_exps.weight").unwrap().info.dims,
        vec![w, 64, 4]
    );
    assert!(f.tensor("blk.0.ffn_gate.weight").is_none() && f.get("tomoe.method").is_none());
    let dump = gguf_dump(&out);
    assert!(dump.contains("ffn_up_exps"), "{dump}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_fails_clearly_and_writes_nothing() {
    let (dir, calib) = setup("badcli", &LLAMA);
    let out = dir.join("never.gguf");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--p".into(), "1.5".into()], "must be in (0, 1]"),
        (vec!["--p".into(), "0".into()], "must be in (0, 1]"),
        (vec!["--outtype".into(), "q3_x".into()], "--outtype"),
        (
            vec!["--device".into(), "tpu".into()],
            "expected cpu, cuda or cuda:N",
        ),
        (
            vec!["--init".into(), "zeros".into()],
            "expected importance or all-on",
        ),
    ];
    for (extra, want) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = convert(&dir, &calib, &out, &extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(want),
            "{extra:?}: {err}"
        );
        assert!(!out.exists());
    }
    if !cfg!(feature = "cuda") {
        let o = convert(&dir, &calib, &out, &["--device", "cuda"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("--features cuda"),
            "{err}"
        );
    }
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    let o = convert(&dir, &empty, &out, &[]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("empty"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = convert(
        &dir,
        &calib,
        Path::new("/nonexistent-tomoe-dir/out.gguf"),
        &[],
    );
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("/nonexistent-tomoe-dir")
    );
    std::fs::write(
        dir.join("model/config.json"),
        config_json(&LLAMA).replace("\"llama\"", "\"gpt_neox\""),
    )
    .unwrap();
    let o = convert(&dir, &calib, &out, &[]);
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("unsupported architecture `gpt_neox`")
    );
    std::fs::remove_file(dir.join("model/model-00001-of-00002.safetensors")).unwrap();
    std::fs::write(dir.join("model/config.json"), config_json(&LLAMA)).unwrap();
    let o = convert(&dir, &calib, &out, &[]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("model-00001-of-00002")
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).ok();
}
