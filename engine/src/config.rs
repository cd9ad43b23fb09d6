//! Model hyper-parameters (config.json, or GGUF metadata) and generation defaults
//! (generation_config.json).

use crate::error::{Error, Result};
use crate::family::{Family, Rope, RopeScaling};
use serde_json::Value;
use std::path::Path;

/// The shapes and constants of a decoder (any family of family.rs).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: &'static Family,
    /// As the file names it (config.json architectures[0] or model_type, GGUF general.architecture).
    pub architecture: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    /// q, k, v carry a bias (the family's default, or config.json attention_bias).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE.
    pub qk_norm: bool,
    pub rope: Rope,
    pub max_position: usize,
    pub tie_embeddings: bool,
    pub bos: Option<u32>,
    /// Stop ids from config.json (generation_config.json may add more).
    pub eos: Vec<u32>,
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Ids from a field that may be a number, a list of numbers, or null/absent.
pub(crate) fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_json(&v).map_err(|msg| Error::format(path, msg))
    }

    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let arch = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .or_else(|| {
                v.get("model_type")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .ok_or("neither 'architectures' nor 'model_type' is set")?;
        let family = Family::from_hf(&arch).ok_or_else(|| {
            format!(
                "architecture '{arch}' is not supported (supported: {})",
                Family::supported_hf()
            )
        })?;
        if v.get("mlp_bias").and_then(|b| b.as_bool()) == Some(true) {
            return Err("mlp_bias = true is not supported".into());
        }
        let req = |k: &str| -> std::result::Result<usize, String> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .filter(|&x| x > 0)
                .ok_or(format!("field '{k}' is missing or not a positive integer"))
        };
        let hidden = req("hidden_size")?;
        let n_heads = req("num_attention_heads")?;
        let n_kv_heads = v
            .get("num_key_value_heads")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(n_heads);
        let head_dim = match v.get("head_dim").and_then(|x| x.as_u64()) {
            Some(h) => h as usize,
            None => hidden / n_heads,
        };
        let cfg = ModelConfig {
            family,
            architecture: arch,
            hidden,
            intermediate: req("intermediate_size")?,
            n_layers: req("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab: req("vocab_size")?,
            rms_eps: v
                .get("rms_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6) as f32,
            qkv_bias: v
                .get("attention_bias")
                .and_then(|b| b.as_bool())
                .unwrap_or(family.qkv_bias),
            qk_norm: family.qk_norm,
            rope: rope_from_json(v, family)?,
            max_position: v
                .get("max_position_embeddings")
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .unwrap_or(32768),
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            bos: v
                .get("bos_token_id")
                .and_then(|x| x.as_u64())
                .map(|x| x as u32),
            eos: id_list(v.get("eos_token_id")),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the model can be built from these values: every size positive, the head counts
    /// compatible, the norm epsilon and RoPE base usable numbers (a negative epsilon or a NaN base
    /// would give NaN logits, not an error), and the sizes derived from them representable.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (field, v) in [
            ("hidden_size", self.hidden),
            ("intermediate_size", self.intermediate),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab),
        ] {
            if v == 0 {
                return Err(format!("{field} is 0, expected a positive integer"));
            }
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(format!(
                "rms_norm_eps {} must be a finite value >= 0",
                self.rms_eps
            ));
        }
        if !(self.rope.theta.is_finite() && self.rope.theta > 0.0) {
            return Err(format!(
                "rope_theta {} must be a finite value > 0",
                self.rope.theta
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(4) || self.head_dim > 256 {
            return Err(format!(
                "head_dim {} must be a multiple of 4 and at most 256",
                self.head_dim
            ));
        }
        // Byte sizes of the largest buffers (f32): the embedding, an MLP matrix, a Q projection and
        // the KV cache of one token.
        let sizes: [(&str, &[usize]); 4] = [
            ("vocab_size x hidden_size", &[self.vocab, self.hidden, 4]),
            (
                "intermediate_size x hidden_size",
                &[self.intermediate, self.hidden, 4],
            ),
            (
                "num_attention_heads x head_dim",
                &[self.n_heads, self.head_dim, 4],
            ),
            (
                "num_hidden_layers x num_key_value_heads x head_dim",
                &[self.n_layers, self.n_kv_heads, self.head_dim, 8],
            ),
        ];
        for (what, factors) in sizes {
            if factors
                .iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .is_none()
            {
                let values = &factors[..factors.len() - 1];
                return Err(format!("{what} = {values:?} overflows: not a real model"));
            }
        }
        Ok(())
    }

    /// The attention heads of a layer.
    pub fn heads(&self) -> crate::graph::Heads {
        crate::graph::Heads {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// KV cache bytes per token (K and V, all layers). Cannot overflow for a config that
    /// [`validate`](Self::validate) accepted.
    pub fn kv_bytes_per_token(&self, kv: crate::kernels::KvType) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * kv.bytes()
    }
}

/// rope_theta and the scaling, from transformers 5's `rope_parameters` or the older top-level
/// `rope_theta` with `rope_scaling` (real Llama 3 configs), whichever the file has.
fn rope_from_json(v: &Value, family: &Family) -> std::result::Result<Rope, String> {
    let params = v.get("rope_parameters").filter(|r| r.is_object());
    let scaling = v.get("rope_scaling").filter(|r| r.is_object()).or(params);
    let theta = v
        .get("rope_theta")
        .and_then(|x| x.as_f64())
        .or_else(|| {
            params
                .and_then(|r| r.get("rope_theta"))
                .and_then(|x| x.as_f64())
        })
        .unwrap_or(family.default_rope_theta);
    let Some(rs) = scaling else {
        return Ok(Rope {
            theta,
            scaling: RopeScaling::None,
        });
    };
    let kind = rs
        .get("rope_type")
        .or(rs.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> std::result::Result<f64, String> {
        rs.get(k).and_then(|x| x.as_f64()).ok_or(format!(
            "rope scaling '{kind}': field '{k}' is missing or not a number"
        ))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position: num("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } = s
            {
                if !(factor > 0.0
                    && low_freq_factor > 0.0
                    && high_freq_factor > low_freq_factor
                    && original_max_position > 0.0)
                {
                    return Err(format!(
                        "rope scaling 'llama3': factor {factor}, low_freq_factor {low_freq_factor}, \
                         high_freq_factor {high_freq_factor}, original_max_position_embeddings \
                         {original_max_position}: expected positive values with high > low"
                    ));
                }
            }
            s
        }
        other => {
            return Err(format!(
                "rope scaling type '{other}' is not supported (supported: default, llama3)"
            ))
        }
    };
    Ok(Rope { theta, scaling })
}

/// Sampling defaults and stop ids from generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos: Vec<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Self::from_json(&read_json(path)?))
    }

    /// The fields of a parsed generation_config.json; absent or mistyped fields are `None`.
    pub fn from_json(v: &Value) -> Self {
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
        GenerationConfig {
            eos: id_list(v.get("eos_token_id")),
            do_sample: v.get("do_sample").and_then(|x| x.as_bool()),
            temperature: f("temperature"),
            top_k: v.get("top_k").and_then(|x| x.as_u64()).map(|x| x as usize),
            top_p: f("top_p"),
            min_p: f("min_p"),
            repetition_penalty: f("repetition_penalty"),
        }
    }
}
