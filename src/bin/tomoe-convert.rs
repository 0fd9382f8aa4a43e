//! tomoe-convert: dense model (HF folder or GGUF) + calibration text → ToMoE (or baseline) MoE GGUF.
//!
//! tomoe-convert -m MODEL --calib FILE [--calib FILE ...] -o OUT.gguf [options] (clap; the long
//! flags --input and --output stay). See `--help` and docs/CONVERSION.md.

use candle_core::Device;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tomoe::convert::converted::{
    calibrate, decode, mean_pairwise_jaccard, measure_active, ConvertedModel, Routing,
};
use tomoe::convert::data::{read_documents, Calibration};
use tomoe::convert::dense::DenseModel;
use tomoe::convert::train::{train_until, CheckpointPlan, MaskInit, TrainParams};
use tomoe::convert::{baselines, eval, export, gguf_in, hf, tokenize, ConvertError, Result};

/// Convert a dense llama/qwen2 model into a ToMoE Mixture-of-Experts GGUF.
#[derive(Parser)]
#[command(
    name = "tomoe-convert",
    version,
    // A flag given again replaces its value (scripts add overrides to a base command line);
    // --calib still accumulates.
    args_override_self = true,
    about = "Convert a dense llama/qwen2 model into a ToMoE Mixture-of-Experts GGUF (docs/CONVERSION.md).",
    long_about = "Convert a dense llama/qwen2 model into a ToMoE Mixture-of-Experts GGUF: trains routers and \
        expert masks against the frozen model on calibration text, then exports one quantized file.\n\n\
        tomoe-convert -m MODEL --calib TEXT -o OUT.gguf --p 0.5 --outtype q8_0\n\n\
        See docs/CONVERSION.md."
)]
struct Cli {
    /// Hugging Face folder (config.json, *.safetensors, tokenizer.json) or dense .gguf.
    #[arg(short = 'm', long = "input", visible_alias = "model", value_name = "PATH")]
    input: PathBuf,
    /// Calibration text (.txt) or JSONL (strings or {"text": ...}); repeatable.
    #[arg(long, value_name = "FILE", required = true)]
    calib: Vec<PathBuf>,
    /// Output GGUF (written atomically).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// Conversion method.
    #[arg(long, default_value = "tomoe", value_parser = ["tomoe", "static-prune", "moefication"])]
    method: String,
    /// Active fraction of block parameters, in (0, 1].
    #[arg(long = "p", default_value_t = TrainParams::default().p)]
    p: f64,
    /// Experts per MLP layer.
    #[arg(long, default_value_t = TrainParams::default().experts)]
    experts: usize,
    /// Training steps.
    #[arg(long, default_value_t = TrainParams::default().steps)]
    steps: u64,
    /// Tokens per training sequence.
    #[arg(long = "seq-len", default_value_t = TrainParams::default().seq_len)]
    seq_len: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = TrainParams::default().lr)]
    lr: f64,
    /// Seed of everything random.
    #[arg(short = 's', long, default_value_t = TrainParams::default().seed)]
    seed: u64,
    /// Output type: f32 | f16 | q8_0 | q4_0 | q4_1 | q4_k | q6_k.
    #[arg(long, default_value = "f16")]
    outtype: String,
    /// importance: start every expert at static pruning's neurons with attention on; all-on: every
    /// mask on, random routers (the reference code).
    #[arg(long, default_value = "importance")]
    init: String,
    /// Convert only the MLP; attention stays dense.
    #[arg(long = "mlp-only")]
    mlp_only: bool,
    /// MLP-only conversion written as a plain llama MoE GGUF for llama.cpp.
    #[arg(long = "llama-cpp-compat")]
    compat: bool,
    /// Checkpoint file (safetensors + .json sidecar).
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Checkpoint period in steps.
    #[arg(long = "checkpoint-every", default_value_t = 50)]
    checkpoint_every: u64,
    /// Continue from --checkpoint if it exists.
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    /// Stop training after the step that ends past N seconds of training (a time budget; the rest
    /// of the conversion follows; with --checkpoint, a later --resume finishes the steps).
    #[arg(long = "train-seconds", value_name = "N")]
    train_seconds: Option<f64>,
    /// After converting, report perplexity on FILE (dense, converted, random routing).
    #[arg(long, value_name = "FILE")]
    eval: Option<PathBuf>,
    /// Perplexity window.
    #[arg(long = "eval-ctx", default_value_t = 512)]
    eval_ctx: usize,
    /// At most N windows (default all).
    #[arg(long = "eval-chunks", value_name = "N")]
    eval_chunks: Option<usize>,
    /// cpu | cuda | cuda:N (CUDA needs a build with --features cuda: scripts/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    device: String,
}

