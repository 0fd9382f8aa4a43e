//! `tomoe-run perplexity --kl-divergence-base` / `--kl-divergence` on two tiny random llama
//! models: the printed mean KLD, same-top count and perplexities against a hand computation
//! from the library's logits (the chunks and BOS exactly as `score_chunk` evaluates them), a
//! model against its own base (KLD ≈ 0, same top 100 %), the base file's size, and the errors:
//! a truncated or foreign base file, another vocabulary, bad flag combinations.

mod common;
#[path = "common/tiny.rs"]
mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use tomoe::engine::{Context, ContextParams, Model};
use tomoe::gguf::{QuantType, Value};

const N_CTX: usize = 32;
const CHUNKS: usize = 3;
/// Scored positions per chunk: n_ctx/2 .. n_ctx − 2.
const POSITIONS: usize = N_CTX - 1 - N_CTX / 2;
/// What the u16 encoding implies: each stored log-probability is within half a step of a 16-nat
/// grid of 65535 steps (plus the f32 rounding of the top log-probability).
const EPS: f64 = 16.0 / 65535.0 / 2.0 + 1e-6;

const TEXT: &str = "It was a truth universally acknowledged, that a single man in possession of a good \
    fortune, must be in want of a wife. However little known the feelings or views of such a man may be \
    on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding \
    families, that he is considered the rightful property of some one or other of their daughters. \
    My dear Mr. Bennet, said his lady to him one day, have you heard that Netherfield Park is let at last?";

fn tomoe_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = tomoe_run();
    c.arg("perplexity");
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "tomoe-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A failure with exit code 1, an error message (returned) and no panic.
fn error_of(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") || stderr.contains("\nerror: "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A scratch directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-kld-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tiny llama models with the same byte vocabulary, all adding BOS (so every chunk's first
/// token is replaced): the base, its weights quantized to Q4_0 (close to it: the same top token
/// at most positions, not all), and a model with other random weights (far from it).
struct Models {
    base: PathBuf,
    quantized: PathBuf,
    other: PathBuf,
}

fn models() -> Models {
    let extra = [("tokenizer.ggml.add_bos_token", Value::Bool(true))];
    Models {
        base: tiny::tiny_model_with("llama", QuantType::F32, 21, &extra, "tiny-kld-base.gguf"),
        quantized: tiny::tiny_model_with("llama", QuantType::Q4_0, 21, &extra, "tiny-kld-q4_0.gguf"),
        other: tiny::tiny_model_with("llama", QuantType::Q8_0, 22, &extra, "tiny-kld-other.gguf"),
    }
}

/// The value after `key` on the line that starts with it, up to the next space, comma or '±'.
fn field<'a>(stdout: &'a str, line_start: &str, key: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no line starting with {line_start:?}: {stdout}"));
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("no {key:?} in {line:?}")) + key.len()..];
    rest.trim_start().split([' ', ',', '±']).next().unwrap()
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// ln softmax in f64, by hand.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - max - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// The comparison by hand: every scored position of every chunk, both models' full
/// distributions.
struct Hand {
    mean_kld: f64,
    /// The largest difference from `mean_kld` the u16 encoding allows (averaged per-position
    /// bounds, plus the entries more than 16 nats below the top that the encoding leaves out).
    kld_bound: f64,
    mean_reverse_kld: f64,
    same_top: usize,
    count: usize,
    ppl_q: f64,
    ppl_base: f64,
}

