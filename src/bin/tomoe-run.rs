//! `tomoe-run`: chat with, generate from, score and benchmark GGUF models on the CPU.
//! Thin: parses llama.cpp-style flags and drives the library.

use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tomoe::chat::{ChatMessage, Sampler, SamplerParams};
use tomoe::engine::perplexity::{n_chunks, score_chunk, PerplexityState};
use tomoe::engine::{Context, ContextParams};
use tomoe::gguf::{GgufFile, Value};
use tomoe::model::Model;
use tomoe::tokenizer::StreamDecoder;

#[derive(Parser)]
#[command(
    name = "tomoe-run",
    version,
    about = "Run GGUF language models on the CPU (llama, qwen2, gemma3).",
    long_about = "Run GGUF language models on the CPU (llama, qwen2, gemma3).\n\n\
        tomoe-run MODEL.gguf                 interactive chat (chat template from the file)\n\
        tomoe-run MODEL.gguf -p TEXT -n N    one-shot generation to stdout\n\
        tomoe-run perplexity -m MODEL -f TEXT -c 512\n\
        tomoe-run bench -m MODEL -t 2\n\
        tomoe-run info MODEL",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    generate: GenerateArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity of a text file, by llama-perplexity's method (non-overlapping chunks of -c
    /// tokens, the second half of each scored).
    Perplexity(PerplexityArgs),
    /// Prompt-processing and generation speed (tokens/s) and effective weight bandwidth.
    Bench(BenchArgs),
    /// Metadata and tensor table of a GGUF file.
    Info {
        /// The GGUF file.
        model: PathBuf,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Threads for compute (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Context length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx_size: usize,
    /// Tokens per batch in prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
}

#[derive(Args)]
struct GenerateArgs {
    /// The GGUF model (or use -m).
    #[arg(value_name = "MODEL", required_unless_present = "model_flag")]
    model: Option<PathBuf>,
    /// The GGUF model.
    #[arg(short = 'm', long = "model", id = "model_flag", conflicts_with = "model")]
    model_flag: Option<PathBuf>,
    /// Prompt for one-shot generation (no chat template is applied).
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// Tokens to generate (-1: until end of generation or the context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// System message for chat.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    model_args: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    temp: f32,
    /// Top-k (0: off).
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    /// Top-p (1: off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0: off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back at.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (the same seed gives the same output).
    #[arg(short = 's', long, default_value_t = 0xFFFF_FFFF)]
    seed: u64,
}

#[derive(Args)]
struct PerplexityArgs {
    /// The GGUF model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text file to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    #[command(flatten)]
    model_args: ModelArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// The GGUF model.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// Prompt tokens to process.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions (the best is reported).
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
    #[command(flatten)]
    model_args: ModelArgs,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Perplexity(a)) => perplexity(a),
        Some(Command::Bench(a)) => bench(a),
        Some(Command::Info { model }) => info(&model),
        None => generate(cli.generate),
    };
    if let Err(e) = result {
        // A closed pipe (`tomoe-run info m.gguf | head`) is not an error worth reporting.
        if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
            return;
        }
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn load(path: &Path) -> Res<Arc<Model>> {
    let model = Model::load(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    Ok(Arc::new(model))
}

fn context(model: &Arc<Model>, a: &ModelArgs) -> Res<Context> {
    let mut p = ContextParams { n_ctx: a.ctx_size, n_batch: a.batch_size, ..ContextParams::default() };
    if let Some(t) = a.threads {
        p.n_threads = t;
    }
    Ok(Context::new(model.clone(), p)?)
}

fn sampler(model: &Model, s: &SamplingArgs) -> Sampler {
    let p = SamplerParams {
        temperature: s.temp,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed: s.seed,
    };
    Sampler::new(p, model.config().n_vocab)
}

/// Set by Ctrl-C; generation loops poll it and stop the current answer.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn generate(a: GenerateArgs) -> Res<()> {
    let path = a.model.or(a.model_flag).ok_or("no model given: tomoe-run MODEL.gguf (see --help)")?;
    let model = load(&path)?;
    let mut ctx = context(&model, &a.model_args)?;
    let mut sampler = sampler(&model, &a.sampling);
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?),
        (None, None) => None,
    };
    let interactive = prompt.is_none();
    ctrlc::set_handler(move || {
        if interactive {
            INTERRUPTED.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    })?;
    match prompt {
        Some(p) => {
            let tokens = model.tokenizer().encode(&p, true, true);
            let mut out = std::io::stdout().lock();
            let n = stream(&mut ctx, &mut sampler, &tokens, a.n_predict, &mut out)?.len();
            writeln!(out)?;
            out.flush()?;
            eprintln!("[{n} tokens generated]");
            Ok(())
        }
        None => chat(&model, &mut ctx, &mut sampler, a.system, a.n_predict),
    }
}

