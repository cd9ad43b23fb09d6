//! Tensor storage formats: float types and ggml block quantizations.
//!
//! - [`dequantize`]: CPU reference dequantization of ggml bytes, with ggml's formulas and operation
//!   order (`dequantize_row_*` in ggml-quants.c), so results match ggml bit for bit.
//! - [`repack_for_gpu`] / [`dequantize_gpu`]: the GPU layout (below) and a CPU reference of what
//!   the WGSL kernels must compute from it; tests check `dequantize_gpu(repack(x)) == dequantize(x)`.
//! - [`quantize`]: f32 -> ggml bytes for load-time quantization, following ggml's reference
//!   quantizers (`quantize_row_*_ref`, no importance matrix), K-quants included.
//!
//! # GPU layout
//!
//! WGSL has no 8-bit storage type, and ggml blocks of 18, 22, 34 or 210 bytes are not 4-byte
//! aligned, so a kernel reading ggml bytes directly would need unaligned two-word loads and
//! shifts for every field. Instead each block is padded at load time to a whole number of
//! little-endian `u32` words, keeping a single buffer per tensor (no separate scale arrays to bind)
//! and making every block start on a word boundary. Byte `k` of a block's payload sits in word
//! `k / 4`, bits `8 * (k % 4)..`. Per type (words per block):
//!
//! | type | words | layout |
//! |---|---|---|
//! | F32 | 1 per element | the f32 bits |
//! | F16, BF16 | 1 per 2 elements | element 2i in the low 16 bits (row lengths are even) |
//! | Q8_0 | 9 | w0 = d (f16 in the low half, high half 0); w1..w8 = qs\[32\] (qs\[4k\] low byte of w1+k) |
//! | Q4_0 | 5 | w0 = d; w1..w4 = qs\[16\] |
//! | Q4_1 | 5 | w0 = d \| m << 16; w1..w4 = qs\[16\] (ggml bytes unchanged) |
//! | Q5_0 | 6 | w0 = d; w1 = qh; w2..w5 = qs\[16\] |
//! | Q5_1 | 6 | w0 = d \| m << 16; w1 = qh; w2..w5 = qs\[16\] (unchanged) |
//! | Q4_K | 36 | unchanged: w0 = d \| dmin << 16; w1..w3 = scales\[12\]; w4..w35 = qs\[128\] |
//! | Q5_K | 44 | unchanged: w0 = d \| dmin << 16; w1..w3 = scales; w4..w11 = qh\[32\]; w12..w43 = qs |
//! | Q6_K | 56 | w0..w31 = ql\[128\]; w32..w47 = qh\[64\]; w48..w51 = scales\[16\] (i8); w52 = d; w53..w55 = 0 |
//!
//! Q6_K's block is padded to 56 words (not 53) so that every block, and so each of its runs of 4
//! words, is 16-byte aligned: the quantized matvec reads a unit's words as vec4 loads
//! (matvec_quant.wgsl), 6 for a Q6_K quarter super-block where 53-word blocks took 9 and the
//! shuffles to realign them.
//!
//! A row of `n` elements is `n / block_size` consecutive blocks ([`QuantType::gpu_row_words`]);
//! rows are consecutive.

// Index loops mirror ggml's formulas, which index several arrays at once.
#![allow(clippy::needless_range_loop)]

use half::f16;

/// Elements per block of the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// A tensor element type that the engine can load (ggml names).
#[allow(non_camel_case_types)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Names of the ggml types that exist (or existed) but that the engine does not implement.
fn unsupported_ggml_name(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31 => "Q4_0_4_4 (removed from ggml)",
        32 => "Q4_0_4_8 (removed from ggml)",
        33 => "Q4_0_8_8 (removed from ggml)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4 (removed from ggml)",
        37 => "IQ4_NL_4_8 (removed from ggml)",
        38 => "IQ4_NL_8_8 (removed from ggml)",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        _ => return None,
    })
}

