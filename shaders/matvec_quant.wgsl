// Matrix-vector product over quantized weights, batched over a few tokens, with its fusions:
//   y[t, y_offset + row_offset + r] = acc + bias[row_offset + r] + W[r, :] . xin[t, :]   for r < rows, t < n
// acc is y's previous value when LINEAR_ACCUMULATE is set (the fused residual add), else 0; the bias is
// added when LINEAR_BIAS is set. xin is x's row t, or with the fusions:
//   GATHER: x's row rows[t] (the LM head reads only the rows of the call's outputs);
//   NORM:   rmsnorm(x row) * g, the RMSNorm that feeds this layer: the kernel sums x^2 while it reads x
//           for the dot products and scales each sum by 1 / sqrt(mean(x^2) + eps) (W . (g * x) * inv,
//           which is W . rmsnorm(x) up to rounding), so no normalised copy of x is written;
//   GLU:    the rows come in (gate, up) pairs, interleaved at load: row 2i is gate row i, 2i + 1 up row
//           i, and the output is y[t, y_offset + (row_offset + r) / 2] = silu(gate) * up (the MLP's
//           SiLU-gated unit; no bias or accumulate). Needs RPI even.
// Two formats (stacked matrices, e.g. q and k in Q5_0 with v in Q8_0 as one QKV matrix): rows below
// p.split are in format WFMT from word 0 of w, rows from p.split on in WFMT2 from word p.seg_word. A
// workgroup's rows are all in one segment (the host puts split on a multiple of WG / TPR), so the choice
// is uniform and each branch is compiled for its constant format.
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 step  uniform  Step                   (n: tokens, or outputs for the LM head)
//   2 w     storage  array<u32>        [rows, cols] of this chunk in the GPU layout of its format(s)
//                                     (engine/src/quant.rs); cols % 32 == 0, and % 256 for the K-quants
//   3 x     storage  array<vec4<f32>>  [x rows, cols]
//   4 bias  storage  array<f32>        [row_offset + rows]   (read only with LINEAR_BIAS)
//   5 y     storage  array<f32>        [n, y_stride]: row r at column y_offset + row_offset + r (GLU: / 2)
//   6 g     storage  array<vec4<f32>>  [cols] the norm weight (read only when NORM)
//   7 rows  storage  array<u32>        [n] x's row of each output (read only when GATHER)
// Workgroup: WG / RPI invocations: (WG / TPR) / RPI row slots x TPR invocations (lanes) per slot, each
// lane working on RPI consecutive rows, so a workgroup covers WG / TPR rows as in matvec.wgsl. A lane takes
// whole units of its rows, striding by TPR; per unit it decodes each row's scales once, then per quant word
// loads x of the TOK tokens once (as vec4) for all RPI rows: x, re-read per row and per token, is what
// dominates on CPU devices. `row_sum` combines the TPR partial sums; no other barrier.
//   32-element formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): a unit is one block, its scale (and min) decoded
//     once. Each quant word gives 8 weights (Q8_0: two words of 4 signed bytes): scalar shifts and masks
//     put one level per byte (Q5: the qh bits spread with a multiply), vector shifts unpack 4 bytes,
//     one multiply (signed levels, centred by flipping their top bit) or fma (levels and a min) scales
//     them.
//   K-quants (Q4_K, Q5_K, Q6_K): a unit is a quarter super-block of 64 elements (8 quant words), so that
//     the 19 super-blocks of a 4864-wide row spread over 76 units: two 32-element sub-blocks (Q4_K, Q5_K:
//     the low and high nibbles of the same words, scale and min each) or quarters a and a + 2 of a
//     Q6_K half (ql nibbles and 2 qh bits; a scale per 16 elements).
// Grid: (row groups, laid out 2-D past 65535, ceil(n / TOK)).
// Shared structs and WFMT_* codes come from the prelude (engine/src/uniforms.rs). Needs, appended at
// pipeline creation, `linear_epilogue` (linear_epilogue.wgsl: the store, shared with matvec.wgsl),
// dequant.wgsl, then `row_sum` from reduce_subgroup.wgsl or reduce_shared.wgsl.

