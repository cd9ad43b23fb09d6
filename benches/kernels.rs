//! Kernel lab, llm.c style: every kernel family at the real Qwen2-0.5B shapes is first VALIDATED against
//! its plain-Rust reference (glint::reference, with the tolerances of tests/kernels.rs), then TIMED.
//!
//! ```text
//! cargo bench --bench kernels                    # thorough: adaptive repeats, 5 timed reps per case
//! cargo bench --bench kernels -- --quick         # each case once (CI smoke test); or GLINT_BENCH_QUICK=1
//! cargo bench --bench kernels -- --json          # JSON instead of the markdown table
//! cargo bench --bench kernels -- --filter matvec # only cases whose "kernel variant shape type" contains it
//! ```
//!
//! Kernels are driven exactly as the engine drives them: through `glint::graph::Graph`, whose `Plan`
//! records consecutive dispatches into one compute pass. Thorough mode times a plan holding the case's
//! call repeated N times (N chosen so one rep lasts ~50 ms): time per call = rep time / N, median of 5
//! reps after a warm-up. Cases slower than 0.5 s a call (prefill on a software rasteriser) are timed
//! as single calls, as many reps as fit in ~2 s. Quick mode runs each case once (prefill at 32 tokens,
//! attention at contexts 64 and 256) and reports the time of that validated, cold run.
//!
//! Validation covers every output, except the LM head shape (151936 rows: every 97th row and the rows
//! around each binding chunk's edges) and prefill (10 token rows, including the edges of the 8-token
//! blocks and the 32-token tiles): the full CPU references there take seconds to minutes.
//!
//! Timing: with TIMESTAMP_QUERY, the GPU's own clock. `Plan::record` opens its pass itself, so the
//! timestamps are written by two empty passes recorded just before and after the plan
//! (ComputePassTimestampWrites: beginning-of-pass on the first, end-of-pass on the second); the cost of
//! that empty bracket is measured and printed in the header (it is not subtracted). Without
//! TIMESTAMP_QUERY: wall clock from submit to the end of a blocking poll.
//!
//! GB/s counts the bytes a call must read and write at least once (weights, inputs, outputs); "% copy"
//! relates it to the device's copy bandwidth measured in the same run (a 64 MiB buffer-to-buffer copy,
//! counted as 64 MiB read + 64 MiB written).

use glint::bench::{fmt_load, load_average, Machine};
use glint::gpu::{Gpu, GpuOptions};
use glint::graph::{Graph, Heads, KvLayer, Linear, Plan, StepBuffers};
use glint::kernels::{Kernels, Shapes};
use glint::reference as r;
use glint::weights::{gpu_row_bytes, HostMatrix, Matrix, QuantType};
use serde_json::json;
use std::borrow::Cow;
use std::time::Instant;

const HIDDEN: usize = 896;
const INTER: usize = 4864;
const VOCAB: usize = 151936;
const N_VALID: usize = 151646;
const N_HEADS: usize = 14;
const N_KV: usize = 2;
const HEAD_DIM: usize = 64;
const THETA: f64 = 1e6;
const PREFILL: usize = 512;

/// Weight types of the matrix-vector and prefill cases, in table order.
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

struct Opts {
    quick: bool,
    json: bool,
    filter: Option<String>,
}

