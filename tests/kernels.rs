//! Every WGSL kernel against its plain-Rust reference (glint::reference), on the GPU, at the shapes the
//! real Qwen2-0.5B uses. Tolerances: f32 accumulation order differs between GPU and reference, so sums
//! are compared with a bound proportional to the sum of |terms| (1e-5 of it), elementwise kernels with
//! 1e-5 relative.

mod common;
use common::kernel_ctx::{ctx, ctx_with, linear_case};
use common::{max_abs_diff, run, Rng};
use glint::graph::LinearKind;
use glint::reference as r;
use glint::weights::{gpu_row_bytes, FLOATS};

#[test]
fn embed_all_formats_and_split_table() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(1);
    let (rows, cols) = (1000, 896);
    for f in FLOATS {
        // 300 rows per chunk: 4 chunks, so tokens land in different bindings.
        let (m, seen) = c.matrix(
            &mut rng,
            f,
            rows,
            cols,
            (300 * gpu_row_bytes(f, cols)) as u64,
        );
        assert_eq!(m.chunks.len(), 4);
        let tokens: Vec<u32> = vec![0, 299, 300, 999, 512, 7];
        let tok_buf = c
            .gpu
            .storage_init("tokens", bytemuck::cast_slice(&tokens))
            .unwrap();
        let out = c
            .gpu
            .storage("out", (tokens.len() * cols * 4) as u64)
            .unwrap();
        let mut g = c.graph();
        g.embed(&m, &tok_buf, &out);
        run(&c.gpu, &g.finish(), &c.step, tokens.len() as u32, 0);
        assert_eq!(
            c.read(&out, tokens.len() * cols),
            r::embed(&seen, cols, &tokens),
            "embed {}",
            f.name()
        );
    }
}

#[test]
fn rmsnorm_rows() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(2);
    let (n, cols) = (5, 896);
    let x = rng.vec(n * cols, 3.0);
    let w = rng.vec(cols, 1.0);
    let (xb, wb, yb) = (
        c.buf(&x),
        c.buf(&w),
        c.gpu.storage("y", (n * cols * 4) as u64).unwrap(),
    );
    let mut g = c.graph();
    g.rms_norm(&xb, &wb, &yb, cols, 1e-6, false);
    run(&c.gpu, &g.finish(), &c.step, n as u32, 0);
    let got = c.read(&yb, n * cols);
    let want = r::rms_norm(&x, &w, 1e-6);
    for (a, b) in got.iter().zip(&want) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "rmsnorm: {a} vs {b}"
        );
    }
}

#[test]
fn matvec_all_formats_real_shapes() {
    let Some(c) = ctx() else { return };
    for f in FLOATS {
        for (rows, cols) in [(896, 896), (4864, 896), (896, 4864), (128, 896)] {
            linear_case(&c, f, rows, cols, 1, LinearKind::Vec, false);
        }
        linear_case(&c, f, 1000, 896, 1, LinearKind::Vec, true);
    }
}

/// Prefill of every float format at the real shapes, with the given prefill shape
/// (see `Shapes::prefill_tok`), including a matrix split across bindings.
fn prefill_all_formats(prefill_tok: Option<u32>) {
    let Some(c) = ctx_with(|s| s.prefill_tok = prefill_tok) else {
        return;
    };
    for f in FLOATS {
        linear_case(&c, f, 896, 896, 33, LinearKind::Mat, false);
        linear_case(&c, f, 4864, 896, 7, LinearKind::Mat, false);
        linear_case(&c, f, 896, 4864, 40, LinearKind::Mat, false);
        linear_case(&c, f, 1000, 896, 9, LinearKind::Mat, true);
    }
}

/// Prefill through the tiled matmul (the shape real GPUs use).
#[test]
fn matmul_tiled_all_formats_real_shapes() {
    prefill_all_formats(None);
}

/// Prefill through matvec over blocks of 8 tokens (the shape CPU rasterisers use), with a partial
/// last block.
#[test]
fn matmul_token_blocks_all_formats_real_shapes() {
    prefill_all_formats(Some(8));
}

