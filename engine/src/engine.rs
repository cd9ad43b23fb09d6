//! The public runtime: load a model directory (or GGUF file) onto the GPU and run it.
//!
//! `Model` owns the GPU context, the weights, the activation buffers, the KV cache (one region per
//! sequence slot) and the plan built at load. A call ([`Model::step_batch`]) takes tokens of one or
//! several sequences, writes their ids, (slot, position) pairs and the rows whose next token is wanted,
//! records the plan into one command buffer, submits once and reads back 4 bytes per sequence (its
//! greedy or sampled next token). The single-sequence API (`feed`, `generate_with`) is slot 0 of it.

use crate::chat::{ChatTemplate, Message};
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf_loader::GgufModel;
use crate::gpu::{Gpu, GpuOptions};
use crate::graph::{Activations, CallShape, Graph, KvCache, Plan, StepBuffers};
use crate::kernels::{Kernels, KvType, Shapes};
use crate::model::{Decoder, Fusion, WeightSource, Weights};
use crate::quant::QuantType;
use crate::safetensors_loader::SafetensorsWeights;
use crate::sampler::{
    penalty_window, GpuSampler, SampleRow, SamplingParams, SeededRng, OUTPUT_WORDS,
};
use crate::tokenizer::Tokenizer;
use crate::tune::Tuning;
use crate::weights::{HostLayout, HostMatrix};
use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Adjusts the device's kernel shapes before the pipelines are built.
pub type ShapesFn = Box<dyn Fn(&mut Shapes)>;

/// A load-progress callback: (tensor name, bytes uploaded so far, total bytes).
pub type Progress = Box<dyn FnMut(&str, u64, u64)>;

/// Options for [`Model::load`].
pub struct LoadOptions {
    pub gpu: GpuOptions,
    /// Context length (tokens of KV cache) of each sequence slot. Default: min(model maximum, 4096).
    pub ctx_size: Option<usize>,
    /// Tokens per call (activation buffers are sized for it).
    pub batch: usize,
    /// Sequence slots: independent sequences (each with its own region of the KV cache) that one call
    /// can advance together.
    pub slots: usize,
    /// Rows of logits one call can produce (at least `slots`; more for scoring many positions at once,
    /// up to `batch` and to what one storage binding of [rows, vocab] f32 holds). Default: `slots`.
    pub max_outputs: Option<usize>,
    /// Merge the layers that read the same input into one matrix at load (q, k, v; gate and up), so
    /// each runs as one dispatch. Default true; false keeps every layer separate (for comparisons).
    pub fuse: bool,
    /// KV cache element type. Default: f16 on devices with SHADER_F16, else f32.
    pub kv_type: Option<KvType>,
    /// Where the kernel shapes come from: a tuning file (`glint lab --sweep --tune-out`), the user
    /// cache's file for this device, or the device's defaults. Default: [`Tuning::Auto`].
    pub tune: Tuning,
    /// Where the int8 matvec runs (`Shapes::int8`), over the tuning file's or the device's choice
    /// (`--int8`). Default: theirs (off unless a tuning file says otherwise).
    pub int8: Option<crate::kernels::Int8>,
    /// Adjust the kernel shapes (tests, experiments), after the tuning file and `int8`.
    pub shapes: Option<ShapesFn>,
    /// Called with (tensor name, bytes uploaded so far, total bytes) while weights upload.
    pub progress: Option<Progress>,
    /// Quantize a float model's matrices at load (safetensors models; GGUF weights stay as they are).
    pub quant: Option<QuantType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            gpu: GpuOptions::default(),
            ctx_size: None,
            batch: 256,
            slots: 1,
            max_outputs: None,
            fuse: true,
            kv_type: None,
            tune: Tuning::Auto,
            int8: None,
            shapes: None,
            progress: None,
            quant: None,
        }
    }
}

/// Why generation stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id was produced (it is included in `tokens`) or the callback asked to stop.
    Stop,
    /// `max_tokens` were generated or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The result of [`Model::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Prompt ids, and how many of them were already in the KV cache.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub prompt_ms: f64,
    pub decode_ms: f64,
}

impl Generation {
    /// Decode speed over the tokens after the first (the first comes out of the prompt pass).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if n == 0 || self.decode_ms <= 0.0 {
            0.0
        } else {
            n as f64 * 1000.0 / self.decode_ms
        }
    }
}

/// Options for [`Model::generate_with`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Greedy by default; see [`Model::sampling_defaults`] for the model's own.
    pub sampling: SamplingParams,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams::greedy(),
        }
    }
}

/// What the per-token callback of [`Model::generate`] answers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// One sequence's part of a batched call ([`Model::step_batch`]).
#[derive(Clone, Copy, Debug)]
pub struct SeqStep<'a> {
    pub slot: usize,
    /// Tokens appended to the slot's cache, at the positions that follow it.
    pub tokens: &'a [u32],
    /// How to choose the token that follows them; None: no output (a prompt chunk).
    pub sample: Option<SeqSample<'a>>,
}

/// How a sequence's next token is chosen: `params`, and the uniform draw `u` in [0, 1).
#[derive(Clone, Copy, Debug)]
pub struct SeqSample<'a> {
    pub params: &'a SamplingParams,
    pub u: f32,
    /// Some(n): also return the chosen token's log-probability and the n most likely tokens' (n at
    /// most [`MAX_TOP_LOGPROBS`]; 0 = the chosen token's alone). See [`Model::step`].
    pub top_logprobs: Option<usize>,
}

/// The most alternatives [`SeqSample::top_logprobs`] can ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A sequence's next token from [`Model::step`].
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub id: u32,
    /// When [`SeqSample::top_logprobs`] asked for them.
    pub logprobs: Option<Logprobs>,
}

/// Log-probabilities at one position: `log_softmax` of the model's raw logits over the ids the sampler
/// may choose (before the repetition penalty, temperature and the top-k / top-p / min-p filters, as
/// OpenAI and vLLM report them).
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    /// The chosen token's.
    pub chosen: f32,
    /// The most likely ids with theirs, most likely first (lowest id first on ties).
    pub top: Vec<(u32, f32)>,
}

