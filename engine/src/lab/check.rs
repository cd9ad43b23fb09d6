//! The validation tolerances of the test suite (tests/kernels.rs): f32 accumulation order differs
//! between GPU and reference, so sums are compared with a bound proportional to the sum of |terms|,
//! elementwise kernels with a relative (or absolute) bound.

/// Worst error as a fraction of the tolerance, or the first output out of tolerance.
pub type Check = std::result::Result<f64, String>;

/// |gpu - ref| <= 1e-5 * sum_k |w_k x_k| + 1e-6 for every output of a linear layer: `got` and `want`
/// are [n_tok, rows] outputs computed from the token rows `x` [n_tok, cols] and the weights `w` [rows,
/// cols] (the values the GPU layout decodes to).
pub fn linear(got: &[f32], want: &[f32], w: &[f32], cols: usize, x: &[f32]) -> Check {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
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

/// |gpu - ref| <= abs + rel * (1 + |ref|) elementwise (rel 0: the absolute bound `abs`; both 0: exact).
pub fn close(got: &[f32], want: &[f32], rel: f32, abs: f32) -> Check {
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
        if tol > 0.0 {
            worst = worst.max((err / tol) as f64);
        }
    }
    Ok(worst)
}

/// Exact equality of ids.
pub fn ids(got: &[u32], want: &[u32]) -> Check {
    if got.len() != want.len() {
        return Err(format!("{} ids, expected {}", got.len(), want.len()));
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(0.0),
        Some(i) => Err(format!("id {i}: gpu {} vs reference {}", got[i], want[i])),
    }
}
