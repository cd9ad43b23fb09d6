//! The quantized-weight kernels (matvec_quant.wgsl, matmul.wgsl and embed.wgsl with dequant.wgsl) against
//! the plain-Rust references, on the GPU, for every block type, at the shapes Qwen2-0.5B uses.
//!
//! Weights are random f32 quantized with ggml's reference quantizers (glint::quant::quantize: valid
//! blocks, realistic scales) and repacked into the GPU layout; the reference runs on the same values
//! decoded back from that layout (glint::reference::decode_weights), so the comparison isolates the
//! kernels. Dot products use the rule of tests/kernels.rs: |gpu - ref| <= 1e-5 * sum |w x| + 1e-6.
//! The embedding must equal the dequantized row bit for bit.
//!
//! K-quants need rows that are a multiple of 256: of the real shapes only 896 x 4864 (ffn_down) applies,
//! so they are also tested at 256 x 512.

mod common;
use common::kernel_ctx::{check_output, ctx_with, linear_case};
use common::{run, Rng};
use glint::graph::Linear;
use glint::kernels::Reduce;
use glint::quant::QuantType;
use glint::reference as r;
use glint::weights::gpu_row_bytes;
use std::time::Instant;

const QUANTS: [QuantType; 8] = [
    QuantType::Q8_0,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q4_K,
    QuantType::Q5_K,
    QuantType::Q6_K,
];

fn is_k(f: QuantType) -> bool {
    f.block_size() == 256
}

/// Decode matvec (TOK = 1) for every block type at the real shapes its rows allow, and split across
/// bindings.
#[test]
fn matvec_quant_all_types_real_shapes() {
    let Some(c) = ctx_with(|_| {}) else { return };
    for f in QUANTS {
        if is_k(f) {
            linear_case(&c, f, 896, 4864, 1, false);
            linear_case(&c, f, 256, 512, 1, false);
            linear_case(&c, f, 600, 512, 1, true);
        } else {
            for (rows, cols) in [(896, 896), (4864, 896), (896, 4864)] {
                linear_case(&c, f, rows, cols, 1, false);
            }
            linear_case(&c, f, 1000, 896, 1, true);
        }
    }
}

/// The other workgroup geometries of the quantized matvec: 1, 4 and 8 rows per invocation (the
/// defaults: 2 on GPUs, 8 on CPU devices), and the
/// portable workgroup-memory reduction with 32 lanes per row (the shape of a GPU without fixed-size
/// subgroups: a 32-element-block row of 896 has 28 blocks, fewer than the lanes), decode and prefill.
#[test]
fn matvec_quant_workgroup_shapes() {
    let shapes: [(Option<(u32, u32)>, u32); 5] = [
        (None, 1),
        (None, 4),
        (None, 8),
        (Some((32, 128)), 1),
        (Some((32, 128)), 4),
    ];
    for (shared, rows_per_inv) in shapes {
        let Some(c) = ctx_with(|s| {
            s.lane_rows = rows_per_inv;
            s.tiled_from = None;
            if let Some((tpr, wg)) = shared {
                s.reduce = Reduce::Shared;
                s.tpr = tpr;
                s.matvec_wg = wg;
            }
        }) else {
            return;
        };
        for f in QUANTS {
            let (rows, cols) = if is_k(f) { (600, 512) } else { (1000, 896) };
            linear_case(&c, f, rows, cols, 1, true);
            linear_case(&c, f, rows, cols, 9, false);
        }
    }
}

/// Prefill of every type with the given choice of the tiled matmul (see `Shapes::tiled_from`: Some(2)
/// for every call of several tokens, None never).
fn prefill_all_types(tiled_from: Option<u32>) {
    let Some(c) = ctx_with(|s| s.tiled_from = tiled_from) else {
        return;
    };
    for f in QUANTS {
        let (rows, cols) = if is_k(f) { (256, 512) } else { (896, 896) };
        for n in [7, 33] {
            linear_case(&c, f, rows, cols, n, false);
        }
        if is_k(f) {
            linear_case(&c, f, 896, 4864, 7, false);
        } else {
            linear_case(&c, f, 1000, 896, 9, true);
        }
    }
}

/// Prefill through matvec over blocks of 8 tokens (CPU devices), with a partial last block.
#[test]
fn prefill_token_blocks_all_types() {
    prefill_all_types(None);
}

/// Prefill through the tiled matmul (real GPUs).
#[test]
fn prefill_tiled_all_types() {
    prefill_all_types(Some(2));
}

