//! An OpenAI-compatible HTTP server (feature `server`): `POST /v1/chat/completions` and
//! `POST /v1/completions`, whole or streamed as server-sent events, `GET /v1/models` and
//! `GET /health`; also without the `/v1` prefix, as llama-server answers them.
//!
//! One loaded [`Model`] is shared by N slots, each a [`Generator`](crate::generate::Generator)
//! on a context and an OS thread of its own; requests beyond N wait in a queue. A client that
//! goes away (its connection closed, its stream dropped) stops its generation at the next
//! token. Bad requests get a 4xx with OpenAI's error body (`{"error": {"message", "type",
//! "param", "code"}}`), checked before a slot is taken: malformed JSON, fields of the wrong type
//! or out of range, another model's name (404), a prompt plus `max_tokens` longer than the
//! context (400 `context_length_exceeded`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tomoe::engine::Model;
//! use tomoe::server::{Server, ServerConfig};
//!
//! let model = Arc::new(Model::load("model.gguf".as_ref())?);
//! let server = Server::new(model, ServerConfig::new("model"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener).await?;
//! # Ok(()) }
//! ```

mod api;
mod error;
mod slots;

pub use error::ApiError;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::chat::{ChatError, ChatMessage, ChatTemplate, SamplerParams};
use crate::engine::{CacheTypes, Context, ContextParams, EngineError, Model};
use crate::generate::{chat_tokens, GenerateOptions, Generation};
use api::{ChatRequest, CompletionRequest, Prompt, Sampling};
use slots::{Event, Job, Pool};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The model's id in `/v1/models` and in answers; requests may name it or no model.
    pub model_id: String,
    /// Requests generated at once, each on a context of its own.
    pub n_parallel: usize,
    /// Each slot's context (`n_threads` is per slot).
    pub context: ContextParams,
    /// The element types of each slot's KV cache.
    pub cache_types: CacheTypes,
    /// Sampling for the fields a request leaves out.
    pub sampling: SamplerParams,
    /// The seed of requests that give none; `None`: a new random seed for each.
    pub seed: Option<u64>,
    /// The largest request body read, in bytes.
    pub max_body_bytes: usize,
    /// A chat template (Jinja source) to use instead of the model's own.
    pub chat_template: Option<String>,
}

