//! Load options (`LoadOptions`, `tomoe-run --no-copies / --kernels`, `tomoe_model_params`): no
//! copies gives no copies and the same logits bit for bit; a kernel set this CPU lacks is a clear
//! error naming the sets it has; the process-wide set cannot be switched once chosen. No test
//! here chooses a set other than the default one: the set is global to the test process.

mod capi_support;
mod common;

use capi_support::{last_error, CContext, CModel};
use std::ffi::CString;
use std::process::Command;
use std::ptr;
use std::sync::Arc;
use tomoe::capi::*;
use tomoe::engine::{Context, ContextParams, LoadError, LoadOptions, Model};
use tomoe_quant::dispatch::{self, SelectKernelsError};

const PROMPT: &str = "The capital of France is";

/// Logits after the prompt (one batch), then after each of three single-token decodes.
fn logits(model: Model) -> Vec<Vec<f32>> {
    let model = Arc::new(model);
    let params = ContextParams { n_ctx: 64, n_threads: 2, n_batch: 64 };
    let mut ctx = Context::new(model.clone(), params).unwrap();
    let tokens = model.tokenizer().encode(PROMPT, true, true);
    let mut out = vec![ctx.eval(&tokens).unwrap().to_vec()];
    for id in [11u32, 42, 7] {
        out.push(ctx.eval(&[id]).unwrap().to_vec());
    }
    out
}

fn bits(rows: &[Vec<f32>]) -> Vec<Vec<u32>> {
    rows.iter().map(|r| r.iter().map(|x| x.to_bits()).collect()).collect()
}

fn available_names() -> Vec<&'static str> {
    dispatch::available_sets().iter().map(|s| s.name).collect()
}

#[test]
fn no_copies_gives_no_copies_and_the_same_logits() {
    let path = common::model_path(common::RealModel::SmolLm2);
    let with = Model::load_with(&path, &LoadOptions { copies: true, kernels: None }).unwrap();
    let without = Model::load_with(&path, &LoadOptions { copies: false, kernels: None }).unwrap();
    assert_eq!(without.copies_bytes(), 0);
    let set = dispatch::kernels();
    eprintln!("kernel set {}: copies with the default options: {} bytes", set.name, with.copies_bytes());
    if set.interleaved(tomoe_quant::QuantType::Q4_1).is_some() {
        assert!(with.copies_bytes() > 0, "{} has interleaved Q4_1 kernels: SmolLM2 gets copies", set.name);
    }
    assert!(bits(&logits(with)) == bits(&logits(without)), "logits differ without the copies");
}

