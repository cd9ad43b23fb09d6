//! Token sampling: the parameters, a seeded PRNG, a CPU reference in f64 and the GPU sampler
//! (shaders/sample.wgsl), which chooses the next id from the logits buffer in one dispatch so that only
//! 4 bytes come back per token.
//!
//! Semantics follow transformers (generation/utils.py), in its order: repetition penalty -> temperature
//! -> top-k -> top-p -> min-p -> sample.
//! - Repetition penalty `p` over every distinct id of the window (the last `repeat_last_n` ids of the
//!   context, prompt included; 0 = the whole context): `score < 0 ? score * p : score / p`, once per id.
//! - Temperature: scores / T. T == 0 is greedy: the argmax of the penalised logits, lowest id on ties.
//! - top-k (0 = off): keep the scores >= the k-th largest (every tie at the boundary is kept).
//! - top-p (1 = off): keep x iff the probability mass of the scores strictly greater than x is < top_p
//!   (the max is always kept). For distinct scores this is transformers' rule (sort ascending, remove
//!   cumsum <= 1 - top_p); with ties at the boundary transformers' sort may keep part of a tie group,
//!   here a tie group is kept or dropped whole.
//! - min-p (0 = off): keep prob >= min_p * max prob.
//! - Ids >= n_valid are never chosen. NaN logits count as -inf.
//! - The draw: softmax over the kept set; the first id (ascending) whose cumulative mass exceeds
//!   u * total, with u in [0, 1) from [`SeededRng`].
//!
//! Per token: `window = penalty_window(&context, p.repeat_last_n)`, `u = rng.next_uniform()`,
//! `sampler.prepare(&queue, &p, &window, u)`; record the forward pass, then `sampler.record(&mut enc)`
//! into the same encoder; copy 4 bytes of `sampler.output()` to the readback buffer; submit once.
//! [`reference_distribution`] / [`reference_sample`] are the CPU reference the tests compare against.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::uniforms::{SampleParams, SAMPLE_GREEDY, SAMPLE_TOP_P};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    /// How many of the last context ids the penalty covers; 0 = the whole context.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl SamplingParams {
    /// Temperature 0, every filter and the penalty off.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Reject values no sampler can honour (names the field and the expected range).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, want: &str| {
            Err(Error::Input(format!(
                "sampling: {what} = {v}, expected {want}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "a finite value >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "a value in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "a value in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "a finite value > 0",
            );
        }
        Ok(())
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

/// splitmix64: a small deterministic PRNG. The same seed gives the same draws on every platform.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 24 bits: exactly representable in f32.
    pub fn next_uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The distinct ids of the last `repeat_last_n` tokens of `context` (0 = all), ascending.
pub fn penalty_window(context: &[u32], repeat_last_n: usize) -> Vec<u32> {
    let start = if repeat_last_n == 0 {
        0
    } else {
        context.len().saturating_sub(repeat_last_n)
    };
    let mut w = context[start..].to_vec();
    w.sort_unstable();
    w.dedup();
    w
}

fn penalise(x: f32, p: f32) -> f32 {
    if x < 0.0 {
        x * p
    } else {
        x / p
    }
}

/// The scores the filters see, in f32 as on the GPU: logits[..n_valid], the penalty on the window ids,
/// divided by the temperature unless greedy; NaN -> -inf, -0 -> +0.
pub fn reference_scores(
    logits: &[f32],
    n_valid: usize,
    p: &SamplingParams,
    window: &[u32],
) -> Vec<f32> {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut s: Vec<f32> = logits[..n_valid].iter().map(|&x| clean(x)).collect();
    if p.repetition_penalty != 1.0 {
        for &w in window {
            let w = w as usize;
            if w < n_valid {
                // From the original logit: a repeated id is penalised once.
                s[w] = penalise(clean(logits[w]), p.repetition_penalty);
            }
        }
    }
    if !p.is_greedy() {
        for v in &mut s {
            *v /= p.temperature;
        }
    }
    for v in &mut s {
        if *v == 0.0 {
            *v = 0.0;
        }
    }
    s
}

fn argmax_lowest(s: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in s.iter().enumerate() {
        if v > s[best] {
            best = i;
        }
    }
    best as u32
}

/// CPU reference (f64), same semantics as the GPU sampler: the kept ids with their final probabilities,
/// ascending id. Greedy gives the argmax with probability 1.
pub fn reference_distribution(
    logits: &[f32],
    n_valid: usize,
    p: &SamplingParams,
    window: &[u32],
) -> Vec<(u32, f64)> {
    let s = reference_scores(logits, n_valid, p, window);
    let greedy = vec![(argmax_lowest(&s), 1.0)];
    if p.is_greedy() {
        return greedy;
    }
    let n = s.len();
    let mut keep = vec![true; n];
    if p.top_k > 0 && p.top_k < n {
        let mut sorted = s.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[p.top_k - 1];
        for (k, v) in keep.iter_mut().zip(&s) {
            *k = *v >= kth;
        }
    }
    let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = s.iter().map(|&v| (v as f64 - m).exp()).collect();
    if p.top_p < 1.0 {
        let z: f64 = (0..n).filter(|&i| keep[i]).map(|i| e[i]).sum();
        let bound = p.top_p as f64 * z;
        let mut order: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
        order.sort_unstable_by(|&a, &b| s[b].total_cmp(&s[a]));
        // Walk tie groups from the top; `above` is the mass strictly greater than the group.
        let mut above = 0.0;
        let mut g = 0;
        while g < order.len() {
            let v = s[order[g]];
            let mut end = g;
            let mut group = 0.0;
            while end < order.len() && s[order[end]] == v {
                group += e[order[end]];
                end += 1;
            }
            let keep_group = g == 0 || above < bound;
            for &i in &order[g..end] {
                keep[i] = keep_group;
            }
            above += group;
            g = end;
        }
    }
    if p.min_p > 0.0 {
        for i in 0..n {
            if keep[i] && e[i] < p.min_p as f64 {
                keep[i] = false;
            }
        }
    }
    let total: f64 = (0..n).filter(|&i| keep[i]).map(|i| e[i]).sum();
    if !(total > 0.0 && total.is_finite()) {
        return greedy;
    }
    (0..n)
        .filter(|&i| keep[i])
        .map(|i| (i as u32, e[i] / total))
        .collect()
}

/// The id the reference draws with uniform `u`: the first (ascending) whose cumulative probability
/// exceeds u.
pub fn reference_sample(
    logits: &[f32],
    n_valid: usize,
    p: &SamplingParams,
    window: &[u32],
    u: f32,
) -> u32 {
    let dist = reference_distribution(logits, n_valid, p, window);
    let mut cum = 0.0;
    let mut last = dist[0].0;
    for &(id, q) in &dist {
        cum += q;
        if q > 0.0 {
            last = id;
            if cum > u as f64 {
                return id;
            }
        }
    }
    last
}

/// What the kernel writes to [`GpuSampler::output`]: [`OUTPUT_WORDS`] u32.
/// 0: the chosen id; 1: the kept count; 2: the kept mass as f32 bits (sum of exp(score - max) over the
/// kept set); 3: the threshold key; 4: the length of the kernel's short candidate list (0 when the
/// filters ran over the whole vocabulary). Words 1.. are for tests and debugging; the engine reads
/// word 0.
pub const OUTPUT_WORDS: usize = 8;

/// The decoded output buffer.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SampleOutput {
    pub id: u32,
    pub kept: u32,
    pub mass: f32,
    pub threshold_key: u32,
    pub short_list: u32,
}

