//! shaders/logprobs.wgsl against its reference (glint::reference::logprobs, f64): max, log-sum-exp and
//! every log-probability within TOL, argmax and top-k ids exact (ties: lowest id first), on a
//! Qwen2-sized vocabulary and on small rows with ties, -inf logits, ids >= n_valid and k > the finite
//! candidates, for each workgroup size.
//!
//! Tolerance: the kernel sums exp(x - max) in f32 (in each invocation's strided order, then in groups),
//! so ln(sum) carries a relative error of a few f32 ulps times the terms' spread; with |logits| <= 30
//! over 151936 ids, 2e-5 absolute on log-probabilities (1e-6 relative to a log-sum-exp near 30) holds
//! with a margin and is far below what perplexity needs (a 1e-4 error on every NLL moves PPL by 0.01%).

mod common;
use common::{gpu, Rng};
use glint::logprobs::{LogprobKernel, LogprobSpec, RowLogprobs, MAX_TOP_K};
use glint::reference;

const TOL: f32 = 2e-5;

fn close(what: &str, got: f32, want: f32) {
    let ok = if want.is_finite() {
        (got - want).abs() <= TOL
    } else {
        got == want
    };
    assert!(ok, "{what}: gpu {got} vs reference {want}");
}

fn compare(label: &str, got: &[RowLogprobs], want: &[RowLogprobs]) {
    assert_eq!(got.len(), want.len(), "{label}: rows");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        let l = format!("{label} row {r}");
        assert_eq!(g.max_logit, w.max_logit, "{l}: max (an input value, exact)");
        close(&format!("{l} lse"), g.log_sum_exp, w.log_sum_exp);
        assert_eq!(g.argmax, w.argmax, "{l}: argmax");
        assert_eq!(g.requested.len(), w.requested.len(), "{l}: requested");
        for (j, (a, b)) in g.requested.iter().zip(&w.requested).enumerate() {
            close(&format!("{l} requested {j}"), *a, *b);
        }
        let ids = |v: &RowLogprobs| v.top.iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(g), ids(w), "{l}: top-k ids");
        for (t, (a, b)) in g.top.iter().zip(&w.top).enumerate() {
            close(&format!("{l} top {t}"), a.logprob, b.logprob);
        }
    }
}

struct Case {
    label: &'static str,
    logits: Vec<f32>,
    row_stride: usize,
    n_valid: usize,
    req: Vec<u32>,
    n_req: usize,
    top_k: usize,
}

fn run_case(g: &glint::gpu::Gpu, k: &LogprobKernel, c: &Case) {
    let n_rows = c.logits.len() / c.row_stride;
    let buf = g
        .storage_init("logits", bytemuck::cast_slice(&c.logits))
        .unwrap();
    let spec = LogprobSpec {
        n_valid: c.n_valid,
        n_req: c.n_req,
        top_k: c.top_k,
    };
    let got = k.run(g, &buf, c.row_stride, n_rows, &spec, &c.req).unwrap();
    let want = reference::logprobs(&c.logits, c.row_stride, c.n_valid, &c.req, c.n_req, c.top_k);
    compare(&format!("{} (wg {})", c.label, k.wg()), &got, &want);
}

