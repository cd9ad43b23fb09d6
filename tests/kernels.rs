//! Every WGSL kernel against its plain-Rust reference (glint::reference), on the GPU, at the shapes the
//! real Qwen2-0.5B uses. Tolerances: f32 accumulation order differs between GPU and reference, so sums
//! are compared with a bound proportional to the sum of |terms| (1e-5 of it), elementwise kernels with
//! 1e-5 relative.

mod common;
use common::kernel_ctx::Ctx;
use common::kernel_ctx::{ctx, ctx_with, linear_case};
use common::{max_abs_diff, run, run_meta, run_split, Rng, KV_TYPES};
use glint::graph::{Heads, KvLayer};
use glint::kernels::KvType;
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
        run(
            &c.gpu,
            &g.finish().unwrap(),
            &c.step,
            tokens.len() as u32,
            0,
        );
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
    g.rms_norm(&xb, &wb, &yb, cols, 1e-6);
    run(&c.gpu, &g.finish().unwrap(), &c.step, n as u32, 0);
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
            linear_case(&c, f, rows, cols, 1, false);
        }
        linear_case(&c, f, 1000, 896, 1, true);
    }
}

/// Prefill of every float format at the real shapes, with the given choice of the tiled matmul (see
/// `Shapes::tiled_from`: Some(2) runs it for every call of several tokens, None never), including a
/// matrix split across bindings.
fn prefill_all_formats(tiled_from: Option<u32>) {
    let Some(c) = ctx_with(|s| s.tiled_from = tiled_from) else {
        return;
    };
    for f in FLOATS {
        linear_case(&c, f, 896, 896, 33, false);
        linear_case(&c, f, 4864, 896, 7, false);
        linear_case(&c, f, 896, 4864, 40, false);
        linear_case(&c, f, 1000, 896, 9, true);
    }
}

/// Prefill through the tiled matmul (the shape real GPUs use).
#[test]
fn matmul_tiled_all_formats_real_shapes() {
    prefill_all_formats(Some(2));
}

/// Prefill through matvec over blocks of 8 tokens (the shape CPU rasterisers use), with a partial
/// last block.
#[test]
fn matmul_token_blocks_all_formats_real_shapes() {
    prefill_all_formats(None);
}

/// q, k, v [n, *] packed into qkv rows [n, q | k | v], the layout the QKV projection writes.
fn pack_qkv(q: &[f32], k: &[f32], v: &[f32], n: usize) -> Vec<f32> {
    let (qd, kd) = (q.len() / n, k.len() / n);
    let mut out = Vec::with_capacity(q.len() + 2 * k.len());
    for t in 0..n {
        out.extend_from_slice(&q[t * qd..(t + 1) * qd]);
        out.extend_from_slice(&k[t * kd..(t + 1) * kd]);
        out.extend_from_slice(&v[t * kd..(t + 1) * kd]);
    }
    out
}

/// A KV cache buffer holding `v` as `kv` elements (f16: two per word), and the values the kernels read
/// back from it (rounded to f16 for an f16 cache).
fn kv_buf(c: &Ctx, v: &[f32], kv: KvType) -> (wgpu::Buffer, Vec<f32>) {
    match kv {
        KvType::F32 => (c.buf(v), v.to_vec()),
        KvType::F16 => {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            let seen = h.iter().map(|x| x.to_f32()).collect();
            let b = c.gpu.storage_init("kv", bytemuck::cast_slice(&h)).unwrap();
            (b, seen)
        }
    }
}

/// `n` elements of a KV cache buffer, as f32.
fn kv_read(c: &Ctx, b: &wgpu::Buffer, n: usize, kv: KvType) -> Vec<f32> {
    match kv {
        KvType::F32 => c.read(b, n),
        KvType::F16 => {
            let bytes = c.gpu.read_buffer(b, 0, (n * 2) as u64).unwrap();
            let h: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes);
            h.iter().map(|x| x.to_f32()).collect()
        }
    }
}