fn by_hand(base: &Path, q: &Path, text: &str) -> Hand {
    let load = |p: &Path| Arc::new(Model::load(p).unwrap());
    let (mb, mq) = (load(base), load(q));
    let params = ContextParams {
        n_ctx: N_CTX,
        n_threads: 2,
        n_batch: 512,
    };
    let (mut cb, mut cq) = (
        Context::new(mb.clone(), params.clone()).unwrap(),
        Context::new(mq.clone(), params).unwrap(),
    );
    // The base run tokenizes with the base model; the compared model replaces each chunk's
    // first token with its own BOS, as score_chunk does.
    let tokens = mb.tokenizer().encode(text, true, false);
    assert!(
        tokens.len() >= CHUNKS * N_CTX,
        "the text is long enough: {} tokens",
        tokens.len()
    );
    let bos = |m: &Model| {
        if m.tokenizer().adds_bos() {
            m.tokenizer().bos()
        } else {
            None
        }
    };
    let (bos_b, bos_q) = (bos(&mb), bos(&mq));
    assert_eq!(bos_b, Some(257));
    let nv = mb.config().n_vocab;
    let (mut lb, mut lq) = (Vec::new(), Vec::new());
    let mut h = Hand {
        mean_kld: 0.0,
        kld_bound: 0.0,
        mean_reverse_kld: 0.0,
        same_top: 0,
        count: 0,
        ppl_q: 0.0,
        ppl_base: 0.0,
    };
    for i in 0..CHUNKS {
        let mut chunk = tokens[i * N_CTX..(i + 1) * N_CTX].to_vec();
        chunk[0] = bos_b.unwrap();
        cb.clear();
        cb.eval_all_logits(&chunk, &mut lb).unwrap();
        chunk[0] = bos_q.unwrap();
        cq.clear();
        cq.eval_all_logits(&chunk, &mut lq).unwrap();
        for j in N_CTX / 2..N_CTX - 1 {
            let p = log_softmax(&lb[j * nv..(j + 1) * nv]);
            let q = log_softmax(&lq[j * nv..(j + 1) * nv]);
            let top = p[argmax(&p)];
            for k in 0..nv {
                let term = p[k].exp() * (p[k] - q[k]);
                h.mean_kld += term;
                h.mean_reverse_kld += q[k].exp() * (q[k] - p[k]);
                h.kld_bound += if p[k] > top - 16.0 + EPS {
                    (EPS.exp() - 1.0) * term.abs() + EPS.exp() * p[k].exp() * EPS
                } else {
                    term.abs()
                };
            }
            h.same_top += (argmax(&p) == argmax(&q)) as usize;
            let next = chunk[j + 1] as usize;
            h.ppl_q -= q[next];
            h.ppl_base -= p[next];
            h.count += 1;
        }
    }
    let n = h.count as f64;
    h.mean_kld /= n;
    h.mean_reverse_kld /= n;
    h.kld_bound /= n;
    h.ppl_q = (h.ppl_q / n).exp();
    h.ppl_base = (h.ppl_base / n).exp();
    h
}

/// Runs `--kl-divergence` of `q` against `base_file` (written by `base`) and checks the report
/// against the hand computation, which it returns with the tolerance on the mean KLD.
fn check_against_hand(base: &Path, base_file: &Path, q: &Path) -> (Hand, f64) {
    let out = run(&[
        &"-m",
        &q,
        &"--kl-divergence",
        &"--kl-divergence-base",
        &base_file,
        &"-t",
        &"2",
    ]);
    let stdout = stdout_of(&out);
    let hand = by_hand(base, q, TEXT);
    assert_eq!(hand.count, CHUNKS * POSITIONS);
    // One row per chunk after the header.
    let rows = stdout
        .lines()
        .skip_while(|l| !l.starts_with("chunk "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .count();
    assert_eq!(rows, CHUNKS, "{stdout}");

    let kld = num(field(&stdout, "Mean    KLD:", "KLD:"));
    let tol = hand.kld_bound + 5e-7;
    eprintln!(
        "{}: mean KLD {kld}, by hand {} (tolerance {tol}, reverse KL {}), same top {}/{}",
        q.display(),
        hand.mean_kld,
        hand.mean_reverse_kld,
        hand.same_top,
        hand.count
    );
    assert!(
        (kld - hand.mean_kld).abs() <= tol,
        "printed mean KLD {kld}, by hand {} (tolerance {tol})\n{stdout}",
        hand.mean_kld
    );
    let summary_kld = num(field(&stdout, "kl-divergence: ", "mean KLD"));
    assert!((summary_kld - kld).abs() < 1e-6);

    // Same top: exactly the hand count (the argmaxes are stored exactly), as a percentage too.
    let same = field(&stdout, "kl-divergence: ", "same top");
    assert_eq!(same, format!("{}/{}", hand.same_top, hand.count), "{stdout}");
    let pct = num(field(&stdout, "Same top p:", "p:"));
    let p = hand.same_top as f64 / hand.count as f64;
    assert!((pct - 100.0 * p).abs() < 5e-4, "{pct}");
    let err = num(field(&stdout, "Same top p:", "±"));
    assert!(
        (err - 100.0 * (p * (1.0 - p) / (hand.count - 1) as f64).sqrt()).abs() < 5e-4,
        "{err}"
    );

    // The perplexities, to the printed digits (the base's from the stored nlls, exact).
    let ppl_q = num(field(&stdout, "kl-divergence: ", "PPL(Q)"));
    let ppl_base = num(field(&stdout, "kl-divergence: ", "PPL(base)"));
    assert!(
        (ppl_q - hand.ppl_q).abs() < 5e-5 + 1e-9 * hand.ppl_q,
        "{ppl_q} vs {}",
        hand.ppl_q
    );
    assert!(
        (ppl_base - hand.ppl_base).abs() < 5e-5 + 1e-9 * hand.ppl_base,
        "{ppl_base} vs {}",
        hand.ppl_base
    );
    let mean_q = num(field(&stdout, "Mean PPL(Q) ", ":"));
    assert!((mean_q - hand.ppl_q).abs() < 5e-7 + 1e-9 * hand.ppl_q, "{mean_q}");
    for label in [
        "Maximum KLD:",
        "99.0%   KLD:",
        "Median  KLD:",
        "Minimum KLD:",
        "RMS Δp    :",
        "Mean PPL(Q)/PPL(base)",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(label)), "no {label:?}: {stdout}");
    }
    let (max, min) = (
        num(field(&stdout, "Maximum KLD:", ":")),
        num(field(&stdout, "Minimum KLD:", ":")),
    );
    let median = num(field(&stdout, "Median  KLD:", ":"));
    assert!(
        min <= median && median <= max && min <= kld && kld <= max,
        "{min} {median} {max}"
    );
    (hand, tol)
}

