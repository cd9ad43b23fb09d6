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
// Entry points: `matvec_quant`, every row in format WFMT; `matvec_quant_stacked`, two formats (stacked
// matrices, e.g. q and k in Q5_0 with v in Q8_0 as one QKV matrix): rows below p.split in WFMT from word
// 0 of w, rows from p.split on in WFMT2 from word p.seg_word. A workgroup's rows are all in one segment
// (the host puts split on a multiple of WG / TPR), so the choice is uniform and each branch is compiled
// for its constant format; a one-format matrix takes the entry with one branch, since a driver compiles
// both whatever the constants (lavapipe: pipeline time is the code it inlines).
//
// Bindings (group 0):
//   0 p     uniform  MatParams
//   1 step  uniform  Step                   (n: tokens, or outputs for the LM head)
//   2 w     storage  array<vec4<u32>>  [rows, cols] of this chunk in the GPU layout of its format(s)
//                                     (engine/src/quant.rs), padded to 16 bytes; the second format's
//                                     rows from a multiple of 4 words; cols % 32 == 0, and % 256 for
//                                     the K-quants
//   3 x     storage  array<vec4<f32>>  [x rows, cols]
//   4 bias  storage  array<f32>        [row_offset + rows]   (read only with LINEAR_BIAS)
//   5 y     storage  array<f32>        [n, y_stride]: row r at column y_offset + row_offset + r (GLU: / 2)
//   6 g     storage  array<vec4<f32>>  [cols] the norm weight (read only when NORM)
//   7 rows  storage  array<u32>        [n] x's row of each output (read only when GATHER)
//  10 wu    storage  array<u32>        the buffer of w again, as words (scalar loads: `wd`)
// Workgroup: WG / RPI invocations: (WG / TPR) / RPI row slots x TPR invocations (lanes) per slot, each
// lane working on RPI consecutive rows, so a workgroup covers WG / TPR rows as in matvec.wgsl. A lane takes
// whole units of its rows, striding by TPR. One token per workgroup (decode, `accumulate`): per unit it
// loads x once into registers for all RPI rows, then per row fetches the unit's words with a few vec4
// loads (`unit_fetch`: 2 to 3 per 32-element block, 3 to 5 per K-quant quarter), decodes its scales
// once and sums levels times x, the scales applied to the sums (`unit_combine`). On a CPU device each
// load instruction is a loop over the subgroup's lanes whatever its width, so fewer, wider loads are
// what a decode step saves (lavapipe: 1.5x tg). Blocks of tokens (`accumulate_blocks`): per quant word
// x of the TOK tokens is loaded once for all the rows (x held for a whole unit and 8 tokens would be
// hundreds of registers, which lavapipe takes minutes to compile). `row_sum` combines the TPR partial
// sums; no other barrier.
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
// Shared structs and WFMT_* codes come from the prelude (engine/src/uniforms.rs). Needs, composed by
// engine/src/kernels.rs (matvec_module_source): before this file the constants TOK and MAX_RPI; after it
// matvec_q8.wgsl, `accumulate_tok` (the loop order of TOK: `accumulate` for 1, `accumulate_blocks`
// above, so that a pipeline carries one order), `linear_epilogue` (linear_epilogue.wgsl: the store,
// shared with matvec.wgsl), dequant.wgsl, then `row_sum` from reduce_subgroup.wgsl or
// reduce_shared.wgsl.

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
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

@group(0) @binding(10) var<storage, read> wu: array<u32>;

// Word i of the weights (the block path and dequant.wgsl's decoders read single words through it): from
// `wu`, the same buffer as words, since picking a word out of a vec4 by a computed index costs a CPU
// device a whole vec4 load and its shuffles.
fn wd(i: u32) -> u32 {
    return wu[i];
}

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
// The one-token path (`accumulate`, TOK = 1): x over the current unit, the element vec4s of quant word
// k at k (lo) and 8 + k (hi).
var<private> xu: array<vec4<f32>, 16>;
// The blocks of tokens (TOK > 1, `accumulate_blocks`): per row its unit's first word and affine maps,
// and x of the TOK tokens at the current word's lo and hi elements.
var<private> ubw: array<u32, MAX_RPI>;
var<private> uaff: array<vec4<f32>, MAX_RPI>;
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

