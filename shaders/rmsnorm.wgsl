// RMSNorm (Qwen2 / LLaMA): y[t, i] = w[i] * x[t, i] / sqrt(mean_i(x[t, :]^2) + eps), all in f32.
//
// Bindings (group 0):
//   0 p     uniform  NormParams
//   1 step  uniform  Step                 (n_tokens used)
//   2 x     storage  array<f32>  [n_tokens, cols]
//   3 w     storage  array<f32>  [cols]
//   4 y     storage  array<f32>  [n_tokens, cols]   (may not alias x)
// Workgroup: TPR invocations, one row (token) per workgroup; grid (1, n_tokens, 1).
// Needs `row_sum` from reduce_subgroup.wgsl or reduce_shared.wgsl, appended at pipeline creation.

struct NormParams {
    cols: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

struct Step {
    n_tokens: u32,
    pos0: u32,
    _pad0: u32,
    _pad1: u32,
}

override TPR: u32 = 64u;

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(TPR)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    if t >= step.n_tokens {
        return;
    }
    let base = t * p.cols;
    var ss = 0.0;
    for (var i = lid; i < p.cols; i = i + TPR) {
        let v = x[base + i];
        ss = ss + v * v;
    }
    let total = row_sum(ss, lid);
    let inv = inverseSqrt(total / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i = i + TPR) {
        y[base + i] = w[i] * (x[base + i] * inv);
    }
}
