// The int8 matvec over quantized weights: matvec_quant's product with x quantized to 8 bits per 32-element
// block beforehand (quantize.wgsl), the dot products taken 4 bytes at a time with dot4I8Packed:
//   y[t, y_offset + row_offset + r] = acc + bias + sum over blocks b of W[r, b] . (d_b * q_b)
// Each unit's word k gives the signed levels of 4 + 4 weights as bytes (`unit_levels`: centred formats
// centred here, unsigned levels below 128 as they are), so one sub-block's sum is
//   scale * d * idot(levels, q) + offset * d * sum(q)
// with (scale, offset) the affine map of matvec_quant's `unit_affine` (offset 0 for centred levels) and
// d * sum(q) from xd. Q6_K has a scale per 16 elements: its integer sums are flushed at each half-unit.
// NORM: quantize.wgsl scaled x by the norm weight; the sums of squares come from xd, the scale by
// 1 / sqrt(mean(x^2) + eps) is the epilogue's, as in matvec_quant. No GATHER here: the quantize gathers.
//
// Bindings (group 0): matvec_quant.wgsl's 0 p, 1 step, 2 w, 4 bias, 5 y, 10 wu (x, g and rows are not read),
// and
//   8 xq  storage  array<u32>        [n, cols / 4]   x's rows as signed bytes (quantize.wgsl)
//   9 xd  storage  array<vec4<f32>>  [n, cols / 32]  per block (d, d * sum(q), sum(x^2), 0)
// Workgroup and grid: as matvec_quant (WG / RPI invocations, TPR lanes per row slot, RPI rows per lane,
// TOK tokens per workgroup). Appended to matvec_quant.wgsl's module (it uses its bindings, private arrays
// and unit_* helpers), before `accumulate_q8_tok` (accumulate_q8 for TOK = 1, accumulate_q8_blocks above;
// composed by engine/src/kernels.rs), linear_epilogue.wgsl, dequant.wgsl and the row_sum helper.
// Entry points: `matvec_q8` (one format) and `matvec_q8_stacked` (two), as matvec_quant's.

@group(0) @binding(8) var<storage, read> xq: array<u32>;
@group(0) @binding(9) var<storage, read> xd: array<vec4<f32>>;

// The one-token path (TOK = 1): x's bytes over the current unit, of quant word k at k (lo) and 8 + k
// (hi); both paths: the unit's lo and hi blocks' xd per token.
var<private> xqu: array<u32, 16>;
// The blocks path (TOK > 1): integer sums of the current half-unit's lo and hi elements per (row,
// token) as acc, and x's bytes at the current word.
var<private> ilo: array<i32, MAX_RPI * TOK>;
var<private> ihi: array<i32, MAX_RPI * TOK>;
var<private> ql8: array<u32, TOK>;
var<private> qh8: array<u32, TOK>;
var<private> dl: array<vec4<f32>, TOK>;
var<private> dh: array<vec4<f32>, TOK>;

// Unsigned levels of `bits` bits, one per byte, minus 2^(bits - 1), as signed bytes: each byte
// plus 128 - 2^(bits - 1) stays in 0..255 (no carry into the next), and flipping its top bit subtracts 128.
fn q8_centre(b: vec2<u32>, bits: u32) -> vec2<u32> {
    let c = 0x80808080u - (0x01010101u << (bits - 1u));
    return (b + vec2<u32>(c)) ^ vec2<u32>(0x80808080u);
}

