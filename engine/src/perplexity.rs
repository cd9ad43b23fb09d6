//! Scoring a token sequence on the GPU ([`Model::score`]), and llama-perplexity's two measures over a
//! text: perplexity, and the KL divergence of a model's next-token distributions from a base model's.
//!
//! The method is llama.cpp's (tools/perplexity/perplexity.cpp), step for step:
//! - the whole text is tokenized at once; a BOS id is put in front only where the model adds one
//!   ([`model_bos`]), and then also replaces the first id of every chunk;
//! - the ids are cut into `n_chunks = min(--chunks, n_tokens / n_ctx)` non-overlapping chunks of
//!   `n_ctx`, at least two chunks' worth of ids being required;
//! - each chunk runs from an empty cache, and positions `i` in `n_ctx / 2 ..= n_ctx - 2` are scored:
//!   the log-probability of id `i + 1` given ids `0..=i` (the first half only gives context);
//! - PPL = exp(mean NLL) over every scored position so far, and its "+/-" is
//!   `PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1))` ([`NllStats`]).
//!
//! The log-softmax is over every logit row (llama.cpp's n_vocab, transformers' log_softmax), reduced on
//! the GPU (shaders/logprobs.wgsl): of the [n_ctx, vocab] logits only a few words per position come back.
//!
//! KL divergence: a base run writes, per scored position, the base model's log-probability of the
//! target and its top-k ids with their log-probabilities ([`KlBaseWriter`], format below); a later run of
//! another model (or quantization, or kernel path) on the same text reads it ([`KlBase`]), evaluates its
//! own log-probabilities at the base's top-k ids on the GPU, and accumulates llama.cpp's statistics
//! ([`KlStats`]). The KL divergence at a position is computed over k + 1 buckets: the base's top-k ids,
//! and everything else lumped into one bucket, with mass P_rest = 1 - sum of the base's top-k
//! probabilities and Q_rest = 1 - sum of the current model's probabilities at those ids:
//! `KL = sum_{top-k} p ln(p / q) + P_rest ln(P_rest / Q_rest)`. By the log-sum inequality this is at most
//! the full-vocabulary KL, and it misses only the divergence inside the tail bucket, which the base puts
//! at most P_rest of its mass on (with k = 32, typically well under 1%). llama.cpp stores the base's
//! whole distribution (16-bit log-probabilities over a 16-nat range, terms below e^-16 dropped).
//!
//! The base file, version 1, little-endian:
//! ```text
//! offset size
//!   0     8  magic "GLINTKLD"
//!   8     4  version (1)
//!  12     4  n_ctx
//!  16     4  n_chunks
//!  20     4  scored positions per chunk (n_ctx - 1 - n_ctx / 2)
//!  24     4  top_k
//!  28     4  n_vocab: logit rows of the base model
//!  32     4  BOS id put at the start of each chunk (0xffffffff: none)
//!  36    32  SHA-256 of the tokenizer's vocabulary (vocab_sha256)
//!  68    32  SHA-256 of the evaluated ids: the first n_chunks * n_ctx ids of the text, u32 LE
//! 100   256  the base model's name, UTF-8, zero padded (informational)
//! 356        records: n_chunks * scored * (4 + 8 * top_k) bytes, per position: log p(target) f32, then
//!            top_k x (id u32, log p f32), most likely first (id 0xffffffff, -inf past the finite ones)
//! ```

use crate::engine::{sampleable_ids, Model};
use crate::error::{Error, Result};
use crate::logprobs::{LogprobKernel, LogprobSpec, TokenLogprob, MAX_TOP_K};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Which ids the softmax of [`Model::score_with`] runs over.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ScoreVocab {
    /// Every logit row (llama.cpp's n_vocab, transformers' log_softmax): perplexity and KL divergence.
    #[default]
    Full,
    /// The ids the sampler may choose ([`Model::n_valid`]): padding rows of the embedding excluded,
    /// as a server reporting the sampler's log-probabilities wants.
    Sampleable,
}

/// What [`Model::score_with`] computes.
#[derive(Clone, Debug, Default)]
pub struct ScoreOptions<'a> {
    /// The first position scored (earlier ones only give context).
    pub first_scored: usize,
    /// Top-k entries per scored position (0..=32).
    pub top_k: usize,
    /// Further ids whose log-probabilities are wanted at each scored position, row-major
    /// [n_scored, n_extra] (KL divergence: the base model's top-k).
    pub extra: &'a [u32],
    pub n_extra: usize,
    pub vocab: ScoreVocab,
}

