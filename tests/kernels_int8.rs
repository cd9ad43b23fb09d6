//! The int8 matvec (`Shapes::int8`: quantize.wgsl, then matvec_q8.wgsl's dot4I8Packed sums) on the GPU,
//! for every block type, through each matvec variant (one token, half blocks, blocks), split across
//! bindings, and with the fusions (RMSNorm, stacked q/k/v of two formats, the gate/up GLU, the LM head
//! over output rows). Two checks per output:
//! - against the reference on the x the kernel reads (`reference::q8_input`: x, or g * x, rounded to
//!   8 bits per 32-element block, times the norm factor): |gpu - ref| <= 1e-5 * sum |w x8| + 1e-6, plus
//!   two levels of rounding (2 * max over blocks of max |w| * d) where the GPU's 1 / d rounds an
//!   element the other way;
//! - against the f32 path's reference (unrounded x): the quantization tolerance, each element of x
//!   off by at most half its block's step, |gpu - ref| <= 1.01 * sum_b d_b / 2 * sum_b |w| + the above.

mod common;
use common::kernel_ctx::{ctx_with, host, Ctx};
use common::{run_meta, Rng};
use glint::graph::{CallShape, Linear, NormWeight};
use glint::kernels::{Int8, Shapes};
use glint::lab::check;
use glint::quant::QuantType;
use glint::reference as r;
use glint::weights::{gpu_row_bytes, HostMatrix, Matrix};

const EPS: f32 = 1e-6;

/// A context with the int8 matvec on, adjusted by `f`.
fn ctx_int8(f: impl FnOnce(&mut Shapes)) -> Option<Ctx> {
    ctx_with(|s| {
        s.int8 = Int8::Matvec;
        s.tiled_from = None;
        f(s);
    })
}

fn run(c: &Ctx, plan: &glint::graph::Plan, n: usize, out_rows: &[u32]) {
    let meta: Vec<[u32; 2]> = (0..n as u32).map(|t| [0, t]).collect();
    run_meta(&c.gpu, plan, &c.step, &meta, out_rows);
}

/// The two checks of the header for output (token t, row n): `got` against `want8` (the reference on
/// x8, the rounded x) and `want` (on x, unrounded); ds are x8's block steps of token t's row.
#[allow(clippy::too_many_arguments)]
fn check_one(
    name: &str,
    t: usize,
    n: usize,
    got: f32,
    want8: f32,
    want: f32,
    w: &[f32],
    (x8, ds): (&[f32], &[f32]),
) {
    let tol8 = check::int8_tolerance(w, x8, ds);
    assert!(
        (got - want8).abs() <= tol8,
        "{name}: token {t} row {n}: gpu {got} vs int8 reference {want8} (tolerance {tol8})"
    );
    let tol = check::int8_quantization(w, ds) + tol8;
    assert!(
        (got - want).abs() <= tol,
        "{name}: token {t} row {n}: gpu {got} vs f32 reference {want} (quantization tolerance {tol})"
    );
}

/// Both checks over y [n, rows] = W x (+ bias, + y0): w [rows, cols], x8 and x [n, cols].
fn check_all(
    name: &str,
    got: &[f32],
    want8: &[f32],
    want: &[f32],
    w: &[f32],
    cols: usize,
    (x8, ds): (&[f32], &[f32]),
) {
    let rows = w.len() / cols;
    for (i, g) in got.iter().enumerate() {
        let (t, n) = (i / rows, i % rows);
        let wr = &w[n * cols..(n + 1) * cols];
        let xr = &x8[t * cols..(t + 1) * cols];
        let dr = &ds[t * cols / 32..(t + 1) * cols / 32];
        check_one(name, t, n, *g, want8[i], want[i], wr, (xr, dr));
    }
}

