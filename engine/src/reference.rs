//! Plain-Rust CPU references of every WGSL kernel, written for clarity, not speed. The GPU tests
//! (tests/kernels.rs) and the benchmarks' validate step compare against these.

use crate::quant::QuantType;

/// Decode a matrix stored in the GPU layout of `format` (quant.rs) to f32.
pub fn decode_weights(format: QuantType, data: &[u8]) -> Vec<f32> {
    let n = match format {
        QuantType::F32 => data.len() / 4,
        QuantType::F16 | QuantType::BF16 => data.len() / 2,
        q => data.len() / (q.gpu_block_words() * 4) * q.block_size(),
    };
    let words: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut out = vec![0f32; n];
    crate::quant::dequantize_gpu(format, &words, &mut out);
    out
}

/// Encode f32 values in the GPU layout of `format`: ggml's quantizer (rounding to nearest for the
/// float types), then the repack.
pub fn encode_weights(format: QuantType, v: &[f32]) -> Vec<u8> {
    let ggml = crate::quant::quantize(format, v);
    let words = crate::quant::repack_for_gpu(format, &ggml);
    bytemuck::cast_slice(&words).to_vec()
}

/// out[t, :] = table[tokens[t], :]; table [rows, cols].
pub fn embed(table: &[f32], cols: usize, tokens: &[u32]) -> Vec<f32> {
    tokens
        .iter()
        .flat_map(|&t| {
            table[t as usize * cols..(t as usize + 1) * cols]
                .iter()
                .copied()
        })
        .collect()
}

/// y[t, i] = w[i] * x[t, i] / sqrt(mean(x[t]^2) + eps); x [n, cols].
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let cols = w.len();
    x.chunks(cols)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(w)
                .map(move |(v, g)| (*g as f64 * (*v as f64 * inv)) as f32)
        })
        .collect()
}

/// y[t, n] = acc[t, n] + bias[n] + sum_k x[t, k] w[n, k]; w [rows, cols], x [n_tokens, cols].
pub fn linear(
    w: &[f32],
    cols: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    acc: Option<&[f32]>,
) -> Vec<f32> {
    let rows = w.len() / cols;
    let n_tokens = x.len() / cols;
    let mut y = vec![0f32; n_tokens * rows];
    for t in 0..n_tokens {
        let xr = &x[t * cols..(t + 1) * cols];
        for n in 0..rows {
            let wr = &w[n * cols..(n + 1) * cols];
            let mut s: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
            if let Some(b) = bias {
                s += b[n] as f64;
            }
            if let Some(a) = acc {
                s += a[t * rows + n] as f64;
            }
            y[t * rows + n] = s as f32;
        }
    }
    y
}

/// quantize.wgsl: each 32-element block of v quantized to 8 bits, d = max|v| / 127, q = round(v / d)
/// (half to even, as WGSL's round), returned as the values d * q the int8 matvec multiplies by, and the
/// blocks' d. v's length is a multiple of 32.
pub fn q8_round_trip(v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut out = Vec::with_capacity(v.len());
    let mut ds = Vec::with_capacity(v.len() / 32);
    for b in v.chunks(32) {
        let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(
            b.iter()
                .map(|x| (x * id).round_ties_even().clamp(-127.0, 127.0) * d),
        );
        ds.push(d);
    }
    (out, ds)
}

/// What the int8 matvec (quantize.wgsl + matvec_q8.wgsl) reads as x: the rows of x [n, cols], times the
/// norm weight `g` when given, through [`q8_round_trip`], then scaled by the row's RMSNorm factor
/// 1 / sqrt(mean(x^2) + eps) (with `g`). Returns that x and each block's d (times the factor).
pub fn q8_input(x: &[f32], cols: usize, norm: Option<(&[f32], f32)>) -> (Vec<f32>, Vec<f32>) {
    let mut xs = Vec::with_capacity(x.len());
    let mut ds = Vec::with_capacity(x.len() / 32);
    for row in x.chunks(cols) {
        let (v, inv): (Vec<f32>, f64) = match norm {
            Some((g, eps)) => {
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / cols as f64;
                (
                    row.iter().zip(g).map(|(a, b)| a * b).collect(),
                    1.0 / (ms + eps as f64).sqrt(),
                )
            }
            None => (row.to_vec(), 1.0),
        };
        let (q, d) = q8_round_trip(&v);
        xs.extend(q.iter().map(|v| (*v as f64 * inv) as f32));
        ds.extend(d.iter().map(|v| (*v as f64 * inv) as f32));
    }
    (xs, ds)
}

