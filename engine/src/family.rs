//! What differs between the decoder families Glint runs: one table, read by the one decoder in model.rs
//! and by the loaders. Every family is a pre-norm decoder (RMSNorm, GQA attention with rotary
//! embeddings, a SiLU-gated MLP); they differ in the few switches below.
//!
//! Adding a family: add a `Family` to `FAMILIES` (its names in config.json and GGUF, its switches), a
//! tiny random model with transformers goldens to tests/fixtures, and a line to the family tests. A
//! switch none of the existing families has (a new norm, a new RoPE scaling) goes in here too, with
//! its kernel.

/// One decoder family.
#[derive(Debug, PartialEq)]
pub struct Family {
    /// Our name, also the GGUF `general.architecture` and the prefix of its metadata keys.
    pub name: &'static str,
    /// config.json `architectures[0]`.
    pub hf_architecture: &'static str,
    /// config.json `model_type`.
    pub model_type: &'static str,
    /// q, k and v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// A per-head RMSNorm on q and k before RoPE (Qwen3: q_norm, k_norm).
    pub qk_norm: bool,
    /// llama.cpp's converter permutes the rows of the Q and K weights of this family for its
    /// interleaved RoPE; the loader undoes it, as transformers does when it loads a GGUF.
    pub gguf_qk_permuted: bool,
    /// rope_theta when the model does not say.
    pub default_rope_theta: f64,
}

pub const QWEN2: Family = Family {
    name: "qwen2",
    hf_architecture: "Qwen2ForCausalLM",
    model_type: "qwen2",
    qkv_bias: true,
    qk_norm: false,
    gguf_qk_permuted: false,
    default_rope_theta: 10000.0,
};

pub const QWEN3: Family = Family {
    name: "qwen3",
    hf_architecture: "Qwen3ForCausalLM",
    model_type: "qwen3",
    qkv_bias: false,
    qk_norm: true,
    gguf_qk_permuted: false,
    default_rope_theta: 10000.0,
};

pub const LLAMA: Family = Family {
    name: "llama",
    hf_architecture: "LlamaForCausalLM",
    model_type: "llama",
    qkv_bias: false,
    qk_norm: false,
    gguf_qk_permuted: true,
    default_rope_theta: 10000.0,
};

/// Every supported family.
pub static FAMILIES: [&Family; 3] = [&QWEN2, &QWEN3, &LLAMA];

impl Family {
    /// The family of a config.json `architectures[0]` or `model_type`.
    pub fn from_hf(name: &str) -> Option<&'static Family> {
        FAMILIES
            .iter()
            .copied()
            .find(|f| f.hf_architecture == name || f.model_type == name)
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf(arch: &str) -> Option<&'static Family> {
        FAMILIES.iter().copied().find(|f| f.name == arch)
    }

    /// "Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM" for error messages.
    pub fn supported_hf() -> String {
        FAMILIES
            .iter()
            .map(|f| f.hf_architecture)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// "qwen2, qwen3, llama" for error messages.
    pub fn supported_gguf() -> String {
        FAMILIES
            .iter()
            .map(|f| f.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How rotary frequencies are scaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.x (transformers `_compute_llama3_parameters`): wavelengths below
    /// original_max / high_freq_factor keep their frequency, those above original_max / low_freq_factor
    /// are divided by `factor`, and those between are interpolated.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
    /// Per-frequency divisors read from a GGUF `rope_freqs.weight` tensor (llama.cpp's form of the
    /// same scaling): inv_freq[i] / factors[i].
    Factors(Vec<f64>),
}

/// The rotary embedding of a model: inv_freq[i] = theta^(-2i / head_dim), then the scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// The `head_dim / 2` inverse frequencies, in f64.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let half = head_dim / 2;
        let base = (0..half).map(|i| self.theta.powf(-(2.0 * i as f64) / head_dim as f64));
        match &self.scaling {
            RopeScaling::None => base.collect(),
            RopeScaling::Factors(f) => base.zip(f).map(|(x, d)| x / d).collect(),
            &RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                base.map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        }
    }

    /// cos / sin of every (position, frequency) pair, computed in f64: [positions, head_dim / 2] x
    /// (cos, sin) as f32.
    pub fn table(&self, positions: usize, head_dim: usize) -> Vec<f32> {
        let inv = self.inv_freq(head_dim);
        let mut t = Vec::with_capacity(positions * inv.len() * 2);
        for pos in 0..positions {
            for f in &inv {
                let a = pos as f64 * f;
                t.push(a.cos() as f32);
                t.push(a.sin() as f32);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_found_by_each_of_its_names() {
        for f in FAMILIES {
            assert_eq!(Family::from_hf(f.hf_architecture), Some(f));
            assert_eq!(Family::from_hf(f.model_type), Some(f));
            assert_eq!(Family::from_gguf(f.name), Some(f));
        }
        assert_eq!(Family::from_hf("MambaForCausalLM"), None);
    }

    /// transformers' llama3 inv_freq for theta 5e5, head_dim 32, factor 32, low 1, high 4, original
    /// context 64 (the tiny-llama fixture): the highest frequencies are kept, the lowest divided by
    /// 32, and the ones between interpolated.
    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let rope = Rope {
            theta: 5e5,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 64.0,
            },
        };
        let plain = Rope {
            theta: 5e5,
            scaling: RopeScaling::None,
        }
        .inv_freq(32);
        let scaled = rope.inv_freq(32);
        // wavelength 2 pi < 16: kept.
        assert_eq!(scaled[0], plain[0]);
        assert_eq!(scaled[1], plain[1]);
        // The last frequency's wavelength is far above 64: divided by the factor.
        assert!((scaled[15] - plain[15] / 32.0).abs() < 1e-18);
        // Between 16 and 64: interpolated, strictly between f / 32 and f.
        let mid: Vec<usize> = (0..16)
            .filter(|&i| {
                let w = 2.0 * std::f64::consts::PI / plain[i];
                (16.0..=64.0).contains(&w)
            })
            .collect();
        assert!(!mid.is_empty());
        for i in mid {
            assert!(scaled[i] < plain[i] && scaled[i] > plain[i] / 32.0, "{i}");
        }
        // llama.cpp's rope_freqs form of the same scaling gives the same frequencies.
        let factors: Vec<f64> = plain.iter().zip(&scaled).map(|(p, s)| p / s).collect();
        let from_factors = Rope {
            theta: 5e5,
            scaling: RopeScaling::Factors(factors),
        }
        .inv_freq(32);
        for (a, b) in from_factors.iter().zip(&scaled) {
            assert!((a - b).abs() <= 1e-15 * b.abs());
        }
    }
}