fn cases() -> Vec<Case> {
    let mut rng = Rng::new(10);
    let mut v = Vec::new();
    // Qwen2's vocabulary, 3 rows: logits spread like a model's (a few large, most near 0), the top-32
    // and requested ids spread over the row.
    let vocab = 151936;
    let mut logits = rng.vec(3 * vocab, 4.0);
    for r in 0..3 {
        for j in 0..40 {
            logits[r * vocab + (j * 3779 + r * 17) % vocab] = 20.0 + rng.f32() * 10.0;
        }
    }
    let req: Vec<u32> = (0..3 * 33)
        .map(|i| ((i * 4603 + 7) % vocab) as u32)
        .collect();
    v.push(Case {
        label: "vocab 151936, k 32",
        logits: logits.clone(),
        row_stride: vocab,
        n_valid: vocab,
        req: req.clone(),
        n_req: 33,
        top_k: 32,
    });
    // The same rows for perplexity: one requested id, no top-k; and with padding ids excluded.
    v.push(Case {
        label: "vocab 151936, k 0",
        logits: logits.clone(),
        row_stride: vocab,
        n_valid: vocab,
        req: (0..3).map(|i| (i * 50001) as u32).collect(),
        n_req: 1,
        top_k: 0,
    });
    v.push(Case {
        label: "n_valid 151665 of 151936, k 20",
        logits,
        row_stride: vocab,
        n_valid: 151665,
        req: vec![3, 151700, 151664, 5, 151935, 9],
        n_req: 2,
        top_k: 20,
    });
    // Small rows: ties (lowest id first), -inf logits, fewer finite candidates than k, ids >= n_valid.
    let ninf = f32::NEG_INFINITY;
    let small = vec![
        1.0, 3.0, 3.0, -2.0, 3.0, ninf, 0.5, 3.0, 9.0, 9.0, // row 0: ties at 3.0, n_valid 8
        ninf, ninf, 2.0, ninf, ninf, ninf, -1.0, ninf, 0.0,
        0.0, // row 1: two finite below n_valid
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // row 2: all equal
    ];
    v.push(Case {
        label: "ties, -inf, k > candidates",
        logits: small.clone(),
        row_stride: 10,
        n_valid: 8,
        req: vec![1, 8, 5, 12, 2, 9, 0, 7, 3],
        n_req: 3,
        top_k: 5,
    });
    v.push(Case {
        label: "ties, k 32 over 8 ids",
        logits: small,
        row_stride: 10,
        n_valid: 8,
        req: vec![],
        n_req: 0,
        top_k: MAX_TOP_K,
    });
    // Many short rows (more rows than invocations), n_valid below the workgroup size.
    let rows = 300;
    v.push(Case {
        label: "300 rows of 50",
        logits: rng.vec(rows * 50, 8.0),
        row_stride: 50,
        n_valid: 50,
        req: (0..rows as u32).map(|r| r % 50).collect(),
        n_req: 1,
        top_k: 7,
    });
    v
}

#[test]
fn logprobs_match_reference() {
    let Some(g) = gpu() else { return };
    let cases = cases();
    for wg in [256, 64, 16] {
        let k = LogprobKernel::with_wg(&g, 300, 33, wg).unwrap();
        for c in &cases {
            run_case(&g, &k, c);
        }
    }
}

#[test]
fn logprobs_reject_bad_shapes() {
    let Some(g) = gpu() else { return };
    let k = LogprobKernel::new(&g, 4, 2).unwrap();
    let buf = g.storage("logits", 4 * 10 * 4).unwrap();
    let spec = |n_valid, n_req, top_k| LogprobSpec {
        n_valid,
        n_req,
        top_k,
    };
    let err = |r: glint::Result<Vec<RowLogprobs>>| r.unwrap_err().to_string();
    assert!(err(k.run(&g, &buf, 10, 5, &spec(10, 1, 0), &[0; 5])).contains("5 rows"));
    assert!(err(k.run(&g, &buf, 10, 2, &spec(10, 3, 0), &[0; 6])).contains("3 requested"));
    assert!(err(k.run(&g, &buf, 10, 2, &spec(10, 1, 33), &[0; 2])).contains("top_k 33"));
    assert!(err(k.run(&g, &buf, 10, 2, &spec(11, 1, 0), &[0; 2])).contains("n_valid 11"));
    assert!(err(k.run(&g, &buf, 10, 2, &spec(10, 1, 0), &[0; 3])).contains("3 requested ids"));
    assert!(err(k.run(&g, &buf, 20, 4, &spec(10, 1, 0), &[0; 4])).contains("exceed"));
    assert!(LogprobKernel::with_wg(&g, 4, 2, 24).is_err());
}
