//! `tomoe-run bench` and `tomoe-run perplexity` output, on the real SmolLM2 file: llama-bench's
//! table and its JSON / CSV records (one per thread count and test, mean ± sample standard
//! deviation over the repetitions), bad flags refused, and llama-perplexity's per-chunk values
//! and final estimate equal to the library's and to a hand computation.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use tomoe::engine::perplexity::{log_softmax_at, n_chunks, score_chunk, PerplexityState};
use tomoe::engine::{Context, ContextParams, Model};

fn tomoe_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tomoe-run"))
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "tomoe-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// A directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tomoe-cli-bench-{}-{name}", std::process::id()));
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

/// The SmolLM2 file under a name with a quote, a backslash and a comma (JSON and CSV must
/// escape it).
fn oddly_named_model(dir: &TempDir) -> PathBuf {
    let link = dir.0.join("we\"ird\\name,1.gguf");
    std::os::unix::fs::symlink(common::model_path(common::RealModel::SmolLm2), &link).unwrap();
    link
}

/// The tests, in llama-bench's order, of `-t 1,2 -p 16 -n 4`.
const EXPECTED: [(usize, &str); 4] = [(1, "pp16"), (1, "tg4"), (2, "pp16"), (2, "tg4")];

fn bench(model: &Path, format: &str) -> String {
    let out = tomoe_run()
        .args(["bench", "-m"])
        .arg(model)
        .args(["-p", "16", "-n", "4", "-r", "2", "-t", "1,2", "-o", format])
        .output()
        .unwrap();
    stdout_of(&out)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let ss: f64 = v.iter().map(|x| (x - mean) * (x - mean)).sum();
    (mean, (ss / (n - 1.0)).sqrt())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn bench_markdown_table() {
    let model = common::model_path(common::RealModel::SmolLm2);
    let stdout = bench(&model, "md");
    let lines: Vec<&str> = stdout.lines().collect();
    let cells = |l: &str| -> Vec<String> {
        let l = l.trim();
        assert!(l.starts_with('|') && l.ends_with('|'), "not a table line: {l}");
        l[1..l.len() - 1].split('|').map(|c| c.trim().to_string()).collect()
    };
    assert_eq!(
        cells(lines[0]),
        [
            "model",
            "size",
            "params",
            "backend",
            "threads",
            "test",
            "t/s",
            "GB/s",
            "MiB/token"
        ]
    );
    assert!(cells(lines[1])
        .iter()
        .all(|c| c.chars().all(|ch| ch == '-' || ch == ':')));
    let rows: Vec<Vec<String>> = lines[2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| cells(l))
        .collect();
    assert_eq!(rows.len(), EXPECTED.len(), "{stdout}");
    for (row, &(threads, test)) in rows.iter().zip(&EXPECTED) {
        assert_eq!(row.len(), 9);
        assert_eq!(row[0], "llama 135M Q4_1");
        assert!(row[1].ends_with(" MiB") && row[1][..row[1].len() - 4].parse::<f64>().unwrap() > 50.0);
        assert!(row[2].ends_with(" M") && row[2][..row[2].len() - 2].parse::<f64>().unwrap() > 100.0);
        assert!(row[3].starts_with("CPU"), "{}", row[3]);
        assert_eq!(row[4].parse::<usize>().unwrap(), threads);
        assert_eq!(row[5], test);
        let (avg, sd) = row[6].split_once(" ± ").expect("t/s as mean ± sd");
        let (avg, sd): (f64, f64) = (avg.parse().unwrap(), sd.parse().unwrap());
        assert!(avg > 0.0 && sd >= 0.0, "{}", row[6]);
        if test.starts_with("tg") {
            let gbs: f64 = row[7].parse().unwrap();
            let mib: f64 = row[8].parse().unwrap();
            assert!(gbs > 0.0 && mib > 50.0 && mib < 100.0, "{row:?}");
            // GB/s = t/s × bytes per token (both as printed, so to their rounding).
            let want = avg * mib * 1048576.0 / 1e9;
            assert!((gbs - want).abs() <= 0.01 + 1e-3 * want, "{row:?}");
        } else {
            assert_eq!((row[7].as_str(), row[8].as_str()), ("-", "-"));
        }
    }
    assert!(stdout.contains("MiB of copies for decoding"), "{stdout}");
    // The peak resident set holds at least the copies SmolLM2 decodes from (or the mapped file).
    let peak = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak resident memory: "))
        .and_then(|v| v.strip_suffix(" MiB"))
        .unwrap_or_else(|| panic!("no peak memory line: {stdout}"));
    let peak: f64 = peak.parse().unwrap();
    assert!(peak > 80.0 && peak < 2048.0, "{stdout}");
}

/// Per record of a JSON array (checked and flattened by python3's json module): file name,
/// n_threads, n_prompt, n_gen, avg_ts, stddev_ts, samples_ts, gb_per_s (None for pp).
type JsonRecord = (String, usize, usize, usize, f64, f64, Vec<f64>, Option<f64>);

fn parse_json_records(json: &str, lines: bool) -> Vec<JsonRecord> {
    let script = r#"
import json, sys
text = sys.stdin.read()
if sys.argv[1] == "lines":
    records = [json.loads(l) for l in text.splitlines()]
else:
    records = json.loads(text)
assert isinstance(records, list)
for r in records:
    assert isinstance(r["samples_ts"], list) and isinstance(r["samples_ns"], list)
    assert all(isinstance(r[k], int) for k in ("model_size", "model_n_params", "n_threads", "n_prompt", "n_gen", "avg_ns"))
    print("\t".join([json.dumps(r["model_filename"]), str(r["n_threads"]), str(r["n_prompt"]), str(r["n_gen"]),
        repr(r["avg_ts"]), repr(r["stddev_ts"]), ";".join(repr(x) for x in r["samples_ts"]),
        repr(r["gb_per_s"]), r["model_type"], r["kernels"]]))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, if lines { "lines" } else { "array" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not valid JSON ({}):\n{json}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 10, "{l}");
            assert_eq!(f[8], "llama 135M Q4_1");
            assert!(!f[9].is_empty());
            // json.dumps re-escapes the name: undo the two escapes it can hold here.
            let name = f[0][1..f[0].len() - 1].replace("\\\"", "\"").replace("\\\\", "\\");
            let samples = f[6].split(';').map(|x| x.parse().unwrap()).collect();
            let gbs = (f[7] != "None").then(|| f[7].parse().unwrap());
            (
                name,
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                samples,
                gbs,
            )
        })
        .collect()
}

