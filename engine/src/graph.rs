//! GPU plumbing for the model graph: the per-call step buffers, the activation buffers, the KV cache, and
//! `Graph`, which turns the model's forward (model.rs) into a `Plan` — a list of pipelines with their bind
//! groups, built once at load. Running a plan records every step into one compute pass of one command
//! buffer; the host submits it once.
//!
//! A call is a batch of tokens that may belong to several sequences: each token carries its (slot,
//! position) in `StepBuffers::meta`, so RoPE, the KV write and attention work per token, and a call asks
//! for the logits of any list of its token rows (`StepBuffers::out_rows`: the last token of each
//! sequence that samples, or every scored position). One plan serves every call: each linear layer holds
//! the variants of its kernel (one token, a block of a few, the tiled matmul) and picks one per call
//! from its token count.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::{Int8, Kernels, KvType, LinearKernel, LinearSpec, PipelineKey};
use crate::uniforms::{
    ArgmaxParams, AttnParams, EmbedParams, EwParams, MatParams, NormParams, RopeParams, Step,
    LINEAR_ACCUMULATE, LINEAR_BIAS,
};
use crate::weights::{Matrix, FLOATS};

/// Which count of a call a dispatch's grid follows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Count {
    /// The call's tokens (embedding, the layers).
    Tokens,
    /// The call's outputs: the rows whose logits are wanted (final norm, LM head, argmax).
    Outputs,
}

/// What one call is: its tokens, its outputs, and the split-K attention's key ranges per (token, head).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CallShape {
    pub tokens: u32,
    pub outputs: u32,
    pub kv_splits: u32,
}

impl CallShape {
    /// `tokens` tokens, `outputs` outputs, no split.
    pub fn new(tokens: usize, outputs: usize) -> Self {
        CallShape {
            tokens: tokens as u32,
            outputs: outputs as u32,
            kv_splits: 1,
        }
    }

    fn count(&self, c: Count) -> u32 {
        match c {
            Count::Tokens => self.tokens,
            Count::Outputs => self.outputs,
        }
    }
}

/// How many workgroups a step dispatches, as a function of the call's counts.
#[derive(Copy, Clone, Debug)]
pub enum Grid {
    Fixed([u32; 3]),
    /// (x, count, 1)
    PerRow(u32, Count),
    /// (x, count, kv_splits): split-K attention.
    PerSplit(u32, Count),
    /// (x, count, 1) when the call splits its keys, else nothing: the split-K reduce.
    IfSplit(u32, Count),
    /// (x, ceil(count / tile), 1)
    Tiles(u32, u32, Count),
    /// n row groups laid out 2-D past 65535, and ceil(count / tok) on z.
    Rows(u32, u32, Count),
}

impl Grid {
    fn size(self, call: CallShape) -> [u32; 3] {
        let count = |c: Count| call.count(c);
        match self {
            Grid::Fixed(g) => g,
            Grid::PerRow(x, c) => [x, count(c), 1],
            Grid::PerSplit(x, c) => [x, count(c), call.kv_splits.max(1)],
            Grid::IfSplit(x, c) => [x, count(c), (call.kv_splits > 1) as u32],
            Grid::Tiles(x, tile, c) => [x, count(c).div_ceil(tile), 1],
            Grid::Rows(n, tok, c) => {
                const MAX: u32 = 65535;
                let z = count(c).div_ceil(tok);
                if n <= MAX {
                    [n, 1, z]
                } else {
                    [MAX, n.div_ceil(MAX), z]
                }
            }
        }
    }
}

struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: Grid,
    label: &'static str,
    /// What a profile names it by beyond the kernel: a linear layer's weight (its name with the layer
    /// number as `*`), format and shape; empty for the other kernels.
    detail: String,
}

