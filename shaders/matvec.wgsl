// Matrix-vector product, batched over a few tokens:
//   y[t, row_offset + r] = acc + bias[row_offset + r] + W[r, :] . x[t, :]      for r < rows, t < n_tokens
// acc is y's previous value when bit 1 of flags is set (the fused residual add), else 0.
// Decode runs it with TOK = 1. On devices where barriers are costly (CPU rasterisers such as lavapipe)
// prefill runs it with TOK = 8 instead of the tiled matmul: each weight load then serves 8 tokens.
// Float weight formats; the quantized formats live in matvec_quant.wgsl.
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 step  uniform  Step                   (n_tokens)
//   2 w     storage  array<vec4<u32>>  [rows, cols] of this chunk, format WFMT:
//                                     f32: 1 word per element; f16 / bf16: 2 elements per word, element
//                                     2i in the low half. Rows are read 8 elements at a time (cols % 8 == 0).
//   3 x     storage  array<vec4<f32>>  [n_tokens, cols]
//   4 bias  storage  array<f32>        [row_offset + rows]   (read only when p.flags & 1)
//   5 y     storage  array<f32>        [n_tokens, y_stride]: row r at column y_offset + row_offset + r
// Workgroup: WG invocations = WG / TPR rows x TPR invocations per row; each invocation strides over the
// row's 8-element groups, then `row_sum` combines the TPR partial sums. Grid: (row groups, laid out 2-D
// past 65535, ceil(n_tokens / TOK)). WFMT: 0 = f32, 1 = f16, 2 = bf16.
// Needs `row_sum` from reduce_subgroup.wgsl or reduce_shared.wgsl, appended at pipeline creation.

override WFMT: u32 = 0u;
override WG: u32 = 64u;
override TPR: u32 = 8u;
override TOK: u32 = 1u;   // tokens per workgroup, at most 8

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

struct W8 {
    a: vec4<f32>,   // elements 0..4 of the group
    b: vec4<f32>,   // elements 4..8
}

// Weights 8g .. 8g + 8 of row r, as f32.
fn load8(r: u32, g: u32) -> W8 {
    var o: W8;
    switch WFMT {
        case WFMT_F16: {
            let v = w[r * (p.cols / 8u) + g];
            o.a = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
            o.b = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
        }
        case WFMT_BF16: {
            let v = w[r * (p.cols / 8u) + g];
            let lo = bitcast<vec4<f32>>(v << vec4<u32>(16u));           // elements 0, 2, 4, 6
            let hi = bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u));    // elements 1, 3, 5, 7
            o.a = vec4<f32>(lo.x, hi.x, lo.y, hi.y);
            o.b = vec4<f32>(lo.z, hi.z, lo.w, hi.w);
        }
        default: {
            let base = r * (p.cols / 4u) + 2u * g;
            o.a = bitcast<vec4<f32>>(w[base]);
            o.b = bitcast<vec4<f32>>(w[base + 1u]);
        }
    }
    return o;
}

@compute @workgroup_size(WG)
fn matvec(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let lane = lid % TPR;
    let t0 = wid.z * TOK;
    let n_tok = min(TOK, step.n - min(t0, step.n));
    let xrow = p.cols / 4u;     // vec4s per token row of x
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    if r < p.rows {
        for (var g = lane; g < p.cols / 8u; g = g + TPR) {
            let wv = load8(r, g);
            for (var t = 0u; t < n_tok; t = t + 1u) {
                let xi = (t0 + t) * xrow + 2u * g;
                acc[t] = acc[t] + dot(wv.a, x[xi]) + dot(wv.b, x[xi + 1u]);
            }
        }
    }
    for (var t = 0u; t < TOK; t = t + 1u) {
        let s = row_sum(acc[t], lid);
        if r < p.rows && lane == 0u && t < n_tok {
            let o = (t0 + t) * p.y_stride + p.y_offset + p.row_offset + r;
            var v = s;
            if (p.flags & LINEAR_BIAS) != 0u {
                v = v + bias[p.row_offset + r];
            }
            if (p.flags & LINEAR_ACCUMULATE) != 0u {
                v = v + y[o];
            }
            y[o] = v;
        }
    }
}
