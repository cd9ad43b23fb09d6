//! Log-probabilities on the GPU (shaders/logprobs.wgsl): for each row of a [n_rows, row_stride] logits
//! buffer, the log-softmax over the ids below `n_valid` evaluated at a few requested ids, the row's max
//! and log-sum-exp, its argmax and its top-k (k up to [`MAX_TOP_K`]). One dispatch, one workgroup per
//! row; only the compact result is read back ([`out_words`] u32 per row), never the logits.
//!
//! Perplexity asks for the next token at each position, KL divergence for the base model's top-k ids,
//! an HTTP server's `logprobs` / `top_logprobs` (up to 20) for the chosen token and the top-k.
//! The plain-Rust reference is [`crate::reference::logprobs`].

use crate::error::{Error, Result};
use crate::gpu::Gpu;

pub const LOGPROBS: &str = include_str!("../../shaders/logprobs.wgsl");

/// The most top-k entries a row can ask for (the kernel keeps them in private memory).
pub const MAX_TOP_K: usize = 32;

/// Words before the requested log-probabilities in each output row: max, lse, argmax, 0.
pub const HEADER_WORDS: usize = 4;

/// The kernel's parameters (shaders/logprobs.wgsl, LogprobParams).
#[repr(C)]
#[derive(Copy, Clone, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LogprobParams {
    pub n_rows: u32,
    pub row_stride: u32,
    pub n_valid: u32,
    pub n_req: u32,
    pub top_k: u32,
    pub _pad: [u32; 3],
}

/// u32 words per output row: the header, one per requested id, two per top-k entry.
pub fn out_words(n_req: usize, top_k: usize) -> usize {
    HEADER_WORDS + n_req + 2 * top_k
}

/// One id with its log-probability.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// What the kernel computes for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowLogprobs {
    /// The largest logit among the ids below n_valid.
    pub max_logit: f32,
    /// ln(sum_i exp(logit_i)) over the ids below n_valid: log p(id) = logit(id) - log_sum_exp.
    pub log_sum_exp: f32,
    /// The most likely id (lowest on ties).
    pub argmax: u32,
    /// log p at each requested id, in the order asked (-inf for an id >= n_valid).
    pub requested: Vec<f32>,
    /// The top-k, most likely first, lowest id first on ties; shorter than k when fewer than k ids
    /// have a finite logit.
    pub top: Vec<TokenLogprob>,
}

/// Decode `n_rows` output rows (`out_words(n_req, top_k)` words each).
pub fn parse_rows(words: &[u32], n_rows: usize, n_req: usize, top_k: usize) -> Vec<RowLogprobs> {
    let stride = out_words(n_req, top_k);
    words
        .chunks_exact(stride)
        .take(n_rows)
        .map(|w| {
            let f = |i: usize| f32::from_bits(w[i]);
            let top0 = HEADER_WORDS + n_req;
            RowLogprobs {
                max_logit: f(0),
                log_sum_exp: f(1),
                argmax: w[2],
                requested: (0..n_req).map(|j| f(HEADER_WORDS + j)).collect(),
                top: (0..top_k)
                    .map(|t| TokenLogprob {
                        id: w[top0 + 2 * t],
                        logprob: f(top0 + 2 * t + 1),
                    })
                    .take_while(|t| t.id != u32::MAX)
                    .collect(),
            }
        })
        .collect()
}

/// One call's shape: which ids count and what to report per row.
#[derive(Copy, Clone, Debug)]
pub struct LogprobSpec {
    /// Ids below this take part in the softmax (at most the row stride).
    pub n_valid: usize,
    /// Requested ids per row.
    pub n_req: usize,
    /// Top-k entries per row (0..=MAX_TOP_K).
    pub top_k: usize,
}

/// The log-probability pipeline with its parameter, request, output and readback buffers, sized for
/// at most `max_rows` rows of `max_req` requested ids and [`MAX_TOP_K`] top entries. Not bound to a
/// logits buffer: each call names its own (a bind group per call, which is cheap).
pub struct LogprobKernel {
    pipeline: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    req: wgpu::Buffer,
    out: wgpu::Buffer,
    readback: wgpu::Buffer,
    max_rows: usize,
    max_req: usize,
    wg: u32,
}

impl LogprobKernel {
    /// The workgroup size for a device: 256 invocations (one row is a long reduction).
    pub fn default_wg(_gpu: &Gpu) -> u32 {
        256
    }

    pub fn new(gpu: &Gpu, max_rows: usize, max_req: usize) -> Result<Self> {
        Self::with_wg(gpu, max_rows, max_req, Self::default_wg(gpu))
    }