struct Args {
    input: PathBuf,
    calib: Vec<PathBuf>,
    output: PathBuf,
    method: String,
    tp: TrainParams,
    outtype: String,
    compat: bool,
    plan: CheckpointPlan,
    eval: Option<PathBuf>,
    eval_ctx: usize,
    eval_chunks: usize,
    device: String,
    train_seconds: Option<f64>,
}

/// The flags, checked beyond what clap checks.
fn args(c: Cli) -> Result<Args> {
    let bad = ConvertError::InvalidArg;
    if let Some(v) = c.train_seconds {
        if !(v > 0.0 && v.is_finite()) {
            return Err(bad(format!("--train-seconds {v} must be positive")));
        }
    }
    let tp = TrainParams {
        p: c.p,
        experts: c.experts,
        steps: c.steps,
        seq_len: c.seq_len,
        lr: c.lr,
        seed: c.seed,
        init: MaskInit::parse(&c.init)?,
        mlp_only: c.mlp_only || c.compat,
        ..TrainParams::default()
    };
    tp.validate()?;
    Ok(Args {
        input: c.input,
        calib: c.calib,
        output: c.output,
        method: c.method,
        tp,
        outtype: c.outtype,
        compat: c.compat,
        plan: CheckpointPlan { path: c.checkpoint, every: c.checkpoint_every, resume: c.resume },
        eval: c.eval,
        eval_ctx: c.eval_ctx,
        eval_chunks: c.eval_chunks.unwrap_or(usize::MAX),
        device: c.device,
        train_seconds: c.train_seconds,
    })
}

fn load(input: &Path, dev: &Device) -> Result<DenseModel> {
    if input.is_dir() {
        hf::load_hf(input, dev)
    } else {
        gguf_in::load_gguf(input, dev)
    }
}

/// `cpu`, `cuda` or `cuda:N`.
fn parse_device(s: &str) -> Result<Device> {
    let cuda = |n: usize| {
        Device::new_cuda(n).map_err(|e| {
            ConvertError::InvalidArg(format!(
                "--device {s}: {e} (CUDA training needs a build with `--features cuda` and an NVIDIA GPU)"
            ))
        })
    };
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => Err(ConvertError::InvalidArg(format!(
                "--device {s}: expected cpu, cuda or cuda:N"
            ))),
        },
    }
}

