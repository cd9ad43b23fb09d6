// RMSNorm (Qwen2 / Llama): y[t, i] = w[i] * x[r(t), i] / sqrt(mean_i(x[r(t), :]^2) + eps), all in f32.
// `rmsnorm`: r(t) = t, for every token row of the call. `rmsnorm_gather`: r(t) = rows[t], for the call's
// outputs only (the final norm runs on the rows whose logits are wanted, and y is packed by output).
//
// Bindings (group 0):
//   0 p     uniform  NormParams
//   1 step  uniform  Step                 (n: tokens, or outputs for rmsnorm_gather)
//   2 x     storage  array<f32>  [n_tokens, cols]
//   3 w     storage  array<f32>  [cols]
//   4 y     storage  array<f32>  [step.n, cols]   (may not alias x)
//   5 rows  storage  array<u32>  [step.n]         rmsnorm_gather only: the token row of each output
// Workgroup: TPR invocations, one row per workgroup; grid (1, step.n, 1).
// Shared structs come from the prelude (engine/src/uniforms.rs). Needs `row_sum` from
// reduce_subgroup.wgsl or reduce_shared.wgsl, appended at pipeline creation.

override TPR: u32 = 64u;

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> rows: array<u32>;

// Normalise x's row `src` into y's row `dst`.
fn norm_row(src: u32, dst: u32, lid: u32) {
    let xb = src * p.cols;
    var ss = 0.0;
    for (var i = lid; i < p.cols; i = i + TPR) {
        let v = x[xb + i];
        ss = ss + v * v;
    }
    let total = row_sum(ss, lid);
    let inv = inverseSqrt(total / f32(p.cols) + p.eps);
    let yb = dst * p.cols;
    for (var i = lid; i < p.cols; i = i + TPR) {
        y[yb + i] = w[i] * (x[xb + i] * inv);
    }
}

@compute @workgroup_size(TPR)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if wid.y >= step.n {
        return;
    }
    norm_row(wid.y, wid.y, lid);
}

@compute @workgroup_size(TPR)
fn rmsnorm_gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if wid.y >= step.n {
        return;
    }
    norm_row(rows[wid.y], wid.y, lid);
}