impl QuantType {
    /// Every supported type.
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// The type with ggml type id `id`; the error says whether the id is unknown or names a ggml
    /// type that is not supported.
    pub fn from_ggml(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => QuantType::F32,
            1 => QuantType::F16,
            2 => QuantType::Q4_0,
            3 => QuantType::Q4_1,
            6 => QuantType::Q5_0,
            7 => QuantType::Q5_1,
            8 => QuantType::Q8_0,
            12 => QuantType::Q4_K,
            13 => QuantType::Q5_K,
            14 => QuantType::Q6_K,
            30 => QuantType::BF16,
            _ => {
                return Err(match unsupported_ggml_name(id) {
                    Some(name) => format!("ggml type {id} ({name}) is not supported"),
                    None => format!("unknown ggml type {id}"),
                })
            }
        })
    }

    /// The ggml type id.
    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q8_0 => 8,
            QuantType::Q4_K => 12,
            QuantType::Q5_K => 13,
            QuantType::Q6_K => 14,
            QuantType::BF16 => 30,
        }
    }

    /// ggml's name for the type ("F32", "Q4_K"...).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "F32",
            QuantType::F16 => "F16",
            QuantType::BF16 => "BF16",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
        }
    }

    /// Parses a type name, case-insensitively ("q8_0", "Q4_K", "f16"; also "fp32", "fp16").
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("fp32") {
            return Some(QuantType::F32);
        }
        if s.eq_ignore_ascii_case("fp16") {
            return Some(QuantType::F16);
        }
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// True for the block-quantized types (everything but F32, F16, BF16).
    pub fn is_quantized(self) -> bool {
        !matches!(self, QuantType::F32 | QuantType::F16 | QuantType::BF16)
    }

    /// Elements per block: 1 for the float types, 32 or 256 for the quantized ones.
    pub fn block_size(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q8_0
            | QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1 => QK,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => QK_K,
        }
    }

    /// ggml bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 | QuantType::BF16 => 2,
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// `u32` words per block in the GPU layout. For F16 and BF16 one word holds two elements
    /// (two "blocks"), which this cannot express: it returns 1; use [`Self::gpu_row_words`].
    pub fn gpu_block_words(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q8_0 => 9,
            QuantType::Q4_0 | QuantType::Q4_1 => 5,
            QuantType::Q5_0 | QuantType::Q5_1 => 6,
            QuantType::Q4_K => 36,
            QuantType::Q5_K => 44,
            QuantType::Q6_K => 56,
        }
    }

    /// ggml bytes of a row of `n` elements (`n` a multiple of [`Self::block_size`]; a partial
    /// trailing block is not counted).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_size() * self.block_bytes()
    }

    /// `u32` words of a row of `n` elements in the GPU layout (`n` a multiple of the block size;
    /// for F16/BF16 an odd `n` is rounded up to a whole word).
    pub fn gpu_row_words(self, n: usize) -> usize {
        match self {
            QuantType::F16 | QuantType::BF16 => n.div_ceil(2),
            _ => n / self.block_size() * self.gpu_block_words(),
        }
    }

    /// Where the GPU layout inserts zero bytes into a ggml block: (byte position, count).
    fn gpu_padding(self) -> Option<(usize, usize)> {
        match self {
            // After the f16 `d`, so that the quants start on a word boundary.
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 => Some((2, 2)),
            // After the trailing f16 `d`, up to 56 words (16-byte aligned blocks).
            QuantType::Q6_K => Some((210, 14)),
            _ => None,
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions
// ---------------------------------------------------------------------------------------------

/// IEEE half bits -> f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// f32 -> IEEE half bits, rounding to nearest even (as ggml's GGML_FP32_TO_FP16).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// bfloat16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f32 -> bfloat16 bits, rounding to nearest even and quieting NaNs (ggml_compute_fp32_to_bf16).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn le_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(le_u16(b, at))
}

/// ggml's get_scale_min_k4: the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K
/// super-block, from its 12 packed scale bytes (`q(k)` returns byte k).
#[inline]
fn scale_min_k4(j: usize, q: impl Fn(usize) -> u8) -> (u8, u8) {
    if j < 4 {
        (q(j) & 63, q(j + 4) & 63)
    } else {
        (
            (q(j + 4) & 0xf) | ((q(j - 4) >> 6) << 4),
            (q(j + 4) >> 4) | ((q(j) >> 6) << 4),
        )
    }
}

fn check_lengths(what: &str, ty: QuantType, n: usize, have: usize, need: usize, unit: &str) {
    assert!(
        n.is_multiple_of(ty.block_size()),
        "{what} {ty}: {n} elements is not a multiple of the block size {}",
        ty.block_size()
    );
    assert!(
        have == need,
        "{what} {ty}: {n} elements need {need} {unit}, got {have}"
    );
}

// ---------------------------------------------------------------------------------------------
// CPU reference dequantization (ggml bytes)
// ---------------------------------------------------------------------------------------------

/// Dequantizes ggml bytes into `out.len()` f32 values with ggml's formulas.
///
/// # Panics
/// If `out.len()` is not a multiple of the block size or `data.len() != ty.row_bytes(out.len())`.
pub fn dequantize(ty: QuantType, data: &[u8], out: &mut [f32]) {
    check_lengths(
        "dequantize",
        ty,
        out.len(),
        data.len(),
        ty.row_bytes(out.len()),
        "bytes",
    );
    let bs = ty.block_size();
    let blocks = data
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(bs));
    match ty {
        QuantType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        QuantType::F16 => {
            for (b, y) in blocks {
                y[0] = le_f16(b, 0);
            }
        }
        QuantType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16_to_f32(le_u16(b, 0));
            }
        }
        QuantType::Q8_0 => {
            for (b, y) in blocks {
                let d = le_f16(b, 0);
                for j in 0..QK {
                    y[j] = f32::from(b[2 + j] as i8) * d;
                }
            }
        }
        QuantType::Q4_0 => {
            for (b, y) in blocks {
                let d = le_f16(b, 0);
                let qs = &b[2..18];
                for j in 0..QK / 2 {
                    y[j] = ((qs[j] & 0xf) as i32 - 8) as f32 * d;
                    y[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        QuantType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (le_f16(b, 0), le_f16(b, 2));
                let qs = &b[4..20];
                for j in 0..QK / 2 {
                    y[j] = f32::from(qs[j] & 0xf) * d + m;
                    y[j + QK / 2] = f32::from(qs[j] >> 4) * d + m;
                }
            }
        }
        QuantType::Q5_0 => {
            for (b, y) in blocks {
                let d = le_f16(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((u32::from(qs[j] & 0xf) | h0) as i32 - 16) as f32 * d;
                    y[j + QK / 2] = ((u32::from(qs[j] >> 4) | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        QuantType::Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (le_f16(b, 0), le_f16(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (u32::from(qs[j] & 0xf) | h0) as f32 * d + m;
                    y[j + QK / 2] = (u32::from(qs[j] >> 4) | h1) as f32 * d + m;
                }
            }
        }
        QuantType::Q4_K => {
            for (b, y) in blocks {
                let (d, dmin) = (le_f16(b, 0), le_f16(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for c in 0..4 {
                    let (sc, m) = scale_min_k4(2 * c, |k| scales[k]);
                    let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                    let (sc, m) = scale_min_k4(2 * c + 1, |k| scales[k]);
                    let (d2, m2) = (d * f32::from(sc), dmin * f32::from(m));
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        y[64 * c + l] = d1 * f32::from(q[l] & 0xf) - m1;
                        y[64 * c + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
                    }
                }
            }
        }
        QuantType::Q5_K => {
            for (b, y) in blocks {
                let (d, dmin) = (le_f16(b, 0), le_f16(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for c in 0..4 {
                    let (sc, m) = scale_min_k4(2 * c, |k| scales[k]);
                    let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                    let (sc, m) = scale_min_k4(2 * c + 1, |k| scales[k]);
                    let (d2, m2) = (d * f32::from(sc), dmin * f32::from(m));
                    let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                    let ql = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[64 * c + l] = d1 * f32::from((ql[l] & 0xf) + h1) - m1;
                        y[64 * c + 32 + l] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
                    }
                }
            }
        }
        QuantType::Q6_K => {
            for (b, y) in blocks {
                let d = le_f16(b, 208);
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
                        y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
                        y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
                        y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPU layout
// ---------------------------------------------------------------------------------------------

/// Converts ggml bytes (whole blocks) into the GPU layout described in the module docs, as words.
///
/// For F16/BF16 an odd element count gets a zero high half in its last word; a tensor whose rows
/// have an odd length must therefore be repacked row by row so that each row starts on a word
/// ([`QuantType::gpu_row_words`]).
///
/// # Panics
/// If `data.len()` is not a whole number of blocks.
pub fn repack_for_gpu(ty: QuantType, data: &[u8]) -> Vec<u32> {
    repack_for_gpu_bytes(ty, data)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// [`repack_for_gpu`] as the bytes of a buffer (little-endian words): `data` itself, borrowed, where
/// the layouts already agree (blocks of whole words, no padding: F32, Q4_K, Q5_K, and F16/BF16 of an
/// even length), so that a memory-mapped file is copied once, into the GPU buffer.
///
/// # Panics
/// If `data.len()` is not a whole number of blocks.
pub fn repack_for_gpu_bytes(ty: QuantType, data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    let bb = ty.block_bytes();
    assert!(
        data.len().is_multiple_of(bb),
        "repack_for_gpu {ty}: {} bytes is not a whole number of {bb}-byte blocks",
        data.len()
    );
    match ty.gpu_padding() {
        None if data.len().is_multiple_of(4) => Cow::Borrowed(data),
        None => {
            let mut out = data.to_vec();
            out.resize(data.len().next_multiple_of(4), 0);
            Cow::Owned(out)
        }
        Some(_) => {
            let mut out = Vec::with_capacity(data.len() / bb * 4 * ty.gpu_block_words());
            repack_pieces(ty, data, |piece| out.extend_from_slice(piece));
            Cow::Owned(out)
        }
    }
}

/// Whether the GPU layout inserts bytes into each block of `ty` (Q8_0, Q4_0, Q5_0, Q6_K), so that a
/// file's blocks are not the GPU's.
pub fn gpu_padded(ty: QuantType) -> bool {
    ty.gpu_padding().is_some()
}

/// What `repack_for_gpu_bytes` makes of `data` (whole blocks of a padded format, [`gpu_padded`]),
/// handed to `out` in order in pieces of at most 4 KiB, without a copy of the whole: the loader writes
/// the pieces straight into a mapped GPU buffer, so a memory-mapped file is read once and copied once.
///
/// # Panics
/// If `ty` is not padded or `data.len()` is not a whole number of blocks.
pub fn repack_pieces(ty: QuantType, data: &[u8], mut out: impl FnMut(&[u8])) {
    let (at, pad) = ty.gpu_padding().expect("a padded format");
    let bb = ty.block_bytes();
    let gb = 4 * ty.gpu_block_words();
    debug_assert_eq!(bb + pad, gb);
    assert!(data.len().is_multiple_of(bb), "whole {ty} blocks");
    let mut buf = [0u8; 4096];
    for group in data.chunks(buf.len() / gb * bb) {
        let mut n = 0;
        for block in group.chunks_exact(bb) {
            buf[n..n + at].copy_from_slice(&block[..at]);
            buf[n + at..n + at + pad].fill(0);
            buf[n + at + pad..n + gb].copy_from_slice(&block[at..]);
            n += gb;
        }
        out(&buf[..n]);
    }
}

/// Byte `k` of a block held as words (what WGSL computes with shifts and masks).
#[inline]
fn wbyte(w: &[u32], k: usize) -> u32 {
    (w[k / 4] >> (8 * (k % 4))) & 0xff
}

/// Sign-extends the low 8 bits (WGSL: `(i32(x) << 24) >> 24`).
#[inline]
fn sext8(x: u32) -> i32 {
    ((x << 24) as i32) >> 24
}

#[inline]
fn lo_f16(w: u32) -> f32 {
    f16_to_f32(w as u16)
}

#[inline]
fn hi_f16(w: u32) -> f32 {
    f16_to_f32((w >> 16) as u16)
}

/// CPU reference of the GPU kernels: dequantizes words in the GPU layout into `out.len()` values.
/// Must equal [`dequantize`] of the ggml bytes bit for bit.
///
/// # Panics
/// If `out.len()` is not a multiple of the block size or `words.len() != ty.gpu_row_words(out.len())`.
pub fn dequantize_gpu(ty: QuantType, words: &[u32], out: &mut [f32]) {
    check_lengths(
        "dequantize_gpu",
        ty,
        out.len(),
        words.len(),
        ty.gpu_row_words(out.len()),
        "words",
    );
    let bs = ty.block_size();
    let bw = ty.gpu_block_words();
    match ty {
        QuantType::F32 => {
            for (y, w) in out.iter_mut().zip(words) {
                *y = f32::from_bits(*w);
            }
        }
        QuantType::F16 | QuantType::BF16 => {
            let conv = if ty == QuantType::F16 {
                f16_to_f32
            } else {
                bf16_to_f32
            };
            for (i, y) in out.iter_mut().enumerate() {
                *y = conv((words[i / 2] >> (16 * (i % 2))) as u16);
            }
        }
        _ => {
            for (w, y) in words.chunks_exact(bw).zip(out.chunks_exact_mut(bs)) {
                dequantize_gpu_block(ty, w, y);
            }
        }
    }
}

/// One quantized block in the GPU layout -> `y` (block_size values).
fn dequantize_gpu_block(ty: QuantType, w: &[u32], y: &mut [f32]) {
    match ty {
        QuantType::Q8_0 => {
            let d = lo_f16(w[0]);
            let qs = &w[1..9];
            for (j, y) in y.iter_mut().enumerate() {
                *y = sext8(wbyte(qs, j)) as f32 * d;
            }
        }
        QuantType::Q4_0 => {
            let d = lo_f16(w[0]);
            let qs = &w[1..5];
            for j in 0..16 {
                let q = wbyte(qs, j);
                y[j] = ((q & 0xf) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        QuantType::Q4_1 => {
            let (d, m) = (lo_f16(w[0]), hi_f16(w[0]));
            let qs = &w[1..5];
            for j in 0..16 {
                let q = wbyte(qs, j);
                y[j] = (q & 0xf) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        QuantType::Q5_0 | QuantType::Q5_1 => {
            let d = lo_f16(w[0]);
            let qh = w[1];
            let qs = &w[2..6];
            for j in 0..16 {
                let q = wbyte(qs, j);
                let q0 = (q & 0xf) | (((qh >> j) & 1) << 4);
                let q1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
                if ty == QuantType::Q5_0 {
                    y[j] = (q0 as i32 - 16) as f32 * d;
                    y[j + 16] = (q1 as i32 - 16) as f32 * d;
                } else {
                    let m = hi_f16(w[0]);
                    y[j] = q0 as f32 * d + m;
                    y[j + 16] = q1 as f32 * d + m;
                }
            }
        }
        QuantType::Q4_K | QuantType::Q5_K => {
            let (d, dmin) = (lo_f16(w[0]), hi_f16(w[0]));
            let scales = &w[1..4];
            let (qh, qs) = if ty == QuantType::Q5_K {
                (&w[4..12], &w[12..44])
            } else {
                (&w[0..0], &w[4..36])
            };
            for c in 0..4 {
                let (sc, m) = scale_min_k4(2 * c, |k| wbyte(scales, k) as u8);
                let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                let (sc, m) = scale_min_k4(2 * c + 1, |k| wbyte(scales, k) as u8);
                let (d2, m2) = (d * f32::from(sc), dmin * f32::from(m));
                for l in 0..32 {
                    let q = wbyte(qs, 32 * c + l);
                    let (mut q0, mut q1) = (q & 0xf, q >> 4);
                    if ty == QuantType::Q5_K {
                        let h = wbyte(qh, l);
                        q0 += ((h >> (2 * c)) & 1) << 4;
                        q1 += ((h >> (2 * c + 1)) & 1) << 4;
                    }
                    y[64 * c + l] = d1 * q0 as f32 - m1;
                    y[64 * c + 32 + l] = d2 * q1 as f32 - m2;
                }
            }
        }
        QuantType::Q6_K => {
            let d = lo_f16(w[52]);
            let (ql, qh, sc) = (&w[0..32], &w[32..48], &w[48..52]);
            for i in 0..QK_K {
                // Element i: half h, quarter r (which 32-run), lane l.
                let (h, r, l) = (i / 128, (i % 128) / 32, i % 32);
                let lo = (wbyte(ql, 64 * h + l + 32 * (r % 2)) >> (4 * (r / 2))) & 0xf;
                let hi = (wbyte(qh, 32 * h + l) >> (2 * r)) & 3;
                let q = (lo | (hi << 4)) as i32 - 32;
                let s = sext8(wbyte(sc, i / 16));
                y[i] = d * s as f32 * q as f32;
            }
        }
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => {
            unreachable!("float types are not blocks")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization (ggml reference quantizers)
// ---------------------------------------------------------------------------------------------

/// ggml's nearest_int: round to nearest, ties to even, for |x| < 2^22 (garbage, not UB, beyond).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// Quantizes `x` into ggml bytes of type `ty` with ggml's reference quantizers (no importance
/// matrix): Q4_K/Q5_K use make_qkx2_quants' min/scale search, Q6_K make_qx_quants.
///
/// # Panics
/// If `x.len()` is not a multiple of the block size.
pub fn quantize(ty: QuantType, x: &[f32]) -> Vec<u8> {
    let bs = ty.block_size();
    assert!(
        x.len().is_multiple_of(bs),
        "quantize {ty}: {} elements is not a multiple of the block size {bs}",
        x.len()
    );
    let mut out = vec![0u8; ty.row_bytes(x.len())];
    for (x, y) in x
        .chunks_exact(bs)
        .zip(out.chunks_exact_mut(ty.block_bytes()))
    {
        match ty {
            QuantType::F32 => y.copy_from_slice(&x[0].to_le_bytes()),
            QuantType::F16 => y.copy_from_slice(&f32_to_f16(x[0]).to_le_bytes()),
            QuantType::BF16 => y.copy_from_slice(&f32_to_bf16(x[0]).to_le_bytes()),
            QuantType::Q8_0 => quantize_q8_0(x, y),
            QuantType::Q4_0 => quantize_q4_0(x, y),
            QuantType::Q4_1 => quantize_q4_1(x, y),
            QuantType::Q5_0 => quantize_q5_0(x, y),
            QuantType::Q5_1 => quantize_q5_1(x, y),
            QuantType::Q4_K => quantize_qk_k(x, y, false),
            QuantType::Q5_K => quantize_qk_k(x, y, true),
            QuantType::Q6_K => quantize_q6_k(x, y),
        }
    }
    out
}

/// The value of largest magnitude (first one on ties), as ggml's Q4_0/Q5_0 search it.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (q, v) in y[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

fn quantize_q4_0(x: &[f32], y: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for j in 0..16 {
        let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        y[2 + j] = q0 | (q1 << 4);
    }
}

fn quantize_q4_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        y[4 + j] = q0 | (q1 << 4);
    }
}

fn quantize_q5_0(x: &[f32], y: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        y[6 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
        qh |= u32::from((q0 & 0x10) >> 4) << j;
        qh |= u32::from((q1 & 0x10) >> 4) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn quantize_q5_1(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] - min) * id + 0.5) as u8;
        let q1 = ((x[j + 16] - min) * id + 0.5) as u8;
        y[8 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
        qh |= u32::from((q0 & 0x10) >> 4) << j;
        qh |= u32::from((q1 & 0x10) >> 4) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

/// ggml's make_qkx2_quants: searches a scale and a (non-positive) min for `x` quantized to
/// 0..=nmax, minimizing the weighted squared error. Writes the levels to `l`; returns
/// (scale, -min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let qf = q as f32;
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K (`five_bits` false) or Q5_K (true) super-block, as quantize_row_q{4,5}_K_ref.
fn quantize_qk_k(x: &[f32], y: &mut [u8], five_bits: bool) {
    let nmax = if five_bits { 31 } else { 15 };
    let (rmin, nstep) = if five_bits { (-0.5, 15) } else { (-1.0, 20) };
    let mut levels = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            0.1,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d_bits = f32_to_f16(max_scale / 63.0);
    let dmin_bits = f32_to_f16(max_min / 63.0);
    y[0..2].copy_from_slice(&d_bits.to_le_bytes());
    y[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    y[4..16].copy_from_slice(&sc);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, |k| sc[k]);
        let d = f16_to_f32(d_bits) * f32::from(s);
        if d == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin_bits) * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    if five_bits {
        let (qh, qs) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (mut l1, mut l2) = (levels[64 * c + l], levels[64 * c + 32 + l]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[l] |= 1 << (2 * c);
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[l] |= 2 << (2 * c);
                }
                qs[32 * c + l] = l1 | (l2 << 4);
            }
        }
    } else {
        let qs = &mut y[16..144];
        for c in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] = levels[64 * c + l] | (levels[64 * c + 32 + l] << 4);
            }
        }
    }
}

/// ggml's make_qx_quants with rmse_type 1 and no weights (weights x²): a signed scale for `x`
/// quantized to -nmax..nmax-1, stored in `l` offset by nmax.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = level(iscale, v);
        l[i] = (q + nmax) as u8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let q = level(iscale, v);
            let w = v * v;
            sumlx += w * v * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K super-block, as quantize_row_q6_K_ref.
fn quantize_q6_k(x: &[f32], y: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut levels[16 * ib..16 * ib + 16],
        );
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    y.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d_bits = f32_to_f16(1.0 / iscale);
    y[208..210].copy_from_slice(&d_bits.to_le_bytes());
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        y[192 + ib] = sc[ib] as u8;
    }
    for j in 0..16 {
        let d = f16_to_f32(d_bits) * f32::from(sc[j]);
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for h in 0..2 {
        let lv = &levels[128 * h..128 * h + 128];
        for l in 0..32 {
            let (q1, q2, q3, q4) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
            ql[64 * h + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
            ql[64 * h + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
            qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}
