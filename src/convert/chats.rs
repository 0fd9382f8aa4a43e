//! The model's own chats as calibration data, made by the Magpie method (arXiv 2406.08464): the
//! chat template's text up to the start of a user turn (the "pre-query" prompt) makes the
//! dense model write a user's question, and the question in a normal chat prompt makes it
//! answer. The runtime generates them from the dense GGUF, so no external data is needed and
//! the masks learn the kind of text the converted model will be asked to produce.
//!
//! Generation is reproducible: chat slot `i` samples with a seed drawn from (seed, i, attempt)
//! alone, and questions already seen (after normalising case, punctuation and spaces) are
//! drawn again, up to [`MAX_ATTEMPTS`] times, so the first `n` chats of a larger set are the
//! set of `n`. The chats are cached as JSONL under a name derived from the model file's bytes
//! and every setting but their number, appended as they are made: a stopped run resumes where
//! it left off, a smaller set is read from a larger one, and a larger one extends it.

use super::{io_err, ConvertError, Result};
use crate::chat::{ChatMessage, ChatTemplate, Sampler, SamplerParams};
use crate::engine::{Context, ContextParams, Model};
use crate::generate::{chat_tokens, GenerateOptions, Generator, StopReason};
use crate::tokenizer::attr;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Draws of one chat slot before it is left empty (its questions were all duplicates or
/// unusable).
pub const MAX_ATTEMPTS: u64 = 8;

/// Bump when generation changes, so that older caches are not reused.
const FORMAT_VERSION: u32 = 1;

/// How to generate the chats.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatGenParams {
    /// Chat slots to fill (slots whose every attempt fails stay empty).
    pub n: usize,
    pub seed: u64,
    /// Sampling of the user's questions (the seed is replaced per attempt).
    pub query: SamplerParams,
    /// Sampling of the answers (the seed is replaced per attempt).
    pub answer: SamplerParams,
    /// A question longer than this is dropped (Magpie keeps only questions the model ends).
    pub max_query_tokens: usize,
    /// An answer is cut at this many tokens.
    pub max_answer_tokens: usize,
}

impl Default for ChatGenParams {
    fn default() -> Self {
        ChatGenParams {
            n: 0,
            seed: 42,
            query: SamplerParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.95,
                min_p: 0.05,
                repeat_penalty: 1.0,
                ..SamplerParams::default()
            },
            answer: SamplerParams {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.95,
                min_p: 0.05,
                repeat_penalty: 1.1,
                ..SamplerParams::default()
            },
            max_query_tokens: 96,
            max_answer_tokens: 256,
        }
    }
}

/// One generated exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    /// The slot it fills (slots are numbered from 0 in generation order).
    pub slot: usize,
    pub user: String,
    pub assistant: String,
    /// Whether the model ended the answer itself (else it was cut at `max_answer_tokens`).
    pub complete: bool,
}

/// The chat template's text before the first user message's content: the prompt that makes
/// the model write a question. Found by rendering a one-message conversation around a marker
/// (so it holds whatever the template adds first: BOS, a default system prompt).
pub fn pre_query_prompt(template: &ChatTemplate) -> Result<String> {
    const MARK: &str = "\u{E000}tomoe-magpie\u{E000}";
    let text = template
        .render(&[ChatMessage::new("user", MARK)], false)
        .map_err(|e| ConvertError::Data(format!("the chat template does not render: {e}")))?;
    let at = text
        .find(MARK)
        .ok_or_else(|| ConvertError::Data("the chat template drops the user's message".into()))?;
    Ok(text[..at].to_string())
}

/// The key of the chats the model file and the settings make: a hash of both (the model's
/// bytes, read once, so a changed file with the same name is not mistaken for the old one),
/// without the number of chats (sets of any size share one file).
pub fn cache_key(model_path: &Path, p: &ChatGenParams) -> Result<u64> {
    let mut h = Fnv64::new();
    let mut f =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(model_path).map_err(io_err(model_path))?);
    loop {
        let buf = f.fill_buf().map_err(io_err(model_path))?;
        if buf.is_empty() {
            break;
        }
        h.write(buf);
        let n = buf.len();
        f.consume(n);
    }
    h.write(format!("v{FORMAT_VERSION} {:?}", ChatGenParams { n: 0, ..p.clone() }).as_bytes());
    Ok(h.0)
}

/// FNV-1a over 64 bits: a stable hash for cache names (std's hasher may change between
/// releases).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The cache file of `key` in `dir`.
fn cache_path(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("chats-{key:016x}.jsonl"))
}