/// |got - want| within f32 rounding (f32 cache) or f16 rounding (f16 cache: 2^-11 relative).
fn kv_close(what: &str, got: &[f32], want: &[f32], kv: KvType) {
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let tol = match kv {
            KvType::F32 => 1e-5,
            KvType::F16 => 1e-3 * b.abs() + 1e-5,
        };
        assert!((a - b).abs() <= tol, "{what} [{i}]: {a} vs {b}");
    }
}

fn heads_0_5b() -> Heads {
    Heads {
        n_heads: 14,
        n_kv_heads: 2,
        head_dim: 64,
    }
}

/// RoPE of q (in place in the qkv rows) and of k with the KV-cache write, one dispatch; with and
/// without the per-head q/k RMSNorm of Qwen3, into f32 and f16 caches.
#[test]
fn rope_store_with_and_without_qk_norm() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(3);
    let heads = heads_0_5b();
    let (nh, nkv, hd) = (heads.n_heads, heads.n_kv_heads, heads.head_dim);
    let (n, pos0, ctx_len) = (5, 11, 32);
    let theta = 1e6;
    let eps = 1e-6;
    let table = c.buf(&glint::graph::rope_table(ctx_len, hd, theta));
    for kv in KV_TYPES {
        for qk_norm in [false, true] {
            let q = rng.vec(n * nh * hd, 1.0);
            let k = rng.vec(n * nkv * hd, 1.0);
            let v = rng.vec(n * nkv * hd, 1.0);
            let (qw, kw) = (rng.vec(hd, 1.0), rng.vec(hd, 1.0));
            let qkv = c.buf(&pack_qkv(&q, &k, &v, n));
            let w = nkv * hd;
            let zeros = vec![0f32; ctx_len * w];
            let cache = KvLayer {
                k: kv_buf(&c, &zeros, kv).0,
                v: kv_buf(&c, &zeros, kv).0,
                slot_rows: ctx_len,
                kv_type: kv,
            };
            let (qn, kn) = (c.buf(&qw), c.buf(&kw));
            let mut g = c.graph();
            g.rope_store(
                &qkv,
                qk_norm.then_some((&qn, &kn)),
                eps,
                &table,
                &cache,
                heads,
            );
            run(&c.gpu, &g.finish().unwrap(), &c.step, n as u32, pos0 as u32);
            let (mut q_ref, mut k_ref) = (q.clone(), k.clone());
            if qk_norm {
                r::head_rms_norm(&mut q_ref, hd, &qw, eps);
                r::head_rms_norm(&mut k_ref, hd, &kw, eps);
            }
            r::rope(&mut q_ref, nh, hd, pos0, theta);
            r::rope(&mut k_ref, nkv, hd, pos0, theta);
            let got = c.read(&qkv, n * heads.qkv_dim());
            let q_got: Vec<f32> = got
                .chunks(heads.qkv_dim())
                .flat_map(|row| row[..nh * hd].to_vec())
                .collect();
            let what = format!("{kv:?} qk_norm {qk_norm}");
            assert!(max_abs_diff(&q_got, &q_ref) < 1e-5, "q, {what}");
            let kc = kv_read(&c, &cache.k, ctx_len * w, kv);
            let vc = kv_read(&c, &cache.v, ctx_len * w, kv);
            kv_close(
                &format!("k, {what}"),
                &kc[pos0 * w..(pos0 + n) * w],
                &k_ref,
                kv,
            );
            kv_close(&format!("v, {what}"), &vc[pos0 * w..(pos0 + n) * w], &v, kv);
            assert!(
                kc[..pos0 * w].iter().all(|&x| x == 0.0),
                "rows before pos0 untouched"
            );
        }
    }
}

