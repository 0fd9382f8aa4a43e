//! Text generation: a prompt's tokens in, a sampled stream of text out, with the stop
//! conditions a chat front end needs (end of generation, a token budget, stop strings, a full
//! context, the caller's cancel). One [`Generator`] owns one [`Context`] and reuses the longest
//! prefix it already holds, so a chat's next turn evaluates only its new tokens. `tomoe-run`,
//! the C ABI and the HTTP server all generate through it (the C ABI's token-by-token calls
//! too, through [`Generator::eval`] and [`Generator::sample`]).
//!
//! ```
//! use std::sync::Arc;
//! use tomoe::chat::{ChatMessage, Sampler, SamplerParams};
//! use tomoe::engine::{Context, ContextParams, Model};
//! use tomoe::generate::{chat_tokens, GenerateOptions, Generator};
//!
//! # let dir = std::env::temp_dir().join(format!("tomoe-generate-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("model.gguf");
//! # let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
//! #     {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
//! # let meta = [("tokenizer.chat_template", tomoe::gguf::Value::String(chatml.into()))];
//! # tomoe::model::random::write_model(&path, "llama", tomoe::gguf::QuantType::Q8_0, 1, &meta)?;
//! // `path`: a GGUF chat model (here a random one from `tomoe::model::random`).
//! let model = Arc::new(Model::load(&path)?);
//! let ctx = Context::new(model.clone(), ContextParams::default())?;
//! let sampler = Sampler::new(SamplerParams::default(), model.config().n_vocab);
//! let mut gen = Generator::new(ctx, sampler);
//! let messages = [ChatMessage::new("user", "What is the capital of France?")];
//! let template = model.chat_template().expect("a chat model");
//! let prompt = chat_tokens(model.tokenizer(), template, &messages, true)?;
//! let out = gen.generate(&prompt, &GenerateOptions::max_tokens(64), |piece| {
//!     print!("{piece}");
//!     true // false would stop the answer here
//! })?;
//! eprintln!("\n{} tokens, {:.1} tokens/s", out.tokens.len(), out.gen_tokens_per_s());
//! # assert!(out.tokens.len() <= 64);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::{Duration, Instant};

use crate::chat::{ChatError, ChatMessage, ChatTemplate, Sampler};
use crate::engine::{Context, EngineError};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What one generation may do.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Most tokens to generate; `None`: until another condition stops it.
    pub max_tokens: Option<usize>,
    /// Stop as soon as the text contains one of these; the stop string itself is not returned.
    pub stop: Vec<String>,
}

impl GenerateOptions {
    /// At most `n` tokens, no stop strings.
    pub fn max_tokens(n: usize) -> Self {
        GenerateOptions { max_tokens: Some(n), stop: Vec::new() }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (not returned, not kept in the context).
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The text reached one of the stop strings.
    StopString,
    /// The context has no room for another token.
    ContextFull,
    /// The callback returned false.
    Cancelled,
}

impl StopReason {
    /// OpenAI's `finish_reason`: "stop" or "length" (a cancelled generation reports "stop").
    pub fn finish_reason(self) -> &'static str {
        match self {
            StopReason::MaxTokens | StopReason::ContextFull => "length",
            _ => "stop",
        }
    }
}

/// What one generation did.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The prompt's tokens.
    pub n_prompt: usize,
    /// Of those, the ones already in the context (not evaluated again).
    pub n_reused: usize,
    /// The generated tokens (the end-of-generation token excluded).
    pub tokens: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    pub stop: StopReason,
    /// Time spent evaluating the prompt's new tokens.
    pub prompt_time: Duration,
    /// Time spent generating.
    pub gen_time: Duration,
}