/// NeoX RoPE in place on x [n_tokens, n_heads * head_dim], token t at position pos0 + t.
pub fn rope(x: &mut [f32], n_heads: usize, head_dim: usize, pos0: usize, theta: f64) {
    let plain = crate::family::Rope {
        theta,
        scaling: crate::family::RopeScaling::None,
    };
    rope_with(x, n_heads, head_dim, pos0, &plain);
}

/// RoPE with a model's frequencies (its scaling included).
pub fn rope_with(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
    rope: &crate::family::Rope,
) {
    let half = head_dim / 2;
    let inv = rope.inv_freq(head_dim);
    for (t, row) in x.chunks_mut(n_heads * head_dim).enumerate() {
        let pos = (pos0 + t) as f64;
        for h in 0..n_heads {
            for (i, f) in inv.iter().enumerate() {
                let a = pos * f;
                let (s, c) = a.sin_cos();
                let (i0, i1) = (h * head_dim + i, h * head_dim + i + half);
                let (x0, x1) = (row[i0] as f64, row[i1] as f64);
                row[i0] = (x0 * c - x1 * s) as f32;
                row[i1] = (x1 * c + x0 * s) as f32;
            }
        }
    }
}

/// Per-head RMSNorm (Qwen3's q_norm / k_norm): each head_dim slice of x becomes w * x / sqrt(mean(x^2) +
/// eps), in f32.
pub fn head_rms_norm(x: &mut [f32], head_dim: usize, w: &[f32], eps: f32) {
    for head in x.chunks_mut(head_dim) {
        let normed = rms_norm(head, w, eps);
        head.copy_from_slice(&normed);
    }
}

/// Causal GQA attention. q [n_tokens, n_heads * hd] (rotated), k / v [n_keys, n_kv_heads * hd] (k rotated),
/// query t sits at position pos0 + t and sees keys 0 ..= pos0 + t.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    pos0: usize,
) -> Vec<f32> {
    let group = n_heads / n_kv_heads;
    let n_tokens = q.len() / (n_heads * hd);
    let kvw = n_kv_heads * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; q.len()];
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
            let n_keys = pos0 + t + 1;
            let scores: Vec<f64> = (0..n_keys)
                .map(|j| {
                    qv.iter()
                        .zip(&k[j * kvw + kvh * hd..])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let o: f64 = (0..n_keys)
                    .map(|j| e[j] * v[j * kvw + kvh * hd + d] as f64)
                    .sum();
                out[(t * n_heads + h) * hd + d] = (o / sum) as f32;
            }
        }
    }
    out
}

/// silu(gate) * up, elementwise.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| (*g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64) as f32)
        .collect()
}

/// Index of the largest of logits[..n_valid], lowest index on ties, NaN skipped.
pub fn argmax(logits: &[f32], n_valid: usize) -> u32 {
    let mut best = (f32::NEG_INFINITY, u32::MAX);
    for (i, &v) in logits[..n_valid].iter().enumerate() {
        if !v.is_nan() && (v > best.0 || best.1 == u32::MAX) {
            best = (v, i as u32);
        }
    }
    best.1
}

/// Log-probabilities of each row of `logits` ([n_rows, row_stride]) over the ids below `n_valid`, in
/// f64: the max, ln(sum exp), the argmax (lowest id on ties, NaN skipped), log p at each of the row's
/// `n_req` ids in `req` ([n_rows, n_req]; -inf for an id >= n_valid) and the `top_k` most likely ids
/// (lowest first on ties; -inf logits never listed). The reference of shaders/logprobs.wgsl.
pub fn logprobs(
    logits: &[f32],
    row_stride: usize,
    n_valid: usize,
    req: &[u32],
    n_req: usize,
    top_k: usize,
) -> Vec<crate::logprobs::RowLogprobs> {
    use crate::logprobs::{RowLogprobs, TokenLogprob};
    let n_rows = logits.len() / row_stride;
    (0..n_rows)
        .map(|r| {
            let row = &logits[r * row_stride..r * row_stride + n_valid];
            let argmax = argmax(row, n_valid);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            let lse = max + sum.ln();
            let lp = |id: usize| (row[id] as f64 - lse) as f32;
            let requested = req[r * n_req..(r + 1) * n_req]
                .iter()
                .map(|&id| {
                    if (id as usize) < n_valid {
                        lp(id as usize)
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let mut order: Vec<usize> = (0..n_valid)
                .filter(|&i| row[i] > f32::NEG_INFINITY)
                .collect();
            // Larger logit first, then lower id (a stable sort keeps ids ascending among equals).
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let top = order
                .into_iter()
                .take(top_k)
                .map(|i| TokenLogprob {
                    id: i as u32,
                    logprob: lp(i),
                })
                .collect();
            RowLogprobs {
                max_logit: max as f32,
                log_sum_exp: lse as f32,
                argmax,
                requested,
                top,
            }
        })
        .collect()
}