/// The seed of attempt `attempt` at slot `slot` (SplitMix64's finaliser over the three).
fn attempt_seed(seed: u64, slot: usize, attempt: u64) -> u64 {
    let mut z = seed ^ (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ attempt.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A question's identity for deduplication: its letters and digits, lower-cased, one space
/// between words.
fn normalise(q: &str) -> String {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn chat_json(c: &Chat) -> String {
    serde_json::json!({"slot": c.slot, "user": c.user, "assistant": c.assistant, "complete": c.complete}).to_string()
}

fn parse_chat(line: &str) -> Option<Chat> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Chat {
        slot: v.get("slot")?.as_u64()? as usize,
        user: v.get("user")?.as_str()?.to_string(),
        assistant: v.get("assistant")?.as_str()?.to_string(),
        complete: v.get("complete")?.as_bool()?,
    })
}

/// Reads a cache file: its chats, in order, and the next slot to fill. A line cut short by a
/// stopped run (the last one) is ignored; any other unreadable line is an error.
fn read_cache(path: &Path) -> Result<(Vec<Chat>, usize)> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut chats = Vec::new();
    let mut next = 0;
    for (i, line) in lines.iter().enumerate() {
        if i == 0 {
            continue; // the header, checked by the caller through the file name
        }
        match line.strip_prefix("{\"next\":") {
            Some(n) => {
                next = n.trim_end_matches('}').trim().parse().unwrap_or(next);
                continue;
            }
            None => match parse_chat(line) {
                Some(c) => {
                    next = next.max(c.slot + 1);
                    chats.push(c);
                }
                None if i + 1 == lines.len() && !text.ends_with('\n') => break,
                None => {
                    return Err(ConvertError::Data(format!(
                        "{}:{}: not a chat line (delete the file to generate the chats again)",
                        path.display(),
                        i + 1
                    )))
                }
            },
        }
    }
    Ok((chats, next))
}

/// What a chat generation did.
pub struct ChatStats {
    /// Slots filled by this run (not read from the cache).
    pub generated: usize,
    /// Attempts rejected: duplicate questions, questions not ended within the budget or empty.
    pub rejected: usize,
    /// Tokens generated (questions and answers, rejected ones included).
    pub tokens: usize,
    pub seconds: f64,
    /// Where the chats are cached.
    pub path: PathBuf,
}

/// The chats of `p` for the model at `model_path`: read from `cache_dir` as far as the cache
/// has them, the rest generated (and appended to it) with `n_threads` threads. `progress(done,
/// total)` is called after each slot.
pub fn load_or_generate(
    model_path: &Path,
    p: &ChatGenParams,
    n_threads: usize,
    cache_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Chat>, ChatStats)> {
    let t0 = std::time::Instant::now();
    let path = cache_path(cache_dir, cache_key(model_path, p)?);
    let mut stats = ChatStats {
        generated: 0,
        rejected: 0,
        tokens: 0,
        seconds: 0.0,
        path: path.clone(),
    };
    let (mut chats, mut next) = if path.exists() {
        read_cache(&path)?
    } else {
        (Vec::new(), 0)
    };
    if next >= p.n {
        chats.retain(|c| c.slot < p.n);
        progress(p.n, p.n);
        stats.seconds = t0.elapsed().as_secs_f64();
        return Ok((chats, stats));
    }
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    if text.is_empty() {
        // A fresh file: the header says what made the chats.
        let params = format!("{:?}", ChatGenParams { n: 0, ..p.clone() });
        let header = serde_json::json!({"tomoe_chats": FORMAT_VERSION, "model": model_path.display().to_string(), "params": params});
        writeln!(file, "{header}").map_err(io_err(&path))?;
    } else if !text.ends_with(b"\n") {
        // A line cut short by a stopped run: drop it before appending.
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        file.set_len(keep as u64).map_err(io_err(&path))?;
    }
    let model = Model::load(model_path)
        .map_err(|e| ConvertError::Data(format!("loading {} to generate chats: {e}", model_path.display())))?;
    let model = Arc::new(model);
    let template = model.chat_template().ok_or_else(|| {
        ConvertError::Data(format!(
            "{} has no chat template: generated chats need a chat model (or pass only --calib text)",
            model_path.display()
        ))
    })?;
    let mut seen: HashSet<String> = chats.iter().map(|c| normalise(&c.user)).collect();
    let mut gen = ChatGen::new(model.clone(), template, p, n_threads)?;
    progress(next, p.n);
    while next < p.n {
        for attempt in 0..MAX_ATTEMPTS {
            let (chat, tokens) = gen.chat(next, attempt_seed(p.seed, next, attempt))?;
            stats.tokens += tokens;
            match chat {
                Some(c) if seen.insert(normalise(&c.user)) => {
                    writeln!(file, "{}", chat_json(&c)).map_err(io_err(&path))?;
                    chats.push(c);
                    stats.generated += 1;
                    break;
                }
                _ => stats.rejected += 1,
            }
        }
        next += 1;
        // Slots left empty are recorded too, so a resumed run does not retry them.
        writeln!(file, "{{\"next\":{next}}}").map_err(io_err(&path))?;
        progress(next, p.n);
    }
    file.sync_all().map_err(io_err(&path))?;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok((chats, stats))
}

