//! A Qwen2 model from one GGUF file: hyper-parameters from `qwen2.*` metadata, weights (kept in their
//! quantized form, repacked to the GPU layout of quant.rs), tokenizer from `tokenizer.ggml.*`, chat
//! template from `tokenizer.chat_template`. A lone .gguf is enough to chat.

use crate::chat::ChatTemplate;
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::model::WeightSource;
use crate::quant;
use crate::tokenizer::Tokenizer;
use crate::weights::HostMatrix;
use std::borrow::Cow;
use std::path::Path;

pub struct GgufModel {
    pub file: Gguf,
    pub cfg: ModelConfig,
}

/// transformers' tensor name -> GGUF's (qwen2 arch: no Q/K permutation).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_gguf(Gguf::open(path)?)
    }

    /// The model of an already parsed file (e.g. [`Gguf::parse`] of bytes in memory): its
    /// hyper-parameters are read and checked.
    pub fn from_gguf(file: Gguf) -> Result<Self> {
        let cfg = Self::config(&file)?;
        Ok(GgufModel { file, cfg })
    }

    fn config(f: &Gguf) -> Result<ModelConfig> {
        let arch = f
            .get_str("general.architecture")?
            .ok_or_else(|| f.missing("general.architecture"))?
            .to_string();
        if arch != "qwen2" {
            return Err(Error::format(
                f.path(),
                format!("general.architecture is '{arch}'; supported: qwen2"),
            ));
        }
        let u = |k: &str| -> Result<usize> {
            let key = format!("qwen2.{k}");
            Ok(f.get_u64(&key)?.ok_or_else(|| f.missing(&key))? as usize)
        };
        let hidden = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = f
            .get_u64("qwen2.attention.head_count_kv")?
            .map(|x| x as usize)
            .unwrap_or(n_heads);
        let vocab = match f.tensor("token_embd.weight") {
            Some(t) => t.n_rows() as usize,
            None => {
                return Err(Error::format(
                    f.path(),
                    "tensor 'token_embd.weight' is missing",
                ))
            }
        };
        let cfg = ModelConfig {
            architecture: arch,
            hidden,
            intermediate: u("feed_forward_length")?,
            n_layers: u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim: f
                .get_u64("qwen2.attention.key_length")?
                .map(|x| x as usize)
                .unwrap_or(hidden / n_heads.max(1)),
            vocab,
            rms_eps: f
                .get_f32("qwen2.attention.layer_norm_rms_epsilon")?
                .unwrap_or(1e-6),
            rope_theta: f.get_f32("qwen2.rope.freq_base")?.unwrap_or(10000.0) as f64,
            max_position: f
                .get_u64("qwen2.context_length")?
                .map(|x| x as usize)
                .unwrap_or(32768),
            tie_embeddings: f.tensor("output.weight").is_none(),
            bos: f.get_u32("tokenizer.ggml.bos_token_id")?,
            eos: f
                .get_u32("tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
        };
        cfg.validate().map_err(|m| Error::format(f.path(), m))?;
        Ok(cfg)
    }

    /// The tokenizer rebuilt from `tokenizer.ggml.*`, or None when the file carries no vocabulary.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        let f = &self.file;
        let Some(tokens) = f.get_str_array("tokenizer.ggml.tokens")? else {
            return Ok(None);
        };
        let model = f.get_str("tokenizer.ggml.model")?.unwrap_or("gpt2");
        if model != "gpt2" {
            return Err(Error::format(
                f.path(),
                format!("tokenizer.ggml.model is '{model}'; supported: gpt2 (byte-level BPE)"),
            ));
        }
        let tokens: Vec<String> = tokens.into_iter().map(str::to_string).collect();
        let types = f
            .get_i32_array("tokenizer.ggml.token_type")?
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let merges: Vec<String> = f
            .get_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| f.missing("tokenizer.ggml.merges"))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let pre = f.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        Tokenizer::from_gguf_vocab(&tokens, &types, &merges, pre).map(Some)
    }

    /// The chat template from `tokenizer.chat_template`, with bos/eos token texts.
    pub fn chat_template(&self, tok: Option<&Tokenizer>) -> Result<Option<ChatTemplate>> {
        let f = &self.file;
        let Some(src) = f.get_str("tokenizer.chat_template")? else {
            return Ok(None);
        };
        let text = |key: &str| -> Result<Option<String>> {
            Ok(f.get_u32(key)?
                .and_then(|id| tok.and_then(|t| t.id_to_token(id))))
        };
        ChatTemplate::new(
            src,
            text("tokenizer.ggml.bos_token_id")?,
            text("tokenizer.ggml.eos_token_id")?,
        )
        .map(Some)
    }

    /// Stop ids: the eos id, plus the end-of-turn id if the file names one.
    pub fn generation_config(&self) -> Result<GenerationConfig> {
        let f = &self.file;
        let mut eos: Vec<u32> = self.cfg.eos.clone();
        if let Some(eot) = f.get_u32("tokenizer.ggml.eot_token_id")? {
            eos.push(eot);
        }
        Ok(GenerationConfig {
            eos,
            ..Default::default()
        })
    }
}

impl WeightSource for GgufModel {
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor(&g).is_some())
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>> {
        let f = &self.file;
        let g = gguf_name(name)
            .ok_or_else(|| Error::Model(format!("no GGUF name for tensor '{name}'")))?;
        let t = f
            .tensor(&g)
            .ok_or_else(|| Error::format(f.path(), format!("tensor '{g}' is missing")))?;
        if t.dims != [cols as u64, rows as u64] {
            return Err(Error::format(
                f.path(),
                format!(
                    "tensor '{g}' has dims {:?}, the metadata implies [{cols}, {rows}]",
                    t.dims
                ),
            ));
        }
        let words = quant::repack_for_gpu(t.ggml_type, f.tensor_data(t));
        Ok(HostMatrix {
            name: g,
            format: t.ggml_type,
            rows,
            cols,
            data: Cow::Owned(bytemuck::cast_slice(&words).to_vec()),
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let f = &self.file;
        let g = gguf_name(name)
            .ok_or_else(|| Error::Model(format!("no GGUF name for tensor '{name}'")))?;
        let t = f
            .tensor(&g)
            .ok_or_else(|| Error::format(f.path(), format!("tensor '{g}' is missing")))?;
        if t.n_elements() != len as u64 {
            return Err(Error::format(
                f.path(),
                format!("tensor '{g}' has dims {:?}, expected [{len}]", t.dims),
            ));
        }
        let mut out = vec![0f32; len];
        quant::dequantize(t.ggml_type, f.tensor_data(t), &mut out);
        Ok(out)
    }
}

/// Every tensor's bytes, for progress reporting.
pub fn total_bytes(f: &Gguf) -> u64 {
    f.tensors.iter().map(|t| t.size).sum()
}