    /// [`LogprobKernel::new`] with another workgroup size (a multiple of 16, at most 256): for tests
    /// and per-device tuning.
    pub fn with_wg(gpu: &Gpu, max_rows: usize, max_req: usize, wg: u32) -> Result<Self> {
        if wg == 0 || !wg.is_multiple_of(16) || wg > 256 {
            return Err(Error::Gpu(format!(
                "logprobs: workgroup size {wg}, expected a multiple of 16 up to 256"
            )));
        }
        if max_rows == 0 {
            return Err(Error::Gpu("logprobs: max_rows must be at least 1".into()));
        }
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("logprobs"),
                source: wgpu::ShaderSource::Wgsl(LOGPROBS.into()),
            });
        let pipeline = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("logprobs"),
                layout: None,
                module: &module,
                entry_point: Some("logprobs"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("WG", wg as f64)],
                    // The kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let params = gpu.uniform_init(
            "logprobs.params",
            bytemuck::bytes_of(&<LogprobParams as bytemuck::Zeroable>::zeroed()),
        );
        let req = gpu.storage("logprobs.req", (max_rows * max_req.max(1) * 4) as u64)?;
        let out_bytes = (max_rows * out_words(max_req, MAX_TOP_K) * 4) as u64;
        let out = gpu.storage("logprobs.out", out_bytes)?;
        let readback = gpu.readback("logprobs.readback", out_bytes);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the logprobs pipeline failed: {e}"
            )));
        }
        Ok(LogprobKernel {
            pipeline,
            params,
            req,
            out,
            readback,
            max_rows,
            max_req,
            wg,
        })
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
    pub fn max_req(&self) -> usize {
        self.max_req
    }
    pub fn wg(&self) -> u32 {
        self.wg
    }

    /// Check a call's shape and write its parameters and requested ids (queue writes only).
    /// `req` holds `n_rows * spec.n_req` ids, row-major.
    pub fn prepare(
        &self,
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        row_stride: usize,
        n_rows: usize,
        spec: &LogprobSpec,
        req: &[u32],
    ) -> Result<()> {
        let bad = |m: String| Err(Error::Gpu(format!("logprobs: {m}")));
        if n_rows == 0 || n_rows > self.max_rows {
            return bad(format!(
                "{n_rows} rows, the kernel was built for 1..={}",
                self.max_rows
            ));
        }
        if spec.n_req > self.max_req {
            return bad(format!(
                "{} requested ids per row, the kernel was built for at most {}",
                spec.n_req, self.max_req
            ));
        }
        if spec.top_k > MAX_TOP_K {
            return bad(format!("top_k {} is over {MAX_TOP_K}", spec.top_k));
        }
        if spec.n_valid == 0 || spec.n_valid > row_stride {
            return bad(format!(
                "n_valid {} must be in 1..={row_stride} (the row stride)",
                spec.n_valid
            ));
        }
        if req.len() != n_rows * spec.n_req {
            return bad(format!(
                "{} requested ids for {n_rows} rows of {}",
                req.len(),
                spec.n_req
            ));
        }
        if (n_rows * row_stride * 4) as u64 > logits.size() {
            return bad(format!(
                "{n_rows} rows of {row_stride} f32 exceed the logits buffer of {} bytes",
                logits.size()
            ));
        }
        let p = LogprobParams {
            n_rows: n_rows as u32,
            row_stride: row_stride as u32,
            n_valid: spec.n_valid as u32,
            n_req: spec.n_req as u32,
            top_k: spec.top_k as u32,
            _pad: [0; 3],
        };
        gpu.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        if !req.is_empty() {
            gpu.queue
                .write_buffer(&self.req, 0, bytemuck::cast_slice(req));
        }
        Ok(())
    }

    /// Record the dispatch over `n_rows` rows of `logits` and the copy of its output into the readback
    /// buffer (after [`LogprobKernel::prepare`], into the encoder that holds the forward pass or after it).
    pub fn record(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        logits: &wgpu::Buffer,
        n_rows: usize,
        spec: &LogprobSpec,
    ) {
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("logprobs"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                (0, &self.params),
                (1, logits),
                (2, &self.req),
                (3, &self.out),
            ]
            .map(|(binding, buf)| wgpu::BindGroupEntry {
                binding,
                resource: buf.as_entire_binding(),
            }),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("logprobs"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            let n = n_rows as u32;
            pass.dispatch_workgroups(n.min(65535), n.div_ceil(65535), 1);
        }
        let bytes = (n_rows * out_words(spec.n_req, spec.top_k) * 4) as u64;
        enc.copy_buffer_to_buffer(&self.out, 0, &self.readback, 0, bytes);
    }

    /// Read back the rows recorded by the last submitted [`LogprobKernel::record`].
    pub fn read(&self, gpu: &Gpu, n_rows: usize, spec: &LogprobSpec) -> Result<Vec<RowLogprobs>> {
        let bytes = (n_rows * out_words(spec.n_req, spec.top_k) * 4) as u64;
        let raw = gpu.read_mapped(&self.readback, bytes)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&raw);
        Ok(parse_rows(&words, n_rows, spec.n_req, spec.top_k))
    }

    /// prepare, record, submit and read in one call.
    pub fn run(
        &self,
        gpu: &Gpu,
        logits: &wgpu::Buffer,
        row_stride: usize,
        n_rows: usize,
        spec: &LogprobSpec,
        req: &[u32],
    ) -> Result<Vec<RowLogprobs>> {
        self.prepare(gpu, logits, row_stride, n_rows, spec, req)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(gpu, &mut enc, logits, n_rows, spec);
        gpu.queue.submit([enc.finish()]);
        self.read(gpu, n_rows, spec)
    }
}
