//! Continuous batching: the scheduler behind `glint serve`.
//!
//! A [`Scheduler`] owns the model on a thread of its own (it loads it there, so `/health` can answer
//! while it loads). Requests come in through [`Scheduler::submit`]; each one's [`Event`]s go out
//! through its [`Client`]. The loop, once per step:
//!
//! 1. takes the new requests, and drops the queued or running ones whose client has gone (a closed
//!    connection frees its slot here, within one step);
//! 2. admits queued requests (oldest first) into free slots: the free slot whose cached ids share the
//!    longest prefix with the prompt, whose KV cache is reused up to that prefix;
//! 3. gathers one token from every generating slot, then prompt chunks of the slots still reading
//!    their prompt (oldest first), up to `step_tokens` in all, so a long prompt is read over several
//!    steps while the running streams go on getting one token per step (llama.cpp #10054);
//! 4. runs them as one batched forward ([`Model::step`]), each sampling row with its own parameters
//!    and seeded draw on the GPU;
//! 5. turns each new token into text (UTF-8-safe through [`StreamDecoder`], stop strings held back by
//!    [`StopFilter`]) and sends it; a stop id, a stop string, `max_tokens` or a full context ends the
//!    request with [`Event::Done`], and the slot keeps its cache for the next prompt that shares it.
//!
//! A GPU error (or a panic inside the step) ends every request with [`Event::Error`], and from then
//! on the scheduler is [`State::Failed`]: new requests are refused with the reason, and the server
//! says it needs a restart, instead of hanging.
//!
//! Each request draws from its own `SeededRng(seed)` in the order `Model::generate_with` does (one
//! draw for the prompt's last chunk, one per decode step), so a request gives the text that `glint
//! run --seed` gives for the same prompt and parameters, whatever else runs beside it.

use crate::chat::ChatTemplate;
use crate::engine::{FinishReason, Logprobs, Model, Sampled, SeqSample, SeqStep, MAX_TOP_LOGPROBS};
use crate::error::{Error, Result};
use crate::gpu::LiveBuffers;
use crate::sampler::{SamplingParams, SeededRng};
use crate::stop::StopFilter;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the scheduler needs of a model: [`Model`], or a stand-in in tests.
pub trait BatchModel {
    fn info(&self) -> ModelInfo;
    fn slot_ids(&self, slot: usize) -> &[u32];
    fn truncate_slot(&mut self, slot: usize, len: usize);
    fn step(&mut self, seqs: &[SeqStep]) -> Result<Vec<Option<Sampled>>>;
    /// The device's live buffers (for /metrics); none by default.
    fn live_buffers(&self) -> LiveBuffers {
        LiveBuffers::default()
    }
}

impl BatchModel for Model {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            path: self.source.clone(),
            tokenizer: self.tokenizer(),
            template: self.chat_template().cloned(),
            stop_ids: self.stop_ids().to_vec(),
            sampling_defaults: self.sampling_defaults(),
            vocab: self.cfg.vocab,
            n_slots: self.n_slots(),
            ctx_size: self.ctx_size(),
            max_batch: self.max_batch(),
            device: self.gpu.describe(),
        }
    }
    fn slot_ids(&self, slot: usize) -> &[u32] {
        Model::slot_ids(self, slot)
    }
    fn truncate_slot(&mut self, slot: usize, len: usize) {
        Model::truncate_slot(self, slot, len)
    }
    fn step(&mut self, seqs: &[SeqStep]) -> Result<Vec<Option<Sampled>>> {
        Model::step(self, seqs)
    }
    fn live_buffers(&self) -> LiveBuffers {
        self.gpu.live_buffers()
    }
}

/// What the server needs to know of the loaded model (shared with the request handlers).
#[derive(Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub template: Option<ChatTemplate>,
    /// Ids that end generation (not part of the answer).
    pub stop_ids: Vec<u32>,
    /// The model's generation_config.json defaults ([`Model::sampling_defaults`]).
    pub sampling_defaults: SamplingParams,
    pub vocab: usize,
    pub n_slots: usize,
    /// Tokens of KV cache per slot.
    pub ctx_size: usize,
    /// Tokens one batched step can hold.
    pub max_batch: usize,
    pub device: String,
}

/// Options of [`Scheduler::spawn`].
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Tokens per batched step: one for each generating slot, the rest for prompt chunks. At most the
    /// model's `max_batch`; None: `max_batch`. At least `n_slots + 1`, so that a prompt always moves.
    pub step_tokens: Option<usize>,
    /// Requests that may wait for a free slot; beyond it [`Scheduler::submit`] answers
    /// [`SubmitError::QueueFull`].
    pub max_queue: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            step_tokens: None,
            max_queue: 64,
        }
    }
}

/// One generation request.
pub struct Request {
    /// The whole context (for a chat: the rendered conversation). At most the slot's context.
    pub prompt: Vec<u32>,
    /// Sampling parameters; `seed` seeds this request's own draws.
    pub params: SamplingParams,
    /// At least 1; the context's end also ends generation.
    pub max_tokens: usize,
    /// Stop strings: generation ends when the text contains one, which is not sent.
    pub stop: Vec<String>,
    /// Some(n): each token comes with its log-probability and the n most likely alternatives'.
    pub top_logprobs: Option<usize>,
    /// Where this request's events go.
    pub client: Box<dyn Client>,
}

