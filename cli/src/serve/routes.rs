//! The endpoints: request in, [`Request`] to the scheduler, its events out as one JSON answer or as
//! server-sent events.

use super::openai::{chat_logprob, completion_logprobs, usage_json};
use super::request::{chat_request, completion_request, parse, ApiError, Common, PromptInput};
use super::App;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use glint::engine::Logprobs;
use glint::scheduler::{
    Client, Event, ModelInfo, Request, State as SchedState, SubmitError, Usage, SHUTTING_DOWN,
};
use glint::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// How often a stream with nothing to send (waiting in the queue, or a long prompt) gets a
/// keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(app.max_body))
        .with_state(app)
}

/// A request's events, from the scheduler thread to its handler. Gone once the handler (or the
/// stream body, when the connection closes) drops the receiver.
struct Channel(UnboundedSender<Event>);

impl Client for Channel {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }
    fn is_gone(&self) -> bool {
        self.0.is_closed()
    }
}

/// Every endpoint but /health needs the key when keys are set.
async fn auth(State(app): State<Arc<App>>, req: axum::extract::Request, next: Next) -> Response {
    if app.keys.is_empty() || req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no API key: send the header 'Authorization: Bearer KEY'",
        )
        .code("invalid_api_key")
        .into_response(),
        Some(k) if app.keys.iter().any(|x| same(x.as_bytes(), k.as_bytes())) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "incorrect API key")
            .code("invalid_api_key")
            .into_response(),
    }
}

/// Comparison whose time does not depend on where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "unknown route: {method} {} (endpoints: POST /v1/chat/completions, POST /v1/completions, \
             GET /v1/models, GET /health, GET /metrics, POST /tokenize, POST /detokenize)",
            uri.path()
        ),
    )
    .code("unknown_url")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
    .code("method_not_allowed")
}

/// The model's info, or why there is none yet.
fn ready(app: &App) -> Result<Arc<ModelInfo>, ApiError> {
    match app.sched.state() {
        SchedState::Ready(i) => Ok(i),
        SchedState::Loading => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is loading",
        )
        .code("loading")),
        SchedState::Failed(m) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m).code("needs_restart"))
        }
        SchedState::Stopped => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, SHUTTING_DOWN).code("shutting_down"))
        }
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match ready(&app) {
        Ok(_) => {
            let m = app.sched.metrics();
            Json(json!({
                "status": "ok",
                "slots_idle": m.n_slots - m.busy_slots.min(m.n_slots),
                "slots_processing": m.busy_slots,
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Prometheus text format.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = app.sched.metrics();
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: String| {
        out.push_str(&format!(
            "# HELP glint_{name} {help}\n# TYPE glint_{name} {kind}\nglint_{name} {v}\n"
        ));
    };
    put(
        "requests_total",
        "counter",
        "Requests admitted into a slot.",
        m.requests_total.to_string(),
    );
    put(
        "requests_finished_total",
        "counter",
        "Requests that ended with a finish reason.",
        m.requests_finished.to_string(),
    );
    put(
        "requests_cancelled_total",
        "counter",
        "Requests whose client went away before the end.",
        m.requests_cancelled.to_string(),
    );
    put(
        "requests_failed_total",
        "counter",
        "Requests ended by an error.",
        m.requests_failed.to_string(),
    );
    put(
        "requests_rejected_total",
        "counter",
        "Requests refused with 503 because the queue was full.",
        m.requests_rejected.to_string(),
    );
    put(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens of the admitted requests.",
        m.prompt_tokens_total.to_string(),
    );
    put(
        "prompt_tokens_cached_total",
        "counter",
        "Prompt tokens reused from a slot's KV cache.",
        m.prompt_tokens_cached.to_string(),
    );
    put(
        "generated_tokens_total",
        "counter",
        "Tokens generated.",
        m.generated_tokens_total.to_string(),
    );
    put(
        "steps_total",
        "counter",
        "Batched forward steps run.",
        m.steps_total.to_string(),
    );
    put(
        "step_seconds_total",
        "counter",
        "Time spent in batched steps.",
        format!("{:.6}", m.step_seconds_total),
    );
    put(
        "tokens_per_second",
        "gauge",
        "Generated tokens per second over the last 10 s.",
        format!("{:.3}", m.tokens_per_second),
    );
    put(
        "busy_slots",
        "gauge",
        "Slots running a request.",
        m.busy_slots.to_string(),
    );
    put(
        "slots",
        "gauge",
        "Slots (--parallel).",
        m.n_slots.to_string(),
    );
    put(
        "queue_length",
        "gauge",
        "Requests waiting for a slot.",
        m.queue_length.to_string(),
    );
    put(
        "gpu_buffers",
        "gauge",
        "Buffers alive on the device after the last step.",
        m.gpu_buffers.to_string(),
    );
    put(
        "gpu_buffer_bytes",
        "gauge",
        "Device memory bound to those buffers (0 where the backend keeps no count).",
        m.gpu_buffer_bytes.to_string(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn model_json(app: &App) -> Value {
    json!({"id": app.model_id, "object": "model", "created": app.created, "owned_by": "glint"})
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&app)]}))
}

async fn model(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.check_model(Some(&id))?;
    Ok(Json(model_json(&app)))
}

fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    let e = ApiError::new(status, r.body_text());
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "the request body is over the server's limit (--max-body)",
        )
        .code("request_too_large")
    } else {
        e
    }
}