impl Dispatch {
    fn record(&self, pass: &mut wgpu::ComputePass, call: CallShape) {
        let [x, y, z] = self.grid.size(call);
        if x * y * z == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// The kernel variants of one linear layer (one chunk of its matrix), chosen per call.
struct LinearOp {
    count: Count,
    /// matvec, one token per workgroup: calls of a single token (decode).
    single: Dispatch,
    /// matvec over blocks of `Shapes::block_tokens` tokens.
    blocks: Dispatch,
    /// matvec over blocks of `Shapes::half_block_tokens` tokens, for calls of at most that many.
    half_blocks: Option<(u32, Dispatch)>,
    /// The tiled matmul, from `tiled_from` tokens on (devices that have it).
    tiled: Option<(u32, Dispatch)>,
    /// The int8 matvecs' quantize of x (quantize.wgsl), run before the variants `int8` covers; on the
    /// first chunk of a matrix only, the others reading the same xq.
    quantize: Option<Dispatch>,
    int8: Int8,
}

impl LinearOp {
    /// The variant a call of n rows runs.
    fn variant(&self, n: u32) -> LinearKernel {
        match (&self.tiled, &self.half_blocks) {
            _ if n <= 1 => LinearKernel::Single,
            (Some((from, _)), _) if n >= *from => LinearKernel::Tiled,
            (_, Some((upto, _))) if n <= *upto => LinearKernel::HalfBlocks,
            _ => LinearKernel::Blocks,
        }
    }

    /// The dispatches a call of n rows records: the quantize if the variant it runs reads int8 x,
    /// then the kernel.
    fn picks(&self, n: u32) -> impl Iterator<Item = &Dispatch> {
        let v = self.variant(n);
        let kernel = match v {
            LinearKernel::Single => &self.single,
            LinearKernel::Blocks => &self.blocks,
            LinearKernel::HalfBlocks => &self.half_blocks.as_ref().expect("picked").1,
            LinearKernel::Tiled => &self.tiled.as_ref().expect("picked").1,
        };
        let quantize = self.quantize.as_ref().filter(|_| self.int8.covers(v));
        quantize.into_iter().chain(std::iter::once(kernel))
    }
}

enum Op {
    Dispatch(Dispatch),
    Linear(Box<LinearOp>),
}

/// A recorded forward: run it with `record`.
#[derive(Default)]
pub struct Plan {
    ops: Vec<Op>,
    /// Buffers only the plan's bind groups use (the int8 matvecs' quantized x), kept with it.
    scratch: Vec<wgpu::Buffer>,
}

impl Plan {
    /// Record every step of a call, in one compute pass.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder, call: CallShape) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("forward"),
            timestamp_writes: None,
        });
        for d in self.picks(call) {
            d.record(&mut pass, call);
        }
    }

    /// The dispatches of a call, in order (an op's variant picked by the call's counts).
    fn picks(&self, call: CallShape) -> impl Iterator<Item = &Dispatch> {
        self.ops
            .iter()
            .flat_map(move |op| -> Box<dyn Iterator<Item = &Dispatch>> {
                match op {
                    Op::Dispatch(d) => Box::new(std::iter::once(d)),
                    Op::Linear(l) => Box::new(l.picks(call.count(l.count))),
                }
            })
    }

    /// Labels of the dispatches a call records, in order (benchmarks and debugging).
    pub fn labels(&self, call: CallShape) -> Vec<&'static str> {
        self.picks(call)
            .filter(|d| d.grid.size(call).iter().all(|&n| n > 0))
            .map(|d| d.label)
            .collect()
    }

    /// Record a call as [`Plan::record`] does, but each dispatch in a compute pass of its own that
    /// writes timestamps `2i` (beginning) and `2i + 1` (end) of `set`, for the i-th dispatch recorded;
    /// `set` needs `2 * dispatches_for(call)` entries. The returned names (kernel, and a linear
    /// layer's weight) are those dispatches', in order. For profiling (`glint bench --profile`): a
    /// pass per dispatch costs more than the one pass of `record`.
    pub fn record_profiled(
        &self,
        enc: &mut wgpu::CommandEncoder,
        call: CallShape,
        set: &wgpu::QuerySet,
    ) -> Vec<String> {
        let mut names = Vec::new();
        for d in self.picks(call) {
            if d.grid.size(call).contains(&0) {
                continue;
            }
            let i = names.len() as u32;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                }),
            });
            d.record(&mut pass, call);
            names.push(if d.detail.is_empty() {
                d.label.to_string()
            } else {
                format!("{} {}", d.label, d.detail)
            });
        }
        names
    }

    /// Dispatches a call records (those whose grid is not empty).
    pub fn dispatches_for(&self, call: CallShape) -> usize {
        self.labels(call).len()
    }
}

/// A weight's name with its layer number as `*` ("model.layers.*.mlp.down_proj"), so that a profile
/// adds up each role over the layers.
fn layer_pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_number = false;
    for c in name.chars() {
        let digit = c.is_ascii_digit();
        if !digit {
            out.push(c);
        } else if !in_number {
            out.push('*');
        }
        in_number = digit;
    }
    out
}

/// The attention heads of a layer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Width of q (n_heads * head_dim).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    /// Width of k, and of v.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Width of a qkv row: q, then k, then v.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}

/// A linear layer: y = W x (+ b).
pub struct Linear {
    pub w: Matrix,               // [out, in]
    pub b: Option<wgpu::Buffer>, // [out] f32
}

/// An RMSNorm weight [dim] f32 and its epsilon, for the norms fused into linear layers.
#[derive(Copy, Clone, Debug)]
pub struct NormWeight<'a> {
    pub w: &'a wgpu::Buffer,
    pub eps: f32,
}

