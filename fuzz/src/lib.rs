//! What the fuzz targets share: the real model files (read once per process), the weight walk a
//! model load makes (host side only, no GPU), the invariants of a validated model config, and a
//! reference implementation of the stop-string filter to check the real one against.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use glint::chat::ChatTemplate;
use glint::config::ModelConfig;
use glint::gguf_loader::GgufModel;
use glint::model::WeightSource;
use glint::safetensors_loader::SafetensorsWeights;
use glint::stop::StopFilter;
use glint::tokenizer::Tokenizer;

/// The real GGUF files of scripts/fetch-model.sh.
pub const QWEN_GGUF: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// models/ of the repository, or `GLINT_MODELS` (as the tests use it).
pub fn models_dir() -> PathBuf {
    std::env::var_os("GLINT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// A test fixture (tests/fixtures/...).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

/// A real GGUF's header and metadata (memory-mapped: only the pages read are loaded). Panics with
/// what to run when the file is absent: a fuzz target that needs it cannot run without it.
pub fn open_gguf(name: &str) -> GgufModel {
    let path = models_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh (or set GLINT_MODELS)",
        path.display()
    );
    match glint::gguf::Gguf::open(&path) {
        Ok(file) => match GgufModel::from_gguf(file) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        },
        Err(e) => panic!("{e}"),
    }
}

/// The Qwen2.5 GGUF: its tokenizer rebuilt from `tokenizer.ggml.*` (slow: built once per process).
pub fn qwen_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        open_gguf(QWEN_GGUF)
            .tokenizer()
            .expect("Qwen GGUF tokenizer")
            .expect("the Qwen GGUF carries a vocabulary")
    })
}

/// The chat templates rendered by the chat_template target: the Qwen2.5 GGUF's (bos/eos from its
/// tokenizer), the SmolLM2 GGUF's (bos/eos texts from its token list: its pre-tokenizer is not
/// supported, the template is), and the Qwen2.5 tokenizer_config.json fixture's.
pub fn chat_templates() -> &'static [ChatTemplate] {
    static T: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    T.get_or_init(|| {
        let qwen = open_gguf(QWEN_GGUF);
        let qwen_t = qwen
            .chat_template(Some(qwen_tokenizer()))
            .expect("Qwen template")
            .expect("the Qwen GGUF has a template");
        let smol = smollm2_template();
        let config = fixture("qwen2.5-coder-0.5b-instruct/tokenizer_config.json");
        let fixture_t = ChatTemplate::from_tokenizer_config(&config)
            .expect("fixture template")
            .expect("the fixture has a template");
        vec![qwen_t, smol, fixture_t]
    })
}

fn smollm2_template() -> ChatTemplate {
    let path = models_dir().join(SMOLLM2_GGUF);
    assert!(path.exists(), "{} is missing", path.display());
    let f = glint::gguf::Gguf::open(&path).expect("SmolLM2 GGUF");
    let tokens = f
        .get_str_array("tokenizer.ggml.tokens")
        .expect("token list")
        .expect("SmolLM2 tokens");
    let text = |key: &str| {
        f.get_u32(key)
            .expect("id")
            .and_then(|id| tokens.get(id as usize))
            .map(|s| s.to_string())
    };
    let src = f
        .get_str("tokenizer.chat_template")
        .expect("template")
        .expect("SmolLM2 template");
    ChatTemplate::new(
        src,
        text("tokenizer.ggml.bos_token_id"),
        text("tokenizer.ggml.eos_token_id"),
    )
    .expect("SmolLM2 template compiles")
}

/// What must hold for any config that the loaders accept: every size positive, the head counts
/// divisible, and the sizes the model derives from them computable without overflow.
pub fn check_config(cfg: &ModelConfig) {
    let sizes = [
        ("hidden", cfg.hidden),
        ("intermediate", cfg.intermediate),
        ("n_layers", cfg.n_layers),
        ("n_heads", cfg.n_heads),
        ("n_kv_heads", cfg.n_kv_heads),
        ("head_dim", cfg.head_dim),
        ("vocab", cfg.vocab),
    ];
    for (name, v) in sizes {
        assert!(v > 0, "accepted config has {name} = 0: {cfg:?}");
    }
    assert_eq!(cfg.n_heads % cfg.n_kv_heads, 0, "{cfg:?}");
    assert!(
        cfg.n_heads.checked_mul(cfg.head_dim).is_some(),
        "q dim overflows: {cfg:?}"
    );
    assert!(
        cfg.rms_eps.is_finite() && cfg.rms_eps >= 0.0,
        "accepted rms_eps {}",
        cfg.rms_eps
    );
    assert!(
        cfg.rope.theta.is_finite() && cfg.rope.theta > 0.0,
        "accepted rope_theta {}",
        cfg.rope.theta
    );
    // Panics on overflow in the debug-assertions build of the fuzzer.
    let _ = cfg.kv_bytes_per_token(glint::kernels::KvType::F32);
}