/// y = y0 + bias + W x through the int8 matvec: `n` tokens pick the variant, `chunks` > 1 splits the
/// matrix across bindings (one quantize for all of them).
fn plain_case(c: &Ctx, f: QuantType, rows: usize, cols: usize, n: usize, chunks: usize) {
    let mut rng = Rng::new((rows * 31 + cols * 7 + n) as u64 ^ f.ggml_id() as u64);
    let (h, w) = host(&mut rng, f, rows, cols);
    let chunk = if chunks > 1 {
        (rows / chunks + 1) as u64 * gpu_row_bytes(f, cols) as u64
    } else {
        u64::MAX
    };
    let m = Matrix::upload_chunked(&c.gpu, &h, chunk).unwrap();
    assert_eq!(m.chunks.len(), chunks);
    let x = rng.vec(n * cols, 1.0);
    let bias = rng.vec(rows, 1.0);
    let y0 = rng.vec(n * rows, 1.0);
    let lin = Linear {
        w: m,
        b: Some(c.buf(&bias)),
    };
    let (xb, yb) = (c.buf(&x), c.buf(&y0));
    let mut g = c.graph();
    g.linear_residual(&lin, &xb, &yb);
    let plan = g.finish().unwrap();
    let labels = plan.labels(CallShape::new(n, 0));
    let mut expect = vec!["quantize_q8"];
    let kernel = if n == 1 { "matvec_q8" } else { "matvec_q8_tok" };
    expect.extend(std::iter::repeat_n(kernel, chunks));
    assert_eq!(labels, expect, "{} n={n}: the dispatches", f.name());
    run(c, &plan, n, &[]);
    let got = c.read(&yb, n * rows);
    let (x8, ds) = r::q8_input(&x, cols, None);
    let want8 = r::linear(&w, cols, &x8, Some(&bias), Some(&y0));
    let want = r::linear(&w, cols, &x, Some(&bias), Some(&y0));
    let name = format!("int8 {} {rows}x{cols} n={n} chunks={chunks}", f.name());
    check_all(&name, &got, &want8, &want, &w, cols, (&x8, &ds));
}

/// Every block type through the three matvec variants (1 token, 3: half blocks, 9: a full block and a
/// partial one), at real shapes and split across bindings.
#[test]
fn int8_matvec_all_types_and_variants() {
    let Some(c) = ctx_int8(|_| {}) else { return };
    for f in glint::kernels::quant_formats() {
        let k = f.block_size() == 256;
        for n in [1, 3, 9] {
            if k {
                plain_case(&c, f, 600, 512, n, 3);
            } else {
                plain_case(&c, f, 1000, 896, n, 3);
            }
        }
        plain_case(&c, f, 896, 4864, 1, 1);
    }
}

/// The other workgroup geometries: 1, 4 and 8 rows per lane, and the workgroup-memory reduction with 32
/// lanes per row.
#[test]
fn int8_matvec_workgroup_shapes() {
    for (lane_rows, shared) in [(1, false), (4, false), (8, false), (2, true)] {
        let Some(c) = ctx_int8(|s| {
            s.lane_rows = lane_rows;
            // The device's default workgroup may hold fewer rows than lane_rows (4 with the shared
            // reduction): widen it to hold exactly lane_rows rows.
            if !s.rows_per_wg().is_multiple_of(lane_rows.max(2)) {
                s.matvec_wg = s.tpr * lane_rows;
            }
            if shared {
                s.reduce = glint::kernels::Reduce::Shared;
                s.tpr = 32;
                s.matvec_wg = 128;
            }
        }) else {
            return;
        };
        for f in [QuantType::Q5_0, QuantType::Q4_K, QuantType::Q6_K] {
            for n in [1, 9] {
                plain_case(&c, f, 256, 512, n, 1);
            }
        }
    }
}