/// The scores at one position `pos` of a sequence: how likely the model found the next id.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionScore {
    pub pos: usize,
    /// ids[pos + 1]
    pub target: u32,
    /// log p(ids[pos + 1] | ids[..=pos])
    pub logprob: f32,
    pub max_logit: f32,
    /// ln(sum exp(logits)) at this position.
    pub log_sum_exp: f32,
    /// The most likely id (lowest on ties).
    pub argmax: u32,
    /// The top-k, most likely first.
    pub top: Vec<TokenLogprob>,
    /// log p of each id of `ScoreOptions::extra`'s row for this position, in order.
    pub extra: Vec<f32>,
}

impl Model {
    /// Score `ids` as a context of its own (the cache is reset first): at each position `i` from
    /// `first_scored` to `ids.len() - 2`, the log-probability of `ids[i + 1]`, and the `top_k` most
    /// likely ids. Batched prefill, log-softmax on the GPU: only the scores are read back.
    pub fn score(
        &mut self,
        ids: &[u32],
        first_scored: usize,
        top_k: usize,
    ) -> Result<Vec<PositionScore>> {
        self.score_with(
            ids,
            &ScoreOptions {
                first_scored,
                top_k,
                ..Default::default()
            },
        )
    }

    /// [`Model::score`] with every option ([`ScoreOptions`]).
    pub fn score_with(&mut self, ids: &[u32], o: &ScoreOptions) -> Result<Vec<PositionScore>> {
        if ids.len() < 2 {
            return Err(Error::Input(format!(
                "score: {} id(s); at least 2 are needed (position i predicts id i + 1)",
                ids.len()
            )));
        }
        let first = o.first_scored;
        if first > ids.len() - 2 {
            return Err(Error::Input(format!(
                "score: first scored position {first} is past the last one that has a next id ({})",
                ids.len() - 2
            )));
        }
        if o.top_k > MAX_TOP_K {
            return Err(Error::Input(format!(
                "score: top-k {} is over the most the kernel keeps ({MAX_TOP_K})",
                o.top_k
            )));
        }
        let n_scored = ids.len() - 1 - first;
        if o.extra.len() != n_scored * o.n_extra {
            return Err(Error::Input(format!(
                "score: {} extra ids for {n_scored} positions of {}",
                o.extra.len(),
                o.n_extra
            )));
        }
        let vocab = self.cfg.vocab;
        if let Some(bad) = o.extra.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Input(format!(
                "score: extra id {bad} is out of range (vocab_size {vocab})"
            )));
        }
        let n_valid = match o.vocab {
            ScoreVocab::Full => vocab,
            ScoreVocab::Sampleable => self.n_valid(),
        };
        let n_req = 1 + o.n_extra;
        let spec = LogprobSpec {
            n_valid,
            n_req,
            top_k: o.top_k,
        };
        self.reset();
        let mut scorer = self.scorer.take();
        let mut out = Vec::with_capacity(n_scored);
        // The last id is only a target: the logits needed stop at position len - 2.
        let res = self.forward_logits_gpu(
            &ids[..ids.len() - 1],
            first,
            &mut |gpu, logits, i0, rows| {
                let kernel = match scorer.take() {
                    Some(k) if k.max_rows() >= rows && k.max_req() >= n_req => k,
                    _ => LogprobKernel::new(gpu, rows, n_req.max(1 + MAX_TOP_K))?,
                };
                let mut req = Vec::with_capacity(rows * n_req);
                for pos in i0..i0 + rows {
                    req.push(ids[pos + 1]);
                    let e = (pos - first) * o.n_extra;
                    req.extend_from_slice(&o.extra[e..e + o.n_extra]);
                }
                let result = kernel.run(gpu, logits, vocab, rows, &spec, &req);
                scorer = Some(kernel);
                for (r, row) in result?.into_iter().enumerate() {
                    let pos = i0 + r;
                    if !row.log_sum_exp.is_finite() {
                        return Err(Error::Model(format!(
                            "position {pos}: the logits are not finite (log-sum-exp {})",
                            row.log_sum_exp
                        )));
                    }
                    out.push(PositionScore {
                        pos,
                        target: ids[pos + 1],
                        logprob: row.requested[0],
                        max_logit: row.max_logit,
                        log_sum_exp: row.log_sum_exp,
                        argmax: row.argmax,
                        top: row.top,
                        extra: row.requested[1..].to_vec(),
                    });
                }
                Ok(())
            },
        );
        self.scorer = scorer;
        res?;
        Ok(out)
    }
}

