//! `tomoe-run serve`: the OpenAI-compatible HTTP server (`tomoe::server`, feature `server`).

use crate::{load, LoadArgs, ModelArgs, Res, SamplingArgs};
use clap::Args;
use std::path::PathBuf;
use tomoe::engine::ContextParams;
use tomoe::server::{Server, ServerConfig};

/// llama.cpp's default seed, which there means "a random seed": requests that give no seed then
/// each draw one.
const RANDOM_SEED: u64 = 0xFFFF_FFFF;

#[derive(Args)]
pub struct ServeArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests generated at once (also -np), each on a context of -c tokens; more wait in a queue.
    /// The threads (-t) are divided among them.
    #[arg(long = "parallel", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// The model's id in /v1/models and in answers (default: the file's name).
    #[arg(long)]
    pub alias: Option<String>,
    /// Chat template: a Jinja file, or a built-in name (chatml, llama3, gemma, llama2); default:
    /// the model's own.
    #[arg(long = "chat-template", value_name = "FILE|NAME")]
    pub chat_template: Option<String>,
    #[command(flatten)]
    pub model_args: ModelArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Defaults for the sampling fields a request leaves out. -s: the seed of requests that give
    /// none (the default, 4294967295, draws a new seed for each).
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ServeArgs) -> Res<()> {
    let model = load(&a.model, &a.load)?;
    if let (Some(w), None) = (model.chat_template_warning(), &a.chat_template) {
        eprintln!("tomoe-run serve: warning: {w}");
    }
    let n_parallel = a.parallel as usize;
    let threads = a
        .model_args
        .threads
        .unwrap_or_else(|| ContextParams::default().n_threads);
    // Decoding threads spin: more threads than cores in all slots together is very slow.
    let per_slot = (threads / n_parallel).max(1);
    let id = a.alias.unwrap_or_else(|| {
        a.model
            .file_name()
            .map_or_else(|| a.model.display().to_string(), |n| n.to_string_lossy().into_owned())
    });
    let s = &a.sampling;
    let config = ServerConfig {
        model_id: id.clone(),
        n_parallel,
        context: ContextParams {
            n_ctx: a.model_args.ctx_size,
            n_threads: per_slot,
            n_batch: a.model_args.batch_size,
        },
        cache_types: a.model_args.cache_types(),
        sampling: crate::sampler_params(s),
        seed: (s.seed != RANDOM_SEED).then_some(s.seed),
        chat_template: a.chat_template.as_deref().map(crate::template_source).transpose()?,
        ..ServerConfig::new(id.clone())
    };
    let server = Server::new(model, config)?;
    if !server.has_own_template() && a.chat_template.is_none() {
        eprintln!("tomoe-run serve: the model has no chat template; chat uses ChatML");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tomoe-http")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let types = a.model_args.cache_types();
        eprintln!(
            "tomoe-run serve: model {id}, {n_parallel} slot(s) of {} tokens, {per_slot} thread(s) each, \
             KV cache {}/{} ({:.1} MiB in all)",
            a.model_args.ctx_size,
            types.k,
            types.v,
            server.kv_bytes() as f64 / (1 << 20) as f64
        );
        eprintln!("tomoe-run serve: listening on http://{addr}");
        server.serve(listener).await?;
        Ok(())
    })
}