/// Which calls read int8 x: with `Int8::Matvec` every matvec variant but not the tiled matmul (a call
/// long enough for it records no quantize, and its result is the f32 path's); with `Int8::Decode` the
/// one-token matvec only.
#[test]
fn int8_covers_the_variants_its_mode_says() {
    let (f, rows, cols) = (QuantType::Q4_K, 256, 512);
    for (mode, tiled_from) in [(Int8::Matvec, Some(8)), (Int8::Decode, None)] {
        let Some(c) = ctx_int8(|s| {
            s.int8 = mode;
            s.tiled_from = tiled_from;
        }) else {
            return;
        };
        let mut rng = Rng::new(5);
        let (h, w) = host(&mut rng, f, rows, cols);
        let lin = Linear {
            w: Matrix::upload(&c.gpu, &h).unwrap(),
            b: None,
        };
        let n = 12;
        let x = rng.vec(n * cols, 1.0);
        let xb = c.buf(&x);
        let yb = c.gpu.storage("y", (n * rows * 4) as u64).unwrap();
        let mut g = c.graph();
        g.linear(&lin, &xb, &yb);
        let plan = g.finish().unwrap();
        let labels = |n| plan.labels(CallShape::new(n, 0));
        assert_eq!(labels(1), ["quantize_q8", "matvec_q8"], "{mode:?}");
        if mode == Int8::Matvec {
            assert_eq!(labels(n), ["matmul"]);
            assert_eq!(labels(2), ["quantize_q8", "matvec_q8_tok"]);
        } else {
            assert_eq!(labels(n), ["matvec_tok"]);
            assert_eq!(labels(2), ["matvec_tok"]);
        }
        // n tokens through the f32 kernel (the tiled matmul, or the matvec over blocks).
        run(&c, &plan, n, &[]);
        let want = r::linear(&w, cols, &x, None, None);
        let name = format!("{mode:?} n={n} (f32 x)");
        common::kernel_ctx::check_linear(&name, &c.read(&yb, n * rows), &want, &w, cols, &x);
    }
}

/// W rmsnorm(x) + b over q, k, v stacked in two formats (the real Q4_K_M file's Q5_0 q, k and Q8_0 v):
/// the quantize scales x by the norm weight, the matvec by the norm factor.
#[test]
fn int8_stacked_qkv_with_the_norm() {
    let Some(c) = ctx_int8(|_| {}) else { return };
    let formats = [QuantType::Q5_0, QuantType::Q5_0, QuantType::Q8_0];
    let cols = 896;
    for n in [1, 3] {
        let mut rng = Rng::new(11 + n as u64);
        let rows = [896, 128, 128];
        let (hosts, seen): (Vec<HostMatrix>, Vec<Vec<f32>>) = formats
            .iter()
            .zip(rows)
            .map(|(&f, r)| host(&mut rng, f, r, cols))
            .unzip();
        let w: Vec<f32> = seen.concat();
        let m = Matrix::upload_stacked(&c.gpu, &hosts, c.k.shapes.segment_align())
            .unwrap()
            .expect("q, k, v stack");
        let total: usize = rows.iter().sum();
        let x = rng.vec(n * cols, 2.0);
        let g = rng.vec(cols, 1.0);
        let bias = rng.vec(total, 1.0);
        let lin = Linear {
            w: m,
            b: Some(c.buf(&bias)),
        };
        let (xb, gb) = (c.buf(&x), c.buf(&g));
        let yb = c.gpu.storage("y", (n * total * 4) as u64).unwrap();
        let mut gr = c.graph();
        gr.linear_normed(&lin, NormWeight { w: &gb, eps: EPS }, &xb, &yb, 0, total);
        let plan = gr.finish().unwrap();
        run(&c, &plan, n, &[]);
        let (x8, ds) = r::q8_input(&x, cols, Some((&g, EPS)));
        let xn = r::rms_norm(&x, &g, EPS);
        let want8 = r::linear(&w, cols, &x8, Some(&bias), None);
        let want = r::linear(&w, cols, &xn, Some(&bias), None);
        let got = c.read(&yb, n * total);
        check_all(
            &format!("int8 stacked qkv n={n}"),
            &got,
            &want8,
            &want,
            &w,
            cols,
            (&x8, &ds),
        );
    }
}

