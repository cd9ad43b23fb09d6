//! Glint: GPU-first LLM inference on wgpu. WGSL kernels run the whole Qwen2 forward pass on any GPU that
//! speaks Vulkan, Metal, DX12 (or GL), with the weights uploaded once and each decoded token costing one
//! submit and a 4-byte read back.
//!
//! Data flow: text -> [`tokenizer`] (and [`chat`] template) -> ids -> [`engine::Model::feed`] (embedding,
//! 24 pre-norm blocks, final norm, LM head, argmax on the GPU) -> next id -> text.
//!
//! ```
//! use glint::{Flow, GenerateOptions, LoadOptions, Model};
//! // A model directory or GGUF file; this tiny random Qwen2 ships with the tests.
//! let mut model = Model::load("../tests/fixtures/tiny-qwen2".as_ref(), LoadOptions::default())?;
//! // With a tokenizer: `let ids = model.chat_prompt(&messages)?` or `model.encode(text)?`.
//! let prompt = [235, 396, 72, 255, 393, 203, 133];
//! let mut streamed = Vec::new();
//! let opts = GenerateOptions { max_tokens: 8, ..Default::default() }; // greedy
//! let out = model.generate_with(&prompt, &opts, |id| {
//!     streamed.push(id); // called as each token is produced
//!     Flow::Continue
//! })?;
//! assert_eq!(out.tokens, streamed);
//! assert_eq!(out.tokens[..4], [237, 349, 366, 120]); // transformers' greedy continuation
//! # Ok::<(), glint::Error>(())
//! ```

pub mod bench;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod family;
pub mod gguf;
pub mod gguf_loader;
pub mod gpu;
pub mod graph;
pub mod hub;
pub mod kernels;
pub mod lab;
pub mod logprobs;
pub mod model;
pub mod perplexity;
pub mod quant;
pub mod reference;
pub mod safetensors_loader;
pub mod sampler;
pub mod scheduler;
pub mod stop;
pub mod tokenizer;
pub mod tune;
pub mod uniforms;
pub mod weights;

pub use engine::{FinishReason, Flow, GenerateOptions, Generation, LoadOptions, Model};
pub use error::{Error, Result};