override WFMT: u32 = WFMT_Q8_0;
override WFMT2: u32 = WFMT_Q8_0;
override WG: u32 = 64u;
override TPR: u32 = 8u;
override RPI: u32 = 1u;   // rows per invocation: 1 to 32 (kernels::LANE_ROWS), at most MAX_RPI, dividing WG / TPR
override NORM: bool = false;
override GATHER: bool = false;
override GLU: bool = false;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;
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
// Per row: its unit's first word and the unit's affine map (unit_affine).
var<private> ubw: array<u32, MAX_RPI>;
var<private> uaff: array<vec4<f32>, MAX_RPI>;
// x of the TOK tokens at the current word's low and high elements.
var<private> xl: array<vec4<f32>, TOK>;
var<private> xh: array<vec4<f32>, TOK>;

// The weights of 8 elements decoded from one quant word.
struct W8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// A unit is what a lane takes at a time: a 32-element block, or a 64-element quarter of a K-quant
// super-block. It is read as nk() words (pairs of words for Q8_0), word k giving the weights of the
// elements at x's vec4s xi + k (lo) and xi + ho() + k (hi).
fn unit_elems(f: u32) -> u32 {
    return select(32u, 64u, f >= WFMT_Q4_K);
}

fn nk(f: u32) -> u32 {
    return select(4u, 8u, f >= WFMT_Q4_K);
}

fn ho(f: u32) -> u32 {
    switch f {
        case WFMT_Q4_K, WFMT_Q5_K: { return 8u; }
        case WFMT_Q6_K: { return 16u; }
        default: { return 4u; }
    }
}

// The first word of the block holding unit u (the super-block, for the K-quants: the unit is its quarter
// u % 4) in the row that starts at word rw.
fn unit_word(f: u32, rw: u32, u: u32) -> u32 {
    if f >= WFMT_Q4_K {
        return rw + (u / 4u) * dq_block_words(f);
    }
    return rw + u * dq_block_words(f);
}

// vec4 index, within a row of x, of the unit's first lo element.
fn unit_x(f: u32, u: u32) -> u32 {
    if f == WFMT_Q6_K {
        // Q6_K quarter q = 2h + a: quarters a and a + 2 of half h.
        let q = u % 4u;
        return (u / 4u) * 64u + 32u * (q / 2u) + 8u * (q % 2u);
    }
    return u * (unit_elems(f) / 4u);
}

// The unit's affine maps, decoded once: weight = level * scale + offset.
//   32-element blocks: (scale, offset, scale, offset) of the block (offset 0 with centred levels).
//   Q4_K / Q5_K quarter c: (scale, offset) of sub-block 2c (lo), then of 2c + 1 (hi).
//   Q6_K (no offset; a scale per 16 elements): lo and hi scales of words 0..4, then of words 4..8.
fn unit_affine(f: u32, bw: u32, q: u32) -> vec4<f32> {
    switch f {
        case WFMT_Q4_K, WFMT_Q5_K: {
            return vec4<f32>(dq_affine_k4(bw, 2u * q), dq_affine_k4(bw, 2u * q + 1u));
        }
        case WFMT_Q6_K: {
            let h = q / 2u;
            let a = q % 2u;
            let d = dq_lo16(w[bw + 52u]);
            // scales[8h + 2a + (0, 1)] (quarter a) and scales[8h + 2a + 4 + (0, 1)] (quarter a + 2).
            let s0 = w[bw + 48u + 2u * h] >> (16u * a);
            let s1 = w[bw + 49u + 2u * h] >> (16u * a);
            return d * vec4<f32>(
                f32(dq_sext8(s0)), f32(dq_sext8(s1)), f32(dq_sext8(s0 >> 8u)), f32(dq_sext8(s1 >> 8u)),
            );
        }
        default: {
            let a = dq_affine32(f, bw);
            return vec4<f32>(a, a);
        }
    }
}

