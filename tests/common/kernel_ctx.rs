//! A GPU context for driving single kernels through `Graph`, as the model does.

use super::{run, Rng};
use glint::graph::{Graph, Linear, StepBuffers};
use glint::kernels::{Kernels, Shapes};
use glint::quant::QuantType;
use glint::reference as r;
use glint::weights::{gpu_row_bytes, HostLayout, HostMatrix, Matrix};
use std::borrow::Cow;

pub struct Ctx {
    pub gpu: glint::gpu::Gpu,
    pub k: Kernels,
    pub step: StepBuffers,
    pub dummy: wgpu::Buffer,
}

/// A context with the device's kernel shapes.
pub fn ctx() -> Option<Ctx> {
    ctx_with(|_| {})
}

/// A context whose kernel shapes are the device's, adjusted by `f` (to test every variant).
pub fn ctx_with(f: impl FnOnce(&mut Shapes)) -> Option<Ctx> {
    let gpu = super::gpu()?;
    let mut shapes = Shapes::for_device(&gpu.caps);
    f(&mut shapes);
    let k = Kernels::new(&gpu, shapes).expect("pipelines");
    let step = StepBuffers::new(&gpu, 512, 512).unwrap();
    let dummy = gpu.storage("dummy", 16).unwrap();
    Some(Ctx {
        gpu,
        k,
        step,
        dummy,
    })
}

impl Ctx {
    pub fn buf(&self, v: &[f32]) -> wgpu::Buffer {
        self.gpu.storage_init("t", bytemuck::cast_slice(v)).unwrap()
    }
    pub fn read(&self, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
        self.gpu.read_f32(b, 0, n).unwrap()
    }
    pub fn graph(&self) -> Graph<'_> {
        Graph::new(&self.gpu, &self.k, &self.step, &self.dummy)
    }
}

impl Ctx {
    pub fn upload(
        &self,
        f: QuantType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
        chunk: u64,
    ) -> Matrix {
        let hm = HostMatrix {
            name: "w".into(),
            format: f,
            rows,
            cols,
            data: Cow::Owned(bytes),
            layout: HostLayout::Gpu,
        };
        Matrix::upload_chunked(&self.gpu, &hm, chunk).unwrap()
    }
    /// A random matrix quantized to `f` and repacked, uploaded in chunks of at most `chunk` bytes; with
    /// the f32 values the GPU layout decodes to.
    pub fn matrix(
        &self,
        rng: &mut Rng,
        f: QuantType,
        rows: usize,
        cols: usize,
        chunk: u64,
    ) -> (Matrix, Vec<f32>) {
        let host = rng.vec(rows * cols, 0.5);
        let words = glint::quant::repack_for_gpu(f, &glint::quant::quantize(f, &host));
        let bytes: Vec<u8> = bytemuck::cast_slice(&words).to_vec();
        let seen = r::decode_weights(f, &bytes);
        (self.upload(f, rows, cols, bytes, chunk), seen)
    }
}

/// |gpu - ref| <= 1e-5 * sum_k |w_k x_k| + 1e-6 for output (token t, row n).
pub fn check_output(
    name: &str,
    t: usize,
    n: usize,
    got: f32,
    want: f32,
    w_row: &[f32],
    x_row: &[f32],
) {
    let l1: f32 = w_row.iter().zip(x_row).map(|(a, b)| (a * b).abs()).sum();
    let tol = 1e-5 * l1 + 1e-6;
    assert!(
        (got - want).abs() <= tol,
        "{name}: token {t} row {n}: gpu {got} vs reference {want} (tolerance {tol})"
    );
}

pub fn check_linear(name: &str, got: &[f32], want: &[f32], w: &[f32], cols: usize, x: &[f32]) {
    let rows = w.len() / cols;
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        let (t, n) = (i / rows, i % rows);
        let (wr, xr) = (&w[n * cols..(n + 1) * cols], &x[t * cols..(t + 1) * cols]);
        check_output(name, t, n, *g, *e, wr, xr);
    }
}

/// y = y0 + bias + W x through `Graph::linear_residual` (the fused bias and residual accumulate), against
/// the reference. Which kernel runs follows from `n_tokens` and the context's shapes.
pub fn linear_case(c: &Ctx, f: QuantType, rows: usize, cols: usize, n_tokens: usize, split: bool) {
    let mut rng = Rng::new((rows * 31 + cols * 7 + n_tokens) as u64 ^ f.ggml_id() as u64);
    let chunk = if split {
        (rows / 3 + 1) as u64 * gpu_row_bytes(f, cols) as u64
    } else {
        u64::MAX
    };
    let (m, w) = c.matrix(&mut rng, f, rows, cols, chunk);
    if split {
        assert_eq!(m.chunks.len(), 3);
    }
    let x = rng.vec(n_tokens * cols, 1.0);
    let bias = rng.vec(rows, 1.0);
    let y0 = rng.vec(n_tokens * rows, 1.0);
    let lin = Linear {
        w: m,
        b: Some(c.buf(&bias)),
    };
    let (xb, yb) = (c.buf(&x), c.buf(&y0));
    let mut g = c.graph();
    g.linear_residual(&lin, &xb, &yb);
    let plan = g.finish().unwrap();
    run(&c.gpu, &plan, &c.step, n_tokens as u32, 0);
    let got = c.read(&yb, n_tokens * rows);
    let want = r::linear(&w, cols, &x, Some(&bias), Some(&y0));
    let name = format!(
        "{:?} {} {rows}x{cols} n={n_tokens} split={split}",
        plan.labels(glint::graph::CallShape::new(n_tokens, 0)),
        f.name()
    );
    check_linear(&name, &got, &want, &w, cols, &x);
}

/// A random host matrix in format `f` and the f32 values its GPU layout decodes to.
pub fn host(
    rng: &mut Rng,
    f: QuantType,
    rows: usize,
    cols: usize,
) -> (HostMatrix<'static>, Vec<f32>) {
    let v = rng.vec(rows * cols, 0.5);
    let bytes: Vec<u8> = if f.is_quantized() {
        let words = glint::quant::repack_for_gpu(f, &glint::quant::quantize(f, &v));
        bytemuck::cast_slice(&words).to_vec()
    } else {
        r::encode_weights(f, &v)
    };
    let seen = r::decode_weights(f, &bytes);
    let h = HostMatrix {
        name: format!("w.{}", f.name()),
        format: f,
        rows,
        cols,
        data: Cow::Owned(bytes),
        layout: HostLayout::Gpu,
    };
    (h, seen)
}