impl ServerConfig {
    /// One slot, the default context and sampling, random seeds.
    pub fn new(model_id: impl Into<String>) -> Self {
        ServerConfig {
            model_id: model_id.into(),
            n_parallel: 1,
            context: ContextParams::default(),
            cache_types: CacheTypes::default(),
            sampling: SamplerParams::default(),
            seed: None,
            max_body_bytes: 8 << 20,
            chat_template: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the server needs at least one slot (--parallel)")]
    NoSlots,
    #[error("no built-in ChatML template")]
    NoChatMl,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the chat template: {0}")]
    Template(#[from] ChatError),
    #[error("cannot start a slot's thread: {0}")]
    Io(#[from] std::io::Error),
}

/// The loaded model, its slots and the routes.
pub struct Server {
    state: Arc<AppState>,
}

struct AppState {
    model: Arc<Model>,
    id: String,
    pool: Pool,
    /// The template chosen with the server (`ServerConfig::chat_template`), else ChatML when
    /// the model has no template of its own; `None`: the model's.
    template: Option<ChatTemplate>,
    sampling: SamplerParams,
    seed: Option<u64>,
    max_body: usize,
    created: u64,
    /// The KV caches of all slots together, in bytes.
    kv_bytes: usize,
}

impl Server {
    /// Creates the slots' contexts (all memory is taken here) and starts their threads.
    pub fn new(model: Arc<Model>, config: ServerConfig) -> Result<Server, ServerError> {
        if config.n_parallel == 0 {
            return Err(ServerError::NoSlots);
        }
        let contexts = (0..config.n_parallel)
            .map(|_| Context::with_cache_types(model.clone(), config.context.clone(), config.cache_types))
            .collect::<Result<Vec<_>, _>>()?;
        let template = match (&config.chat_template, model.chat_template()) {
            (Some(source), _) => Some(ChatTemplate::with_file_tokens(model.gguf(), source)?),
            (None, Some(_)) => None,
            (None, None) => {
                let chatml = ChatTemplate::builtin("chatml").ok_or(ServerError::NoChatMl)?;
                Some(ChatTemplate::with_file_tokens(model.gguf(), chatml)?)
            }
        };
        let kv_bytes = contexts.iter().map(Context::kv_bytes).sum();
        let state = AppState {
            kv_bytes,
            pool: Pool::new(contexts)?,
            model,
            id: config.model_id,
            template,
            sampling: config.sampling,
            seed: config.seed,
            max_body: config.max_body_bytes,
            created: unix_time(),
        };
        Ok(Server { state: Arc::new(state) })
    }

    /// Whether chat uses the model's own template (not one given in the config, nor ChatML
    /// for a model without one).
    pub fn has_own_template(&self) -> bool {
        self.state.template.is_none()
    }

    /// Bytes of the KV caches of all slots together (taken when the server was created).
    pub fn kv_bytes(&self) -> usize {
        self.state.kv_bytes
    }

    /// The routes, for serving or for embedding in a larger router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/completions", post(completions))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A random number, for ids and seeds (std's hasher keys are random per process and differ on
/// every call).
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.id => Err(ApiError::model_not_found(m)),
            _ => Ok(()),
        }
    }

    /// OpenAI's check: the prompt and the tokens asked for must fit the context.
    fn check_length(&self, n_prompt: usize, max_tokens: Option<u64>, what: &str) -> Result<(), ApiError> {
        let n_ctx = self.pool.n_ctx();
        let param = if what == "messages" { "messages" } else { "prompt" };
        if n_prompt == 0 {
            return Err(ApiError::invalid("the prompt is empty", Some(param)));
        }
        if n_prompt >= n_ctx {
            return Err(ApiError::context_length(
                format!(
                    "This model's maximum context length is {n_ctx} tokens. However, your {what} resulted in \
                     {n_prompt} tokens. Please reduce the length of the {what}."
                ),
                param,
            ));
        }
        if let Some(max) = max_tokens {
            let total = (n_prompt as u64).saturating_add(max);
            if total > n_ctx as u64 {
                return Err(ApiError::context_length(
                    format!(
                        "This model's maximum context length is {n_ctx} tokens. However, you requested {total} \
                         tokens ({n_prompt} in the {what}, {max} in the completion). Please reduce the length \
                         of the {what} or completion."
                    ),
                    "max_tokens",
                ));
            }
        }
        Ok(())
    }

    fn chat_prompt(&self, conversation: &[(String, String)]) -> Result<Vec<u32>, ApiError> {
        let messages: Vec<ChatMessage> = conversation.iter().map(|(r, c)| ChatMessage::new(r, c)).collect();
        let template = match self.template.as_ref().or(self.model.chat_template()) {
            Some(t) => t,
            None => return Err(ApiError::internal("no chat template")),
        };
        chat_tokens(self.model.tokenizer(), template, &messages, true).map_err(|e| {
            ApiError::invalid(
                format!("the messages do not fit the chat template: {e}"),
                Some("messages"),
            )
        })
    }

    fn completion_prompt(&self, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
        let tok = self.model.tokenizer();
        match prompt {
            Prompt::Text(text) => Ok(tok.encode(&text, true, true)),
            Prompt::Texts(texts) if texts.len() == 1 => Ok(tok.encode(&texts[0], true, true)),
            Prompt::Texts(texts) => Err(ApiError::invalid(
                format!("{} prompts given: one prompt per request is supported", texts.len()),
                Some("prompt"),
            )),
            Prompt::Tokens(ids) => match ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
                Some(id) => Err(ApiError::invalid(
                    format!("token {id} is outside the vocabulary ({} tokens)", tok.vocab_size()),
                    Some("prompt"),
                )),
                None => Ok(ids),
            },
        }
    }

    /// Queues the generation; the receiver gets its events.
    fn submit(&self, prompt: Vec<u32>, sampling: Sampling, stream: bool) -> UnboundedReceiver<Event> {
        let seed = self.seed.unwrap_or_else(random_u64);
        let params = sampling.params(&self.sampling, seed);
        let opts = GenerateOptions {
            max_tokens: sampling.max_tokens.map(|m| m as usize),
            stop: sampling.stop,
        };
        let (job, rx) = Job::new(prompt, opts, params, stream);
        self.pool.submit(job);
        rx
    }
}

/// Reads the body, up to the configured size (413 beyond).
async fn read_body(s: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::invalid(format!("the request body is larger than {} bytes", s.max_body), None)
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, s.max_body).await.map_err(|e| {
        if e.to_string().contains("length limit") {
            too_large()
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"), None)
        }
    })
}

/// Runs blocking work (templates, tokenizing) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(ApiError::internal("preparing the prompt failed (internal error)")))
}

/// Which endpoint an answer is for: it shapes the JSON.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// What every object of one answer shares.
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn new(kind: Kind, model: &str) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Meta {
            kind,
            id: format!("{prefix}-{:016x}", random_u64()),
            created: unix_time(),
            model: model.to_string(),
        }
    }

    fn usage(g: &Generation) -> Value {
        json!({
            "prompt_tokens": g.n_prompt,
            "completion_tokens": g.tokens.len(),
            "total_tokens": g.n_prompt + g.tokens.len(),
        })
    }

    /// The whole answer.
    fn whole(&self, g: &Generation) -> Value {
        let finish = g.stop.finish_reason();
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Completion => json!({"index": 0, "text": g.text, "logprobs": null, "finish_reason": finish}),
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": Meta::usage(g),
        })
    }

    /// One streamed chunk: a piece of text (or the chat's opening role), or the finish reason.
    fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    fn usage_chunk(&self, g: &Generation) -> Value {
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": Meta::usage(g),
        })
    }

    fn log(&self, g: &Generation) {
        eprintln!(
            "{} prompt {} tokens ({} reused, {:.0} tokens/s), answer {} tokens ({:.1} tokens/s), {:?}",
            self.id,
            g.n_prompt,
            g.n_reused,
            g.prompt_tokens_per_s(),
            g.tokens.len(),
            g.gen_tokens_per_s(),
            g.stop
        );
    }
}