#[test]
fn bench_json_records() {
    let dir = TempDir::new("json");
    let model = oddly_named_model(&dir);
    let records = parse_json_records(&bench(&model, "json"), false);
    assert_eq!(records.len(), EXPECTED.len());
    for (r, &(threads, test)) in records.iter().zip(&EXPECTED) {
        let (name, n_threads, n_prompt, n_gen, avg, sd, samples, gbs) = r;
        assert_eq!(Path::new(name), model.as_path());
        assert_eq!(*n_threads, threads);
        let want = if test.starts_with("pp") { (16, 0) } else { (0, 4) };
        assert_eq!((*n_prompt, *n_gen), want);
        assert_eq!(samples.len(), 2, "-r 2: two samples");
        assert!(samples.iter().all(|&x| x > 0.0));
        let (m, s) = mean_sd(samples);
        assert!(close(*avg, m) && close(*sd, s) && *sd >= 0.0, "{r:?}");
        assert_eq!(gbs.is_some(), test.starts_with("tg"));
        assert!(gbs.is_none_or(|g| g > 0.0));
    }
    // One object per line.
    let out = tomoe_run()
        .args(["bench", "-m"])
        .arg(&model)
        .args(["-p", "8", "-n", "2", "-r", "1", "-t", "1", "-o", "jsonl"])
        .output()
        .unwrap();
    let records = parse_json_records(&stdout_of(&out), true);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].5, 0.0, "one repetition: sd 0");
}

/// Splits one CSV line (RFC 4180 quoting).
fn csv_split(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    assert!(!quoted, "unterminated quote: {line}");
    fields.push(cur);
    fields
}

#[test]
fn bench_csv_records() {
    let dir = TempDir::new("csv");
    let model = oddly_named_model(&dir);
    let stdout = bench(&model, "csv");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1 + EXPECTED.len(), "{stdout}");
    let header = csv_split(lines[0]);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column"))
    };
    let (file, threads, n_prompt, n_gen) = (col("model_filename"), col("n_threads"), col("n_prompt"), col("n_gen"));
    let (avg, sd, gbs, mib) = (col("avg_ts"), col("stddev_ts"), col("gb_per_s"), col("mib_per_token"));
    assert!(!header.iter().any(|h| h.starts_with("samples_")), "no arrays in CSV");
    for (line, &(t, test)) in lines[1..].iter().zip(&EXPECTED) {
        let f = csv_split(line);
        assert_eq!(f.len(), header.len(), "{line}");
        assert_eq!(Path::new(&f[file]), model.as_path());
        assert_eq!(f[threads].parse::<usize>().unwrap(), t);
        let tg = test.starts_with("tg");
        let want = if tg { ("0", "4") } else { ("16", "0") };
        assert_eq!((f[n_prompt].as_str(), f[n_gen].as_str()), want);
        assert!(f[avg].parse::<f64>().unwrap() > 0.0);
        assert!(f[sd].parse::<f64>().unwrap() >= 0.0);
        if tg {
            assert!(f[gbs].parse::<f64>().unwrap() > 0.0);
            assert!(f[mib].parse::<f64>().unwrap() > 50.0);
        } else {
            assert_eq!((f[gbs].as_str(), f[mib].as_str()), ("", ""));
        }
    }
}