// Word k of the unit `un` (matvec_quant's unit_fetch; quarter q of a K-quant super-block) as signed
// byte levels: lo, hi.
fn unit_levels(f: u32, un: Unit, q: u32, k: u32) -> vec2<u32> {
    switch f {
        case WFMT_Q8_0: { return vec2<u32>(un.a0[k], un.a1[k]); }
        case WFMT_Q4_0: { return q8_centre(dq_q4_bytes(un.a0[k]), 4u); }
        case WFMT_Q5_0: { return q8_centre(dq_q5_bytes(un.a0[k], un.h.y, k), 5u); }
        case WFMT_Q6_K: { return q8_centre(dq_q6k_bytes(unit_a(un, k), unit_b(un, k), q % 2u), 6u); }
        case WFMT_Q4_1: { return dq_q4_bytes(un.a0[k]); }
        case WFMT_Q5_1: { return dq_q5_bytes(un.a0[k], un.h.y, k); }
        case WFMT_Q4_K: { return dq_q4_bytes(unit_a(un, k)); }
        default: { return dq_q5k_bytes(unit_a(un, k), unit_b(un, k), q); }
    }
}

// Integer-sum flushes per unit: Q6_K's two halves have their own scales.
fn q8_halves(f: u32) -> u32 {
    return select(1u, 2u, f == WFMT_Q6_K);
}

// The (lo, hi) scales of half h of a unit whose affine maps are `a` (unit_affine).
fn q8_scales(f: u32, a: vec4<f32>, h: u32) -> vec2<f32> {
    if f == WFMT_Q6_K {
        return select(a.xy, a.zw, h == 1u);
    }
    return a.xz;
}

// The offsets' share of a unit: offset * d * sum(q) of its block(s) (one block for the 32-element
// formats, whose lo and hi halves share it; two for Q4_K / Q5_K).
fn q8_offsets(f: u32, a: vec4<f32>, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    switch f {
        case WFMT_Q4_1, WFMT_Q5_1: { return a.y * lo.y; }
        case WFMT_Q4_K, WFMT_Q5_K: { return a.y * lo.y + a.w * hi.y; }
        default: { return 0.0; }
    }
}

// The xd of the unit's lo and hi blocks (the same block for the 32-element formats) for each token,
// into dl and dh, and their sums of squares into ss (NORM). xi: the unit's first vec4 of x (unit_x).
fn q8_unit_xd(f: u32, xi: u32) {
    let bl = xi / 8u;
    let bh = (xi + ho(f)) / 8u;
    for (var t = 0u; t < TOK; t = t + 1u) {
        let db = xbase[t] / 8u;
        dl[t] = xd[db + bl];
        dh[t] = xd[db + bh];
        if NORM {
            ss[t] = ss[t] + dl[t].z + select(dh[t].z, 0.0, bl == bh);
        }
    }
}

// matvec_quant's `accumulate` over the quantized x: the dot products of rows r0 .. r0 + RPI with the
// token's x (TOK = 1; blocks of tokens take accumulate_q8_blocks), into acc; the sums of squares (NORM)
// into ss. Per unit x is loaded once for all the rows, per row the unit's words come from unit_fetch.
fn accumulate_q8(f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32) {
    let row_words = (p.cols / dq_block_size(f)) * dq_block_words(f);
    let halves = q8_halves(f);
    let hk = nk(f) / halves;
    let n_rr = min(RPI, p.rows - r0);
    for (var u = lane; u < p.cols / unit_elems(f); u = u + TPR) {
        let q = u % 4u;
        let xi = unit_x(f, u);
        q8_unit_xd(f, xi);
        for (var k = 0u; k < nk(f); k = k + 1u) {
            xqu[k] = xq[xbase[0] + xi + k];
            xqu[8u + k] = xq[xbase[0] + xi + k + ho(f)];
        }
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            let un = unit_fetch(f, unit_word(f, seg_base + (r0 + rr - seg_row0) * row_words, u), q);
            let a = unit_affine(f, un, q);
            var s = 0.0;
            for (var h = 0u; h < halves; h = h + 1u) {
                var il = 0;
                var ih = 0;
                for (var k = h * hk; k < (h + 1u) * hk; k = k + 1u) {
                    let lv = unit_levels(f, un, q, k);
                    il = il + dot4I8Packed(lv.x, xqu[k]);
                    ih = ih + dot4I8Packed(lv.y, xqu[8u + k]);
                }
                let sc = q8_scales(f, a, h);
                s = s + sc.x * dl[0].x * f32(il) + sc.y * dh[0].x * f32(ih);
            }
            acc[rr] = acc[rr] + s + q8_offsets(f, a, dl[0], dh[0]);
        }
    }
}

