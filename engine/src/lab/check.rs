//! The validation tolerances of the test suite (tests/kernels.rs): f32 accumulation order differs
//! between GPU and reference, so sums are compared with a bound proportional to the sum of |terms|,
//! elementwise kernels with a relative (or absolute) bound.

/// Worst error as a fraction of the tolerance, or the first output out of tolerance.
pub type Check = std::result::Result<f64, String>;

/// |gpu - ref| <= 1e-5 * sum_k |w_k x_k| + 1e-6 for every output of a linear layer: `got` and `want`
/// are [n_tok, rows] outputs computed from the token rows `x` [n_tok, cols] and the weights `w` [rows,
/// cols] (the values the GPU layout decodes to).
pub fn linear(got: &[f32], want: &[f32], w: &[f32], cols: usize, x: &[f32]) -> Check {
    let rows = w.len() / cols;
    within(got, want, "reference", |i| {
        let (t, n) = (i / rows, i % rows);
        let (wr, xr) = (&w[n * cols..(n + 1) * cols], &x[t * cols..(t + 1) * cols]);
        let l1: f32 = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
        1e-5 * l1 + 1e-6
    })
}

/// Every output within its own tolerance `tol(i)`; `what` names the reference in the error.
fn within(got: &[f32], want: &[f32], what: &str, tol: impl Fn(usize) -> f32) -> Check {
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    let mut worst = 0f64;
    for (i, (g, e)) in got.iter().zip(want).enumerate() {
        let tol = tol(i);
        let err = (g - e).abs();
        if err.is_nan() || err > tol {
            return Err(format!(
                "output {i}: gpu {g} vs {what} {e} (tolerance {tol})"
            ));
        }
        worst = worst.max((err / tol) as f64);
    }
    Ok(worst)
}

/// The int8 matvec's bound for one output (tests/kernels_int8.rs), against the reference on the x it
/// reads (`reference::q8_input`: x8, whose 32-element blocks have steps `ds`): the rule of [`linear`] on
/// w . x8, plus two steps of one element (2 * max over blocks of max |w| * d), where the GPU's 1 / d
/// rounds an element to the other level. `w`, `x8`: one row [cols]; `ds`: [cols / 32].
pub fn int8_tolerance(w: &[f32], x8: &[f32], ds: &[f32]) -> f32 {
    let l1: f32 = w.iter().zip(x8).map(|(a, b)| (a * b).abs()).sum();
    let flips = w
        .chunks(32)
        .zip(ds)
        .map(|(b, d)| b.iter().fold(0f32, |m, v| m.max(v.abs())) * d)
        .fold(0f32, f32::max);
    1e-5 * l1 + 1e-6 + 2.0 * flips
}

/// The quantization's own bound: each element of x8 is within half its block's step of x, so w . x8 is
/// within sum over blocks of d / 2 * sum |w| of w . x (times 1.01 for the sums' rounding).
pub fn int8_quantization(w: &[f32], ds: &[f32]) -> f32 {
    1.01 * w
        .chunks(32)
        .zip(ds)
        .map(|(b, d)| d / 2.0 * b.iter().map(|v| v.abs()).sum::<f32>())
        .sum::<f32>()
}

/// [`linear`] for the int8 matvec: `want` computed from x8 [n_tok, cols] (the rounded x the kernel
/// reads, block steps `ds` [n_tok, cols / 32]), each output within [`int8_tolerance`].
pub fn linear_int8(
    got: &[f32],
    want: &[f32],
    w: &[f32],
    cols: usize,
    (x8, ds): (&[f32], &[f32]),
) -> Check {
    let rows = w.len() / cols;
    within(got, want, "int8 reference", |i| {
        let (t, n) = (i / rows, i % rows);
        int8_tolerance(
            &w[n * cols..(n + 1) * cols],
            &x8[t * cols..(t + 1) * cols],
            &ds[t * cols / 32..(t + 1) * cols / 32],
        )
    })
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