/// silu(W_gate rmsnorm(x)) * (W_up rmsnorm(x)) from the interleaved matrix, int8: checked against the
/// reference on x8 (the GLU of two dot products, each within the int8 tolerance).
#[test]
fn int8_gate_up_with_the_norm_and_silu() {
    let Some(c) = ctx_int8(|_| {}) else { return };
    for (f, rows, cols) in [(QuantType::Q4_K, 256, 512), (QuantType::Q5_0, 4864, 896)] {
        for n in [1, 3] {
            let mut rng = Rng::new(21 + n as u64);
            let (hg, wg) = host(&mut rng, f, rows, cols);
            let (hu, wu) = host(&mut rng, f, rows, cols);
            let m = Matrix::upload_interleaved(&c.gpu, &hg, &hu)
                .unwrap()
                .expect("same format");
            let lin = Linear { w: m, b: None };
            let x = rng.vec(n * cols, 2.0);
            let g = rng.vec(cols, 1.0);
            let (xb, gb) = (c.buf(&x), c.buf(&g));
            let yb = c.gpu.storage("y", (n * rows * 4) as u64).unwrap();
            let mut gr = c.graph();
            gr.gate_up_normed(&lin, NormWeight { w: &gb, eps: EPS }, &xb, &yb);
            let plan = gr.finish().unwrap();
            run(&c, &plan, n, &[]);
            let got = c.read(&yb, n * rows);
            let (x8, ds) = r::q8_input(&x, cols, Some((&g, EPS)));
            let a = r::linear(&wg, cols, &x8, None, None);
            let b = r::linear(&wu, cols, &x8, None, None);
            let want = r::silu_mul(&a, &b);
            for (i, (&got, &want)) in got.iter().zip(&want).enumerate() {
                let (t, row) = (i / rows, i % rows);
                let xr = &x8[t * cols..(t + 1) * cols];
                let dr = &ds[t * cols / 32..(t + 1) * cols / 32];
                let tol =
                    |w: &[f32]| check::int8_tolerance(&w[row * cols..(row + 1) * cols], xr, dr);
                let (ta, tb) = (tol(&wg), tol(&wu));
                let silu = a[i] / (1.0 + (-a[i]).exp());
                let bound = 1.1 * (ta * b[i].abs() + tb * silu.abs() + ta * tb) + 1e-6;
                assert!(
                    (got - want).abs() <= bound,
                    "int8 gate_up {} n={n}: token {t} row {row}: gpu {got} vs {want} (bound {bound})",
                    f.name()
                );
            }
        }
    }
}

/// The LM head over the call's output rows with the final norm: the quantize gathers the rows.
#[test]
fn int8_lm_head_on_output_rows() {
    let Some(c) = ctx_int8(|_| {}) else { return };
    for f in [QuantType::Q8_0, QuantType::Q6_K] {
        for out_rows in [vec![7u32], vec![11, 0, 5]] {
            let (rows, cols, n) = (2000, 1024, 12);
            let mut rng = Rng::new(31);
            let (h, w) = host(&mut rng, f, rows, cols);
            let lin = Linear {
                w: Matrix::upload(&c.gpu, &h).unwrap(),
                b: None,
            };
            let x = rng.vec(n * cols, 2.0);
            let g = rng.vec(cols, 1.0);
            let (xb, gb) = (c.buf(&x), c.buf(&g));
            let yb = c
                .gpu
                .storage("logits", (out_rows.len() * rows * 4) as u64)
                .unwrap();
            let mut gr = c.graph();
            gr.lm_head(&lin, NormWeight { w: &gb, eps: EPS }, &xb, &yb);
            let plan = gr.finish().unwrap();
            run(&c, &plan, n, &out_rows);
            let picked: Vec<f32> = out_rows
                .iter()
                .flat_map(|&t| x[t as usize * cols..(t as usize + 1) * cols].to_vec())
                .collect();
            let (x8, ds) = r::q8_input(&picked, cols, Some((&g, EPS)));
            let xn = r::rms_norm(&picked, &g, EPS);
            let want8 = r::linear(&w, cols, &x8, None, None);
            let want = r::linear(&w, cols, &xn, None, None);
            let got = c.read(&yb, out_rows.len() * rows);
            let name = format!("int8 lm_head {} outputs {out_rows:?}", f.name());
            check_all(&name, &got, &want8, &want, &w, cols, (&x8, &ds));
        }
    }
}