// accumulate_q8 over blocks of TOK > 1 tokens, in matvec_quant's `accumulate_blocks` order: per quant
// word x of the TOK tokens loaded once for all the rows, each row's word(s) with scalar loads.
fn accumulate_q8_blocks(f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32) {
    let row_words = (p.cols / dq_block_size(f)) * dq_block_words(f);
    let halves = q8_halves(f);
    let hk = nk(f) / halves;
    let n_rr = min(RPI, p.rows - r0);
    let z = vec4<u32>(0u);
    for (var u = lane; u < p.cols / unit_elems(f); u = u + TPR) {
        let q = u % 4u;
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            ubw[rr] = unit_word(f, seg_base + (r0 + rr - seg_row0) * row_words, u);
            uaff[rr] = unit_affine(f, Unit(unit_header(f, ubw[rr], q), z, z, z, z), q);
        }
        let xi = unit_x(f, u);
        q8_unit_xd(f, xi);
        for (var h = 0u; h < halves; h = h + 1u) {
            for (var i = 0u; i < RPI * TOK; i = i + 1u) {
                ilo[i] = 0;
                ihi[i] = 0;
            }
            for (var k = h * hk; k < (h + 1u) * hk; k = k + 1u) {
                for (var t = 0u; t < TOK; t = t + 1u) {
                    ql8[t] = xq[xbase[t] + xi + k];
                    qh8[t] = xq[xbase[t] + xi + k + ho(f)];
                }
                for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
                    let lv = unit_levels(f, unit_fetch_k(f, ubw[rr], q, k), q, k);
                    for (var t = 0u; t < TOK; t = t + 1u) {
                        let i = rr * TOK + t;
                        ilo[i] = ilo[i] + dot4I8Packed(lv.x, ql8[t]);
                        ihi[i] = ihi[i] + dot4I8Packed(lv.y, qh8[t]);
                    }
                }
            }
            for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
                let s = q8_scales(f, uaff[rr], h);
                for (var t = 0u; t < TOK; t = t + 1u) {
                    let i = rr * TOK + t;
                    acc[i] = acc[i] + s.x * dl[t].x * f32(ilo[i]) + s.y * dh[t].x * f32(ihi[i]);
                }
            }
        }
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            for (var t = 0u; t < TOK; t = t + 1u) {
                acc[rr * TOK + t] = acc[rr * TOK + t] + q8_offsets(f, uaff[rr], dl[t], dh[t]);
            }
        }
    }
}

// The invocation's place, with xbase[t] xq's first word of each token's row (the quantize gathered
// already).
fn matvec_q8_begin(inv: Invocation) -> Place {
    let at = matvec_begin(inv);
    for (var t = 0u; t < TOK; t = t + 1u) {
        xbase[t] = xbase[t] * (p.cols / 4u);
    }
    return at;
}

// Every row in format WFMT.
@compute @workgroup_size(WG / RPI)
fn matvec_q8(inv: Invocation) {
    let at = matvec_q8_begin(inv);
    accumulate_q8_tok(WFMT, 0u, 0u, at.r0, at.lane);
    matvec_end(at);
}

// A stacked matrix of two formats: rows from p.split in WFMT2, from word p.seg_word.
@compute @workgroup_size(WG / RPI)
fn matvec_q8_stacked(inv: Invocation) {
    let at = matvec_q8_begin(inv);
    if at.wg_row0 >= p.split {
        accumulate_q8_tok(WFMT2, p.seg_word, p.split, at.r0, at.lane);
    } else {
        accumulate_q8_tok(WFMT, 0u, 0u, at.r0, at.lane);
    }
    matvec_end(at);
}
