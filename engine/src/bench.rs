//! Model benchmarks in llama-bench's terms (`glint bench`): `pp{p}` feeds a prompt of p token ids in
//! batched prefill, `tg{n}` generates n tokens one decode step at a time, each repeated `reps` times after
//! a warm-up run and reported as mean ± standard deviation of tokens per second. Tokenization and
//! sampling are excluded: the ids are fixed pseudo-random ids below the model's valid vocabulary, and
//! each step's time is the engine's own cost (write the step, one submit, the 4-byte read back).
//!
//! Besides t/s the report gives, for generation, the memory traffic achieved (bytes a decode step must
//! read, [`Model::bytes_per_token`] at the test's average context length, divided by the time per
//! token), the dispatches and submits per token, and the GPU memory the process allocated, plus the
//! machine's load average: on a shared machine the numbers mean little without it.
//!
//! ```no_run
//! use glint::bench::{run_bench, BenchSpec};
//! let spec = BenchSpec { n_prompt: vec![128], n_gen: vec![32], reps: 3, ..Default::default() };
//! let mut model = glint::Model::load("models/qwen2".as_ref(), spec.load_options(Default::default()))?;
//! let report = run_bench(&mut model, &spec)?;
//! println!("{}", report.to_markdown());
//! # Ok::<(), glint::Error>(())
//! ```

use crate::config::ModelConfig;
use crate::engine::{LoadOptions, Model, SeqSample, SeqStep};
use crate::error::{Error, Result};
use crate::gpu::GpuOptions;
use crate::sampler::SamplingParams;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Prompt lengths, one `pp` test each (0 entries are skipped, as in llama-bench).
    pub n_prompt: Vec<usize>,
    /// Generation lengths, one `tg` test each (0 entries are skipped).
    pub n_gen: Vec<usize>,
    /// Timed repetitions of every test.
    pub reps: usize,
    /// Run every test once, untimed, before timing it (shortened: at most 16 prompt tokens for `pp`,
    /// 2 steps for `tg`).
    pub warmup: bool,
    /// Tokens fed (untimed) before a `tg` test's timed steps. 0 starts from an empty cache, as
    /// llama-bench does.
    pub tg_prompt: usize,
    /// llama-bench's depths (`-d`): every test runs once per depth with that many positions already
    /// in the cache. They are a synthetic fill (`Model::fill_cache_for_bench`: not computed, so a
    /// depth of 16384 costs no minutes of prefill first); attention over them costs what it would over
    /// real keys. 0: an empty cache.
    pub depths: Vec<usize>,
    /// Tokens per prefill submit (`LoadOptions::batch`); `Model` does not expose it, so the spec carries
    /// it for the submit count. Use [`BenchSpec::load_options`] to load the model consistently.
    pub batch: usize,
    /// Context size to load with; `None`: just enough for the tests ([`BenchSpec::ctx_needed`]).
    pub ctx_size: Option<usize>,
    /// Seed of the token ids.
    pub seed: u64,
    /// Sequences decoded together by the `tg` tests (llama-batched-bench's `-npl`). 1 is the plain
    /// `tg{n}`; each S > 1 adds a `tg{n} x{S}` test: S slots, each after its own `tg_prompt` ids (and
    /// depth), then n steps of one token of every slot per batched forward, so its t/s counts all S
    /// slots' tokens (the aggregate that continuous batching in `glint serve` gets).
    pub parallel: Vec<usize>,
    /// Also profile one decode step per `parallel` entry ([`BenchReport::profile`]): every dispatch
    /// timed by GPU timestamps, summed per kernel and weight.
    pub profile: bool,
}

impl Default for BenchSpec {
    fn default() -> Self {
        BenchSpec {
            n_prompt: vec![512],
            n_gen: vec![128],
            reps: 5,
            warmup: true,
            tg_prompt: 8,
            depths: vec![0],
            batch: 512,
            ctx_size: None,
            seed: 42,
            parallel: vec![1],
            profile: false,
        }
    }
}

