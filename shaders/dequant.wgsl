// Block decoders for the quantized weight formats, in the padded u32 GPU layout documented at the top of
// engine/src/quant.rs (`repack_for_gpu`; `dequantize_gpu` is the CPU reference of what these compute).
// A helper file, not a kernel: appended to the modules that read quantized weights (matvec_quant.wgsl,
// matmul.wgsl, embed.wgsl) at pipeline creation (kernels::compose_dequant). No bindings, no workgroup
// memory, no barriers.
//
// Requires from the kernel module:
//   fn wd(i: u32) -> u32   word i of the weights of one chunk, GPU layout of their format, rows
//                          consecutive, each row a whole number of blocks (the kernel's binding:
//                          array<u32> in embed and matmul, array<vec4<u32>> in matvec_quant)
// Every function takes the format `f` (a WFMT_* code from the prelude; the float formats are the
// kernel's own business): kernels pass an override constant, so the compiler specialises each call; a
// fused kernel over two stacked matrices of different formats passes either of its two constants.
//
// Two families of functions:
//   - dq_elem(i): element i of the row-major matrix, with the operations of dequantize_gpu in the same
//     order, so the value is bit-identical to the CPU reference (the embedding's contract; matmul's W tile).
//   - group decoders, for dot products: once per block or sub-block its affine map (dq_affine32_of,
//     dq_affine_k4_of: weight = level * scale + offset); per quant word, a few scalar operations gather its
//     levels one per byte (dq_q4_bytes, dq_q5_bytes, dq_q5k_bytes, dq_q6k_bytes: 8 levels in two words),
//     then dq_ubytes / dq_centered / dq_i8x4 unpack 4 levels into a vec4<f32> with vector shifts.

// Bit offsets of the 4 bytes of a word.
const DQ_B = vec4<u32>(0u, 8u, 16u, 24u);

// Elements per block: 256 for the K-quants, 32 for the others.
fn dq_block_size(f: u32) -> u32 {
    return select(32u, 256u, f >= WFMT_Q4_K);
}

// u32 words per block in the GPU layout.
fn dq_block_words(f: u32) -> u32 {
    switch f {
        case WFMT_Q8_0: { return 9u; }
        case WFMT_Q4_0, WFMT_Q4_1: { return 5u; }
        case WFMT_Q5_0, WFMT_Q5_1: { return 6u; }
        case WFMT_Q4_K: { return 36u; }
        case WFMT_Q5_K: { return 44u; }
        case WFMT_Q6_K: { return 56u; }
        default: { return 1u; }
    }
}

fn dq_lo16(v: u32) -> f32 {
    return unpack2x16float(v).x;
}

fn dq_hi16(v: u32) -> f32 {
    return unpack2x16float(v).y;
}

// The low byte of v, sign-extended.
fn dq_sext8(v: u32) -> i32 {
    return bitcast<i32>(v << 24u) >> 24u;
}

// Byte b of the payload that starts at word `at`.
fn dq_byte(at: u32, b: u32) -> u32 {
    return (wd(at + b / 4u) >> (8u * (b % 4u))) & 0xffu;
}

// The 6-bit (scale, min) of sub-block j (0..8) of the Q4_K / Q5_K super-block at word bw: ggml's
// get_scale_min_k4 over scales[12] = words bw+1 .. bw+3. Byte j % 4 of each of the three words holds
// scales[j % 4], scales[4 + j % 4], scales[8 + j % 4].
fn dq_scale_min_k4(bw: u32, j: u32) -> vec2<u32> {
    return dq_scale_min_k4_of(vec4<u32>(0u, wd(bw + 1u), wd(bw + 2u), wd(bw + 3u)), j);
}

// dq_scale_min_k4 of the super-block whose words 0..4 are h.
fn dq_scale_min_k4_of(h: vec4<u32>, j: u32) -> vec2<u32> {
    let sh = 8u * (j % 4u);
    let b0 = (h.y >> sh) & 0xffu;
    let b1 = (h.z >> sh) & 0xffu;
    if j < 4u {
        return vec2<u32>(b0 & 63u, b1 & 63u);
    }
    let b2 = (h.w >> sh) & 0xffu;
    return vec2<u32>((b2 & 15u) | ((b0 >> 6u) << 4u), (b2 >> 4u) | ((b1 >> 6u) << 4u));
}

// ---------------------------------------------------------------------------------------------
// Element decoder
// ---------------------------------------------------------------------------------------------

