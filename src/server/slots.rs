//! The slots: N generators (one context each, sharing one model), each on an OS thread of its
//! own, and a queue of the requests waiting for one. A request goes to the idle slot whose
//! context holds the longest prefix of its prompt (a chat's next turn finds its conversation
//! there), else waits in the queue, which slots serve in order of arrival.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::error::ApiError;
use crate::chat::{Sampler, SamplerParams};
use crate::engine::{Context, EngineError};
use crate::generate::{GenerateError, GenerateOptions, Generation, Generator, StopReason};

/// What a slot reports while it works on a job.
pub enum Event {
    /// A piece of the answer (never empty; sent only for streamed jobs).
    Text(String),
    /// The end: the generation, or why there is none.
    Done(Result<Generation, ApiError>),
}

/// One generation to run.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub sampler: SamplerParams,
    /// Whether to send the text as it comes.
    pub stream: bool,
    events: UnboundedSender<Event>,
}

impl Job {
    /// A job and the receiver of its events. Dropping the receiver cancels the job: a queued
    /// job is skipped, a running one stops at its next token.
    pub fn new(
        prompt: Vec<u32>,
        opts: GenerateOptions,
        sampler: SamplerParams,
        stream: bool,
    ) -> (Job, UnboundedReceiver<Event>) {
        let (events, rx) = unbounded_channel();
        (
            Job {
                prompt,
                opts,
                sampler,
                stream,
                events,
            },
            rx,
        )
    }

    fn cancelled(&self) -> bool {
        self.events.is_closed()
    }
}

struct SlotState {
    /// The job handed to this slot, not yet taken.
    mailbox: Option<Job>,
    /// Whether the slot waits for a job.
    idle: bool,
    /// The tokens its context holds (as of its last job).
    cached: Vec<u32>,
}

struct State {
    queue: VecDeque<Job>,
    slots: Vec<SlotState>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover anyway rather than cascade.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The slots and their queue.
pub struct Pool {
    shared: Arc<Shared>,
    n_ctx: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts one thread per context.
    pub fn new(contexts: Vec<Context>) -> std::io::Result<Pool> {
        let n_ctx = contexts.first().map_or(0, |c| c.params().n_ctx);
        let slots = contexts
            .iter()
            .map(|_| SlotState {
                mailbox: None,
                idle: true,
                cached: Vec::new(),
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                slots,
                shutdown: false,
            }),
            wake: Condvar::new(),
        });
        let mut threads = Vec::new();
        for (i, ctx) in contexts.into_iter().enumerate() {
            let n_vocab = ctx.model().config().n_vocab;
            let gen = Generator::new(ctx, Sampler::new(SamplerParams::default(), n_vocab));
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tomoe-slot-{i}"))
                .spawn(move || worker(i, gen, &shared))?;
            threads.push(handle);
        }
        Ok(Pool { shared, n_ctx, threads })
    }

    /// Tokens each slot's context holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_slots(&self) -> usize {
        self.threads.len()
    }

    /// Hands `job` to the idle slot that holds the longest prefix of its prompt, or queues it.
    pub fn submit(&self, job: Job) {
        let mut st = self.shared.lock();
        st.queue.retain(|j| !j.cancelled());
        let best = st
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.idle)
            .max_by_key(|(i, s)| (common_prefix(&s.cached, &job.prompt), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                st.slots[i].idle = false;
                st.slots[i].mailbox = Some(job);
                drop(st);
                self.shared.wake.notify_all();
            }
            None => st.queue.push_back(job),
        }
    }

    /// (busy slots, queued jobs).
    pub fn load(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.slots.iter().filter(|s| !s.idle).count(), st.queue.len())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        // A running generation finishes its current job first; queued jobs are dropped, which
        // ends their receivers' streams.
        self.shared.lock().queue.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A slot's thread: takes jobs from its mailbox, then from the queue, until shutdown.
fn worker(i: usize, mut gen: Generator, shared: &Shared) {
    let mut st = shared.lock();
    loop {
        let job = match st.slots[i].mailbox.take() {
            Some(job) => job,
            None if st.shutdown => return,
            None => {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
        };
        drop(st);
        run_job(i, &mut gen, job);
        st = shared.lock();
        st.slots[i].cached.clear();
        st.slots[i].cached.extend_from_slice(gen.tokens());
        // The next job in line, else wait for one.
        match st.queue.pop_front() {
            Some(job) if !st.shutdown => st.slots[i].mailbox = Some(job),
            _ => st.slots[i].idle = true,
        }
    }
}

/// Runs one job, sending its events; a panic in the generation is answered as a 500 and the
/// context is cleared (its state is unknown), so the slot goes on serving.
fn run_job(slot: usize, gen: &mut Generator, job: Job) {
    if job.cancelled() {
        return;
    }
    let n_vocab = gen.context().model().config().n_vocab;
    let events = &job.events;
    let result = catch_unwind(AssertUnwindSafe(|| {
        gen.set_sampler(Sampler::new(job.sampler.clone(), n_vocab));
        gen.generate(&job.prompt, &job.opts, |piece| {
            if job.stream && !piece.is_empty() {
                events.send(Event::Text(piece.to_string())).is_ok()
            } else {
                !events.is_closed()
            }
        })
    }));
    let done = match result {
        Ok(Ok(generation)) => {
            if generation.stop == StopReason::Cancelled {
                eprintln!(
                    "slot {slot}: the client went away; stopped after {} tokens",
                    generation.tokens.len()
                );
            }
            Ok(generation)
        }
        Ok(Err(e)) => Err(generate_error(e, gen.n_ctx())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("tomoe-run serve: a generation panicked ({what}); the slot's context is cleared");
            let _ = catch_unwind(AssertUnwindSafe(|| gen.clear()));
            Err(ApiError::internal("the generation failed (internal error)"))
        }
    };
    let _ = events.send(Event::Done(done));
}

fn generate_error(e: GenerateError, n_ctx: usize) -> ApiError {
    match e {
        GenerateError::EmptyPrompt => ApiError::invalid("the prompt is empty", Some("prompt")),
        GenerateError::PromptTooLong { n_prompt, .. } => ApiError::context_length(
            format!("This model's maximum context length is {n_ctx} tokens, but the prompt has {n_prompt} tokens."),
            "messages",
        ),
        GenerateError::Engine(e @ EngineError::BadParams(_)) => ApiError::invalid(e.to_string(), None),
        GenerateError::Engine(e) => ApiError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_equal_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2]), 2);
    }
}
