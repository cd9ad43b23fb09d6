//! The kernel cases: every kernel family at a model's shapes ([`ModelDims`]), driven exactly as the
//! engine drives them, through `graph::Graph`, whose `Plan` records consecutive dispatches into one
//! compute pass, with the call's (slot, position) per token, output rows and split-K ranges written
//! to `graph::StepBuffers` as the engine writes them. This is the only module of the lab that knows the
//! graph, the kernels and their launch shapes; the runner sees it through [`super::case`].
//!
//! Cases, in table order:
//! - matvec (decode, one token) for every weight type at [hidden, hidden], [intermediate, hidden],
//!   [hidden, intermediate] and the LM head [vocab, hidden]; and batched decode (4 tokens of 4
//!   sequences, the matvec over blocks of tokens) at [hidden, hidden] and [intermediate, hidden]; each
//!   also through the int8 matvec (`Shapes::int8`: x quantized to 8 bits, then dot4I8Packed; its time
//!   includes the quantize's dispatch) for the block-quantized types;
//! - prefill over `prefill` tokens (quick: 32) at [hidden, hidden] and [intermediate, hidden], through
//!   both prefill shapes: matvec over blocks of tokens, and the tiled matmul;
//! - the fused linear kernels of the decode step (one token): q, k, v stacked with the input norm
//!   (one format, and the real Q4_K_M file's Q5_0 q/k with Q8_0 v), gate and up interleaved with the
//!   norm and the SiLU-gated epilogue, the down projection accumulating into the residual, and the LM
//!   head gathering the output row with the final norm; each also through the int8 matvec for the
//!   block-quantized types;
//! - decode attention (one query at position ctx - 1) at contexts 128, 1024, 4096 (quick: 64, 256),
//!   over f32 and f16 caches, whole and split-K (the split the engine picks on this device, or 4 key
//!   ranges where it picks none);
//! - rmsnorm, rope_store (RoPE of q and k in the qkv rows, k and v written to the cache; with and
//!   without Qwen3's per-head q/k norm; f32 and f16 caches) on 1 and `prefill` tokens;
//! - silu_mul (the unfused gated MLP's elementwise step) on 1 and `prefill` rows of `intermediate`;
//! - embed: 1 and `prefill` (quick: 32) token rows gathered from a [min(vocab, 4096), hidden] table, for
//!   every weight type (exact: the kernel decodes, the reference decodes the same blocks);
//! - argmax over the vocabulary.
//!
//! Validation covers every output, except the LM head (every 97th row, the last, and both sides of each
//! binding chunk's edges) and prefill (10 token rows, including the edges of the 8-token blocks and of
//! the 32-token tiles, and the last): the full CPU references there take seconds to minutes.

use super::case::{CaseDef, CaseId, Cost, Recording, Skipped, Suite, Workload};
use super::check::{self, Check};
use super::dims::ModelDims;
use super::runner::Mode;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::graph::{
    rope_table, CallShape, Graph, Heads, KvLayer, Linear, NormWeight, Plan, StepBuffers,
};
use crate::kernels::{Int8, Kernels, KvType, Shapes};
use crate::reference as r;
use crate::weights::{gpu_row_bytes, HostLayout, HostMatrix, Matrix, QuantType};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Instant;

/// Weight types of the matrix cases, in table order.
const TYPES: [QuantType; 8] = [
    QuantType::F32,
    QuantType::F16,
    QuantType::BF16,
    QuantType::Q8_0,
    QuantType::Q4_0,
    QuantType::Q4_K,
    QuantType::Q5_0,
    QuantType::Q6_K,
];

/// Prefill tokens in quick mode: one 32-token tile (the tiled matmul takes ~15 s at 512 tokens on
/// lavapipe).
const QUICK_PREFILL: usize = 32;
/// Rows of the embedding table of the embed cases (the gather's cost does not depend on it).
const EMBED_ROWS: usize = 4096;

/// The graph-driven suite on `gpu` at the device's default shapes: builds the pipelines of both
/// prefill shapes.
pub fn suite<'g>(gpu: &'g Gpu, dims: &ModelDims) -> Result<Box<dyn Suite + 'g>> {
    suite_with(gpu, dims, Shapes::for_device(&gpu.caps))
}

/// The suite with these kernel shapes (the sweep's candidates); their `tiled_from` is replaced as the
/// prefill cases need (see [`GraphSuite`]).
pub fn suite_with<'g>(
    gpu: &'g Gpu,
    dims: &ModelDims,
    shapes: Shapes,
) -> Result<Box<dyn Suite + 'g>> {
    Ok(Box::new(GraphSuite::new(gpu, dims, shapes)?))
}

struct GraphSuite<'g> {
    gpu: &'g Gpu,
    /// The kernel shapes (the device's defaults, or a sweep's candidate), as the engine would adjust
    /// them for this model.
    shapes: Shapes,
    /// Those shapes with every call of several tokens on the matvec over blocks of tokens, and with
    /// the tiled matmul from 2 tokens.
    k_tok: Kernels,
    k_tiled: Kernels,
    /// The int8 matvec's (`Int8::Matvec`, on the matvec over blocks of tokens), for the cases named
    /// "int8"; the other two have it off, whatever the shapes say, so that each case runs the kernel
    /// its name says.
    k_x8: Kernels,
    dummy: wgpu::Buffer, // [16 B] the absent bias
    pipelines_ms: f64,
}

