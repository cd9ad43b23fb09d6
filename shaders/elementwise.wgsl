// SiLU-gated linear unit of the MLP, in place: gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + e^-g).
//
// Bindings (group 0):
//   0 p     uniform  EwParams
//   1 step  uniform  Step                  (n: tokens)
//   2 gate  storage  array<f32>  [n_tokens, cols]   (read_write: overwritten with the result)
//   3 up    storage  array<f32>  [n_tokens, cols]
// Workgroup: 256 invocations along cols; grid (ceil(cols / 256), n_tokens).
// Shared structs come from the prelude (engine/src/uniforms.rs).

@group(0) @binding(0) var<uniform> p: EwParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;

@compute @workgroup_size(256)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.y >= step.n || gid.x >= p.cols {
        return;
    }
    let i = gid.y * p.cols + gid.x;
    let g = gate[i];
    gate[i] = g / (1.0 + exp(-g)) * up[i];
}