/// Evaluates `prompt` (appended to what the context holds) and streams up to `n_predict`
/// sampled tokens to `out`; returns the tokens generated, all of which are in the context.
fn stream(
    ctx: &mut Context,
    sampler: &mut Sampler,
    prompt: &[u32],
    n_predict: i64,
    out: &mut impl Write,
) -> Res<Vec<u32>> {
    let model = ctx.model().clone();
    let tok = model.tokenizer();
    let n_ctx = ctx.params().n_ctx;
    if ctx.pos() + prompt.len() >= n_ctx {
        return Err(format!(
            "the prompt needs {} tokens but the context holds {n_ctx} ({} in use): use a larger -c or a shorter prompt",
            prompt.len(),
            ctx.pos()
        )
        .into());
    }
    let mut history: Vec<u32> = prompt.to_vec();
    let mut logits = ctx.eval(prompt)?.to_vec();
    let mut decoder = StreamDecoder::new();
    let mut generated = Vec::new();
    while (n_predict < 0 || (generated.len() as i64) < n_predict) && !INTERRUPTED.load(Ordering::SeqCst) {
        let id = sampler.sample(&mut logits, &history);
        if tok.is_eog(id) {
            break;
        }
        out.write_all(decoder.push(tok, id).as_bytes())?;
        out.flush()?;
        if ctx.pos() + 1 >= n_ctx {
            eprintln!("\n[context full: {n_ctx} tokens; use a larger -c]");
            break;
        }
        logits.copy_from_slice(ctx.eval(&[id])?);
        history.push(id);
        generated.push(id);
    }
    out.write_all(decoder.flush().as_bytes())?;
    out.flush()?;
    Ok(generated)
}

/// Interactive multi-turn chat. Each turn renders the whole conversation with the template and
/// evaluates only the tokens past the prefix the context already holds (all of it again when
/// the re-rendered conversation does not extend that prefix).
fn chat(
    model: &Arc<Model>,
    ctx: &mut Context,
    sampler: &mut Sampler,
    system: Option<String>,
    n_predict: i64,
) -> Res<()> {
    let template = model.chat_template();
    if template.is_none() {
        eprintln!("note: this model has no chat template: each line you type is continued as plain text.");
    }
    eprintln!("Type a message and press Enter. Ctrl-C stops an answer; Ctrl-D (end of input) quits.");
    let mut messages: Vec<ChatMessage> = system.into_iter().map(|s| ChatMessage::new("system", s)).collect();
    // The tokens the context holds, in order.
    let mut in_context: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let user = line.trim_end_matches(['\n', '\r']);
        if user.is_empty() {
            continue;
        }
        INTERRUPTED.store(false, Ordering::SeqCst);
        let tokens = match template {
            Some(t) => {
                messages.push(ChatMessage::new("user", user));
                model.tokenizer().encode(&t.render(&messages, true)?, true, true)
            }
            None => {
                let mut t = in_context.clone();
                t.extend(model.tokenizer().encode(user, in_context.is_empty(), false));
                t
            }
        };
        if !tokens.starts_with(&in_context) {
            ctx.clear();
            in_context.clear();
        }
        let mut reply = Vec::new();
        let generated =
            stream(ctx, sampler, &tokens[in_context.len()..], n_predict, &mut TeeStdout { buf: &mut reply })?;
        println!();
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("[stopped]");
        }
        in_context = tokens;
        in_context.extend(generated);
        if template.is_some() {
            messages.push(ChatMessage::new("assistant", String::from_utf8_lossy(&reply).into_owned()));
        }
    }
}

/// Writes to stdout and keeps a copy (the assistant's reply for the conversation).
struct TeeStdout<'a> {
    buf: &'a mut Vec<u8>,
}

impl Write for TeeStdout<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        std::io::stdout().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

