//! The kernel cases: every kernel family at a model's shapes ([`ModelDims`]), driven exactly as the
//! engine drives them, through `graph::Graph`, whose `Plan` records consecutive dispatches into one
//! compute pass. This is the only module of the lab that knows the graph, the kernels and their launch
//! shapes; the runner sees it through [`super::case`].
//!
//! Cases, in table order:
//! - matvec (decode, one token) for every weight type at [hidden, hidden], [intermediate, hidden],
//!   [hidden, intermediate] and the LM head [vocab, hidden];
//! - prefill over `prefill` tokens (quick: 32) at [hidden, hidden] and [intermediate, hidden], through
//!   both prefill shapes: matvec over blocks of 8 tokens, and the tiled matmul;
//! - decode attention (one query at position ctx - 1) at contexts 128, 1024, 4096 (quick: 64, 256);
//! - rmsnorm, rope_q on 1 and `prefill` tokens, store_kv (rotate k, append k and v) on one token;
//! - silu_mul (the gated MLP's elementwise step) on 1 and `prefill` rows of `intermediate`;
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
use crate::graph::{rope_table, Graph, Linear, LinearKind, Plan, StepUniform};
use crate::kernels::{Kernels, Shapes};
use crate::reference as r;
use crate::weights::{gpu_row_bytes, HostMatrix, Matrix, QuantType};
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

/// The graph-driven suite on `gpu`: builds the pipelines of both prefill shapes.
pub fn suite<'g>(gpu: &'g Gpu, dims: &ModelDims) -> Result<Box<dyn Suite + 'g>> {
    Ok(Box::new(GraphSuite::new(gpu, dims)?))
}

struct GraphSuite<'g> {
    gpu: &'g Gpu,
    /// The device's kernel shapes, as the engine would pick them for this model.
    shapes: Shapes,
    /// Those shapes with prefill over blocks of 8 tokens, and with the tiled matmul.
    k_tok: Kernels,
    k_tiled: Kernels,
    step: wgpu::Buffer,  // [16 B] StepUniform
    dummy: wgpu::Buffer, // [16 B] the absent bias
    pipelines_ms: f64,
}

