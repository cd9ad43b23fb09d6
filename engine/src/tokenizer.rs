//! Text <-> token ids, with the `tokenizers` crate underneath.
//!
//! A [`Tokenizer`] comes from a Hugging Face `tokenizer.json` or is rebuilt from the vocabulary a GGUF
//! file carries. Encoding matches transformers' `tokenizer(text, add_special_tokens=False)`: nothing
//! (no BOS) is added, and special tokens written in the text are recognised as single ids.
//! [`StreamDecoder`] turns generated ids into text one id at a time without ever splitting a UTF-8
//! character that spans several byte-level tokens.

use std::fmt;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// The pre-tokenizer regex of Qwen2 (`tokenizer.ggml.pre = "qwen2"`), as in its `tokenizer.json`.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's (`"llama-bpe"`): as Qwen2's but numbers in runs of up to 3 digits.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The GGUF `tokenizer.ggml.pre` values whose pre-tokenizer is rebuilt here.
pub const SUPPORTED_PRE: [&str; 4] = ["qwen2", "llama-bpe", "smollm", "gpt2"];

/// GGUF `tokenizer.ggml.token_type` values that make added tokens (llama.cpp `llama_token_type`).
mod token_type {
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
}

/// A loaded tokenizer. Cheap to share by reference; decoding state lives in [`StreamDecoder`].
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    n_defined: usize,
    /// The BOS id the model expects at the start of a raw text (llama-perplexity's "add BOS"), when
    /// its tokenizer adds one (GGUF `tokenizer.ggml.add_bos_token`, or tokenizer.json's post-processor).
    bos_to_add: Option<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The derived form would print the whole vocabulary.
        f.debug_struct("Tokenizer")
            .field("n_defined", &self.n_defined)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&json, path)
    }

    /// Parse the content of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_bytes(json: &[u8], origin: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::format(origin, format!("not a valid tokenizer.json: {e}")))?;
        let mut t = Self::wrap(inner);
        // transformers' add_special_tokens=True: whatever the post-processor puts in front of a text.
        let plain = t.inner.encode_fast("a", false).ok();
        let with = t.inner.encode_fast("a", true).ok();
        if let (Some(plain), Some(with)) = (plain, with) {
            let (p, w) = (plain.get_ids(), with.get_ids());
            if w.len() == p.len() + 1 && w[1..] == *p {
                t.bos_to_add = Some(w[0]);
            }
        }
        Ok(t)
    }

    /// Rebuild a tokenizer from GGUF metadata (`tokenizer.ggml.tokens`, `.token_type`, `.merges`,
    /// `.pre`), as llama.cpp does but matching the model's transformers tokenizer: byte-level BPE over
    /// `tokens` (id = index) and `merges` ("a b"), ByteLevel decoder, and the pre-tokenizer `pre` names:
    /// - "qwen2": Sequence[Split(qwen2 regex, Isolated), ByteLevel(false, false, false)], with the NFC
    ///   normalizer of transformers' Qwen2Tokenizer;
    /// - "llama-bpe" (Llama 3): the same with Llama 3's regex (digits in runs of up to 3);
    /// - "gpt2" and "smollm": ByteLevel(false, use_regex), GPT-2's regex. For "smollm" this is what
    ///   transformers builds from the GGUF (its GPT2Converter ignores `.pre`), the reference here;
    ///   llama.cpp splits digits off first, which differs only on runs of spaces before a digit
    ///   ("x  2": transformers "Ġ", "Ġ", "2", llama.cpp "ĠĠ", "2").
    ///
    /// Added tokens follow the token types as transformers' GGUF conversion and llama.cpp do: control
    /// (3) and unknown (2) tokens are special (matched in text, skipped by `skip_special_tokens`),
    /// user-defined (4) tokens are matched in text but not special; normal (1), byte (6) and unused (5)
    /// tokens are plain vocabulary entries.
    ///
    /// Other `pre` values are refused with the list of supported ones.
    pub fn from_gguf_vocab(
        tokens: &[String],
        token_types: &[i32],
        merges: &[String],
        pre: &str,
    ) -> Result<Self> {
        if !SUPPORTED_PRE.contains(&pre) {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.pre = {pre:?} is not supported (supported: {})",
                SUPPORTED_PRE.map(|p| format!("{p:?}")).join(", ")
            )));
        }
        if token_types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                token_types.len(),
                tokens.len()
            )));
        }
        let n = u32::try_from(tokens.len()).map_err(|_| {
            Error::Tokenizer(format!(
                "tokenizer.ggml.tokens: {} tokens is too many",
                tokens.len()
            ))
        })?;
        let vocab: Vocab = tokens.iter().cloned().zip(0..n).collect();
        if vocab.len() != tokens.len() {
            return Err(Error::Tokenizer(
                "tokenizer.ggml.tokens holds the same token string more than once".into(),
            ));
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                None => Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.merges[{i}] = {m:?}: expected two tokens separated by a space"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("tokenizer.ggml.tokens/merges: {e}")))?;

        let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
            let s = Split::new(
                SplitPattern::Regex(pattern.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(format!("{pre} pre-tokenizer regex: {e}")))?;
            Ok(s.into())
        };
        let byte_level = |use_regex: bool| -> PreTokenizerWrapper {
            ByteLevel::new(false, false, use_regex).into()
        };
        let pre_tokenizer = match pre {
            "qwen2" => Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level(false)]),
            "llama-bpe" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level(false)]),
            _ => Sequence::new(vec![byte_level(true)]),
        };

        let mut inner = tokenizers::Tokenizer::new(bpe);
        if pre == "qwen2" {
            inner
                .with_normalizer(Some(NFC))
                .map_err(|e| Error::Tokenizer(format!("NFC normalizer: {e}")))?;
        }
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));

        let added = tokens.iter().zip(token_types).filter_map(|(t, &ty)| {
            let special = match ty {
                token_type::UNKNOWN | token_type::CONTROL => true,
                token_type::USER_DEFINED => false,
                _ => return None,
            };
            Some(AddedToken::from(t.clone(), special).normalized(false))
        });
        // Every added token is already in the BPE vocabulary, so it keeps its GGUF id.
        inner
            .add_tokens(added)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.ggml.token_type: {e}")))?;
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Self {
        let n_defined = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&max| max as usize + 1);
        Self {
            inner,
            n_defined,
            bos_to_add: None,
        }
    }

    /// Set the BOS id to put in front of raw texts (GGUF `tokenizer.ggml.add_bos_token`).
    pub fn with_bos_to_add(mut self, bos: Option<u32>) -> Self {
        self.bos_to_add = bos;
        self
    }

    /// The BOS id the model's tokenizer puts in front of a raw text, if it adds one (Llama-style
    /// tokenizers; Qwen adds none). Chat templates write their own BOS; scoring a raw text
    /// (perplexity) starts with this one.
    pub fn bos_to_add(&self) -> Option<u32> {
        self.bos_to_add
    }

    /// Token ids of `text`, as transformers' `tokenizer(text, add_special_tokens=False)`: special tokens
    /// written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`. Bytes that do not form valid UTF-8 come out as U+FFFD. Ids outside the
    /// vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.n_defined) {
            return Err(Error::Tokenizer(format!(
                "decode: id {bad} is outside the vocabulary (0..{})",
                self.n_defined
            )));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    /// Id of a vocabulary or added token string (byte-level form, e.g. `"Ġworld"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary string of `id` (byte-level form, e.g. `"Ġworld"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids the tokenizer defines (vocabulary + added tokens, i.e. the highest id + 1): ids at
    /// or above this are padding rows of the embedding and must never be sampled.
    pub fn n_defined(&self) -> usize {
        self.n_defined
    }

    /// An incremental decoder for generated ids. Special tokens are kept in its output (like
    /// `decode(ids, false)`); stop tokens are meant to be caught before they are pushed.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            ids: Vec::new(),
            prefix_len: 0,
        }
    }
}

