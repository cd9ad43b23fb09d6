//! Glint: GPU-first LLM inference on wgpu. WGSL kernels run the whole Qwen2 forward pass on any GPU that
//! speaks Vulkan, Metal, DX12 (or GL), with the weights uploaded once and each decoded token costing one
//! submit and a 4-byte read back.
//!
//! Data flow: text -> [`tokenizer`] (and [`chat`] template) -> ids -> [`engine::Model::feed`] (embedding,
//! 24 pre-norm blocks, final norm, LM head, argmax on the GPU) -> next id -> text.
//!
//! ```no_run
//! use glint::{Model, LoadOptions, Flow};
//! let mut model = Model::load("models/qwen2".as_ref(), LoadOptions::default())?;
//! let ids = model.encode("Hello")?;
//! let out = model.generate(&ids, 16, |_id| Flow::Continue)?;
//! println!("{}", model.tokenizer().unwrap().decode(&out.tokens, true)?);
//! # Ok::<(), glint::Error>(())
//! ```

pub mod bench;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gguf_loader;
pub mod gpu;
pub mod graph;
pub mod hub;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod reference;
pub mod sampler;
pub mod safetensors_loader;
pub mod stop;
pub mod tokenizer;
pub mod weights;

pub use engine::{FinishReason, Flow, GenerateOptions, Generation, LoadOptions, Model};
pub use error::{Error, Result};