impl Generation {
    /// Prompt tokens evaluated per second (the reused ones not counted).
    pub fn prompt_tokens_per_s(&self) -> f64 {
        (self.n_prompt - self.n_reused) as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Generated tokens per second.
    pub fn gen_tokens_per_s(&self) -> f64 {
        self.tokens.len() as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

/// Why a generation could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {n_prompt} tokens but the context holds {n_ctx}: use a larger -c or a shorter prompt"
    )]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A context, its sampler and the tokens the context holds.
pub struct Generator {
    ctx: Context,
    sampler: Sampler,
    /// The tokens whose keys and values the context holds, in order.
    tokens: Vec<u32>,
    /// The logits after the last of `tokens`, as the engine produced them; empty when the
    /// context holds no tokens.
    logits: Vec<f32>,
    /// The copy of `logits` the sampler modifies.
    scratch: Vec<f32>,
}

impl Generator {
    /// A generator over an empty context: [`Context::new`]'s, or one the caller cleared.
    pub fn new(mut ctx: Context, sampler: Sampler) -> Self {
        ctx.clear();
        Generator { ctx, sampler, tokens: Vec::new(), logits: Vec::new(), scratch: Vec::new() }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
    /// The tokens the context holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// The context's size in tokens.
    pub fn n_ctx(&self) -> usize {
        self.ctx.params().n_ctx
    }
    /// Replaces the sampler (new settings or a new seed).
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.sampler = sampler;
    }
    /// Forgets everything the context holds.
    pub fn clear(&mut self) {
        self.ctx.clear();
        self.tokens.clear();
        self.logits.clear();
    }

    /// The logits after the last token the context holds, as the engine produced them
    /// (sampling does not change them); empty when the context holds no tokens.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Appends `tokens` to what the context holds and evaluates them, for callers that drive
    /// the context token by token (the C ABI's `tomoe_context_eval`). A failed evaluation
    /// leaves the context as it was.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<(), GenerateError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let logits = self.ctx.eval(tokens)?;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Samples a token from [`Generator::logits`] (which stay unchanged) with the context's
    /// tokens as the sampler's history, without adding it to the context; `None` when the
    /// context holds no tokens.
    pub fn sample(&mut self) -> Option<u32> {
        if self.logits.is_empty() {
            return None;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.logits);
        Some(self.sampler.sample(&mut self.scratch, &self.tokens))
    }

    /// Makes the context hold exactly `prompt`, evaluating only what follows the prefix it
    /// already holds (at least the last token, for its logits); returns the tokens reused.
    fn load_prompt(&mut self, prompt: &[u32]) -> Result<usize, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let n_ctx = self.n_ctx();
        if prompt.len() >= n_ctx {
            return Err(GenerateError::PromptTooLong { n_prompt: prompt.len(), n_ctx });
        }
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let reused = common.min(prompt.len() - 1);
        self.ctx.truncate(reused);
        self.tokens.truncate(reused);
        // A failed evaluation leaves the context as it was: at `reused` tokens.
        let logits = self.ctx.eval(&prompt[reused..])?;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.tokens.extend_from_slice(&prompt[reused..]);
        Ok(reused)
    }