/// The BOS id the model puts in front of a text, if it adds one (llama.cpp's `llama_vocab_get_add_bos`):
/// a GGUF file's `tokenizer.ggml.add_bos_token` (absent: only SentencePiece "llama" vocabularies add
/// one), a model directory's tokenizer_config.json `add_bos_token` or a tokenizer.json post-processor
/// template that starts with a special token. Neither Qwen2 nor SmolLM2 adds one.
pub fn model_bos(model: &Model) -> Result<Option<u32>> {
    let path = &model.source;
    if path.is_file() {
        let g = crate::gguf::Gguf::open(path)?;
        let adds = match g.get_bool("tokenizer.ggml.add_bos_token")? {
            Some(b) => b,
            None => g.get_str("tokenizer.ggml.model")? == Some("llama"),
        };
        if !adds {
            return Ok(None);
        }
        return match g.get_u32("tokenizer.ggml.bos_token_id")? {
            Some(id) => Ok(Some(id)),
            None => Err(Error::format(
                path,
                "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing",
            )),
        };
    }
    let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
        let p = path.join(name);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(&p, format!("not valid JSON: {e}")))
    };
    if let Some(tc) = read_json("tokenizer_config.json")? {
        if let Some(add) = tc.get("add_bos_token").and_then(|v| v.as_bool()) {
            if !add {
                return Ok(None);
            }
            let bos = model.cfg.bos.or_else(|| {
                let name = tc.get("bos_token")?;
                let name = name.as_str().or_else(|| name.get("content")?.as_str())?;
                model.tokenizer()?.token_to_id(name)
            });
            return bos.map(Some).ok_or_else(|| {
                Error::format(
                    path.join("tokenizer_config.json"),
                    "add_bos_token is true but no bos_token_id is known",
                )
            });
        }
    }
    // tokenizer.json: {"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken":
    // {"id": "<s>"}}, {"Sequence": ...}], "special_tokens": {"<s>": {"ids": [1]}}}}
    if let Some(tj) = read_json("tokenizer.json")? {
        let pp = &tj["post_processor"];
        let template = |pp: &serde_json::Value| -> Option<u32> {
            if pp["type"] != "TemplateProcessing" {
                return None;
            }
            let name = pp["single"][0]["SpecialToken"]["id"].as_str()?;
            pp["special_tokens"][name]["ids"][0]
                .as_u64()
                .map(|i| i as u32)
        };
        if let Some(id) = template(pp) {
            return Ok(Some(id));
        }
        if pp["type"] == "Sequence" {
            if let Some(id) = pp["processors"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(template)
            {
                return Ok(Some(id));
            }
        }
    }
    Ok(None)
}

/// The ids of a text as llama-perplexity evaluates them: the whole text tokenized at once, with the
/// model's BOS in front where it adds one.
pub fn tokenize_text(model: &Model, text: &str) -> Result<Vec<u32>> {
    let mut ids = model.encode(text)?;
    if let Some(bos) = model_bos(model)? {
        ids.insert(0, bos);
    }
    Ok(ids)
}

/// llama-perplexity's chunks over a tokenized text.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Chunking {
    pub n_ctx: usize,
    pub n_chunks: usize,
}

impl Chunking {
    /// `min(max_chunks, n_tokens / n_ctx)` chunks of `n_ctx`; like llama.cpp, at least `2 * n_ctx` ids
    /// are required.
    pub fn new(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<Self> {
        if n_ctx < 3 {
            return Err(Error::Input(format!(
                "-c/--ctx-size {n_ctx}: at least 3 is needed (the second half of a chunk is scored)"
            )));
        }
        if max_chunks == Some(0) {
            return Err(Error::Input(
                "--chunks 0: at least one chunk is needed".into(),
            ));
        }
        if n_tokens < 2 * n_ctx {
            return Err(Error::Input(format!(
                "you need at least {} tokens to evaluate perplexity with a context of {n_ctx}: the \
                 text tokenizes to only {n_tokens} (use a longer text or a smaller -c)",
                2 * n_ctx
            )));
        }
        let max = n_tokens / n_ctx;
        Ok(Chunking {
            n_ctx,
            n_chunks: max_chunks.map_or(max, |c| c.min(max)),
        })
    }

    /// The first scored position of a chunk.
    pub fn first(&self) -> usize {
        self.n_ctx / 2
    }

    /// Positions scored per chunk: first ..= n_ctx - 2.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.first()
    }

    /// The ids of chunk `i`, with its first id replaced by `bos` when the model adds one.
    pub fn chunk(&self, tokens: &[u32], i: usize, bos: Option<u32>) -> Vec<u32> {
        let mut c = tokens[i * self.n_ctx..(i + 1) * self.n_ctx].to_vec();
        if let Some(b) = bos {
            c[0] = b;
        }
        c
    }