impl Opts {
    fn parse() -> Opts {
        let env_quick = std::env::var("GLINT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut o = Opts {
            quick: env_quick,
            json: false,
            filter: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--json" => o.json = true,
                "--filter" => o.filter = args.next(),
                "--help" | "-h" => {
                    println!("cargo bench --bench kernels [-- [--quick] [--json] [--filter TEXT]]");
                    std::process::exit(0);
                }
                // `cargo bench` passes --bench; unknown flags are ignored like libtest's.
                _ => {}
            }
        }
        o
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

/// How a case is timed.
enum Clock {
    Timestamps {
        set: wgpu::QuerySet,
        resolve: wgpu::Buffer,
        read: wgpu::Buffer,
        period_ns: f64,
    },
    Wall,
}

/// One row of the table.
struct Row {
    kernel: String,
    variant: String,
    shape: String,
    ty: String,
    /// Median time per call, ns.
    ns: f64,
    /// Standard deviation of the per-call time over the reps, ns.
    sd_ns: f64,
    calls: usize,
    reps: usize,
    bytes: f64,
    flops: f64,
    check: String,
    ok: bool,
}

struct Lab {
    gpu: Gpu,
    /// The device's kernel shapes, with prefill over blocks of 8 tokens, and with the tiled matmul.
    k_tok: Kernels,
    k_tiled: Kernels,
    step: StepBuffers,
    dummy: wgpu::Buffer,
    clock: Clock,
    quick: bool,
    filter: Option<String>,
    copy_gbs: f64,
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// What a case reports besides its time.
struct Meta {
    kernel: &'static str,
    variant: String,
    shape: String,
    ty: String,
    n_tokens: u32,
    pos0: u32,
    bytes: f64,
    flops: f64,
}

/// Worst error as a fraction of the tolerance, or the first output out of tolerance.
type Check = Result<f64, String>;

fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    (median, sd)
}

/// |gpu - ref| <= 1e-5 * sum_k |w_k x_k| + 1e-6 for every output (tests/kernels.rs), on rows
/// [n_tok, rows] of outputs computed from the token rows `x` [n_tok, cols].
fn check_linear(got: &[f32], want: &[f32], w: &[f32], cols: usize, x: &[f32]) -> Check {
    let rows = w.len() / cols;
    let mut worst = 0f64;
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        let (t, n) = (i / rows, i % rows);
        let (wr, xr) = (&w[n * cols..(n + 1) * cols], &x[t * cols..(t + 1) * cols]);
        let l1: f32 = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
        let tol = 1e-5 * l1 + 1e-6;
        let err = (g - e).abs();
        if err.is_nan() || err > tol {
            return Err(format!(
                "output {i}: gpu {g} vs reference {e} (tolerance {tol})"
            ));
        }
        worst = worst.max((err / tol) as f64);
    }
    Ok(worst)
}

/// |gpu - ref| <= rel * (1 + |ref|) elementwise (rel 0: absolute bound `abs`).
fn check_close(got: &[f32], want: &[f32], rel: f32, abs: f32) -> Check {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    let mut worst = 0f64;
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * (1.0 + e.abs());
        let err = (g - e).abs();
        if err.is_nan() || err > tol {
            return Err(format!(
                "output {i}: gpu {g} vs reference {e} (tolerance {tol})"
            ));
        }
        worst = worst.max((err / tol) as f64);
    }
    Ok(worst)
}

impl Lab {
    fn buf(&self, v: &[f32]) -> wgpu::Buffer {
        self.gpu
            .storage_init("bench", bytemuck::cast_slice(v))
            .expect("buffer")
    }
    fn zeros(&self, n: usize) -> wgpu::Buffer {
        self.gpu.storage("bench", (n * 4) as u64).expect("buffer")
    }
    fn read(&self, b: &wgpu::Buffer, offset: usize, n: usize) -> Vec<f32> {
        self.gpu.read_f32(b, offset as u64, n).expect("read back")
    }

    fn wanted(&self, m: &Meta) -> bool {
        match &self.filter {
            None => true,
            Some(f) => {
                format!("{} {} {} {}", m.kernel, m.variant, m.shape, m.ty).contains(f.as_str())
            }
        }
    }