// Word k of the unit at bw (quarter q of a super-block for the K-quants), as weights.
fn unit_weights(f: u32, bw: u32, q: u32, k: u32, a: vec4<f32>) -> W8 {
    switch f {
        case WFMT_Q8_0: {
            return W8(dq_i8x4(w[bw + 1u + k]) * a.x, dq_i8x4(w[bw + 5u + k]) * a.x);
        }
        case WFMT_Q4_0: {
            let b = dq_q4_bytes(w[bw + 1u + k]);
            return W8(dq_centered(b.x, 4u) * a.x, dq_centered(b.y, 4u) * a.x);
        }
        case WFMT_Q5_0: {
            let b = dq_q5_bytes(w[bw + 2u + k], w[bw + 1u], k);
            return W8(dq_centered(b.x, 5u) * a.x, dq_centered(b.y, 5u) * a.x);
        }
        case WFMT_Q6_K: {
            let h = q / 2u;
            let sa = q % 2u;
            let b = dq_q6k_bytes(w[bw + 16u * h + 8u * sa + k], w[bw + 32u + 8u * h + k], sa);
            let s = select(a.xy, a.zw, k >= 4u);
            return W8(dq_centered(b.x, 6u) * s.x, dq_centered(b.y, 6u) * s.y);
        }
        default: {
            // Q4_1, Q5_1, Q4_K, Q5_K: unsigned levels and a min.
            var b: vec2<u32>;
            switch f {
                case WFMT_Q4_1: { b = dq_q4_bytes(w[bw + 1u + k]); }
                case WFMT_Q5_1: { b = dq_q5_bytes(w[bw + 2u + k], w[bw + 1u], k); }
                case WFMT_Q4_K: { b = dq_q4_bytes(w[bw + 4u + 8u * q + k]); }
                default: { b = dq_q5k_bytes(w[bw + 12u + 8u * q + k], w[bw + 4u + k], q); }
            }
            return W8(fma(dq_ubytes(b.x), vec4<f32>(a.x), vec4<f32>(a.y)), fma(dq_ubytes(b.y), vec4<f32>(a.z), vec4<f32>(a.w)));
        }
    }
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

// The dot products of rows r0 .. r0 + RPI (format f; the segment's rows start at word `seg_base`, its
// first row being `seg_row0`) with the tokens' x, into acc.
fn accumulate(f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32) {
    let row_words = (p.cols / dq_block_size(f)) * dq_block_words(f);
    let n_rr = min(RPI, p.rows - r0);
    for (var u = lane; u < p.cols / unit_elems(f); u = u + TPR) {
        let q = u % 4u;
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            let r = r0 + rr;
            ubw[rr] = unit_word(f, seg_base + (r - seg_row0) * row_words, u);
            uaff[rr] = unit_affine(f, ubw[rr], q);
        }
        let xi = unit_x(f, u);
        for (var k = 0u; k < nk(f); k = k + 1u) {
            for (var t = 0u; t < TOK; t = t + 1u) {
                xl[t] = x_load(t, xi + k);
                xh[t] = x_load(t, xi + k + ho(f));
            }
            for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
                let wv = unit_weights(f, ubw[rr], q, k, uaff[rr]);
                for (var t = 0u; t < TOK; t = t + 1u) {
                    acc[rr * TOK + t] = acc[rr * TOK + t] + dot(wv.lo, xl[t]) + dot(wv.hi, xh[t]);
                }
            }
        }
    }
}

// Where an invocation works: rows r0 .. r0 + RPI of the workgroup's rows from wg_row0, its lane, and
// the workgroup's tokens t0 .. t0 + n_tok.
struct Place {
    wg_row0: u32,
    r0: u32,
    lane: u32,
    t0: u32,
    n_tok: u32,
}

// The start of both entry points (matvec_quant, matvec_q8): the invocation's place, acc and ss zeroed,
// xbase[t] the token row of token t. Tokens past the end compute on the last token (their sums are
// never stored); rows past the end are skipped (accumulate stops at the last row, their sums stay 0).
fn matvec_begin(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Place {
    let wg_row0 = (wid.x + wid.y * nwg.x) * (WG / TPR);
    let t0 = wid.z * TOK;
    let n_tok = min(TOK, step.n - min(t0, step.n));
    let tok_last = max(n_tok, 1u) - 1u;
    for (var i = 0u; i < RPI * TOK; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var t = 0u; t < TOK; t = t + 1u) {
        ss[t] = 0.0;
        xbase[t] = t0 + min(t, tok_last);
    }
    return Place(wg_row0, wg_row0 + (lid / TPR) * RPI, lid % TPR, t0, n_tok);
}

@compute @workgroup_size(WG / RPI)
fn matvec_quant(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let at = matvec_begin(wid, nwg, lid);
    // x's first vec4 of each token's row (GATHER: of its output's row).
    for (var t = 0u; t < TOK; t = t + 1u) {
        var row = xbase[t];
        if GATHER {
            row = rows[row];
        }
        xbase[t] = row * (p.cols / 4u);
    }
    if at.r0 < p.rows {
        if at.wg_row0 >= p.split {
            accumulate(WFMT2, p.seg_word, p.split, at.r0, at.lane);
        } else {
            accumulate(WFMT, 0u, 0u, at.r0, at.lane);
        }
    }
    linear_epilogue(at.r0, at.t0, at.n_tok, lid, at.lane);
}
