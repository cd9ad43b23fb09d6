//! The public runtime: load a model directory (or GGUF file) onto the GPU and run it.
//!
//! `Model` owns the GPU context, the weights, the activation buffers, the KV cache and the prebuilt
//! plans (decode, prefill, all-logits). A call writes the token ids and a 16-byte step uniform, records
//! the plan into one command buffer, submits once and reads back 4 bytes (the greedy token) or the
//! logits when asked.

use crate::chat::{ChatTemplate, Message};
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::graph::{Activations, Graph, KvCache, LinearKind, Plan, StepUniform};
use crate::kernels::{Kernels, Shapes};
use crate::model::{Logits, Qwen2, WeightSource};
use crate::safetensors_loader::SafetensorsWeights;
use crate::tokenizer::Tokenizer;
use crate::weights::HostMatrix;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Options for [`Model::load`].
pub struct LoadOptions {
    pub gpu: GpuOptions,
    /// Context length (tokens of KV cache). Default: min(model maximum, 4096).
    pub ctx_size: Option<usize>,
    /// Tokens per prefill call (activation buffers are sized for it).
    pub batch: usize,
    /// Called with (tensor name, bytes uploaded so far, total bytes) while weights upload.
    pub progress: Option<Box<dyn FnMut(&str, u64, u64)>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            gpu: GpuOptions::default(),
            ctx_size: None,
            batch: 256,
            progress: None,
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
    readback: wgpu::Buffer,
    n_valid: usize,
    pos: usize,
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
        if !path.is_dir() {
            return Err(Error::format(
                path,
                "expected a model directory (config.json, model.safetensors, ...)",
            ));
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
        Self::build(
            path, cfg, gen_cfg, tokenizer, template, &weights, total, opts, t0,
        )
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
        let kernels = Kernels::new(&gpu, Shapes::for_device(&gpu.caps))?;
        let mut done = 0u64;
        let mut cb = opts.progress.take();
        let mut progress = |name: &str, bytes: u64| {
            done += bytes;
            if let Some(cb) = cb.as_mut() {
                cb(name, done, total_bytes);
            }
        };
        let net = Qwen2::load(&gpu, &cfg, weights, ctx, &mut progress)?;
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
            .map_or(cfg.vocab, |t| t.n_defined().min(cfg.vocab));
        let mut stop_ids: Vec<u32> = gen_cfg.eos.iter().chain(&cfg.eos).copied().collect();
        stop_ids.sort();
        stop_ids.dedup();
        let plan = |kind| {
            let mut g = Graph::new(&gpu, &kernels, &step, &dummy);
            net.forward(&mut g, &acts, &kv, kind, Logits::Last, n_valid, None);
            g.finish()
        };
        let decode = plan(LinearKind::Vec);
        let prefill = plan(LinearKind::Mat);
        let readback = gpu.readback("next", 4);
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
            readback,
            n_valid,
            pos: 0,
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
        self.pos
    }
    /// Forget the conversation (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
    /// Keep only the first `pos` tokens of the cache.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
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
        if self.pos + ids.len() > self.kv.ctx {
            return Err(Error::Input(format!(
                "{} tokens do not fit the context: {} already in the cache, context size {} (raise --ctx-size, at most {})",
                ids.len(),
                self.pos,
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
            pos0: self.pos as u32,
            _pad: [0; 2],
        };
        q.write_buffer(&self.step, 0, bytemuck::bytes_of(&s));
    }

    /// Run `ids` through the model (prefill in batches, or one decode step for a single id), appending
    /// them to the cache. Afterwards the last token's logits are on the GPU and its greedy choice is read
    /// back and returned.
    pub fn feed(&mut self, ids: &[u32]) -> Result<u32> {
        if ids.is_empty() {
            return Err(Error::Input(
                "empty prompt: at least one token is needed".into(),
            ));
        }
        self.check_ids(ids)?;
        let mut next = 0;
        for chunk in ids.chunks(self.acts.batch) {
            self.write_step(chunk);
            let plan = if chunk.len() == 1 {
                &self.decode
            } else {
                &self.prefill
            };
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            plan.record(&mut enc, chunk.len() as u32);
            enc.copy_buffer_to_buffer(&self.acts.next, 0, &self.readback, 0, 4);
            self.gpu.queue.submit([enc.finish()]);
            let bytes = self.gpu.read_mapped(&self.readback, 4)?;
            next = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            self.pos += chunk.len();
        }
        Ok(next)
    }

    /// The last token's logits from the latest `feed` ([vocab] f32; a 600 KB read for Qwen2).
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.gpu.read_f32(&self.acts.logits, 0, self.cfg.vocab)
    }

    /// Run `ids` through the model and return the logits at every position (tests, scoring).
    pub fn forward_all_logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_ids(ids)?;
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
                Logits::All,
                self.n_valid,
                Some(&buf),
            );
            self.all_logits = Some((g.finish(), buf, rows));
        }
        let (plan, buf, rows) = self.all_logits.as_ref().expect("built above");
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(*rows) {
            self.write_step(chunk);
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            plan.record(&mut enc, chunk.len() as u32);
            self.gpu.queue.submit([enc.finish()]);
            let v = self.gpu.read_f32(buf, 0, chunk.len() * self.cfg.vocab)?;
            out.extend(v.chunks(self.cfg.vocab).map(|r| r.to_vec()));
            self.pos += chunk.len();
        }
        Ok(out)
    }

    /// Greedy generation from the current cache position: feed `prompt`, then decode until a stop id,
    /// `max_tokens`, or the end of the context. `on_token` sees each generated id as it is produced.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        mut on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Generation> {
        let t0 = Instant::now();
        let mut next = self.feed(prompt)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        while tokens.len() < max_tokens {
            tokens.push(next);
            if on_token(next) == Flow::Stop || self.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            if tokens.len() == max_tokens || self.pos >= self.kv.ctx {
                break;
            }
            next = self.feed(&[next])?;
        }
        Ok(Generation {
            tokens,
            finish_reason: finish,
            prompt_ms,
            decode_ms: t1.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// The tokenizer of a model directory (tokenizer.json), or None when the directory has none.
pub fn load_tokenizer(path: &Path) -> Result<Option<Tokenizer>> {
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
    load_tokenizer(path)?
        .ok_or_else(|| Error::format(path, "no tokenizer.json in this model directory"))
}
