//! The public runtime: load a model directory (or GGUF file) onto the GPU and run it.
//!
//! `Model` owns the GPU context, the weights, the activation buffers, the KV cache and the prebuilt
//! plans (decode, prefill, all-logits). A call writes the token ids and a 16-byte step uniform, records
//! the plan into one command buffer, submits once and reads back 4 bytes (the greedy token) or the
//! logits when asked.

use crate::chat::{ChatTemplate, Message};
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf_loader::GgufModel;
use crate::gpu::{Gpu, GpuOptions};
use crate::graph::{Activations, Graph, KvCache, LinearKind, Plan, StepUniform};
use crate::kernels::{Kernels, Shapes};
use crate::model::{Logits, Qwen2, WeightSource};
use crate::quant::QuantType;
use crate::safetensors_loader::SafetensorsWeights;
use crate::sampler::{penalty_window, GpuSampler, SamplingParams, SeededRng};
use crate::tokenizer::Tokenizer;
use crate::weights::HostMatrix;
use std::borrow::Cow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A load-progress callback: (tensor name, bytes uploaded so far, total bytes).
pub type Progress = Box<dyn FnMut(&str, u64, u64)>;

/// Options for [`Model::load`].
pub struct LoadOptions {
    pub gpu: GpuOptions,
    /// Context length (tokens of KV cache). Default: min(model maximum, 4096).
    pub ctx_size: Option<usize>,
    /// Tokens per prefill call (activation buffers are sized for it).
    pub batch: usize,
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

/// A loaded model, ready to generate.
pub struct Model {
    pub gpu: Gpu,
    pub cfg: ModelConfig,
    pub gen_cfg: GenerationConfig,
    tokenizer: Option<Arc<Tokenizer>>,
    template: Option<ChatTemplate>,
    stop_ids: Vec<u32>,
    net: Qwen2,
    kernels: Kernels,
    acts: Activations,
    kv: KvCache,
    step: wgpu::Buffer,
    dummy: wgpu::Buffer,
    decode: Plan,
    prefill: Plan,
    all_logits: Option<(Plan, wgpu::Buffer, usize)>,
    /// The log-probability kernel of [`Model::score`] (perplexity.rs), built on first use.
    pub(crate) scorer: Option<crate::logprobs::LogprobKernel>,
    readback: wgpu::Buffer,
    sampler: GpuSampler,
    n_valid: usize,
    /// The ids whose keys and values are in the KV cache, in order.
    cache: Vec<u32>,
    pub load_ms: f64,
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
        let f32s = crate::reference::decode_weights(m.format, &m.data);
        let data = crate::reference::encode_weights(t, &f32s);
        Ok(HostMatrix {
            name: m.name,
            format: t,
            rows,
            cols,
            data: Cow::Owned(data),
        })
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.inner.vector(name, len)
    }
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
        let tokenizer = load_tokenizer(path)?;
        let tc_path = path.join("tokenizer_config.json");
        let template = if tc_path.exists() {
            ChatTemplate::from_tokenizer_config(&tc_path)?
        } else {
            None
        };
        let weights = St(SafetensorsWeights::open(path)?);
        let total = weights.0.total_bytes();
        match opts.quant {
            Some(q) => {
                let qw = Quantizing::new(&weights, q);
                let m = Self::build(
                    path, cfg, gen_cfg, tokenizer, template, &qw, total, opts, t0,
                )?;
                for line in qw.report() {
                    log::warn!("{line}");
                }
                Ok(m)
            }
            None => Self::build(
                path, cfg, gen_cfg, tokenizer, template, &weights, total, opts, t0,
            ),
        }
    }

    fn load_gguf(path: &Path, opts: LoadOptions, t0: Instant) -> Result<Model> {
        if opts.quant.is_some() {
            return Err(Error::Input(
                "--quant applies to safetensors models; a GGUF file keeps its own types".into(),
            ));
        }
        let g = GgufModel::open(path)?;
        let tokenizer = g.tokenizer()?;
        let template = g.chat_template(tokenizer.as_ref())?;
        let gen_cfg = g.generation_config()?;
        let total = crate::gguf_loader::total_bytes(&g.file);
        let cfg = g.cfg.clone();
        Self::build(path, cfg, gen_cfg, tokenizer, template, &g, total, opts, t0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        path: &Path,
        cfg: ModelConfig,
        gen_cfg: GenerationConfig,
        tokenizer: Option<Tokenizer>,
        template: Option<ChatTemplate>,
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
        let gpu = Gpu::new(&opts.gpu)?;
        let mut shapes = Shapes::for_device(&gpu.caps);
        // One attention invocation per output dim of a head.
        shapes.attn_wg = shapes.attn_wg.max(cfg.head_dim.next_power_of_two() as u32);
        let kernels = Kernels::new(&gpu, shapes)?;
        let mut done = 0u64;
        let mut cb = opts.progress.take();
        let mut progress = |name: &str, bytes: u64| {
            done += bytes;
            if let Some(cb) = cb.as_mut() {
                cb(name, done, total_bytes);
            }
        };
        let net = Qwen2::load(&gpu, &cfg, weights, ctx, &mut progress)?;
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
        let acts = Activations::new(&gpu, &cfg, batch)?;
        let kv = KvCache::new(&gpu, &cfg, ctx)?;
        let step = gpu.uniform_init(
            "step",
            bytemuck::bytes_of(&StepUniform {
                n_tokens: 1,
                pos0: 0,
                _pad: [0; 2],
            }),
        );
        let dummy = gpu.storage("dummy", 16)?;
        let n_valid = tokenizer
            .as_ref()
            .map_or(cfg.vocab, |t| sampleable_ids(t).min(cfg.vocab));
        let mut stop_ids: Vec<u32> = gen_cfg.eos.iter().chain(&cfg.eos).copied().collect();
        stop_ids.sort();
        stop_ids.dedup();
        let plan = |kind| {
            let mut g = Graph::new(&gpu, &kernels, &step, &dummy);
            net.forward(&mut g, &acts, &kv, kind, Logits::Last { n_valid });
            g.finish()
        };
        let decode = plan(LinearKind::Vec);
        let prefill = plan(LinearKind::Mat);
        let readback = gpu.readback("next", 4);
        let sampler = GpuSampler::new(&gpu, &acts.logits, n_valid, ctx)?;
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
            step,
            dummy,
            decode,
            prefill,
            all_logits: None,
            scorer: None,
            readback,
            sampler,
            n_valid,
            cache: Vec::new(),
            load_ms: 0.0,
            source: path.to_path_buf(),
        };
        m.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
        m.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(m)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
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
    pub fn ctx_size(&self) -> usize {
        self.kv.ctx
    }
    /// Tokens currently in the KV cache.
    pub fn position(&self) -> usize {
        self.cache.len()
    }
    /// The ids in the KV cache, in order.
    pub fn cached_ids(&self) -> &[u32] {
        &self.cache
    }
    /// Forget the conversation (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.cache.clear();
    }
    /// Keep only the first `pos` tokens of the cache.
    pub fn truncate(&mut self, pos: usize) {
        self.cache.truncate(pos);
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
        let kv = (ctx_len * self.cfg.kv_bytes_per_token()) as u64;
        self.net.weight_bytes() - emb + emb_row + kv + self.net.lm_head.is_none() as u64 * emb
    }

    /// Dispatches recorded per decoded token.
    pub fn decode_dispatches(&self) -> usize {
        self.decode.dispatches()
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
        if self.cache.len() + ids.len() > self.kv.ctx {
            return Err(Error::Input(format!(
                "{} tokens do not fit the context: {} already in the cache, context size {} (raise --ctx-size, at most {})",
                ids.len(),
                self.cache.len(),
                self.kv.ctx,
                self.cfg.max_position
            )));
        }
        Ok(())
    }

    fn write_step(&self, ids: &[u32]) {
        let q = &self.gpu.queue;
        q.write_buffer(&self.acts.tokens, 0, bytemuck::cast_slice(ids));
        let s = StepUniform {
            n_tokens: ids.len() as u32,
            pos0: self.cache.len() as u32,
            _pad: [0; 2],
        };
        q.write_buffer(&self.step, 0, bytemuck::bytes_of(&s));
    }

    /// Run `ids` through the model (prefill in batches, or one decode step for a single id), appending
    /// them to the cache. Afterwards the last token's logits are on the GPU and its greedy choice is read
    /// back and returned.
    pub fn feed(&mut self, ids: &[u32]) -> Result<u32> {
        self.step(ids, None)
    }

    /// Like [`Model::feed`], but the next id is drawn by the GPU sampler with `params` and the uniform
    /// draw `u` (the repetition penalty covers the cache, `ids` included). Only the id is read back.
    pub fn feed_sampled(&mut self, ids: &[u32], params: &SamplingParams, u: f32) -> Result<u32> {
        self.step(ids, Some((params, u)))
    }

    fn step(&mut self, ids: &[u32], sampling: Option<(&SamplingParams, f32)>) -> Result<u32> {
        if ids.is_empty() {
            return Err(Error::Input(
                "empty prompt: at least one token is needed".into(),
            ));
        }
        self.check_ids(ids)?;
        let mut next = 0;
        let n_chunks = ids.len().div_ceil(self.acts.batch);
        for (i, chunk) in ids.chunks(self.acts.batch).enumerate() {
            self.write_step(chunk);
            self.cache.extend_from_slice(chunk);
            let plan = if chunk.len() == 1 {
                &self.decode
            } else {
                &self.prefill
            };
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            plan.record(&mut enc, chunk.len() as u32);
            // Pure greedy reads the argmax the plan already computed; anything else runs the sampler
            // (which applies the repetition penalty even at temperature 0).
            match sampling {
                Some((p, u))
                    if i + 1 == n_chunks && !(p.is_greedy() && p.repetition_penalty == 1.0) =>
                {
                    let window = penalty_window(&self.cache, p.repeat_last_n);
                    self.sampler.prepare(&self.gpu.queue, p, &window, u)?;
                    self.sampler.record(&mut enc);
                    enc.copy_buffer_to_buffer(self.sampler.output(), 0, &self.readback, 0, 4);
                }
                _ => enc.copy_buffer_to_buffer(&self.acts.next, 0, &self.readback, 0, 4),
            }
            self.gpu.queue.submit([enc.finish()]);
            let bytes = self.gpu.read_mapped(&self.readback, 4)?;
            next = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Ok(next)
    }

    /// The last token's logits from the latest `feed` ([vocab] f32; a 600 KB read for Qwen2).
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.gpu.read_f32(&self.acts.logits, 0, self.cfg.vocab)
    }

    /// Run `ids` through the model and return the logits at every position (tests, scoring).
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

    /// Run `ids` through the model (appended to the cache) and leave the logits of positions
    /// `first_logits..` on the GPU: the ids before `first_logits` go through the prefill plan (no LM
    /// head but the last token's), the rest through the all-logits plan in calls of at most as many
    /// rows as one binding holds. After each such call, `on_logits(gpu, logits, i0, rows)` gets the
    /// buffer whose rows `0..rows` ([rows, vocab] f32) are the logits of `ids[i0..i0 + rows]`.
    /// Nothing is read back here: the callback runs its own kernels on the buffer (perplexity.rs).
    pub fn forward_logits_gpu(
        &mut self,
        ids: &[u32],
        first_logits: usize,
        on_logits: &mut dyn FnMut(&Gpu, &wgpu::Buffer, usize, usize) -> Result<()>,
    ) -> Result<()> {
        self.check_ids(ids)?;
        let first = first_logits.min(ids.len());
        if first > 0 {
            self.step(&ids[..first], None)?;
        }
        if self.all_logits.is_none() {
            let row = (self.cfg.vocab * 4) as u64;
            let rows = ((self.gpu.caps.max_storage_binding / row) as usize).min(self.acts.batch);
            if rows == 0 {
                return Err(Error::Gpu(
                    "one row of logits exceeds the device's binding size".into(),
                ));
            }
            let buf = self.gpu.storage("all_logits", rows as u64 * row)?;
            let mut g = Graph::new(&self.gpu, &self.kernels, &self.step, &self.dummy);
            self.net.forward(
                &mut g,
                &self.acts,
                &self.kv,
                LinearKind::Mat,
                Logits::All(&buf),
            );
            self.all_logits = Some((g.finish(), buf, rows));
        }
        let (plan, buf, rows) = self.all_logits.as_ref().expect("built above");
        let mut i0 = first;
        for chunk in ids[first..].chunks(*rows) {
            self.write_step(chunk);
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            plan.record(&mut enc, chunk.len() as u32);
            self.gpu.queue.submit([enc.finish()]);
            on_logits(&self.gpu, buf, i0, chunk.len())?;
            self.cache.extend_from_slice(chunk);
            i0 += chunk.len();
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
        let same = self
            .cache
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        self.truncate(same.min(prompt.len() - 1));
        let reused = self.cache.len();
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
            if tokens.len() == opts.max_tokens || self.cache.len() >= self.kv.ctx {
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