impl SampleOutput {
    /// Decode the words read back from [`GpuSampler::output`]; words not read (a 4-byte read of the
    /// id alone) decode as 0.
    pub fn from_bytes(b: &[u8]) -> Self {
        let mut w = [0u32; OUTPUT_WORDS];
        for (word, c) in w.iter_mut().zip(b.chunks_exact(4)) {
            *word = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        SampleOutput {
            id: w[0],
            kept: w[1],
            mass: f32::from_bits(w[2]),
            threshold_key: w[3],
            short_list: w[4],
        }
    }
}

/// One row to sample: its parameters, its penalty window ([`penalty_window`]; duplicates are harmless)
/// and its uniform draw in [0, 1).
#[derive(Clone, Copy, Debug)]
pub struct SampleRow<'a> {
    pub params: &'a SamplingParams,
    pub window: &'a [u32],
    pub u: f32,
}

/// GPU sampler bound to one logits buffer of up to `max_rows` rows; built once, reused every call (no
/// per-call allocation). Each row is sampled by its own workgroup with its own parameters.
pub struct GpuSampler {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    window: wgpu::Buffer,
    /// Scratch: the key of every id's score ([max_rows, ceil(n_valid / 4)] vec4<u32>).
    _keys: wgpu::Buffer,
    out: wgpu::Buffer,
    n_valid: usize,
    row_stride: usize,
    max_rows: usize,
    max_window: usize,
}

