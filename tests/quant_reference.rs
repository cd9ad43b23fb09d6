//! CPU reference tests for `glint::quant`: type table, hand-computed blocks, the GPU layout
//! (`dequantize_gpu(repack_for_gpu(x)) == dequantize(x)` bit for bit on random blocks) and
//! quantize -> dequantize error bounds. No GPU and no model file needed.

use glint::quant::{
    dequantize, dequantize_gpu, f32_to_f16, quantize, repack_for_gpu, QuantType, QK_K,
};

/// xorshift64* PRNG: deterministic test data without the rand crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Approximately standard normal (sum of 12 uniforms).
    fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.uniform() * 0.5).sum::<f32>()
    }
    /// A finite f16 of random sign with magnitude in [2^-8, 2^4).
    fn sane_f16(&mut self) -> u16 {
        let mag = 2f32.powf(self.uniform() * 6.0 - 2.0);
        let sign = if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        f32_to_f16(sign * mag)
    }
}

/// Byte offsets of the f16 fields (d, m, dmin) inside one ggml block.
fn f16_fields(ty: QuantType) -> &'static [usize] {
    match ty {
        QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q6_K => &[208],
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => &[],
    }
}

/// `n_blocks` random ggml blocks: random bytes, with scales / float elements finite and sane.
fn random_blocks(ty: QuantType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next_u64() as u8).collect();
    for block in data.chunks_exact_mut(bb) {
        match ty {
            QuantType::F32 => block.copy_from_slice(&(rng.normal() * 3.0).to_le_bytes()),
            QuantType::F16 => block.copy_from_slice(&rng.sane_f16().to_le_bytes()),
            QuantType::BF16 => {
                let v = rng.normal() * 3.0;
                block.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
            _ => {
                for &at in f16_fields(ty) {
                    block[at..at + 2].copy_from_slice(&rng.sane_f16().to_le_bytes());
                }
            }
        }
    }
    data
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn type_table() {
    // (type, ggml id, block size, block bytes, gpu words per block)
    let table = [
        (QuantType::F32, 0, 1, 4, 1),
        (QuantType::F16, 1, 1, 2, 1),
        (QuantType::BF16, 30, 1, 2, 1),
        (QuantType::Q8_0, 8, 32, 34, 9),
        (QuantType::Q4_0, 2, 32, 18, 5),
        (QuantType::Q4_1, 3, 32, 20, 5),
        (QuantType::Q5_0, 6, 32, 22, 6),
        (QuantType::Q5_1, 7, 32, 24, 6),
        (QuantType::Q4_K, 12, 256, 144, 36),
        (QuantType::Q5_K, 13, 256, 176, 44),
        (QuantType::Q6_K, 14, 256, 210, 56),
    ];
    assert_eq!(table.len(), QuantType::ALL.len());
    for (ty, id, bs, bb, words) in table {
        assert_eq!(ty.ggml_id(), id, "{ty}");
        assert_eq!(QuantType::from_ggml(id), Ok(ty));
        assert_eq!(ty.block_size(), bs, "{ty}");
        assert_eq!(ty.block_bytes(), bb, "{ty}");
        assert_eq!(ty.gpu_block_words(), words, "{ty}");
        assert_eq!(QuantType::parse(ty.name()), Some(ty));
        assert_eq!(QuantType::parse(&ty.name().to_lowercase()), Some(ty));
        assert_eq!(ty.row_bytes(4864), 4864 / bs * bb, "{ty}");
        if bs > 1 {
            // The GPU block holds the ggml bytes plus at most 3 bytes of padding (Q6_K: up to a
            // multiple of 16 bytes).
            let pad = if ty == QuantType::Q6_K { 16 } else { 4 };
            assert!(words * 4 >= bb && words * 4 - bb < pad, "{ty}");
            assert_eq!(ty.gpu_row_words(4864), 4864 / bs * words, "{ty}");
        }
    }
    assert_eq!(QuantType::F32.gpu_row_words(896), 896);
    assert_eq!(QuantType::F16.gpu_row_words(896), 448);
    assert_eq!(QuantType::BF16.gpu_row_words(7), 4);
    assert_eq!(QuantType::parse("fp16"), Some(QuantType::F16));
    assert_eq!(QuantType::parse("q3_k"), None);
    let err = QuantType::from_ggml(10).unwrap_err();
    assert!(
        err.contains("Q2_K") && err.contains("not supported"),
        "{err}"
    );
    let err = QuantType::from_ggml(23).unwrap_err();
    assert!(
        err.contains("IQ4_XS") && err.contains("not supported"),
        "{err}"
    );
    let err = QuantType::from_ggml(99).unwrap_err();
    assert!(err.contains("unknown ggml type 99"), "{err}");
}

#[test]
fn q4_0_hand_computed() {
    // d = 0.5 (f16 0x3800); qs[j] = j | (15 - j) << 4.
    let mut block = vec![0x00, 0x38];
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let expected = [
        -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0,
        3.5, //
        3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0,
    ];
    let mut y = [0f32; 32];
    dequantize(QuantType::Q4_0, &block, &mut y);
    assert_eq!(y, expected);
    let words = repack_for_gpu(QuantType::Q4_0, &block);
    assert_eq!(words.len(), 5);
    assert_eq!(words[0], 0x3800, "w0 = d with a zero high half");
    assert_eq!(words[1], u32::from_le_bytes([0xf0, 0xe1, 0xd2, 0xc3]));
    let mut z = [0f32; 32];
    dequantize_gpu(QuantType::Q4_0, &words, &mut z);
    assert_eq!(z, expected);
}

#[test]
fn q8_0_hand_computed() {
    // d = 0.25 (f16 0x3400).
    let qs: [i8; 8] = [-128, -1, 0, 1, 127, 2, -2, 100];
    let mut block = vec![0x00, 0x34];
    block.extend(qs.iter().map(|&q| q as u8));
    block.resize(34, 0);
    let mut expected = [0f32; 32];
    expected[..8].copy_from_slice(&[-32.0, -0.25, 0.0, 0.25, 31.75, 0.5, -0.5, 25.0]);
    let mut y = [0f32; 32];
    dequantize(QuantType::Q8_0, &block, &mut y);
    assert_eq!(y, expected);
    let words = repack_for_gpu(QuantType::Q8_0, &block);
    assert_eq!(words.len(), 9);
    assert_eq!(words[0], 0x3400);
    assert_eq!(
        words[1],
        u32::from_le_bytes([0x80, 0xff, 0x00, 0x01]),
        "qs[0] in the low byte"
    );
    let mut z = [0f32; 32];
    dequantize_gpu(QuantType::Q8_0, &words, &mut z);
    assert_eq!(z, expected);
}

#[test]
fn q6_k_hand_computed() {
    let mut b = [0u8; 210];
    b[208..210].copy_from_slice(&0x3800u16.to_le_bytes()); // d = 0.5
    for s in &mut b[192..208] {
        *s = 1; // every scale 1 ...
    }
    b[192 + 2] = (-2i8) as u8; // ... except sc[2] = -2 (elements 32..48)
    b[192 + 4] = 3; // elements 64..80
    b[192 + 6] = 4; // elements 96..112
    b[192 + 8] = 5; // elements 128..144
    b[0] = 0x21; // ql[0]: low nibble 1 -> element 0, high nibble 2 -> element 64
    b[32] = 0x43; // ql[32]: low 3 -> element 32, high 4 -> element 96
    b[128] = 0b11_10_01_00; // qh[0]: high bits 0, 1, 2, 3 of elements 0, 32, 64, 96
    b[64 + 5] = 0x0f; // ql[64 + 5]: low 15 -> element 128 + 5
    b[128 + 32 + 5] = 0x03; // qh[32 + 5]: high bits 3 of element 133
                            // Elements left at zero bits have q = -32, so y = 0.5 * sc * -32 = -16 * sc.
    let mut expected = [-16.0f32; 256];
    expected[32..48].fill(32.0);
    expected[64..80].fill(-48.0);
    expected[96..112].fill(-64.0);
    expected[128..144].fill(-80.0);
    expected[0] = 0.5 * 1.0 * (1.0 - 32.0); // -15.5
    expected[32] = 0.5 * -2.0 * ((3.0 + 16.0) - 32.0); // 13
    expected[64] = 0.5 * 3.0 * ((2.0 + 32.0) - 32.0); // 3
    expected[96] = 0.5 * 4.0 * ((4.0 + 48.0) - 32.0); // 40
    expected[133] = 0.5 * 5.0 * ((15.0 + 48.0) - 32.0); // 77.5
    assert_eq!(
        (
            expected[0],
            expected[32],
            expected[64],
            expected[96],
            expected[133]
        ),
        (-15.5, 13.0, 3.0, 40.0, 77.5)
    );
    let mut y = [0f32; 256];
    dequantize(QuantType::Q6_K, &b, &mut y);
    assert_eq!(y, expected);
    let words = repack_for_gpu(QuantType::Q6_K, &b);
    assert_eq!(words.len(), 56);
    assert_eq!(words[0], 0x21, "w0..w31 = ql");
    assert_eq!(words[32], 0b11_10_01_00, "w32..w47 = qh");
    assert_eq!(
        words[48],
        u32::from_le_bytes([1, 1, 0xfe, 1]),
        "w48..w51 = scales"
    );
    assert_eq!(words[52], 0x3800, "w52 = d");
    let mut z = [0f32; 256];
    dequantize_gpu(QuantType::Q6_K, &words, &mut z);
    assert_eq!(z, expected);
}

/// The GPU layout decodes to exactly what ggml's formulas give, for every type.
#[test]
fn gpu_layout_matches_reference_on_random_blocks() {
    let mut rng = Rng::new(0x5eed);
    for ty in QuantType::ALL {
        for n_blocks in [1usize, 2, 7, 64] {
            // Float types: n_blocks elements; keep an even count where a word holds two.
            let n_blocks = if ty.block_size() == 1 {
                n_blocks * 2
            } else {
                n_blocks
            };
            let n = n_blocks * ty.block_size();
            let data = random_blocks(ty, n_blocks, &mut rng);
            let mut want = vec![0f32; n];
            dequantize(ty, &data, &mut want);
            assert!(
                want.iter().all(|v| v.is_finite()),
                "{ty}: sane scales give finite values"
            );
            let words = repack_for_gpu(ty, &data);
            assert_eq!(words.len(), ty.gpu_row_words(n), "{ty}");
            let mut got = vec![0f32; n];
            dequantize_gpu(ty, &words, &mut got);
            assert_eq!(bits(&got), bits(&want), "{ty} with {n_blocks} blocks");
        }
    }
}

#[test]
fn unchanged_layouts_are_the_ggml_bytes() {
    let mut rng = Rng::new(7);
    for ty in [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q4_1,
        QuantType::Q5_1,
        QuantType::Q4_K,
        QuantType::Q5_K,
    ] {
        let data = random_blocks(ty, 8, &mut rng);
        let words = repack_for_gpu(ty, &data);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes, data, "{ty}");
    }
    // An odd F16 count pads the last word's high half with zero.
    let words = repack_for_gpu(QuantType::F16, &[0x00, 0x3c, 0x00, 0x40, 0x00, 0xc0]);
    assert_eq!(words, vec![0x4000_3c00, 0x0000_c000]);
    let mut y = [0f32; 3];
    dequantize_gpu(QuantType::F16, &words, &mut y);
    assert_eq!(y, [1.0, 2.0, -2.0]);
}