/// The receiving end of a request's events.
pub trait Client: Send {
    /// Deliver an event; false when the client has gone (its generation stops and its slot is freed).
    fn send(&mut self, event: Event) -> bool;
    /// Whether the client has gone (disconnected, cancelled). Checked for every queued and running
    /// request at each step.
    fn is_gone(&self) -> bool {
        false
    }
}

impl Client for mpsc::Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

/// A request's progress, in order: at most one `Queued`, `Token`s, then one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Every slot is busy: the request waits, `position` (1 = next) in the queue.
    Queued { position: usize },
    /// A generated token (stop ids are not sent) and the text it releases: complete UTF-8 characters
    /// only, and nothing that could still be the start of a stop string (often empty).
    Token {
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
    },
    /// The end: `text` is what was still held back (stop strings excluded).
    Done {
        finish_reason: FinishReason,
        text: String,
        usage: Usage,
    },
    /// The request failed; nothing follows.
    Error(String),
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Of the prompt tokens, those whose keys and values were reused from the slot's cache.
    pub cached_tokens: usize,
    /// Tokens of the answer (the [`Event::Token`]s; a stop id is not counted).
    pub completion_tokens: usize,
}

/// Why [`Scheduler::submit`] refused a request.
#[derive(Clone, Debug, PartialEq)]
pub enum SubmitError {
    /// The model is still loading.
    Loading,
    /// `max_queue` requests already wait for a slot.
    QueueFull { max_queue: usize },
    /// The prompt does not fit a slot's context.
    PromptTooLong { tokens: usize, ctx_size: usize },
    /// A field is out of range (names the field and what was expected).
    Invalid { field: &'static str, msg: String },
    /// A GPU error ended the scheduler; the server needs a restart.
    Failed(String),
    /// The scheduler is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Loading => write!(f, "the model is still loading"),
            SubmitError::QueueFull { max_queue } => write!(
                f,
                "the server is busy: every slot is in use and {max_queue} request(s) already wait in the queue (--queue-size); retry later"
            ),
            SubmitError::PromptTooLong { tokens, ctx_size } => write!(
                f,
                "the prompt is {tokens} tokens, and a slot's context holds {ctx_size} (--ctx-size is per slot): \
                 shorten the prompt to at most {ctx_size} tokens or raise --ctx-size"
            ),
            SubmitError::Invalid { msg, .. } => write!(f, "{msg}"),
            SubmitError::Failed(m) => write!(f, "{m}"),
            SubmitError::ShuttingDown => write!(f, "{SHUTTING_DOWN}"),
        }
    }
}

/// Where the scheduler stands.
#[derive(Clone)]
pub enum State {
    Loading,
    Ready(Arc<ModelInfo>),
    /// Load failure or GPU error: the message, which says a restart is needed.
    Failed(String),
    Stopped,
}

/// Counters since the start, and the current load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Requests admitted into a slot.
    pub requests_total: u64,
    /// Requests that ended with a finish reason.
    pub requests_finished: u64,
    /// Requests whose client went away before the end.
    pub requests_cancelled: u64,
    /// Requests ended by an error.
    pub requests_failed: u64,
    /// Requests refused because the queue was full.
    pub requests_rejected: u64,
    /// Prompt tokens of the admitted requests, and how many of them came from a slot's cache.
    pub prompt_tokens_total: u64,
    pub prompt_tokens_cached: u64,
    pub generated_tokens_total: u64,
    /// Batched steps run, and the time spent in them.
    pub steps_total: u64,
    pub step_seconds_total: f64,
    /// Generated tokens per second over the last 10 seconds.
    pub tokens_per_second: f64,
    pub busy_slots: usize,
    pub n_slots: usize,
    pub queue_length: usize,
    /// Buffers alive on the device and the memory bound to them, after the last step: flat over a
    /// long run unless something leaks.
    pub gpu_buffers: u64,
    pub gpu_buffer_bytes: u64,
}

/// The [`Event::Error`] message of requests ended by [`Scheduler::shutdown`].
pub const SHUTTING_DOWN: &str = "the server is shutting down";

/// The window of [`MetricsSnapshot::tokens_per_second`].
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Metrics {
    requests_total: AtomicU64,
    requests_finished: AtomicU64,
    requests_cancelled: AtomicU64,
    requests_failed: AtomicU64,
    requests_rejected: AtomicU64,
    prompt_tokens_total: AtomicU64,
    prompt_tokens_cached: AtomicU64,
    generated_tokens_total: AtomicU64,
    steps_total: AtomicU64,
    step_micros_total: AtomicU64,
    /// The device's live buffers after the last step ([`crate::gpu::Gpu::live_buffers`]).
    gpu_buffers: AtomicU64,
    gpu_buffer_bytes: AtomicU64,
    /// (end of a step, tokens it generated), for the last RATE_WINDOW.
    recent: Mutex<VecDeque<(Instant, u64)>>,
}