/// How a linear layer reads and writes: x's rows (or the outputs' rows, GATHER) normalised or not, y's
/// columns col .. of rows `stride` wide, overwritten or accumulated, or the GLU pairs.
#[derive(Copy, Clone, Debug)]
struct LinearOpts<'a> {
    norm: Option<NormWeight<'a>>,
    gather: bool,
    glu: bool,
    accumulate: bool,
    col: usize,
    stride: usize,
    count: Count,
}

impl LinearOpts<'_> {
    /// y = W x over every token row, y's rows the matrix's height.
    fn new(l: &Linear) -> Self {
        LinearOpts {
            norm: None,
            gather: false,
            glu: false,
            accumulate: false,
            col: 0,
            stride: l.w.rows,
            count: Count::Tokens,
        }
    }
}

/// The buffers every call writes before it runs: its counts, its tokens' (slot, position), and the token
/// rows whose logits it wants.
pub struct StepBuffers {
    /// `Step` with n = the call's tokens.
    pub tokens: wgpu::Buffer,
    /// `Step` with n = the call's outputs.
    pub outputs: wgpu::Buffer,
    pub meta: wgpu::Buffer, // [batch] TokenMeta: (slot, position) per token
    pub out_rows: wgpu::Buffer, // [max_out] u32: the token row of each output
    pub batch: usize,
    pub max_out: usize,
}

impl StepBuffers {
    pub fn new(gpu: &Gpu, batch: usize, max_out: usize) -> Result<Self> {
        let zero = Step::default();
        Ok(StepBuffers {
            tokens: gpu.uniform_init("step.tokens", bytemuck::bytes_of(&zero)),
            outputs: gpu.uniform_init("step.outputs", bytemuck::bytes_of(&zero)),
            meta: gpu.storage("step.meta", (batch * 8) as u64)?,
            out_rows: gpu.storage("step.out_rows", (max_out * 4) as u64)?,
            batch,
            max_out,
        })
    }

    /// Write one call: `meta[t]` = (slot, position) of token t, `out_rows` the rows to produce logits
    /// for, `kv_splits` the split-K attention's key ranges (1: none).
    pub fn write(
        &self,
        queue: &wgpu::Queue,
        meta: &[[u32; 2]],
        out_rows: &[u32],
        kv_splits: u32,
    ) -> Result<CallShape> {
        if meta.is_empty() || meta.len() > self.batch {
            return Err(Error::Input(format!(
                "a call holds 1 to {} tokens, not {}",
                self.batch,
                meta.len()
            )));
        }
        if out_rows.len() > self.max_out {
            return Err(Error::Input(format!(
                "a call produces at most {} outputs, not {}",
                self.max_out,
                out_rows.len()
            )));
        }
        if let Some(&r) = out_rows.iter().find(|&&r| r as usize >= meta.len()) {
            return Err(Error::Input(format!(
                "output row {r} is past the call's {} tokens",
                meta.len()
            )));
        }
        let step = |n: usize| Step {
            n: n as u32,
            kv_splits,
            ..Default::default()
        };
        queue.write_buffer(&self.tokens, 0, bytemuck::bytes_of(&step(meta.len())));
        queue.write_buffer(&self.outputs, 0, bytemuck::bytes_of(&step(out_rows.len())));
        queue.write_buffer(&self.meta, 0, bytemuck::cast_slice(meta));
        if !out_rows.is_empty() {
            queue.write_buffer(&self.out_rows, 0, bytemuck::cast_slice(out_rows));
        }
        Ok(CallShape {
            kv_splits,
            ..CallShape::new(meta.len(), out_rows.len())
        })
    }
}

/// Builds a plan. Small uniform buffers with each step's fixed parameters are made here, once.
pub struct Graph<'a> {
    pub gpu: &'a Gpu,
    pub k: &'a Kernels,
    steps: &'a StepBuffers,
    dummy: &'a wgpu::Buffer,
    plan: Plan,
    /// The first pipeline that could not be built (reported by `finish`).
    error: Option<Error>,
    /// The int8 matvecs' quantized x (xq [rows, cols / 4] u32, xd [rows, cols / 32] vec4<f32>), one
    /// pair per input width, shared by every layer of that width (rows: the larger of the call's tokens
    /// and outputs).
    x8: std::collections::HashMap<usize, (wgpu::Buffer, wgpu::Buffer)>,
    /// [`Graph::probe`]: the pipelines the forward asks for, none built and no step recorded for them.
    probed: Option<Vec<PipelineKey>>,
}

impl<'a> Graph<'a> {
    pub fn new(
        gpu: &'a Gpu,
        k: &'a Kernels,
        steps: &'a StepBuffers,
        dummy: &'a wgpu::Buffer,
    ) -> Self {
        Graph {
            gpu,
            k,
            steps,
            dummy,
            plan: Plan::default(),
            error: None,
            x8: Default::default(),
            probed: None,
        }
    }