// A unit's words, fetched with a few vec4 loads (on a CPU device every load instruction is a loop
// over the subgroup's lanes, whatever its width): `h` the header words its affine maps come from, `a`
// its 8 (32-element formats: 4) quant words of levels, `b` the 8 words of high bits of Q5_K / Q6_K;
// `a0` and `a1` hold words 0..4 and 4..8.
struct Unit {
    h: vec4<u32>,
    a0: vec4<u32>,
    a1: vec4<u32>,
    b0: vec4<u32>,
    b1: vec4<u32>,
}

// Words s .. s + 4 of the 8 words x, y (s in 1..=4).
fn window4(x: vec4<u32>, y: vec4<u32>, s: u32) -> vec4<u32> {
    let r3 = select(y, vec4<u32>(x.w, y.xyz), s == 3u);
    let r2 = select(r3, vec4<u32>(x.zw, y.xy), s == 2u);
    return select(r2, vec4<u32>(x.yzw, y.x), s == 1u);
}

// The words of the unit at bw (quarter q of a super-block for the K-quants). Every matrix segment
// starts on a multiple of 4 words (weights.rs, `stack_layout`) and rows are whole blocks, so the
// K-quant blocks (36, 44 and, padded, 56 words: engine/src/quant.rs) are vec4-aligned and the 6-word
// Q5 blocks start on an even word; the 5- and 9-word blocks take any alignment.
fn unit_fetch(f: u32, bw: u32, q: u32) -> Unit {
    let v = bw >> 2u;
    let m = bw & 3u;
    let z = vec4<u32>(0u);
    switch f {
        case WFMT_Q8_0: {
            // d, qs[8]: words m .. m + 9 of three vec4s.
            let x = w[v];
            let y = w[v + 1u];
            let e = w[v + 2u];
            return Unit(vec4<u32>(x[m], 0u, 0u, 0u), window4(x, y, m + 1u), window4(y, e, m + 1u), z, z);
        }
        case WFMT_Q4_0, WFMT_Q4_1: {
            // d (and m), qs[4]: words m .. m + 5 of two vec4s.
            let x = w[v];
            let y = w[v + 1u];
            return Unit(vec4<u32>(x[m], 0u, 0u, 0u), window4(x, y, m + 1u), z, z, z);
        }
        case WFMT_Q5_0, WFMT_Q5_1: {
            // d (and m), qh, qs[4]: words m .. m + 6 of two vec4s, m = 0 or 2.
            let x = w[v];
            let y = w[v + 1u];
            let odd = m == 2u;
            let h = select(x.xy, x.zw, odd);
            return Unit(vec4<u32>(h, 0u, 0u), select(vec4<u32>(x.zw, y.xy), y, odd), z, z, z);
        }
        case WFMT_Q4_K: {
            // d/dmin and scales (words 0..4), qs of quarter q (words 4 + 8q ..).
            return Unit(w[v], w[v + 1u + 2u * q], w[v + 2u + 2u * q], z, z);
        }
        case WFMT_Q5_K: {
            // d/dmin and scales (words 0..4), qh (4..12), qs of quarter q (12 + 8q ..).
            return Unit(w[v], w[v + 3u + 2u * q], w[v + 4u + 2u * q], w[v + 1u], w[v + 2u]);
        }
        default: {
            // Q6_K, quarter q = 2h + a: ql words 16h + 8a .., qh words 32 + 8h .., scales in words
            // 48..52 (those of half h: 48 + 2h, 49 + 2h), d in word 52.
            let hh = q / 2u;
            let ql = v + 4u * hh + 2u * (q % 2u);
            let qh = v + 8u + 2u * hh;
            let sc = w[v + 12u];
            let d = w[v + 13u].x;
            let h = select(sc.xy, sc.zw, hh == 1u);
            return Unit(vec4<u32>(h, d, 0u), w[ql], w[ql + 1u], w[qh], w[qh + 1u]);
        }
    }
}