impl<'g> GraphSuite<'g> {
    fn new(gpu: &'g Gpu, dims: &ModelDims) -> Result<Self> {
        let t = Instant::now();
        let mut shapes = Shapes::for_device(&gpu.caps);
        // As Model::build: one attention invocation per output dim of a head.
        shapes.attn_wg = shapes.attn_wg.max(dims.head_dim.next_power_of_two() as u32);
        let with_tok = |tok| {
            let mut s = shapes.clone();
            s.prefill_tok = tok;
            Kernels::new(gpu, s)
        };
        let k_tok = with_tok(Some(8))?;
        let k_tiled = with_tok(None)?;
        Ok(GraphSuite {
            gpu,
            shapes,
            k_tok,
            k_tiled,
            step: gpu.uniform_init("lab step", &[0u8; 16]),
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
        let hm = HostMatrix {
            name: "w".into(),
            format: f,
            rows,
            cols,
            data: Cow::Owned(bytes),
        };
        Ok((Matrix::upload(self.gpu, &hm)?, seen))
    }

    /// Why the type cannot run at rows of `cols` elements, if it cannot.
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

    /// A case recorded through the graph: `record` is one call; `validate` reads the outputs back.
    #[allow(clippy::too_many_arguments)]
    fn case<'s>(
        &'s self,
        kernels: &'s Kernels,
        n_tokens: usize,
        pos0: usize,
        cost: Cost,
        record: impl Fn(&mut Graph<'_>) + 's,
        validate: impl Fn(&Gpu) -> Check + 's,
    ) -> GraphCase<'s> {
        GraphCase {
            gpu: self.gpu,
            kernels,
            step: &self.step,
            dummy: &self.dummy,
            n_tokens: n_tokens as u32,
            pos0: pos0 as u32,
            cost,
            record: Box::new(record),
            validate: Box::new(validate),
        }
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
            "{:?} (prefill cases: matvec with prefill_tok 8, and the tiled matmul)",
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

    /// Matrix-vector products (decode) for every weight type.
    fn matvec(&mut self, d: &ModelDims) {
        let s = self.s;
        let (h, i, v) = (d.hidden, d.intermediate, d.vocab);
        for (rows, cols) in [(h, h), (i, h), (h, i), (v, h)] {
            // [rows, cols] weights and [cols] x, made once for every type of the shape.
            let data: Shared<(Vec<f32>, Vec<f32>)> = Rc::default();
            for f in TYPES {
                let id = id("matvec", "decode", format!("{rows}x{cols}"), f.name());
                if !self.usable(&id, f, cols) {
                    continue;
                }
                let data = data.clone();
                self.defs.push(def(id, move || {
                    let (host, x) = data.get_or_init(|| {
                        let mut rng = Rng::new((rows * 31 + cols) as u64);
                        (rng.vec(rows * cols, 0.5), rng.vec(cols, 1.0))
                    });
                    // The LM head's reference runs on a sample of rows: the full one is seconds of CPU.
                    let keep = (rows > 16384).then(|| lm_head_rows(s.gpu, f, rows, cols));
                    let (w, seen) = s.matrix(f, rows, cols, host, keep.as_deref())?;
                    let cost = Cost {
                        bytes: (w.bytes() + (cols * 4 + rows * 4) as u64) as f64,
                        flops: 2.0 * (rows * cols) as f64,
                    };
                    let lin = Linear { w, b: None };
                    let (xb, yb) = (s.buf(x)?, s.zeros(rows)?);
                    let (x, y) = (x.clone(), yb.clone());
                    Ok(s.case(
                        &s.k_tok,
                        1,
                        0,
                        cost,
                        move |g| g.linear(&lin, &xb, &yb, false, LinearKind::Vec),
                        move |gpu| {
                            let all = read(gpu, &y, 0, rows)?;
                            let got: Vec<f32> = match &keep {
                                None => all,
                                Some(k) => k.iter().map(|&i| all[i]).collect(),
                            };
                            let want = r::linear(&seen, cols, &x, None, None);
                            check::linear(&got, &want, &seen, cols, &x)
                        },
                    ))
                }));
            }
        }
    }

    /// Prefill through both prefill shapes: matvec over blocks of 8 tokens, and the tiled matmul.
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
                        "matvec_tok8"
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
                        Ok(s.case(
                            k,
                            n,
                            0,
                            cost,
                            move |g| g.linear(&lin, &xb, &yb, false, LinearKind::Mat),
                            move |gpu| {
                                let mut got = Vec::with_capacity(sample.len() * rows);
                                for &t in sample.iter() {
                                    got.extend(read(gpu, &y, t * rows, rows)?);
                                }
                                let want = r::linear(&seen, cols, &xs, None, None);
                                check::linear(&got, &want, &seen, cols, &xs)
                            },
                        ))
                    }));
                }
            }
        }
    }

    /// Decode attention (one query at position ctx - 1) over a cache of ctx keys.
    fn attention(&mut self, d: &ModelDims, ctxs: &[usize]) {
        let s = self.s;
        let (nh, nkv, hd) = (d.n_heads, d.n_kv_heads, d.head_dim);
        let (qd, kvd) = (nh * hd, nkv * hd);
        for &ctx in ctxs {
            let id = id(
                "attention",
                "decode",
                format!("ctx={ctx} {nh}/{nkv} heads x {hd}"),
                "F32",
            );
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(ctx as u64 + 4);
                let q = rng.vec(qd, 1.0); // [n_heads * head_dim]
                let kc = rng.vec(ctx * kvd, 1.0); // [ctx, n_kv_heads * head_dim]
                let vc = rng.vec(ctx * kvd, 1.0); // [ctx, n_kv_heads * head_dim]
                let (qb, kb, vb, out) = (s.buf(&q)?, s.buf(&kc)?, s.buf(&vc)?, s.zeros(qd)?);
                let o = out.clone();
                let cost = Cost {
                    bytes: ((2 * ctx * kvd + 2 * qd) * 4) as f64,
                    flops: (nh * ctx * hd * 4) as f64,
                };
                Ok(s.case(
                    &s.k_tok,
                    1,
                    ctx - 1,
                    cost,
                    move |g| g.attention(&qb, &kb, &vb, &out, nh, nkv, hd),
                    move |gpu| {
                        let want = r::attention(&q, &kc, &vc, nh, nkv, hd, ctx - 1);
                        check::close(&read(gpu, &o, 0, qd)?, &want, 0.0, 1e-5)
                    },
                ))
            }));
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
                Ok(s.case(
                    &s.k_tok,
                    n,
                    0,
                    cost,
                    move |g| g.rms_norm(&xb, &wb, &yb, h, eps, false),
                    move |gpu| {
                        let want = r::rms_norm(&x, &w, eps);
                        check::close(&read(gpu, &y, 0, n * h)?, &want, 1e-5, 0.0)
                    },
                ))
            }));
        }
    }

    /// rope_q on 1 and `prefill` tokens, and store_kv (rotate k, append k and v to the cache) on 1.
    fn rope(&mut self, d: &ModelDims) {
        let s = self.s;
        let (nh, nkv, hd, theta) = (d.n_heads, d.n_kv_heads, d.head_dim, d.rope_theta);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let ctx = d.prefill + 64;
        for n in [1, d.prefill] {
            let pos0 = if n == 1 { 63 } else { 0 };
            let id = id("rope_q", "", format!("{n}x{nh}x{hd}"), "F32");
            self.defs.push(def(id, move || {
                let mut rng = Rng::new(3 + n as u64);
                let table = s.buf(&rope_table(ctx, hd, theta))?; // [ctx, head_dim / 2] x (cos, sin)
                let q = rng.vec(n * qd, 1.0); // [n, n_heads * head_dim]
                let qb = s.buf(&q)?;
                let qr = qb.clone();
                let cost = Cost {
                    bytes: ((2 * n * qd + n * hd) * 4) as f64,
                    flops: (n * qd * 3) as f64,
                };
                Ok(s.case(
                    &s.k_tok,
                    n,
                    pos0,
                    cost,
                    move |g| g.rope_q(&qb, &table, nh, hd),
                    move |gpu| {
                        let mut want = q.clone();
                        r::rope(&mut want, nh, hd, pos0, theta);
                        check::close(&read(gpu, &qr, 0, n * qd)?, &want, 0.0, 1e-5)
                    },
                ))
            }));
        }
        let (n, pos0) = (1, 63);
        let id = id("store_kv", "", format!("{n}x{nkv}x{hd}"), "F32");
        self.defs.push(def(id, move || {
            let mut rng = Rng::new(33);
            let table = s.buf(&rope_table(ctx, hd, theta))?;
            let (kv, vv) = (rng.vec(n * kvd, 1.0), rng.vec(n * kvd, 1.0)); // [n, n_kv_heads * head_dim]
            let (kb, vb) = (s.buf(&kv)?, s.buf(&vv)?);
            let (kc, vc) = (s.zeros(ctx * kvd)?, s.zeros(ctx * kvd)?); // [ctx, n_kv_heads * head_dim]
            let (kr, vr) = (kc.clone(), vc.clone());
            let cost = Cost {
                bytes: ((4 * n * kvd + n * hd) * 4) as f64,
                flops: (n * kvd * 3) as f64,
            };
            Ok(s.case(
                &s.k_tok,
                n,
                pos0,
                cost,
                move |g| g.store_kv(&kb, &vb, &kc, &vc, &table, nkv, hd),
                move |gpu| {
                    let mut want = kv.clone();
                    r::rope(&mut want, nkv, hd, pos0, theta);
                    let wk = check::close(&read(gpu, &kr, pos0 * kvd, n * kvd)?, &want, 0.0, 1e-5)?;
                    let wv = check::close(&read(gpu, &vr, pos0 * kvd, n * kvd)?, &vv, 0.0, 0.0)?;
                    Ok(wk.max(wv))
                },
            ))
        }));
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
                Ok(s.case(
                    &s.k_tok,
                    n,
                    0,
                    cost,
                    move |g| g.silu_mul(&gb, &ub, cols),
                    move |gpu| {
                        let want = r::silu_mul(&gate, &up);
                        check::close(&read(gpu, &gr, 0, n * cols)?, &want, 1e-5, 0.0)
                    },
                ))
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
                    Ok(s.case(
                        &s.k_tok,
                        n,
                        0,
                        cost,
                        move |g| g.embed(&table, &tb, &out),
                        move |gpu| {
                            let want = r::embed(&seen, cols, &tokens);
                            check::close(&read(gpu, &o, 0, n * cols)?, &want, 0.0, 0.0)
                        },
                    ))
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
            Ok(s.case(
                &s.k_tok,
                1,
                0,
                cost,
                move |g| g.argmax(&lb, n_valid, &out),
                move |gpu| {
                    let b = gpu
                        .read_buffer(&o, 0, 4)
                        .map_err(|e| format!("read back: {e}"))?;
                    let got = u32::from_le_bytes(b.try_into().expect("4 bytes"));
                    check::ids(&[got], &[r::argmax(&logits, n_valid)])
                },
            ))
        }));
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

