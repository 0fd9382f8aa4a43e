//! Interactive chat and one-shot generation.

use crate::{context, load, sampler, ModelArgs, Res, SamplingArgs};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tomoe::chat::{ChatMessage, Sampler};
use tomoe::engine::Context;
use tomoe::model::Model;
use tomoe::tokenizer::StreamDecoder;

#[derive(Args)]
pub struct GenerateArgs {
    /// The GGUF model (or use -m).
    #[arg(value_name = "MODEL", required_unless_present = "model_flag")]
    pub model: Option<PathBuf>,
    /// The GGUF model.
    #[arg(short = 'm', long = "model", id = "model_flag", conflicts_with = "model")]
    pub model_flag: Option<PathBuf>,
    /// Prompt for one-shot generation (no chat template is applied).
    #[arg(short = 'p', long)]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    pub file: Option<PathBuf>,
    /// Tokens to generate (-1: until end of generation or the context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    pub n_predict: i64,
    /// System message for chat.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub model_args: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Set by Ctrl-C; generation loops poll it and stop the current answer.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(a: GenerateArgs) -> Res<()> {
    let path = a
        .model
        .or(a.model_flag)
        .ok_or("no model given: tomoe-run MODEL.gguf (see --help)")?;
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
        let generated = stream(
            ctx,
            sampler,
            &tokens[in_context.len()..],
            n_predict,
            &mut TeeStdout { buf: &mut reply },
        )?;
        println!();
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("[stopped]");
        }
        in_context = tokens;
        in_context.extend(generated);
        if template.is_some() {
            messages.push(ChatMessage::new(
                "assistant",
                String::from_utf8_lossy(&reply).into_owned(),
            ));
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