/// One model's generator with its two prompts' settings.
struct ChatGen<'a> {
    model: Arc<Model>,
    template: &'a ChatTemplate,
    gen: Generator,
    pre_query: Vec<u32>,
    p: ChatGenParams,
}

impl<'a> ChatGen<'a> {
    fn new(model: Arc<Model>, template: &'a ChatTemplate, p: &ChatGenParams, n_threads: usize) -> Result<Self> {
        let pre = pre_query_prompt(template)?;
        let pre_query = model.tokenizer().encode_prompt(&pre, true);
        let n_ctx = pre_query.len() + p.max_query_tokens + p.max_answer_tokens + 64;
        let n_ctx = n_ctx.min(model.config().context_length.max(256));
        let ctx = Context::new(
            model.clone(),
            ContextParams {
                n_ctx,
                n_threads: n_threads.max(1),
                n_batch: 512,
            },
        )
        .map_err(|e| ConvertError::Data(format!("a context for chat generation: {e}")))?;
        let vocab = model.config().n_vocab;
        let gen = Generator::new(ctx, Sampler::new(p.query.clone(), vocab));
        Ok(ChatGen {
            model,
            template,
            gen,
            pre_query,
            p: p.clone(),
        })
    }

    /// One attempt at slot `slot`: the chat, or `None` when the question is unusable; and the
    /// tokens generated.
    fn chat(&mut self, slot: usize, seed: u64) -> Result<(Option<Chat>, usize)> {
        let vocab = self.model.config().n_vocab;
        let tok = self.model.tokenizer();
        let gen_err = |e| ConvertError::Data(format!("generating a chat: {e}"));
        self.gen.set_sampler(Sampler::new(
            SamplerParams {
                seed,
                ..self.p.query.clone()
            },
            vocab,
        ));
        let q = self
            .gen
            .generate(
                &self.pre_query,
                &GenerateOptions::max_tokens(self.p.max_query_tokens),
                |_| true,
            )
            .map_err(gen_err)?;
        let mut tokens = q.tokens.len();
        let user = q.text.trim().to_string();
        let control = q.tokens.iter().any(|&t| tok.token_attr(t) & attr::CONTROL != 0);
        if q.stop != StopReason::EndOfGeneration || control || user.split_whitespace().count() < 3 {
            return Ok((None, tokens));
        }
        let prompt = chat_tokens(tok, self.template, &[ChatMessage::new("user", user.clone())], true)
            .map_err(|e| ConvertError::Data(format!("rendering a question: {e}")))?;
        if prompt.len() + self.p.max_answer_tokens >= self.gen.n_ctx() {
            return Ok((None, tokens));
        }
        self.gen.set_sampler(Sampler::new(
            SamplerParams {
                seed: seed ^ 1,
                ..self.p.answer.clone()
            },
            vocab,
        ));
        let a = self
            .gen
            .generate(&prompt, &GenerateOptions::max_tokens(self.p.max_answer_tokens), |_| {
                true
            })
            .map_err(gen_err)?;
        tokens += a.tokens.len();
        let assistant = a.text.trim().to_string();
        if assistant.is_empty() {
            return Ok((None, tokens));
        }
        let complete = a.stop == StopReason::EndOfGeneration;
        Ok((
            Some(Chat {
                slot,
                user,
                assistant,
                complete,
            }),
            tokens,
        ))
    }
}

/// The last `ceil(frac · n)` chats, held out of training for evaluation, and the rest.
pub fn split_held_out(chats: &[Chat], frac: f64) -> (&[Chat], &[Chat]) {
    let held = ((chats.len() as f64 * frac.clamp(0.0, 1.0)).ceil() as usize).min(chats.len());
    chats.split_at(chats.len() - held)
}

