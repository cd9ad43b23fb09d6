//! The model shapes the lab's cases run at: Qwen2-0.5B's by default, or those of a model's config
//! (config.json of a model directory, or a GGUF file's metadata). Only the configuration is read: no
//! weights are loaded.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Shapes and constants of a Qwen2-family decoder, as the kernel cases need them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDims {
    /// Where the shapes come from: "Qwen2-0.5B (built in)" or the model's path.
    pub source: String,
    pub hidden: usize,
    pub intermediate: usize,
    /// Rows of the embedding table and of the LM head.
    pub vocab: usize,
    /// Logits the argmax scans: Qwen2-0.5B's tokenizer defines 151646 of its 151936 rows; from a config
    /// (no tokenizer read) the whole vocabulary.
    pub n_valid: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_eps: f32,
    /// Prompt tokens of the prefill cases in thorough mode (quick mode uses fewer).
    pub prefill: usize,
}

/// Prefill length of the thorough lab: the engine's default batch.
const PREFILL: usize = 512;

impl Default for ModelDims {
    fn default() -> Self {
        Self::qwen2_0_5b()
    }
}

impl ModelDims {
    /// Qwen2-0.5B (and Qwen2.5-0.5B, which has the same shapes).
    pub fn qwen2_0_5b() -> Self {
        ModelDims {
            source: "Qwen2-0.5B (built in)".into(),
            hidden: 896,
            intermediate: 4864,
            vocab: 151936,
            n_valid: 151646,
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            rope_theta: 1e6,
            rms_eps: 1e-6,
            prefill: PREFILL,
        }
    }

    pub fn from_config(cfg: &ModelConfig, source: String) -> Self {
        ModelDims {
            source,
            hidden: cfg.hidden,
            intermediate: cfg.intermediate,
            vocab: cfg.vocab,
            n_valid: cfg.vocab,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            rope_theta: cfg.rope.theta,
            rms_eps: cfg.rms_eps,
            prefill: PREFILL,
        }
    }

    /// The shapes of a model directory (its config.json) or GGUF file (its metadata), without loading
    /// any weight.
    pub fn from_model_path(path: &Path) -> Result<Self> {
        let cfg = if path.is_file() {
            crate::gguf_loader::GgufModel::open(path)?.cfg
        } else if path.is_dir() {
            ModelConfig::from_file(&path.join("config.json"))?
        } else {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        };
        Ok(Self::from_config(&cfg, path.display().to_string()))
    }

    /// "Qwen2-0.5B (built in): hidden 896, intermediate 4864, vocab 151936 (argmax over 151646),
    /// 14/2 heads x 64, rope theta 1000000, prefill 512 tokens".
    pub fn describe(&self) -> String {
        format!(
            "{}: hidden {}, intermediate {}, vocab {} (argmax over {}), {}/{} heads x {}, rope theta {}, prefill {} tokens",
            self.source,
            self.hidden,
            self.intermediate,
            self.vocab,
            self.n_valid,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.rope_theta,
            self.prefill
        )
    }
}