#[test]
fn kl_divergence_matches_a_hand_computation() {
    let dir = TempDir::new("hand");
    let m = models();
    let text = dir.0.join("text.txt");
    std::fs::write(&text, TEXT).unwrap();
    let base = dir.0.join("base.kld");
    // An existing file at the base path is replaced.
    std::fs::write(&base, "old").unwrap();
    let (c, chunks) = (N_CTX.to_string(), CHUNKS.to_string());
    let out = run(&[
        &"-m",
        &m.base,
        &"-f",
        &text,
        &"-c",
        &c,
        &"--chunks",
        &chunks,
        &"-t",
        &"2",
        &"--kl-divergence-base",
        &base,
    ]);
    let stdout = stdout_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("replacing the existing file"), "{stderr}");
    assert!(stderr.contains("wrote"), "{stderr}");
    // The perplexity output is still there.
    let ppl_base_run = num(field(&stdout, "Final estimate: PPL = ", "PPL ="));
    assert!(stdout.lines().any(|l| l.starts_with("perplexity: ")), "{stdout}");
    // 24-byte header, the tokens, 15 records of 16 + 2·259 bytes per chunk; no temporary file.
    let size = std::fs::metadata(&base).unwrap().len() as usize;
    assert_eq!(
        size,
        24 + 4 * CHUNKS * N_CTX + CHUNKS * POSITIONS * (16 + 2 * tomoe::model::random::N_VOCAB)
    );
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        2,
        "text.txt and base.kld only"
    );

    // A model with other weights: far from the base. The tolerance is small enough to tell a
    // wrong KL: far below the value, and below its difference from the reverse KL(Q ‖ base).
    let (far, tol) = check_against_hand(&m.base, &base, &m.other);
    assert!(far.mean_kld > 20.0 * tol, "{} vs {tol}", far.mean_kld);
    assert!(
        (far.mean_reverse_kld - far.mean_kld).abs() > 3.0 * tol,
        "reverse KL {}",
        far.mean_reverse_kld
    );
    // The base run printed the same base perplexity.
    assert!(
        (ppl_base_run - far.ppl_base).abs() < 5e-5 + 1e-9 * far.ppl_base,
        "{ppl_base_run} vs {}",
        far.ppl_base
    );

    // The base quantized: close to it, with the same top token at most positions but not all.
    let (near, tol) = check_against_hand(&m.base, &base, &m.quantized);
    assert!(
        near.same_top > near.count / 2 && near.same_top < near.count,
        "{}/{}",
        near.same_top,
        near.count
    );
    assert!(
        near.mean_kld > 5.0 * tol && near.mean_kld < far.mean_kld,
        "{} vs {tol}",
        near.mean_kld
    );

    // --chunks limits the comparison.
    let out = run(&[
        &"-m",
        &m.other,
        &"--kl-divergence",
        &"--kl-divergence-base",
        &base,
        &"-t",
        &"2",
        &"--chunks",
        &"1",
    ]);
    let stdout = stdout_of(&out);
    assert!(
        field(&stdout, "kl-divergence: ", "same top").ends_with(&format!("/{POSITIONS}")),
        "{stdout}"
    );

    // The base against itself: KLD ≈ 0 (within the encoding's error), same top 100 %.
    let out = run(&[
        &"-m",
        &m.base,
        &"--kl-divergence",
        &"--kl-divergence-base",
        &base,
        &"-t",
        &"2",
    ]);
    let stdout = stdout_of(&out);
    let own = num(field(&stdout, "Mean    KLD:", "KLD:"));
    assert!(own.abs() <= 2.0 * EPS, "{own}\n{stdout}");
    let n = CHUNKS * POSITIONS;
    assert_eq!(field(&stdout, "kl-divergence: ", "same top"), format!("{n}/{n}"));
    assert_eq!(num(field(&stdout, "Same top p:", "p:")), 100.0);
    // The same perplexity, and no difference at all.
    assert_eq!(
        field(&stdout, "kl-divergence: ", "PPL(Q)"),
        field(&stdout, "kl-divergence: ", "PPL(base)")
    );
    assert_eq!(num(field(&stdout, "Mean PPL(Q)-PPL(base) ", ":")), 0.0, "{stdout}");
}