// What the block path reads of the unit at bw per quant word k, with scalar loads: a Unit whose every
// element of a (and b) holds the word(s) of k that unit_levels_f32 takes, and its qh (Q5_0, Q5_1).
fn unit_fetch_k(f: u32, bw: u32, q: u32, k: u32) -> Unit {
    let z = vec4<u32>(0u);
    switch f {
        case WFMT_Q8_0: {
            return Unit(z, vec4<u32>(wd(bw + 1u + k)), vec4<u32>(wd(bw + 5u + k)), z, z);
        }
        case WFMT_Q4_0, WFMT_Q4_1: {
            return Unit(z, vec4<u32>(wd(bw + 1u + k)), z, z, z);
        }
        case WFMT_Q5_0, WFMT_Q5_1: {
            return Unit(vec4<u32>(0u, wd(bw + 1u), 0u, 0u), vec4<u32>(wd(bw + 2u + k)), z, z, z);
        }
        case WFMT_Q4_K: {
            let a = vec4<u32>(wd(bw + 4u + 8u * q + k));
            return Unit(z, a, a, z, z);
        }
        case WFMT_Q5_K: {
            let a = vec4<u32>(wd(bw + 12u + 8u * q + k));
            let b = vec4<u32>(wd(bw + 4u + k));
            return Unit(z, a, a, b, b);
        }
        default: {
            let hh = q / 2u;
            let a = vec4<u32>(wd(bw + 16u * hh + 8u * (q % 2u) + k));
            let b = vec4<u32>(wd(bw + 32u + 8u * hh + k));
            return Unit(z, a, a, b, b);
        }
    }
}

// The header words of the unit at bw that unit_affine reads (`h` of unit_fetch), with scalar loads.
fn unit_header(f: u32, bw: u32, q: u32) -> vec4<u32> {
    switch f {
        case WFMT_Q4_K, WFMT_Q5_K: {
            return vec4<u32>(wd(bw), wd(bw + 1u), wd(bw + 2u), wd(bw + 3u));
        }
        case WFMT_Q6_K: {
            let hh = q / 2u;
            return vec4<u32>(wd(bw + 48u + 2u * hh), wd(bw + 49u + 2u * hh), wd(bw + 52u), 0u);
        }
        default: {
            return vec4<u32>(wd(bw), 0u, 0u, 0u);
        }
    }
}

// Quant word k (0..8) of the unit's levels (a) and high bits (b).
fn unit_a(un: Unit, k: u32) -> u32 {
    return select(un.a1[k & 3u], un.a0[k & 3u], k < 4u);
}

fn unit_b(un: Unit, k: u32) -> u32 {
    return select(un.b1[k & 3u], un.b0[k & 3u], k < 4u);
}

// The unit's affine maps, decoded once: weight = level * scale + offset.
//   32-element blocks: (scale, offset, scale, offset) of the block (offset 0 with centred levels).
//   Q4_K / Q5_K quarter c: (scale, offset) of sub-block 2c (lo), then of 2c + 1 (hi).
//   Q6_K (no offset; a scale per 16 elements): lo and hi scales of words 0..4, then of words 4..8.
fn unit_affine(f: u32, un: Unit, q: u32) -> vec4<f32> {
    switch f {
        case WFMT_Q4_K, WFMT_Q5_K: {
            return vec4<f32>(dq_affine_k4_of(un.h, 2u * q), dq_affine_k4_of(un.h, 2u * q + 1u));
        }
        case WFMT_Q6_K: {
            let a = q % 2u;
            let d = dq_lo16(un.h.z);
            // scales[8h + 2a + (0, 1)] (quarter a) and scales[8h + 2a + 4 + (0, 1)] (quarter a + 2).
            let s0 = un.h.x >> (16u * a);
            let s1 = un.h.y >> (16u * a);
            return d * vec4<f32>(
                f32(dq_sext8(s0)), f32(dq_sext8(s1)), f32(dq_sext8(s0 >> 8u)), f32(dq_sext8(s1 >> 8u)),
            );
        }
        default: {
            let a = dq_affine32_of(f, un.h.x);
            return vec4<f32>(a, a);
        }
    }
}

// Whether the format's affine maps have offsets (unsigned levels and a min).
fn has_offset(f: u32) -> bool {
    return f == WFMT_Q4_1 || f == WFMT_Q5_1 || f == WFMT_Q4_K || f == WFMT_Q5_K;
}