fn tokenizer(info: &ModelInfo) -> Result<&Arc<Tokenizer>, ApiError> {
    info.tokenizer.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the model has no tokenizer: send token ids (\"prompt\": [ids]) to /v1/completions",
        )
    })
}

#[derive(serde::Deserialize)]
struct TokenizeBody {
    content: String,
    add_special: Option<bool>,
    with_pieces: Option<bool>,
}

/// llama-server's: `{"content", "add_special", "with_pieces"}` -> `{"tokens": [ids]}` (or
/// `[{"id", "piece"}]`; a piece that is not valid UTF-8 by itself is its list of bytes).
async fn tokenize(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(body_error)?;
    let info = ready(&app)?;
    let b: TokenizeBody = parse(&body)?;
    let tok = tokenizer(&info)?;
    let mut ids = tok
        .encode(&b.content)
        .map_err(|e| ApiError::field("content", e.to_string()))?;
    if b.add_special.unwrap_or(false) {
        if let Some(bos) = tok.bos_to_add() {
            ids.insert(0, bos);
        }
    }
    if b.with_pieces.unwrap_or(false) {
        let pieces: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let bytes = tok.token_bytes(id).unwrap_or_default();
                let piece = match String::from_utf8(bytes) {
                    Ok(s) => json!(s),
                    Err(e) => json!(e.into_bytes()),
                };
                json!({"id": id, "piece": piece})
            })
            .collect();
        return Ok(Json(json!({ "tokens": pieces })));
    }
    Ok(Json(json!({ "tokens": ids })))
}

#[derive(serde::Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(body_error)?;
    let info = ready(&app)?;
    let b: DetokenizeBody = parse(&body)?;
    let tok = tokenizer(&info)?;
    let content = tok
        .decode(&b.tokens, false)
        .map_err(|e| ApiError::field("tokens", e.to_string()))?;
    Ok(Json(json!({ "content": content })))
}

/// Which endpoint an answer is for.
#[derive(Copy, Clone, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let body = body.map_err(body_error)?;
        let info = ready(&app)?;
        let req = chat_request(&body, |m| app.check_model(m))?;
        let tpl = info.template.as_ref().ok_or_else(|| {
            ApiError::field(
                "messages",
                "the model has no chat template: use /v1/completions with a raw prompt",
            )
        })?;
        let text = tpl
            .render(&req.messages, true)
            .map_err(|e| ApiError::field("messages", e.to_string()))?;
        let ids = tokenizer(&info)?
            .encode(&text)
            .map_err(|e| ApiError::field("messages", e.to_string()))?;
        start(
            &app,
            &info,
            Kind::Chat,
            ids,
            &req.common,
            req.top_logprobs,
            req.stops,
        )
        .await
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let body = body.map_err(body_error)?;
        let info = ready(&app)?;
        let req = completion_request(&body, |m| app.check_model(m))?;
        let ids = match req.prompt {
            PromptInput::Ids(ids) => ids,
            PromptInput::Text(t) => encode(&info, &t)?,
        };
        start(
            &app,
            &info,
            Kind::Completion,
            ids,
            &req.common,
            req.top_logprobs,
            req.stops,
        )
        .await
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

fn encode(info: &ModelInfo, text: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer(info)?
        .encode(text)
        .map_err(|e| ApiError::field("prompt", e.to_string()))
}