    /// Evaluates `prompt` (the whole sequence the context should hold, e.g. a rendered
    /// conversation) and samples from it until a stop condition. `on_text` receives each piece
    /// of text as it is completed (possibly empty, once per token) and returns false to stop.
    /// The generated tokens stay in the context, except the last one sampled.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, GenerateError> {
        self.generate_tokens(prompt, opts, |_, piece| on_text(piece))
    }

    /// [`Generator::generate`] with each generated token's id beside its piece of text; the
    /// text released after the last token (held back by an incomplete character or a possible
    /// stop string) comes with `None`, and the callback's answer to it is ignored.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(Option<u32>, &str) -> bool,
    ) -> Result<Generation, GenerateError> {
        let t0 = Instant::now();
        let n_reused = self.load_prompt(prompt)?;
        let prompt_time = t0.elapsed();
        let t1 = Instant::now();
        let model = self.ctx.model().clone();
        let tok = model.tokenizer();
        let mut decoder = StreamDecoder::new();
        let mut stops = StopMatcher::new(&opts.stop);
        let mut tokens = Vec::new();
        let stop = loop {
            if opts.max_tokens == Some(0) {
                break StopReason::MaxTokens;
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.logits);
            let id = self.sampler.sample(&mut self.scratch, &self.tokens);
            if tok.is_eog(id) {
                break StopReason::EndOfGeneration;
            }
            tokens.push(id);
            let (piece, hit) = stops.push(&decoder.push(tok, id));
            if !on_token(Some(id), &piece) {
                break StopReason::Cancelled;
            }
            if hit {
                break StopReason::StopString;
            }
            if opts.max_tokens.is_some_and(|m| tokens.len() >= m) {
                break StopReason::MaxTokens;
            }
            if self.ctx.pos() >= self.n_ctx() {
                break StopReason::ContextFull;
            }
            let logits = self.ctx.eval(&[id])?;
            self.logits.clear();
            self.logits.extend_from_slice(logits);
            self.tokens.push(id);
        };
        if stop != StopReason::StopString {
            let (rest, _) = stops.push(&decoder.flush());
            let rest = rest + &stops.finish();
            if !rest.is_empty() {
                on_token(None, &rest);
            }
        }
        Ok(Generation {
            n_prompt: prompt.len(),
            n_reused,
            tokens,
            text: stops.text,
            stop,
            prompt_time,
            gen_time: t1.elapsed(),
        })
    }
}

/// Finds stop strings in streamed text, holding back a tail that could still become one.
struct StopMatcher<'a> {
    stops: &'a [String],
    /// All text released so far.
    text: String,
    /// Text not yet released: a suffix that is a prefix of some stop string.
    held: String,
}

impl<'a> StopMatcher<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopMatcher { stops, text: String::new(), held: String::new() }
    }

    /// Adds `piece`; returns the text now safe to release and whether a stop string was found
    /// (then the text is cut before it and nothing more is released).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let found = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = found {
            let out = self.held[..at].to_string();
            self.held.clear();
            self.text.push_str(&out);
            return (out, true);
        }
        // Hold back the longest suffix of `held` that is a proper prefix of a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let out: String = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        self.text.push_str(&out);
        (out, false)
    }

    /// Releases what is held back (the stream ended without a stop string).
    fn finish(&mut self) -> String {
        let out = std::mem::take(&mut self.held);
        self.text.push_str(&out);
        out
    }
}

/// The tokens of a conversation rendered with `template`, starting with exactly one BOS where
/// the model has one (see [`Tokenizer::encode_prompt`]).
pub fn chat_tokens(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ChatError> {
    Ok(tokenizer.encode_prompt(&template.render(messages, add_generation_prompt)?, true))
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (piece, hit) = m.push(p);
            out.push(piece);
            if hit {
                return (out, true, m.text);
            }
        }
        out.push(m.finish());
        (out, false, m.text)
    }

    #[test]
    fn stop_strings_split_over_pieces_are_found_and_cut() {
        let (out, hit, text) = run(&["\nUser:"], &["Hello", " there\n", "Us", "er: hi"]);
        assert!(hit);
        assert_eq!(text, "Hello there");
        assert_eq!(out, ["Hello", " there", "", ""]);
    }

    #[test]
    fn a_false_start_is_released_once_it_cannot_match() {
        let (out, hit, text) = run(&["STOP"], &["a S", "TO", "x", "y"]);
        assert!(!hit);
        assert_eq!(text, "a STOxy");
        assert_eq!(out.concat(), "a STOxy");
        assert_eq!(out[0], "a ");
    }

    #[test]
    fn no_stop_strings_release_everything_at_once() {
        let (out, hit, text) = run(&[], &["é", "x"]);
        assert!(!hit);
        assert_eq!(out, ["é", "x", ""]);
        assert_eq!(text, "éx");
    }

    #[test]
    fn the_earliest_stop_string_wins() {
        let (_, hit, text) = run(&["b", "abc"], &["xxabc"]);
        assert!(hit);
        assert_eq!(text, "xx");
    }
}