    /// The ids that the chunks cover (what the KL base file's hash is over).
    pub fn evaluated<'t>(&self, tokens: &'t [u32]) -> &'t [u32] {
        &tokens[..self.n_chunks * self.n_ctx]
    }
}

/// Score chunk `i` of `tokens` as llama-perplexity does: from an empty cache, positions
/// `first ..= n_ctx - 2` of the chunk, each predicting the chunk's next id. `extra` / `n_extra` as in
/// [`ScoreOptions`] (one row per scored position of this chunk).
#[allow(clippy::too_many_arguments)]
pub fn score_chunk(
    model: &mut Model,
    c: &Chunking,
    tokens: &[u32],
    i: usize,
    bos: Option<u32>,
    top_k: usize,
    extra: &[u32],
    n_extra: usize,
) -> Result<Vec<PositionScore>> {
    let ids = c.chunk(tokens, i, bos);
    model.score_with(
        &ids,
        &ScoreOptions {
            first_scored: c.first(),
            top_k,
            extra,
            n_extra,
            vocab: ScoreVocab::Full,
        },
    )
}

/// Running sums of the negative log-likelihood, as llama-perplexity keeps them.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct NllStats {
    pub sum: f64,
    pub sum2: f64,
    pub count: usize,
}

impl NllStats {
    pub fn push(&mut self, logprob: f32) {
        let v = -(logprob as f64);
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    /// exp(mean NLL); NaN before any value.
    pub fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama.cpp's "+/-" of the PPL: PPL * sqrt(var(NLL) / (count - 1)), var = mean(NLL^2) - mean^2;
    /// None below two values or without a positive variance.
    pub fn ppl_uncertainty(&self) -> Option<f64> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        (var > 0.0).then(|| (var / (n - 1.0)).sqrt() * self.ppl())
    }
}