    /// A graph that only lists the pipelines a forward needs ([`Graph::probed`]), so that they can be
    /// compiled all at once in parallel ([`Kernels::prebuild`]) before the real graph is built.
    pub fn probe(
        gpu: &'a Gpu,
        k: &'a Kernels,
        steps: &'a StepBuffers,
        dummy: &'a wgpu::Buffer,
    ) -> Self {
        Graph {
            probed: Some(Vec::new()),
            ..Self::new(gpu, k, steps, dummy)
        }
    }

    /// The pipelines a probing graph was asked for, in order (repeats included).
    pub fn probed(self) -> Vec<PipelineKey> {
        self.probed.unwrap_or_default()
    }

    /// The plan, or the error of the first pipeline that could not be built.
    pub fn finish(self) -> Result<Plan> {
        match self.error {
            Some(e) => Err(e),
            None => {
                let mut plan = self.plan;
                plan.scratch = self.x8.into_values().flat_map(|(q, d)| [q, d]).collect();
                Ok(plan)
            }
        }
    }

    /// A pipeline from the kernels, or None with the error kept for `finish` (None when probing,
    /// the key noted).
    fn pipeline(&mut self, key: PipelineKey) -> Option<wgpu::ComputePipeline> {
        if let Some(keys) = self.probed.as_mut() {
            keys.push(key);
            return None;
        }
        match self.k.get(key) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    fn step(&self, c: Count) -> &'a wgpu::Buffer {
        match c {
            Count::Tokens => &self.steps.tokens,
            Count::Outputs => &self.steps.outputs,
        }
    }

