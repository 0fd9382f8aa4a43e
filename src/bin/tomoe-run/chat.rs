//! Interactive chat and one-shot generation.

use crate::{context, load, sampler, template_source, LoadArgs, ModelArgs, Res, SamplingArgs};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use tomoe::chat::{ChatMessage, ChatTemplate};
use tomoe::generate::{chat_tokens, GenerateOptions, Generation, Generator, StopReason};
use tomoe::engine::Model;

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
    /// System message for chat (also -sys).
    #[arg(long)]
    pub system: Option<String>,
    /// Chat template: a Jinja file, or a built-in name (chatml, llama3, gemma, llama2); default:
    /// the model's own.
    #[arg(long = "chat-template", value_name = "FILE|NAME")]
    pub chat_template: Option<String>,
    /// Print speed statistics after a one-shot generation too (chat always prints them).
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub model_args: ModelArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Set by Ctrl-C during an answer: the answer stops there.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Whether an answer is being generated (else Ctrl-C at the prompt quits).
static GENERATING: AtomicBool = AtomicBool::new(false);

pub fn run(a: GenerateArgs) -> Res<()> {
    let path = a
        .model
        .or(a.model_flag)
        .ok_or("no model given: tomoe-run MODEL.gguf (see --help)")?;
    let model = load(&path, &a.load)?;
    let template = match &a.chat_template {
        Some(t) => Some(
            ChatTemplate::with_file_tokens(model.gguf(), &template_source(t)?)
                .map_err(|e| format!("--chat-template {t}: {e}"))?,
        ),
        None => None,
    };
    let ctx = context(&model, &a.model_args)?;
    let mut gen = Generator::new(ctx, sampler(&model, &a.sampling));
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?),
        (None, None) => None,
    };
    let max_tokens = usize::try_from(a.n_predict).ok();
    let interactive = prompt.is_none();
    ctrlc::set_handler(move || {
        if interactive && GENERATING.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
        } else if interactive {
            eprintln!();
            std::process::exit(0);
        } else {
            std::process::exit(130);
        }
    })?;
    match prompt {
        Some(p) => {
            let tokens = model.tokenizer().encode_prompt(&p, true);
            let mut out = std::io::stdout().lock();
            let opts = GenerateOptions {
                max_tokens,
                stop: Vec::new(),
            };
            let mut failed = None;
            let g = gen.generate(&tokens, &opts, |piece| {
                failed = out.write_all(piece.as_bytes()).and_then(|()| out.flush()).err();
                failed.is_none()
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            writeln!(out)?;
            out.flush()?;
            if g.stop == StopReason::ContextFull {
                eprintln!("[context full: {} tokens; use a larger -c]", gen.n_ctx());
            }
            if a.verbose {
                eprintln!("{}", stats(&g));
            }
            Ok(())
        }
        None => {
            let template = template.as_ref().or_else(|| model.chat_template());
            if a.chat_template.is_none() {
                if let Some(w) = model.chat_template_warning() {
                    eprintln!("warning: {w} (choose one with --chat-template)");
                }
            }
            let mut chat = Chat::new(&model, gen, template, a.system, max_tokens);
            chat.run()
        }
    }
}

/// One line of speed statistics.
fn stats(g: &Generation) -> String {
    format!(
        "[{} tokens, {:.1} tokens/s | prompt: {} tokens ({} reused), {:.1} tokens/s]",
        g.tokens.len(),
        g.gen_tokens_per_s(),
        g.n_prompt,
        g.n_reused,
        g.prompt_tokens_per_s()
    )
}

/// An interactive conversation. With a template, each turn renders the whole conversation and
/// the generator evaluates only what follows the prefix its context holds; without one, each
/// line continues the text so far.
struct Chat<'a> {
    model: &'a Model,
    gen: Generator,
    template: Option<&'a ChatTemplate>,
    /// The conversation; the system message, if any, first.
    messages: Vec<ChatMessage>,
    n_system: usize,
    /// Without a template: the text's tokens so far.
    text: Vec<u32>,
    max_tokens: Option<usize>,
}

impl<'a> Chat<'a> {
    fn new(
        model: &'a Model,
        gen: Generator,
        template: Option<&'a ChatTemplate>,
        system: Option<String>,
        max_tokens: Option<usize>,
    ) -> Self {
        let messages: Vec<ChatMessage> = system.into_iter().map(|s| ChatMessage::new("system", s)).collect();
        let n_system = messages.len();
        Chat {
            model,
            gen,
            template,
            messages,
            n_system,
            text: Vec::new(),
            max_tokens,
        }
    }