/// SHA-256 identifying a model's tokenizer for the KL base file: over the number of ids it defines
/// (trailing "[PAD...]" entries left out, as [`sampleable_ids`] does, so that a GGUF file and the model
/// directory it was made from agree) and each id's token string (u32 LE length, then the bytes). A model
/// without a tokenizer hashes as its logit count alone.
pub fn vocab_sha256(model: &Model) -> [u8; 32] {
    let mut h = Sha256::new();
    match model.tokenizer() {
        Some(t) => {
            let n = sampleable_ids(&t);
            h.update(b"glint vocabulary\0");
            h.update((n as u32).to_le_bytes());
            for id in 0..n as u32 {
                let s = t.id_to_token(id).unwrap_or_default();
                h.update((s.len() as u32).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
        None => {
            h.update(b"glint no tokenizer\0");
            h.update((model.cfg.vocab as u32).to_le_bytes());
        }
    }
    h.finalize().into()
}

/// SHA-256 of token ids as u32 little-endian (Python: `hashlib.sha256(np.array(ids, "<u4").tobytes())`).
pub fn tokens_sha256(ids: &[u32]) -> [u8; 32] {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

pub const KL_MAGIC: &[u8; 8] = b"GLINTKLD";
pub const KL_VERSION: u32 = 1;
const KL_NAME_BYTES: usize = 256;
const KL_HEADER_BYTES: usize = 100 + KL_NAME_BYTES;

/// The header of a KL base file (module docs: the layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KlBaseHeader {
    pub n_ctx: u32,
    pub n_chunks: u32,
    pub top_k: u32,
    pub n_vocab: u32,
    pub bos: Option<u32>,
    pub vocab_sha256: [u8; 32],
    pub tokens_sha256: [u8; 32],
    /// The base model, for the report (at most 256 bytes are kept).
    pub model: String,
}

impl KlBaseHeader {
    pub fn chunking(&self) -> Chunking {
        Chunking {
            n_ctx: self.n_ctx as usize,
            n_chunks: self.n_chunks as usize,
        }
    }

    fn record_bytes(&self) -> usize {
        4 + 8 * self.top_k as usize
    }

    fn to_bytes(&self) -> Vec<u8> {
        let c = self.chunking();
        let mut b = Vec::with_capacity(KL_HEADER_BYTES);
        b.extend_from_slice(KL_MAGIC);
        for v in [
            KL_VERSION,
            self.n_ctx,
            self.n_chunks,
            c.scored_per_chunk() as u32,
            self.top_k,
            self.n_vocab,
            self.bos.unwrap_or(u32::MAX),
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.vocab_sha256);
        b.extend_from_slice(&self.tokens_sha256);
        let mut name = [0u8; KL_NAME_BYTES];
        let mut n = self.model.len().min(KL_NAME_BYTES);
        while !self.model.is_char_boundary(n) {
            n -= 1;
        }
        name[..n].copy_from_slice(&self.model.as_bytes()[..n]);
        b.extend_from_slice(&name);
        b
    }

    fn from_bytes(b: &[u8], path: &Path) -> Result<Self> {
        let bad = |m: String| Error::format(path, m);
        if b.len() < 12 || &b[..8] != KL_MAGIC {
            return Err(bad(
                "not a glint KL-divergence base file (no GLINTKLD magic); make one with \
                 `glint perplexity --kl-divergence-base FILE`"
                    .into(),
            ));
        }
        let u = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u(8);
        if version != KL_VERSION {
            return Err(bad(format!(
                "KL base file version {version}; this glint reads version {KL_VERSION} (make the base \
                 file again with this glint)"
            )));
        }
        if b.len() < KL_HEADER_BYTES {
            return Err(bad(format!(
                "truncated header: {} bytes, {KL_HEADER_BYTES} expected",
                b.len()
            )));
        }
        let h = KlBaseHeader {
            n_ctx: u(12),
            n_chunks: u(16),
            top_k: u(24),
            n_vocab: u(28),
            bos: Some(u(32)).filter(|&x| x != u32::MAX),
            vocab_sha256: b[36..68].try_into().expect("32 bytes"),
            tokens_sha256: b[68..100].try_into().expect("32 bytes"),
            model: String::from_utf8_lossy(&b[100..KL_HEADER_BYTES])
                .trim_end_matches('\0')
                .to_string(),
        };
        if h.n_ctx < 3 || h.n_chunks == 0 || h.top_k as usize > MAX_TOP_K || h.n_vocab == 0 {
            return Err(bad(format!(
                "bad header: n_ctx {} (at least 3), n_chunks {} (at least 1), top_k {} (at most \
                 {MAX_TOP_K}), n_vocab {}",
                h.n_ctx, h.n_chunks, h.top_k, h.n_vocab
            )));
        }
        if u(20) as usize != h.chunking().scored_per_chunk() {
            return Err(bad(format!(
                "bad header: {} scored positions per chunk, n_ctx {} gives {}",
                u(20),
                h.n_ctx,
                h.chunking().scored_per_chunk()
            )));
        }
        Ok(h)
    }
}

/// One scored position of the base model.
#[derive(Clone, Debug, PartialEq)]
pub struct KlRecord {
    /// log p_base(target)
    pub target_logprob: f32,
    /// The base's top-k (finite entries only), most likely first.
    pub top: Vec<TokenLogprob>,
}

/// Writes a KL base file chunk by chunk. The header is written again by [`KlBaseWriter::finish`] with
/// the chunks actually written, so an interrupted base run leaves a valid, shorter file.
pub struct KlBaseWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    header: KlBaseHeader,
    evaluated: Vec<u32>,
    written: u32,
}

impl KlBaseWriter {
    /// `tokens` is the whole tokenized text; `header.n_chunks` the chunks planned (its hashes are
    /// filled in here and at `finish`).
    pub fn create(path: &Path, mut header: KlBaseHeader, tokens: &[u32]) -> Result<Self> {
        if header.top_k as usize > MAX_TOP_K {
            return Err(Error::Input(format!(
                "KL base: top-k {} is over {MAX_TOP_K}",
                header.top_k
            )));
        }
        let c = header.chunking();
        if tokens.len() < c.n_chunks * c.n_ctx {
            return Err(Error::Input(format!(
                "KL base: {} tokens for {} chunks of {}",
                tokens.len(),
                c.n_chunks,
                c.n_ctx
            )));
        }
        let evaluated = c.evaluated(tokens).to_vec();
        header.tokens_sha256 = tokens_sha256(&evaluated);
        let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut file = std::io::BufWriter::new(f);
        file.write_all(&header.to_bytes())
            .map_err(|e| Error::io(path, e))?;
        Ok(KlBaseWriter {
            path: path.to_path_buf(),
            file,
            header,
            evaluated,
            written: 0,
        })
    }

    /// Append the next chunk's scores (scored with top-k = the header's).
    pub fn write_chunk(&mut self, scores: &[PositionScore]) -> Result<()> {
        let c = self.header.chunking();
        if scores.len() != c.scored_per_chunk() || self.written >= self.header.n_chunks {
            return Err(Error::Input(format!(
                "KL base: chunk {} of {} positions; {} chunks of {} planned",
                self.written + 1,
                scores.len(),
                self.header.n_chunks,
                c.scored_per_chunk()
            )));
        }
        let k = self.header.top_k as usize;
        let mut b = Vec::with_capacity(scores.len() * self.header.record_bytes());
        for s in scores {
            b.extend_from_slice(&s.logprob.to_le_bytes());
            for t in 0..k {
                let e = s.top.get(t).copied().unwrap_or(TokenLogprob {
                    id: u32::MAX,
                    logprob: f32::NEG_INFINITY,
                });
                b.extend_from_slice(&e.id.to_le_bytes());
                b.extend_from_slice(&e.logprob.to_le_bytes());
            }
        }
        self.file
            .write_all(&b)
            .map_err(|e| Error::io(&self.path, e))?;
        self.written += 1;
        Ok(())
    }

    /// Rewrite the header for the chunks written and flush; returns it.
    pub fn finish(mut self) -> Result<KlBaseHeader> {
        let io = |e| Error::io(&self.path, e);
        self.header.n_chunks = self.written;
        let n = self.written as usize * self.header.n_ctx as usize;
        self.header.tokens_sha256 = tokens_sha256(&self.evaluated[..n]);
        self.file.flush().map_err(io)?;
        let f = self.file.get_mut();
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&self.header.to_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(self.header)
    }
}

/// A KL base file, read whole and checked.
#[derive(Clone, Debug)]
pub struct KlBase {
    pub path: PathBuf,
    pub header: KlBaseHeader,
    records: Vec<KlRecord>,
}

impl KlBase {
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(|e| Error::io(path, e))?;
        let header = KlBaseHeader::from_bytes(&b, path)?;
        let c = header.chunking();
        let rb = header.record_bytes();
        let want = c.n_chunks * c.scored_per_chunk() * rb;
        let have = b.len() - KL_HEADER_BYTES;
        if have != want {
            return Err(Error::format(
                path,
                format!(
                    "{} record bytes, but {} chunks x {} positions x {rb} bytes (top-k {}) = {want} \
                     expected: the file is truncated or damaged",
                    have,
                    c.n_chunks,
                    c.scored_per_chunk(),
                    header.top_k
                ),
            ));
        }
        let f32at = |o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let records = b[KL_HEADER_BYTES..]
            .chunks_exact(rb)
            .enumerate()
            .map(|(n, _)| {
                let o = KL_HEADER_BYTES + n * rb;
                KlRecord {
                    target_logprob: f32at(o),
                    top: (0..header.top_k as usize)
                        .map(|t| TokenLogprob {
                            id: u32at(o + 4 + 8 * t),
                            logprob: f32at(o + 8 + 8 * t),
                        })
                        .take_while(|t| t.id != u32::MAX)
                        .collect(),
                }
            })
            .collect::<Vec<_>>();
        if let Some((n, r)) = records
            .iter()
            .enumerate()
            .find(|(_, r)| r.top.iter().any(|t| t.id >= header.n_vocab))
        {
            return Err(Error::format(
                path,
                format!(
                    "record {n}: a top-k id of {:?} is not below n_vocab {}",
                    r.top.iter().map(|t| t.id).collect::<Vec<_>>(),
                    header.n_vocab
                ),
            ));
        }
        Ok(KlBase {
            path: path.to_path_buf(),
            header,
            records,
        })
    }

    /// Refuse a base file made with another tokenizer, vocabulary size or text than this run's.
    pub fn check(&self, vocab_sha256: &[u8; 32], n_vocab: usize, tokens: &[u32]) -> Result<()> {
        let h = &self.header;
        if &h.vocab_sha256 != vocab_sha256 {
            return Err(Error::format(
                &self.path,
                format!(
                    "made with another tokenizer (vocabulary SHA-256 {}, this model's is {}): the \
                     base and the model compared must share one tokenizer",
                    hex(&h.vocab_sha256[..8]),
                    hex(&vocab_sha256[..8])
                ),
            ));
        }
        if h.n_vocab as usize != n_vocab {
            return Err(Error::format(
                &self.path,
                format!(
                    "made with {} logits per position, this model has {n_vocab}",
                    h.n_vocab
                ),
            ));
        }
        let c = h.chunking();
        let n = c.n_chunks * c.n_ctx;
        let same = tokens.len() >= n && tokens_sha256(&tokens[..n]) == h.tokens_sha256;
        if !same {
            return Err(Error::format(
                &self.path,
                format!(
                    "made from another text: the SHA-256 of its {n} evaluated ids ({} chunks of {}) \
                     is {}, this text's {} ids give {}; use the -f file the base was made from",
                    c.n_chunks,
                    c.n_ctx,
                    hex(&h.tokens_sha256[..8]),
                    tokens.len(),
                    if tokens.len() >= n {
                        hex(&tokens_sha256(&tokens[..n])[..8])
                    } else {
                        "too few ids".into()
                    }
                ),
            ));
        }
        Ok(())
    }

    /// The records of chunk `i`.
    pub fn chunk(&self, i: usize) -> &[KlRecord] {
        let n = self.header.chunking().scored_per_chunk();
        &self.records[i * n..(i + 1) * n]
    }

    /// The base's top-k ids of chunk `i`, row-major [scored, top_k] (padded with the first id where a
    /// record has fewer finite entries): the `extra` ids to score the current model at.
    pub fn chunk_ids(&self, i: usize) -> Vec<u32> {
        let k = self.header.top_k as usize;
        self.chunk(i)
            .iter()
            .flat_map(|r| {
                let pad = r.top.first().map_or(0, |t| t.id);
                (0..k).map(move |t| r.top.get(t).map_or(pad, |e| e.id))
            })
            .collect()
    }
}

/// KL(P_base || Q) at one position over the base's top-k and the rest lumped into one bucket (module
/// docs). `cur` holds log q at the base's top-k ids, in the same order.
pub fn kl_top_k(base: &[TokenLogprob], cur: &[f32]) -> f64 {
    let (mut kl, mut p_sum, mut q_sum) = (0.0f64, 0.0f64, 0.0f64);
    for (b, &q) in base.iter().zip(cur) {
        let (lp, lq) = (b.logprob as f64, q as f64);
        let p = lp.exp();
        kl += p * (lp - lq);
        p_sum += p;
        q_sum += lq.exp();
    }
    let p_rest = (1.0 - p_sum).max(0.0);
    let q_rest = (1.0 - q_sum).max(1e-12);
    if p_rest > 0.0 {
        kl += p_rest * (p_rest.ln() - q_rest.ln());
    }
    kl
}

/// llama-perplexity's KL-divergence sums, fed one position at a time.
#[derive(Clone, Debug, Default)]
pub struct KlStats {
    pub nll: NllStats,
    pub nll_base: NllStats,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    pub n_same_top: usize,
    pub kld_values: Vec<f32>,
    pub p_diff_values: Vec<f32>,
}

/// Mean and llama.cpp's uncertainty of it: sqrt(var / (n - 1)), 0 for ten values or fewer.
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// llama.cpp's percentile: linear interpolation between the sorted values around fraction * (n - 1).
fn percentile(sorted: &[f32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    if fraction <= 0.0 {
        return sorted[0] as f64;
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1] as f64;
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let p = p - ip as f64;
    (1.0 - p) * sorted[ip] as f64 + p * sorted[(ip + 1).min(sorted.len() - 1)] as f64
}

/// The KL-divergence report, as llama-perplexity prints it (uncertainties are its "±").
#[derive(Clone, Debug, serde::Serialize)]
pub struct KlReport {
    pub count: usize,
    pub ppl: f64,
    pub ppl_unc: f64,
    pub ppl_base: f64,
    pub ppl_base_unc: f64,
    /// Correlation of the two NLLs.
    pub cor: f64,
    pub ln_ppl_ratio: f64,
    pub ln_ppl_ratio_unc: f64,
    /// PPL(Q) / PPL(base)
    pub ppl_ratio: f64,
    pub ppl_ratio_unc: f64,
    pub ppl_diff: f64,
    pub ppl_diff_unc: f64,
    pub kld_mean: f64,
    pub kld_unc: f64,
    pub kld_max: f64,
    pub kld_p999: f64,
    pub kld_p99: f64,
    pub kld_p95: f64,
    pub kld_p90: f64,
    pub kld_median: f64,
    pub kld_p10: f64,
    pub kld_p5: f64,
    pub kld_p1: f64,
    pub kld_min: f64,
    /// Δp = p(target) - p_base(target), as fractions (llama.cpp prints percent).
    pub dp_mean: f64,
    pub dp_mean_unc: f64,
    pub dp_max: f64,
    pub dp_p99: f64,
    pub dp_median: f64,
    pub dp_p1: f64,
    pub dp_min: f64,
    pub dp_rms: f64,
    pub dp_rms_unc: f64,
    /// Fraction of positions where the two models' most likely ids agree.
    pub same_top: f64,
    pub same_top_unc: f64,
}

impl KlStats {
    /// One position: the base's record and the current model's score with `extra` = log q at the
    /// base's top-k ids (as [`KlBase::chunk_ids`] lists them).
    pub fn push(&mut self, base: &KlRecord, cur: &PositionScore) {
        let (nll, nll_base) = (-(cur.logprob as f64), -(base.target_logprob as f64));
        self.nll.push(cur.logprob);
        self.nll_base.push(base.target_logprob);
        self.sum_nll_nll_base += nll * nll_base;
        let kld = kl_top_k(&base.top, &cur.extra[..base.top.len().min(cur.extra.len())]);
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.kld_values.push(kld as f32);
        if base.top.first().is_some_and(|t| t.id == cur.argmax) {
            self.n_same_top += 1;
        }
        let p_diff = (-nll).exp() - (-nll_base).exp();
        self.sum_p_diff += p_diff;
        self.sum_p_diff2 += p_diff * p_diff;
        self.sum_p_diff4 += p_diff * p_diff * p_diff * p_diff;
        self.p_diff_values.push(p_diff as f32);
    }

    pub fn count(&self) -> usize {
        self.nll.count
    }

    pub fn report(&self) -> KlReport {
        let n = self.count();
        let (ln_ppl, ln_ppl_unc) = mean_and_uncertainty(self.nll.sum, self.nll.sum2, n);
        let (ln_base, ln_base_unc) = mean_and_uncertainty(self.nll_base.sum, self.nll_base.sum2, n);
        let cov = if n < 10 {
            0.0
        } else {
            let nf = n as f64;
            (self.sum_nll_nll_base / nf - (self.nll.sum / nf) * (self.nll_base.sum / nf))
                / (nf - 1.0)
        };
        let (ppl, ppl_base) = (ln_ppl.exp(), ln_base.exp());
        let (ppl_unc, ppl_base_unc) = (ppl * ln_ppl_unc, ppl_base * ln_base_unc);
        let ln_ratio = ln_ppl - ln_base;
        // Identical runs give 0 up to rounding, which may fall below it: clamped, not NaN.
        let ln_ratio_unc = (ln_ppl_unc * ln_ppl_unc + ln_base_unc * ln_base_unc - 2.0 * cov)
            .max(0.0)
            .sqrt();
        let ppl_ratio = ln_ratio.exp();
        let ppl_cov = ppl * ppl_base * cov;
        let (kld_mean, kld_unc) = mean_and_uncertainty(self.sum_kld, self.sum_kld2, n);
        let (dp_mean, dp_mean_unc) = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n);
        let (dp_mse, dp_mse_unc) = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n);
        let dp_rms = dp_mse.sqrt();
        let same_top = self.n_same_top as f64 / n as f64;
        let mut kld = self.kld_values.clone();
        kld.sort_by(f32::total_cmp);
        let mut dp = self.p_diff_values.clone();
        dp.sort_by(f32::total_cmp);
        let median = |v: &[f32]| {
            if v.is_empty() {
                f64::NAN
            } else if v.len().is_multiple_of(2) {
                0.5 * (v[v.len() / 2] as f64 + v[v.len() / 2 - 1] as f64)
            } else {
                v[v.len() / 2] as f64
            }
        };
        KlReport {
            count: n,
            ppl,
            ppl_unc,
            ppl_base,
            ppl_base_unc,
            cor: cov / (ln_ppl_unc * ln_base_unc),
            ln_ppl_ratio: ln_ratio,
            ln_ppl_ratio_unc: ln_ratio_unc,
            ppl_ratio,
            ppl_ratio_unc: ppl_ratio * ln_ratio_unc,
            ppl_diff: ppl - ppl_base,
            ppl_diff_unc: (ppl_unc * ppl_unc + ppl_base_unc * ppl_base_unc - 2.0 * ppl_cov)
                .max(0.0)
                .sqrt(),
            kld_mean,
            kld_unc,
            kld_max: percentile(&kld, 1.0),
            kld_p999: percentile(&kld, 0.999),
            kld_p99: percentile(&kld, 0.99),
            kld_p95: percentile(&kld, 0.95),
            kld_p90: percentile(&kld, 0.90),
            kld_median: median(&kld),
            kld_p10: percentile(&kld, 0.10),
            kld_p5: percentile(&kld, 0.05),
            kld_p1: percentile(&kld, 0.01),
            kld_min: percentile(&kld, 0.0),
            dp_mean,
            dp_mean_unc,
            dp_max: percentile(&dp, 1.0),
            dp_p99: percentile(&dp, 0.99),
            dp_median: median(&dp),
            dp_p1: percentile(&dp, 0.01),
            dp_min: percentile(&dp, 0.0),
            dp_rms,
            dp_rms_unc: if dp_rms > 0.0 {
                0.5 / dp_rms * dp_mse_unc
            } else {
                0.0
            },
            same_top,
            same_top_unc: (same_top * (1.0 - same_top) / (n as f64 - 1.0)).sqrt(),
        }
    }
}