impl BenchSpec {
    fn prompts(&self) -> impl Iterator<Item = usize> + '_ {
        self.n_prompt.iter().copied().filter(|&p| p > 0)
    }
    fn gens(&self) -> impl Iterator<Item = usize> + '_ {
        self.n_gen.iter().copied().filter(|&n| n > 0)
    }

    /// The smallest context that holds every test: the longest prompt, or the `tg` prompt plus the
    /// longest generation.
    pub fn ctx_needed(&self) -> usize {
        let pp = self.prompts().max().unwrap_or(0);
        let tg = self.gens().max().map_or(0, |n| self.tg_prompt + n);
        self.depth_list().into_iter().max().unwrap_or(0) + pp.max(tg).max(1)
    }

    /// The depths to run at (`[0]` when none are given).
    fn depth_list(&self) -> Vec<usize> {
        if self.depths.is_empty() {
            vec![0]
        } else {
            self.depths.clone()
        }
    }

    /// The sequence counts of the `tg` tests (`[1]` when none are given).
    fn parallel_list(&self) -> Vec<usize> {
        if self.parallel.is_empty() {
            vec![1]
        } else {
            self.parallel.clone()
        }
    }

    /// The sequences of the widest `tg` test: the slots (and tokens per call) the model needs.
    fn widest(&self) -> usize {
        self.parallel.iter().copied().max().unwrap_or(1)
    }

    /// Load options matching the spec: its context size (or just what the tests need) per slot,
    /// batch, and a slot per sequence of the widest `tg` test.
    pub fn load_options(&self, gpu: GpuOptions) -> LoadOptions {
        let slots = self.widest();
        LoadOptions {
            gpu,
            ctx_size: Some(self.ctx_size.unwrap_or_else(|| self.ctx_needed())),
            batch: self.batch.max(1).max(slots),
            slots,
            ..Default::default()
        }
    }
}

/// The machine a measurement ran on: when, how many CPUs, and how loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// UTC, ISO 8601 ("2026-11-20T17:15:53Z").
    pub date_utc: String,
    pub os: String,
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages (`uptime`), where the OS reports them.
    pub load_avg: Option<[f64; 3]>,
}

impl Machine {
    pub fn capture() -> Self {
        Machine {
            date_utc: utc_now(),
            os: std::env::consts::OS.to_string(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_avg: load_average(),
        }
    }

    /// "2026-11-20T17:15:53Z, linux, 2 CPUs, load average 4.98 3.13 2.65".
    pub fn describe(&self) -> String {
        format!(
            "{}, {}, {} CPUs, load average {}",
            self.date_utc,
            self.os,
            self.cpus,
            fmt_load(self.load_avg)
        )
    }
}

/// "4.98 3.13 2.65", or "unknown".
pub fn fmt_load(l: Option<[f64; 3]>) -> String {
    match l {
        Some([a, b, c]) => format!("{a:.2} {b:.2} {c:.2}"),
        None => "unknown".into(),
    }
}

/// The 1, 5 and 15 minute load averages: /proc/loadavg on Linux, else the output of `uptime`.
pub fn load_average() -> Option<[f64; 3]> {
    let parse = |s: &str| -> Option<[f64; 3]> {
        let v: Vec<f64> = s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map_while(|w| w.parse().ok())
            .collect();
        (v.len() >= 3).then(|| [v[0], v[1], v[2]])
    };
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        return parse(&s);
    }
    let out = std::process::Command::new("uptime").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let tail = s.rsplit_once("load average")?.1;
    parse(tail.trim_start_matches(['s', ':', ' ']))
}

/// The current time, UTC, ISO 8601, without a date crate.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parameters of a Qwen2 model: every matrix, bias and norm weight (the embedding counted once when
/// the LM head is tied to it), as llama-bench counts them.
pub fn param_count(c: &ModelConfig) -> u64 {
    let (h, i) = (c.hidden as u64, c.intermediate as u64);
    let qd = (c.n_heads * c.head_dim) as u64;
    let kvd = (c.n_kv_heads * c.head_dim) as u64;
    let layer = (qd * h + qd) + 2 * (kvd * h + kvd) + h * qd + 3 * i * h + 2 * h;
    let emb = c.vocab as u64 * h;
    emb * (1 + !c.tie_embeddings as u64) + c.n_layers as u64 * layer + h
}

