// Tiled matrix-matrix product for calls of many tokens on GPUs, with the contract and fusions of
// matvec.wgsl / matvec_quant.wgsl:
//   Y[m, y_offset + row_offset + n] = acc + bias[row_offset + n] + sum_k Xin[m, k] * W[n, k]
// for m < n (tokens, or outputs), n < rows. acc is Y's previous value with LINEAR_ACCUMULATE, else 0;
// the bias with LINEAR_BIAS. Xin is X's row m, or: GATHER X's row rows[m]; NORM rmsnorm(X row) * g (the
// tile's 32 rows' 1 / rms computed first, x scaled by g as it is staged); GLU rows in (gate, up) pairs
// (each invocation's two adjacent rows), output silu(gate) * up at column (row_offset + n) / 2. Two formats:
// rows from p.split on are in WFMT2 from word p.seg_word (split on a multiple of 32).
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 step  uniform  Step                   (n: tokens, or outputs)
//   2 w     storage  array<u32>  [rows, cols] of this chunk, any format (w_elem of dequant.wgsl)
//   3 x     storage  array<f32>  [x rows, cols]
//   4 bias  storage  array<f32>  [row_offset + rows]   (read only with LINEAR_BIAS)
//   5 y     storage  array<f32>  [n, y_stride]: row n at column y_offset + row_offset + n (GLU: / 2)
//   6 g     storage  array<f32>  [cols] the norm weight (read only when NORM)
//   7 rows  storage  array<u32>  [n] X's row of each output (read only when GATHER)
// Workgroup: 16 x 16 = 256 invocations computing a BM x BN = 32 x 32 tile of Y, 2 x 2 outputs each;
// X and W tiles of BK = 32 along k are staged in workgroup memory (W decoded to f32 on the way in, one
// element at a time with w_elem: simple, and the cost is shared by the 32 tokens of the tile).
// Grid: (ceil(rows / 32), ceil(n / 32)).
// Shared structs and WFMT_* codes come from the prelude (engine/src/uniforms.rs). Needs dequant.wgsl.

override WFMT: u32 = WFMT_F32;
override WFMT2: u32 = WFMT_F32;
override NORM: bool = false;
override GATHER: bool = false;
override GLU: bool = false;

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;

// Word i of the weights (what dequant.wgsl's decoders read).
fn wd(i: u32) -> u32 {
    return w[i];
}

@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> g: array<f32>;
@group(0) @binding(7) var<storage, read> rows: array<u32>;

var<workgroup> xs: array<f32, 1024>;   // [BM][BK]
var<workgroup> ws: array<f32, 1024>;   // [BN][BK]
var<workgroup> part: array<f32, 256>;  // NORM: partial sums of squares, 8 per tile row
var<workgroup> inv_rms: array<f32, 32>;

// X's row of the tile's token m (m < step.n).
fn x_row(m: u32) -> u32 {
    if GATHER {
        return rows[m];
    }
    return m;
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    let m_count = step.n;
    let tx = tid % 16u;
    let ty = tid / 16u;
    // The tile's weights: format and first word of its segment.
    let seg2 = n0 >= p.split;
    let base = select(0u, p.seg_word, seg2);
    let nrow0 = select(0u, p.split, seg2);
    if NORM {
        // 8 invocations per tile row sum its squares, then one of them finishes.
        let r = tid / 8u;
        var s = 0.0;
        if m0 + r < m_count {
            let xb = x_row(m0 + r) * p.cols;
            for (var k = tid % 8u; k < p.cols; k = k + 8u) {
                let v = x[xb + k];
                s = s + v * v;
            }
        }
        part[tid] = s;
        workgroupBarrier();
        if tid % 8u == 0u {
            var t = 0.0;
            for (var i = 0u; i < 8u; i = i + 1u) {
                t = t + part[tid + i];
            }
            inv_rms[r] = inverseSqrt(t / f32(p.cols) + p.eps);
        }
        workgroupBarrier();
    }
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var k0 = 0u; k0 < p.cols; k0 = k0 + BK) {
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = tid + e * 256u;
            let rr = idx / BK;
            let kk = k0 + idx % BK;
            var xv = 0.0;
            if m0 + rr < m_count && kk < p.cols {
                xv = x[x_row(m0 + rr) * p.cols + kk];
                if NORM {
                    xv = xv * g[kk];
                }
            }
            xs[idx] = xv;
            var wv = 0.0;
            if n0 + rr < p.rows && kk < p.cols {
                // A workgroup's rows are all in one segment: the branch is uniform.
                if seg2 {
                    wv = w_elem(WFMT2, base, (n0 + rr - nrow0) * p.cols + kk);
                } else {
                    wv = w_elem(WFMT, 0u, (n0 + rr) * p.cols + kk);
                }
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
        let m = m0 + 2u * ty + i;
        if m >= m_count {
            continue;
        }
        var scale = 1.0;
        if NORM {
            scale = inv_rms[2u * ty + i];
        }
        if GLU {
            // Columns 2tx (gate) and 2tx + 1 (up) of the tile are one pair.
            let n = n0 + 2u * tx;
            if n + 1u < p.rows {
                let gate = acc[2u * i] * scale;
                let up = acc[2u * i + 1u] * scale;
                let o = m * p.y_stride + p.y_offset + (p.row_offset + n) / 2u;
                y[o] = gate / (1.0 + exp(-gate)) * up;
            }
            continue;
        }
        for (var j = 0u; j < 2u; j = j + 1u) {
            let n = n0 + 2u * tx + j;
            if n < p.rows {
                let o = m * p.y_stride + p.y_offset + p.row_offset + n;
                var v = acc[2u * i + j] * scale;
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