#[test]
fn bench_refuses_bad_lists() {
    let model = common::model_path(common::RealModel::SmolLm2);
    for (args, needle) in [
        (&["-r", "0"][..], "--repetitions"),
        (&["-t", "1,0"][..], "`0`"),
        (&["-p", "16,x"][..], "`x`"),
        (&["-n", "1.5"][..], "`1.5`"),
        (&["-p", "0", "-n", "0"][..], "nothing to run"),
        (&["-o", "xml"][..], "xml"),
    ] {
        let out = tomoe_run()
            .args(["bench", "-m"])
            .arg(&model)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn perplexity_per_chunk_and_final_estimate() {
    const N_CTX: usize = 128;
    const CHUNKS: usize = 3;
    let path = common::model_path(common::RealModel::SmolLm2);
    let full = common::austen("persuasion.txt");
    let end = full.char_indices().nth(6000).map_or(full.len(), |(i, _)| i);
    let text = &full[..end];
    let dir = TempDir::new("ppl");
    let file = dir.0.join("slice.txt");
    std::fs::write(&file, text).unwrap();
    let out = tomoe_run()
        .args(["perplexity", "-m"])
        .arg(&path)
        .arg("-f")
        .arg(&file)
        .args(["-c", &N_CTX.to_string(), "--chunks", &CHUNKS.to_string(), "-t", "2"])
        .output()
        .unwrap();
    let stdout = stdout_of(&out);
    let lines: Vec<&str> = stdout.lines().collect();

    // "[1]116.0050,[2]38.7692,[3]34.7605,"
    let running: Vec<&str> = lines[0].split(',').filter(|s| !s.is_empty()).collect();
    assert_eq!(running.len(), CHUNKS, "{stdout}");
    for (i, r) in running.iter().enumerate() {
        let prefix = format!("[{}]", i + 1);
        assert!(r.starts_with(&prefix), "{r}");
    }
    let fin = lines
        .iter()
        .find_map(|l| l.strip_prefix("Final estimate: PPL = "))
        .expect("a Final estimate line");
    let (ppl, err) = fin.split_once(" +/- ").expect("PPL +/- error");
    assert_eq!(ppl.split('.').nth(1).map(str::len), Some(4), "{fin}");
    assert_eq!(err.split('.').nth(1).map(str::len), Some(5), "{fin}");
    let err: f64 = err.parse().unwrap();
    // The summary line other scripts read is still there.
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("perplexity: {ppl} ("))),
        "{stdout}"
    );

    // The library, same settings: the running values and the final one, to the printed digits.
    let model = Arc::new(Model::load(&path).unwrap());
    let params = ContextParams {
        n_ctx: N_CTX,
        n_threads: 2,
        n_batch: 512,
    };
    let mut ctx = Context::new(model.clone(), params).unwrap();
    let tok = model.tokenizer();
    let tokens = tok.encode(text, true, false);
    assert_eq!(
        n_chunks(tokens.len(), N_CTX, Some(CHUNKS)),
        CHUNKS,
        "the slice is long enough"
    );
    let bos = if tok.adds_bos() { tok.bos() } else { None };
    let (mut chunk, mut logits, mut state) = (Vec::new(), Vec::new(), PerplexityState::default());
    for (i, r) in running.iter().enumerate() {
        score_chunk(&mut ctx, &tokens, i, bos, &mut chunk, &mut logits, &mut state).unwrap();
        assert_eq!(*r, format!("[{}]{:.4}", i + 1, state.ppl()));
    }
    assert_eq!(ppl, format!("{:.4}", state.ppl()));
    assert_eq!(state.count, CHUNKS * (N_CTX / 2 - 1));

    // The error by hand, from every scored token's nll: ppl · sd(nll) / sqrt(n).
    let nv = model.config().n_vocab;
    let mut nll = Vec::new();
    for i in 0..CHUNKS {
        let mut c = tokens[i * N_CTX..(i + 1) * N_CTX].to_vec();
        if let Some(b) = bos {
            c[0] = b;
        }
        ctx.clear();
        ctx.eval_all_logits(&c, &mut logits).unwrap();
        for j in N_CTX / 2..N_CTX - 1 {
            nll.push(-log_softmax_at(&logits[j * nv..(j + 1) * nv], c[j + 1] as usize));
        }
    }
    assert_eq!(nll.len(), state.count);
    let n = nll.len() as f64;
    let (mean, sd) = mean_sd(&nll);
    assert!(close(mean, state.nll_sum / n));
    let want = mean.exp() * sd / n.sqrt();
    assert!(want > 0.0);
    assert!(
        (err - want).abs() <= 0.5e-5 + 1e-9 * want,
        "printed {err}, by hand {want}"
    );
    assert!(
        close(state.ppl_error().unwrap(), want),
        "{:?} vs {want}",
        state.ppl_error()
    );
}