impl Metrics {
    /// Record the device's live buffers (the gauges of /metrics).
    fn set_live(&self, live: LiveBuffers) {
        self.gpu_buffers.store(live.buffers, Ordering::Relaxed);
        self.gpu_buffer_bytes.store(live.bytes, Ordering::Relaxed);
    }
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

struct Shared {
    state: Mutex<State>,
    /// Submitted requests not yet in a slot (queued or in the channel).
    pending: AtomicUsize,
    busy: AtomicUsize,
    max_queue: usize,
    started: Instant,
    metrics: Metrics,
}

impl Shared {
    fn set_state(&self, s: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
    fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

enum Command {
    Submit(Request),
    Shutdown,
}

/// The handle of the scheduler thread. Dropping it shuts the thread down (every request still
/// running ends with an error) and waits for it.
pub struct Scheduler {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Scheduler {
    /// Start the scheduler thread, which first runs `load` (its progress callbacks run there too).
    /// The receiver gets the model's info once loaded, or the load error.
    pub fn spawn<M, F>(
        opts: SchedulerOptions,
        load: F,
    ) -> (Scheduler, mpsc::Receiver<Result<Arc<ModelInfo>>>)
    where
        M: BatchModel + 'static,
        F: FnOnce() -> Result<M> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Loading),
            pending: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            max_queue: opts.max_queue,
            started: Instant::now(),
            metrics: Metrics::default(),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("glint-scheduler".into())
            .spawn(move || {
                let model = match catch_unwind(AssertUnwindSafe(load)) {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        sh.set_state(State::Failed(format!("loading the model failed: {e}")));
                        let _ = ready_tx.send(Err(e));
                        return refuse_all(&rx, &sh);
                    }
                    Err(p) => {
                        let e = Error::Gpu(format!("loading panicked: {}", panic_text(&p)));
                        sh.set_state(State::Failed(format!("loading the model failed: {e}")));
                        let _ = ready_tx.send(Err(e));
                        return refuse_all(&rx, &sh);
                    }
                };
                let info = Arc::new(model.info());
                let tok = info.tokenizer.clone();
                let mut lp = Loop::new(model, info.clone(), tok.as_deref(), &opts, &sh);
                sh.set_state(State::Ready(info.clone()));
                let _ = ready_tx.send(Ok(info));
                lp.run(&rx);
            })
            .expect("spawning the scheduler thread");
        (
            Scheduler {
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
            },
            ready_rx,
        )
    }

    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// Queue a request. Checks it against the model (prompt length, ids, parameters) and the queue
    /// bound first; once accepted, its client gets its events.
    pub fn submit(&self, req: Request) -> std::result::Result<(), SubmitError> {
        let info = match self.shared.state() {
            State::Ready(i) => i,
            State::Loading => return Err(SubmitError::Loading),
            State::Failed(m) => return Err(SubmitError::Failed(m)),
            State::Stopped => return Err(SubmitError::ShuttingDown),
        };
        check(&info, &req)?;
        let sh = &self.shared;
        let capacity =
            sh.max_queue + info.n_slots - sh.busy.load(Ordering::SeqCst).min(info.n_slots);
        if sh
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < capacity).then_some(p + 1)
            })
            .is_err()
        {
            add(&sh.metrics.requests_rejected, 1);
            return Err(SubmitError::QueueFull {
                max_queue: sh.max_queue,
            });
        }
        self.tx.send(Command::Submit(req)).map_err(|_| {
            sh.pending.fetch_sub(1, Ordering::SeqCst);
            SubmitError::ShuttingDown
        })
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let m = &self.shared.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let now = Instant::now();
        let recent: u64 = m
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        let window = now
            .duration_since(self.shared.started)
            .min(RATE_WINDOW)
            .as_secs_f64()
            .max(1e-3);
        let n_slots = match self.shared.state() {
            State::Ready(i) => i.n_slots,
            _ => 0,
        };
        MetricsSnapshot {
            requests_total: get(&m.requests_total),
            requests_finished: get(&m.requests_finished),
            requests_cancelled: get(&m.requests_cancelled),
            requests_failed: get(&m.requests_failed),
            requests_rejected: get(&m.requests_rejected),
            prompt_tokens_total: get(&m.prompt_tokens_total),
            prompt_tokens_cached: get(&m.prompt_tokens_cached),
            generated_tokens_total: get(&m.generated_tokens_total),
            steps_total: get(&m.steps_total),
            step_seconds_total: get(&m.step_micros_total) as f64 / 1e6,
            tokens_per_second: recent as f64 / window,
            busy_slots: self.shared.busy.load(Ordering::SeqCst),
            n_slots,
            queue_length: self.shared.pending.load(Ordering::SeqCst),
            gpu_buffers: get(&m.gpu_buffers),
            gpu_buffer_bytes: get(&m.gpu_buffer_bytes),
        }
    }

    /// End every queued and running request (with [`Event::Error`]: "the server is shutting down"),
    /// stop the thread and wait for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The checks [`Scheduler::submit`] makes before queueing.
