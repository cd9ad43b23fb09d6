//! The decoder, one for every family of family.rs, as a few plain structs whose `forward` reads like
//! the paper: pre-norm blocks, GQA attention with RoPE (and a per-head q/k norm where the family has
//! one), a SiLU-gated MLP. Each struct builds itself from the weights next to its forward (candle's
//! `new(cfg, vb)`), through [`Weights`]. `forward` does not compute: it lays the steps out on a `Graph`,
//! once at load, and the resulting plan is replayed per call (graph.rs holds the plumbing).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::graph::{Activations, Count, Graph, Heads, KvCache, KvLayer, Linear};
use crate::weights::{upload_f32, HostMatrix, Matrix};
use std::cell::RefCell;

/// Where the weights come from: safetensors or GGUF, under transformers' tensor names.
pub trait WeightSource {
    fn has(&self, name: &str) -> bool;
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>>;
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
}

/// Called with each tensor's name and bytes once uploaded (shared by every `Weights` of a load).
pub type UploadProgress<'a> = RefCell<&'a mut dyn FnMut(&str, u64)>;

/// Uploads weights by name under a prefix (candle's VarBuilder): `w.pp("model.layers.3")`.
pub struct Weights<'a> {
    gpu: &'a Gpu,
    src: &'a dyn WeightSource,
    prefix: String,
    progress: &'a UploadProgress<'a>,
}

/// Whether a linear layer has a bias.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bias {
    Yes,
    No,
}

impl<'a> Weights<'a> {
    pub fn new(gpu: &'a Gpu, src: &'a dyn WeightSource, progress: &'a UploadProgress<'a>) -> Self {
        Weights {
            gpu,
            src,
            prefix: String::new(),
            progress,
        }
    }

    /// The same weights under `prefix.name`.
    pub fn pp(&self, name: &str) -> Weights<'a> {
        Weights {
            gpu: self.gpu,
            src: self.src,
            prefix: self.name(name),
            progress: self.progress,
        }
    }

    fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.src.has(&self.name(name))
    }

    /// A [rows, cols] matrix, uploaded in its stored format.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let full = self.name(name);
        let host = self.src.matrix(&full, rows, cols)?;
        let m = Matrix::upload(self.gpu, &host)?;
        (self.progress.borrow_mut())(&full, host.data.len() as u64);
        Ok(m)
    }

    /// A [len] vector, as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<wgpu::Buffer> {
        let full = self.name(name);
        let v = self.src.vector(&full, len)?;
        let b = upload_f32(self.gpu, &full, &v)?;
        (self.progress.borrow_mut())(&full, len as u64 * 4);
        Ok(b)
    }

    /// `name.weight` [rows, cols] and, with a bias, `name.bias` [rows].
    pub fn linear(&self, name: &str, rows: usize, cols: usize, bias: Bias) -> Result<Linear> {
        let w = self.pp(name);
        Ok(Linear {
            w: w.matrix("weight", rows, cols)?,
            b: match bias {
                Bias::Yes => Some(w.vector("bias", rows)?),
                Bias::No => None,
            },
        })
    }
}

/// RMSNorm's weight: y = w * x / sqrt(mean(x^2) + eps).
pub struct RmsNorm {
    pub w: wgpu::Buffer, // [dim] f32
    pub eps: f32,
    pub dim: usize,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f32, w: &Weights) -> Result<Self> {
        Ok(RmsNorm {
            w: w.vector("weight", dim)?,
            eps,
            dim,
        })
    }

    fn forward(&self, g: &mut Graph, x: &wgpu::Buffer, y: &wgpu::Buffer) {
        g.rms_norm(x, &self.w, y, self.dim, self.eps);
    }
}

pub struct Attention {
    pub q: Linear, // [n_heads * head_dim, hidden], bias where the family has one
    pub k: Linear, // [n_kv_heads * head_dim, hidden]
    pub v: Linear, // [n_kv_heads * head_dim, hidden]
    pub o: Linear, // [hidden, n_heads * head_dim], no bias
    /// Qwen3: per-head RMSNorm of q and k before RoPE, weights [head_dim].
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
    pub heads: Heads,
}

impl Attention {
    pub fn new(c: &ModelConfig, w: &Weights) -> Result<Self> {
        let heads = c.heads();
        let (h, qd, kvd) = (c.hidden, heads.q_dim(), heads.kv_dim());
        let bias = if c.qkv_bias { Bias::Yes } else { Bias::No };
        let qk_norm = if c.qk_norm {
            Some((
                RmsNorm::new(c.head_dim, c.rms_eps, &w.pp("q_norm"))?,
                RmsNorm::new(c.head_dim, c.rms_eps, &w.pp("k_norm"))?,
            ))
        } else {
            None
        };
        Ok(Attention {
            q: w.linear("q_proj", qd, h, bias)?,
            k: w.linear("k_proj", kvd, h, bias)?,
            v: w.linear("v_proj", kvd, h, bias)?,
            o: w.linear("o_proj", h, qd, Bias::No)?,
            qk_norm,
            heads,
        })
    }

    /// x += o(attention(rope(q(xn)), rope(k(xn)), v(xn))), the keys and values of the call's tokens
    /// appended to the layer's cache.
    fn forward(&self, g: &mut Graph, a: &Activations, kv: &KvLayer, rope: &wgpu::Buffer) {
        let hs = self.heads;
        let (qd, kvd, width) = (hs.q_dim(), hs.kv_dim(), hs.qkv_dim());
        g.linear_cols(&self.q, &a.xn, &a.qkv, 0, width);
        g.linear_cols(&self.k, &a.xn, &a.qkv, qd, width);
        g.linear_cols(&self.v, &a.xn, &a.qkv, qd + kvd, width);
        let norms = self.qk_norm.as_ref().map(|(q, k)| (&q.w, &k.w));
        let eps = self.qk_norm.as_ref().map_or(0.0, |(q, _)| q.eps);
        g.rope_store(&a.qkv, norms, eps, rope, kv, hs);
        g.attention(&a.qkv, width, kv, &a.attn, hs);
        g.linear_residual(&self.o, &a.attn, &a.x);
    }
}