/// Attention over f32 and f16 caches, whole and split-K (3 and 16 key ranges reduced), for prefill
/// from 0, prefill after a cached prefix, and decode over several key tiles.
#[test]
fn attention_gqa_decode_and_prefill() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(4);
    let heads = heads_0_5b();
    let (nh, nkv, hd) = (heads.n_heads, heads.n_kv_heads, heads.head_dim);
    for kv in KV_TYPES {
        for splits in [1, 3, 16] {
            for (n, pos0) in [(7, 0), (5, 40), (1, 300)] {
                let keys = pos0 + n;
                let q = rng.vec(n * nh * hd, 1.0);
                let (kb, k) = kv_buf(&c, &rng.vec(keys * nkv * hd, 1.0), kv);
                let (vb, v) = kv_buf(&c, &rng.vec(keys * nkv * hd, 1.0), kv);
                let qb = c.buf(&q);
                let out = c.gpu.storage("out", (n * nh * hd * 4) as u64).unwrap();
                let part = c
                    .gpu
                    .storage("part", (n * nh * 16 * (hd + 2) * 4) as u64)
                    .unwrap();
                let cache = KvLayer {
                    k: kb,
                    v: vb,
                    slot_rows: keys,
                    kv_type: kv,
                };
                let mut g = c.graph();
                g.attention(&qb, nh * hd, &cache, &out, &part, heads);
                let plan = g.finish().unwrap();
                let meta: Vec<[u32; 2]> = (0..n as u32).map(|t| [0, pos0 as u32 + t]).collect();
                run_split(&c.gpu, &plan, &c.step, &meta, &[], splits);
                let want = r::attention(&q, &k, &v, nh, nkv, hd, pos0);
                let d = max_abs_diff(&c.read(&out, n * nh * hd), &want);
                assert!(
                    d < 1e-5,
                    "attention {kv:?} splits {splits} n={n} pos0={pos0}: max diff {d}"
                );
            }
        }
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
    run(&c.gpu, &g.finish().unwrap(), &c.step, n as u32, 0);
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
    // Two rows (two outputs of one call), each with its own winner.
    let mut logits = rng.vec(2 * n, 10.0);
    logits[151700] = 100.0; // beyond n_valid: never chosen
    logits[77] = 50.0;
    logits[90000] = 50.0; // tie: the lower id wins
    logits[5] = f32::NAN;
    logits[n + 4242] = 60.0;
    let (lb, out) = (c.buf(&logits), c.gpu.storage("out", 8).unwrap());
    let mut g = c.graph();
    g.argmax(&lb, n, n_valid, &out);
    run(&c.gpu, &g.finish().unwrap(), &c.step, 2, 0);
    let got: Vec<u32> = bytemuck::pod_collect_to_vec(&c.gpu.read_buffer(&out, 0, 8).unwrap());
    assert_eq!(got, [77, 4242]);
    assert_eq!(r::argmax(&logits[..n], n_valid), 77);
}

/// The final norm over a call's output rows only: y[o] = rmsnorm(x[out_rows[o]]).
#[test]
fn rmsnorm_of_output_rows() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(7);
    let (n, cols) = (6, 896);
    let x = rng.vec(n * cols, 3.0);
    let w = rng.vec(cols, 1.0);
    let (xb, wb, yb) = (
        c.buf(&x),
        c.buf(&w),
        c.gpu.storage("y", (n * cols * 4) as u64).unwrap(),
    );
    let mut g = c.graph();
    g.rms_norm_outputs(&xb, &wb, &yb, cols, 1e-6);
    let meta: Vec<[u32; 2]> = (0..n as u32).map(|t| [0, t]).collect();
    let rows = [5u32, 1, 3];
    run_meta(&c.gpu, &g.finish().unwrap(), &c.step, &meta, &rows);
    let got = c.read(&yb, rows.len() * cols);
    let want = r::rms_norm(&x, &w, 1e-6);
    for (o, &r) in rows.iter().enumerate() {
        let r = r as usize;
        let (a, b) = (
            &got[o * cols..(o + 1) * cols],
            &want[r * cols..(r + 1) * cols],
        );
        for (a, b) in a.iter().zip(b) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "output {o}: {a} vs {b}"
            );
        }
    }
}