/// One test's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct TestReport {
    /// "pp512", "tg128".
    pub name: String,
    /// Prompt tokens: timed for `pp`, fed untimed before the steps for `tg`.
    pub n_prompt: usize,
    /// Generated tokens (`tg`), 0 for `pp`.
    pub n_gen: usize,
    /// Positions already in the cache (synthetic fill) before the test's tokens (llama-bench's depth).
    pub n_depth: usize,
    /// Tokens timed per repetition.
    pub n_tokens: usize,
    /// Wall time of every repetition, nanoseconds.
    pub samples_ns: Vec<u64>,
    /// Tokens per second of every repetition.
    pub samples_ts: Vec<f64>,
    pub avg_ns: f64,
    pub stddev_ns: f64,
    /// Mean and sample standard deviation of `samples_ts` (llama-bench's t/s column).
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// Average number of cached tokens a timed step attends to.
    pub avg_ctx: f64,
    /// `tg`: bytes a decode step reads at `avg_ctx` (`Model::bytes_per_token`).
    pub bytes_per_token: Option<u64>,
    /// `tg`: `bytes_per_token` x t/s, in GB/s (10^9 bytes).
    pub avg_gb_s: Option<f64>,
    /// Submits per repetition: 1 per step for `tg`, one per batch of `batch` tokens for `pp`.
    pub submits: usize,
    /// Compute dispatches per repetition (the prefill plan has the decode plan's steps).
    pub dispatches: usize,
    pub submits_per_token: f64,
    pub dispatches_per_token: f64,
}

/// The result of [`run_bench`].
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub glint_version: String,
    /// File name of the model (the directory name for a safetensors model).
    pub model_filename: String,
    pub model_path: String,
    /// Weight bytes resident on the GPU.
    pub model_size: u64,
    pub model_n_params: u64,
    /// "wgpu-Vulkan".
    pub backend: String,
    pub device: String,
    pub device_type: String,
    pub driver: String,
    pub timestamps_supported: bool,
    pub ctx_size: usize,
    pub batch: usize,
    pub reps: usize,
    pub warmup: bool,
    pub kv_bytes: u64,
    /// KV cache element type ("f16", "f32").
    pub kv_type: String,
    /// Where the int8 matvec runs ("off", "decode", "matvec": `Shapes::int8`). Absent in reports
    /// written before it.
    #[serde(default)]
    pub int8: String,
    /// Bytes of every buffer the model allocated on the GPU (weights, KV cache, activations).
    pub gpu_allocated_bytes: u64,
    /// Dispatches of one decode step.
    pub decode_dispatches: usize,
    /// The machine when the run started.
    pub machine: Machine,
    /// The load average when the run ended.
    pub load_avg_end: Option<[f64; 3]>,
    pub tests: Vec<TestReport>,
    /// With [`BenchSpec::profile`]: one decode step per `parallel` entry, where its time goes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<StepProfile>,
}

/// Where one decode step of `seqs` sequences (one token each, after `tg_prompt` tokens) spends its
/// GPU time: every dispatch in a compute pass of its own, timed by the GPU's timestamps
/// ([`Model::profile_call`]), the median of the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct StepProfile {
    pub seqs: usize,
    /// Per kernel (and, for a linear layer, weight, format and shape: "matvec_tok
    /// model.layers.*.mlp.down_proj Q6_K 896x4864"), in order of first use, summed over the layers.
    pub rows: Vec<ProfileRow>,
    /// Sum of every dispatch's time (ns).
    pub gpu_ns: f64,
    /// Wall time of the same step run as usual, one pass and a read back (ns, median).
    pub step_ns: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProfileRow {
    pub name: String,
    /// Dispatches of this name in the step.
    pub dispatches: usize,
    /// Their summed time (ns, median over the repetitions).
    pub ns: f64,
}