#[test]
fn rope_q_and_store_kv() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(3);
    let (nh, nkv, hd, n, pos0, ctx_len) = (14, 2, 64, 5, 11, 32);
    let theta = 1e6;
    let table = c.buf(&glint::graph::rope_table(ctx_len, hd, theta));
    let q = rng.vec(n * nh * hd, 1.0);
    let k = rng.vec(n * nkv * hd, 1.0);
    let v = rng.vec(n * nkv * hd, 1.0);
    let (qb, kb, vb) = (c.buf(&q), c.buf(&k), c.buf(&v));
    let kc = c
        .gpu
        .storage("kc", (ctx_len * nkv * hd * 4) as u64)
        .unwrap();
    let vc = c
        .gpu
        .storage("vc", (ctx_len * nkv * hd * 4) as u64)
        .unwrap();
    let mut g = c.graph();
    g.rope_q(&qb, &table, nh, hd);
    g.store_kv(&kb, &vb, &kc, &vc, &table, nkv, hd);
    run(&c.gpu, &g.finish(), &c.step, n as u32, pos0 as u32);
    let mut q_ref = q.clone();
    r::rope(&mut q_ref, nh, hd, pos0, theta);
    assert!(max_abs_diff(&c.read(&qb, q.len()), &q_ref) < 1e-5);
    let mut k_ref = k.clone();
    r::rope(&mut k_ref, nkv, hd, pos0, theta);
    let w = nkv * hd;
    let kc_got = c.read(&kc, ctx_len * w);
    let vc_got = c.read(&vc, ctx_len * w);
    assert!(max_abs_diff(&kc_got[pos0 * w..(pos0 + n) * w], &k_ref) < 1e-5);
    assert_eq!(&vc_got[pos0 * w..(pos0 + n) * w], &v[..]);
    assert!(
        kc_got[..pos0 * w].iter().all(|&x| x == 0.0),
        "rows before pos0 untouched"
    );
}

#[test]
fn attention_gqa_decode_and_prefill() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(4);
    let (nh, nkv, hd) = (14, 2, 64);
    // (queries, position of the first query): prefill from 0, prefill after a cached prefix, and
    // decode over several key tiles.
    for (n, pos0) in [(7, 0), (5, 40), (1, 300)] {
        let keys = pos0 + n;
        let q = rng.vec(n * nh * hd, 1.0);
        let k = rng.vec(keys * nkv * hd, 1.0);
        let v = rng.vec(keys * nkv * hd, 1.0);
        let (qb, kb, vb) = (c.buf(&q), c.buf(&k), c.buf(&v));
        let out = c.gpu.storage("out", (n * nh * hd * 4) as u64).unwrap();
        let mut g = c.graph();
        g.attention(&qb, &kb, &vb, &out, nh, nkv, hd);
        run(&c.gpu, &g.finish(), &c.step, n as u32, pos0 as u32);
        let want = r::attention(&q, &k, &v, nh, nkv, hd, pos0);
        let d = max_abs_diff(&c.read(&out, n * nh * hd), &want);
        assert!(d < 1e-5, "attention n={n} pos0={pos0}: max diff {d}");
    }
}

#[test]
fn silu_mul_elementwise() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(5);
    let (n, cols) = (3, 4864);
    let gate = rng.vec(n * cols, 8.0);
    let up = rng.vec(n * cols, 2.0);
    let (gb, ub) = (c.buf(&gate), c.buf(&up));
    let mut g = c.graph();
    g.silu_mul(&gb, &ub, cols);
    run(&c.gpu, &g.finish(), &c.step, n as u32, 0);
    let want = r::silu_mul(&gate, &up);
    for (a, b) in c.read(&gb, n * cols).iter().zip(&want) {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "silu_mul: {a} vs {b}"
        );
    }
}

#[test]
fn argmax_masks_and_breaks_ties_low() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(6);
    let n = 151936;
    let n_valid = 151646;
    let mut logits = rng.vec(n, 10.0);
    logits[151700] = 100.0; // beyond n_valid: never chosen
    logits[77] = 50.0;
    logits[90000] = 50.0; // tie: the lower id wins
    logits[5] = f32::NAN;
    let (lb, out) = (c.buf(&logits), c.gpu.storage("out", 4).unwrap());
    let mut g = c.graph();
    g.argmax(&lb, n_valid, &out);
    run(&c.gpu, &g.finish(), &c.step, 1, 0);
    let got = u32::from_le_bytes(c.gpu.read_buffer(&out, 0, 4).unwrap().try_into().unwrap());
    assert_eq!(got, 77);
    assert_eq!(r::argmax(&logits, n_valid), 77);
}
