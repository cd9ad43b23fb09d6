//! GPU plumbing for the model graph: the activation buffers, the KV cache, and `Graph`, which turns the
//! model's forward (model.rs) into a `Plan` — a list of pipelines with their bind groups, built once at
//! load. Running a plan records every step into one command buffer and submits it once.

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::Kernels;
use crate::weights::Matrix;

/// The values that change per forward call: written into one uniform buffer before each submit.
#[repr(C)]
#[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepUniform {
    pub n_tokens: u32,
    pub pos0: u32,
    pub _pad: [u32; 2],
}

/// How many workgroups a step dispatches, as a function of the number of tokens in the call.
#[derive(Copy, Clone, Debug)]
pub enum Grid {
    Fixed([u32; 3]),
    /// (x, n_tokens, 1)
    PerToken(u32),
    /// (x, ceil(n_tokens / tile), 1)
    TokenTiles(u32, u32),
    /// n row groups laid out 2-D past 65535, and ceil(n_tokens / tok) on z (`None`: one token, z = 1).
    Rows(u32, Option<u32>),
}

impl Grid {
    fn size(self, n_tokens: u32) -> [u32; 3] {
        match self {
            Grid::Fixed(g) => g,
            Grid::PerToken(x) => [x, n_tokens, 1],
            Grid::TokenTiles(x, tile) => [x, n_tokens.div_ceil(tile), 1],
            Grid::Rows(n, tok) => {
                const MAX: u32 = 65535;
                let z = tok.map_or(1, |t| n_tokens.div_ceil(t));
                if n <= MAX {
                    [n, 1, z]
                } else {
                    [MAX, n.div_ceil(MAX), z]
                }
            }
        }
    }
}

enum Op {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        bind_group: wgpu::BindGroup,
        grid: Grid,
        label: &'static str,
    },
    /// Copy row n_tokens - 1 of `src` ([n_tokens, row_bytes / 4] f32) to the start of `dst`.
    CopyLastRow {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
        row_bytes: u64,
    },
}

/// A recorded forward: run it with `record`.
#[derive(Default)]
pub struct Plan {
    ops: Vec<Op>,
}

impl Plan {
    pub fn dispatches(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o, Op::Dispatch { .. }))
            .count()
    }

    /// Record every step for a call over `n_tokens` tokens. Consecutive dispatches share one compute pass.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder, n_tokens: u32) {
        let mut i = 0;
        while i < self.ops.len() {
            match &self.ops[i] {
                Op::CopyLastRow {
                    src,
                    dst,
                    row_bytes,
                } => {
                    enc.copy_buffer_to_buffer(
                        src,
                        (n_tokens as u64 - 1) * row_bytes,
                        dst,
                        0,
                        *row_bytes,
                    );
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("forward"),
                        timestamp_writes: None,
                    });
                    while let Some(Op::Dispatch {
                        pipeline,
                        bind_group,
                        grid,
                        ..
                    }) = self.ops.get(i)
                    {
                        let [x, y, z] = grid.size(n_tokens);
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind_group, &[]);
                        pass.dispatch_workgroups(x, y, z);
                        i += 1;
                    }
                }
            }
        }
    }

    /// Labels of the dispatches, in order (for benchmarks and debugging).
    pub fn labels(&self) -> Vec<&'static str> {
        self.ops
            .iter()
            .filter_map(|o| match o {
                Op::Dispatch { label, .. } => Some(*label),
                _ => None,
            })
            .collect()
    }
}

/// Whether a linear layer runs on one token (row 0 of x, whatever the call's token count) or on every
/// token of the call.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LinearKind {
    Vec,
    Mat,
}

/// A linear layer: y = W x (+ b).
pub struct Linear {
    pub w: Matrix,               // [out, in]
    pub b: Option<wgpu::Buffer>, // [out] f32
}

/// Builds a plan. Small uniform buffers with each step's fixed parameters are made here, once.
pub struct Graph<'a> {
    pub gpu: &'a Gpu,
    pub k: &'a Kernels,
    step: &'a wgpu::Buffer,
    dummy: &'a wgpu::Buffer,
    plan: Plan,
}