/// A case as the graph records it.
struct GraphCase<'s> {
    gpu: &'s Gpu,
    kernels: &'s Kernels,
    step: &'s wgpu::Buffer,
    dummy: &'s wgpu::Buffer,
    n_tokens: u32,
    pos0: u32,
    cost: Cost,
    record: Box<dyn Fn(&mut Graph<'_>) + 's>,
    validate: Box<dyn Fn(&Gpu) -> Check + 's>,
}

/// A plan and the token count it is recorded for.
struct PlanRecording {
    plan: Plan,
    n_tokens: u32,
}

impl Recording for PlanRecording {
    fn record(&self, enc: &mut wgpu::CommandEncoder) {
        self.plan.record(enc, self.n_tokens);
    }
}

impl Workload for GraphCase<'_> {
    fn cost(&self) -> Cost {
        self.cost
    }

    fn repeated(&self, calls: usize) -> Result<Box<dyn Recording + '_>> {
        let step = StepUniform {
            n_tokens: self.n_tokens,
            pos0: self.pos0,
            _pad: [0; 2],
        };
        self.gpu
            .queue
            .write_buffer(self.step, 0, bytemuck::bytes_of(&step));
        let mut g = Graph::new(self.gpu, self.kernels, self.step, self.dummy);
        for _ in 0..calls {
            (self.record)(&mut g);
        }
        Ok(Box::new(PlanRecording {
            plan: g.finish(),
            n_tokens: self.n_tokens,
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