// Word k of the unit (quarter q of a super-block for the K-quants) as levels, before the affine map:
// centred (Q8_0, Q4_0, Q5_0, Q6_K) or unsigned.
fn unit_levels_f32(f: u32, un: Unit, q: u32, k: u32) -> W8 {
    switch f {
        case WFMT_Q8_0: {
            return W8(dq_i8x4(un.a0[k]), dq_i8x4(un.a1[k]));
        }
        case WFMT_Q4_0: {
            let b = dq_q4_bytes(un.a0[k]);
            return W8(dq_centered(b.x, 4u), dq_centered(b.y, 4u));
        }
        case WFMT_Q5_0: {
            let b = dq_q5_bytes(un.a0[k], un.h.y, k);
            return W8(dq_centered(b.x, 5u), dq_centered(b.y, 5u));
        }
        case WFMT_Q6_K: {
            let b = dq_q6k_bytes(unit_a(un, k), unit_b(un, k), q % 2u);
            return W8(dq_centered(b.x, 6u), dq_centered(b.y, 6u));
        }
        default: {
            var b: vec2<u32>;
            switch f {
                case WFMT_Q4_1: { b = dq_q4_bytes(un.a0[k]); }
                case WFMT_Q5_1: { b = dq_q5_bytes(un.a0[k], un.h.y, k); }
                case WFMT_Q4_K: { b = dq_q4_bytes(unit_a(un, k)); }
                default: { b = dq_q5k_bytes(unit_a(un, k), unit_b(un, k), q); }
            }
            return W8(dq_ubytes(b.x), dq_ubytes(b.y));
        }
    }
}

// Word k of the unit as weights: its levels through the affine maps `a` (unit_affine).
fn unit_weights(f: u32, un: Unit, q: u32, k: u32, a: vec4<f32>) -> W8 {
    let lv = unit_levels_f32(f, un, q, k);
    if f == WFMT_Q6_K {
        let s = select(a.xy, a.zw, k >= 4u);
        return W8(lv.lo * s.x, lv.hi * s.y);
    }
    return W8(fma(lv.lo, vec4<f32>(a.x), vec4<f32>(a.y)), fma(lv.hi, vec4<f32>(a.z), vec4<f32>(a.w)));
}

// A row's dot product over one unit from the sums of levels times x: `l` of the lo and `h` of the hi
// elements, words 0..4 (.x) and 4..8 (.y), and xs the sums of x's lo and hi elements (the offsets'
// share). Q6_K scales each run of 16 elements; the others one scale (and offset) per sub-block.
fn unit_combine(f: u32, a: vec4<f32>, l: vec2<f32>, h: vec2<f32>, xs: vec2<f32>) -> f32 {
    if f == WFMT_Q6_K {
        return a.x * l.x + a.y * h.x + a.z * l.y + a.w * h.y;
    }
    var s = a.x * (l.x + l.y) + a.z * (h.x + h.y);
    if has_offset(f) {
        s = s + a.y * xs.x + a.w * xs.y;
    }
    return s;
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
// first row being `seg_row0`) with the token's x (TOK = 1; blocks of tokens take `accumulate_blocks`),
// into acc. Per unit x is loaded once for all the rows (with its sums, for the formats with offsets);
// per row the unit's words come in a few vec4 loads, and its sums of levels times x stay in registers
// until the affine maps scale them.
fn accumulate(f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32) {
    let row_words = (p.cols / dq_block_size(f)) * dq_block_words(f);
    let n_rr = min(RPI, p.rows - r0);
    for (var u = lane; u < p.cols / unit_elems(f); u = u + TPR) {
        let q = u % 4u;
        let xi = unit_x(f, u);
        // The sums of the unit's lo and hi elements of x (the offsets' share, unit_combine).
        var xs = vec2<f32>(0.0);
        for (var k = 0u; k < nk(f); k = k + 1u) {
            let lo = x_load(0u, xi + k);
            let hi = x_load(0u, xi + k + ho(f));
            xu[k] = lo;
            xu[8u + k] = hi;
            if has_offset(f) {
                xs = xs + vec2<f32>(dot(lo, vec4<f32>(1.0)), dot(hi, vec4<f32>(1.0)));
            }
        }
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            let un = unit_fetch(f, unit_word(f, seg_base + (r0 + rr - seg_row0) * row_words, u), q);
            let a = unit_affine(f, un, q);
            // Sums of levels times x, lo and hi, of words 0..4 (.x) and 4..8 (.y).
            var sl = vec2<f32>(0.0);
            var sh = vec2<f32>(0.0);
            for (var k = 0u; k < nk(f); k = k + 1u) {
                let lv = unit_levels_f32(f, un, q, k);
                let dl = dot(lv.lo, xu[k]);
                let dh = dot(lv.hi, xu[8u + k]);
                if k < 4u {
                    sl.x = sl.x + dl;
                    sh.x = sh.x + dh;
                } else {
                    sl.y = sl.y + dl;
                    sh.y = sh.y + dh;
                }
            }
            acc[rr] = acc[rr] + unit_combine(f, a, sl, sh, xs);
        }
    }
}