fn u32s(v: &[u32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl<'a> Graph<'a> {
    pub fn new(
        gpu: &'a Gpu,
        k: &'a Kernels,
        step: &'a wgpu::Buffer,
        dummy: &'a wgpu::Buffer,
    ) -> Self {
        Graph {
            gpu,
            k,
            step,
            dummy,
            plan: Plan::default(),
        }
    }

    pub fn finish(self) -> Plan {
        self.plan
    }

    fn dispatch(
        &mut self,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
        grid: Grid,
    ) {
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
        self.plan.ops.push(Op::Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            grid,
            label,
        });
    }

    fn uniform(&self, label: &str, v: &[u32]) -> wgpu::Buffer {
        self.gpu.uniform_init(label, u32s(v))
    }

    /// out[t, :] = table[tokens[t], :]
    pub fn embed(&mut self, table: &Matrix, tokens: &wgpu::Buffer, out: &wgpu::Buffer) {
        for c in &table.chunks {
            let p = self.uniform(
                "embed",
                &[table.cols as u32, c.row_start as u32, c.rows as u32, 0],
            );
            let grid = Grid::PerToken((table.cols as u32).div_ceil(64));
            let pl = &self.k.embed[&table.format];
            self.dispatch(
                "embed",
                pl,
                &[
                    (0, &p),
                    (1, self.step),
                    (2, tokens),
                    (3, &c.buffer),
                    (4, out),
                ],
                grid,
            );
        }
    }

    /// y = rmsnorm(x) * w for each token row; `single_row` normalises row 0 only.
    pub fn rms_norm(
        &mut self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        y: &wgpu::Buffer,
        cols: usize,
        eps: f32,
        single_row: bool,
    ) {
        let p = self.uniform("rmsnorm", &[cols as u32, eps.to_bits(), 0, 0]);
        let grid = if single_row {
            Grid::Fixed([1, 1, 1])
        } else {
            Grid::PerToken(1)
        };
        let pl = &self.k.rmsnorm.clone();
        self.dispatch(
            "rmsnorm",
            pl,
            &[(0, &p), (1, self.step), (2, x), (3, w), (4, y)],
            grid,
        );
    }

    /// y (+)= W x + b for every token row. With `accumulate`, the product is added to y (the fused
    /// residual connection). `Vec` is the decode form (one token); `Mat` the prefill form, which runs
    /// the tiled matmul or, where the device's shapes say so, matvec over blocks of tokens.
    pub fn linear(
        &mut self,
        l: &Linear,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        accumulate: bool,
        kind: LinearKind,
    ) {
        let flags = l.b.is_some() as u32 | ((accumulate as u32) << 1);
        let bias = l.b.as_ref().unwrap_or(self.dummy);
        let w = &l.w;
        let shapes = &self.k.shapes;
        for c in &w.chunks {
            let p = self.uniform(
                "linear",
                &[
                    c.rows as u32,
                    w.cols as u32,
                    c.row_start as u32,
                    flags,
                    w.rows as u32,
                    0,
                    0,
                    0,
                ],
            );
            let bufs = [
                (0, &p),
                (1, self.step),
                (2, &c.buffer),
                (3, x),
                (4, bias),
                (5, y),
            ];
            let rows_per_wg = shapes.matvec_wg / shapes.tpr;
            let row_groups = (c.rows as u32).div_ceil(rows_per_wg);
            match (kind, shapes.prefill_tok) {
                (LinearKind::Vec, _) => {
                    let pl = &self.k.matvec[&w.format];
                    self.dispatch("matvec", pl, &bufs, Grid::Rows(row_groups, None));
                }
                (LinearKind::Mat, Some(tok)) => {
                    let pl = &self.k.matvec_tok[&w.format];
                    self.dispatch("matvec_tok", pl, &bufs, Grid::Rows(row_groups, Some(tok)));
                }
                (LinearKind::Mat, None) => {
                    let pl = &self.k.matmul[&w.format];
                    let grid = Grid::TokenTiles((c.rows as u32).div_ceil(32), 32);
                    self.dispatch("matmul", pl, &bufs, grid);
                }
            }
        }
    }

    /// Rotate q in place.
    pub fn rope_q(
        &mut self,
        q: &wgpu::Buffer,
        table: &wgpu::Buffer,
        n_heads: usize,
        head_dim: usize,
    ) {
        let p = self.uniform("rope", &[n_heads as u32, head_dim as u32, 0, 0]);
        let grid = Grid::PerToken(((n_heads * head_dim / 2) as u32).div_ceil(64));
        let pl = &self.k.rope_q.clone();
        self.dispatch(
            "rope_q",
            pl,
            &[(0, &p), (1, self.step), (2, table), (3, q)],
            grid,
        );
    }

    /// Rotate k and append k, v to the layer's cache at positions pos0 ...
    #[allow(clippy::too_many_arguments)]
    pub fn store_kv(
        &mut self,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        table: &wgpu::Buffer,
        n_kv_heads: usize,
        head_dim: usize,
    ) {
        let p = self.uniform("store_kv", &[n_kv_heads as u32, head_dim as u32, 0, 0]);
        let grid = Grid::PerToken(((n_kv_heads * head_dim / 2) as u32).div_ceil(64));
        let pl = &self.k.store_kv.clone();
        let bufs = [
            (0, &p),
            (1, self.step),
            (2, table),
            (3, k),
            (4, v),
            (5, k_cache),
            (6, v_cache),
        ];
        self.dispatch("store_kv", pl, &bufs, grid);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) {
        let scale = 1.0 / (head_dim as f32).sqrt();
        let p = self.uniform(
            "attention",
            &[
                n_heads as u32,
                n_kv_heads as u32,
                head_dim as u32,
                scale.to_bits(),
            ],
        );
        let pl = &self.k.attention.clone();
        let bufs = [
            (0, &p),
            (1, self.step),
            (2, q),
            (3, k_cache),
            (4, v_cache),
            (5, out),
        ];
        self.dispatch("attention", pl, &bufs, Grid::PerToken(n_heads as u32));
    }

    /// gate = silu(gate) * up
    pub fn silu_mul(&mut self, gate: &wgpu::Buffer, up: &wgpu::Buffer, cols: usize) {
        let p = self.uniform("silu_mul", &[cols as u32, 0, 0, 0]);
        let pl = &self.k.silu_mul.clone();
        let grid = Grid::PerToken((cols as u32).div_ceil(256));
        self.dispatch(
            "silu_mul",
            pl,
            &[(0, &p), (1, self.step), (2, gate), (3, up)],
            grid,
        );
    }

    pub fn argmax(&mut self, logits: &wgpu::Buffer, n_valid: usize, out: &wgpu::Buffer) {
        let p = self.uniform("argmax", &[n_valid as u32, 0, 0, 0]);
        let pl = &self.k.argmax.clone();
        self.dispatch(
            "argmax",
            pl,
            &[(0, &p), (1, logits), (2, out)],
            Grid::Fixed([1, 1, 1]),
        );
    }

    pub fn copy_last_row(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, cols: usize) {
        self.plan.ops.push(Op::CopyLastRow {
            src: src.clone(),
            dst: dst.clone(),
            row_bytes: cols as u64 * 4,
        });
    }
}

/// Activation buffers, sized for `batch` tokens per call.
pub struct Activations {
    pub batch: usize,
    pub tokens: wgpu::Buffer, // [batch] u32
    pub x: wgpu::Buffer,      // [batch, hidden] f32, the residual stream
    pub xn: wgpu::Buffer,     // [batch, hidden] f32, normalised
    pub q: wgpu::Buffer,      // [batch, n_heads * head_dim]
    pub k: wgpu::Buffer,      // [batch, n_kv_heads * head_dim]
    pub v: wgpu::Buffer,      // [batch, n_kv_heads * head_dim]
    pub attn: wgpu::Buffer,   // [batch, n_heads * head_dim]
    pub gate: wgpu::Buffer,   // [batch, intermediate]
    pub up: wgpu::Buffer,     // [batch, intermediate]
    pub last: wgpu::Buffer,   // [hidden], the last token's row
    pub logits: wgpu::Buffer, // [vocab] f32
    pub next: wgpu::Buffer,   // [1] u32, the argmax
}

impl Activations {
    pub fn new(gpu: &Gpu, cfg: &crate::config::ModelConfig, batch: usize) -> Result<Self> {
        let f = |label: &str, n: usize| gpu.storage(label, (n * 4) as u64);
        let qd = cfg.n_heads * cfg.head_dim;
        let kvd = cfg.n_kv_heads * cfg.head_dim;
        Ok(Activations {
            batch,
            tokens: f("tokens", batch)?,
            x: f("x", batch * cfg.hidden)?,
            xn: f("xn", batch * cfg.hidden)?,
            q: f("q", batch * qd)?,
            k: f("k", batch * kvd)?,
            v: f("v", batch * kvd)?,
            attn: f("attn", batch * qd)?,
            gate: f("gate", batch * cfg.intermediate)?,
            up: f("up", batch * cfg.intermediate)?,
            last: f("last", cfg.hidden)?,
            logits: f("logits", cfg.vocab)?,
            next: f("next", 4)?,
        })
    }
}

/// Per-layer K and V caches for the whole context, on the GPU.
pub struct KvCache {
    pub ctx: usize,
    pub layers: Vec<(wgpu::Buffer, wgpu::Buffer)>, // each [ctx, n_kv_heads * head_dim] f32
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &crate::config::ModelConfig, ctx: usize) -> Result<Self> {
        let bytes = (ctx * cfg.n_kv_heads * cfg.head_dim * 4) as u64;
        let layers = (0..cfg.n_layers)
            .map(|i| {
                Ok((
                    gpu.storage(&format!("k_cache.{i}"), bytes)?,
                    gpu.storage(&format!("v_cache.{i}"), bytes)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { ctx, layers })
    }

    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(k, v)| k.size() + v.size()).sum()
    }
}

/// cos / sin of every (position, frequency) pair, computed in f64: [ctx, head_dim / 2] x (cos, sin) f32.
pub fn rope_table(ctx: usize, head_dim: usize, theta: f64) -> Vec<f32> {
    let half = head_dim / 2;
    let mut t = Vec::with_capacity(ctx * half * 2);
    for pos in 0..ctx {
        for i in 0..half {
            let inv_freq = theta.powf(-(2.0 * i as f64) / head_dim as f64);
            let a = pos as f64 * inv_freq;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    t
}
