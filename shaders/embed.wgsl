// Token embedding lookup: out[t, :] = table[tokens[t], :] as f32.
//
// A large table is split by rows across several buffers (one binding each, under the device's
// max_storage_buffer_binding_size); this kernel is dispatched once per chunk and each chunk writes only
// the tokens whose id falls in its rows [row_start, row_start + rows).
//
// Bindings (group 0):
//   0 p       uniform  EmbedParams
//   1 step    uniform  Step                      (n_tokens used)
//   2 tokens  storage  array<u32>   [n_tokens]
//   3 w       storage  array<u32>   [rows, cols] of this chunk in weight format WFMT (f32: 1 word/elem; f16,
//                                   bf16: 2 elems/word; quantized: the GPU block layout of engine/src/quant.rs)
//   4 out     storage  array<f32>   [n_tokens, cols]
// Workgroup: 64 invocations along cols, one element each; grid (ceil(cols / 64), n_tokens).
// WFMT: 0 = f32, 1 = f16, 2 = bf16, 3..10 = Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (glint::weights::wfmt).
// Elements are decoded by w_elem from dequant.wgsl (appended at pipeline creation), with the operations
// of the CPU reference: the output equals the dequantized row bit for bit.

override WFMT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: EmbedParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;

// Word i of the weights (what dequant.wgsl's decoders read).
fn wd(i: u32) -> u32 {
    return w[i];
}

@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if t >= step.n || c >= p.cols {
        return;
    }
    let id = tokens[t];
    if id < p.row_start || id >= p.row_start + p.rows {
        return;
    }
    out[t * p.cols + c] = w_elem(WFMT, 0u, (id - p.row_start) * p.cols + c);
}