    fn make(
        &self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
        grid: Grid,
    ) -> Dispatch {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(b, buf)| wgpu::BindGroupEntry {
                binding: *b,
                resource: buf.as_entire_binding(),
            })
            .collect();
        let bind_group = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &layout,
                entries: &entries,
            });
        Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            grid,
            label,
            detail: String::new(),
        }
    }

    fn dispatch(
        &mut self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
        grid: Grid,
    ) {
        let d = self.make(label, pipeline, buffers, grid);
        self.plan.ops.push(Op::Dispatch(d));
    }

    fn uniform<T: bytemuck::Pod>(&self, label: &str, v: &T) -> wgpu::Buffer {
        self.gpu.uniform_init(label, bytemuck::bytes_of(v))
    }

    /// out[t, :] = table[tokens[t], :]
    pub fn embed(&mut self, table: &Matrix, tokens: &wgpu::Buffer, out: &wgpu::Buffer) {
        let Some(pl) = self.pipeline(PipelineKey::Embed(table.format)) else {
            return;
        };
        for c in &table.chunks {
            let p = self.uniform(
                "embed",
                &EmbedParams {
                    cols: table.cols as u32,
                    row_start: c.row_start as u32,
                    rows: c.rows as u32,
                    ..Default::default()
                },
            );
            let grid = Grid::PerRow((table.cols as u32).div_ceil(64), Count::Tokens);
            let step = self.step(Count::Tokens);
            self.dispatch(
                "embed",
                &pl,
                &[(0, &p), (1, step), (2, tokens), (3, &c.buffer), (4, out)],
                grid,
            );
        }
    }

    fn norm_params(&self, cols: usize, eps: f32) -> wgpu::Buffer {
        self.uniform(
            "rmsnorm",
            &NormParams {
                cols: cols as u32,
                eps,
                ..Default::default()
            },
        )
    }

    /// y = rmsnorm(x) * w for every token row of the call.
    pub fn rms_norm(
        &mut self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        cols: usize,
        eps: f32,
    ) {
        let p = self.norm_params(cols, eps);
        let pl = &self.k.rmsnorm.clone();
        let step = self.step(Count::Tokens);
        self.dispatch(
            "rmsnorm",
            pl,
            &[(0, &p), (1, step), (2, x), (3, w), (4, y)],
            Grid::PerRow(1, Count::Tokens),
        );
    }

    /// y[o] = rmsnorm(x[out_rows[o]]) * w for each output o of the call (the final norm: only the rows
    /// whose logits are wanted, packed).
    pub fn rms_norm_outputs(
        &mut self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        cols: usize,
        eps: f32,
    ) {
        let p = self.norm_params(cols, eps);
        let pl = &self.k.rmsnorm_gather.clone();
        let step = self.step(Count::Outputs);
        let rows = &self.steps.out_rows;
        self.dispatch(
            "rmsnorm",
            pl,
            &[(0, &p), (1, step), (2, x), (3, w), (4, y), (5, rows)],
            Grid::PerRow(1, Count::Outputs),
        );
    }

    /// y = W x + b for every token row.
    pub fn linear(&mut self, l: &Linear, x: &wgpu::Buffer, y: &wgpu::Buffer) {
        self.linear_op(l, x, y, &LinearOpts::new(l));
    }

    /// y += W x + b for every token row (the fused residual connection).
    pub fn linear_residual(&mut self, l: &Linear, x: &wgpu::Buffer, y: &wgpu::Buffer) {
        let o = LinearOpts {
            accumulate: true,
            ..LinearOpts::new(l)
        };
        self.linear_op(l, x, y, &o);
    }

    /// y[:, col .. col + out] = W rmsnorm(x) + b for every token row, y's rows `stride` wide: the norm
    /// that feeds the layer fused into it (a layer writing its part of a wider output: q, k and v into
    /// one qkv row).
    pub fn linear_normed(
        &mut self,
        l: &Linear,
        norm: NormWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        col: usize,
        stride: usize,
    ) {
        let o = LinearOpts {
            norm: Some(norm),
            col,
            stride,
            ..LinearOpts::new(l)
        };
        self.linear_op(l, x, y, &o);
    }

    /// y = silu(gate) * up with gate, up = W rmsnorm(x): the MLP's first half in one dispatch, over a
    /// matrix whose rows are (gate, up) pairs (`Matrix::upload_interleaved`); y is [n, rows / 2].
    pub fn gate_up_normed(
        &mut self,
        l: &Linear,
        norm: NormWeight,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) {
        let o = LinearOpts {
            norm: Some(norm),
            glu: true,
            stride: l.w.rows / 2,
            ..LinearOpts::new(l)
        };
        self.linear_op(l, x, y, &o);
    }

    /// logits[o] = W rmsnorm(x[out_rows[o]]) for each output o of the call: the final norm and the LM
    /// head in one dispatch per chunk of the head, over the output rows only.
    pub fn lm_head(
        &mut self,
        l: &Linear,
        norm: NormWeight,
        x: &wgpu::Buffer,
        logits: &wgpu::Buffer,
    ) {
        let o = LinearOpts {
            norm: Some(norm),
            gather: true,
            count: Count::Outputs,
            ..LinearOpts::new(l)
        };
        self.linear_op(l, x, logits, &o);
    }

    fn linear_op(&mut self, l: &Linear, x: &wgpu::Buffer, y: &wgpu::Buffer, o: &LinearOpts) {
        let mut flags = 0;
        if l.b.is_some() {
            flags |= LINEAR_BIAS;
        }
        if o.accumulate {
            flags |= LINEAR_ACCUMULATE;
        }
        let bias = l.b.as_ref().unwrap_or(self.dummy);
        let w = &l.w;
        let shapes = self.k.shapes.clone();
        let spec = LinearSpec {
            format: w.format,
            format2: w.second.map_or(w.format, |s| s.format),
            norm: o.norm.is_some(),
            gather: o.gather,
            glu: o.glu,
            x8: false,
        };
        // The int8 matvec, for the variants shapes.int8 covers, where both formats are block-quantized.
        let int8 = if FLOATS.contains(&spec.format) || FLOATS.contains(&spec.format2) {
            Int8::Off
        } else {
            shapes.int8
        };
        let x8 = int8 != Int8::Off;
        let spec_for = |k: LinearKernel| LinearSpec {
            x8: int8.covers(k),
            gather: spec.gather && !int8.covers(k),
            ..spec
        };
        let (g, eps) = match o.norm {
            Some(n) => (n.w, n.eps),
            None => (self.dummy, 0.0),
        };
        let rows = if o.gather {
            &self.steps.out_rows
        } else {
            self.dummy
        };
        let step = self.step(o.count);
        let kernels = [
            LinearKernel::Single,
            LinearKernel::Blocks,
            LinearKernel::HalfBlocks,
            LinearKernel::Tiled,
        ];
        let mut pipes = vec![];
        let mut missing = false;
        for k in kernels {
            let absent = match k {
                LinearKernel::Tiled => shapes.tiled_from.is_none(),
                LinearKernel::HalfBlocks => shapes.half_block_tokens().is_none(),
                _ => false,
            };
            if absent {
                pipes.push(None);
                continue;
            }
            let spec = spec_for(k);
            // Every variant asked for (a probe lists them all), then the op given up if one is missing.
            let p = self.pipeline(PipelineKey::Linear(k, spec));
            missing |= p.is_none();
            pipes.push(p);
        }
        let quantize = x8
            .then(|| {
                self.pipeline(PipelineKey::Quantize {
                    norm: spec.norm,
                    gather: spec.gather,
                })
            })
            .flatten();
        missing |= x8 && quantize.is_none();
        if missing {
            return;
        }
        // xq and xd for this width (int8 only), written by the quantize of x recorded with the
        // first chunk and read by every chunk's matvec.
        let scratch = x8.then(|| self.x8_scratch(w.cols));
        let mut quantize = quantize.zip(scratch.as_ref()).map(|(pl, (xq, xd))| {
            let p = self.norm_params(w.cols, eps);
            let grid = Grid::PerRow((w.cols as u32 / 32).div_ceil(64), o.count);
            let bufs = [
                (0, &p),
                (1, step),
                (2, x),
                (3, g),
                (4, rows),
                (5, xq),
                (6, xd),
            ];
            self.make("quantize_q8", &pl, &bufs, grid)
        });
        for c in &w.chunks {
            let p = self.uniform(
                "linear",
                &MatParams {
                    rows: c.rows as u32,
                    cols: w.cols as u32,
                    row_offset: c.row_start as u32,
                    flags,
                    y_stride: o.stride as u32,
                    y_offset: o.col as u32,
                    split: w.second.map_or(c.rows, |s| s.row) as u32,
                    seg_word: w.second.map_or(0, |s| s.word) as u32,
                    eps,
                    ..Default::default()
                },
            );
            let bufs = [
                (0, &p),
                (1, step),
                (2, &c.buffer),
                (3, x),
                (4, bias),
                (5, y),
                (6, g),
                (7, rows),
            ];
            // The quantized matvecs also read the weights as words (binding 10, `wu`).
            let quant = !FLOATS.contains(&w.format);
            let mut bufs_q = bufs.to_vec();
            if quant {
                bufs_q.push((10, &c.buffer));
            }
            // The int8 matvec reads xq and xd instead of x, g and rows.
            let bufs_x8: Vec<(u32, &wgpu::Buffer)> = match &scratch {
                Some((xq, xd)) => vec![
                    (0, &p),
                    (1, step),
                    (2, &c.buffer),
                    (4, bias),
                    (5, y),
                    (8, xq),
                    (9, xd),
                    (10, &c.buffer),
                ],
                None => bufs_q.clone(),
            };
            let row_groups = (c.rows as u32).div_ceil(shapes.rows_per_wg());
            let detail = format!(
                "{} {} {}x{}",
                layer_pattern(&w.name),
                w.format.name(),
                c.rows,
                w.cols
            );
            let count = o.count;
            let make = |g: &Self, i: usize, grid| {
                let k = kernels[i];
                let (b, label): (&[(u32, &wgpu::Buffer)], _) = match k {
                    LinearKernel::Tiled => (&bufs, "matmul"),
                    _ if int8.covers(k) && k == LinearKernel::Single => (&bufs_x8, "matvec_q8"),
                    _ if int8.covers(k) => (&bufs_x8, "matvec_q8_tok"),
                    LinearKernel::Single => (&bufs_q, "matvec"),
                    _ => (&bufs_q, "matvec_tok"),
                };
                let mut d = g.make(label, pipes[i].as_ref().expect("built"), b, grid);
                d.detail = detail.clone();
                d
            };
            let single = make(self, 0, Grid::Rows(row_groups, 1, count));
            let blocks = make(self, 1, Grid::Rows(row_groups, shapes.block_tokens, count));
            let half_blocks = shapes.half_block_tokens().map(|tok| {
                let grid = Grid::Rows(row_groups, tok, count);
                (tok, make(self, 2, grid))
            });
            let tiled = shapes.tiled_from.map(|from| {
                let grid = Grid::Tiles((c.rows as u32).div_ceil(32), 32, count);
                (from, make(self, 3, grid))
            });
            self.plan.ops.push(Op::Linear(Box::new(LinearOp {
                count,
                single,
                blocks,
                half_blocks,
                tiled,
                quantize: quantize.take(),
                int8,
            })));
        }
    }

    /// The int8 matvec's quantized x for inputs of `cols` (xq, xd), made on first use (handles to the
    /// graph's one pair per width).
    fn x8_scratch(&mut self, cols: usize) -> (wgpu::Buffer, wgpu::Buffer) {
        let rows = self.steps.batch.max(self.steps.max_out);
        if !self.x8.contains_key(&cols) {
            let made = self
                .gpu
                .storage("xq", (rows * cols) as u64)
                .and_then(|q| Ok((q, self.gpu.storage("xd", (rows * cols / 32 * 16) as u64)?)));
            match made {
                Ok(b) => {
                    self.x8.insert(cols, b);
                }
                Err(e) => {
                    self.error.get_or_insert(e);
                    let d = self.dummy.clone();
                    return (d.clone(), d);
                }
            }
        }
        self.x8[&cols].clone()
    }

    /// RoPE of every q and k head of the qkv rows (each token at its own position; each head first
    /// normalised with `qk_norm` = (q_norm, k_norm) weights when given), with k and v written into
    /// each token's row of its slot's region of the layer's cache. One dispatch.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_store(
        &mut self,
        qkv: &wgpu::Buffer,
        qk_norm: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
        eps: f32,
        table: &wgpu::Buffer,
        cache: &KvLayer,
        heads: Heads,
    ) {
        let p = self.uniform(
            "rope",
            &RopeParams {
                n_heads: heads.n_heads as u32,
                n_kv_heads: heads.n_kv_heads as u32,
                head_dim: heads.head_dim as u32,
                slot_rows: cache.slot_rows as u32,
                qkv_stride: heads.qkv_dim() as u32,
                eps,
                ..Default::default()
            },
        );
        let grid = Grid::PerRow(
            ((heads.n_heads + heads.n_kv_heads) as u32).div_ceil(64),
            Count::Tokens,
        );
        let (qn, kn) = match qk_norm {
            Some((q, k)) => (q, k),
            None => (self.dummy, self.dummy),
        };
        let kv = cache.kv_type;
        let Some(pl) = self.pipeline(PipelineKey::RopeStore {
            qk_norm: qk_norm.is_some(),
            kv,
        }) else {
            return;
        };
        let step = self.step(Count::Tokens);
        let meta = &self.steps.meta;
        let bufs = [
            (0, &p),
            (1, step),
            (2, table),
            (3, meta),
            (4, qkv),
            (5, qn),
            (6, kn),
            (7, &cache.k),
            (8, &cache.v),
        ];
        self.dispatch("rope_store", &pl, &bufs, grid);
    }

    /// Causal GQA attention of every token over its own sequence's cached keys and values. q is the
    /// first n_heads * head_dim of each row of `q` (rows `q_stride` wide: the qkv buffer); out is
    /// [n_tokens, n_heads * head_dim]. With a split-K call, the key ranges go to `part` ([split tokens,
    /// n_heads, max splits, head_dim + 2]) and a second dispatch reduces them.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: &wgpu::Buffer,
        q_stride: usize,
        cache: &KvLayer,
        out: &wgpu::Buffer,
        part: &wgpu::Buffer,
        heads: Heads,
    ) {
        let p = self.uniform(
            "attention",
            &AttnParams {
                n_heads: heads.n_heads as u32,
                n_kv_heads: heads.n_kv_heads as u32,
                head_dim: heads.head_dim as u32,
                scale: 1.0 / (heads.head_dim as f32).sqrt(),
                slot_rows: cache.slot_rows as u32,
                q_stride: q_stride as u32,
                ..Default::default()
            },
        );
        let kv = cache.kv_type;
        let (Some(pl), Some(reduce)) = (
            self.pipeline(PipelineKey::Attention(kv)),
            self.pipeline(PipelineKey::AttentionReduce),
        ) else {
            return;
        };
        let step = self.step(Count::Tokens);
        let meta = &self.steps.meta;
        let bufs = [
            (0, &p),
            (1, step),
            (2, meta),
            (3, q),
            (4, &cache.k),
            (5, &cache.v),
            (6, out),
            (7, part),
        ];
        let nh = heads.n_heads as u32;
        self.dispatch("attention", &pl, &bufs, Grid::PerSplit(nh, Count::Tokens));
        let bufs = [(0, &p), (1, step), (6, out), (7, part)];
        self.dispatch(
            "attention_reduce",
            &reduce,
            &bufs,
            Grid::IfSplit(nh, Count::Tokens),
        );
    }

    /// gate = silu(gate) * up
    pub fn silu_mul(&mut self, gate: &wgpu::Buffer, up: &wgpu::Buffer, cols: usize) {
        let p = self.uniform(
            "silu_mul",
            &EwParams {
                cols: cols as u32,
                ..Default::default()
            },
        );
        let pl = &self.k.silu_mul.clone();
        let grid = Grid::PerRow((cols as u32).div_ceil(256), Count::Tokens);
        let step = self.step(Count::Tokens);
        self.dispatch(
            "silu_mul",
            pl,
            &[(0, &p), (1, step), (2, gate), (3, up)],
            grid,
        );
    }

    /// out[o] = argmax of logits row o (ids below n_valid), for every output of the call.
    pub fn argmax(
        &mut self,
        logits: &wgpu::Buffer,
        row_stride: usize,
        n_valid: usize,
        out: &wgpu::Buffer,
    ) {
        let p = self.uniform(
            "argmax",
            &ArgmaxParams {
                n_valid: n_valid as u32,
                row_stride: row_stride as u32,
                ..Default::default()
            },
        );
        let pl = &self.k.argmax.clone();
        let step = self.step(Count::Outputs);
        self.dispatch(
            "argmax",
            pl,
            &[(0, &p), (1, step), (2, logits), (3, out)],
            Grid::PerRow(1, Count::Outputs),
        );
    }
}