/// A fresh response id (unique within this server's life, hard to guess across runs).
fn response_id(kind: Kind) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    format!("{prefix}-{:08x}{n:06x}", crate::generate::random_seed())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every chunk or answer of one request carries.
struct Answer {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    tok: Option<Arc<Tokenizer>>,
    include_usage: bool,
    return_tokens: bool,
    /// Legacy completions logprobs: text offset so far.
    offset: usize,
}

impl Answer {
    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn chunk(&self, choice: Value) -> Value {
        let mut c = json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": [choice],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// A chunk with new text and/or one token's logprobs.
    fn delta(&mut self, text: &str, lp: Option<(u32, &Logprobs)>) -> Value {
        let tok = self.tok.as_deref();
        match self.kind {
            Kind::Chat => self.chunk(json!({
                "index": 0, "delta": {"content": text},
                "logprobs": lp.map(|(id, l)| json!({"content": [chat_logprob(tok, id, l)], "refusal": null})),
                "finish_reason": null,
            })),
            Kind::Completion => {
                let lps = lp.map(|(id, l)| completion_logprobs(tok, &[(id, l.clone())], self.offset));
                self.offset += text.len();
                self.chunk(json!({"index": 0, "text": text, "logprobs": lps, "finish_reason": null}))
            }
        }
    }

    fn last(&self, finish: &str) -> Value {
        match self.kind {
            Kind::Chat => self
                .chunk(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish})),
            Kind::Completion => self
                .chunk(json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish})),
        }
    }

    fn usage_chunk(&self, u: &Usage) -> Value {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": [], "usage": usage_json(u),
        })
    }

    fn whole(
        &self,
        text: &str,
        ids: &[u32],
        lps: Option<&[(u32, Logprobs)]>,
        finish: &str,
        u: &Usage,
    ) -> Value {
        let tok = self.tok.as_deref();
        let mut choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": lps.map(|v| json!({
                    "content": v.iter().map(|(id, l)| chat_logprob(tok, *id, l)).collect::<Vec<_>>(),
                    "refusal": null,
                })),
                "finish_reason": finish,
            }),
            Kind::Completion => json!({
                "index": 0, "text": text,
                "logprobs": lps.map(|v| completion_logprobs(tok, v, 0)),
                "finish_reason": finish,
            }),
        };
        if self.return_tokens {
            choice["tokens"] = json!(ids);
        }
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": [choice], "usage": usage_json(u),
        })
    }
}

fn submit_error(e: SubmitError, prompt_param: &str) -> ApiError {
    let msg = e.to_string();
    match e {
        SubmitError::Loading => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("loading"),
        SubmitError::QueueFull { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("server_busy")
        }
        SubmitError::PromptTooLong { .. } => {
            ApiError::field(prompt_param, msg).code("context_length_exceeded")
        }
        SubmitError::Invalid { field, .. } => {
            let param = match field {
                "prompt" => prompt_param,
                "repetition_penalty" => "repeat_penalty",
                f => f,
            };
            ApiError::field(param, msg)
        }
        SubmitError::Failed(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg).code("needs_restart")
        }
        SubmitError::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("shutting_down")
        }
    }
}