/// Deterministic token ids below `n` (xorshift64*).
fn token_ids(seed: u64, count: usize, n: usize) -> Vec<u32> {
    let mut s = seed.max(1);
    (0..count)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545F4914F6CDD1D) >> 32) as u32 % n.max(1) as u32
        })
        .collect()
}

/// Mean and sample standard deviation (n - 1; 0 for a single sample).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The name a report shows for a model path: the file name (or directory name).
pub fn model_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Run every test of `spec` on `model` (loaded with [`BenchSpec::load_options`], or at least with a
/// context of [`BenchSpec::ctx_needed`]). The cache is reset before each repetition.
pub fn run_bench(model: &mut Model, spec: &BenchSpec) -> Result<BenchReport> {
    if spec.reps == 0 {
        return Err(Error::Input(
            "bench: at least one repetition is needed (-r)".into(),
        ));
    }
    if spec.prompts().next().is_none() && spec.gens().next().is_none() {
        return Err(Error::Input(
            "bench: no test to run (every -p and -n is 0)".into(),
        ));
    }
    let ctx = model.ctx_size();
    if spec.ctx_needed() > ctx {
        return Err(Error::Input(format!(
            "bench: the tests need a context of {} tokens (the deepest -d, plus the longest prompt or {} \
             prompt tokens plus the longest generation); the model was loaded with {ctx} (raise -c)",
            spec.ctx_needed(),
            spec.tg_prompt
        )));
    }
    if spec.parallel.contains(&0) {
        return Err(Error::Input(
            "bench: --parallel 0: every entry is a number of sequences decoded together, at least 1"
                .into(),
        ));
    }
    let widest = spec.widest();
    if widest > model.n_slots() || widest > model.max_batch() {
        return Err(Error::Input(format!(
            "bench: --parallel {widest} needs {widest} sequence slots and calls of {widest} tokens; the \
             model was loaded with {} slot(s) and calls of {} (load it with BenchSpec::load_options)",
            model.n_slots(),
            model.max_batch()
        )));
    }
    let machine = Machine::capture();
    let batch = spec.batch.clamp(1, ctx);
    let n_valid = model.n_valid();
    let mut tests = Vec::new();

    for depth in spec.depth_list() {
        for (k, p) in spec.prompts().enumerate() {
            let ids = token_ids(spec.seed ^ ((k as u64 + 1) * 0x9E37), p, n_valid);
            let once = |model: &mut Model, ids: &[u32]| -> Result<u64> {
                model.fill_cache_for_bench(depth)?;
                let t = Instant::now();
                model.feed(ids)?;
                Ok(t.elapsed().as_nanos() as u64)
            };
            if spec.warmup {
                // The prefill plan on a short prompt: first-use costs without a full extra run.
                once(model, &ids[..p.min(16)])?;
            }
            let samples = (0..spec.reps)
                .map(|_| once(model, &ids))
                .collect::<Result<Vec<_>>>()?;
            let submits = p.div_ceil(batch);
            // Calls of `batch` tokens, the last of the rest; one output each.
            let dispatches: usize = (0..submits)
                .map(|c| model.call_dispatches((p - c * batch).min(batch), 1, depth + p))
                .sum();
            tests.push(summarise(
                test_name(format!("pp{p}"), depth),
                depth,
                p,
                0,
                p,
                samples,
                depth as f64 + (p + 1) as f64 / 2.0,
                None,
                submits,
                dispatches,
            ));
        }

        for (k, n) in spec.gens().enumerate() {
            for seqs in spec.parallel_list() {
                // Every slot's ids: `len` of them, from its own seed (slot 0's: the single-sequence
                // test's).
                let ids_per_slot = |base: u64, len: usize| -> Vec<Vec<u32>> {
                    (0..seqs as u64)
                        .map(|s| token_ids(spec.seed ^ base ^ k as u64 ^ (s << 32), len, n_valid))
                        .collect()
                };
                let prompts = ids_per_slot(0xA5A5, spec.tg_prompt);
                // per_slot[s][i]: slot s's token at step i.
                let per_slot = ids_per_slot(0x5A5A, n);
                let greedy = SamplingParams::greedy();
                let sample = SeqSample {
                    params: &greedy,
                    u: 0.0,
                    top_logprobs: None,
                };
                // The first `steps` steps, after each slot's depth and prompt.
                let run = |model: &mut Model, steps: usize| -> Result<u64> {
                    for (slot, prompt) in prompts.iter().enumerate() {
                        model.fill_slot_for_bench(slot, depth)?;
                        if !prompt.is_empty() {
                            model.feed_slot_for_bench(slot, prompt)?;
                        }
                    }
                    let t = Instant::now();
                    for i in 0..steps {
                        let step: Vec<SeqStep> = per_slot
                            .iter()
                            .enumerate()
                            .map(|(slot, ids)| SeqStep {
                                slot,
                                tokens: std::slice::from_ref(&ids[i]),
                                sample: Some(sample),
                            })
                            .collect();
                        model.step_batch(&step)?;
                    }
                    Ok(t.elapsed().as_nanos() as u64)
                };
                if spec.warmup {
                    run(model, n.min(2))?;
                }
                let samples = (0..spec.reps)
                    .map(|_| run(model, n))
                    .collect::<Result<Vec<_>>>()?;
                // Step i (0-based) attends to depth + tg_prompt + i + 1 cached tokens in every slot.
                let avg_ctx = (depth + spec.tg_prompt) as f64 + (n + 1) as f64 / 2.0;
                let at = avg_ctx.round() as usize;
                let dispatches = model.call_dispatches(seqs, seqs, at);
                // A step reads the weights once and every slot's keys and values.
                let kv = model.bytes_per_token(at) - model.bytes_per_token(0);
                let bytes = (model.bytes_per_token(0) + seqs as u64 * kv) / seqs as u64;
                let name = if seqs == 1 {
                    format!("tg{n}")
                } else {
                    format!("tg{n} x{seqs}")
                };
                tests.push(summarise(
                    test_name(name, depth),
                    depth,
                    spec.tg_prompt,
                    n,
                    n * seqs,
                    samples,
                    avg_ctx,
                    Some(bytes),
                    n,
                    n * dispatches,
                ));
            }
        }
    }

    let profile = if spec.profile {
        spec.parallel_list()
            .into_iter()
            .map(|seqs| profile_step(model, spec, seqs))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };

    let info = &model.gpu.info;
    Ok(BenchReport {
        glint_version: env!("CARGO_PKG_VERSION").to_string(),
        model_filename: model_name(&model.source),
        model_path: model.source.display().to_string(),
        model_size: model.weight_bytes(),
        model_n_params: param_count(&model.cfg),
        backend: format!("wgpu-{:?}", info.backend),
        device: info.name.clone(),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        timestamps_supported: model.gpu.caps.timestamps,
        ctx_size: ctx,
        batch,
        reps: spec.reps,
        warmup: spec.warmup,
        kv_bytes: model.kv_bytes(),
        kv_type: model.kv_type().name().to_string(),
        int8: model.kernels().shapes.int8.name().to_string(),
        gpu_allocated_bytes: model.gpu.allocated_bytes(),
        decode_dispatches: model.decode_dispatches(),
        machine,
        load_avg_end: load_average(),
        tests,
        profile,
    })
}

/// [`StepProfile`] of a decode step of `seqs` slots, each after `tg_prompt` tokens.
fn profile_step(model: &mut Model, spec: &BenchSpec, seqs: usize) -> Result<StepProfile> {
    let n_valid = model.n_valid();
    let ids: Vec<Vec<u32>> = (0..seqs as u64)
        .map(|s| token_ids(spec.seed ^ 0xC3C3 ^ (s << 32), spec.tg_prompt + 1, n_valid))
        .collect();
    let greedy = SamplingParams::greedy();
    let sample = SeqSample {
        params: &greedy,
        u: 0.0,
        top_logprobs: None,
    };
    let step: Vec<SeqStep> = ids
        .iter()
        .enumerate()
        .map(|(slot, ids)| SeqStep {
            slot,
            tokens: &ids[spec.tg_prompt..],
            sample: Some(sample),
        })
        .collect();
    let reset = |model: &mut Model| -> Result<()> {
        for (slot, ids) in ids.iter().enumerate() {
            model.fill_slot_for_bench(slot, 0)?;
            if spec.tg_prompt > 0 {
                model.feed_slot_for_bench(slot, &ids[..spec.tg_prompt])?;
            }
        }
        Ok(())
    };
    // One untimed call first (first-use costs), then the repetitions.
    reset(model)?;
    model.profile_call(&step)?;
    let mut runs = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..spec.reps {
        reset(model)?;
        runs.push(model.profile_call(&step)?);
        reset(model)?;
        let t = Instant::now();
        model.step_batch(&step)?;
        walls.push(t.elapsed().as_nanos() as f64);
    }
    // Per name: (dispatches, each repetition's sum).
    let mut rows: Vec<(String, usize, Vec<f64>)> = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        for (name, ns) in run {
            let k = match rows.iter().position(|row| &row.0 == name) {
                Some(k) => k,
                None => {
                    rows.push((name.clone(), 0, vec![0.0; runs.len()]));
                    rows.len() - 1
                }
            };
            if r == 0 {
                rows[k].1 += 1;
            }
            rows[k].2[r] += ns;
        }
    }
    let rows: Vec<ProfileRow> = rows
        .into_iter()
        .map(|(name, dispatches, mut v)| ProfileRow {
            name,
            dispatches,
            ns: median(&mut v),
        })
        .collect();
    Ok(StepProfile {
        seqs,
        gpu_ns: rows.iter().map(|r| r.ns).sum(),
        rows,
        step_ns: median(&mut walls),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "tg128", or llama-bench's "tg128 @ d4096" at a depth.
fn test_name(base: String, depth: usize) -> String {
    if depth == 0 {
        base
    } else {
        format!("{base} @ d{depth}")
    }
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    name: String,
    n_depth: usize,
    n_prompt: usize,
    n_gen: usize,
    n_tokens: usize,
    samples_ns: Vec<u64>,
    avg_ctx: f64,
    bytes_per_token: Option<u64>,
    submits: usize,
    dispatches: usize,
) -> TestReport {
    let ns: Vec<f64> = samples_ns.iter().map(|&x| x as f64).collect();
    let ts: Vec<f64> = ns
        .iter()
        .map(|&x| n_tokens as f64 * 1e9 / x.max(1.0))
        .collect();
    let (avg_ns, stddev_ns) = mean_sd(&ns);
    let (avg_ts, stddev_ts) = mean_sd(&ts);
    TestReport {
        name,
        n_depth,
        n_prompt,
        n_gen,
        n_tokens,
        samples_ns,
        samples_ts: ts,
        avg_ns,
        stddev_ns,
        avg_ts,
        stddev_ts,
        avg_ctx,
        bytes_per_token,
        avg_gb_s: bytes_per_token.map(|b| b as f64 * avg_ts / 1e9),
        submits,
        dispatches,
        submits_per_token: submits as f64 / n_tokens as f64,
        dispatches_per_token: dispatches as f64 / n_tokens as f64,
    }
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
}

fn params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.2} K", n as f64 / 1e3)
    }
}