pub struct Mlp {
    pub gate: Linear, // [intermediate, hidden]
    pub up: Linear,   // [intermediate, hidden]
    pub down: Linear, // [hidden, intermediate]
    pub intermediate: usize,
}

impl Mlp {
    pub fn new(c: &ModelConfig, w: &Weights) -> Result<Self> {
        let (h, i) = (c.hidden, c.intermediate);
        Ok(Mlp {
            gate: w.linear("gate_proj", i, h, Bias::No)?,
            up: w.linear("up_proj", i, h, Bias::No)?,
            down: w.linear("down_proj", h, i, Bias::No)?,
            intermediate: i,
        })
    }

    /// x += down(silu(gate(xn)) * up(xn))
    fn forward(&self, g: &mut Graph, a: &Activations) {
        g.linear(&self.gate, &a.xn, &a.gate, Count::Tokens);
        g.linear(&self.up, &a.xn, &a.up, Count::Tokens);
        g.silu_mul(&a.gate, &a.up, self.intermediate);
        g.linear_residual(&self.down, &a.gate, &a.x);
    }
}

pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn new(c: &ModelConfig, w: &Weights) -> Result<Self> {
        Ok(Block {
            attn_norm: RmsNorm::new(c.hidden, c.rms_eps, &w.pp("input_layernorm"))?,
            attn: Attention::new(c, &w.pp("self_attn"))?,
            mlp_norm: RmsNorm::new(c.hidden, c.rms_eps, &w.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(c, &w.pp("mlp"))?,
        })
    }

    fn forward(&self, g: &mut Graph, a: &Activations, kv: &KvLayer, rope: &wgpu::Buffer) {
        self.attn_norm.forward(g, &a.x, &a.xn);
        self.attn.forward(g, a, kv, rope);
        self.mlp_norm.forward(g, &a.x, &a.xn);
        self.mlp.forward(g, a);
    }
}

/// A decoder-only transformer: embedding, blocks, final norm, LM head.
pub struct Decoder {
    pub cfg: ModelConfig,
    pub embed: Matrix, // [vocab, hidden]
    pub layers: Vec<Block>,
    pub norm: RmsNorm,           // [hidden]
    pub lm_head: Option<Matrix>, // [vocab, hidden]; None when tied to `embed`
    pub rope: wgpu::Buffer,      // [positions, head_dim / 2] (cos, sin)
}

impl Decoder {
    /// Upload every weight once; the RoPE table covers `positions` positions.
    pub fn new(gpu: &Gpu, c: &ModelConfig, w: &Weights, positions: usize) -> Result<Self> {
        let m = w.pp("model");
        let embed = m.matrix("embed_tokens.weight", c.vocab, c.hidden)?;
        let lm_head = if c.tie_embeddings && !w.has("lm_head.weight") {
            None
        } else {
            Some(w.matrix("lm_head.weight", c.vocab, c.hidden)?)
        };
        let layers = (0..c.n_layers)
            .map(|l| Block::new(c, &m.pp(&format!("layers.{l}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(c.hidden, c.rms_eps, &m.pp("norm"))?;
        let rope = upload_f32(gpu, "rope", &c.rope.table(positions, c.head_dim))?;
        Ok(Decoder {
            cfg: c.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Lay out one forward pass over a call's tokens: the blocks for every token, then the final norm,
    /// the LM head and the greedy argmax (over the ids below `n_valid`) for the call's outputs only,
    /// into `Activations::logits` and `Activations::next`.
    pub fn forward(&self, g: &mut Graph, a: &Activations, kv: &KvCache, n_valid: usize) {
        let c = &self.cfg;
        g.embed(&self.embed, &a.tokens, &a.x);
        for (block, cache) in self.layers.iter().zip(&kv.layers) {
            block.forward(g, a, cache, &self.rope);
        }
        let head = Linear {
            w: self.lm_head().clone(),
            b: None,
        };
        g.rms_norm_outputs(&a.x, &self.norm.w, &a.xn, c.hidden, self.norm.eps);
        g.linear(&head, &a.xn, &a.logits, Count::Outputs);
        g.argmax(&a.logits, c.vocab, n_valid, &a.next);
    }

    /// Every weight matrix, embedding first.
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut v = vec![&self.embed];
        v.extend(self.lm_head.as_ref());
        for l in &self.layers {
            let (a, m) = (&l.attn, &l.mlp);
            v.extend([
                &a.q.w, &a.k.w, &a.v.w, &a.o.w, &m.gate.w, &m.up.w, &m.down.w,
            ]);
        }
        v
    }

    /// Bytes of weights on the GPU (matrices, biases, norms).
    pub fn weight_bytes(&self) -> u64 {
        let bias = |l: &Linear| l.b.as_ref().map_or(0, |b| b.size());
        let mut n: u64 =
            self.matrices().iter().map(|m| m.bytes()).sum::<u64>() + self.norm.w.size();
        for l in &self.layers {
            let a = &l.attn;
            n += bias(&a.q) + bias(&a.k) + bias(&a.v);
            n += l.attn_norm.w.size() + l.mlp_norm.w.size();
            if let Some((q, k)) = &a.qk_norm {
                n += q.w.size() + k.w.size();
            }
        }
        n
    }
}