impl Logprobs {
    /// From one row of logits `[vocab]`: ids `>= n_valid` are left out, NaN counts as -inf; the sum is
    /// taken in f64.
    pub fn from_logits(row: &[f32], n_valid: usize, chosen: u32, top_n: usize) -> Logprobs {
        let row = &row[..n_valid.min(row.len())];
        let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        let max = row
            .iter()
            .map(|&x| clean(x))
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (clean(x) as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let lp = |x: f32| (clean(x) as f64 - lse) as f32;
        // The top n by one pass with a short sorted list (n <= 20).
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
        if top_n > 0 {
            for (id, &x) in row.iter().enumerate() {
                let x = clean(x);
                if top.len() == top_n && x <= top[top_n - 1].1 {
                    continue;
                }
                let at = top.partition_point(|&(_, y)| y >= x);
                top.insert(at, (id as u32, x));
                top.truncate(top_n);
            }
        }
        Logprobs {
            chosen: row
                .get(chosen as usize)
                .map_or(f32::NEG_INFINITY, |&x| lp(x)),
            top: top.into_iter().map(|(id, x)| (id, lp(x))).collect(),
        }
    }
}

/// Refuse, before anything is allocated, a context whose per-slot buffers cannot exist on this device:
/// each layer's K and V cache ([slots * ctx, n_kv_heads * head_dim]), the RoPE table ([ctx, head_dim /
/// 2] x (cos, sin) f32) and the sampler's penalty window ([max_out, ctx] u32) are single bindings, each
/// at most the device's `max_storage_binding` bytes. The error says what fits.
fn check_context_fits(
    cfg: &ModelConfig,
    ctx: usize,
    slots: usize,
    max_out: usize,
    kv_type: KvType,
    caps: &crate::gpu::DeviceCaps,
) -> Result<()> {
    let limit = caps.max_storage_binding.min(caps.max_buffer_size) as u128;
    // Bytes per context position of each buffer, and what it is.
    let kv_row = (slots * cfg.n_kv_heads * cfg.head_dim * kv_type.bytes()) as u128;
    let per_pos = [
        (
            kv_row,
            format!("one layer's {} KV cache ({slots} slot(s))", kv_type.name()),
        ),
        ((cfg.head_dim * 4) as u128, "the RoPE table".to_string()),
        (
            (max_out * 4) as u128,
            "the sampler's penalty window".to_string(),
        ),
    ];
    let fits = per_pos
        .iter()
        .map(|(b, _)| limit / (*b).max(1))
        .min()
        .unwrap_or(u128::MAX);
    if let Some((b, what)) = per_pos.iter().find(|(b, _)| ctx as u128 * b > limit) {
        return Err(Error::Input(format!(
            "context size {ctx} does not fit this device: {what} would take {:.1} MiB, over its \
             {} MiB per buffer; at most {fits} tokens per slot fit here (--ctx-size)",
            (ctx as u128 * b) as f64 / (1u64 << 20) as f64,
            limit >> 20
        )));
    }
    let total_kv = 2 * cfg.n_layers as u128 * kv_row * ctx as u128;
    if total_kv > u64::MAX as u128 {
        return Err(Error::Input(format!(
            "context size {ctx}: the KV cache would take {total_kv} bytes (--ctx-size)"
        )));
    }
    Ok(())
}

/// Where a model load's time went, ms (wall clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LoadTimes {
    /// Opening the files (headers, metadata) before the device is touched; the tokenizer and chat
    /// template are built on another thread beside the rest of the load.
    pub files_ms: f64,
    /// Adapter and device creation, pipeline cache file read.
    pub device_ms: f64,
    /// Reading, converting and uploading the weights (page cache included).
    pub weights_ms: f64,
    /// Compiling the compute pipelines (the driver's cache makes a warm start fast), on other
    /// threads while the weights upload: this overlaps `weights_ms`.
    pub pipelines_ms: f64,
    /// The part of `pipelines_ms` the load waited for: before the weights, and after them until
    /// the last pipeline was built.
    pub pipelines_wait_ms: f64,
    /// Whether the pipelines came from a saved pipeline cache file.
    pub pipeline_cache_hit: bool,
}

/// A loaded model, ready to generate.
pub struct Model {
    pub gpu: Gpu,
    pub cfg: ModelConfig,
    pub gen_cfg: GenerationConfig,
    tokenizer: Option<Arc<Tokenizer>>,
    template: Option<ChatTemplate>,
    stop_ids: Vec<u32>,
    net: Decoder,
    kernels: Kernels,
    acts: Activations,
    kv: KvCache,
    steps: StepBuffers,
    _dummy: wgpu::Buffer,
    plan: Plan,
    /// [max_out, OUTPUT_WORDS] u32: the next ids of a call.
    readback: wgpu::Buffer,
    sampler: GpuSampler,
    /// The log-probability kernel of [`Model::score`] (perplexity.rs), built on first use.
    pub(crate) scorer: Option<crate::logprobs::LogprobKernel>,
    /// The same kernel for [`Model::output_logprobs`] (one row per output, up to 20 alternatives),
    /// built the first time a request asks for log-probabilities.
    step_logprobs: std::sync::OnceLock<crate::logprobs::LogprobKernel>,
    n_valid: usize,
    /// Per slot, the ids whose keys and values are in its region of the KV cache, in order.
    slots: Vec<Vec<u32>>,
    /// Wall time of the whole load (files, device, weights, pipelines), ms.
    pub load_ms: f64,
    /// Where the load's time went.
    pub load_times: LoadTimes,
    late_pipelines: usize,
    pub source: PathBuf,
}

struct St(SafetensorsWeights);

impl WeightSource for St {
    fn has(&self, name: &str) -> bool {
        self.0.has(name)
    }
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>> {
        self.0.matrix(name, rows, cols)
    }
    fn format(&self, name: &str, rows: usize, cols: usize) -> Result<QuantType> {
        self.0.format(name, rows, cols)
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.0.vector(name, len)
    }
}

/// Quantizes a float source's matrices at load, like llama-quantize: K-quants need rows that are a
/// multiple of 256, so narrower matrices fall back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, as
/// llama.cpp does), and each fallback is reported.
struct Quantizing<'a> {
    inner: &'a dyn WeightSource,
    target: QuantType,
    fallbacks: RefCell<Vec<(String, QuantType)>>,
}