impl GpuSampler {
    /// One row: `logits` holds at least `n_valid` f32; ids >= n_valid are never chosen. `max_window`
    /// bounds the penalty window `prepare` accepts.
    pub fn new(
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        n_valid: usize,
        max_window: usize,
    ) -> Result<Self> {
        Self::with_rows(gpu, logits, n_valid, n_valid, 1, max_window)
    }

    /// `max_rows` rows of `row_stride` f32 in `logits`; `max_window` bounds the penalty window of all the
    /// rows of a call together.
    pub fn with_rows(
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        row_stride: usize,
        n_valid: usize,
        max_rows: usize,
        max_window: usize,
    ) -> Result<Self> {
        Self::build(
            gpu,
            logits,
            row_stride,
            n_valid,
            max_rows,
            max_window,
            crate::kernels::SAMPLE,
        )
    }

    /// [`GpuSampler::new`] with another version of shaders/sample.wgsl (same bindings; the prelude is
    /// added): for benchmarking kernel variants side by side.
    #[doc(hidden)]
    pub fn with_source(
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        n_valid: usize,
        max_window: usize,
        wgsl: &str,
    ) -> Result<Self> {
        Self::build(gpu, logits, n_valid, n_valid, 1, max_window, wgsl)
    }

    fn build(
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        row_stride: usize,
        n_valid: usize,
        max_rows: usize,
        max_window: usize,
        wgsl: &str,
    ) -> Result<Self> {
        let need = ((max_rows.max(1) - 1) * row_stride + n_valid) as u64 * 4;
        if n_valid == 0 || n_valid > row_stride || need > logits.size() {
            return Err(Error::Gpu(format!(
                "sampler: {max_rows} row(s) of {n_valid} ids (stride {row_stride}) do not fit the \
                 logits buffer of {} f32",
                logits.size() / 4
            )));
        }
        // Counts are summed in f32 in the kernel: exact below 2^24.
        if n_valid >= 1 << 24 {
            return Err(Error::Gpu(format!(
                "sampler: vocabulary of {n_valid} ids, at most 2^24 - 1 supported"
            )));
        }
        let max_rows = max_rows.max(1);
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let src = crate::kernels::compose(wgsl, None);
        let module = gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("sample"),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("sample"),
                layout: None,
                module: &module,
                entry_point: Some("sample"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[],
                    // The kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let params = gpu.storage(
            "sample.params",
            (max_rows * std::mem::size_of::<SampleParams>()) as u64,
        )?;
        let window = gpu.storage("sample.window", max_window.max(1) as u64 * 4)?;
        let keys = gpu.storage("sample.keys", (max_rows * n_valid.div_ceil(4)) as u64 * 16)?;
        let out = gpu.storage("sample.out", (max_rows * OUTPUT_WORDS) as u64 * 4)?;
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("sample"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                (0, &params),
                (1, logits),
                (2, &window),
                (3, &keys),
                (4, &out),
            ]
            .map(|(binding, buf)| wgpu::BindGroupEntry {
                binding,
                resource: buf.as_entire_binding(),
            }),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the sampling pipeline failed: {e}"
            )));
        }
        Ok(GpuSampler {
            pipeline,
            bind_group,
            params,
            window,
            _keys: keys,
            out,
            n_valid,
            row_stride,
            max_rows,
            max_window,
        })
    }

    /// Write one row's parameters, window ids and uniform draw (queue writes only).
    pub fn prepare(
        &self,
        queue: &wgpu::Queue,
        p: &SamplingParams,
        window: &[u32],
        u: f32,
    ) -> Result<()> {
        self.prepare_rows(
            queue,
            &[SampleRow {
                params: p,
                window,
                u,
            }],
        )
    }

    /// Write the parameters, windows and draws of rows 0 .. rows.len() (queue writes only).
    pub fn prepare_rows(&self, queue: &wgpu::Queue, rows: &[SampleRow]) -> Result<()> {
        if rows.len() > self.max_rows {
            return Err(Error::Input(format!(
                "sampling: {} rows, the sampler was built for {}",
                rows.len(),
                self.max_rows
            )));
        }
        let mut uni = Vec::with_capacity(rows.len());
        let mut windows: Vec<u32> = Vec::new();
        for r in rows {
            let p = r.params;
            p.validate()?;
            if !(0.0..1.0).contains(&r.u) {
                return Err(Error::Input(format!(
                    "sampling: u = {}, expected [0, 1)",
                    r.u
                )));
            }
            let penalised = p.repetition_penalty != 1.0 && !r.window.is_empty();
            let greedy = p.is_greedy();
            let top_k = if p.top_k >= self.n_valid { 0 } else { p.top_k };
            let top_p = !greedy && p.top_p < 1.0;
            let mut flags = 0;
            if greedy {
                flags |= SAMPLE_GREEDY;
            }
            if top_p {
                flags |= SAMPLE_TOP_P;
            }
            uni.push(SampleParams {
                n_valid: self.n_valid as u32,
                n_window: if penalised { r.window.len() as u32 } else { 0 },
                top_k: if greedy { 0 } else { top_k as u32 },
                flags,
                temperature: if greedy { 1.0 } else { p.temperature },
                top_p: p.top_p,
                min_p: if greedy { 0.0 } else { p.min_p },
                penalty: p.repetition_penalty,
                u: r.u,
                window_off: windows.len() as u32,
                row_stride: self.row_stride as u32,
                ..Default::default()
            });
            if penalised {
                windows.extend_from_slice(r.window);
            }
        }
        if windows.len() > self.max_window {
            return Err(Error::Input(format!(
                "sampling: penalty windows of {} ids in all, the sampler was built for {}",
                windows.len(),
                self.max_window
            )));
        }
        queue.write_buffer(&self.params, 0, bytemuck::cast_slice(&uni));
        if !windows.is_empty() {
            queue.write_buffer(&self.window, 0, bytemuck::cast_slice(&windows));
        }
        Ok(())
    }

    /// Record the sampling dispatch of one row (into an encoder, after the forward pass that filled
    /// the logits).
    pub fn record(&self, enc: &mut wgpu::CommandEncoder) {
        self.record_rows(enc, 1);
    }

    /// Record the sampling dispatch of rows 0 .. n_rows.
    pub fn record_rows(&self, enc: &mut wgpu::CommandEncoder, n_rows: usize) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("sample"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(n_rows.min(self.max_rows) as u32, 1, 1);
    }

    /// The buffer holding the chosen ids: [rows, OUTPUT_WORDS] u32, row r's id at word r *
    /// OUTPUT_WORDS (see [`SampleOutput`]), to copy into a readback buffer.
    pub fn output(&self) -> &wgpu::Buffer {
        &self.out
    }

    pub fn n_valid(&self) -> usize {
        self.n_valid
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}