fn run(a: Args) -> Result<()> {
    let outtype = export::parse_outtype(&a.outtype)?;
    // Fail in seconds on an unwritable output folder, not after training.
    export::check_output_path(&a.output)?;
    let t0 = std::time::Instant::now();
    let dev = parse_device(&a.device)?;
    let model = load(&a.input, &dev)?;
    let tok = tokenize::tokenizer_from_meta(&model.tokenizer_meta)?;
    let mut docs = Vec::new();
    for f in &a.calib {
        docs.extend(read_documents(f)?);
    }
    let encode = |t: &str| tok.encode(t, true, false);
    let calib = Calibration::new(&docs, &encode, a.tp.seq_len, 0.05)?;
    eprintln!(
        "model {} ({:?}, {} layers, d {}, ffn {}), {} training / {} held-out tokens, device {}",
        model.name,
        model.config.arch,
        model.config.n_layers,
        model.config.d,
        model.config.m,
        calib.train.len(),
        calib.held_out.len(),
        device_name(&dev)
    );
    let held = calib.held_out_windows(a.tp.seq_len, 4);
    let cm: ConvertedModel = match a.method.as_str() {
        "tomoe" => {
            let pb = ProgressBar::new(a.tp.steps);
            pb.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            // Without a terminal the bar is hidden: log a line every 10 steps instead.
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let deadline = a
                .train_seconds
                .map(|s| std::time::Instant::now() + std::time::Duration::from_secs_f64(s));
            let mut rate = TrainRate::new(a.tp.seq_len);
            let (hn, done) =
                train_until(&model, &calib, &a.tp, &a.plan, deadline, &mut |step, s| {
                    rate.step_done(step);
                    let msg = format!(
                        "loss {:.3} kd {:.3} R_param {:.3} R_union {:.3} bal {:.3} active {:.3}{}",
                        s.loss,
                        s.kd,
                        s.r_param,
                        s.r_union,
                        s.balance,
                        s.ratio,
                        rate.tokens_per_s()
                            .map(|r| format!(" | {r:.0} tok/s"))
                            .unwrap_or_default()
                    );
                    pb.set_position(step + 1);
                    if !tty && (step % 10 == 0 || step + 1 == a.tp.steps) {
                        eprintln!(
                            "step {}/{} [{:.0} s] {msg}",
                            step + 1,
                            a.tp.steps,
                            t0.elapsed().as_secs_f64()
                        );
                    }
                    pb.set_message(msg);
                })?;
            pb.finish();
            eprintln!("{}", rate.summary(&a.device));
            if done < a.tp.steps {
                eprintln!(
                    "stopped training after {done} of {} steps: --train-seconds {} ran out",
                    a.tp.steps,
                    a.train_seconds.unwrap_or_default()
                );
            }
            let plain = decode(&model, &hn, 0.0, a.tp.p, a.tp.mlp_only)?;
            let plain_p = measure_active(&model, &plain, &held)?;
            let (cm, shift) = calibrate(&model, &hn, a.tp.p, a.tp.mlp_only, &held, 30)?;
            eprintln!(
                "deterministic active fraction: {plain_p:.4} at z+3>0, {:.4} after calibrating the cut-off (shift {shift:+.3}); target {}",
                cm.measured_p, a.tp.p
            );
            cm
        }
        "static-prune" => baselines::static_prune(
            &model,
            a.tp.p,
            &calib.leading_windows(a.tp.seq_len, 16),
            &held,
        )?,
        _ => baselines::moefication(
            &model,
            a.tp.p,
            a.tp.experts,
            &calib.leading_windows(a.tp.seq_len, 16),
            &held,
            a.tp.seed,
        )?,
    };
    let jac: Vec<String> = cm
        .layers
        .iter()
        .map(|l| format!("{:.3}", mean_pairwise_jaccard(l)))
        .collect();
    eprintln!(
        "active fraction (held-out): {:.4}; mean pairwise Jaccard of expert sets per layer: [{}]",
        cm.measured_p,
        jac.join(", ")
    );
    export::export(&model, &cm, outtype, a.compat, &a.output)?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.output.display(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(e) = &a.eval {
        let text = std::fs::read_to_string(e).map_err(|s| ConvertError::Io {
            path: e.clone(),
            source: s,
        })?;
        let toks = tok.encode(&text, true, false);
        // As llama-perplexity: a window starts with BOS only if the model adds one.
        let bos = if tok.adds_bos() { tok.bos() } else { None };
        let (ppl_d, _) = eval::perplexity(&model, None, &toks, a.eval_ctx, bos, a.eval_chunks)?;
        let (ppl_c, act) = eval::perplexity(
            &model,
            Some((&cm, Routing::Learned)),
            &toks,
            a.eval_ctx,
            bos,
            a.eval_chunks,
        )?;
        let (ppl_r, _) = eval::perplexity(
            &model,
            Some((&cm, Routing::Random(a.tp.seed))),
            &toks,
            a.eval_ctx,
            bos,
            a.eval_chunks,
        )?;
        println!(
            "eval {}: ppl dense {ppl_d:.2} | {} {ppl_c:.2} (active {act:.4}) | random routing {ppl_r:.2}",
            e.display(),
            cm.method.name()
        );
    }
    Ok(())
}

fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Training speed: tokens of the training sequences per second of training steps. The set-up
/// (hypernetwork, importance init) and the first step (GPU warm-up, kernel loading) are timed apart.
struct TrainRate {
    seq_len: usize,
    start: std::time::Instant,
    first: Option<(u64, std::time::Instant)>,
    last: Option<(u64, std::time::Instant)>,
}

impl TrainRate {
    fn new(seq_len: usize) -> TrainRate {
        TrainRate {
            seq_len,
            start: std::time::Instant::now(),
            first: None,
            last: None,
        }
    }

    fn step_done(&mut self, step: u64) {
        let now = std::time::Instant::now();
        self.first.get_or_insert((step, now));
        self.last = Some((step, now));
    }

    /// Over the steps after the first; None until two steps are done.
    fn tokens_per_s(&self) -> Option<f64> {
        let ((s0, t0), (s1, t1)) = (self.first?, self.last?);
        let secs = (t1 - t0).as_secs_f64();
        (s1 > s0 && secs > 0.0).then(|| (s1 - s0) as f64 * self.seq_len as f64 / secs)
    }

    fn summary(&self, device: &str) -> String {
        let Some(((s0, t0), (s1, _))) = self.first.zip(self.last) else {
            return "training: no step run".into();
        };
        let steps = s1 - s0 + 1;
        let secs = self
            .last
            .map_or(0.0, |(_, t)| (t - self.start).as_secs_f64());
        format!(
            "training: {steps} steps of {} tokens in {secs:.1} s on {device} (set-up and first step {:.2} s); {}",
            self.seq_len,
            (t0 - self.start).as_secs_f64(),
            match self.tokens_per_s() {
                Some(r) => format!("training tokens/s: {r:.1} (steps after the first)"),
                None => format!(
                    "training tokens/s: {:.1} (one step)",
                    self.seq_len as f64 / (t0 - self.start).as_secs_f64().max(1e-9)
                ),
            }
        )
    }
}

/// Calibration windows for the baselines' activation statistics (consecutive, from the training part).
fn main() -> ExitCode {
    match args(Cli::parse()) {
        Ok(a) => match run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tomoe-convert: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("tomoe-convert: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_flags_overrides_and_repeated_calibration_files() {
        let cli = Cli::try_parse_from([
            "tomoe-convert", "-m", "in.gguf", "--calib", "a.txt", "-o", "out.gguf", "--calib", "b.txt", "--p", "0.3",
            "--p", "0.7", "--resume", "--checkpoint", "ck",
        ])
        .unwrap();
        let a = args(cli).unwrap();
        assert_eq!((a.input.to_str(), a.output.to_str()), (Some("in.gguf"), Some("out.gguf")));
        assert_eq!(a.calib, [PathBuf::from("a.txt"), PathBuf::from("b.txt")]);
        assert_eq!(a.tp.p, 0.7);
        assert!(a.plan.resume);
        let long = Cli::try_parse_from(["tomoe-convert", "--input", "x", "--output", "y", "--calib", "c"]).unwrap();
        assert_eq!(args(long).unwrap().tp.steps, TrainParams::default().steps);
        assert!(Cli::try_parse_from(["tomoe-convert", "-m", "x", "-o", "y"]).is_err(), "--calib is required");
        let no_ck = Cli::try_parse_from(["tomoe-convert", "-m", "x", "-o", "y", "--calib", "c", "--resume"]);
        assert!(no_ck.is_err(), "--resume needs --checkpoint");
        let bad = Cli::try_parse_from(["tomoe-convert", "-m", "x", "-o", "y", "--calib", "c", "--train-seconds", "0"]);
        assert!(args(bad.unwrap()).is_err());
    }
}
