// Matrix-vector product for decode (one token): y[row_offset + r] = acc + bias[row_offset + r] + W[r, :] . x
// where acc is y's previous value when ACCUMULATE is set (the fused residual add) and 0 otherwise.
// Float weight formats; the quantized formats live in matvec_quant.wgsl.
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 w     storage  array<vec4<u32>>  [rows, cols] of this chunk, format WFMT:
//                                     f32: 1 word per element; f16 / bf16: 2 elements per word, element
//                                     2i in the low half. Rows are read 8 elements at a time (cols % 8 == 0).
//   2 x     storage  array<vec4<f32>>  [cols]
//   3 bias  storage  array<f32>        [row_offset + rows]   (read only when p.flags & 1)
//   4 y     storage  array<f32>        [row_offset + rows]
// Workgroup: WG invocations = WG / TPR rows, TPR invocations per row (each strides over the row's 8-element
// groups, then `row_sum` combines them). Grid: ceil(rows / (WG / TPR)) workgroups, laid out 2-D
// (x up to 65535) when there are more. WFMT: 0 = f32, 1 = f16, 2 = bf16.
// Needs `row_sum` from reduce_subgroup.wgsl or reduce_shared.wgsl, appended at pipeline creation.

struct MatParams {
    rows: u32,
    cols: u32,
    row_offset: u32,
    flags: u32,      // bit 0: add bias, bit 1: accumulate into y
}

override WFMT: u32 = 0u;
override WG: u32 = 64u;
override TPR: u32 = 8u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn bf16_lo(v: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(v << vec4<u32>(16u));
}

fn bf16_hi(v: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u));
}

// Dot product of 8 consecutive weights (group g of row r) with x[8g .. 8g + 8].
fn dot8(r: u32, g: u32) -> f32 {
    let xa = x[2u * g];
    let xb = x[2u * g + 1u];
    switch WFMT {
        case 1u: {
            let v = w[r * (p.cols / 8u) + g];
            let a = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
            let b = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
            return dot(a, xa) + dot(b, xb);
        }
        case 2u: {
            let v = w[r * (p.cols / 8u) + g];
            let lo = bf16_lo(v);   // elements 0, 2, 4, 6
            let hi = bf16_hi(v);   // elements 1, 3, 5, 7
            return dot(vec4<f32>(lo.x, hi.x, lo.y, hi.y), xa) + dot(vec4<f32>(lo.z, hi.z, lo.w, hi.w), xb);
        }
        default: {
            let base = r * (p.cols / 4u) + 2u * g;
            return dot(bitcast<vec4<f32>>(w[base]), xa) + dot(bitcast<vec4<f32>>(w[base + 1u]), xb);
        }
    }
}

@compute @workgroup_size(WG)
fn matvec(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wid.x + wid.y * nwg.x) * (WG / TPR) + lid / TPR;
    let lane = lid % TPR;
    var acc = 0.0;
    if r < p.rows {
        for (var g = lane; g < p.cols / 8u; g = g + TPR) {
            acc = acc + dot8(r, g);
        }
    }
    let s = row_sum(acc, lid);
    if r < p.rows && lane == 0u {
        let o = p.row_offset + r;
        var v = s;
        if (p.flags & 1u) != 0u {
            v = v + bias[o];
        }
        if (p.flags & 2u) != 0u {
            v = v + y[o];
        }
        y[o] = v;
    }
}