/// SmolLM2's embedding is tied to its output: where the output gets a copy, the embedding's file
/// pages are given back at load, and the rows a prompt looks up are read from the file without
/// mapping them again (each read through the map would map the 64 KiB around it: a prompt of
/// 300 tokens spread over the vocabulary would map ~19 MiB back).
#[test]
fn a_tied_embeddings_rows_stay_unmapped() {
    if dispatch::kernels().interleaved(tomoe_quant::QuantType::Q4_1).is_none() {
        eprintln!("skipped: {} has no interleaved Q4_1 kernels, so no output copy", dispatch::kernels().name);
        return;
    }
    // A private copy: the other tests in this process map the shared file at the same time, and
    // the resident size is counted per path.
    let dir = std::env::temp_dir().join(format!("tomoe-tied-rows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("smollm2.gguf");
    std::fs::copy(common::model_path(common::RealModel::SmolLm2), &path).unwrap();
    let model = Arc::new(Model::load_with(&path, &LoadOptions { copies: true, kernels: None }).unwrap());
    let params = ContextParams { n_ctx: 512, n_threads: 2, n_batch: 512 };
    let mut ctx = Context::new(model.clone(), params).unwrap();
    let tokens: Vec<u32> = (0..300u32).map(|i| i * 163 + 5).collect();
    let before = common::mapped_rss_kib(&path);
    ctx.eval(&tokens).unwrap();
    for &t in &tokens[..20] {
        ctx.eval(&[t + 1]).unwrap();
    }
    let after = common::mapped_rss_kib(&path);
    #[cfg(target_os = "linux")]
    assert!(
        after < before + 2048,
        "320 embedding rows mapped {} KiB of the file back ({before} -> {after} KiB)",
        after.saturating_sub(before)
    );
    drop(ctx);
    drop(model);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_kernel_set_is_a_clear_error() {
    let path = common::model_path(common::RealModel::SmolLm2);
    let opts = LoadOptions { copies: true, kernels: Some("no-such-set".into()) };
    let err = Model::load_with(&path, &opts).err().expect("an unknown kernel set must fail the load");
    assert!(
        matches!(&err, LoadError::Kernels(SelectKernelsError::NotAvailable { name, .. }) if name == "no-such-set"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("no-such-set"), "{msg}");
    for name in available_names() {
        assert!(msg.contains(name), "the message lists the available set {name}: {msg}");
    }
}

#[test]
fn the_kernel_set_in_use_cannot_be_switched() {
    let current = dispatch::kernels().name;
    assert_eq!(dispatch::select_kernels(current).unwrap().name, current);
    for other in available_names().into_iter().filter(|&n| n != current) {
        let err = dispatch::select_kernels(other).err().expect("another set must be refused");
        assert_eq!(err, SelectKernelsError::AlreadyChosen { requested: other.into(), chosen: current });
        assert!(err.to_string().contains("once per process"), "{err}");
    }
    assert_eq!(dispatch::kernels().name, current);
    // Naming the set in use at load is fine.
    let path = common::model_path(common::RealModel::SmolLm2);
    let opts = LoadOptions { copies: false, kernels: Some(current.into()) };
    Model::load_with(&path, &opts).unwrap();
}

fn tomoe_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
}

#[test]
fn cli_no_copies_generates_the_same_text() {
    let path = common::model_path(common::RealModel::SmolLm2);
    let run = |extra: &[&str]| {
        let out = tomoe_run()
            .arg(&path)
            .args(["-p", PROMPT, "-n", "8", "--temp", "0", "-t", "2", "-c", "64"])
            .args(extra)
            .env_remove("TOMOE_NO_COPIES")
            .output()
            .unwrap();
        assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let default = run(&[]);
    assert!(!default.trim().is_empty());
    assert_eq!(run(&["--no-copies"]), default);
    let current = dispatch::kernels().name;
    assert_eq!(run(&["--kernels", current, "--no-copies"]), default);
}

#[test]
fn cli_unknown_kernel_set_lists_the_available_ones() {
    let path = common::model_path(common::RealModel::SmolLm2);
    for sub in [vec!["-p", "hi", "-n", "1"], vec!["bench", "-p", "1", "-n", "1", "-r", "1"]] {
        let mut cmd = tomoe_run();
        match sub[0] {
            "bench" => cmd.args(&sub[..1]).arg("-m").arg(&path).args(&sub[1..]),
            _ => cmd.arg(&path).args(&sub),
        };
        let out = cmd.args(["--kernels", "no-such-set"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sub:?} succeeded with an unknown kernel set");
        assert!(stderr.contains("no-such-set") && stderr.contains("available"), "{stderr}");
        for name in available_names() {
            assert!(stderr.contains(name), "the error lists the available set {name}: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn cli_help_documents_the_load_flags() {
    for sub in [&[][..], &["perplexity"][..], &["bench"][..]] {
        let out = tomoe_run().args(sub).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--kernels <NAME>") && help.contains("--no-copies"), "{sub:?}: {help}");
    }
}

/// Loads through `tomoe_model_load_with_params`; the status, and the handle on success.
fn c_load(params: Option<&tomoe_model_params>) -> (tomoe_status, Option<CModel>) {
    let path = CString::new(common::model_path(common::RealModel::SmolLm2).to_str().unwrap()).unwrap();
    let mut m = ptr::null_mut();
    let p = params.map_or(ptr::null(), |p| p as *const tomoe_model_params);
    // SAFETY: valid pointers; `params` from tomoe_model_default_params.
    let st = unsafe { tomoe_model_load_with_params(path.as_ptr(), p, &mut m) };
    (st, (!m.is_null()).then(|| CModel(m)))
}

fn c_logits(model: &CModel) -> Vec<u32> {
    let n_vocab = model.info().n_vocab as usize;
    let ctx = CContext::new(model, 64, 2, 1);
    let tokens = model.tokenize(PROMPT, true, true);
    capi_support::check(ctx.eval(&tokens));
    ctx.logits(n_vocab).iter().map(|x| x.to_bits()).collect()
}

#[test]
fn c_abi_model_params() {
    let defaults = tomoe_model_default_params();
    assert_eq!(defaults.size, std::mem::size_of::<tomoe_model_params>());
    assert!(defaults.kernels.is_null());

    let (st, with) = c_load(None);
    assert_eq!(st, tomoe_status::TOMOE_OK, "{}", last_error());
    let without_params = tomoe_model_params { copies: false, ..defaults };
    let (st, without) = c_load(Some(&without_params));
    assert_eq!(st, tomoe_status::TOMOE_OK, "{}", last_error());
    assert_eq!(c_logits(&with.unwrap()), c_logits(&without.unwrap()));

    let name = CString::new("no-such-set").unwrap();
    let bad = tomoe_model_params { kernels: name.as_ptr(), ..defaults };
    let (st, m) = c_load(Some(&bad));
    assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_ARGUMENT);
    assert!(m.is_none());
    let msg = last_error();
    assert!(msg.contains("no-such-set"), "{msg}");
    for name in available_names() {
        assert!(msg.contains(name), "the message lists the available set {name}: {msg}");
    }

    let current = CString::new(dispatch::kernels().name).unwrap();
    let named = tomoe_model_params { kernels: current.as_ptr(), ..defaults };
    let (st, _) = c_load(Some(&named));
    assert_eq!(st, tomoe_status::TOMOE_OK, "{}", last_error());

    let wrong_size = tomoe_model_params { size: defaults.size + 8, ..defaults };
    let (st, m) = c_load(Some(&wrong_size));
    assert_eq!(st, tomoe_status::TOMOE_ERR_INVALID_ARGUMENT);
    assert!(m.is_none() && last_error().contains("size"), "{}", last_error());
}