/// quantize -> dequantize on a row of `n` values; returns (max |err| / block absmax, rms err / rms x).
fn round_trip(ty: QuantType, x: &[f32]) -> (Vec<f32>, f32, f32) {
    let q = quantize(ty, x);
    assert_eq!(q.len(), ty.row_bytes(x.len()), "{ty}");
    let mut y = vec![0f32; x.len()];
    dequantize(ty, &q, &mut y);
    let (mut worst, mut se, mut sx) = (0f32, 0f64, 0f64);
    for (xb, yb) in x
        .chunks(ty.block_size().max(32))
        .zip(y.chunks(ty.block_size().max(32)))
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, b) in xb.iter().zip(yb) {
            let e = (a - b).abs();
            if amax > 0.0 {
                worst = worst.max(e / amax);
            }
            se += f64::from(e) * f64::from(e);
            sx += f64::from(*a) * f64::from(*a);
        }
    }
    (y, worst, (se / sx).sqrt() as f32)
}

/// Per type: the largest error of one element relative to its block's absmax, and the RMS error
/// relative to the RMS of the data, on Gaussian data. The non-K bounds follow from the formats:
/// half a quantization step (a whole step where Q4_0/Q5_0 clamp the value opposite the absmax)
/// plus the f16 rounding of the scales. The K-quant bounds (6-bit sub-block scales, searched by
/// ggml's make_qkx2_quants / make_qx_quants) are about 1.4x what the reference quantizer reaches.
#[test]
fn quantize_round_trip_error_bounds() {
    let mut rng = Rng::new(42);
    let n = 64 * QK_K;
    let x: Vec<f32> = (0..n).map(|_| rng.normal() * 0.02).collect();
    // (type, max |err| / absmax, rms err / rms)
    let bounds = [
        (QuantType::F32, 0.0, 0.0),
        (QuantType::F16, 1.0 / 2048.0, 1.0 / 2048.0),
        (QuantType::BF16, 1.0 / 256.0, 1.0 / 256.0),
        (QuantType::Q8_0, 0.5 / 127.0 + 1.0 / 2048.0, 0.01),
        (QuantType::Q4_0, 1.0 / 8.0 + 1.0 / 2048.0, 0.13),
        (QuantType::Q4_1, 0.5 * 2.0 / 15.0 + 4.0 / 2048.0, 0.11),
        (QuantType::Q5_0, 1.0 / 16.0 + 1.0 / 2048.0, 0.065),
        (QuantType::Q5_1, 0.5 * 2.0 / 31.0 + 4.0 / 2048.0, 0.055),
        (QuantType::Q4_K, 0.10, 0.09),
        (QuantType::Q5_K, 0.06, 0.045),
        (QuantType::Q6_K, 0.025, 0.025),
    ];
    for (ty, max_rel, rms_rel) in bounds {
        let (y, worst, rms) = round_trip(ty, &x);
        println!("{ty}: max |err|/absmax {worst:.5} (bound {max_rel:.5}), rms err/rms {rms:.5} (bound {rms_rel:.5})");
        assert!(y.iter().all(|v| v.is_finite()), "{ty}");
        assert!(
            worst <= max_rel,
            "{ty}: max relative error {worst} > {max_rel}"
        );
        assert!(rms <= rms_rel, "{ty}: rms relative error {rms} > {rms_rel}");
    }
}