    fn run(&mut self) -> Res<()> {
        if self.template.is_none() {
            eprintln!("note: this model has no chat template: each line you type is continued as plain text.");
        }
        eprintln!("Type a message and press Enter. Ctrl-C stops an answer, or quits at the prompt.");
        eprintln!("/clear forgets the conversation; /bye (or Ctrl-D) quits.");
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
            match user.trim() {
                "" => continue,
                "/bye" | "/exit" | "/quit" => return Ok(()),
                "/clear" => {
                    self.messages.truncate(self.n_system);
                    self.text.clear();
                    self.gen.clear();
                    eprintln!("[conversation cleared]");
                    continue;
                }
                _ => {}
            }
            INTERRUPTED.store(false, Ordering::SeqCst);
            GENERATING.store(true, Ordering::SeqCst);
            let result = self.answer(user);
            GENERATING.store(false, Ordering::SeqCst);
            result?;
        }
    }

    /// Answers one user line, printing the reply as it comes and the speed after it.
    fn answer(&mut self, user: &str) -> Res<()> {
        let n_ctx = self.gen.n_ctx();
        // Room kept free for the answer when old turns are dropped to fit a prompt.
        let room = (n_ctx / 4).max(1);
        match self.template {
            Some(_) => self.messages.push(ChatMessage::new("user", user)),
            None => {
                let at_start = self.text.is_empty();
                self.text.extend(self.model.tokenizer().encode(user, at_start, false));
            }
        }
        let mut reply = String::new();
        let mut n_generated = 0usize;
        let mut last: Option<Generation> = None;
        let mut out = std::io::stdout();
        loop {
            let Some(prompt) = self.fit_prompt(&reply, room)? else {
                if reply.is_empty() {
                    eprintln!("[the message does not fit in the context of {n_ctx} tokens: use a larger -c or a shorter message]");
                    if self.template.is_some() {
                        self.messages.pop();
                    }
                    return Ok(());
                }
                eprintln!("\n[the answer fills the context of {n_ctx} tokens: stopped]");
                break;
            };
            let opts = GenerateOptions {
                max_tokens: self.max_tokens.map(|m| m - n_generated),
                stop: Vec::new(),
            };
            let mut failed = None;
            let g = self.gen.generate(&prompt, &opts, |piece| {
                reply.push_str(piece);
                failed = out.write_all(piece.as_bytes()).and_then(|()| out.flush()).err();
                failed.is_none() && !INTERRUPTED.load(Ordering::SeqCst)
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            n_generated += g.tokens.len();
            let stop = g.stop;
            if self.template.is_none() {
                self.text = prompt;
                self.text.extend_from_slice(&g.tokens);
            }
            last = Some(g);
            if stop != StopReason::ContextFull {
                break;
            }
            // The context is full: older turns make room and the answer goes on.
        }
        println!();
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("[stopped]");
        }
        if self.template.is_some() {
            self.messages.push(ChatMessage::new("assistant", reply));
        }
        if let Some(g) = last {
            eprintln!("{}", stats(&g));
        }
        Ok(())
    }

    /// The prompt for the conversation plus the answer so far, with the oldest turns (never the
    /// system message or the current question) dropped until it leaves `room` tokens free.
    /// `None` when even the shortest such prompt leaves no token free.
    fn fit_prompt(&mut self, reply: &str, room: usize) -> Res<Option<Vec<u32>>> {
        let n_ctx = self.gen.n_ctx();
        let tok = self.model.tokenizer();
        let Some(template) = self.template else {
            // Plain text: keep the newest half of the context (the BOS stays first).
            if self.text.len() + room > n_ctx {
                let bos = tok.bos().filter(|&b| tok.adds_bos() && self.text.first() == Some(&b));
                let keep = n_ctx / 2;
                let cut = self.text.len().saturating_sub(keep);
                self.text
                    .drain(usize::from(bos.is_some())..cut.max(usize::from(bos.is_some())));
                eprint!("\n[context full: the oldest text was dropped]");
            }
            return Ok((self.text.len() < n_ctx).then(|| self.text.clone()));
        };
        let reply_tokens = tok.encode(reply, false, false);
        loop {
            let mut prompt = chat_tokens(tok, template, &self.messages, true)?;
            prompt.extend_from_slice(&reply_tokens);
            // The oldest droppable turn: after the system message, before the current question.
            let droppable = self.messages.len() > self.n_system + 1;
            if prompt.len() + room <= n_ctx || (!droppable && prompt.len() < n_ctx) {
                return Ok(Some(prompt));
            }
            if !droppable {
                return Ok(None);
            }
            // Drop a whole exchange where there is one, so the conversation still alternates.
            let n = if self.messages.len() > self.n_system + 2 { 2 } else { 1 };
            self.messages.drain(self.n_system..self.n_system + n);
            eprint!("\n[context full: the oldest turn was dropped]");
        }
    }
}