/// The weights a loader reads (host side: a GGUF file's repacked or dequantized tensors, a
/// safetensors file's borrowed bytes and converted vectors).
pub trait Source {
    fn has(&self, name: &str) -> bool;
    /// Bytes of the host matrix.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> glint::Result<usize>;
    fn vector(&self, name: &str, len: usize) -> glint::Result<Vec<f32>>;
}

impl Source for GgufModel {
    fn has(&self, name: &str) -> bool {
        WeightSource::has(self, name)
    }
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> glint::Result<usize> {
        WeightSource::matrix(self, name, rows, cols).map(|m| m.data.len())
    }
    fn vector(&self, name: &str, len: usize) -> glint::Result<Vec<f32>> {
        WeightSource::vector(self, name, len)
    }
}

impl Source for SafetensorsWeights {
    fn has(&self, name: &str) -> bool {
        SafetensorsWeights::has(self, name)
    }
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> glint::Result<usize> {
        SafetensorsWeights::matrix(self, name, rows, cols).map(|m| m.data.len())
    }
    fn vector(&self, name: &str, len: usize) -> glint::Result<Vec<f32>> {
        SafetensorsWeights::vector(self, name, len)
    }
}

/// Read the weights in the order and with the shapes `model::Decoder::new` asks for (engine/src/model.rs),
/// up to the first error. Returns how many tensors were read.
pub fn load_weights(src: &dyn Source, cfg: &ModelConfig) -> glint::Result<usize> {
    let (h, i, hd) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
    let (qd, kvd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
    let mut n = 0;
    let mut matrix = |name: &str, rows: usize, cols: usize| -> glint::Result<()> {
        let bytes = src.matrix(name, rows, cols)?;
        assert!(bytes > 0, "{name}: empty matrix");
        n += 1;
        Ok(())
    };
    matrix("model.embed_tokens.weight", cfg.vocab, h)?;
    if !(cfg.tie_embeddings && !src.has("lm_head.weight")) {
        matrix("lm_head.weight", cfg.vocab, h)?;
    }
    // A fuzzed file holds a few tensors: the walk ends at the first layer that is missing one.
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        for (name, rows, cols, bias) in [
            ("self_attn.q_proj", qd, h, cfg.qkv_bias),
            ("self_attn.k_proj", kvd, h, cfg.qkv_bias),
            ("self_attn.v_proj", kvd, h, cfg.qkv_bias),
            ("self_attn.o_proj", h, qd, false),
            ("mlp.gate_proj", i, h, false),
            ("mlp.up_proj", i, h, false),
            ("mlp.down_proj", h, i, false),
        ] {
            matrix(&format!("{p}.{name}.weight"), rows, cols)?;
            if bias {
                let v = src.vector(&format!("{p}.{name}.bias"), rows)?;
                assert_eq!(v.len(), rows);
            }
        }
        for name in ["input_layernorm", "post_attention_layernorm"] {
            let v = src.vector(&format!("{p}.{name}.weight"), h)?;
            assert_eq!(v.len(), h);
        }
    }
    let v = src.vector("model.norm.weight", h)?;
    assert_eq!(v.len(), h);
    Ok(n)
}

/// The stop filter's specification, written the slow and obvious way: the pieces are pushed one at
/// a time until the text so far contains a stop string; the output is that text cut before the
/// earliest stop. Returns the output and the index of the piece that completed a stop.
pub fn stop_reference(stops: &[String], pieces: &[String]) -> (String, Option<usize>) {
    let mut text = String::new();
    for (k, p) in pieces.iter().enumerate() {
        text.push_str(p);
        let first = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min();
        if let Some(at) = first {
            text.truncate(at);
            return (text, Some(k));
        }
    }
    (text, None)
}

/// Run the real [`StopFilter`] over `pieces` and assert what it promises: what it has shown is at
/// every step a prefix of the reference output (so it never shows a stop string, nor any text past
/// one), it reports the stop at the piece that completes it, and the final text equals the reference.
pub fn check_stop_filter(stops: &[String], pieces: &[String]) -> String {
    let (want, stop_at) = stop_reference(stops, pieces);
    let mut f = StopFilter::new(stops);
    let mut shown = String::new();
    for (k, p) in pieces.iter().enumerate() {
        let (out, stopped) = f.push(p);
        shown.push_str(&out);
        assert!(
            want.starts_with(&shown),
            "shown {shown:?} is not a prefix of {want:?} (stops {stops:?}, pieces {pieces:?})"
        );
        assert_eq!(
            stopped,
            stop_at == Some(k),
            "piece {k}: stop reported {stopped}, expected at {stop_at:?} (stops {stops:?}, pieces {pieces:?})"
        );
        if stopped {
            assert_eq!(shown, want, "stops {stops:?}, pieces {pieces:?}");
            return shown;
        }
    }
    shown.push_str(&f.finish());
    assert_eq!(shown, want, "stops {stops:?}, pieces {pieces:?}");
    shown
}