// `accumulate` over blocks of TOK > 1 tokens, in the other loop order: per unit each row's first word
// and affine maps are kept in private arrays, then per quant word x of the TOK tokens is loaded once
// for all the rows, and each row's word(s) with scalar loads. Keeping x of the whole unit for TOK
// tokens in registers (the one-token order) costs lavapipe minutes of compile per pipeline.
fn accumulate_blocks(f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32) {
    let row_words = (p.cols / dq_block_size(f)) * dq_block_words(f);
    let n_rr = min(RPI, p.rows - r0);
    for (var u = lane; u < p.cols / unit_elems(f); u = u + TPR) {
        let q = u % 4u;
        let z = vec4<u32>(0u);
        for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
            ubw[rr] = unit_word(f, seg_base + (r0 + rr - seg_row0) * row_words, u);
            uaff[rr] = unit_affine(f, Unit(unit_header(f, ubw[rr], q), z, z, z, z), q);
        }
        let xi = unit_x(f, u);
        for (var k = 0u; k < nk(f); k = k + 1u) {
            for (var t = 0u; t < TOK; t = t + 1u) {
                xl[t] = x_load(t, xi + k);
                xh[t] = x_load(t, xi + k + ho(f));
            }
            for (var rr = 0u; rr < n_rr; rr = rr + 1u) {
                let wv = unit_weights(f, unit_fetch_k(f, ubw[rr], q, k), q, k, uaff[rr]);
                for (var t = 0u; t < TOK; t = t + 1u) {
                    acc[rr * TOK + t] = acc[rr * TOK + t] + dot(wv.lo, xl[t]) + dot(wv.hi, xh[t]);
                }
            }
        }
    }
}

// The builtins of every matvec_quant / matvec_q8 entry point.
struct Invocation {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

// Where an invocation works: rows r0 .. r0 + RPI of the workgroup's rows from wg_row0, its lane (and
// index lid in the workgroup), and the workgroup's tokens t0 .. t0 + n_tok.
struct Place {
    wg_row0: u32,
    r0: u32,
    lane: u32,
    lid: u32,
    t0: u32,
    n_tok: u32,
}

// The start of every entry point (matvec_quant*, matvec_q8*): the invocation's place, acc and ss
// zeroed, xbase[t] the token row of token t. Tokens past the end compute on the last token (their sums
// are never stored); rows past the end are skipped (accumulate_tok does nothing from the last row on,
// their sums stay 0).
fn matvec_begin(inv: Invocation) -> Place {
    let wg_row0 = (inv.wid.x + inv.wid.y * inv.nwg.x) * (WG / TPR);
    let t0 = inv.wid.z * TOK;
    let n_tok = min(TOK, step.n - min(t0, step.n));
    let tok_last = max(n_tok, 1u) - 1u;
    for (var i = 0u; i < RPI * TOK; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var t = 0u; t < TOK; t = t + 1u) {
        ss[t] = 0.0;
        xbase[t] = t0 + min(t, tok_last);
    }
    let lid = inv.lid;
    return Place(wg_row0, wg_row0 + (lid / TPR) * RPI, lid % TPR, lid, t0, n_tok);
}

// The end of every entry point: the sums stored (linear_epilogue.wgsl).
fn matvec_end(at: Place) {
    linear_epilogue(at.r0, at.t0, at.n_tok, at.lid, at.lane);
}

// The invocation's place, with xbase[t] x's first vec4 of each token's row (GATHER: of its output's
// row).
fn matvec_quant_begin(inv: Invocation) -> Place {
    let at = matvec_begin(inv);
    for (var t = 0u; t < TOK; t = t + 1u) {
        var row = xbase[t];
        if GATHER {
            row = rows[row];
        }
        xbase[t] = row * (p.cols / 4u);
    }
    return at;
}

// Every row in format WFMT.
@compute @workgroup_size(WG / RPI)
fn matvec_quant(inv: Invocation) {
    let at = matvec_quant_begin(inv);
    accumulate_tok(WFMT, 0u, 0u, at.r0, at.lane);
    matvec_end(at);
}

// A stacked matrix of two formats: rows from p.split in WFMT2, from word p.seg_word.
@compute @workgroup_size(WG / RPI)
fn matvec_quant_stacked(inv: Invocation) {
    let at = matvec_quant_begin(inv);
    if at.wg_row0 >= p.split {
        accumulate_tok(WFMT2, p.seg_word, p.split, at.r0, at.lane);
    } else {
        accumulate_tok(WFMT, 0u, 0u, at.r0, at.lane);
    }
    matvec_end(at);
}
