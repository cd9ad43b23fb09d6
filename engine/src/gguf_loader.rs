//! A model from one GGUF file: hyper-parameters from `{arch}.*` metadata (any family of family.rs),
//! weights (kept in their quantized form, repacked to the GPU layout of quant.rs; Llama's permuted Q/K
//! rows put back in transformers' order), tokenizer from `tokenizer.ggml.*`, chat template from
//! `tokenizer.chat_template`. A lone .gguf is enough to chat.

use crate::chat::ChatTemplate;
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::family::{Family, Rope, RopeScaling};
use crate::gguf::{Gguf, TensorInfo};
use crate::model::WeightSource;
use crate::quant;
use crate::tokenizer::Tokenizer;
use crate::weights::{HostLayout, HostMatrix, QuantType};
use std::borrow::Cow;
use std::path::Path;

pub struct GgufModel {
    pub file: Gguf,
    pub cfg: ModelConfig,
}

/// transformers' tensor name -> GGUF's.
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
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
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
        let family = Family::from_gguf(&arch).ok_or_else(|| {
            Error::format(
                f.path(),
                format!(
                    "general.architecture is '{arch}'; supported: {}",
                    Family::supported_gguf()
                ),
            )
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize> {
            let key = key(k);
            Ok(f.get_u64(&key)?.ok_or_else(|| f.missing(&key))? as usize)
        };
        let hidden = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = f
            .get_u64(&key("attention.head_count_kv"))?
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
        let head_dim = f
            .get_u64(&key("attention.key_length"))?
            .map(|x| x as usize)
            .unwrap_or(hidden / n_heads.max(1));
        let theta = f
            .get_f32(&key("rope.freq_base"))?
            .map_or(family.default_rope_theta, |x| x as f64);
        let rope = Rope {
            theta,
            scaling: Self::rope_scaling(f, &arch, head_dim)?,
        };
        let cfg = ModelConfig {
            family,
            architecture: arch.clone(),
            hidden,
            intermediate: u("feed_forward_length")?,
            n_layers: u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            rms_eps: f
                .get_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            qkv_bias: f.tensor("blk.0.attn_q.bias").is_some(),
            qk_norm: family.qk_norm,
            rope,
            max_position: f
                .get_u64(&key("context_length"))?
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

    /// Llama 3 RoPE scaling as llama.cpp stores it: a `rope_freqs.weight` tensor of per-frequency
    /// divisors (what its converter writes), or `{arch}.rope.scaling.*` metadata.
    fn rope_scaling(f: &Gguf, arch: &str, head_dim: usize) -> Result<RopeScaling> {
        if let Some(t) = f.tensor("rope_freqs.weight") {
            if t.n_elements() != (head_dim / 2) as u64 {
                return Err(Error::format(
                    f.path(),
                    format!(
                        "tensor 'rope_freqs.weight' has dims {:?}, expected [{}] (head_dim / 2)",
                        t.dims,
                        head_dim / 2
                    ),
                ));
            }
            let mut v = vec![0f32; head_dim / 2];
            quant::dequantize(t.ggml_type, f.tensor_data(t), &mut v);
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(Error::format(
                    f.path(),
                    format!("tensor 'rope_freqs.weight' holds {bad}; expected positive factors"),
                ));
            }
            return Ok(RopeScaling::Factors(v.iter().map(|&x| x as f64).collect()));
        }
        let kind = f.get_str(&format!("{arch}.rope.scaling.type"))?;
        match kind {
            None | Some("none") => Ok(RopeScaling::None),
            Some("llama3") => {
                let num = |k: &str| -> Result<f64> {
                    let key = format!("{arch}.rope.scaling.{k}");
                    Ok(f.get_f32(&key)?.ok_or_else(|| f.missing(&key))? as f64)
                };
                Ok(RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position: num("original_context_length")?,
                })
            }
            Some(other) => Err(Error::format(
                f.path(),
                format!(
                    "{arch}.rope.scaling.type is '{other}'; supported: none, llama3 (or a rope_freqs tensor)"
                ),
            )),
        }
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
        let pre = f.get_str("tokenizer.ggml.pre")?.unwrap_or("gpt2");
        let add_bos = f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let bos = f.get_u32("tokenizer.ggml.bos_token_id")?;
        let t = Tokenizer::from_gguf_vocab(&tokens, &types, &merges, pre)
            .map_err(|e| Error::format(f.path(), e.to_string()))?;
        Ok(Some(t.with_bos_to_add(bos.filter(|_| add_bos))))
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

impl GgufModel {
    /// The GGUF name and tensor of a [rows, cols] matrix, its dims checked.
    fn matrix_tensor(&self, name: &str, rows: usize, cols: usize) -> Result<(String, &TensorInfo)> {
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
        Ok((g, t))
    }
}

impl WeightSource for GgufModel {
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor(&g).is_some())
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>> {
        let f = &self.file;
        let (g, t) = self.matrix_tensor(name, rows, cols)?;
        // Padded formats stay in the file's layout until they are written into the GPU buffer.
        let layout = if quant::gpu_padded(t.ggml_type) {
            HostLayout::File
        } else {
            HostLayout::Gpu
        };
        let mut data = match layout {
            HostLayout::File => Cow::Borrowed(f.tensor_data(t)),
            HostLayout::Gpu => quant::repack_for_gpu_bytes(t.ggml_type, f.tensor_data(t)),
        };
        if self.cfg.family.gguf_qk_permuted {
            let heads = if g.ends_with(".attn_q.weight") {
                Some(self.cfg.n_heads)
            } else if g.ends_with(".attn_k.weight") {
                Some(self.cfg.n_kv_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                data = Cow::Owned(unpermute_rows(&data, rows, h));
            }
        }
        Ok(HostMatrix {
            name: g,
            format: t.ggml_type,
            rows,
            cols,
            data,
            layout,
        })
    }

    fn format(&self, name: &str, rows: usize, cols: usize) -> Result<QuantType> {
        self.matrix_tensor(name, rows, cols)
            .map(|(_, t)| t.ggml_type)
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

/// Undo llama.cpp's permutation of Q / K rows (convert_hf_to_gguf.py `permute`: within each head, the
/// rows [a * half + b] of transformers' rotate-half layout were stored at [2b + a]): row (head h,
/// a * half + b) of the result is row (h, 2b + a) of `data`. Rows are whole blocks, so this works on
/// quantized data as on floats.
pub fn unpermute_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..half {
                let dst = h * head_dim + a * half + b;
                let src = h * head_dim + 2 * b + a;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Every tensor's bytes, for progress reporting.
pub fn total_bytes(f: &Gguf) -> u64 {
    f.tensors.iter().map(|t| t.size).sum()
}