impl BenchReport {
    /// llama-bench's markdown table, with glint's extra columns, and a line naming the run's settings
    /// and the machine's load.
    pub fn to_markdown(&self) -> String {
        let header = [
            "model",
            "size",
            "params",
            "backend",
            "device",
            "test",
            "t/s",
            "GB/s",
            "disp/tok",
            "submits/tok",
            "GPU mem",
        ];
        let right = [
            false, true, true, false, false, true, true, true, true, true, true,
        ];
        let rows: Vec<Vec<String>> = self
            .tests
            .iter()
            .map(|t| {
                vec![
                    self.model_filename.clone(),
                    mib(self.model_size),
                    params(self.model_n_params),
                    self.backend.clone(),
                    self.device.clone(),
                    t.name.clone(),
                    format!("{:.2} ± {:.2}", t.avg_ts, t.stddev_ts),
                    t.avg_gb_s.map_or("-".into(), |g| format!("{g:.2}")),
                    format!("{:.2}", t.dispatches_per_token),
                    format!("{:.3}", t.submits_per_token),
                    mib(self.gpu_allocated_bytes),
                ]
            })
            .collect();
        let width: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].chars().count())
                    .chain([header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (c, cell) in cells.iter().enumerate() {
                let pad = width[c] - cell.chars().count();
                if right[c] {
                    s += &format!(" {}{} |", " ".repeat(pad), cell);
                } else {
                    s += &format!(" {}{} |", cell, " ".repeat(pad));
                }
            }
            s + "\n"
        };
        let mut out = line(&header.map(String::from));
        out += "|";
        for (c, w) in width.iter().enumerate() {
            out += &if right[c] {
                format!(" {}: |", "-".repeat(w - 1))
            } else {
                format!(" {} |", "-".repeat(*w))
            };
        }
        out += "\n";
        for r in &rows {
            out += &line(r);
        }
        out += &format!(
            "\nglint {}, {} ({}, {}), ctx {}, {} KV cache, int8 matvec {}, batch {}, r {}{}, tg after {} prompt tokens{}; {}; load average at end {}\n",
            self.glint_version,
            self.device,
            self.device_type,
            self.driver,
            self.ctx_size,
            self.kv_type,
            if self.int8.is_empty() { "off" } else { &self.int8 },
            self.batch,
            self.reps,
            if self.warmup { " after a warm-up run" } else { "" },
            self.tests.iter().find(|t| t.n_gen > 0).map_or(0, |t| t.n_prompt),
            if self.tests.iter().any(|t| t.n_depth > 0) {
                " (@ dN: N positions already in the cache, a synthetic fill)"
            } else {
                ""
            },
            self.machine.describe(),
            fmt_load(self.load_avg_end)
        );
        out += &self.profile_markdown();
        out
    }

    /// The profile as a table: one row per kernel and weight, ms per step and share of the step's GPU
    /// time for each number of sequences.
    fn profile_markdown(&self) -> String {
        if self.profile.is_empty() {
            return String::new();
        }
        // Every name, in order of first use (a single-token step picks other variants than a batch).
        let mut names: Vec<(&str, usize)> = Vec::new();
        for p in &self.profile {
            for r in &p.rows {
                if !names.iter().any(|n| n.0 == r.name) {
                    names.push((&r.name, r.dispatches));
                }
            }
        }
        let mut out = String::from("\n| dispatch | n |");
        let mut rule = String::from("\n| --- | ---: |");
        for p in &self.profile {
            out += &format!(" ms x{} | % x{} |", p.seqs, p.seqs);
            rule += " ---: | ---: |";
        }
        out += &rule;
        out += "\n";
        for (name, dispatches) in names {
            out += &format!("| {name} | {dispatches} |");
            for p in &self.profile {
                let ns = p.rows.iter().find(|r| r.name == name).map_or(0.0, |r| r.ns);
                out += &format!(" {:.2} | {:.1} |", ns / 1e6, 100.0 * ns / p.gpu_ns.max(1.0));
            }
            out += "\n";
        }
        out += "| sum of the dispatches | |";
        for p in &self.profile {
            out += &format!(" {:.2} | 100 |", p.gpu_ns / 1e6);
        }
        out += "\n| the step as usual (wall) | |";
        for p in &self.profile {
            out += &format!(" {:.2} | |", p.step_ns / 1e6);
        }
        out += "\n\nProfile: one decode step (one token per sequence), each dispatch in a compute pass of its own \
                timed by GPU timestamps, median of the repetitions; the usual step runs them in one pass.\n";
        out
    }
}