/// The Q8_0 LM head at its real shape, 151936 x 896: 153 MB, more than lavapipe's 128 MiB binding
/// limit, so it is split in chunks. 2000 random rows (and the first and last rows of every chunk) are
/// compared with the reference.
#[test]
fn matvec_q8_0_lm_head_real_shape() {
    let Some(c) = ctx_with(|_| {}) else { return };
    let f = QuantType::Q8_0;
    let (rows, cols) = (151936, 896);
    let mut rng = Rng::new(42);
    // Quantize row by row: the f32 matrix would take 544 MB.
    let mut bytes = Vec::with_capacity(rows * gpu_row_bytes(f, cols));
    for _ in 0..rows {
        let row = rng.vec(cols, 0.5);
        let words = glint::quant::repack_for_gpu(f, &glint::quant::quantize(f, &row));
        bytes.extend_from_slice(bytemuck::cast_slice(&words));
    }
    let row_bytes = gpu_row_bytes(f, cols);
    let m = c.upload(f, rows, cols, bytes.clone(), u64::MAX);
    if bytes.len() as u64 > c.gpu.caps.max_storage_binding {
        assert!(
            m.chunks.len() > 1,
            "a matrix over the binding limit is split"
        );
    }
    let mut sample: Vec<usize> = (0..2000)
        .map(|_| (rng.next_u64() % rows as u64) as usize)
        .collect();
    for ch in &m.chunks {
        sample.extend([ch.row_start, ch.row_start + ch.rows - 1]);
    }
    let x = rng.vec(cols, 1.0);
    let lin = Linear { w: m, b: None };
    let xb = c.buf(&x);
    let yb = c.gpu.storage("logits", (rows * 4) as u64).unwrap();
    let mut g = c.graph();
    g.linear(&lin, &xb, &yb);
    run(&c.gpu, &g.finish().unwrap(), &c.step, 1, 0);
    let got = c.read(&yb, rows);
    for n in sample {
        let w = r::decode_weights(f, &bytes[n * row_bytes..(n + 1) * row_bytes]);
        let want = r::linear(&w, cols, &x, None, None)[0];
        check_output("Q8_0 LM head", 0, n, got[n], want, &w, &x);
    }
}

/// Embedding rows of quantized tables split across bindings: the GPU output is the dequantized row,
/// bit for bit (it decodes each element with the reference's operations, in the same order).
#[test]
fn embed_quant_rows_bit_exact() {
    let Some(c) = ctx_with(|_| {}) else { return };
    for f in QUANTS {
        // Q5_0 and Q8_0 are the real GGUF's embedding / LM head; the K-quants need 256-multiples.
        let cols = if is_k(f) { 1024 } else { 896 };
        let rows = 1000;
        let mut rng = Rng::new(7 + f.ggml_id() as u64);
        let (m, seen) = c.matrix(
            &mut rng,
            f,
            rows,
            cols,
            (300 * gpu_row_bytes(f, cols)) as u64,
        );
        assert_eq!(m.chunks.len(), 4);
        let tokens: Vec<u32> = vec![0, 299, 300, 999, 512, 7, 600, 899, 900];
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
        let got = c.read(&out, tokens.len() * cols);
        let want = r::embed(&seen, cols, &tokens);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits(),
                "embed {}: token {} element {}: gpu {a:e} ({:#010x}) vs reference {b:e} ({:#010x})",
                f.name(),
                tokens[i / cols],
                i % cols,
                a.to_bits(),
                b.to_bits()
            );
        }
    }
}

