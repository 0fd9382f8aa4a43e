//! `tomoe-run`: chat with, generate from, score and benchmark GGUF models on the CPU.
//! Thin: parses llama.cpp-style flags and drives the library.

mod bench;
mod chat;
mod info;
mod perplexity;
#[cfg(feature = "server")]
mod serve;

use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tomoe::chat::{Sampler, SamplerParams};
use tomoe::engine::{CacheTypes, Context, ContextParams, KvType, LoadOptions, Model};

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
        tomoe-run info MODEL\n\
        tomoe-run serve -m MODEL --port 8080   OpenAI-compatible HTTP server (feature `server`)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    generate: chat::GenerateArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Perplexity of a text file, by llama-perplexity's method (non-overlapping chunks of -c
    /// tokens, the second half of each scored).
    Perplexity(perplexity::PerplexityArgs),
    /// Prompt-processing and generation speed (tokens/s) and effective weight bandwidth.
    Bench(bench::BenchArgs),
    /// Metadata and tensor table of a GGUF file.
    Info {
        /// The GGUF file.
        model: PathBuf,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /// /v1/models, /health).
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Threads for compute (default: one per physical core, big cores only on a hybrid CPU).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context length in tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Tokens per batch in prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub batch_size: usize,
    /// KV cache type of the keys: f32 or f16 (llama.cpp's -ctk).
    #[arg(long = "cache-type-k", alias = "ctk", value_name = "TYPE", default_value_t = CacheTypes::default().k)]
    pub cache_type_k: KvType,
    /// KV cache type of the values: f32 or f16 (llama.cpp's -ctv).
    #[arg(long = "cache-type-v", alias = "ctv", value_name = "TYPE", default_value_t = CacheTypes::default().v)]
    pub cache_type_v: KvType,
}

impl ModelArgs {
    pub fn cache_types(&self) -> CacheTypes {
        CacheTypes { k: self.cache_type_k, v: self.cache_type_v }
    }
}

/// How the model is loaded (every subcommand that loads one takes these).
#[derive(Args)]
pub struct LoadArgs {
    /// Kernel set of the matrix products: scalar, avx2, avxvnni or avx512-vnni (x86-64), neon or
    /// neon-dotprod (aarch64), those this CPU runs (default: TOMOE_KERNELS, else the best).
    /// Traces a numerical difference to the kernels.
    #[arg(long, value_name = "NAME", value_parser = kernel_set)]
    pub kernels: Option<String>,
    /// Run from the mapped file alone: no copies of the weights at load (about half the weight
    /// memory, slower decoding; also TOMOE_NO_COPIES=1).
    #[arg(long = "no-copies")]
    pub no_copies: bool,
}

/// A `--kernels` value: the name of a kernel set this CPU runs.
fn kernel_set(name: &str) -> Result<String, String> {
    let names: Vec<&str> = tomoe_quant::dispatch::available_sets().iter().map(|s| s.name).collect();
    if names.contains(&name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "no kernel set `{name}` on this CPU (available: {})",
            names.join(", ")
        ))
    }
}

#[derive(Args)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k (0: off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1: off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0: off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the repetition penalty looks back at.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (the same seed gives the same output).
    #[arg(short = 's', long, default_value_t = 0xFFFF_FFFF)]
    pub seed: u64,
}

/// llama.cpp's multi-letter short flags, which clap cannot declare, as their long forms.
fn llama_style_args() -> Vec<std::ffi::OsString> {
    std::env::args_os()
        .map(|a| match a.to_str() {
            Some("-sys") => "--system".into(),
            Some("-np") => "--parallel".into(),
            _ => a,
        })
        .collect()
}

fn main() {
    let cli = Cli::parse_from(llama_style_args());
    let result = match cli.command {
        Some(Command::Perplexity(a)) => perplexity::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Info { model }) => info::run(&model),
        #[cfg(feature = "server")]
        Some(Command::Serve(a)) => serve::run(a),
        None => chat::run(cli.generate),
    };
    if let Err(e) = result {
        // A closed pipe (`tomoe-run info m.gguf | head`) is not an error worth reporting.
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return;
        }
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub fn load(path: &Path, a: &LoadArgs) -> Res<Arc<Model>> {
    // The flags override the environment's defaults.
    let mut opts = LoadOptions::default();
    if let Some(name) = &a.kernels {
        opts.kernels = Some(name.clone());
    }
    if a.no_copies {
        opts.copies = false;
    }
    let model = Model::load_with(path, &opts).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    Ok(Arc::new(model))
}

pub fn context(model: &Arc<Model>, a: &ModelArgs) -> Res<Context> {
    let mut p = ContextParams {
        n_ctx: a.ctx_size,
        n_batch: a.batch_size,
        ..ContextParams::default()
    };
    if let Some(t) = a.threads {
        p.n_threads = t;
    }
    Ok(Context::with_cache_types(model.clone(), p, a.cache_types())?)
}

pub fn sampler_params(s: &SamplingArgs) -> SamplerParams {
    SamplerParams {
        temperature: s.temp,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        seed: s.seed,
    }
}

pub fn sampler(model: &Model, s: &SamplingArgs) -> Sampler {
    Sampler::new(sampler_params(s), model.config().n_vocab)
}

/// The Jinja source that `--chat-template` names: a built-in template, else a file.
pub fn template_source(arg: &str) -> Res<String> {
    match tomoe::chat::ChatTemplate::builtin(arg) {
        Some(s) => Ok(s.to_string()),
        None => std::fs::read_to_string(Path::new(arg)).map_err(|e| {
            let names: Vec<&str> = tomoe::chat::ChatTemplate::builtin_names().collect();
            format!(
                "--chat-template {arg}: not a built-in template ({}) and not a readable file: {e}",
                names.join(", ")
            )
            .into()
        }),
    }
}