impl<'g> GraphSuite<'g> {
    fn new(gpu: &'g Gpu, dims: &ModelDims, mut shapes: Shapes) -> Result<Self> {
        let t = Instant::now();
        // As Model::build: one attention invocation per output dim of a head.
        shapes.attn_wg = shapes.attn_wg.max(dims.head_dim.next_power_of_two() as u32);
        let with = |from, int8| {
            let mut s = shapes.clone();
            s.tiled_from = from;
            s.int8 = int8;
            Kernels::new(gpu, s)
        };
        let k_tok = with(None, Int8::Off)?;
        let k_tiled = with(Some(2), Int8::Off)?;
        let k_x8 = with(None, Int8::Matvec)?;
        Ok(GraphSuite {
            gpu,
            shapes,
            k_tok,
            k_tiled,
            k_x8,
            dummy: gpu.storage("lab dummy", 16)?,
            pipelines_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn buf(&self, v: &[f32]) -> Result<wgpu::Buffer> {
        self.gpu.storage_init("lab", bytemuck::cast_slice(v))
    }

    fn zeros(&self, n: usize) -> Result<wgpu::Buffer> {
        self.gpu.storage("lab", (n * 4) as u64)
    }

    /// A weight matrix in format `f` from f32 values, with the values the GPU layout decodes to for the
    /// rows `keep` (all rows when `None`).
    fn matrix(
        &self,
        f: QuantType,
        rows: usize,
        cols: usize,
        host: &[f32],
        keep: Option<&[usize]>,
    ) -> Result<(Matrix, Vec<f32>)> {
        let bytes = r::encode_weights(f, host);
        let seen = match keep {
            None => r::decode_weights(f, &bytes),
            Some(keep) => {
                let rb = gpu_row_bytes(f, cols);
                keep.iter()
                    .flat_map(|&i| r::decode_weights(f, &bytes[i * rb..(i + 1) * rb]))
                    .collect()
            }
        };
        Ok((
            Matrix::upload(self.gpu, &host_matrix(f, rows, cols, bytes))?,
            seen,
        ))
    }

    /// Why the type cannot run at rows of `cols` elements, if it cannot.
    /// A host matrix in format `f` from f32 values, and the values its GPU layout decodes to.
    fn host(
        &self,
        f: QuantType,
        rows: usize,
        cols: usize,
        host: &[f32],
    ) -> (HostMatrix<'static>, Vec<f32>) {
        let bytes = r::encode_weights(f, host);
        let seen = r::decode_weights(f, &bytes);
        (host_matrix(f, rows, cols, bytes), seen)
    }

    /// An f32 buffer holding `v` as cache elements of `kv`, and the values the kernels read from it.
    fn kv_buf(&self, v: &[f32], kv: KvType) -> Result<(wgpu::Buffer, Vec<f32>)> {
        Ok(match kv {
            KvType::F32 => (self.buf(v)?, v.to_vec()),
            KvType::F16 => {
                let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                let seen = h.iter().map(|x| x.to_f32()).collect();
                (
                    self.gpu.storage_init("lab kv", bytemuck::cast_slice(&h))?,
                    seen,
                )
            }
        })
    }

    /// The cache element types this device runs (f16 needs SHADER_F16).
    fn kv_types(&self) -> Vec<KvType> {
        let mut v = vec![KvType::F32];
        if self.gpu.caps.shader_f16 {
            v.push(KvType::F16);
        }
        v
    }

    fn unusable(&self, f: QuantType, cols: usize) -> Option<String> {
        if !self.k_tok.supports(f) {
            return Some(format!(
                "{}: no GPU kernel yet (Kernels::supports), skipped",
                f.name()
            ));
        }
        if !cols.is_multiple_of(f.block_size()) {
            return Some(format!(
                "{}: rows of {cols} elements are not a multiple of its block of {}, so only shapes with \
                 cols % {} == 0 are run",
                f.name(),
                f.block_size(),
                f.block_size()
            ));
        }
        None
    }

    /// A case recorded through the graph: `record` is one call of shape `call`; `validate` reads the
    /// outputs back.
    fn case<'s>(
        &'s self,
        kernels: &'s Kernels,
        call: Call,
        cost: Cost,
        record: impl Fn(&mut Graph<'_>) + 's,
        validate: impl Fn(&Gpu) -> Check + 's,
    ) -> Result<GraphCase<'s>> {
        let steps = StepBuffers::new(self.gpu, call.meta.len(), call.out_rows.len().max(1))?;
        Ok(GraphCase {
            gpu: self.gpu,
            kernels,
            steps,
            dummy: &self.dummy,
            call,
            cost,
            record: Box::new(record),
            validate: Box::new(validate),
        })
    }
}

fn id(kernel: &str, variant: &str, shape: String, ty: &str) -> CaseId {
    CaseId {
        kernel: kernel.into(),
        variant: variant.into(),
        shape,
        ty: ty.into(),
    }
}

fn def<'s>(id: CaseId, build: impl FnOnce() -> Result<GraphCase<'s>> + 's) -> CaseDef<'s> {
    CaseDef {
        id,
        build: Box::new(move || Ok(Box::new(build()?) as Box<dyn Workload + 's>)),
    }
}

/// A [rows, cols] host matrix of `bytes` in the GPU layout of `f`.
fn host_matrix(f: QuantType, rows: usize, cols: usize, bytes: Vec<u8>) -> HostMatrix<'static> {
    HostMatrix {
        name: "w".into(),
        format: f,
        rows,
        cols,
        data: Cow::Owned(bytes),
        layout: HostLayout::Gpu,
    }
}

/// Each of `items` with the f32 x (false), then each with the int8 matvec (true).
fn int8_too<T: Copy>(items: &[T]) -> Vec<(bool, T)> {
    [false, true]
        .into_iter()
        .flat_map(|b| items.iter().map(move |&t| (b, t)))
        .collect()
}

/// A fused case's variant, with ", int8" inside its parentheses for the int8 matvec.
fn fused_variant(base: &'static str, int8: bool) -> &'static str {
    if !int8 {
        return base;
    }
    match base {
        "qkv (stacked, normed)" => "qkv (stacked, normed, int8)",
        "gate_up (GLU, normed)" => "gate_up (GLU, normed, int8)",
        "down (residual)" => "down (residual, int8)",
        _ => "lm_head (gather, normed, int8)",
    }
}

/// What a linear case's kernel reads as x, for its reference and tolerance: x (or rmsnorm(x) * g) in
/// f32, or through the int8 matvec x (times g) rounded to 8 bits per 32-element block and scaled by the
/// norm factor (`reference::q8_input`), with the blocks' steps.
struct Seen {
    x: Vec<f32>,
    ds: Option<Vec<f32>>,
}

impl Seen {
    fn input(int8: bool, x: &[f32], cols: usize, norm: Option<(&[f32], f32)>) -> Self {
        if int8 {
            let (x, ds) = r::q8_input(x, cols, norm);
            return Seen { x, ds: Some(ds) };
        }
        let x = match norm {
            Some((g, eps)) => r::rms_norm(x, g, eps),
            None => x.to_vec(),
        };
        Seen { x, ds: None }
    }

    /// check::linear or check::linear_int8 of outputs computed from `self.x`.
    fn check(&self, got: &[f32], want: &[f32], w: &[f32], cols: usize) -> Check {
        match &self.ds {
            Some(ds) => check::linear_int8(got, want, w, cols, (&self.x, ds)),
            None => check::linear(got, want, w, cols, &self.x),
        }
    }

    /// The bound of one output of weight row `w` (one token: x is one row).
    fn tolerance(&self, w: &[f32]) -> f32 {
        match &self.ds {
            Some(ds) => check::int8_tolerance(w, &self.x, ds),
            None => {
                let l1: f32 = w.iter().zip(&self.x).map(|(p, q)| (p * q).abs()).sum();
                1e-5 * l1 + 1e-6
            }
        }
    }
}

/// Host data made on first use and shared by the cases of one shape (dropped with the last of them).
type Shared<T> = Rc<OnceCell<T>>;

fn read(
    gpu: &Gpu,
    b: &wgpu::Buffer,
    offset: usize,
    n: usize,
) -> std::result::Result<Vec<f32>, String> {
    gpu.read_f32(b, offset as u64, n)
        .map_err(|e| format!("read back: {e}"))
}

impl Suite for GraphSuite<'_> {
    fn kernel_shapes(&self) -> String {
        format!(
            "{:?} (prefill cases: the matvec over blocks of tokens (tiled_from None), and the tiled matmul (tiled_from Some(2)))",
            self.shapes
        )
    }

    fn pipelines_ms(&self) -> f64 {
        self.pipelines_ms
    }

    fn cases(&self, mode: Mode, d: &ModelDims) -> (Vec<CaseDef<'_>>, Vec<Skipped>) {
        let mut c = Cases {
            s: self,
            defs: vec![],
            skipped: vec![],
        };
        let quick = mode == Mode::Quick;
        let n_prefill = if quick {
            QUICK_PREFILL.min(d.prefill)
        } else {
            d.prefill
        };
        c.matvec(d);
        c.prefill(d, n_prefill);
        c.fused(d);
        c.attention(
            d,
            if quick {
                &[64, 256]
            } else {
                &[128, 1024, 4096]
            },
        );
        c.rmsnorm(d);
        c.rope(d);
        c.silu_mul(d);
        c.embed(d, n_prefill);
        c.argmax(d);
        (c.defs, c.skipped)
    }
}

/// The list being made.
struct Cases<'s, 'g> {
    s: &'s GraphSuite<'g>,
    defs: Vec<CaseDef<'s>>,
    skipped: Vec<Skipped>,
}

impl<'s> Cases<'s, '_> {
    /// Whether `f` can run at `cols`; records the skip otherwise.
    fn usable(&mut self, id: &CaseId, f: QuantType, cols: usize) -> bool {
        match self.s.unusable(f, cols) {
            None => true,
            Some(reason) => {
                self.skipped.push(Skipped {
                    id: id.clone(),
                    reason,
                });
                false
            }
        }
    }

    /// Matrix-vector products for every weight type: decode (one token) at every shape, and batched
    /// decode (one token of each of 4 sequences, the matvec over blocks of tokens) at the first two.
    fn matvec(&mut self, d: &ModelDims) {
        let s = self.s;
        let (h, i, v) = (d.hidden, d.intermediate, d.vocab);
        for (rows, cols, batches) in [
            (h, h, &[1, 4][..]),
            (i, h, &[1, 4]),
            (h, i, &[1]),
            (v, h, &[1]),
        ] {
            // [rows, cols] weights and [4, cols] x, made once for every type of the shape.
            let data: Shared<(Vec<f32>, Vec<f32>)> = Rc::default();
            for (&n, int8) in batches.iter().flat_map(|n| [(n, false), (n, true)]) {
                for f in TYPES {
                    if int8 && !f.is_quantized() {
                        continue;
                    }
                    let variant = match (n, int8) {
                        (1, false) => "decode",
                        (1, true) => "decode (int8)",
                        (_, false) => "batch4 (blocks)",
                        (_, true) => "batch4 (blocks, int8)",
                    };
                    let id = id("matvec", variant, format!("{rows}x{cols}"), f.name());
                    if !self.usable(&id, f, cols) {
                        continue;
                    }
                    let data = data.clone();
                    self.defs.push(def(id, move || {
                        let (host, x) = data.get_or_init(|| {
                            let mut rng = Rng::new((rows * 31 + cols) as u64);
                            (rng.vec(rows * cols, 0.5), rng.vec(4 * cols, 1.0))
                        });
                        let x = x[..n * cols].to_vec(); // [n, cols]
                                                        // The LM head's reference runs on a sample of rows: the full one is seconds
                                                        // of CPU.
                        let keep = (rows > 16384).then(|| lm_head_rows(s.gpu, f, rows, cols));
                        let (w, seen) = s.matrix(f, rows, cols, host, keep.as_deref())?;
                        // int8: x read in f32 by the quantize, which writes a byte and 1/32 of a
                        // 16-byte step per element, read by the matvec: 7 bytes per element.
                        let x_bytes = if int8 { n * cols * 7 } else { n * cols * 4 };
                        let cost = Cost {
                            bytes: (w.bytes() + (x_bytes + n * rows * 4) as u64) as f64,
                            flops: 2.0 * (n * rows * cols) as f64,
                        };
                        let lin = Linear { w, b: None };
                        let (xb, yb) = (s.buf(&x)?, s.zeros(n * rows)?); // y [n, rows]
                        let y = yb.clone();
                        s.case(
                            if int8 { &s.k_x8 } else { &s.k_tok },
                            Call::batch(n, 0),
                            cost,
                            move |g| g.linear(&lin, &xb, &yb),
                            move |gpu| {
                                let all = read(gpu, &y, 0, n * rows)?;
                                let got: Vec<f32> = match &keep {
                                    None => all,
                                    Some(k) => k.iter().map(|&i| all[i]).collect(),
                                };
                                if int8 {
                                    let (x8, ds) = r::q8_input(&x, cols, None);
                                    let want = r::linear(&seen, cols, &x8, None, None);
                                    check::linear_int8(&got, &want, &seen, cols, (&x8, &ds))
                                } else {
                                    let want = r::linear(&seen, cols, &x, None, None);
                                    check::linear(&got, &want, &seen, cols, &x)
                                }
                            },
                        )
                    }));
                }
            }
        }
    }

    /// Prefill through both prefill shapes: matvec over blocks of tokens, and the tiled matmul.
    fn prefill(&mut self, d: &ModelDims, n: usize) {
        let s = self.s;
        // Token rows validated against the reference: first and last rows, both sides of the 8-token
        // blocks and of the 32-token tiles.
        let mut sample: Vec<usize> = [0, 1, 7, 8, 31, 32, 255, 256, 300, 511, n - 1]
            .into_iter()
            .filter(|&t| t < n)
            .collect();
        sample.sort();
        sample.dedup();
        let sample = Rc::new(sample);
        for (rows, cols) in [(d.hidden, d.hidden), (d.intermediate, d.hidden)] {
            // [rows, cols] weights, [n, cols] x, and the sampled rows of x.
            let data: Shared<(Vec<f32>, Vec<f32>, Vec<f32>)> = Rc::default();
            for f in TYPES {
                for tiled in [false, true] {
                    let variant = if tiled {
                        "matmul (tiled)"
                    } else {
                        "matvec (blocks)"
                    };
                    let id = id("prefill", variant, format!("{rows}x{cols} n={n}"), f.name());
                    if !self.usable(&id, f, cols) {
                        continue;
                    }
                    let (data, sample) = (data.clone(), sample.clone());
                    self.defs.push(def(id, move || {
                        let (host, x, x_sample) = data.get_or_init(|| {
                            let mut rng = Rng::new((rows * 37 + cols) as u64);
                            let host = rng.vec(rows * cols, 0.5);
                            let x = rng.vec(n * cols, 1.0);
                            let xs = sample
                                .iter()
                                .flat_map(|&t| x[t * cols..(t + 1) * cols].iter().copied())
                                .collect();
                            (host, x, xs)
                        });
                        let (w, seen) = s.matrix(f, rows, cols, host, None)?;
                        let cost = Cost {
                            bytes: (w.bytes() + (n * cols * 4 + n * rows * 4) as u64) as f64,
                            flops: 2.0 * (rows * cols * n) as f64,
                        };
                        let lin = Linear { w, b: None };
                        let (xb, yb) = (s.buf(x)?, s.zeros(n * rows)?);
                        let (xs, y) = (x_sample.clone(), yb.clone());
                        let k = if tiled { &s.k_tiled } else { &s.k_tok };
                        s.case(
                            k,
                            Call::seq(n, 0),
                            cost,
                            move |g| g.linear(&lin, &xb, &yb),
                            move |gpu| {
                                let mut got = Vec::with_capacity(sample.len() * rows);
                                for &t in sample.iter() {
                                    got.extend(read(gpu, &y, t * rows, rows)?);
                                }
                                let want = r::linear(&seen, cols, &xs, None, None);
                                check::linear(&got, &want, &seen, cols, &xs)
                            },
                        )
                    }));
                }
            }
        }
    }

    /// The fused linear kernels of a decode step (one token), against the unfused references.
    fn fused(&mut self, d: &ModelDims) {
        let s = self.s;
        let (h, i, v, eps) = (d.hidden, d.intermediate, d.vocab, d.rms_eps);
        let (qd, kvd) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
        // q, k, v stacked with the input norm: y [qd + 2 kvd] = W rmsnorm(x) * g + b.
        let qkv_formats: [(&str, [QuantType; 3]); 4] = [
            ("F32", [QuantType::F32; 3]),
            ("Q8_0", [QuantType::Q8_0; 3]),
            ("Q4_K", [QuantType::Q4_K; 3]),
            (
                "Q5_0+Q8_0",
                [QuantType::Q5_0, QuantType::Q5_0, QuantType::Q8_0],
            ),
        ];
        for (int8, (ty, formats)) in int8_too(&qkv_formats) {
            if int8 && !formats.iter().all(|f| f.is_quantized()) {
                continue;
            }
            let id = id(
                "fused",
                fused_variant("qkv (stacked, normed)", int8),
                format!("{}x{h}", qd + 2 * kvd),
                ty,
            );
            if !formats.iter().all(|&f| self.usable(&id, f, h)) {
                continue;
            }
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(41);
                let (hosts, seen): (Vec<_>, Vec<_>) = formats
                    .iter()
                    .zip([qd, kvd, kvd])
                    .map(|(&f, rows)| s.host(f, rows, h, &rng.vec(rows * h, 0.5)))
                    .unzip();
                let w = seen.concat(); // [qd + 2 kvd, hidden]
                let m = Matrix::upload_stacked(s.gpu, &hosts, s.k_tok.shapes.segment_align())?
                    .ok_or_else(|| crate::error::Error::Input("q, k, v do not stack".into()))?;
                let total = qd + 2 * kvd;
                let (x, g, bias) = (rng.vec(h, 2.0), rng.vec(h, 1.0), rng.vec(total, 1.0));
                let cost = Cost {
                    bytes: (m.bytes() + ((2 * h + 2 * total) * 4) as u64) as f64,
                    flops: 2.0 * (total * h) as f64,
                };
                let lin = Linear {
                    w: m,
                    b: Some(s.buf(&bias)?),
                };
                let (xb, gb, yb) = (s.buf(&x)?, s.buf(&g)?, s.zeros(total)?);
                let y = yb.clone();
                s.case(
                    if int8 { &s.k_x8 } else { &s.k_tok },
                    Call::seq(1, 0),
                    cost,
                    move |gr| {
                        gr.linear_normed(&lin, NormWeight { w: &gb, eps }, &xb, &yb, 0, total)
                    },
                    move |gpu| {
                        let xs = Seen::input(int8, &x, h, Some((&g, eps)));
                        let want = r::linear(&w, h, &xs.x, Some(&bias), None);
                        xs.check(&read(gpu, &y, 0, total)?, &want, &w, h)
                    },
                )
            }));
        }
        // gate and up interleaved with the input norm and the SiLU-gated epilogue: y [intermediate].
        let gate_up_types = [
            QuantType::F32,
            QuantType::Q8_0,
            QuantType::Q4_K,
            QuantType::Q5_0,
        ];
        for (int8, f) in int8_too(&gate_up_types) {
            if int8 && !f.is_quantized() {
                continue;
            }
            let id = id(
                "fused",
                fused_variant("gate_up (GLU, normed)", int8),
                format!("2x{i}x{h}"),
                f.name(),
            );
            if !self.usable(&id, f, h) {
                continue;
            }
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(43);
                let (hg, wg) = s.host(f, i, h, &rng.vec(i * h, 0.5));
                let (hu, wu) = s.host(f, i, h, &rng.vec(i * h, 0.5));
                let m = Matrix::upload_interleaved(s.gpu, &hg, &hu)?.ok_or_else(|| {
                    crate::error::Error::Input("gate, up do not interleave".into())
                })?;
                let (x, g) = (rng.vec(h, 2.0), rng.vec(h, 1.0));
                let cost = Cost {
                    bytes: (m.bytes() + ((2 * h + i) * 4) as u64) as f64,
                    flops: 4.0 * (i * h) as f64,
                };
                let lin = Linear { w: m, b: None };
                let (xb, gb, yb) = (s.buf(&x)?, s.buf(&g)?, s.zeros(i)?);
                let y = yb.clone();
                s.case(
                    if int8 { &s.k_x8 } else { &s.k_tok },
                    Call::seq(1, 0),
                    cost,
                    move |gr| gr.gate_up_normed(&lin, NormWeight { w: &gb, eps }, &xb, &yb),
                    move |gpu| {
                        let xs = Seen::input(int8, &x, h, Some((&g, eps)));
                        let a = r::linear(&wg, h, &xs.x, None, None);
                        let b = r::linear(&wu, h, &xs.x, None, None);
                        // Each side within the linear bound, propagated through silu(a) * b.
                        let got = read(gpu, &y, 0, i)?;
                        let check_a = |w: &[f32], j: usize| xs.tolerance(&w[j * h..(j + 1) * h]);
                        let mut worst = 0f64;
                        for j in 0..i {
                            let (ta, tb) = (check_a(&wg, j), check_a(&wu, j));
                            let silu = a[j] / (1.0 + (-a[j]).exp());
                            let want = silu * b[j];
                            let tol = 1.1 * (ta * b[j].abs() + tb * silu.abs() + ta * tb) + 1e-6;
                            let err = (got[j] - want).abs();
                            if err.is_nan() || err > tol {
                                return Err(format!(
                                    "output {j}: gpu {} vs reference {want} (tolerance {tol})",
                                    got[j]
                                ));
                            }
                            worst = worst.max((err / tol) as f64);
                        }
                        Ok(worst)
                    },
                )
            }));
        }
        // The down projection accumulating into the residual stream: y += W x.
        let down_types = [
            QuantType::F32,
            QuantType::Q8_0,
            QuantType::Q4_K,
            QuantType::Q6_K,
        ];
        for (int8, f) in int8_too(&down_types) {
            if int8 && !f.is_quantized() {
                continue;
            }
            let variant = fused_variant("down (residual)", int8);
            let id = id("fused", variant, format!("{h}x{i}"), f.name());
            if !self.usable(&id, f, i) {
                continue;
            }
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(45);
                let (w, seen) = s.matrix(f, h, i, &rng.vec(h * i, 0.5), None)?;
                let (x, y0) = (rng.vec(i, 1.0), rng.vec(h, 1.0));
                let cost = Cost {
                    bytes: (w.bytes() + ((i + 2 * h) * 4) as u64) as f64,
                    flops: 2.0 * (h * i) as f64,
                };
                let lin = Linear { w, b: None };
                let (xb, yb) = (s.buf(&x)?, s.buf(&y0)?);
                let y = yb.clone();
                // Validation reads y after one call from the first y0 (the runner validates before
                // it times).
                s.case(
                    if int8 { &s.k_x8 } else { &s.k_tok },
                    Call::seq(1, 0),
                    cost,
                    move |gr| gr.linear_residual(&lin, &xb, &yb),
                    move |gpu| {
                        let xs = Seen::input(int8, &x, i, None);
                        let want = r::linear(&seen, i, &xs.x, None, Some(&y0));
                        xs.check(&read(gpu, &y, 0, h)?, &want, &seen, i)
                    },
                )
            }));
        }
        // The LM head over the call's output row with the final norm: 8 tokens, the logits of row 5.
        for (int8, f) in int8_too(&[QuantType::F16, QuantType::Q8_0, QuantType::Q6_K]) {
            if int8 && !f.is_quantized() {
                continue;
            }
            let id = id(
                "fused",
                fused_variant("lm_head (gather, normed)", int8),
                format!("{v}x{h}"),
                f.name(),
            );
            if !self.usable(&id, f, h) {
                continue;
            }
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(47);
                let keep = lm_head_rows(s.gpu, f, v, h);
                let (w, seen) = s.matrix(f, v, h, &rng.vec(v * h, 0.5), Some(&keep))?;
                let (n, row) = (8, 5);
                let (x, g) = (rng.vec(n * h, 2.0), rng.vec(h, 1.0)); // x [n, hidden]
                let cost = Cost {
                    bytes: (w.bytes() + ((2 * h + v) * 4) as u64) as f64,
                    flops: 2.0 * (v * h) as f64,
                };
                let lin = Linear { w, b: None };
                let (xb, gb, yb) = (s.buf(&x)?, s.buf(&g)?, s.zeros(v)?);
                let y = yb.clone();
                s.case(
                    if int8 { &s.k_x8 } else { &s.k_tok },
                    Call::seq(n, 0).outputs(vec![row as u32]),
                    cost,
                    move |gr| gr.lm_head(&lin, NormWeight { w: &gb, eps }, &xb, &yb),
                    move |gpu| {
                        let all = read(gpu, &y, 0, v)?;
                        let got: Vec<f32> = keep.iter().map(|&i| all[i]).collect();
                        let xs = Seen::input(int8, &x[row * h..(row + 1) * h], h, Some((&g, eps)));
                        let want = r::linear(&seen, h, &xs.x, None, None);
                        xs.check(&got, &want, &seen, h)
                    },
                )
            }));
        }
    }

    /// Decode attention (one query at position ctx - 1) over a cache of ctx keys, f32 and f16 caches,
    /// whole and split-K.
    fn attention(&mut self, d: &ModelDims, ctxs: &[usize]) {
        let s = self.s;
        let heads = Heads {
            n_heads: d.n_heads,
            n_kv_heads: d.n_kv_heads,
            head_dim: d.head_dim,
        };
        let (nh, nkv, hd) = (d.n_heads, d.n_kv_heads, d.head_dim);
        let (qd, kvd) = (heads.q_dim(), heads.kv_dim());
        for &ctx in ctxs {
            // The split the engine picks here, or 4 key ranges where it picks none.
            let engine_split = s.shapes.kv_splits(&[[0, ctx as u32 - 1]]);
            let split = if engine_split > 1 { engine_split } else { 4 };
            for kv in s.kv_types() {
                for splits in [1, split] {
                    let variant = match splits {
                        1 => "decode".to_string(),
                        n => format!("decode split-K x{n}"),
                    };
                    let shape = format!("ctx={ctx} {nh}/{nkv} heads x {hd}");
                    let id = id("attention", &variant, shape, &kv.name().to_uppercase());
                    self.defs.push(def(id, move || {
                        let mut rng = Rng::new(ctx as u64 + 4);
                        let q = rng.vec(qd, 1.0); // [n_heads * head_dim]
                        let (kb, kc) = s.kv_buf(&rng.vec(ctx * kvd, 1.0), kv)?; // [ctx, kvd]
                        let (vb, vc) = s.kv_buf(&rng.vec(ctx * kvd, 1.0), kv)?; // [ctx, kvd]
                        let cache = KvLayer {
                            k: kb,
                            v: vb,
                            slot_rows: ctx,
                            kv_type: kv,
                        };
                        let (qb, out) = (s.buf(&q)?, s.zeros(qd)?);
                        // [1, n_heads, splits, head_dim + 2] partials
                        let part = s.zeros(nh * splits as usize * (hd + 2))?;
                        let o = out.clone();
                        let cost = Cost {
                            bytes: ((2 * ctx * kvd) * kv.bytes() + 2 * qd * 4) as f64,
                            flops: (nh * ctx * hd * 4) as f64,
                        };
                        s.case(
                            &s.k_tok,
                            Call::seq(1, ctx - 1).splits(splits),
                            cost,
                            move |g| g.attention(&qb, qd, &cache, &out, &part, heads),
                            move |gpu| {
                                let want = r::attention(&q, &kc, &vc, nh, nkv, hd, ctx - 1);
                                check::close(&read(gpu, &o, 0, qd)?, &want, 0.0, 1e-5)
                            },
                        )
                    }));
                }
            }
        }
    }

    fn rmsnorm(&mut self, d: &ModelDims) {
        let s = self.s;
        let (h, eps) = (d.hidden, d.rms_eps);
        for n in [1, d.prefill] {
            let id = id("rmsnorm", "", format!("{n}x{h}"), "F32");
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(2 + n as u64);
                let x = rng.vec(n * h, 3.0); // [n, hidden]
                let w = rng.vec(h, 1.0); // [hidden]
                let (xb, wb, yb) = (s.buf(&x)?, s.buf(&w)?, s.zeros(n * h)?);
                let y = yb.clone();
                let cost = Cost {
                    bytes: ((2 * n * h + h) * 4) as f64,
                    flops: (4 * n * h) as f64,
                };
                s.case(
                    &s.k_tok,
                    Call::seq(n, 0),
                    cost,
                    move |g| g.rms_norm(&xb, &wb, &yb, h, eps),
                    move |gpu| {
                        let want = r::rms_norm(&x, &w, eps);
                        check::close(&read(gpu, &y, 0, n * h)?, &want, 1e-5, 0.0)
                    },
                )
            }));
        }
    }

    /// rope_store on 1 and `prefill` tokens: RoPE of q in place in the qkv rows and of k, with k and v
    /// written to the cache; with and without the per-head q/k norm (Qwen3), into f32 and f16 caches.
    fn rope(&mut self, d: &ModelDims) {
        let s = self.s;
        let heads = Heads {
            n_heads: d.n_heads,
            n_kv_heads: d.n_kv_heads,
            head_dim: d.head_dim,
        };
        let (nh, nkv, hd, theta, eps) =
            (d.n_heads, d.n_kv_heads, d.head_dim, d.rope_theta, d.rms_eps);
        let (qd, kvd, row) = (heads.q_dim(), heads.kv_dim(), heads.qkv_dim());
        let ctx = d.prefill + 64;
        for n in [1, d.prefill] {
            for kv in s.kv_types() {
                for qk_norm in [false, true] {
                    let pos0 = if n == 1 { 63 } else { 0 };
                    let variant = if qk_norm { "qk_norm" } else { "" };
                    let id = id(
                        "rope_store",
                        variant,
                        format!("{n}x({nh}+{nkv})x{hd}"),
                        &kv.name().to_uppercase(),
                    );
                    self.defs.push(def(id, move || {
                        let mut rng = Rng::new(3 + n as u64);
                        let table = s.buf(&rope_table(ctx, hd, theta))?; // [ctx, head_dim / 2] x (cos, sin)
                        let qkv = rng.vec(n * row, 1.0); // [n, (n_heads + 2 n_kv_heads) * head_dim]
                        let (qw, kw) = (rng.vec(hd, 1.0), rng.vec(hd, 1.0)); // [head_dim] each
                        let (qkvb, qnb, knb) = (s.buf(&qkv)?, s.buf(&qw)?, s.buf(&kw)?);
                        let zeros = vec![0f32; ctx * kvd];
                        let cache = KvLayer {
                            k: s.kv_buf(&zeros, kv)?.0, // [ctx, kvd]
                            v: s.kv_buf(&zeros, kv)?.0, // [ctx, kvd]
                            slot_rows: ctx,
                            kv_type: kv,
                        };
                        let (qr, kr, vr) = (qkvb.clone(), cache.k.clone(), cache.v.clone());
                        let cost = Cost {
                            bytes: ((n * row + n * qd) * 4 + 2 * n * kvd * kv.bytes() + n * hd * 4)
                                as f64,
                            flops: (n * (qd + kvd) * 3) as f64,
                        };
                        s.case(
                            &s.k_tok,
                            Call::seq(n, pos0),
                            cost,
                            move |g| {
                                let norm = qk_norm.then_some((&qnb, &knb));
                                g.rope_store(&qkvb, norm, eps, &table, &cache, heads)
                            },
                            move |gpu| {
                                let split = |part: std::ops::Range<usize>| -> Vec<f32> {
                                    qkv.chunks(row)
                                        .flat_map(|r| r[part.clone()].to_vec())
                                        .collect()
                                };
                                let (mut q, mut k, v) =
                                    (split(0..qd), split(qd..qd + kvd), split(qd + kvd..row));
                                if qk_norm {
                                    r::head_rms_norm(&mut q, hd, &qw, eps);
                                    r::head_rms_norm(&mut k, hd, &kw, eps);
                                }
                                r::rope(&mut q, nh, hd, pos0, theta);
                                r::rope(&mut k, nkv, hd, pos0, theta);
                                let got = read(gpu, &qr, 0, n * row)?;
                                let gq: Vec<f32> =
                                    got.chunks(row).flat_map(|r| r[..qd].to_vec()).collect();
                                let wq = check::close(&gq, &q, 0.0, 1e-5)?;
                                let (tol_rel, tol_abs) = match kv {
                                    KvType::F32 => (0.0, 1e-5),
                                    KvType::F16 => (1e-3, 1e-5),
                                };
                                let kc = read_kv(gpu, &kr, pos0 * kvd, n * kvd, kv)?;
                                let vc = read_kv(gpu, &vr, pos0 * kvd, n * kvd, kv)?;
                                let wk = check::close(&kc, &k, tol_rel, tol_abs)?;
                                let wv = check::close(&vc, &v, tol_rel, tol_abs)?;
                                Ok(wq.max(wk).max(wv))
                            },
                        )
                    }));
                }
            }
        }
    }

    /// gate = silu(gate) * up, in place, on 1 and `prefill` rows of `intermediate`.
    fn silu_mul(&mut self, d: &ModelDims) {
        let s = self.s;
        let cols = d.intermediate;
        for n in [1, d.prefill] {
            let id = id("silu_mul", "", format!("{n}x{cols}"), "F32");
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(5 + n as u64);
                let gate = rng.vec(n * cols, 8.0); // [n, intermediate]
                let up = rng.vec(n * cols, 2.0); // [n, intermediate]
                let (gb, ub) = (s.buf(&gate)?, s.buf(&up)?);
                let gr = gb.clone();
                let cost = Cost {
                    bytes: ((3 * n * cols) * 4) as f64,
                    flops: (5 * n * cols) as f64,
                };
                s.case(
                    &s.k_tok,
                    Call::seq(n, 0),
                    cost,
                    move |g| g.silu_mul(&gb, &ub, cols),
                    move |gpu| {
                        let want = r::silu_mul(&gate, &up);
                        check::close(&read(gpu, &gr, 0, n * cols)?, &want, 1e-5, 0.0)
                    },
                )
            }));
        }
    }

    /// Token rows gathered from an embedding table, every weight type; exact against the reference.
    fn embed(&mut self, d: &ModelDims, n_prefill: usize) {
        let s = self.s;
        let (rows, cols) = (d.vocab.min(EMBED_ROWS), d.hidden);
        let data: Shared<Vec<f32>> = Rc::default();
        for n in [1, n_prefill] {
            for f in TYPES {
                let id = id("embed", "", format!("{rows}x{cols} n={n}"), f.name());
                if !self.usable(&id, f, cols) {
                    continue;
                }
                let data = data.clone();
                self.defs.push(def(id, move || {
                    let host = data.get_or_init(|| Rng::new(7).vec(rows * cols, 0.5));
                    let (table, seen) = s.matrix(f, rows, cols, host, None)?;
                    let mut rng = Rng::new(8 + n as u64);
                    let tokens: Vec<u32> = (0..n)
                        .map(|_| ((rng.f32() + 1.0) * 0.5 * rows as f32) as u32 % rows as u32)
                        .collect(); // [n]
                    let tb = s
                        .gpu
                        .storage_init("lab tokens", bytemuck::cast_slice(&tokens))?;
                    let out = s.zeros(n * cols)?; // [n, hidden]
                    let o = out.clone();
                    let cost = Cost {
                        bytes: (n * gpu_row_bytes(f, cols) + n * 4 + n * cols * 4) as f64,
                        flops: 0.0,
                    };
                    s.case(
                        &s.k_tok,
                        Call::seq(n, 0),
                        cost,
                        move |g| g.embed(&table, &tb, &out),
                        move |gpu| {
                            let want = r::embed(&seen, cols, &tokens);
                            check::close(&read(gpu, &o, 0, n * cols)?, &want, 0.0, 0.0)
                        },
                    )
                }));
            }
        }
    }

    /// The greedy argmax over the vocabulary (one workgroup), as at the end of every decode step.
    fn argmax(&mut self, d: &ModelDims) {
        let s = self.s;
        let (vocab, n_valid) = (d.vocab, d.n_valid);
        let id = id("argmax", "", format!("{vocab} (valid {n_valid})"), "F32");
        self.defs.push(def(id, move || {
            let logits = Rng::new(6).vec(vocab, 10.0); // [vocab]
            let lb = s.buf(&logits)?;
            let out = s.gpu.storage("lab argmax", 4)?; // [1] u32
            let o = out.clone();
            let cost = Cost {
                bytes: (n_valid * 4 + 4) as f64,
                flops: n_valid as f64,
            };
            s.case(
                &s.k_tok,
                Call::seq(1, 0).outputs(vec![0]),
                cost,
                move |g| g.argmax(&lb, vocab, n_valid, &out),
                move |gpu| {
                    let b = gpu
                        .read_buffer(&o, 0, 4)
                        .map_err(|e| format!("read back: {e}"))?;
                    let got = u32::from_le_bytes(b.try_into().expect("4 bytes"));
                    check::ids(&[got], &[r::argmax(&logits, n_valid)])
                },
            )
        }));
    }
}