#[test]
fn quantize_special_blocks() {
    for ty in QuantType::ALL {
        let bs = ty.block_size().max(32);
        let n = bs.max(QK_K);
        // All zeros -> exact zeros (no NaN from a zero scale).
        let (y, _, _) = round_trip(ty, &vec![0.0; n]);
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros");
        // A constant block, positive and negative.
        for c in [0.75f32, -0.75] {
            let (y, worst, _) = round_trip(ty, &vec![c; n]);
            assert!(worst <= 0.07, "{ty}: constant {c}: relative error {worst}");
            assert!(y.iter().all(|v| v.is_finite()), "{ty}");
        }
        // One outlier among small values: the outlier itself survives within 1%.
        let mut x = vec![0.001f32; n];
        x[5] = 10.0;
        let (y, _, _) = round_trip(ty, &x);
        assert!((y[5] - 10.0).abs() <= 0.1, "{ty}: outlier became {}", y[5]);
    }
}

#[test]
fn quantize_is_deterministic_and_q8_0_is_exact_on_its_grid() {
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..QK_K).map(|_| rng.normal()).collect();
    for ty in QuantType::ALL {
        assert_eq!(quantize(ty, &x), quantize(ty, &x), "{ty}");
    }
    // Values k * d with d an f16 and |k| <= 127 round-trip exactly through Q8_0.
    let d = 0.125f32;
    let grid: Vec<f32> = (0..32)
        .map(|k| (k as f32 * 8.0 - 127.0).clamp(-127.0, 127.0) * d)
        .collect();
    let (y, _, _) = round_trip(QuantType::Q8_0, &grid);
    assert_eq!(y, grid);
}

#[test]
fn bf16_and_f16_conversions_round_to_nearest_even() {
    use glint::quant::{bf16_to_f32, f16_to_f32, f32_to_bf16};
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    assert_eq!(f32_to_f16(1.0), 0x3c00);
    assert_eq!(f32_to_f16(65504.0), 0x7bff);
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
}