#[test]
fn bad_base_files_and_flags_are_clear_errors() {
    let dir = TempDir::new("errors");
    let model_a = models().base;
    let text = dir.0.join("text.txt");
    std::fs::write(&text, TEXT).unwrap();
    let base = dir.0.join("a.kld");
    let (c, chunks) = (N_CTX.to_string(), CHUNKS.to_string());
    stdout_of(&run(&[
        &"-m",
        &model_a,
        &"-f",
        &text,
        &"-c",
        &c,
        &"--chunks",
        &chunks,
        &"-t",
        &"2",
        &"--kl-divergence-base",
        &base,
    ]));
    let good = std::fs::read(&base).unwrap();
    let kld = |base: &Path, model: &Path| {
        run(&[
            &"-m",
            &model,
            &"--kl-divergence",
            &"--kl-divergence-base",
            &base,
            &"-t",
            &"2",
        ])
    };

    // Truncated (by one record and a half, and inside the header): the size is checked first.
    let cut = dir.0.join("cut.kld");
    std::fs::write(&cut, &good[..good.len() - 800]).unwrap();
    let e = error_of(&kld(&cut, &model_a));
    assert!(e.contains("cut.kld") && e.contains("truncated"), "{e}");
    std::fs::write(&cut, &good[..20]).unwrap();
    assert!(error_of(&kld(&cut, &model_a)).contains("truncated inside the 24-byte header"));
    // A file of another kind (the model itself), and one that does not exist.
    let e = error_of(&kld(&model_a, &model_a));
    assert!(e.contains("not a KL-divergence base file"), "{e}");
    let e = error_of(&kld(&dir.0.join("missing.kld"), &model_a));
    assert!(e.contains("missing.kld"), "{e}");
    // Huge dimensions in the header: a size mismatch, not an allocation.
    let mut huge = good.clone();
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&cut, &huge).unwrap();
    assert!(error_of(&kld(&cut, &model_a)).contains("truncated"));
    // A corrupt record (its argmax field pointing at a token not coded as the top one).
    let rec0 = 24 + 4 * CHUNKS * N_CTX;
    let mut bad = good.clone();
    let argmax = u32::from_le_bytes(bad[rec0 + 12..rec0 + 16].try_into().unwrap());
    bad[rec0 + 12..rec0 + 16].copy_from_slice(&((argmax + 1) % tomoe::model::random::N_VOCAB as u32).to_le_bytes());
    std::fs::write(&cut, &bad).unwrap();
    let e = error_of(&kld(&cut, &model_a));
    assert!(e.contains("chunk 1, position 16: corrupt record"), "{e}");

    // Another vocabulary: SmolLM2's 49152 tokens against the tiny model's 259.
    let smol = common::model_path(common::RealModel::SmolLm2);
    let e = error_of(&kld(&base, &smol));
    assert!(e.contains("vocabulary of 49152 tokens") && e.contains("259"), "{e}");

    // The base file must not replace the model or the text.
    let before = std::fs::read(&model_a).unwrap();
    let out = run(&[
        &"-m",
        &model_a,
        &"-f",
        &text,
        &"-c",
        &c,
        &"--chunks",
        &"1",
        &"--kl-divergence-base",
        &model_a,
    ]);
    assert!(error_of(&out).contains("is the model"));
    assert_eq!(std::fs::read(&model_a).unwrap(), before);
    let out = run(&[
        &"-m",
        &model_a,
        &"-f",
        &text,
        &"-c",
        &c,
        &"--chunks",
        &"1",
        &"--kl-divergence-base",
        &text,
    ]);
    assert!(error_of(&out).contains("is the text file"));
    assert_eq!(std::fs::read_to_string(&text).unwrap(), TEXT);

    // Flags: --kl-divergence needs the base file and takes no text; plain perplexity needs -f.
    for args in [
        vec!["-m", "x.gguf", "--kl-divergence"],
        vec![
            "-m",
            "x.gguf",
            "--kl-divergence",
            "--kl-divergence-base",
            "b.kld",
            "-f",
            "t.txt",
        ],
        vec!["-m", "x.gguf", "--kl-divergence-base", "b.kld"],
    ] {
        let out = tomoe_run().arg("perplexity").args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