fn check(info: &ModelInfo, r: &Request) -> std::result::Result<(), SubmitError> {
    let invalid = |field, msg: String| Err(SubmitError::Invalid { field, msg });
    if r.prompt.is_empty() {
        return invalid(
            "prompt",
            "the prompt is empty: at least one token is needed".into(),
        );
    }
    if r.prompt.len() > info.ctx_size {
        return Err(SubmitError::PromptTooLong {
            tokens: r.prompt.len(),
            ctx_size: info.ctx_size,
        });
    }
    if let Some(&bad) = r.prompt.iter().find(|&&i| i as usize >= info.vocab) {
        return invalid(
            "prompt",
            format!("token id {bad} is out of range (vocab_size {})", info.vocab),
        );
    }
    if r.max_tokens == 0 {
        return invalid("max_tokens", "max_tokens = 0, expected at least 1".into());
    }
    if let Some(n) = r.top_logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
        return invalid(
            "top_logprobs",
            format!("top_logprobs = {n}, expected at most {MAX_TOP_LOGPROBS}"),
        );
    }
    if !r.stop.is_empty() && info.tokenizer.is_none() {
        return invalid(
            "stop",
            "stop strings need the model's tokenizer to see text, and this model has none".into(),
        );
    }
    r.params.validate().map_err(|e| {
        let msg = e.to_string();
        let field = ["temperature", "top_p", "min_p", "repetition_penalty"]
            .into_iter()
            .find(|f| msg.contains(f))
            .unwrap_or("sampling");
        SubmitError::Invalid { field, msg }
    })
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// After a failure: answer every request that still arrives with the failure, until shut down.
fn refuse_all(rx: &mpsc::Receiver<Command>, sh: &Shared) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Submit(mut r) => {
                sh.pending.fetch_sub(1, Ordering::SeqCst);
                let msg = match sh.state() {
                    State::Failed(m) => m,
                    _ => "the scheduler has stopped".into(),
                };
                r.client.send(Event::Error(msg));
            }
            Command::Shutdown => break,
        }
    }
    sh.set_state(State::Stopped);
}

/// A request in a slot.
struct Active<'t> {
    /// Admission order (older first for prompt chunks).
    order: u64,
    req: Request,
    rng: SeededRng,
    /// Prompt tokens in the slot's cache (reused or computed).
    fed: usize,
    reused: usize,
    /// The last generated token, to be fed at the next step (None while the prompt is read).
    next: Option<u32>,
    generated: usize,
    decoder: Option<StreamDecoder<'t>>,
    filter: StopFilter,
}

/// What one step gives a slot.
struct Part {
    slot: usize,
    tokens: Vec<u32>,
    sample: bool,
    /// Prompt tokens among `tokens` (0 for a decode token).
    prompt: usize,
}

struct Loop<'t, 's, M> {
    model: M,
    info: Arc<ModelInfo>,
    tok: Option<&'t Tokenizer>,
    shared: &'s Shared,
    step_tokens: usize,
    slots: Vec<Option<Active<'t>>>,
    /// Step count when each slot was last used (the least recently used free slot is chosen on ties).
    last_used: Vec<u64>,
    queue: VecDeque<Request>,
    admitted: u64,
    steps: u64,
}

impl<'t, 's, M: BatchModel> Loop<'t, 's, M> {
    fn new(
        model: M,
        info: Arc<ModelInfo>,
        tok: Option<&'t Tokenizer>,
        opts: &SchedulerOptions,
        shared: &'s Shared,
    ) -> Self {
        let n = info.n_slots;
        let step_tokens = opts
            .step_tokens
            .unwrap_or(info.max_batch)
            .min(info.max_batch)
            .max(n + 1)
            .min(info.max_batch);
        shared.metrics.set_live(model.live_buffers());
        Loop {
            model,
            tok,
            shared,
            step_tokens,
            slots: (0..n).map(|_| None).collect(),
            last_used: vec![0; n],
            queue: VecDeque::new(),
            admitted: 0,
            steps: 0,
            info,
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(Option::is_none)
    }

    fn run(&mut self, rx: &mpsc::Receiver<Command>) {
        loop {
            // 1. New requests (waiting for one when there is nothing to do).
            let mut cmds = Vec::new();
            if self.idle() {
                match rx.recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => return self.stop(SHUTTING_DOWN),
                }
            }
            cmds.extend(rx.try_iter());
            for c in cmds {
                match c {
                    Command::Submit(r) => self.enqueue(r),
                    Command::Shutdown => return self.stop(SHUTTING_DOWN),
                }
            }
            self.drop_gone();
            // 2. Admission.
            self.admit();
            // 3.-5. One batched step.
            if let Err(msg) = self.step() {
                self.shared.set_state(State::Failed(msg.clone()));
                self.fail_all(&msg);
                return refuse_all(rx, self.shared);
            }
        }
    }

    fn enqueue(&mut self, mut r: Request) {
        if self.slots.iter().all(Option::is_some) {
            let position = self.queue.len() + 1;
            if !r.client.send(Event::Queued { position }) {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                add(&self.shared.metrics.requests_cancelled, 1);
                return;
            }
        }
        self.queue.push_back(r);
    }