/// Each chat as the model sees it in use: rendered by its template (control tokens as text,
/// to be tokenized with them parsed).
pub fn render(template: &ChatTemplate, chats: &[Chat]) -> Result<Vec<String>> {
    chats
        .iter()
        .map(|c| {
            template
                .render(
                    &[
                        ChatMessage::new("user", c.user.as_str()),
                        ChatMessage::new("assistant", c.assistant.as_str()),
                    ],
                    false,
                )
                .map_err(|e| ConvertError::Data(format!("rendering a chat: {e}")))
        })
        .collect()
}

/// The chats as plain text (question, blank line, answer, blank line), for evaluation with
/// tools that tokenize text without control tokens (`tomoe-run perplexity -f`).
pub fn plain_text(chats: &[Chat]) -> String {
    let mut s = String::new();
    for c in chats {
        s.push_str(&c.user);
        s.push_str("\n\n");
        s.push_str(&c.assistant);
        s.push_str("\n\n");
    }
    s
}

/// `$XDG_CACHE_HOME/tomoe/chats`, else `~/.cache/tomoe/chats`, else `.tomoe-cache/chats`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        });
    match base {
        Some(b) => b.join("tomoe").join("chats"),
        None => PathBuf::from(".tomoe-cache").join("chats"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_differing_only_in_case_spaces_and_punctuation_are_duplicates() {
        assert_eq!(
            normalise("What is  the capital of France?"),
            normalise("what is the capital of france")
        );
        assert_ne!(
            normalise("What is the capital of France?"),
            normalise("What is the capital of Spain?")
        );
        assert_eq!(normalise("  ¿Qué es?  "), "qué es");
    }

    #[test]
    fn attempt_seeds_differ_by_slot_and_attempt_and_repeat() {
        let s = |slot, a| attempt_seed(7, slot, a);
        assert_eq!(s(3, 1), s(3, 1));
        let all: HashSet<u64> = (0..50)
            .flat_map(|slot| (0..MAX_ATTEMPTS).map(move |a| s(slot, a)))
            .collect();
        assert_eq!(all.len(), 50 * MAX_ATTEMPTS as usize);
        assert_ne!(attempt_seed(7, 0, 0), attempt_seed(8, 0, 0));
    }

    #[test]
    fn the_held_out_share_is_the_last_chats_rounded_up() {
        let chats: Vec<Chat> = (0..10)
            .map(|i| Chat {
                slot: i,
                user: format!("q{i}"),
                assistant: "a".into(),
                complete: true,
            })
            .collect();
        let (train, held) = split_held_out(&chats, 0.15);
        assert_eq!((train.len(), held.len()), (8, 2));
        assert_eq!(held[0].slot, 8);
        assert_eq!(split_held_out(&chats, 0.0).1.len(), 0);
        assert_eq!(split_held_out(&[], 0.5).0.len(), 0);
    }

    #[test]
    fn a_cache_file_round_trips_and_tolerates_a_cut_last_line() {
        let dir = std::env::temp_dir().join(format!("tomoe-chats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.jsonl");
        let a = Chat {
            slot: 0,
            user: "Why is the sky blue?\n\"quoted\"".into(),
            assistant: "Rayleigh.".into(),
            complete: true,
        };
        let b = Chat {
            slot: 2,
            user: "Name three rivers.".into(),
            assistant: "Nile, Amazon, Danube".into(),
            complete: false,
        };
        let body = format!(
            "{{\"tomoe_chats\":1}}\n{}\n{{\"next\":1}}\n{}\n{{\"next\":3}}\n",
            chat_json(&a),
            chat_json(&b)
        );
        std::fs::write(&path, &body).unwrap();
        assert_eq!(read_cache(&path).unwrap(), (vec![a.clone(), b.clone()], 3));
        // A run stopped mid-line: the partial line is dropped, the slot is redone.
        std::fs::write(&path, format!("{body}{{\"slot\":3,\"us")).unwrap();
        assert_eq!(read_cache(&path).unwrap(), (vec![a.clone(), b.clone()], 3));
        // A damaged line in the middle is an error that says what to do.
        std::fs::write(&path, format!("{{\"tomoe_chats\":1}}\ngarbage\n{}\n", chat_json(&a))).unwrap();
        let e = read_cache(&path).unwrap_err().to_string();
        assert!(e.contains("delete the file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_text_separates_questions_and_answers_by_blank_lines() {
        let c = Chat {
            slot: 0,
            user: "Q?".into(),
            assistant: "A.".into(),
            complete: true,
        };
        assert_eq!(plain_text(&[c.clone(), c]), "Q?\n\nA.\n\nQ?\n\nA.\n\n");
    }
}