// Element i (flat row-major index) of the quantized matrix (format f) that starts at word `base` of w,
// as dequantize_gpu computes it.
fn dq_elem(f: u32, base: u32, i: u32) -> f32 {
    let bw = base + (i / dq_block_size(f)) * dq_block_words(f);
    switch f {
        case WFMT_Q8_0: {
            // Q8_0: w0 = d; qs[32] from word 1.
            let e = i % 32u;
            return f32(dq_sext8(dq_byte(bw + 1u, e))) * dq_lo16(wd(bw));
        }
        case WFMT_Q4_0, WFMT_Q4_1: {
            // Q4_0 / Q4_1: element e < 16 is the low nibble of qs[e], element e >= 16 the high nibble of qs[e - 16].
            let e = i % 32u;
            let q = (dq_byte(bw + 1u, e % 16u) >> (4u * (e / 16u))) & 15u;
            if f == WFMT_Q4_0 {
                return f32(i32(q) - 8) * dq_lo16(wd(bw));
            }
            return f32(q) * dq_lo16(wd(bw)) + dq_hi16(wd(bw));
        }
        case WFMT_Q5_0, WFMT_Q5_1: {
            // Q5_0 / Q5_1: as Q4, bit e of qh (word 1) is bit 4 of element e; qs from word 2.
            let e = i % 32u;
            let q = ((dq_byte(bw + 2u, e % 16u) >> (4u * (e / 16u))) & 15u) | (((wd(bw + 1u) >> e) & 1u) << 4u);
            if f == WFMT_Q5_0 {
                return f32(i32(q) - 16) * dq_lo16(wd(bw));
            }
            return f32(q) * dq_lo16(wd(bw)) + dq_hi16(wd(bw));
        }
        case WFMT_Q4_K, WFMT_Q5_K: {
            // Q4_K / Q5_K: chunk c of 64 elements reads qs[32c ..]: low nibbles are sub-block 2c, high
            // nibbles sub-block 2c + 1. Q5_K: bit 2c (+1 for the high nibble) of qh[l] (words 4..11) is bit 4.
            let e = i % 256u;
            let c = e / 64u;
            let h = (e / 32u) % 2u;
            let l = e % 32u;
            let sm = dq_scale_min_k4(bw, 2u * c + h);
            let d = dq_lo16(wd(bw)) * f32(sm.x);
            let m = dq_hi16(wd(bw)) * f32(sm.y);
            let qs = select(4u, 12u, f == WFMT_Q5_K);
            var q = (dq_byte(bw + qs, 32u * c + l) >> (4u * h)) & 15u;
            if f == WFMT_Q5_K {
                q = q + (((dq_byte(bw + 4u, l) >> (2u * c + h)) & 1u) << 4u);
            }
            return d * f32(q) - m;
        }
        case WFMT_Q6_K: {
            // Q6_K: half h (128 elements), quarter r (32), lane l; ql words 0..31, qh 32..47, scales
            // 48..51 (i8, one per 16 elements), d in word 52.
            let e = i % 256u;
            let h = e / 128u;
            let r = (e % 128u) / 32u;
            let l = e % 32u;
            let lo = (dq_byte(bw, 64u * h + l + 32u * (r % 2u)) >> (4u * (r / 2u))) & 15u;
            let hi = (dq_byte(bw + 32u, 32u * h + l) >> (2u * r)) & 3u;
            let q = i32(lo | (hi << 4u)) - 32;
            let s = dq_sext8(dq_byte(bw + 48u, e / 16u));
            return dq_lo16(wd(bw + 52u)) * f32(s) * f32(q);
        }
        default: {
            return bitcast<f32>(wd(base + i));
        }
    }
}