    fn drop_gone(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|r| !r.client.is_gone());
        let gone = before - self.queue.len();
        if gone > 0 {
            self.shared.pending.fetch_sub(gone, Ordering::SeqCst);
            add(&self.shared.metrics.requests_cancelled, gone);
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|a| a.req.client.is_gone())
            {
                self.release(slot);
                add(&self.shared.metrics.requests_cancelled, 1);
            }
        }
    }

    fn release(&mut self, slot: usize) -> Option<Active<'t>> {
        let a = self.slots[slot].take();
        if a.is_some() {
            self.shared.busy.fetch_sub(1, Ordering::SeqCst);
            self.last_used[slot] = self.steps;
        }
        a
    }

    fn admit(&mut self) {
        while self.slots.iter().any(Option::is_none) {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            let slot = self.best_slot(&req.prompt);
            let shared = common_prefix(self.model.slot_ids(slot), &req.prompt);
            // Always compute the last prompt token: its logits give the first answer token.
            let keep = shared.min(req.prompt.len() - 1);
            self.model.truncate_slot(slot, keep);
            let m = &self.shared.metrics;
            add(&m.requests_total, 1);
            add(&m.prompt_tokens_total, req.prompt.len());
            add(&m.prompt_tokens_cached, keep);
            self.admitted += 1;
            self.slots[slot] = Some(Active {
                order: self.admitted,
                rng: SeededRng::new(req.params.seed),
                fed: keep,
                reused: keep,
                next: None,
                generated: 0,
                decoder: self.tok.map(|t| t.stream()),
                filter: StopFilter::new(&req.stop),
                req,
            });
            self.last_used[slot] = self.steps;
            self.shared.busy.fetch_add(1, Ordering::SeqCst);
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The free slot whose cache shares the longest prefix with `prompt`; on ties the least recently
    /// used (so that other cached conversations survive longer).
    fn best_slot(&self, prompt: &[u32]) -> usize {
        (0..self.slots.len())
            .filter(|&s| self.slots[s].is_none())
            .max_by_key(|&s| {
                (
                    common_prefix(self.model.slot_ids(s), prompt),
                    std::cmp::Reverse(self.last_used[s]),
                    std::cmp::Reverse(s),
                )
            })
            .expect("a free slot")
    }

    /// The parts of the next step: every generating slot's token, then prompt chunks (oldest request
    /// first) while the budget lasts.
    fn plan(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut used = 0;
        for (slot, a) in self.slots.iter().enumerate() {
            if let Some(next) = a.as_ref().and_then(|a| a.next) {
                parts.push(Part {
                    slot,
                    tokens: vec![next],
                    sample: true,
                    prompt: 0,
                });
                used += 1;
            }
        }
        let mut reading: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(s, a)| {
                a.as_ref()
                    .filter(|a| a.next.is_none())
                    .map(|a| (a.order, s))
            })
            .collect();
        reading.sort_unstable();
        for (_, slot) in reading {
            if used >= self.step_tokens {
                break;
            }
            let a = self.slots[slot].as_ref().expect("reading slot");
            let end = (a.fed + self.step_tokens - used).min(a.req.prompt.len());
            let n = end - a.fed;
            parts.push(Part {
                slot,
                tokens: a.req.prompt[a.fed..end].to_vec(),
                sample: end == a.req.prompt.len(),
                prompt: n,
            });
            used += n;
        }
        parts
    }

    /// One batched step. Err: a GPU failure (the message to give every client).
    fn step(&mut self) -> std::result::Result<(), String> {
        let parts = self.plan();
        if parts.is_empty() {
            return Ok(());
        }
        let draws: Vec<f32> = parts
            .iter()
            .map(|p| {
                let a = self.slots[p.slot].as_mut().expect("planned slot");
                if p.sample {
                    a.rng.next_uniform()
                } else {
                    0.0
                }
            })
            .collect();
        let t0 = Instant::now();
        let result = {
            let seqs: Vec<SeqStep> = parts
                .iter()
                .zip(&draws)
                .map(|(p, &u)| {
                    let a = self.slots[p.slot].as_ref().expect("planned slot");
                    SeqStep {
                        slot: p.slot,
                        tokens: &p.tokens,
                        sample: p.sample.then_some(SeqSample {
                            params: &a.req.params,
                            u,
                            top_logprobs: a.req.top_logprobs,
                        }),
                    }
                })
                .collect();
            let model = &mut self.model;
            catch_unwind(AssertUnwindSafe(|| model.step(&seqs)))
        };
        let out = match result {
            Ok(Ok(out)) => out,
            Ok(Err(e @ Error::Gpu(_))) => {
                return Err(format!("{e}; the server needs a restart"));
            }
            Err(p) => {
                return Err(format!(
                    "GPU: the batched step panicked ({}); the server needs a restart",
                    panic_text(&p)
                ));
            }
            Ok(Err(e)) => {
                // Not the GPU: the step was refused before it ran. End the requests it held.
                for p in &parts {
                    self.fail(p.slot, &format!("internal error: {e}"));
                }
                return Ok(());
            }
        };
        self.steps += 1;
        let micros = t0.elapsed().as_micros() as usize;
        log::debug!(
            "step {}: {} tokens ({} decoding, {} prompt tokens of {} slot(s)) in {:.1} ms",
            self.steps,
            parts.iter().map(|p| p.tokens.len()).sum::<usize>(),
            parts.iter().filter(|p| p.prompt == 0).count(),
            parts.iter().map(|p| p.prompt).sum::<usize>(),
            parts.iter().filter(|p| p.prompt > 0).count(),
            micros as f64 / 1e3
        );
        let m = &self.shared.metrics;
        add(&m.steps_total, 1);
        add(&m.step_micros_total, micros);
        m.set_live(self.model.live_buffers());
        let mut generated = 0;
        for (p, s) in parts.iter().zip(out) {
            if let Some(a) = self.slots[p.slot].as_mut() {
                a.fed += p.prompt;
            }
            if let Some(s) = s {
                generated += self.on_token(p.slot, s) as u64;
            }
        }
        add(&m.generated_tokens_total, generated as usize);
        let now = Instant::now();
        let mut recent = m.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back((now, generated));
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            recent.pop_front();
        }
        Ok(())
    }

    /// A slot's new token: send it, or end the request. True when it counts as generated.
    fn on_token(&mut self, slot: usize, s: Sampled) -> bool {
        let ctx = self.info.ctx_size;
        let cached = self.model.slot_ids(slot).len();
        let is_stop_id = self.info.stop_ids.contains(&s.id);
        let Some(a) = self.slots[slot].as_mut() else {
            return false;
        };
        a.next = None;
        if is_stop_id {
            self.finish(slot, FinishReason::Stop, false);
            return false;
        }
        a.generated += 1;
        let (text, hit) = match a.decoder.as_mut().map(|d| d.push(s.id)) {
            None => (String::new(), false),
            Some(Ok(piece)) => a.filter.push(&piece),
            Some(Err(e)) => {
                self.fail(slot, &e.to_string());
                return true;
            }
        };
        let sent = a.req.client.send(Event::Token {
            id: s.id,
            text,
            logprobs: s.logprobs,
        });
        if !sent {
            self.release(slot);
            add(&self.shared.metrics.requests_cancelled, 1);
        } else if hit {
            self.finish(slot, FinishReason::Stop, true);
        } else if a.generated >= a.req.max_tokens || cached >= ctx {
            self.finish(slot, FinishReason::Length, false);
        } else {
            a.next = Some(s.id);
        }
        true
    }

    /// End a request with its finish reason: release the text still held back (unless a stop string
    /// ended it) and its usage.
    fn finish(&mut self, slot: usize, mut reason: FinishReason, stop_string: bool) {
        let Some(mut a) = self.release(slot) else {
            return;
        };
        let mut text = String::new();
        if !stop_string {
            let tail = match a.decoder.as_mut().map(|d| d.finish()) {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    add(&self.shared.metrics.requests_failed, 1);
                    a.req.client.send(Event::Error(e.to_string()));
                    return;
                }
                None => String::new(),
            };
            let (t, hit) = a.filter.push(&tail);
            text = t;
            if hit {
                reason = FinishReason::Stop;
            } else {
                text.push_str(&a.filter.finish());
            }
        }
        // Counted before the client hears of it, so that metrics read after the last event agree.
        add(&self.shared.metrics.requests_finished, 1);
        a.req.client.send(Event::Done {
            finish_reason: reason,
            text,
            usage: Usage {
                prompt_tokens: a.req.prompt.len(),
                cached_tokens: a.reused,
                completion_tokens: a.generated,
            },
        });
    }

    fn fail(&mut self, slot: usize, msg: &str) {
        if let Some(mut a) = self.release(slot) {
            // Its cache may hold a half-written step: forget it.
            self.model.truncate_slot(slot, 0);
            add(&self.shared.metrics.requests_failed, 1);
            a.req.client.send(Event::Error(msg.to_string()));
        }
    }

    /// End every running and queued request with `msg`.
    fn fail_all(&mut self, msg: &str) {
        for slot in 0..self.slots.len() {
            self.fail(slot, msg);
        }
        for mut r in self.queue.drain(..) {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            r.client.send(Event::Error(msg.to_string()));
            add(&self.shared.metrics.requests_failed, 1);
        }
    }

    fn stop(&mut self, msg: &str) {
        self.fail_all(msg);
        self.shared.set_state(State::Stopped);
    }
}