    /// Nanoseconds of one run of `plan` (already encoded work excluded from the wall clock).
    fn time_plan(
        &self,
        plan: Option<&Plan>,
        n_tokens: u32,
        copy: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    ) -> f64 {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        let bracket = |enc: &mut wgpu::CommandEncoder, begin: Option<u32>, end: Option<u32>| {
            if let Clock::Timestamps { set, .. } = &self.clock {
                let _ = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("timestamp"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: begin,
                        end_of_pass_write_index: end,
                    }),
                });
            }
        };
        bracket(&mut enc, Some(0), None);
        if let Some(p) = plan {
            p.record(
                &mut enc,
                glint::graph::CallShape::new(n_tokens as usize, n_tokens as usize),
            );
        }
        if let Some((src, dst)) = copy {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, src.size());
        }
        bracket(&mut enc, None, Some(1));
        match &self.clock {
            Clock::Timestamps {
                set,
                resolve,
                read,
                period_ns,
            } => {
                enc.resolve_query_set(set, 0..2, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
                self.gpu.queue.submit([enc.finish()]);
                let b = self.gpu.read_mapped(read, 16).expect("timestamps");
                let t0 = u64::from_le_bytes(b[0..8].try_into().unwrap());
                let t1 = u64::from_le_bytes(b[8..16].try_into().unwrap());
                t1.saturating_sub(t0) as f64 * period_ns
            }
            Clock::Wall => {
                let cmd = enc.finish();
                let t = Instant::now();
                self.gpu.queue.submit([cmd]);
                self.gpu
                    .device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .expect("poll");
                t.elapsed().as_nanos() as f64
            }
        }
    }

    /// One sequence (slot 0) of `n_tokens` tokens at positions pos0 .., every token an output.
    fn write_step(&self, n_tokens: u32, pos0: u32) {
        let meta: Vec<[u32; 2]> = (0..n_tokens).map(|t| [0, pos0 + t]).collect();
        let out_rows: Vec<u32> = (0..n_tokens).collect();
        self.step
            .write(&self.gpu.queue, &meta, &out_rows, 1)
            .expect("step");
    }

    fn plan(&self, k: &Kernels, times: usize, record: &dyn Fn(&mut Graph<'_>)) -> Plan {
        let mut g = Graph::new(&self.gpu, k, &self.step, &self.dummy);
        for _ in 0..times {
            record(&mut g);
        }
        g.finish().expect("plan")
    }

    /// Run the case once and validate it, then time it (quick mode: the validated run is the timing).
    fn case(
        &self,
        m: Meta,
        k: &Kernels,
        record: &dyn Fn(&mut Graph<'_>),
        validate: &dyn Fn(&Lab) -> Check,
    ) -> Row {
        self.write_step(m.n_tokens, m.pos0);
        let single = self.plan(k, 1, record);
        let first = self.time_plan(Some(&single), m.n_tokens, None);
        let check = validate(self);
        let (ns, sd_ns, calls, reps) = if self.quick {
            (first, 0.0, 1, 1)
        } else if first > 0.5e9 {
            // A slow case (prefill on a software device): the validated run was the warm-up; time
            // single calls within a ~2 s budget.
            let reps = ((2e9 / first) as usize).clamp(1, 5);
            let per_call: Vec<f64> = (0..reps)
                .map(|_| self.time_plan(Some(&single), m.n_tokens, None))
                .collect();
            let (med, sd) = stats(&per_call);
            (med, sd, 1, reps)
        } else {
            // Calibrate on a warm run, then repeat the call in one pass so a rep lasts ~50 ms.
            let warm = self.time_plan(Some(&single), m.n_tokens, None);
            let calls = ((50e6 / warm.max(1.0)).ceil() as usize).clamp(1, 500);
            let plan = self.plan(k, calls, record);
            self.time_plan(Some(&plan), m.n_tokens, None); // warm-up
            let reps = 5;
            let per_call: Vec<f64> = (0..reps)
                .map(|_| self.time_plan(Some(&plan), m.n_tokens, None) / calls as f64)
                .collect();
            let (med, sd) = stats(&per_call);
            (med, sd, calls, reps)
        };
        let (check, ok) = match check {
            Ok(w) => (format!("ok {w:.2}"), true),
            Err(e) => (format!("FAIL: {e}"), false),
        };
        if !ok {
            eprintln!(
                "kernel lab: {} {} {} {}: {check}",
                m.kernel, m.variant, m.shape, m.ty
            );
        }
        Row {
            kernel: m.kernel.to_string(),
            variant: m.variant,
            shape: m.shape,
            ty: m.ty,
            ns,
            sd_ns,
            calls,
            reps,
            bytes: m.bytes,
            flops: m.flops,
            check,
            ok,
        }
    }

    fn note(&mut self, s: String) {
        if !self.notes.contains(&s) {
            eprintln!("kernel lab: {s}");
            self.notes.push(s);
        }
    }

    /// A weight matrix in format `f` from f32 values, with the values the GPU layout decodes to for
    /// the rows `keep` (all rows when `None`).
    fn matrix(
        &self,
        f: QuantType,
        rows: usize,
        cols: usize,
        host: &[f32],
        keep: Option<&[usize]>,
    ) -> (Matrix, Vec<f32>) {
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
        (Matrix::upload(&self.gpu, &hm).expect("upload"), seen)
    }

    /// Matrix-vector products (decode) for every weight type at the real shapes.
    fn matvec(&mut self) {
        let shapes = [
            (HIDDEN, HIDDEN),
            (INTER, HIDDEN),
            (HIDDEN, INTER),
            (VOCAB, HIDDEN),
        ];
        for (rows, cols) in shapes {
            let mut rng = Rng::new((rows * 31 + cols) as u64);
            let host = rng.vec(rows * cols, 0.5);
            let x = rng.vec(cols, 1.0);
            for f in TYPES {
                let meta = Meta {
                    kernel: "matvec",
                    variant: "decode".into(),
                    shape: format!("{rows}x{cols}"),
                    ty: f.name().into(),
                    n_tokens: 1,
                    pos0: 0,
                    bytes: 0.0,
                    flops: 2.0 * (rows * cols) as f64,
                };
                if !self.wanted(&meta) || !self.usable(f, cols) {
                    continue;
                }
                // The LM head's reference is validated on a sample of rows (every 97th, the first and
                // last, and both sides of each binding chunk): the full one is seconds of CPU per type.
                let keep: Option<Vec<usize>> = (rows > 16384).then(|| {
                    let mut k: Vec<usize> = (0..rows).step_by(97).chain([rows - 1]).collect();
                    let max_rows = (self.gpu.caps.max_storage_binding as usize
                        / gpu_row_bytes(f, cols))
                    .max(1);
                    let per_chunk = rows.div_ceil(rows.div_ceil(max_rows));
                    for b in (per_chunk..rows).step_by(per_chunk) {
                        k.extend([b - 1, b]);
                    }
                    k.sort();
                    k.dedup();
                    k
                });
                let (w, seen) = self.matrix(f, rows, cols, &host, keep.as_deref());
                let meta = Meta {
                    bytes: (w.bytes() + (cols * 4 + rows * 4) as u64) as f64,
                    ..meta
                };
                let lin = Linear { w, b: None };
                let (xb, yb) = (self.buf(&x), self.zeros(rows));
                let row = self.case(meta, &self.k_tok, &|g| g.linear(&lin, &xb, &yb), &|lab| {
                    let all = lab.read(&yb, 0, rows);
                    let got: Vec<f32> = match &keep {
                        None => all,
                        Some(k) => k.iter().map(|&i| all[i]).collect(),
                    };
                    let want = r::linear(&seen, cols, &x, None, None);
                    check_linear(&got, &want, &seen, cols, &x)
                });
                self.rows.push(row);
            }
        }
    }

    /// Whether the type has kernels and fits the row length; notes why not otherwise.
    fn usable(&mut self, f: QuantType, cols: usize) -> bool {
        if !self.k_tok.supports(f) {
            self.note(format!(
                "{}: no GPU kernel yet (Kernels::supports), skipped",
                f.name()
            ));
            return false;
        }
        if !cols.is_multiple_of(f.block_size()) {
            self.note(format!(
                "{}: rows of {} elements are not a multiple of its block of {}, so only shapes with \
                 cols % {} == 0 are run",
                f.name(),
                cols,
                f.block_size(),
                f.block_size()
            ));
            return false;
        }
        true
    }

    /// Prefill at 512 tokens through both prefill shapes: matvec over blocks of 8 tokens, tiled matmul.
    fn prefill(&mut self) {
        // Quick mode: one 32-token tile (the tiled matmul takes ~15 s at 512 tokens on lavapipe).
        let n = if self.quick { 32 } else { PREFILL };
        // Token rows validated against the reference (a full 512-token reference is minutes of CPU):
        // first and last rows and both sides of the 8-token blocks and the 32-token tiles.
        let sample: Vec<usize> = [0, 1, 7, 8, 31, 32, 255, 256, 300, 511]
            .into_iter()
            .filter(|&t| t < n)
            .collect();
        for (rows, cols) in [(HIDDEN, HIDDEN), (INTER, HIDDEN)] {
            let mut rng = Rng::new((rows * 37 + cols) as u64);
            let host = rng.vec(rows * cols, 0.5);
            let x = rng.vec(n * cols, 1.0);
            let x_sample: Vec<f32> = sample
                .iter()
                .flat_map(|&t| x[t * cols..(t + 1) * cols].iter().copied())
                .collect();
            for f in TYPES {
                let meta = |tiled: bool| Meta {
                    kernel: "prefill",
                    variant: if tiled {
                        "matmul (tiled)".into()
                    } else {
                        "matvec_tok8".into()
                    },
                    shape: format!("{rows}x{cols} n={n}"),
                    ty: f.name().into(),
                    n_tokens: n as u32,
                    pos0: 0,
                    bytes: 0.0,
                    flops: 2.0 * (rows * cols * n) as f64,
                };
                let variants: Vec<bool> = [false, true]
                    .into_iter()
                    .filter(|&t| self.wanted(&meta(t)))
                    .collect();
                if variants.is_empty() || !self.usable(f, cols) {
                    continue;
                }
                let (w, seen) = self.matrix(f, rows, cols, &host, None);
                let bytes = (w.bytes() + (n * cols * 4 + n * rows * 4) as u64) as f64;
                let lin = Linear { w, b: None };
                let (xb, yb) = (self.buf(&x), self.zeros(n * rows));
                for tiled in variants {
                    let k = if tiled { &self.k_tiled } else { &self.k_tok };
                    let row = self.case(
                        Meta {
                            bytes,
                            ..meta(tiled)
                        },
                        k,
                        &|g| g.linear(&lin, &xb, &yb),
                        &|lab| {
                            let got: Vec<f32> = sample
                                .iter()
                                .flat_map(|&t| lab.read(&yb, t * rows, rows))
                                .collect();
                            let want = r::linear(&seen, cols, &x_sample, None, None);
                            check_linear(&got, &want, &seen, cols, &x_sample)
                        },
                    );
                    self.rows.push(row);
                }
            }
        }
    }

    /// Decode attention (one query at position ctx - 1) over a cache of ctx keys.
    fn attention(&mut self) {
        let ctxs: &[usize] = if self.quick {
            &[64, 256]
        } else {
            &[128, 1024, 4096]
        };
        let heads = Heads {
            n_heads: N_HEADS,
            n_kv_heads: N_KV,
            head_dim: HEAD_DIM,
        };
        for &ctx in ctxs {
            let (qd, kvd) = (N_HEADS * HEAD_DIM, N_KV * HEAD_DIM);
            let meta = Meta {
                kernel: "attention",
                variant: "decode".into(),
                shape: format!("ctx={ctx} {N_HEADS}/{N_KV} heads x {HEAD_DIM}"),
                ty: "F32".into(),
                n_tokens: 1,
                pos0: (ctx - 1) as u32,
                bytes: ((2 * ctx * kvd + 2 * qd) * 4) as f64,
                flops: (N_HEADS * ctx * HEAD_DIM * 4) as f64,
            };
            if !self.wanted(&meta) {
                continue;
            }
            let mut rng = Rng::new(ctx as u64 + 4);
            let q = rng.vec(qd, 1.0);
            let kc = rng.vec(ctx * kvd, 1.0);
            let vc = rng.vec(ctx * kvd, 1.0);
            let (qb, out) = (self.buf(&q), self.zeros(qd));
            let part = self.zeros(N_HEADS * 16 * (HEAD_DIM + 2));
            let cache = KvLayer {
                k: self.buf(&kc),
                v: self.buf(&vc),
                slot_rows: ctx,
                kv_type: glint::kernels::KvType::F32,
            };
            let row = self.case(
                meta,
                &self.k_tok,
                &|g| g.attention(&qb, qd, &cache, &out, &part, heads),
                &|lab| {
                    let want = r::attention(&q, &kc, &vc, N_HEADS, N_KV, HEAD_DIM, ctx - 1);
                    check_close(&lab.read(&out, 0, qd), &want, 0.0, 1e-5)
                },
            );
            self.rows.push(row);
        }
    }

    fn rmsnorm(&mut self) {
        for n in [1, PREFILL] {
            let meta = Meta {
                kernel: "rmsnorm",
                variant: String::new(),
                shape: format!("{n}x{HIDDEN}"),
                ty: "F32".into(),
                n_tokens: n as u32,
                pos0: 0,
                bytes: ((2 * n * HIDDEN + HIDDEN) * 4) as f64,
                flops: (4 * n * HIDDEN) as f64,
            };
            if !self.wanted(&meta) {
                continue;
            }
            let mut rng = Rng::new(2 + n as u64);
            let x = rng.vec(n * HIDDEN, 3.0);
            let w = rng.vec(HIDDEN, 1.0);
            let (xb, wb, yb) = (self.buf(&x), self.buf(&w), self.zeros(n * HIDDEN));
            let row = self.case(
                meta,
                &self.k_tok,
                &|g| g.rms_norm(&xb, &wb, &yb, HIDDEN, 1e-6),
                &|lab| {
                    let want = r::rms_norm(&x, &w, 1e-6);
                    check_close(&lab.read(&yb, 0, n * HIDDEN), &want, 1e-5, 0.0)
                },
            );
            self.rows.push(row);
        }
    }

    /// rope_store (RoPE of q in place and of k, k and v appended to the cache) on 1 and 512 tokens.
    fn rope(&mut self) {
        let heads = Heads {
            n_heads: N_HEADS,
            n_kv_heads: N_KV,
            head_dim: HEAD_DIM,
        };
        let (qd, kvd, width) = (heads.q_dim(), heads.kv_dim(), heads.qkv_dim());
        let ctx = PREFILL + 64;
        for n in [1, PREFILL] {
            let pos0 = if n == 1 { 63 } else { 0 };
            let meta = Meta {
                kernel: "rope_store",
                variant: String::new(),
                shape: format!("{n}x({N_HEADS}+{N_KV})x{HEAD_DIM}"),
                ty: "F32".into(),
                n_tokens: n as u32,
                pos0: pos0 as u32,
                bytes: ((n * (2 * qd + 4 * kvd) + n * HEAD_DIM) * 4) as f64,
                flops: (n * (qd + kvd) * 3) as f64,
            };
            if !self.wanted(&meta) {
                continue;
            }
            let mut rng = Rng::new(3 + n as u64);
            let table = self.buf(&glint::graph::rope_table(ctx, HEAD_DIM, THETA));
            let qkv = rng.vec(n * width, 1.0);
            let qkv_b = self.buf(&qkv);
            let cache = KvLayer {
                k: self.zeros(ctx * kvd),
                v: self.zeros(ctx * kvd),
                slot_rows: ctx,
                kv_type: glint::kernels::KvType::F32,
            };
            let row = self.case(
                meta,
                &self.k_tok,
                &|g| g.rope_store(&qkv_b, None, 0.0, &table, &cache, heads),
                &|lab| {
                    let part = |off: usize, w: usize| -> Vec<f32> {
                        qkv.chunks(width)
                            .flat_map(|r| r[off..off + w].to_vec())
                            .collect()
                    };
                    let (mut q, mut k, v) = (part(0, qd), part(qd, kvd), part(qd + kvd, kvd));
                    r::rope(&mut q, N_HEADS, HEAD_DIM, pos0, THETA);
                    r::rope(&mut k, N_KV, HEAD_DIM, pos0, THETA);
                    let got = lab.read(&qkv_b, 0, n * width);
                    let got_q: Vec<f32> =
                        got.chunks(width).flat_map(|r| r[..qd].to_vec()).collect();
                    let wq = check_close(&got_q, &q, 0.0, 1e-5)?;
                    let wk = check_close(&lab.read(&cache.k, pos0 * kvd, n * kvd), &k, 0.0, 1e-5)?;
                    let wv = check_close(&lab.read(&cache.v, pos0 * kvd, n * kvd), &v, 0.0, 0.0)?;
                    Ok(wq.max(wk).max(wv))
                },
            );
            self.rows.push(row);
        }
    }

    /// The greedy argmax over the vocabulary (one workgroup), as at the end of every decode step.
    fn argmax(&mut self) {
        let meta = Meta {
            kernel: "argmax",
            variant: String::new(),
            shape: format!("{VOCAB} (valid {N_VALID})"),
            ty: "F32".into(),
            n_tokens: 1,
            pos0: 0,
            bytes: (N_VALID * 4 + 4) as f64,
            flops: N_VALID as f64,
        };
        if !self.wanted(&meta) {
            return;
        }
        let mut rng = Rng::new(6);
        let logits = rng.vec(VOCAB, 10.0);
        let (lb, out) = (
            self.buf(&logits),
            self.gpu.storage("out", 4).expect("buffer"),
        );
        let row = self.case(
            meta,
            &self.k_tok,
            &|g| g.argmax(&lb, VOCAB, N_VALID, &out),
            &|lab| {
                let b = lab.gpu.read_buffer(&out, 0, 4).expect("read back");
                let got = u32::from_le_bytes(b.try_into().unwrap());
                let want = r::argmax(&logits, N_VALID);
                if got == want {
                    Ok(0.0)
                } else {
                    Err(format!("gpu {got} vs reference {want}"))
                }
            },
        );
        self.rows.push(row);
    }
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let width: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(width[c] - cell.chars().count());
            s += &if right[c] {
                format!(" {pad}{cell} |")
            } else {
                format!(" {cell}{pad} |")
            };
        }
        s + "\n"
    };
    let mut out = line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    out += "|";
    for (c, w) in width.iter().enumerate() {
        out += &if right[c] {
            format!(" {}: |", "-".repeat(w - 1))
        } else {
            format!(" {} |", "-".repeat(*w))
        };
    }
    out += "\n";
    for r in rows {
        out += &line(r);
    }
    out
}