/// Activation buffers, sized for `batch` tokens and `max_out` outputs per call.
pub struct Activations {
    pub batch: usize,
    pub max_out: usize,
    pub tokens: wgpu::Buffer,    // [batch] u32
    pub x: wgpu::Buffer,         // [batch, hidden] f32, the residual stream
    pub xn: wgpu::Buffer, // [batch, hidden] f32, normalised (the final norm: [max_out, hidden])
    pub qkv: wgpu::Buffer, // [batch, (n_heads + 2 n_kv_heads) * head_dim]: q, k, v per token
    pub attn: wgpu::Buffer, // [batch, n_heads * head_dim]
    pub attn_part: wgpu::Buffer, // [split_tokens, n_heads, max_splits, head_dim + 2] split-K partials
    pub gate: wgpu::Buffer,      // [batch, intermediate]
    pub up: wgpu::Buffer,        // [batch, intermediate]
    pub logits: wgpu::Buffer,    // [max_out, vocab] f32
    pub next: wgpu::Buffer,      // [max_out] u32, the argmax of each output row
}

impl Activations {
    pub fn new(
        gpu: &Gpu,
        cfg: &crate::config::ModelConfig,
        batch: usize,
        max_out: usize,
        shapes: &crate::kernels::Shapes,
    ) -> Result<Self> {
        let f = |label: &str, n: usize| gpu.storage(label, (n * 4) as u64);
        let qd = cfg.n_heads * cfg.head_dim;
        let kvd = cfg.n_kv_heads * cfg.head_dim;
        Ok(Activations {
            batch,
            max_out,
            tokens: f("tokens", batch)?,
            x: f("x", batch * cfg.hidden)?,
            xn: f("xn", batch.max(max_out) * cfg.hidden)?,
            qkv: f("qkv", batch * (qd + 2 * kvd))?,
            attn: f("attn", batch * qd)?,
            attn_part: f(
                "attn_part",
                shapes.attn_split_tokens as usize
                    * cfg.n_heads
                    * shapes.attn_max_splits as usize
                    * (cfg.head_dim + 2),
            )?,
            gate: f("gate", batch * cfg.intermediate)?,
            up: f("up", batch * cfg.intermediate)?,
            logits: f("logits", max_out * cfg.vocab)?,
            next: f("next", max_out)?,
        })
    }
}