/// Wall-clock per matvec dispatch (submit + blocking poll) for every format at 4864 x 896, and at
/// 896 x 4864 (the K-quants' shape): decode (one token) and, with matvec over blocks of 8 tokens, an
/// 8-token prefill. The formats take turns, round after round, and the fastest and the median round are
/// printed (the machine may be shared: the minimum is the steadier figure). Printed, never asserted:
/// `-- --nocapture` to see it. GLINT_TIMING_ITERS=n rounds (default 5); GLINT_QUANT_ROWS=r overrides
/// Shapes::lane_rows.
#[test]
fn matvec_timing_by_format() {
    let lane_rows: Option<u32> = std::env::var("GLINT_QUANT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok());
    let Some(c) = ctx_with(|s| {
        s.tiled_from = None;
        if let Some(r) = lane_rows {
            s.lane_rows = r;
        }
    }) else {
        return;
    };
    let iters: usize = std::env::var("GLINT_TIMING_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!(
        "matvec, ms per dispatch, min / median of {iters} ({}, lane_rows {})",
        c.gpu.describe(),
        c.k.shapes.lane_rows
    );
    for n in [1, 8] {
        for (rows, cols) in [(4864, 896), (896, 4864)] {
            let mut rng = Rng::new(9);
            let x = rng.vec(n * cols, 1.0);
            let (xb, yb) = (
                c.buf(&x),
                c.gpu.storage("y", (n * rows * 4) as u64).unwrap(),
            );
            let mut plans: Vec<_> = QuantType::ALL
                .into_iter()
                .filter(|f| cols % f.block_size() == 0)
                .map(|f| {
                    let (m, _) = c.matrix(&mut rng, f, rows, cols, u64::MAX);
                    let lin = Linear { w: m, b: None };
                    let mut g = c.graph();
                    g.linear(&lin, &xb, &yb);
                    let plan = g.finish().unwrap();
                    // Warm-up: the driver compiles on first use.
                    run(&c.gpu, &plan, &c.step, n as u32, 0);
                    (f, plan, Vec::new())
                })
                .collect();
            for _ in 0..iters {
                for (_, plan, times) in &mut plans {
                    let t = Instant::now();
                    run(&c.gpu, plan, &c.step, n as u32, 0);
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            let mut line = format!("{n} token(s) {rows}x{cols}:");
            for (f, _, mut times) in plans {
                times.sort_by(f64::total_cmp);
                let (min, med) = (times[0], times[times.len() / 2]);
                line += &format!(" {} {min:.2}/{med:.2}", f.name());
            }
            println!("{line}");
        }
    }
}

/// A GGUF's padded formats reach the GPU in ggml's block layout and are repacked as they are written
/// into the buffers (HostLayout::File): every upload path (chunked, stacked with a second format,
/// interleaved) must leave exactly the bytes of the matrix repacked on the host first.
#[test]
fn file_layout_uploads_the_gpu_layout() {
    use glint::weights::{HostLayout, HostMatrix, Matrix};
    use std::borrow::Cow;
    let Some(c) = ctx_with(|_| {}) else {
        return;
    };
    let bytes_of = |m: &Matrix| -> Vec<u8> {
        let row_bytes = gpu_row_bytes(m.format, m.cols);
        let mut out = Vec::new();
        for ch in &m.chunks {
            let n = (ch.rows * row_bytes) as u64;
            out.extend(
                c.gpu
                    .read_buffer(&ch.buffer, 0, n.next_multiple_of(16))
                    .unwrap(),
            );
            out.truncate(out.len() - (n.next_multiple_of(16) - n) as usize);
        }
        out
    };
    let mut rng = Rng::new(17);
    let cols = 512;
    let pair = |rng: &mut Rng, f: QuantType, rows: usize| {
        let file = glint::quant::quantize(f, &rng.vec(rows * cols, 0.5));
        let gpu = glint::quant::repack_for_gpu_bytes(f, &file).into_owned();
        let host = |data: Vec<u8>, layout| HostMatrix {
            name: format!("w.{}", f.name()),
            format: f,
            rows,
            cols,
            data: Cow::Owned(data),
            layout,
        };
        (host(file, HostLayout::File), host(gpu, HostLayout::Gpu))
    };
    for f in [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q5_0,
        QuantType::Q6_K,
    ] {
        let rows = 96;
        let (file, gpu) = pair(&mut rng, f, rows);
        // Three chunks of 32 rows.
        let chunk = (32 * gpu_row_bytes(f, cols)) as u64;
        let a = Matrix::upload_chunked(&c.gpu, &file, chunk).unwrap();
        let b = Matrix::upload_chunked(&c.gpu, &gpu, chunk).unwrap();
        assert_eq!(a.chunks.len(), 3, "{f:?}");
        assert_eq!(bytes_of(&a), bytes_of(&b), "{f:?} chunked");
        assert_eq!(
            bytes_of(&b),
            gpu.data.as_ref(),
            "{f:?} chunked, host layout"
        );
        let (file2, gpu2) = pair(&mut rng, f, rows);
        let a = Matrix::upload_interleaved(&c.gpu, &file, &file2)
            .unwrap()
            .unwrap();
        let b = Matrix::upload_interleaved(&c.gpu, &gpu, &gpu2)
            .unwrap()
            .unwrap();
        assert_eq!(bytes_of(&a), bytes_of(&b), "{f:?} interleaved");
        // Stacked after rows of another padded format (the second run from a multiple of 4 words).
        let (first, first_gpu) = pair(&mut rng, QuantType::Q5_0, 64);
        let align = c.k.shapes.segment_align();
        let a = Matrix::upload_stacked(&c.gpu, &[first, file], align)
            .unwrap()
            .unwrap();
        let b = Matrix::upload_stacked(&c.gpu, &[first_gpu, gpu], align)
            .unwrap()
            .unwrap();
        assert_eq!(a.second, b.second, "{f:?}");
        let read = |m: &Matrix| {
            let n = m.bytes();
            c.gpu
                .read_buffer(&m.chunks[0].buffer, 0, n.next_multiple_of(16))
                .unwrap()
        };
        assert_eq!(read(&a), read(&b), "{f:?} stacked");
    }
    // A format whose blocks need no padding is never in the file layout.
    let (mut file, _) = pair(&mut rng, QuantType::Q4_K, 32);
    file.format = QuantType::Q4_K;
    let e = Matrix::upload_chunked(&c.gpu, &file, u64::MAX)
        .err()
        .expect("an error");
    assert!(e.to_string().contains("File layout"), "{e}");
}