fn main() {
    let opts = Opts::parse();
    let t_start = Instant::now();
    let machine = Machine::capture();
    let gpu = match Gpu::new(&GpuOptions::default()) {
        Ok(g) => g,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            eprintln!("kernel lab: no GPU adapter ({e})");
            if ci {
                std::process::exit(1);
            }
            println!("SKIPPED: no GPU adapter ({e})");
            return;
        }
    };
    let t_pipelines = Instant::now();
    let mut shapes = Shapes::for_device(&gpu.caps);
    let default_shapes = shapes.clone();
    shapes.tiled_from = None;
    let k_tok = Kernels::new(&gpu, shapes.clone()).expect("pipelines");
    shapes.tiled_from = Some(2);
    let k_tiled = Kernels::new(&gpu, shapes).expect("pipelines");
    let pipelines_ms = t_pipelines.elapsed().as_secs_f64() * 1e3;

    let clock = if gpu.caps.timestamps {
        Clock::Timestamps {
            set: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read: gpu.readback("timestamps", 16),
            period_ns: gpu.queue.get_timestamp_period() as f64,
        }
    } else {
        Clock::Wall
    };
    let step = StepBuffers::new(&gpu, PREFILL, PREFILL).expect("buffers");
    let dummy = gpu.storage("dummy", 16).expect("buffer");
    let mut lab = Lab {
        gpu,
        k_tok,
        k_tiled,
        step,
        dummy,
        clock,
        quick: opts.quick,
        filter: opts.filter.clone(),
        copy_gbs: 0.0,
        rows: vec![],
        notes: vec![],
    };

    // The device's copy bandwidth, and the cost of the empty timing bracket.
    let reps = if opts.quick { 1 } else { 5 };
    let copy_bytes = 64u64 << 20;
    let src = lab.gpu.storage("copy src", copy_bytes).expect("buffer");
    let dst = lab.gpu.storage("copy dst", copy_bytes).expect("buffer");
    lab.gpu
        .queue
        .write_buffer(&src, 0, &vec![1u8; copy_bytes as usize]);
    lab.time_plan(None, 1, Some((&src, &dst))); // warm-up: first touch of the pages
    let copy: Vec<f64> = (0..reps)
        .map(|_| lab.time_plan(None, 1, Some((&src, &dst))))
        .collect();
    let (copy_ns, copy_sd) = stats(&copy);
    lab.copy_gbs = 2.0 * copy_bytes as f64 / copy_ns;
    drop((src, dst));
    let empty: Vec<f64> = (0..reps.max(3))
        .map(|_| lab.time_plan(None, 1, None))
        .collect();
    let (empty_ns, _) = stats(&empty);

    lab.matvec();
    lab.prefill();
    lab.attention();
    lab.rmsnorm();
    lab.rope();
    lab.argmax();

    let info = lab.gpu.info.clone();
    let clock_name = match lab.clock {
        Clock::Timestamps { period_ns, .. } => format!(
            "GPU timestamps (TIMESTAMP_QUERY, {period_ns} ns/tick), empty-pass bracket around the plan's pass"
        ),
        Clock::Wall => "wall clock from submit to the end of a blocking poll (no TIMESTAMP_QUERY)".into(),
    };
    let load_end = load_average();
    let failed = lab.rows.iter().filter(|r| !r.ok).count();
    let elapsed_s = t_start.elapsed().as_secs_f64();
    let mode = if opts.quick {
        "quick: each case run once (prefill at 32 tokens, attention at ctx 64 and 256), the validated run timed (cold: includes first-use costs)"
    } else {
        "thorough: per case a plan of N calls in one pass (~50 ms a rep), 1 warm-up + 5 timed reps, median per call (cases over 0.5 s: single calls, reps within ~2 s)"
    };

    if opts.json {
        let rows: Vec<_> = lab
            .rows
            .iter()
            .map(|r| {
                json!({
                    "kernel": r.kernel, "variant": r.variant, "shape": r.shape, "type": r.ty,
                    "ns_per_call": r.ns, "sd_ns": r.sd_ns, "calls_per_rep": r.calls, "reps": r.reps,
                    "bytes": r.bytes, "flops": r.flops,
                    "gb_s": r.bytes / r.ns, "copy_fraction": r.bytes / r.ns / lab.copy_gbs,
                    "gflop_s": r.flops / r.ns, "check": r.check, "ok": r.ok,
                })
            })
            .collect();
        let v = json!({
            "device": info.name, "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "driver": format!("{} {}", info.driver, info.driver_info),
            "machine": serde_json::to_value(&machine).unwrap(),
            "load_avg_end": load_end,
            "mode": if opts.quick { "quick" } else { "thorough" },
            "clock": clock_name,
            "shapes": format!("{default_shapes:?}"),
            "pipelines_ms": pipelines_ms,
            "copy": {"bytes": copy_bytes, "ns": copy_ns, "sd_ns": copy_sd, "gb_s": lab.copy_gbs},
            "empty_bracket_ns": empty_ns,
            "notes": lab.notes,
            "elapsed_s": elapsed_s,
            "failed": failed,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    } else {
        let mut out = String::new();
        out += &format!(
            "Kernel lab: {} ({:?}, {:?}, {} {})\n\n",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        );
        out += &format!("- date: {}\n", machine.describe());
        out += &format!("- load average at end: {}\n", fmt_load(load_end));
        out += &format!("- mode: {mode}\n");
        out += &format!(
            "- timing: {clock_name}; empty bracket {}\n",
            fmt_time(empty_ns)
        );
        out += &format!(
            "- copy bandwidth: {:.2} GB/s (64 MiB buffer-to-buffer copy, read + write, {} ± {})\n",
            lab.copy_gbs,
            fmt_time(copy_ns),
            fmt_time(copy_sd)
        );
        out += &format!("- device kernel shapes: {default_shapes:?}\n");
        for n in &lab.notes {
            out += &format!("- note: {n}\n");
        }
        out += "\n";
        let rows: Vec<Vec<String>> = lab
            .rows
            .iter()
            .map(|r| {
                let gbs = r.bytes / r.ns;
                vec![
                    r.kernel.clone(),
                    r.variant.clone(),
                    r.shape.clone(),
                    r.ty.clone(),
                    fmt_time(r.ns),
                    if r.reps > 1 {
                        format!("±{:.1}%", 100.0 * r.sd_ns / r.ns)
                    } else {
                        "-".into()
                    },
                    format!("{}x{}", r.calls, r.reps),
                    format!("{gbs:.2}"),
                    format!("{:.0}%", 100.0 * gbs / lab.copy_gbs),
                    format!("{:.2}", r.flops / r.ns),
                    r.check.clone(),
                ]
            })
            .collect();
        out += &table(
            &[
                "kernel",
                "variant",
                "shape",
                "type",
                "time/call",
                "sd",
                "calls x reps",
                "GB/s",
                "% copy",
                "GFLOP/s",
                "check",
            ],
            &[
                false, false, false, false, true, true, true, true, true, true, false,
            ],
            &rows,
        );
        out += &format!(
            "\n{} cases, {} failed validation; pipelines built in {:.0} ms; total {:.1} s. \"check\": worst \
             error as a fraction of the tolerance of tests/kernels.rs.\n",
            lab.rows.len(),
            failed,
            pipelines_ms,
            elapsed_s
        );
        print!("{out}");
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