// Element i of the matrix (format f, any: float or quantized) that starts at word `base` of w. Floats:
// f32 one word per element; f16 / bf16 two per word, element 2j in the low half.
fn w_elem(f: u32, base: u32, i: u32) -> f32 {
    switch f {
        case WFMT_F16: {
            return unpack2x16float(wd(base + i / 2u))[i % 2u];
        }
        case WFMT_BF16: {
            let v = wd(base + i / 2u);
            return bitcast<f32>(select(v << 16u, v & 0xffff0000u, (i % 2u) == 1u));
        }
        case WFMT_F32: {
            return bitcast<f32>(wd(base + i));
        }
        default: {
            return dq_elem(f, base, i);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Group decoders (dot products)
// ---------------------------------------------------------------------------------------------
//
// A quant word is first turned, with a few scalar operations, into words of byte levels: one level per
// byte, byte k holding element 4k (vec2: `x` the low-nibble elements of the word, `y` the high-nibble
// ones). dq_ubytes / dq_centered then unpack the 4 bytes with vector shifts into vec4<f32>.

// (scale, offset) of a 32-element block (format f: Q8_0 .. Q5_1) whose first word is h0: element =
// level * scale + offset, for the unsigned levels (0 .. 2^bits) of Q4_1 / Q5_1; Q8_0, Q4_0 and Q5_0
// have offset 0 with their signed (centred) levels.
fn dq_affine32_of(f: u32, h0: u32) -> vec2<f32> {
    let d = dq_lo16(h0);
    switch f {
        case WFMT_Q4_1, WFMT_Q5_1: { return vec2<f32>(d, dq_hi16(h0)); }
        default: { return vec2<f32>(d, 0.0); }
    }
}

// (scale, offset) of sub-block j of the Q4_K / Q5_K super-block whose words 0..4 are h: (d * sc,
// -dmin * m).
fn dq_affine_k4_of(h: vec4<u32>, j: u32) -> vec2<f32> {
    let sm = dq_scale_min_k4_of(h, j);
    return vec2<f32>(dq_lo16(h.x) * f32(sm.x), -(dq_hi16(h.x) * f32(sm.y)));
}

// The 4 bytes of v as unsigned levels.
fn dq_ubytes(v: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((vec4<u32>(v) >> DQ_B) & vec4<u32>(0xffu)));
}

// The signed `bits`-bit fields in the low bits of the 4 bytes of v (bits above them ignored): each field
// shifted to the top of the word, then arithmetically back.
fn dq_sbytes(v: u32, bits: u32) -> vec4<f32> {
    let up = vec4<u32>(32u - bits) - DQ_B;
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v) << up) >> vec4<u32>(32u - bits));
}

// Unsigned `bits`-bit levels, one per byte of v, minus 2^(bits - 1): flipping the top bit of each field
// makes it the two's complement of level - 2^(bits - 1).
fn dq_centered(v: u32, bits: u32) -> vec4<f32> {
    return dq_sbytes(v ^ (0x01010101u << (bits - 1u)), bits);
}

// Q8_0: the 4 signed bytes of a qs word.
fn dq_i8x4(v: u32) -> vec4<f32> {
    return dq_sbytes(v, 8u);
}

// Q4_0 / Q4_1 / Q4_K qs word: low nibbles (elements 4j.. of a 32-block, 64c + 4k.. of a K chunk) and
// high nibbles (16 + 4j.., 64c + 32 + 4k..).
fn dq_q4_bytes(v: u32) -> vec2<u32> {
    return vec2<u32>(v & 0x0f0f0f0fu, (v >> 4u) & 0x0f0f0f0fu);
}

// Four bits b0..b3 of n to bit 0 of bytes 0..3 (the shifted copies of n do not overlap).
fn dq_spread4(n: u32) -> u32 {
    return ((n & 15u) * 0x00204081u) & 0x01010101u;
}

// Q5_0 / Q5_1 qs word j (0..4) with the block's qh: bit 4j + k (16 + 4j + k) of qh is bit 4 of element
// 4j + k (16 + 4j + k).
fn dq_q5_bytes(v: u32, qh: u32, j: u32) -> vec2<u32> {
    let q = dq_q4_bytes(v);
    return q | (vec2<u32>(dq_spread4(qh >> (4u * j)), dq_spread4(qh >> (16u + 4u * j))) << vec2<u32>(4u));
}

// Q5_K qs word k of chunk c with qh word k (qh[4k .. 4k + 4]): bit 2c of each qh byte tops the low
// nibble, bit 2c + 1 the high one.
fn dq_q5k_bytes(v: u32, qh: u32, c: u32) -> vec2<u32> {
    let q = dq_q4_bytes(v);
    let h = vec2<u32>(qh >> (2u * c), qh >> (2u * c + 1u)) & vec2<u32>(0x01010101u);
    return q | (h << vec2<u32>(4u));
}

// Q6_K: ql word (ql[64h + 32a + 4k ..]) and qh word (qh[32h + 4k ..]) of half h, a = 0 or 1: unsigned
// 6-bit levels of quarter a (x: low nibbles, qh bits 2a) and quarter a + 2 (y: high nibbles, bits 2a + 4).
fn dq_q6k_bytes(ql: u32, qh: u32, a: u32) -> vec2<u32> {
    let q = dq_q4_bytes(ql);
    let h = vec2<u32>(qh >> (2u * a), qh >> (2u * a + 4u)) & vec2<u32>(0x03030303u);
    return q | (h << vec2<u32>(4u));
}