impl<'a> Quantizing<'a> {
    fn new(inner: &'a dyn WeightSource, target: QuantType) -> Self {
        Quantizing {
            inner,
            target,
            fallbacks: RefCell::new(vec![]),
        }
    }

    fn type_for(&self, cols: usize) -> QuantType {
        let fits = |t: QuantType| cols.is_multiple_of(t.block_size());
        if fits(self.target) {
            return self.target;
        }
        let fallback = match self.target {
            QuantType::Q4_K => QuantType::Q5_0,
            QuantType::Q5_K => QuantType::Q5_1,
            QuantType::Q6_K => QuantType::Q8_0,
            _ => QuantType::F16,
        };
        if fits(fallback) {
            fallback
        } else {
            QuantType::F16
        }
    }

    /// One line per fallback type: "quantize Q4_K: 120 tensors fell back to Q5_0 (rows of 896 ...)".
    fn report(&self) -> Vec<String> {
        let f = self.fallbacks.borrow();
        let mut by_type: Vec<(QuantType, Vec<&str>)> = vec![];
        for (name, t) in f.iter() {
            match by_type.iter_mut().find(|(x, _)| x == t) {
                Some((_, v)) => v.push(name),
                None => by_type.push((*t, vec![name])),
            }
        }
        by_type
            .into_iter()
            .map(|(t, names)| {
                format!(
                    "quantize {}: {} tensor(s) fell back to {} (row length not a multiple of {}), e.g. {}",
                    self.target.name(),
                    names.len(),
                    t.name(),
                    self.target.block_size(),
                    names[0]
                )
            })
            .collect()
    }
}

impl WeightSource for Quantizing<'_> {
    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>> {
        let m = self.inner.matrix(name, rows, cols)?;
        let t = self.type_for(cols);
        if t != self.target {
            self.fallbacks.borrow_mut().push((name.to_string(), t));
        }
        let f32s = crate::reference::decode_weights(m.format, &m.gpu_data());
        let data = crate::reference::encode_weights(t, &f32s);
        Ok(HostMatrix {
            name: m.name,
            format: t,
            rows,
            cols,
            data: Cow::Owned(data),
            layout: HostLayout::Gpu,
        })
    }
    fn format(&self, name: &str, rows: usize, cols: usize) -> Result<QuantType> {
        self.inner.format(name, rows, cols)?;
        Ok(self.type_for(cols))
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.inner.vector(name, len)
    }
}

/// A model's tokenizer and chat template.
type Text = (Option<Tokenizer>, Option<ChatTemplate>);

/// The tokenizer and template another thread is building: calling it waits for them.
type PendingText<'a> = Box<dyn FnOnce() -> Result<Text> + 'a>;