/// How many leading ids `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (slot, tokens, samples) of each step.
    type Log = Arc<Mutex<Vec<Vec<(usize, usize, bool)>>>>;

    /// A stand-in model: the next id of a sequence is a hash of its whole cached history (so it
    /// depends on nothing else in the batch), and every step is logged.
    struct Fake {
        slots: Vec<Vec<u32>>,
        ctx: usize,
        batch: usize,
        log: Log,
        fail_at_step: Option<usize>,
        stop_ids: Vec<u32>,
    }

    const VOCAB: usize = 50;

    fn next_of(history: &[u32], u: f32) -> u32 {
        let mut h: u64 = 1469598103934665603;
        for &x in history {
            h = (h ^ x as u64).wrapping_mul(1099511628211);
        }
        h ^= (u * 1000.0) as u64;
        (h % VOCAB as u64) as u32
    }

    impl BatchModel for Fake {
        fn info(&self) -> ModelInfo {
            ModelInfo {
                path: "fake".into(),
                tokenizer: None,
                template: None,
                stop_ids: self.stop_ids.clone(),
                sampling_defaults: SamplingParams::greedy(),
                vocab: VOCAB,
                n_slots: self.slots.len(),
                ctx_size: self.ctx,
                max_batch: self.batch,
                device: "fake".into(),
            }
        }
        fn slot_ids(&self, slot: usize) -> &[u32] {
            &self.slots[slot]
        }
        fn truncate_slot(&mut self, slot: usize, len: usize) {
            self.slots[slot].truncate(len);
        }
        fn step(&mut self, seqs: &[SeqStep]) -> Result<Vec<Option<Sampled>>> {
            // Slow enough that a test can act while a request runs.
            std::thread::sleep(Duration::from_millis(2));
            let mut log = self.log.lock().unwrap();
            if Some(log.len()) == self.fail_at_step {
                return Err(Error::Gpu("device lost (injected)".into()));
            }
            let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
            assert!(n <= self.batch, "{n} tokens in a step of {}", self.batch);
            log.push(
                seqs.iter()
                    .map(|s| (s.slot, s.tokens.len(), s.sample.is_some()))
                    .collect(),
            );
            Ok(seqs
                .iter()
                .map(|s| {
                    self.slots[s.slot].extend_from_slice(s.tokens);
                    assert!(self.slots[s.slot].len() <= self.ctx);
                    s.sample.map(|x| Sampled {
                        id: next_of(
                            &self.slots[s.slot],
                            if x.params.is_greedy() { 0.0 } else { x.u },
                        ),
                        logprobs: None,
                    })
                })
                .collect())
        }
    }

    fn start(
        slots: usize,
        batch: usize,
        step_tokens: usize,
        max_queue: usize,
        fail_at_step: Option<usize>,
    ) -> (Scheduler, Log) {
        let log: Log = Default::default();
        let l = log.clone();
        let (s, ready) = Scheduler::spawn(
            SchedulerOptions {
                step_tokens: Some(step_tokens),
                max_queue,
            },
            move || {
                Ok(Fake {
                    slots: vec![vec![]; slots],
                    ctx: 64,
                    batch,
                    log: l,
                    fail_at_step,
                    stop_ids: vec![],
                })
            },
        );
        ready.recv().unwrap().unwrap();
        (s, log)
    }

    fn request(prompt: Vec<u32>, max_tokens: usize) -> (Request, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        (
            Request {
                prompt,
                params: SamplingParams::greedy(),
                max_tokens,
                stop: vec![],
                top_logprobs: None,
                client: Box::new(tx),
            },
            rx,
        )
    }

    /// The ids a request got, and how it ended.
    fn collect(rx: &mpsc::Receiver<Event>) -> (Vec<u32>, Event) {
        let mut ids = vec![];
        loop {
            let e = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
            match e {
                Event::Token { id, .. } => ids.push(id),
                Event::Queued { .. } => {}
                end => return (ids, end),
            }
        }
    }

    /// What the fake model answers for `prompt` alone (greedy: u = 0).
    fn alone(prompt: &[u32], n: usize) -> Vec<u32> {
        let mut h = prompt.to_vec();
        let mut out = vec![];
        for _ in 0..n {
            let id = next_of(&h, 0.0);
            out.push(id);
            h.push(id);
        }
        out
    }

    #[test]
    fn batched_requests_get_what_each_gets_alone_and_usage_counts() {
        let (s, _) = start(3, 16, 16, 8, None);
        let prompts: Vec<Vec<u32>> = (0..5u32)
            .map(|i| {
                (0..(3 + 7 * i))
                    .map(|t| (t * 7 + i) % VOCAB as u32)
                    .collect()
            })
            .collect();
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (r, rx) = request(p.clone(), 6);
                s.submit(r).unwrap();
                rx
            })
            .collect();
        for (p, rx) in prompts.iter().zip(&rxs) {
            let (ids, end) = collect(rx);
            assert_eq!(ids, alone(p, 6));
            assert_eq!(
                end,
                Event::Done {
                    finish_reason: FinishReason::Length,
                    text: String::new(),
                    usage: Usage {
                        prompt_tokens: p.len(),
                        cached_tokens: 0,
                        completion_tokens: 6
                    }
                }
            );
        }
        // The step's token count is added once every event of the step is sent: wait (bounded) for it.
        let t0 = std::time::Instant::now();
        let mut m = s.metrics();
        while m.generated_tokens_total < 30 && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
            m = s.metrics();
        }
        assert_eq!((m.requests_total, m.requests_finished), (5, 5));
        assert_eq!(m.generated_tokens_total, 30);
        assert_eq!(m.busy_slots, 0);
        assert_eq!(m.queue_length, 0);
    }

    /// A long prompt is read in chunks within the step budget while a running stream gets a token in
    /// every step (no starvation).
    #[test]
    fn a_long_prompt_never_starves_a_running_stream() {
        let (s, log) = start(2, 16, 8, 8, None);
        let (r1, rx1) = request(vec![1, 2, 3], 20);
        s.submit(r1).unwrap();
        // Let the first one start generating.
        assert!(matches!(
            rx1.recv_timeout(Duration::from_secs(5)).unwrap(),
            Event::Token { .. }
        ));
        let long: Vec<u32> = (0..40).map(|t| t % 50).collect();
        let (r2, rx2) = request(long.clone(), 3);
        s.submit(r2).unwrap();
        let (ids2, _) = collect(&rx2);
        assert_eq!(ids2, alone(&long, 3));
        let (ids1, _) = collect(&rx1);
        assert_eq!(ids1.len(), 19);
        // The first request is in slot 0, the long prompt in slot 1: every step that reads a chunk of
        // it also carries slot 0's next token.
        let log = log.lock().unwrap();
        let mut chunks = 0;
        for step in log.iter() {
            let total: usize = step.iter().map(|x| x.1).sum();
            assert!(total <= 8, "step of {total} tokens over the budget of 8");
            if step.iter().any(|x| x.0 == 1 && x.1 > 1) {
                assert!(step.contains(&(0, 1, true)), "{step:?}");
                chunks += 1;
            }
        }
        assert_eq!(chunks, 6, "the 40-token prompt in chunks of 7");
    }

    /// A new prompt goes to the slot that shares the longest prefix, and reuses that much cache.
    #[test]
    fn the_slot_with_the_longest_shared_prefix_is_reused() {
        let (s, _) = start(3, 32, 32, 8, None);
        let a: Vec<u32> = (0..10).collect();
        let b: Vec<u32> = (20..30).collect();
        for p in [&a, &b] {
            let (r, rx) = request(p.clone(), 2);
            s.submit(r).unwrap();
            collect(&rx);
        }
        let mut b2 = b.clone();
        b2.extend([40, 41, 42]);
        let (r, rx) = request(b2.clone(), 2);
        s.submit(r).unwrap();
        let (ids, end) = collect(&rx);
        assert_eq!(ids, alone(&b2, 2));
        let Event::Done { usage, .. } = end else {
            panic!("{end:?}")
        };
        assert_eq!(usage.cached_tokens, 10);
        // The same prompt again: all but its last token come from the cache.
        let (r, rx) = request(a.clone(), 2);
        s.submit(r).unwrap();
        let (ids, end) = collect(&rx);
        assert_eq!(ids, alone(&a, 2));
        assert!(matches!(
            end,
            Event::Done {
                usage: Usage {
                    cached_tokens: 9,
                    ..
                },
                ..
            }
        ));
    }

    /// A client that goes away frees its slot within a step; the queue is bounded.
    #[test]
    fn a_gone_client_frees_its_slot_and_a_full_queue_refuses() {
        let (s, _) = start(1, 16, 16, 1, None);
        let (r1, rx1) = request(vec![1, 2], 60);
        s.submit(r1).unwrap();
        let (r2, rx2) = request(vec![3, 4], 2);
        s.submit(r2).unwrap();
        let (r3, _rx3) = request(vec![5], 2);
        assert_eq!(
            s.submit(r3).unwrap_err(),
            SubmitError::QueueFull { max_queue: 1 }
        );
        assert!(matches!(
            rx1.recv_timeout(Duration::from_secs(5)).unwrap(),
            Event::Token { .. }
        ));
        drop(rx1);
        // The waiting request gets the slot and completes.
        let (ids, end) = collect(&rx2);
        assert_eq!(ids, alone(&[3, 4], 2));
        assert!(matches!(end, Event::Done { .. }));
        let m = s.metrics();
        assert_eq!(m.requests_cancelled, 1);
        assert_eq!(m.requests_rejected, 1);
        assert!(m.generated_tokens_total < 62);
    }

    #[test]
    fn bad_requests_are_refused_with_the_field() {
        let (s, _) = start(1, 16, 16, 1, None);
        let (r, _) = request((0..65).map(|i| i % 50).collect(), 2);
        assert_eq!(
            s.submit(r).unwrap_err(),
            SubmitError::PromptTooLong {
                tokens: 65,
                ctx_size: 64
            }
        );
        let (r, _) = request(vec![50], 2);
        assert!(matches!(
            s.submit(r),
            Err(SubmitError::Invalid {
                field: "prompt",
                ..
            })
        ));
        let (r, _) = request(vec![1], 0);
        assert!(matches!(
            s.submit(r),
            Err(SubmitError::Invalid {
                field: "max_tokens",
                ..
            })
        ));
        let (mut r, _) = request(vec![1], 1);
        r.params.top_p = 2.0;
        assert!(matches!(
            s.submit(r),
            Err(SubmitError::Invalid { field: "top_p", .. })
        ));
    }

    /// A GPU error ends every request with a clear error, and later requests are refused with it.
    #[test]
    fn a_gpu_error_ends_every_request_and_the_scheduler_says_so() {
        let (s, _) = start(2, 16, 16, 4, Some(3));
        let rxs: Vec<_> = (0..3)
            .map(|i| {
                let (r, rx) = request(vec![i, i + 1], 50);
                s.submit(r).unwrap();
                rx
            })
            .collect();
        for rx in &rxs {
            let (_, end) = collect(rx);
            let Event::Error(msg) = end else {
                panic!("{end:?}")
            };
            assert!(
                msg.contains("device lost") && msg.contains("restart"),
                "{msg}"
            );
        }
        assert!(matches!(s.state(), State::Failed(_)));
        let (r, _) = request(vec![1], 1);
        assert!(matches!(s.submit(r), Err(SubmitError::Failed(m)) if m.contains("restart")));
    }

    #[test]
    fn shutdown_ends_running_and_queued_requests() {
        let (s, _) = start(1, 16, 16, 4, None);
        let (r1, rx1) = request(vec![1], 60);
        let (r2, rx2) = request(vec![2], 60);
        s.submit(r1).unwrap();
        s.submit(r2).unwrap();
        s.shutdown();
        for rx in [rx1, rx2] {
            let (_, end) = collect(&rx);
            assert_eq!(end, Event::Error(SHUTTING_DOWN.into()));
        }
        let (r, _) = request(vec![1], 1);
        assert_eq!(s.submit(r).unwrap_err(), SubmitError::ShuttingDown);
    }
}
