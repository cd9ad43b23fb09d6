//! The fused linear kernels against the unfused references, on the GPU, for float and quantized formats,
//! through all three kernels a call can pick (matvec for one token, matvec over blocks of tokens, the
//! tiled matmul):
//! - RMSNorm fused into the layer it feeds: W rmsnorm(x) + b = reference rms_norm then linear;
//! - q, k, v stacked into one matrix of two formats (Q5_0 q and k with Q8_0 v, as the real Q4_K_M file
//!   has), writing the whole qkv row;
//! - gate and up interleaved with the SiLU-gated epilogue: silu(W_g xn) * (W_u xn);
//! - the LM head over the call's output rows (GATHER) with the final norm.
//!
//! Tolerance: the rule of tests/kernels.rs on each dot product, |gpu - ref| <= 1e-5 * sum |w xn| + 1e-6
//! (xn the normalised input), propagated through silu(a) * b for the gated output.

mod common;
use common::kernel_ctx::{check_linear, ctx_with, host, Ctx};
use common::{run_meta, Rng};
use glint::graph::{Linear, NormWeight};
use glint::quant::QuantType;
use glint::reference as r;
use glint::weights::{HostMatrix, Matrix};

const EPS: f32 = 1e-6;

/// Run one fused linear over `n` tokens: `meta` one sequence, outputs every row unless given.
fn run(c: &Ctx, plan: &glint::graph::Plan, n: usize, out_rows: &[u32]) {
    let meta: Vec<[u32; 2]> = (0..n as u32).map(|t| [0, t]).collect();
    run_meta(&c.gpu, plan, &c.step, &meta, out_rows);
}

/// The three kernels: (name, shape adjustment, tokens).
fn kernel_cases() -> Vec<(&'static str, Option<u32>, usize)> {
    vec![
        ("single", None, 1),
        ("blocks", None, 11),
        ("tiled", Some(2), 40),
    ]
}

/// W rmsnorm(x) + b, q/k/v stacked, two formats.
fn stacked_normed(formats: [QuantType; 3], cols: usize) {
    for (kernel, tiled_from, n) in kernel_cases() {
        let Some(c) = ctx_with(|s| s.tiled_from = tiled_from) else {
            return;
        };
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
        assert_eq!(m.second.is_some(), formats[0] != formats[2]);
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
        let norm = NormWeight { w: &gb, eps: EPS };
        gr.linear_normed(&lin, norm, &xb, &yb, 0, total);
        let plan = gr.finish().unwrap();
        run(&c, &plan, n, &[]);
        let xn = r::rms_norm(&x, &g, EPS);
        let want = r::linear(&w, cols, &xn, Some(&bias), None);
        let name = format!("stacked {formats:?} {kernel} n={n}");
        check_linear(&name, &c.read(&yb, n * total), &want, &w, cols, &xn);
    }
}

#[test]
fn qkv_stacked_two_formats_with_the_norm() {
    // The real Q4_K_M file: q, k in Q5_0, v in Q8_0 in half of the layers.
    stacked_normed([QuantType::Q5_0, QuantType::Q5_0, QuantType::Q8_0], 896);
}

#[test]
fn qkv_stacked_one_format_with_the_norm() {
    stacked_normed([QuantType::Q4_K, QuantType::Q4_K, QuantType::Q4_K], 512);
    stacked_normed([QuantType::BF16, QuantType::BF16, QuantType::BF16], 896);
}

#[test]
fn qkv_stacked_two_float_formats_with_the_norm() {
    stacked_normed([QuantType::F16, QuantType::F16, QuantType::F32], 896);
}

/// silu(W_gate rmsnorm(x)) * (W_up rmsnorm(x)) from the interleaved matrix.
fn gate_up(f: QuantType, rows: usize, cols: usize) {
    for (kernel, tiled_from, n) in kernel_cases() {
        for lane_rows in [1, 2, 4, 8] {
            if kernel == "tiled" && lane_rows != 2 {
                continue;
            }
            let Some(c) = ctx_with(|s| {
                s.tiled_from = tiled_from;
                s.lane_rows = lane_rows;
            }) else {
                return;
            };
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
            let xn = r::rms_norm(&x, &g, EPS);
            let a = r::linear(&wg, cols, &xn, None, None);
            let b = r::linear(&wu, cols, &xn, None, None);
            let want = r::silu_mul(&a, &b);
            for (i, (&got, &want)) in got.iter().zip(&want).enumerate() {
                let (t, row) = (i / rows, i % rows);
                let xr = &xn[t * cols..(t + 1) * cols];
                let tol = |w: &[f32]| {
                    let l1: f32 = w[row * cols..(row + 1) * cols]
                        .iter()
                        .zip(xr)
                        .map(|(p, q)| (p * q).abs())
                        .sum();
                    1e-5 * l1 + 1e-6
                };
                let (ta, tb) = (tol(&wg), tol(&wu));
                let silu = a[i] / (1.0 + (-a[i]).exp());
                let bound = 1.1 * (ta * b[i].abs() + tb * silu.abs() + ta * tb) + 1e-6;
                assert!(
                    (got - want).abs() <= bound,
                    "gate_up {} {kernel} lane_rows {lane_rows}: token {t} row {row}: gpu {got} vs \
                     {want} (bound {bound})",
                    f.name()
                );
            }
        }
    }
}

#[test]
fn gate_up_interleaved_with_the_norm_and_silu() {
    gate_up(QuantType::Q5_0, 4864, 896);
    gate_up(QuantType::F32, 320, 128);
}

#[test]
fn gate_up_interleaved_k_quant() {
    gate_up(QuantType::Q4_K, 256, 512);
}

/// The LM head over the call's output rows with the final norm: logits[o] = W rmsnorm(x[rows[o]]).
#[test]
fn lm_head_on_output_rows_with_the_final_norm() {
    for f in [QuantType::Q8_0, QuantType::BF16] {
        for (kernel, tiled_from, _) in kernel_cases() {
            let Some(c) = ctx_with(|s| s.tiled_from = tiled_from) else {
                return;
            };
            let (rows, cols, n) = (2000, 896, 12);
            let out_rows: Vec<u32> = match kernel {
                "single" => vec![7],
                "blocks" => vec![11, 0, 5],
                _ => (0..12).rev().collect(),
            };
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
            let xn = r::rms_norm(&x, &g, EPS);
            let picked: Vec<f32> = out_rows
                .iter()
                .flat_map(|&t| xn[t as usize * cols..(t as usize + 1) * cols].to_vec())
                .collect();
            let want = r::linear(&w, cols, &picked, None, None);
            let name = format!("lm_head {} {kernel}", f.name());
            let got = c.read(&yb, out_rows.len() * rows);
            check_linear(&name, &got, &want, &w, cols, &picked);
        }
    }
}