/// Waits for the end of a job that is not streamed. Dropping this future (the client went
/// away) drops the receiver, which stops the generation.
async fn whole(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    loop {
        match rx.recv().await {
            Some(Event::Text(_)) => {}
            Some(Event::Done(Ok(g))) => {
                meta.log(&g);
                return Ok(Json(meta.whole(&g)).into_response());
            }
            Some(Event::Done(Err(e))) => return Err(e),
            None => return Err(ApiError::internal("the generation ended without a result")),
        }
    }
}

fn sse_json(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// The stream of a job: `data: {chunk}` events, then `data: [DONE]`. When the client goes
/// away, the response body (and with it the receiver) is dropped, which stops the generation.
fn streamed(meta: Meta, rx: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    struct St {
        meta: Meta,
        rx: UnboundedReceiver<Event>,
        pending: VecDeque<SseEvent>,
        done: bool,
        include_usage: bool,
    }
    let mut pending = VecDeque::new();
    if meta.kind == Kind::Chat {
        pending.push_back(sse_json(&meta.chunk(Some(""), true, None)));
    }
    let st = St {
        meta,
        rx,
        pending,
        done: false,
        include_usage,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(t)) => st.pending.push_back(sse_json(&st.meta.chunk(Some(&t), false, None))),
                Some(Event::Done(Ok(g))) => {
                    st.meta.log(&g);
                    st.pending
                        .push_back(sse_json(&st.meta.chunk(None, false, Some(g.stop.finish_reason()))));
                    if st.include_usage {
                        st.pending.push_back(sse_json(&st.meta.usage_chunk(&g)));
                    }
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                    st.done = true;
                }
                Some(Event::Done(Err(e))) => {
                    st.pending.push_back(sse_json(&e.body()));
                    st.done = true;
                }
                None => {
                    st.pending.push_back(sse_json(
                        &ApiError::internal("the generation ended without a result").body(),
                    ));
                    st.done = true;
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    chat_inner(s, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_inner(s: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let mut req: ChatRequest = api::parse(&bytes)?;
    s.check_model(req.model.as_deref())?;
    let sampling = req.sampling()?;
    let conversation = req.conversation()?;
    let (stream, include_usage) = (req.stream.unwrap_or(false), wants_usage(&req.stream_options));
    let state = s.clone();
    let prompt = blocking(move || state.chat_prompt(&conversation)).await?;
    answer(&s, Kind::Chat, prompt, sampling, stream, include_usage).await
}

async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    completions_inner(s, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions_inner(s: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let mut req: CompletionRequest = api::parse(&bytes)?;
    s.check_model(req.model.as_deref())?;
    let sampling = req.sampling()?;
    let (stream, include_usage) = (req.stream.unwrap_or(false), wants_usage(&req.stream_options));
    let state = s.clone();
    let prompt = blocking(move || state.completion_prompt(req.prompt)).await?;
    answer(&s, Kind::Completion, prompt, sampling, stream, include_usage).await
}

/// `stream_options.include_usage`: whether a stream ends with a usage chunk.
fn wants_usage(options: &Option<api::StreamOptions>) -> bool {
    options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
}

/// Checks that the prompt and the completion fit the context, queues the generation and answers
/// it whole or streamed.
async fn answer(
    s: &AppState,
    kind: Kind,
    prompt: Vec<u32>,
    sampling: Sampling,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let what = if kind == Kind::Chat { "messages" } else { "prompt" };
    s.check_length(prompt.len(), sampling.max_tokens, what)?;
    let rx = s.submit(prompt, sampling, stream);
    let meta = Meta::new(kind, &s.id);
    if stream {
        Ok(streamed(meta, rx, include_usage))
    } else {
        whole(meta, rx).await
    }
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.id,
            "object": "model",
            "created": s.created,
            "owned_by": "tomoe",
            "meta": {
                "n_ctx": s.pool.n_ctx(),
                "n_slots": s.pool.n_slots(),
                "n_vocab": s.model.config().n_vocab,
            },
        }],
    }))
}

async fn health(State(s): State<Arc<AppState>>) -> Json<Value> {
    let (busy, queued) = s.pool.load();
    Json(json!({
        "status": "ok",
        "slots_idle": s.pool.n_slots() - busy,
        "slots_processing": busy,
        "requests_queued": queued,
    }))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid(format!("Invalid URL ({method} {})", uri.path()), None)
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid(format!("Method {method} is not allowed for {}", uri.path()), None)
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
        .with_code("method_not_allowed")
}