/// The error a request's [`Event::Error`] becomes.
fn event_error(msg: String) -> ApiError {
    if msg == SHUTTING_DOWN {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("shutting_down")
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
}

/// Submit the request and answer: one JSON object, or a stream of chunks.
async fn start(
    app: &App,
    info: &ModelInfo,
    kind: Kind,
    prompt: Vec<u32>,
    common: &Common,
    top_logprobs: Option<usize>,
    stop: Vec<String>,
) -> Result<Response, ApiError> {
    let prompt_param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    let n_prompt = prompt.len();
    let max_tokens = common
        .max_tokens()
        .unwrap_or_else(|| info.ctx_size.saturating_sub(n_prompt).max(1));
    let params = common.sampling(&info.sampling_defaults, crate::generate::random_seed());
    let (tx, rx) = unbounded_channel();
    let req = Request {
        prompt,
        params,
        max_tokens,
        stop,
        top_logprobs,
        client: Box::new(Channel(tx)),
    };
    app.sched
        .submit(req)
        .map_err(|e| submit_error(e, prompt_param))?;
    let answer = Answer {
        kind,
        id: response_id(kind),
        created: now_secs(),
        model: app.model_id.clone(),
        tok: info.tokenizer.clone(),
        include_usage: common
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        return_tokens: common.return_tokens.unwrap_or(false),
        offset: 0,
    };
    let log = (!app.quiet).then(|| (kind, Instant::now()));
    if common.stream.unwrap_or(false) {
        return Ok(stream(answer, rx, log));
    }
    collect(answer, rx, log).await
}

fn log_line(log: Option<(Kind, Instant)>, outcome: &str, u: Option<&Usage>) {
    let Some((kind, t0)) = log else { return };
    let path = match kind {
        Kind::Chat => "/v1/chat/completions",
        Kind::Completion => "/v1/completions",
    };
    let counts = u.map_or(String::new(), |u| {
        format!(
            ", prompt {} tokens ({} cached), {} generated",
            u.prompt_tokens, u.cached_tokens, u.completion_tokens
        )
    });
    eprintln!(
        "glint serve: {path} {outcome}{counts}, {:.2} s",
        t0.elapsed().as_secs_f64()
    );
}

async fn collect(
    answer: Answer,
    mut rx: UnboundedReceiver<Event>,
    log: Option<(Kind, Instant)>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut ids = vec![];
    let mut lps: Vec<(u32, Logprobs)> = vec![];
    let mut want_lps = false;
    loop {
        match rx.recv().await {
            Some(Event::Queued { .. }) => {}
            Some(Event::Token {
                id,
                text: t,
                logprobs,
            }) => {
                text.push_str(&t);
                ids.push(id);
                if let Some(l) = logprobs {
                    want_lps = true;
                    lps.push((id, l));
                }
            }
            Some(Event::Done {
                finish_reason,
                text: t,
                usage,
            }) => {
                text.push_str(&t);
                log_line(log, finish_reason.as_str(), Some(&usage));
                let lps = want_lps.then_some(&lps[..]);
                let body = answer.whole(&text, &ids, lps, finish_reason.as_str(), &usage);
                return Ok(Json(body).into_response());
            }
            Some(Event::Error(msg)) => {
                log_line(log, "error", None);
                return Err(event_error(msg));
            }
            None => {
                log_line(log, "error", None);
                return Err(event_error("the request ended without an answer".into()));
            }
        }
    }
}

/// The state of one streamed answer.
struct Streaming {
    answer: Answer,
    rx: UnboundedReceiver<Event>,
    out: VecDeque<SseEvent>,
    finished: bool,
    log: Option<(Kind, Instant)>,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

impl Streaming {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            if self.finished {
                return None;
            }
            match self.rx.recv().await {
                Some(Event::Queued { position }) => self
                    .out
                    .push_back(SseEvent::default().comment(format!("queued: position {position}"))),
                Some(Event::Token { id, text, logprobs }) => {
                    if !text.is_empty() || logprobs.is_some() {
                        let c = self.answer.delta(&text, logprobs.as_ref().map(|l| (id, l)));
                        self.out.push_back(data(&c));
                    }
                }
                Some(Event::Done {
                    finish_reason,
                    text,
                    usage,
                }) => {
                    if !text.is_empty() {
                        let c = self.answer.delta(&text, None);
                        self.out.push_back(data(&c));
                    }
                    self.out
                        .push_back(data(&self.answer.last(finish_reason.as_str())));
                    if self.answer.include_usage {
                        self.out.push_back(data(&self.answer.usage_chunk(&usage)));
                    }
                    self.end();
                    log_line(self.log, finish_reason.as_str(), Some(&usage));
                }
                Some(Event::Error(msg)) => {
                    self.out.push_back(data(&event_error(msg).body()));
                    self.end();
                    log_line(self.log, "error", None);
                }
                None => {
                    let e = event_error("the request ended without an answer".into());
                    self.out.push_back(data(&e.body()));
                    self.end();
                    log_line(self.log, "error", None);
                }
            }
        }
    }

    fn end(&mut self) {
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }
}

fn stream(answer: Answer, rx: UnboundedReceiver<Event>, log: Option<(Kind, Instant)>) -> Response {
    let mut s = Streaming {
        out: VecDeque::new(),
        answer,
        rx,
        finished: false,
        log,
    };
    if s.answer.kind == Kind::Chat {
        let first = s.answer.chunk(json!({
            "index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": null, "finish_reason": null,
        }));
        s.out.push_back(data(&first));
    }
    let events = futures_util::stream::unfold(s, |mut s| async move {
        let e = s.next().await?;
        Some((Ok::<_, Infallible>(e), s))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response()
}
