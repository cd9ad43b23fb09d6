// Tiled matrix-matrix product for prefill (n_tokens > 1):
//   Y[m, row_offset + n] = acc + bias[row_offset + n] + sum_k X[m, k] * W[n, k]     for m < n_tokens, n < rows
// acc is Y's previous value when bit 1 of flags is set (the fused residual add), else 0.
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 step  uniform  Step                   (n_tokens used)
//   2 w     storage  array<u32>  [rows, cols] of this chunk, format WFMT (see matvec.wgsl; quantized: the
//                                GPU block layout of engine/src/quant.rs)
//   3 x     storage  array<f32>  [n_tokens, cols]
//   4 bias  storage  array<f32>  [row_offset + rows]   (read only when p.flags & 1)
//   5 y     storage  array<f32>  [n_tokens, y_stride]: row n at column y_offset + row_offset + n
// Workgroup: 16 x 16 = 256 invocations computing a BM x BN = 32 x 32 tile of Y, 2 x 2 outputs each;
// X and W tiles of BK = 32 along k are staged in workgroup memory (W decoded to f32 on the way in).
// Grid: (ceil(rows / 32), ceil(n_tokens / 32)). WFMT: 0 = f32, 1 = f16, 2 = bf16, 3..10 = Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (glint::weights::wfmt). Quantized elements are decoded one by one with
// dq_elem from dequant.wgsl (appended at pipeline creation): simple, and the cost is shared by the 32
// tokens of the tile.

override WFMT: u32 = 0u;

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> xs: array<f32, 1024>;   // [BM][BK]
var<workgroup> ws: array<f32, 1024>;   // [BN][BK]

fn w_at(i: u32) -> f32 {
    switch WFMT {
        case WFMT_F16: {
            return unpack2x16float(w[i / 2u])[i % 2u];
        }
        case WFMT_BF16: {
            let v = w[i / 2u];
            return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i % 2u) == 1u));
        }
        case WFMT_F32: {
            return bitcast<f32>(w[i]);
        }
        default: {
            return dq_elem(i);
        }
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    let m_count = step.n;
    let tx = tid % 16u;
    let ty = tid / 16u;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var k0 = 0u; k0 < p.cols; k0 = k0 + BK) {
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = tid + e * 256u;
            let rr = idx / BK;
            let kk = k0 + idx % BK;
            var xv = 0.0;
            if m0 + rr < m_count && kk < p.cols {
                xv = x[(m0 + rr) * p.cols + kk];
            }
            xs[idx] = xv;
            var wv = 0.0;
            if n0 + rr < p.rows && kk < p.cols {
                wv = w_at((n0 + rr) * p.cols + kk);
            }
            ws[idx] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let a0 = xs[(2u * ty) * BK + kk];
            let a1 = xs[(2u * ty + 1u) * BK + kk];
            let b0 = ws[(2u * tx) * BK + kk];
            let b1 = ws[(2u * tx + 1u) * BK + kk];
            acc[0] = acc[0] + a0 * b0;
            acc[1] = acc[1] + a0 * b1;
            acc[2] = acc[2] + a1 * b0;
            acc[3] = acc[3] + a1 * b1;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i = i + 1u) {
        for (var j = 0u; j < 2u; j = j + 1u) {
            let m = m0 + 2u * ty + i;
            let n = n0 + 2u * tx + j;
            if m < m_count && n < p.rows {
                let o = m * p.y_stride + p.y_offset + p.row_offset + n;
                var v = acc[2u * i + j];
                if (p.flags & LINEAR_BIAS) != 0u {
                    v = v + bias[p.row_offset + n];
                }
                if (p.flags & LINEAR_ACCUMULATE) != 0u {
                    v = v + y[o];
                }
                y[o] = v;
            }
        }
    }
}