/// One layer's K and V caches: `slots` regions of `slot_rows` rows, each [n_kv_heads * head_dim] of
/// `kv_type` (f16: two per word).
pub struct KvLayer {
    pub k: wgpu::Buffer, // [slots * slot_rows, n_kv_heads * head_dim] kv_type
    pub v: wgpu::Buffer, // [slots * slot_rows, n_kv_heads * head_dim] kv_type
    pub slot_rows: usize,
    pub kv_type: KvType,
}

/// Per-layer K and V caches for every sequence slot's whole context, on the GPU.
pub struct KvCache {
    /// Context (rows) of each slot.
    pub ctx: usize,
    pub slots: usize,
    pub kv_type: KvType,
    pub layers: Vec<KvLayer>,
}

impl KvCache {
    pub fn new(
        gpu: &Gpu,
        cfg: &crate::config::ModelConfig,
        ctx: usize,
        slots: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        let bytes = Self::layer_bytes(cfg, ctx, slots, kv_type);
        let layers = (0..cfg.n_layers)
            .map(|i| {
                Ok(KvLayer {
                    k: gpu.storage(&format!("k_cache.{i}"), bytes)?,
                    v: gpu.storage(&format!("v_cache.{i}"), bytes)?,
                    slot_rows: ctx,
                    kv_type,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            ctx,
            slots,
            kv_type,
            layers,
        })
    }

    /// Bytes of one layer's K (or V) buffer.
    pub fn layer_bytes(
        cfg: &crate::config::ModelConfig,
        ctx: usize,
        slots: usize,
        kv_type: KvType,
    ) -> u64 {
        (slots * ctx * cfg.n_kv_heads * cfg.head_dim * kv_type.bytes()) as u64
    }

    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.k.size() + l.v.size()).sum()
    }
}

/// cos / sin of every (position, frequency) pair of unscaled RoPE, computed in f64: [ctx, head_dim / 2]
/// x (cos, sin) f32. (Models use `family::Rope::table`, which applies their scaling.)
pub fn rope_table(ctx: usize, head_dim: usize, theta: f64) -> Vec<f32> {
    crate::family::Rope {
        theta,
        scaling: crate::family::RopeScaling::None,
    }
    .table(ctx, head_dim)
}