/// `n` cache elements of `kv` from element `offset`, as f32.
fn read_kv(
    gpu: &Gpu,
    b: &wgpu::Buffer,
    offset: usize,
    n: usize,
    kv: KvType,
) -> std::result::Result<Vec<f32>, String> {
    match kv {
        KvType::F32 => read(gpu, b, offset, n),
        KvType::F16 => {
            let bytes = gpu
                .read_buffer(b, (offset * 2) as u64, (n * 2) as u64)
                .map_err(|e| format!("read back: {e}"))?;
            let h: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes);
            Ok(h.iter().map(|x| x.to_f32()).collect())
        }
    }
}

/// Rows of an LM head validated against the reference: every 97th, the last, and both sides of each
/// binding chunk's edge.
fn lm_head_rows(gpu: &Gpu, f: QuantType, rows: usize, cols: usize) -> Vec<usize> {
    let mut k: Vec<usize> = (0..rows).step_by(97).chain([rows - 1]).collect();
    let max_rows = (gpu.caps.max_storage_binding as usize / gpu_row_bytes(f, cols)).max(1);
    let per_chunk = rows.div_ceil(rows.div_ceil(max_rows));
    for b in (per_chunk..rows).step_by(per_chunk) {
        k.extend([b - 1, b]);
    }
    k.sort();
    k.dedup();
    k
}