/// One call holding tokens of three sequences at different positions (the batched decode of the
/// server, with a prompt chunk): RoPE, the KV write into each token's slot region, and attention over
/// each sequence's own keys, against the reference run per sequence.
#[test]
fn rope_kv_and_attention_of_several_sequences_in_one_call() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(8);
    let heads = heads_0_5b();
    let (nh, nkv, hd, slot_rows) = (14, 2, 64, 80);
    let theta = 1e6;
    let slots = 3;
    let table = c.buf(&glint::graph::rope_table(slot_rows, hd, theta));
    let w = nkv * hd;
    // Cached keys/values already in each slot (positions 0 .. len), then this call's tokens:
    // slot 2: 4 prompt tokens from 0; slot 0: one token at 37; slot 1: one token at 70.
    let cached = [37usize, 70, 0];
    let call: [(usize, usize); 3] = [(2, 4), (0, 1), (1, 1)];
    let mut k_cache = vec![0f32; slots * slot_rows * w];
    let mut v_cache = vec![0f32; slots * slot_rows * w];
    for (s, &len) in cached.iter().enumerate() {
        let base = s * slot_rows * w;
        k_cache[base..base + len * w].copy_from_slice(&rng.vec(len * w, 1.0));
        v_cache[base..base + len * w].copy_from_slice(&rng.vec(len * w, 1.0));
    }
    let n: usize = call.iter().map(|c| c.1).sum();
    let q = rng.vec(n * nh * hd, 1.0);
    let k = rng.vec(n * w, 1.0);
    let v = rng.vec(n * w, 1.0);
    let mut meta = vec![];
    for &(s, len) in &call {
        for t in 0..len {
            meta.push([s as u32, (cached[s] + t) as u32]);
        }
    }
    let qkv = c.buf(&pack_qkv(&q, &k, &v, n));
    let cache = KvLayer {
        k: c.buf(&k_cache),
        v: c.buf(&v_cache),
        slot_rows,
        kv_type: KvType::F32,
    };
    let out = c.gpu.storage("out", (n * nh * hd * 4) as u64).unwrap();
    let part = c
        .gpu
        .storage("part", (n * nh * 16 * (hd + 2) * 4) as u64)
        .unwrap();
    let mut g = c.graph();
    g.rope_store(&qkv, None, 0.0, &table, &cache, heads);
    g.attention(&qkv, heads.qkv_dim(), &cache, &out, &part, heads);
    // Split-K over 2 key ranges: each sequence's ranges are its own.
    run_split(&c.gpu, &g.finish().unwrap(), &c.step, &meta, &[], 2);
    let got = c.read(&out, n * nh * hd);
    // The reference, sequence by sequence.
    let mut t0 = 0;
    for &(s, len) in &call {
        let pos0 = cached[s];
        let mut qs = q[t0 * nh * hd..(t0 + len) * nh * hd].to_vec();
        r::rope(&mut qs, nh, hd, pos0, theta);
        let mut ks = k[t0 * w..(t0 + len) * w].to_vec();
        r::rope(&mut ks, nkv, hd, pos0, theta);
        let base = s * slot_rows * w;
        let mut keys = k_cache[base..base + pos0 * w].to_vec();
        keys.extend_from_slice(&ks);
        let mut vals = v_cache[base..base + pos0 * w].to_vec();
        vals.extend_from_slice(&v[t0 * w..(t0 + len) * w]);
        let want = r::attention(&qs, &keys, &vals, nh, nkv, hd, pos0);
        let d = max_abs_diff(&got[t0 * nh * hd..(t0 + len) * nh * hd], &want);
        assert!(d < 1e-5, "slot {s}: max diff {d}");
        t0 += len;
    }
    // Each token's k and v landed in its own slot's row.
    let kc = c.read(&cache.k, slots * slot_rows * w);
    let vc = c.read(&cache.v, slots * slot_rows * w);
    let mut t0 = 0;
    for &(s, len) in &call {
        let row = (s * slot_rows + cached[s]) * w;
        assert_eq!(
            &vc[row..row + len * w],
            &v[t0 * w..(t0 + len) * w],
            "slot {s} values"
        );
        let mut ks = k[t0 * w..(t0 + len) * w].to_vec();
        r::rope(&mut ks, nkv, hd, cached[s], theta);
        assert!(
            max_abs_diff(&kc[row..row + len * w], &ks) < 1e-5,
            "slot {s} keys"
        );
        t0 += len;
    }
}