/// Incremental detokenizer for streaming: push one id at a time, get back the text that is now
/// complete. A piece never ends inside a multi-byte UTF-8 character, and the pieces of all pushes
/// followed by [`finish`](Self::finish) concatenate to `decode(all ids, false)`.
///
/// It keeps the ids since the last emitted boundary: `ids[..prefix_len]` were already emitted and are
/// kept as left context (so decoders that treat the start of a text specially stay exact). A push
/// decodes the context alone and the context plus the pending ids, and emits the difference once the
/// full text no longer ends in U+FFFD, i.e. once the pending bytes form complete characters.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_len: usize,
}

impl StreamDecoder<'_> {
    /// Add one generated id; returns the text it completes (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let (prefix, full) = self.decode_window()?;
        if full.ends_with('\u{FFFD}') {
            // Most likely an incomplete character: wait for the bytes that complete it. A genuine
            // U+FFFD at the end is released by the next push or by `finish`.
            return Ok(String::new());
        }
        self.advance(prefix, full)
    }

    /// Flush whatever is still held back (incomplete bytes come out as U+FFFD) and reset.
    pub fn finish(&mut self) -> Result<String> {
        let (prefix, full) = self.decode_window()?;
        let piece = self.advance(prefix, full)?;
        self.ids.clear();
        self.prefix_len = 0;
        Ok(piece)
    }

    /// Decode the already-emitted context and the whole window.
    fn decode_window(&self) -> Result<(String, String)> {
        let prefix = self.tokenizer.decode(&self.ids[..self.prefix_len], false)?;
        let full = self.tokenizer.decode(&self.ids, false)?;
        Ok((prefix, full))
    }

    /// Emit `full` minus `prefix` and make the pending ids the new context.
    fn advance(&mut self, prefix: String, full: String) -> Result<String> {
        let piece = full.strip_prefix(prefix.as_str()).ok_or_else(|| {
            Error::Tokenizer(format!(
                "stream decode: the text of ids {:?} does not extend the text already emitted",
                self.ids
            ))
        })?;
        let piece = piece.to_owned();
        self.ids.drain(..self.prefix_len);
        self.prefix_len = self.ids.len();
        Ok(piece)
    }
}