/// What one call holds: (slot, position) per token, the token rows whose outputs are wanted, and the
/// split-K attention's key ranges.
struct Call {
    meta: Vec<[u32; 2]>,
    out_rows: Vec<u32>,
    kv_splits: u32,
}

impl Call {
    /// `n` tokens of one sequence from position `pos0`, no outputs, no split.
    fn seq(n: usize, pos0: usize) -> Call {
        Call {
            meta: (0..n).map(|t| [0, (pos0 + t) as u32]).collect(),
            out_rows: vec![],
            kv_splits: 1,
        }
    }

    /// One token of each of `n` sequences (batched decode), sequence i at position `pos`.
    fn batch(n: usize, pos: usize) -> Call {
        Call {
            meta: (0..n).map(|i| [i as u32, pos as u32]).collect(),
            out_rows: vec![],
            kv_splits: 1,
        }
    }

    fn outputs(self, out_rows: Vec<u32>) -> Call {
        Call { out_rows, ..self }
    }

    fn splits(self, kv_splits: u32) -> Call {
        Call { kv_splits, ..self }
    }
}

/// A case as the graph records it.
struct GraphCase<'s> {
    gpu: &'s Gpu,
    kernels: &'s Kernels,
    steps: StepBuffers,
    dummy: &'s wgpu::Buffer,
    call: Call,
    cost: Cost,
    record: Box<dyn Fn(&mut Graph<'_>) + 's>,
    validate: Box<dyn Fn(&Gpu) -> Check + 's>,
}

/// A plan and the call it is recorded for.
struct PlanRecording {
    plan: Plan,
    call: CallShape,
}

impl Recording for PlanRecording {
    fn record(&self, enc: &mut wgpu::CommandEncoder) {
        self.plan.record(enc, self.call);
    }
}

impl Workload for GraphCase<'_> {
    fn cost(&self) -> Cost {
        self.cost
    }

    fn repeated(&self, calls: usize) -> Result<Box<dyn Recording + '_>> {
        let c = &self.call;
        let call = self
            .steps
            .write(&self.gpu.queue, &c.meta, &c.out_rows, c.kv_splits)?;
        let mut g = Graph::new(self.gpu, self.kernels, &self.steps, self.dummy);
        for _ in 0..calls {
            (self.record)(&mut g);
        }
        Ok(Box::new(PlanRecording {
            plan: g.finish()?,
            call,
        }))
    }

    fn validate(&self) -> Check {
        (self.validate)(self.gpu)
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), uniform in [-1, 1) times a scale.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}