fn pending(h: std::thread::ScopedJoinHandle<'_, Result<Text>>) -> PendingText<'_> {
    Box::new(move || {
        h.join()
            .unwrap_or_else(|_| Err(Error::Model("the tokenizer thread panicked".into())))
    })
}

impl Model {
    /// Load a Hugging Face model directory (config.json, model.safetensors or shards, tokenizer.json,
    /// tokenizer_config.json, generation_config.json).
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Model> {
        let t0 = Instant::now();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        if path.is_file() {
            return Self::load_gguf(path, opts, t0);
        }
        let cfg = ModelConfig::from_file(&path.join("config.json"))?;
        let gen_path = path.join("generation_config.json");
        let gen_cfg = if gen_path.exists() {
            GenerationConfig::from_file(&gen_path)?
        } else {
            Default::default()
        };
        let weights = St(SafetensorsWeights::open(path)?);
        let total = weights.0.total_bytes();
        // The tokenizer and template are read on another thread while the model loads.
        let text = || -> Result<Text> {
            let tokenizer = load_tokenizer(path)?;
            let tc_path = path.join("tokenizer_config.json");
            let template = if tc_path.exists() {
                ChatTemplate::from_tokenizer_config(&tc_path)?
            } else {
                None
            };
            Ok((tokenizer, template))
        };
        std::thread::scope(|s| {
            let text = pending(s.spawn(text));
            match opts.quant {
                Some(q) => {
                    let qw = Quantizing::new(&weights, q);
                    let m = Self::build(path, cfg, gen_cfg, text, &qw, total, opts, t0)?;
                    for line in qw.report() {
                        log::warn!("{line}");
                    }
                    Ok(m)
                }
                None => Self::build(path, cfg, gen_cfg, text, &weights, total, opts, t0),
            }
        })
    }

    fn load_gguf(path: &Path, opts: LoadOptions, t0: Instant) -> Result<Model> {
        if opts.quant.is_some() {
            return Err(Error::Input(
                "--quant applies to safetensors models; a GGUF file keeps its own types".into(),
            ));
        }
        let g = GgufModel::open(path)?;
        let gen_cfg = g.generation_config()?;
        let total = crate::gguf_loader::total_bytes(&g.file);
        let cfg = g.cfg.clone();
        // The tokenizer (151k tokens and merges for Qwen2) is built on another thread while the
        // model loads.
        let text = || -> Result<Text> {
            let lap = Instant::now();
            let tokenizer = g.tokenizer()?;
            let template = g.chat_template(tokenizer.as_ref())?;
            log::debug!(
                "tokenizer and chat template built in {:.0} ms",
                lap.elapsed().as_secs_f64() * 1e3
            );
            Ok((tokenizer, template))
        };
        std::thread::scope(|s| {
            let text = pending(s.spawn(text));
            Self::build(path, cfg, gen_cfg, text, &g, total, opts, t0)
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        path: &Path,
        cfg: ModelConfig,
        gen_cfg: GenerationConfig,
        text: PendingText<'_>,
        weights: &dyn WeightSource,
        total_bytes: u64,
        mut opts: LoadOptions,
        t0: Instant,
    ) -> Result<Model> {
        let ctx = opts.ctx_size.unwrap_or(cfg.max_position.min(4096));
        if ctx == 0 {
            return Err(Error::Input("context size must be at least 1".into()));
        }
        let batch = opts.batch.clamp(1, ctx);
        let n_slots = opts.slots.max(1);
        let files_ms = t0.elapsed().as_secs_f64() * 1e3;
        let lap = Instant::now();
        let gpu = Gpu::new(&opts.gpu)?;
        let device_ms = lap.elapsed().as_secs_f64() * 1e3;
        // Outputs asked for beyond the slots stop at what one binding of [rows, vocab] f32 logits holds.
        let binding_rows = (gpu.caps.max_storage_binding / (cfg.vocab as u64 * 4)) as usize;
        let max_out = opts
            .max_outputs
            .unwrap_or(n_slots)
            .min(batch)
            .min(binding_rows)
            .max(n_slots);
        let (mut shapes, tune_file) = crate::tune::shapes_for(&gpu.caps, &opts.tune)?;
        match &tune_file {
            Some(p) => log::info!("kernel shapes from the tuning file {}", p.display()),
            None => log::info!("kernel shapes: the device's defaults"),
        }
        if let Some(m) = opts.int8 {
            shapes.int8 = m;
        }
        if let Some(f) = &opts.shapes {
            f(&mut shapes);
        }
        // One attention invocation per output dim of a head.
        shapes.attn_wg = shapes.attn_wg.max(cfg.head_dim.next_power_of_two() as u32);
        let kv_type = opts.kv_type.unwrap_or(if gpu.caps.shader_f16 {
            KvType::F16
        } else {
            KvType::F32
        });
        check_context_fits(&cfg, ctx, n_slots, max_out, kv_type, &gpu.caps)?;
        if ctx > cfg.max_position && cfg.max_position > 0 {
            log::warn!(
                "context size {ctx} is over the model's trained maximum of {} positions; \
                 output past it may degrade",
                cfg.max_position
            );
        }
        let lap = Instant::now();
        let kernels = Kernels::new(&gpu, shapes)?;
        let kernels_ms = lap.elapsed().as_secs_f64() * 1e3;
        let mut done = 0u64;
        let mut cb = opts.progress.take();
        let mut progress = |name: &str, bytes: u64| {
            done += bytes;
            if let Some(cb) = cb.as_mut() {
                cb(name, done, total_bytes);
            }
        };
        let progress: &mut dyn FnMut(&str, u64) = &mut progress;
        let progress = RefCell::new(progress);
        let fusion = if opts.fuse {
            Fusion::On {
                align: kernels.shapes.segment_align(),
            }
        } else {
            Fusion::Off
        };
        let acts = Activations::new(&gpu, &cfg, batch, max_out, &kernels.shapes)?;
        let kv = KvCache::new(&gpu, &cfg, ctx, n_slots, kv_type)?;
        let steps = StepBuffers::new(&gpu, batch, max_out)?;
        let dummy = gpu.storage("dummy", 16)?;
        let mut stop_ids: Vec<u32> = gen_cfg.eos.iter().chain(&cfg.eos).copied().collect();
        stop_ids.sort();
        stop_ids.dedup();
        // The forward over placeholder weights (the tensors' metadata only) lists the pipelines it
        // needs; they compile on other threads while the weights upload on this one.
        let keys = {
            let w = Weights::placeholders(&gpu, weights, &progress, fusion, &dummy);
            let net = Decoder::new(&cfg, &w, ctx)?;
            if let Some(m) = net
                .matrices()
                .into_iter()
                .find(|m| !kernels.supports(m.format))
            {
                return Err(Error::Model(format!(
                    "tensor '{}' is {}, which has no GPU kernel yet",
                    m.name,
                    m.format.name()
                )));
            }
            let mut g = Graph::probe(&gpu, &kernels, &steps, &dummy);
            net.forward(&mut g, &acts, &kv, cfg.vocab);
            g.probed()
        };
        let lap = Instant::now();
        let (net, weights_ms, compiled) = std::thread::scope(|s| {
            let compile = s.spawn(|| {
                let t = Instant::now();
                kernels
                    .prebuild(&keys)
                    .map(|()| t.elapsed().as_secs_f64() * 1e3)
            });
            let w = Weights::new(&gpu, weights, &progress, fusion);
            let net = Decoder::new(&cfg, &w, ctx);
            let weights_ms = lap.elapsed().as_secs_f64() * 1e3;
            let compiled = compile.join().unwrap_or_else(|_| {
                Err(Error::Gpu("the pipeline compiling thread panicked".into()))
            });
            (net, weights_ms, compiled)
        });
        let net = net?;
        let compile_ms = compiled?;
        let wait_ms = lap.elapsed().as_secs_f64() * 1e3 - weights_ms;
        let (tokenizer, template) = text()?;
        let n_valid = tokenizer
            .as_ref()
            .map_or(cfg.vocab, |t| sampleable_ids(t).min(cfg.vocab));
        let lap = Instant::now();
        let built = kernels.built();
        let plan = {
            let mut g = Graph::new(&gpu, &kernels, &steps, &dummy);
            net.forward(&mut g, &acts, &kv, n_valid);
            g.finish()?
        };
        let late_pipelines = kernels.built() - built;
        if late_pipelines > 0 {
            log::warn!(
                "{late_pipelines} pipeline(s) were not listed by the placeholder forward and \
                 compiled after the weights"
            );
        }
        let readback = gpu.readback("next", (max_out * OUTPUT_WORDS * 4) as u64);
        let sampler = GpuSampler::with_rows(
            &gpu,
            &acts.logits,
            cfg.vocab,
            n_valid,
            max_out,
            max_out * ctx,
        )?;
        let after_ms = lap.elapsed().as_secs_f64() * 1e3;
        let load_times = LoadTimes {
            files_ms,
            device_ms,
            weights_ms,
            pipelines_ms: kernels_ms + compile_ms + after_ms,
            pipelines_wait_ms: kernels_ms + wait_ms.max(0.0) + after_ms,
            pipeline_cache_hit: gpu.pipeline_cache.as_ref().is_some_and(|c| c.loaded),
        };
        let mut m = Model {
            gpu,
            cfg,
            gen_cfg,
            tokenizer: tokenizer.map(Arc::new),
            template,
            stop_ids,
            net,
            kernels,
            acts,
            kv,
            steps,
            _dummy: dummy,
            plan,
            readback,
            sampler,
            scorer: None,
            step_logprobs: std::sync::OnceLock::new(),
            n_valid,
            slots: vec![Vec::new(); n_slots],
            load_ms: 0.0,
            load_times,
            late_pipelines,
            source: path.to_path_buf(),
        };
        // The uploads queued by write_buffer run at the next submit: run them now, inside the load.
        let lap = Instant::now();
        m.gpu.queue.submit([]);
        m.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
        m.load_times.weights_ms += lap.elapsed().as_secs_f64() * 1e3;
        m.gpu.save_pipeline_cache();
        m.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(m)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// Pipelines the load compiled after the weights because the placeholder forward, which lists
    /// them to compile alongside the upload, did not ask for them (0 unless a weight source's
    /// `format` disagrees with its `matrix`).
    pub fn late_pipelines(&self) -> usize {
        self.late_pipelines
    }
    /// The model's tokenizer (shared, so a stream decoder can outlive a borrow of the model).
    pub fn tokenizer(&self) -> Option<Arc<Tokenizer>> {
        self.tokenizer.clone()
    }
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }
    /// Ids that end generation: generation_config.json's eos ids and config.json's.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }
    /// Context (tokens of KV cache) of each sequence slot.
    pub fn ctx_size(&self) -> usize {
        self.kv.ctx
    }
    /// Sequence slots (independent sequences a call can advance together).
    pub fn n_slots(&self) -> usize {
        self.slots.len()
    }
    /// Tokens one call can hold.
    pub fn max_batch(&self) -> usize {
        self.acts.batch
    }
    /// Rows of logits one call can produce.
    pub fn max_outputs(&self) -> usize {
        self.acts.max_out
    }
    /// The ids in a slot's region of the KV cache, in order.
    pub fn slot_ids(&self, slot: usize) -> &[u32] {
        &self.slots[slot]
    }
    /// Keep only the first `len` tokens of a slot's cache (0: forget its sequence).
    pub fn truncate_slot(&mut self, slot: usize, len: usize) {
        self.slots[slot].truncate(len);
    }
    /// Tokens currently in the KV cache (slot 0, the single-sequence API's).
    pub fn position(&self) -> usize {
        self.slots[0].len()
    }
    /// The ids in the KV cache (slot 0), in order.
    pub fn cached_ids(&self) -> &[u32] {
        &self.slots[0]
    }
    /// Forget the conversation (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.slots[0].clear();
    }
    /// Keep only the first `pos` tokens of the cache (slot 0).
    pub fn truncate(&mut self, pos: usize) {
        self.slots[0].truncate(pos);
    }
    /// Benchmarks only (llama-bench's depth): make slot 0 hold `depth` positions without computing
    /// them, so that the next steps attend over `depth` cached keys at their true cost. The rows keep
    /// whatever values the cache holds (zeros on a fresh cache, finite values of earlier runs), so the
    /// outputs are meaningless; the ids recorded are `u32::MAX`, which no prompt shares a prefix with.
    pub fn fill_cache_for_bench(&mut self, depth: usize) -> Result<()> {
        self.fill_slot_for_bench(0, depth)
    }
    /// [`Model::fill_cache_for_bench`] for one slot of several.
    pub fn fill_slot_for_bench(&mut self, slot: usize, depth: usize) -> Result<()> {
        self.slots[slot].clear();
        self.check_fits(slot, depth)?;
        self.slots[slot].resize(depth, u32::MAX);
        Ok(())
    }
    /// [`Model::feed`] into one slot of several (greedy next id).
    pub fn feed_slot_for_bench(&mut self, slot: usize, ids: &[u32]) -> Result<u32> {
        self.feed_slot(slot, ids, None)
    }
    /// Sampling defaults from the model's generation_config.json (do_sample false or absent: greedy);
    /// flags override them field by field.
    pub fn sampling_defaults(&self) -> SamplingParams {
        let g = &self.gen_cfg;
        let mut p = SamplingParams::greedy();
        if g.do_sample.unwrap_or(false) {
            p.temperature = g.temperature.unwrap_or(1.0);
            p.top_k = g.top_k.unwrap_or(50);
            p.top_p = g.top_p.unwrap_or(1.0);
            p.min_p = g.min_p.unwrap_or(0.0);
        }
        p.repetition_penalty = g.repetition_penalty.unwrap_or(1.0);
        p
    }

    /// Ids the sampler may choose: below the tokenizer's defined count.
    pub fn n_valid(&self) -> usize {
        self.n_valid
    }
    /// Weight bytes resident on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.net.weight_bytes()
    }
    pub fn kv_bytes(&self) -> u64 {
        self.kv.bytes()
    }
    /// Bytes a decode step reads from memory at context length `ctx_len`: every weight matrix except
    /// the embedding (one row of it), the norms and biases, and the K and V cache rows attended to.
    pub fn bytes_per_token(&self, ctx_len: usize) -> u64 {
        let emb = self.net.embed.bytes();
        let emb_row = emb / self.cfg.vocab as u64;
        let kv = (ctx_len * self.cfg.kv_bytes_per_token(self.kv.kv_type)) as u64;
        self.net.weight_bytes() - emb + emb_row + kv + self.net.lm_head.is_none() as u64 * emb
    }

    /// Dispatches recorded per decoded token (one token, one output, at the start of the context).
    pub fn decode_dispatches(&self) -> usize {
        self.plan.dispatches_for(CallShape::new(1, 1))
    }
    /// Dispatches of a decode step with `ctx_len` tokens in the cache (split-K attention adds its
    /// reduces at long contexts).
    pub fn decode_dispatches_at(&self, ctx_len: usize) -> usize {
        let call = CallShape {
            kv_splits: self.kv_splits(&[[0, ctx_len as u32]]),
            ..CallShape::new(1, 1)
        };
        self.plan.dispatches_for(call)
    }
    /// Dispatches of a call of `tokens` tokens of sequences with `ctx_len` tokens cached, producing
    /// `outputs` rows of logits (the variant each linear layer picks, its int8 quantize included, and
    /// split-K attention's reduces where the call splits).
    pub fn call_dispatches(&self, tokens: usize, outputs: usize, ctx_len: usize) -> usize {
        let meta = vec![[0, ctx_len as u32]; tokens];
        let call = CallShape {
            kv_splits: self.kv_splits(&meta),
            ..CallShape::new(tokens, outputs)
        };
        self.plan.dispatches_for(call)
    }
    /// The plan's dispatch labels for a call.
    pub fn dispatch_labels(&self, call: CallShape) -> Vec<&'static str> {
        self.plan.labels(call)
    }
    /// The KV cache's element type.
    pub fn kv_type(&self) -> KvType {
        self.kv.kv_type
    }
    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Render messages with the model's chat template (add_generation_prompt) and tokenize.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let tpl = self.template.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{}: the model has no chat template; use --prompt-ids or a raw prompt",
                self.source.display()
            ))
        })?;
        let text = tpl.render(messages, true)?;
        self.encode(&text)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{}: the model has no tokenizer; pass --prompt-ids",
                self.source.display()
            ))
        })?;
        tok.encode(text)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is out of range (vocab_size {})",
                self.cfg.vocab
            )));
        }
        Ok(())
    }

    fn check_fits(&self, slot: usize, n: usize) -> Result<()> {
        let have = self.slots[slot].len();
        if have + n > self.kv.ctx {
            return Err(Error::Input(format!(
                "{n} tokens do not fit the context: {have} already in the cache, context size {} (raise --ctx-size, at most {})",
                self.kv.ctx,
                self.cfg.max_position
            )));
        }
        Ok(())
    }

    /// Run `ids` through the model (prefill in batches, or one decode step for a single id), appending
    /// them to the cache. Afterwards the last token's logits are on the GPU and its greedy choice is read
    /// back and returned.
    pub fn feed(&mut self, ids: &[u32]) -> Result<u32> {
        self.feed_slot(0, ids, None)
    }

    /// Like [`Model::feed`], but the next id is drawn by the GPU sampler with `params` and the uniform
    /// draw `u` (the repetition penalty covers the cache, `ids` included). Only the id is read back.
    pub fn feed_sampled(&mut self, ids: &[u32], params: &SamplingParams, u: f32) -> Result<u32> {
        self.feed_slot(
            0,
            ids,
            Some(SeqSample {
                params,
                u,
                top_logprobs: None,
            }),
        )
    }

    /// Feed one slot's ids in calls of at most `max_batch` tokens; the last call samples.
    fn feed_slot(&mut self, slot: usize, ids: &[u32], sample: Option<SeqSample>) -> Result<u32> {
        if ids.is_empty() {
            return Err(Error::Input(
                "empty prompt: at least one token is needed".into(),
            ));
        }
        self.check_ids(ids)?;
        self.check_fits(slot, ids.len())?;
        let greedy = SamplingParams::greedy();
        let sample = sample.unwrap_or(SeqSample {
            params: &greedy,
            u: 0.0,
            top_logprobs: None,
        });
        let n_chunks = ids.len().div_ceil(self.acts.batch);
        let mut next = 0;
        for (i, chunk) in ids.chunks(self.acts.batch).enumerate() {
            let last = i + 1 == n_chunks;
            let out = self.step_batch(&[SeqStep {
                slot,
                tokens: chunk,
                sample: last.then_some(sample),
            }])?;
            if let Some(id) = out[0] {
                next = id;
            }
        }
        Ok(next)
    }

    /// One batched forward over tokens of several sequences: each entry appends its tokens to its slot's
    /// cache, and those with `sample` get their next token (in the order of `seqs`; None for the
    /// others). At most `max_batch` tokens and `max_outputs` samples per call, each slot at most once.
    pub fn step_batch(&mut self, seqs: &[SeqStep]) -> Result<Vec<Option<u32>>> {
        Ok(self
            .step(seqs)?
            .into_iter()
            .map(|s| s.map(|s| s.id))
            .collect())
    }

    /// [`Model::step_batch`], with each output's log-probabilities where its [`SeqSample::top_logprobs`]
    /// asks for them ([`Model::output_logprobs`]).
    pub fn step(&mut self, seqs: &[SeqStep]) -> Result<Vec<Option<Sampled>>> {
        let ids = self.step_ids(seqs)?;
        let mut want = Vec::new();
        let mut row = 0;
        for (s, id) in seqs.iter().zip(&ids) {
            if let (Some(x), Some(id)) = (s.sample, id) {
                if let Some(n) = x.top_logprobs {
                    want.push((row, *id, n));
                }
                row += 1;
            }
        }
        let mut lps = self.output_logprobs(&want)?.into_iter();
        Ok(seqs
            .iter()
            .zip(ids)
            .map(|(s, id)| {
                let asked = s.sample.is_some_and(|x| x.top_logprobs.is_some());
                id.map(|id| Sampled {
                    id,
                    logprobs: if asked { lps.next() } else { None },
                })
            })
            .collect())
    }

    /// Log-probabilities of the latest call's outputs: for each `(output row, chosen id, top n)`, the
    /// chosen id's and the `n` most likely ids'.
    ///
    /// On the GPU (shaders/logprobs.wgsl, the kernel of `glint perplexity`): one dispatch over the
    /// output rows up to the last one asked, each row's log-softmax reduced there, and only the chosen
    /// id's log-probability and the top n come back (a few hundred bytes, not the `vocab * 4` bytes of
    /// a row of logits). A row whose logits hold a NaN (the softmax is then undefined) is read back
    /// and done on the CPU by [`Logprobs::from_logits`], which counts NaN as -inf.
    pub fn output_logprobs(&self, rows: &[(usize, u32, usize)]) -> Result<Vec<Logprobs>> {
        for &(row, _, n) in rows {
            if row >= self.acts.max_out {
                return Err(Error::Input(format!(
                    "output row {row} does not exist ({} rows)",
                    self.acts.max_out
                )));
            }
            if n > MAX_TOP_LOGPROBS {
                return Err(Error::Input(format!(
                    "top_logprobs = {n}, expected at most {MAX_TOP_LOGPROBS}"
                )));
            }
        }
        let Some(last) = rows.iter().map(|r| r.0).max() else {
            return Ok(Vec::new());
        };
        let kernel = match self.step_logprobs.get() {
            Some(k) => k,
            None => {
                let k = crate::logprobs::LogprobKernel::new(&self.gpu, self.acts.max_out, 1)?;
                self.step_logprobs.get_or_init(|| k)
            }
        };
        let vocab = self.cfg.vocab;
        let n_rows = last + 1;
        // Every row up to the last asked goes through the kernel (rows are few: at most the outputs
        // of one call); a row not asked requests id 0 and is ignored.
        let mut req = vec![0u32; n_rows];
        for &(row, chosen, _) in rows {
            req[row] = chosen;
        }
        let spec = crate::logprobs::LogprobSpec {
            n_valid: self.n_valid,
            n_req: 1,
            top_k: rows.iter().map(|r| r.2).max().unwrap_or(0),
        };
        let got = kernel.run(&self.gpu, &self.acts.logits, vocab, n_rows, &spec, &req)?;
        rows.iter()
            .map(|&(row, chosen, n)| {
                let g = &got[row];
                if !g.log_sum_exp.is_finite() {
                    let logits =
                        self.gpu
                            .read_f32(&self.acts.logits, (row * vocab) as u64, vocab)?;
                    return Ok(Logprobs::from_logits(&logits, self.n_valid, chosen, n));
                }
                Ok(Logprobs {
                    chosen: g.requested[0],
                    top: g.top.iter().take(n).map(|t| (t.id, t.logprob)).collect(),
                })
            })
            .collect()
    }

    /// Check a batched call, write its ids and per-token (slot, position) and outputs, and append its
    /// tokens to the slots: the call's shape and its number of outputs, ready to record.
    fn begin_call(&mut self, seqs: &[SeqStep]) -> Result<(CallShape, usize)> {
        let n_tokens: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if n_tokens == 0 || n_tokens > self.acts.batch {
            return Err(Error::Input(format!(
                "a call holds 1 to {} tokens, not {n_tokens}",
                self.acts.batch
            )));
        }
        let mut seen = vec![false; self.slots.len()];
        for s in seqs {
            if s.slot >= self.slots.len() {
                return Err(Error::Input(format!(
                    "slot {} does not exist ({} slots)",
                    s.slot,
                    self.slots.len()
                )));
            }
            if std::mem::replace(&mut seen[s.slot], true) {
                return Err(Error::Input(format!(
                    "slot {} appears twice in one call",
                    s.slot
                )));
            }
            if s.tokens.is_empty() {
                return Err(Error::Input(format!("slot {}: no tokens", s.slot)));
            }
            self.check_ids(s.tokens)?;
            self.check_fits(s.slot, s.tokens.len())?;
        }
        let mut ids = Vec::with_capacity(n_tokens);
        let mut meta = Vec::with_capacity(n_tokens);
        let mut out_rows = Vec::new();
        for s in seqs {
            let pos0 = self.slots[s.slot].len();
            for (t, &id) in s.tokens.iter().enumerate() {
                ids.push(id);
                meta.push([s.slot as u32, (pos0 + t) as u32]);
            }
            if s.sample.is_some() {
                out_rows.push(ids.len() as u32 - 1);
            }
        }
        let n_out = out_rows.len();
        let splits = self.kv_splits(&meta);
        let q = &self.gpu.queue;
        q.write_buffer(&self.acts.tokens, 0, bytemuck::cast_slice(&ids));
        let call = self.steps.write(q, &meta, &out_rows, splits)?;
        for s in seqs {
            self.slots[s.slot].extend_from_slice(s.tokens);
        }
        Ok((call, n_out))
    }

    /// The batched call itself: the next id of each sequence that samples.
    fn step_ids(&mut self, seqs: &[SeqStep]) -> Result<Vec<Option<u32>>> {
        let (call, n_out) = self.begin_call(seqs)?;
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.plan.record(&mut enc, call);
        if n_out == 0 {
            self.gpu.queue.submit([enc.finish()]);
            return Ok(vec![None; seqs.len()]);
        }
        // Pure greedy reads the argmax the plan already computed; anything else runs the sampler
        // (which applies the repetition penalty even at temperature 0).
        let sampled: Vec<(&SeqStep, SeqSample)> = seqs
            .iter()
            .filter_map(|s| s.sample.map(|x| (s, x)))
            .collect();
        let all_greedy = sampled
            .iter()
            .all(|(_, x)| x.params.is_greedy() && x.params.repetition_penalty == 1.0);
        let stride = if all_greedy {
            enc.copy_buffer_to_buffer(&self.acts.next, 0, &self.readback, 0, n_out as u64 * 4);
            1
        } else {
            let windows: Vec<Vec<u32>> = sampled
                .iter()
                .map(|(s, x)| penalty_window(&self.slots[s.slot], x.params.repeat_last_n))
                .collect();
            let rows: Vec<SampleRow> = sampled
                .iter()
                .zip(&windows)
                .map(|((_, x), w)| SampleRow {
                    params: x.params,
                    window: w,
                    u: x.u,
                })
                .collect();
            self.sampler.prepare_rows(&self.gpu.queue, &rows)?;
            self.sampler.record_rows(&mut enc, n_out);
            let bytes = (n_out * OUTPUT_WORDS * 4) as u64;
            enc.copy_buffer_to_buffer(self.sampler.output(), 0, &self.readback, 0, bytes);
            OUTPUT_WORDS
        };
        self.gpu.queue.submit([enc.finish()]);
        let bytes = self
            .gpu
            .read_mapped(&self.readback, (n_out * stride * 4) as u64)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        let mut k = 0;
        Ok(seqs
            .iter()
            .map(|s| {
                s.sample.map(|_| {
                    k += 1;
                    words[(k - 1) * stride]
                })
            })
            .collect())
    }

    /// Run one batched call (as [`Model::step`], without sampling) with every dispatch timed by GPU
    /// timestamps: each dispatch's name (kernel, and a linear layer's weight) and nanoseconds, in
    /// order. Each dispatch runs in a compute pass of its own ([`Plan::record_profiled`]), so the sum
    /// is somewhat above an ordinary call's time. Needs TIMESTAMP_QUERY.
    pub fn profile_call(&mut self, seqs: &[SeqStep]) -> Result<Vec<(String, f64)>> {
        if !self.gpu.caps.timestamps {
            return Err(Error::Input(format!(
                "profiling needs GPU timestamps (TIMESTAMP_QUERY), which {} does not have",
                self.gpu.describe()
            )));
        }
        let (call, _) = self.begin_call(seqs)?;
        let n = self.plan.dispatches_for(call) as u32;
        let set = self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * n,
        });
        let bytes = 16 * n as u64;
        let resolve = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = self.gpu.readback("profile read", bytes);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        let names = self.plan.record_profiled(&mut enc, call, &set);
        enc.resolve_query_set(&set, 0..2 * n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        self.gpu.queue.submit([enc.finish()]);
        let raw = self.gpu.read_mapped(&read, bytes)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = self.gpu.queue.get_timestamp_period() as f64;
        Ok(names
            .into_iter()
            .zip(ticks.chunks(2))
            .map(|(name, t)| (name, t[1].saturating_sub(t[0]) as f64 * period))
            .collect())
    }

    /// Split-K attention's key ranges for a call of these tokens (`Shapes::kv_splits`).
    fn kv_splits(&self, meta: &[[u32; 2]]) -> u32 {
        self.kernels.shapes.kv_splits(meta)
    }

    /// The logits of the latest call's first output ([vocab] f32; a 600 KB read for Qwen2).
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.gpu.read_f32(&self.acts.logits, 0, self.cfg.vocab)
    }

    /// Run `ids` through the model (slot 0, appended to its cache) and return the logits at every
    /// position (tests, scoring), in calls of at most `max_outputs` tokens.
    pub fn forward_all_logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let vocab = self.cfg.vocab;
        let mut out = Vec::with_capacity(ids.len());
        self.forward_logits_gpu(ids, 0, &mut |gpu, buf, _, rows| {
            let v = gpu.read_f32(buf, 0, rows * vocab)?;
            out.extend(v.chunks(vocab).map(|r| r.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Run `ids` through the model (slot 0, appended to its cache) and leave the logits of positions
    /// `first_logits..` on the GPU: calls of at most `max_batch` tokens, each asking for at most
    /// `max_outputs` rows of logits. After each call with outputs, `on_logits(gpu, logits, i0, rows)`
    /// gets the buffer whose rows `0..rows` ([rows, vocab] f32) are the logits of `ids[i0..i0 + rows]`.
    /// Nothing is read back here: the callback runs its own kernels on the buffer (perplexity.rs).
    pub fn forward_logits_gpu(
        &mut self,
        ids: &[u32],
        first_logits: usize,
        on_logits: &mut dyn FnMut(&Gpu, &wgpu::Buffer, usize, usize) -> Result<()>,
    ) -> Result<()> {
        self.check_ids(ids)?;
        self.check_fits(0, ids.len())?;
        let first = first_logits.min(ids.len());
        let mut pos = 0;
        while pos < ids.len() {
            // Tokens pos..end, of which out0..end get logits (none when out0 >= end).
            let out0 = first.max(pos);
            let end = ids
                .len()
                .min(pos + self.acts.batch)
                .min(out0 + self.acts.max_out);
            let chunk = &ids[pos..end];
            let pos0 = self.slots[0].len();
            let meta: Vec<[u32; 2]> = (0..chunk.len()).map(|t| [0, (pos0 + t) as u32]).collect();
            let out_rows: Vec<u32> = (out0.min(end) - pos..end - pos).map(|r| r as u32).collect();
            let splits = self.kv_splits(&meta);
            let q = &self.gpu.queue;
            q.write_buffer(&self.acts.tokens, 0, bytemuck::cast_slice(chunk));
            let call = self.steps.write(q, &meta, &out_rows, splits)?;
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            self.plan.record(&mut enc, call);
            self.gpu.queue.submit([enc.finish()]);
            self.slots[0].extend_from_slice(chunk);
            if !out_rows.is_empty() {
                on_logits(&self.gpu, &self.acts.logits, out0, out_rows.len())?;
            }
            pos = end;
        }
        Ok(())
    }

    /// Greedy generation: see [`Model::generate_with`].
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Generation> {
        let opts = GenerateOptions {
            max_tokens,
            ..Default::default()
        };
        self.generate_with(prompt, &opts, on_token)
    }

    /// Generate a continuation of `prompt`, the whole context so far (for a chat: every turn). The part
    /// of it already in the KV cache from the previous call is reused, not recomputed. Decoding stops at
    /// a stop id (included in the result), `max_tokens`, the end of the context, or when `on_token`
    /// answers [`Flow::Stop`].
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::Input(
                "empty prompt: at least one token is needed".into(),
            ));
        }
        let p = &opts.sampling;
        p.validate()?;
        // Reuse the cached prefix, but always run at least the last prompt token to get its logits.
        let same = self.slots[0]
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        self.truncate(same.min(prompt.len() - 1));
        let reused = self.position();
        let mut rng = SeededRng::new(p.seed);
        let t0 = Instant::now();
        let mut next = self.feed_sampled(&prompt[reused..], p, rng.next_uniform())?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        while tokens.len() < opts.max_tokens {
            tokens.push(next);
            if on_token(next) == Flow::Stop || self.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            if tokens.len() == opts.max_tokens || self.position() >= self.kv.ctx {
                break;
            }
            next = self.feed_sampled(&[next], p, rng.next_uniform())?;
        }
        Ok(Generation {
            tokens,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            prompt_ms,
            decode_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// The tokenizer of a model directory (tokenizer.json) or GGUF file, or None when it has none.
pub fn load_tokenizer(path: &Path) -> Result<Option<Tokenizer>> {
    if path.is_file() {
        return GgufModel::open(path)?.tokenizer();
    }
    let tok_path = path.join("tokenizer.json");
    if tok_path.exists() {
        Ok(Some(Tokenizer::from_file(&tok_path)?))
    } else {
        Ok(None)
    }
}

/// The tokenizer of a model, with an error naming what is missing.
pub fn tokenizer_for(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    load_tokenizer(path)?.ok_or_else(|| {
        Error::format(
            path,
            "no tokenizer (tokenizer.json, or tokenizer.ggml.* in a GGUF file)",
        )
    })
}

/// How many leading ids may be sampled: the tokenizer's ids, less a trailing run of padding entries
/// ("[PAD151665]" ...) that some Qwen2 tokenizers list for the embedding rows no token uses.
pub fn sampleable_ids(t: &Tokenizer) -> usize {
    let mut n = t.n_defined();
    while n > 0 {
        let is_pad = t.id_to_token(n as u32 - 1).is_some_and(|s| {
            s.strip_prefix("[PAD")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
        });
        if !is_pad {
            break;
        }
        n -= 1;
    }
    n
}
