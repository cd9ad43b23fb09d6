// Matrix-vector product over float weights (f32, f16, bf16), batched over a few tokens, with the fusions
// of matvec_quant.wgsl (same contract, same bindings):
//   y[t, y_offset + row_offset + r] = acc + bias[row_offset + r] + W[r, :] . xin[t, :]   for r < rows, t < n
// acc is y's previous value with LINEAR_ACCUMULATE (the fused residual add), else 0; the bias is added
// with LINEAR_BIAS. xin is x's row t, or: GATHER x's row rows[t]; NORM rmsnorm(x row) * g, computed on
// the fly (the sum of x^2 gathered while x is read for the dot products); GLU rows in (gate, up) pairs,
// output silu(gate) * up at column (row_offset + r) / 2. Two formats: rows from p.split on are in WFMT2,
// from word p.seg_word of w (split on a multiple of WG / TPR).
// Decode runs it with TOK = 1; calls of a few tokens (batched decode, prefill on barrier-averse devices
// such as lavapipe) with TOK = 8, so that each weight load serves 8 tokens.
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 step  uniform  Step                   (n: tokens, or outputs for the LM head)
//   2 w     storage  array<vec4<u32>>  [rows, cols] of this chunk: f32 one word per element; f16 / bf16 two
//                                     elements per word, element 2i in the low half. Rows are read 8
//                                     elements at a time (cols % 8 == 0; seg_word a multiple of 4).
//   3 x     storage  array<vec4<f32>>  [x rows, cols]
//   4 bias  storage  array<f32>        [row_offset + rows]   (read only with LINEAR_BIAS)
//   5 y     storage  array<f32>        [n, y_stride]: row r at column y_offset + row_offset + r (GLU: / 2)
//   6 g     storage  array<vec4<f32>>  [cols] the norm weight (read only when NORM)
//   7 rows  storage  array<u32>        [n] x's row of each output (read only when GATHER)
// Workgroup: WG / RPI invocations = (WG / TPR) / RPI row slots x TPR lanes; each lane works on RPI
// consecutive rows, striding over their 8-element groups (each x load serves RPI rows and each weight
// load TOK tokens), then `row_sum` combines the TPR partial sums. Grid: (row groups, laid out 2-D past
// 65535, ceil(n / TOK)).
// Shared structs and WFMT_* codes come from the prelude (engine/src/uniforms.rs). Needs, appended at
// pipeline creation, `linear_epilogue` (linear_epilogue.wgsl: the store, shared with matvec_quant.wgsl)
// and `row_sum` from reduce_subgroup.wgsl or reduce_shared.wgsl.

override WFMT: u32 = WFMT_F32;
override WFMT2: u32 = WFMT_F32;
override WG: u32 = 64u;
override TPR: u32 = 8u;
override RPI: u32 = 1u;   // rows per invocation: 1 to 32 (kernels::LANE_ROWS), at most MAX_RPI, dividing WG / TPR
override NORM: bool = false;
override GATHER: bool = false;
override GLU: bool = false;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> rows: array<u32>;

// The sums of the invocation's RPI rows x TOK tokens, row-major. TOK (tokens per workgroup, 1 to 8) and
// MAX_RPI (the shapes' bound on RPI) are constants composed before this file by engine/src/kernels.rs,
// one module per TOK: every private array is sized by them, as small as the variant needs (lavapipe's
// compile time grows with the private arrays' size: a TOK = 1 pipeline no longer carries 8 tokens' sums).
var<private> acc: array<f32, MAX_RPI * TOK>;
// Per token: the sum of x^2 (NORM) and x's first vec4 of the token's row.
var<private> ss: array<f32, TOK>;
var<private> xbase: array<u32, TOK>;
// x of the TOK tokens at the current group's 8 elements.
var<private> xa: array<vec4<f32>, TOK>;
var<private> xb: array<vec4<f32>, TOK>;

struct W8 {
    a: vec4<f32>,   // elements 0..4 of the group
    b: vec4<f32>,   // elements 4..8
}

// Weights 8g .. 8g + 8 of the row that starts at vec4 `rw` (format f).
fn load8(f: u32, rw: u32, g8: u32) -> W8 {
    var o: W8;
    switch f {
        case WFMT_F16: {
            let v = w[rw + g8];
            o.a = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
            o.b = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
        }
        case WFMT_BF16: {
            let v = w[rw + g8];
            let lo = bitcast<vec4<f32>>(v << vec4<u32>(16u));           // elements 0, 2, 4, 6
            let hi = bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u));    // elements 1, 3, 5, 7
            o.a = vec4<f32>(lo.x, hi.x, lo.y, hi.y);
            o.b = vec4<f32>(lo.z, hi.z, lo.w, hi.w);
        }
        default: {
            o.a = bitcast<vec4<f32>>(w[rw + 2u * g8]);
            o.b = bitcast<vec4<f32>>(w[rw + 2u * g8 + 1u]);
        }
    }
    return o;
}

// vec4<u32> words per row of format f.
fn row_vec4s(f: u32) -> u32 {
    return select(p.cols / 8u, p.cols / 4u, f == WFMT_F32);
}

// x's vec4 i of token t's row: scaled by the norm weight with NORM, whose x^2 it adds to ss[t].
fn x_load(t: u32, i: u32) -> vec4<f32> {
    let v = x[xbase[t] + i];
    if NORM {
        ss[t] = ss[t] + dot(v, v);
        return v * g[i];
    }
    return v;
}

// The dot products of rows r0 .. r0 + RPI (format f, the segment starting at vec4 `seg_base` with row
// `seg_row0`) with the tokens' x, into acc.
fn accumulate(f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32) {
    let n_rr = min(RPI, p.rows - r0);
    for (var g8 = lane; g8 < p.cols / 8u; g8 = g8 + TPR) {
        for (var t = 0u; t < TOK; t = t + 1u) {
            xa[t] = x_load(t, 2u * g8);
            xb[t] = x_load(t, 2u * g8 + 1u);
        }
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            let r = r0 + rr;
            let wv = load8(f, seg_base + (r - seg_row0) * row_vec4s(f), g8);
            for (var t = 0u; t < TOK; t = t + 1u) {
                acc[rr * TOK + t] = acc[rr * TOK + t] + dot(wv.a, xa[t]) + dot(wv.b, xb[t]);
            }
        }
    }
}

@compute @workgroup_size(WG / RPI)
fn matvec(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg_row0 = (wid.x + wid.y * nwg.x) * (WG / TPR);
    let r0 = wg_row0 + (lid / TPR) * RPI;
    let lane = lid % TPR;
    let t0 = wid.z * TOK;
    let n_tok = min(TOK, step.n - min(t0, step.n));
    let tok_last = max(n_tok, 1u) - 1u;
    for (var i = 0u; i < RPI * TOK; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var t = 0u; t < TOK; t = t + 1u) {
        ss[t] = 0.0;
        var row = t0 + min(t, tok_last);
        if GATHER {
            row = rows[row];
        }
        xbase[t] = row * (p.cols / 4u);
    }
    if r0 < p.rows {
        if wg_row0 >= p.split {
            accumulate(WFMT2, p.seg_word / 4u, p.split, r0, lane);
        } else {
            accumulate(WFMT, 0u, 0u, r0, lane);
        }
    }
    linear_epilogue(r0, t0, n_tok, lid, lane);
}