fn perplexity(a: PerplexityArgs) -> Res<()> {
    let model = load(&a.model)?;
    let text = std::fs::read(&a.file).map_err(|e| format!("cannot read {}: {e}", a.file.display()))?;
    let text = String::from_utf8(text).map_err(|e| format!("{} is not valid UTF-8: {e}", a.file.display()))?;
    let tok = model.tokenizer();
    let tokens = tok.encode(&text, true, false);
    let n_ctx = a.model_args.ctx_size;
    if n_ctx < 4 {
        return Err("-c must be at least 4 tokens".into());
    }
    let chunks = n_chunks(tokens.len(), n_ctx, a.chunks);
    if chunks == 0 {
        return Err(
            format!("{} has {} tokens: fewer than one chunk of -c {n_ctx}", a.file.display(), tokens.len()).into()
        );
    }
    let mut ctx = context(&model, &a.model_args)?;
    let bos = if tok.adds_bos() { tok.bos() } else { None };
    eprintln!("{} tokens, {chunks} chunks of {n_ctx}", tokens.len());
    let (mut chunk, mut logits, mut state) = (Vec::new(), Vec::new(), PerplexityState::default());
    let start = Instant::now();
    for i in 0..chunks {
        score_chunk(&mut ctx, &tokens, i, bos, &mut chunk, &mut logits, &mut state)?;
        let done = i + 1;
        let eta = start.elapsed().as_secs_f64() / done as f64 * (chunks - done) as f64;
        let width = 30 * done / chunks;
        eprint!(
            "\r[{}{}] {done}/{chunks}  ppl {:.4}  ETA {:.0}s ",
            "#".repeat(width),
            " ".repeat(30 - width),
            state.ppl(),
            eta
        );
    }
    eprintln!();
    println!(
        "perplexity: {:.4} ({} tokens scored, {chunks} chunks of {n_ctx}, {:.1}s)",
        state.ppl(),
        state.count,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Res<()> {
    let model = load(&a.model)?;
    let mut args = a.model_args;
    args.ctx_size = args.ctx_size.max(a.n_prompt + a.n_gen + 1);
    let mut ctx = context(&model, &args)?;
    let n_vocab = model.config().n_vocab as u32;
    // Deterministic pseudo-random tokens: the speed does not depend on the text.
    let prompt: Vec<u32> = (0..a.n_prompt as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab).collect();
    let weight_bytes: u64 = model.gguf().tensors().iter().map(|t| t.n_bytes).sum();
    let (mut best_pp, mut best_tg) = (f64::MAX, f64::MAX);
    for _ in 0..a.repetitions.max(1) {
        ctx.clear();
        let t = Instant::now();
        ctx.eval(&prompt)?;
        best_pp = best_pp.min(t.elapsed().as_secs_f64());
        ctx.clear();
        ctx.eval(&prompt[..1])?;
        let t = Instant::now();
        let mut id = prompt[0];
        for _ in 0..a.n_gen {
            let logits = ctx.eval(&[id])?;
            id = argmax(logits);
        }
        best_tg = best_tg.min(t.elapsed().as_secs_f64());
    }
    let pp = a.n_prompt as f64 / best_pp;
    let tg = a.n_gen as f64 / best_tg;
    println!(
        "model: {} ({}, {:.1} MiB of weights; {:.1} MiB of copies for decoding)",
        a.model.display(),
        model.config().arch.name(),
        weight_bytes as f64 / 1048576.0,
        model.copies_bytes() as f64 / 1048576.0
    );
    println!("threads: {}  kernels: {}", ctx.params().n_threads, tomoe_quant::kernel_name());
    println!("pp{}: {:.1} tokens/s", a.n_prompt, pp);
    // Bytes one token reads, with the experts weighted by how this run routed its tokens.
    let usage = ctx.expert_counts();
    let bytes_per_token = model.weights().bytes_per_token(usage);
    println!(
        "tg{}: {:.1} tokens/s  ({:.2} GB/s of weights read, {:.1} MiB per token)",
        a.n_gen,
        tg,
        tg * bytes_per_token as f64 / 1e9,
        bytes_per_token as f64 / 1048576.0
    );
    if usage.iter().any(|l| !l.is_empty()) {
        let n_expert = usage.iter().map(Vec::len).max().unwrap_or(0);
        let mut total = vec![0u64; n_expert];
        for l in usage {
            l.iter().enumerate().for_each(|(e, &k)| total[e] += k);
        }
        let all: u64 = total.iter().sum::<u64>().max(1);
        let shares: Vec<String> = total.iter().map(|&k| format!("{:.1}%", 100.0 * k as f64 / all as f64)).collect();
        println!("expert usage (tokens routed, all layers): [{}]", shares.join(", "));
        for (il, l) in usage.iter().enumerate() {
            let n: u64 = l.iter().sum::<u64>().max(1);
            let row: Vec<String> = l.iter().map(|&k| format!("{:>3.0}", 100.0 * k as f64 / n as f64)).collect();
            println!("  layer {il:>2} %: {}", row.join(" "));
        }
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The experts of a ToMoE or llama.cpp MoE model: per layer, union width and expert sizes, and
/// the parameters a token uses.
fn moe_info(out: &mut impl Write, model: &Model) -> Res<()> {
    let c = model.config();
    let w = model.weights();
    if let Some(tc) = &c.tomoe {
        writeln!(
            out,
            "ToMoE: {} experts per layer, one per token; V mask {}, scale 1/sqrt({})",
            tc.n_expert,
            if tc.output_mask { "also on the attention output" } else { "on V" },
            if tc.scale_pruned { "kept dims" } else { "head dim" }
        )?;
        writeln!(out, "  layer  union  expert rows (min/mean/max)  q/k dims per head  V mask")?;
        let (mut block, mut dense) = (0f64, 0f64);
        let (d, hd) = (c.d_model as f64, c.head_dim as f64);
        let heads = (c.n_head + c.n_head_kv) as f64;
        for (il, l) in w.layers.iter().enumerate() {
            let Some(m) = &l.moe else { continue };
            let sizes: Vec<usize> = m.expert_rows.iter().map(Vec::len).collect();
            let mean = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
            writeln!(
                out,
                "  {il:>5}  {:>5}  {:>5} / {:>7.1} / {:<5}         {:>3} of {:<3}     {}",
                m.union,
                sizes.iter().min().unwrap_or(&0),
                mean,
                sizes.iter().max().unwrap_or(&0),
                m.dq,
                c.head_dim,
                if m.vmask.is_some() { "dynamic" } else { "none" }
            )?;
            // Attention q,k at the kept dims and v,o counted whole (the V mask is per token);
            // MLP: three rows per neuron of the mean expert.
            block += d * heads * m.dq as f64 + d * heads * hd + 3.0 * d * mean;
            dense += 2.0 * d * heads * hd + 3.0 * d * c.n_ff as f64;
        }
        writeln!(
            out,
            "block parameters per token (mean expert, V unmasked): {:.1} M of {:.1} M dense ({:.3})",
            block / 1e6,
            dense / 1e6,
            block / dense
        )?;
        if let Some(p) = tc.active_fraction {
            writeln!(out, "active fraction measured by the converter on held-out text (with the V mask): {p:.4}")?;
        }
    } else if let Some(n) = c.n_expert {
        writeln!(out, "MoE (llama.cpp layout): {n} experts per layer, {} used per token", c.n_expert_used)?;
        if let Some(x) = w.layers.iter().find_map(|l| l.experts.as_ref()) {
            writeln!(out, "  expert width {} neurons (dense {})", x.width, c.n_ff)?;
        }
    }
    Ok(())
}

fn info(path: &Path) -> Res<()> {
    let mut out = std::io::stdout().lock();
    let f = GgufFile::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    writeln!(out, "file: {}  (GGUF v{}, alignment {})", path.display(), f.version(), f.alignment())?;
    writeln!(out, "metadata ({} keys):", f.metadata().len())?;
    for (k, v) in f.metadata() {
        writeln!(out, "  {k} = {}", show_value(v))?;
    }
    let total: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    writeln!(out, "tensors ({}, {:.1} MiB):", f.tensors().len(), total as f64 / 1048576.0)?;
    for t in f.tensors() {
        let dims: Vec<String> = t.dims.iter().map(|d| d.to_string()).collect();
        writeln!(out, "  {:<40} {:>6} [{}]  {} bytes", t.name, t.ty.name(), dims.join(", "), t.n_bytes)?;
    }
    match Model::from_gguf(f) {
        Err(e) => writeln!(out, "model: cannot be run by tomoe: {e}")?,
        Ok(model) => {
            let c = model.config();
            writeln!(
                out,
                "model: {} layers, d={}, ffn={}, heads {}/{} (kv), head dim {}, vocab {}, context {}",
                c.n_layer, c.d_model, c.n_ff, c.n_head, c.n_head_kv, c.head_dim, c.n_vocab, c.context_length
            )?;
            moe_info(&mut out, &model)?;
        }
    }
    Ok(())
}

fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let s: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
            format!("{s:?}")
        }
        Value::Array(a) => {
            let head: Vec<String> = a.iter().take(5).map(show_value).collect();
            format!("[{}{}] ({} items)", head.join(", "), if a.len() > 5 { ", ..." } else { "" }, a.len())
        }
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
    }
}
