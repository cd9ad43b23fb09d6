//! The Qwen2 decoder as a few plain structs whose forward reads like the paper (pre-norm blocks, GQA
//! attention with RoPE, SiLU-gated MLP). `forward` does not compute: it lays the steps out on a
//! `Graph`, once at load, and the resulting plan is replayed per call (graph.rs holds the plumbing).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::graph::{Activations, Graph, KvCache, Linear, LinearKind};
use crate::weights::{upload_f32, HostMatrix, Matrix};

pub struct Attention {
    pub q: Linear, // [n_heads * head_dim, hidden], with bias
    pub k: Linear, // [n_kv_heads * head_dim, hidden], with bias
    pub v: Linear, // [n_kv_heads * head_dim, hidden], with bias
    pub o: Linear, // [hidden, n_heads * head_dim], no bias
}

pub struct Mlp {
    pub gate: Linear, // [intermediate, hidden]
    pub up: Linear,   // [intermediate, hidden]
    pub down: Linear, // [hidden, intermediate]
}

pub struct Layer {
    pub attn_norm: wgpu::Buffer, // [hidden] f32
    pub attn: Attention,
    pub mlp_norm: wgpu::Buffer, // [hidden] f32
    pub mlp: Mlp,
}

pub struct Qwen2 {
    pub cfg: ModelConfig,
    pub embed: Matrix, // [vocab, hidden]
    pub layers: Vec<Layer>,
    pub norm: wgpu::Buffer,      // [hidden] f32
    pub lm_head: Option<Matrix>, // [vocab, hidden]; None when tied to `embed`
    pub rope: wgpu::Buffer,      // [ctx, head_dim / 2] (cos, sin)
}

/// Which logits a forward produces.
#[derive(Copy, Clone, Debug)]
pub enum Logits<'a> {
    /// Only the last token's, into `Activations::logits`, followed by the greedy argmax over the ids
    /// below `n_valid` into `Activations::next`.
    Last { n_valid: usize },
    /// Every token's, into this [n_tokens, vocab] buffer (tests and scoring).
    All(&'a wgpu::Buffer),
}

/// Where the weights come from: safetensors or GGUF, under transformers' tensor names.
pub trait WeightSource {
    fn has(&self, name: &str) -> bool;
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>>;
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
}

impl Attention {
    fn forward(
        &self,
        g: &mut Graph,
        a: &Activations,
        kv: &(wgpu::Buffer, wgpu::Buffer),
        m: &Qwen2,
        kind: LinearKind,
    ) {
        let c = &m.cfg;
        g.linear(&self.q, &a.xn, &a.q, false, kind);
        g.linear(&self.k, &a.xn, &a.k, false, kind);
        g.linear(&self.v, &a.xn, &a.v, false, kind);
        g.rope_q(&a.q, &m.rope, c.n_heads, c.head_dim);
        g.store_kv(&a.k, &a.v, &kv.0, &kv.1, &m.rope, c.n_kv_heads, c.head_dim);
        g.attention(
            &a.q,
            &kv.0,
            &kv.1,
            &a.attn,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
        );
        g.linear(&self.o, &a.attn, &a.x, true, kind); // x += o(attn)
    }
}

impl Mlp {
    fn forward(&self, g: &mut Graph, a: &Activations, c: &ModelConfig, kind: LinearKind) {
        g.linear(&self.gate, &a.xn, &a.gate, false, kind);
        g.linear(&self.up, &a.xn, &a.up, false, kind);
        g.silu_mul(&a.gate, &a.up, c.intermediate);
        g.linear(&self.down, &a.gate, &a.x, true, kind); // x += down(silu(gate) * up)
    }
}

impl Layer {
    fn forward(
        &self,
        g: &mut Graph,
        a: &Activations,
        kv: &(wgpu::Buffer, wgpu::Buffer),
        m: &Qwen2,
        kind: LinearKind,
    ) {
        let c = &m.cfg;
        g.rms_norm(&a.x, &self.attn_norm, &a.xn, c.hidden, c.rms_eps, false);
        self.attn.forward(g, a, kv, m, kind);
        g.rms_norm(&a.x, &self.mlp_norm, &a.xn, c.hidden, c.rms_eps, false);
        self.mlp.forward(g, a, c, kind);
    }
}

impl Qwen2 {
    /// Upload every weight once. `progress(done_bytes)` is called after each tensor.
    pub fn load(
        gpu: &Gpu,
        cfg: &ModelConfig,
        src: &dyn WeightSource,
        ctx: usize,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<Self> {
        let (h, i, hd) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (qd, kvd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let mut matrix = |name: &str, rows: usize, cols: usize| -> Result<Matrix> {
            let host = src.matrix(name, rows, cols)?;
            let m = Matrix::upload(gpu, &host)?;
            progress(name, host.data.len() as u64);
            Ok(m)
        };
        let embed = matrix("model.embed_tokens.weight", cfg.vocab, h)?;
        let lm_head = if cfg.tie_embeddings && !src.has("lm_head.weight") {
            None
        } else {
            Some(matrix("lm_head.weight", cfg.vocab, h)?)
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = format!("model.layers.{l}");
            let mut lin = |name: &str, rows: usize, cols: usize, bias: bool| -> Result<Linear> {
                let w = matrix(&format!("{p}.{name}.weight"), rows, cols)?;
                let b = if bias {
                    let bn = format!("{p}.{name}.bias");
                    Some(upload_f32(gpu, &bn, &src.vector(&bn, rows)?)?)
                } else {
                    None
                };
                Ok(Linear { w, b })
            };
            let attn = Attention {
                q: lin("self_attn.q_proj", qd, h, true)?,
                k: lin("self_attn.k_proj", kvd, h, true)?,
                v: lin("self_attn.v_proj", kvd, h, true)?,
                o: lin("self_attn.o_proj", h, qd, false)?,
            };
            let mlp = Mlp {
                gate: lin("mlp.gate_proj", i, h, false)?,
                up: lin("mlp.up_proj", i, h, false)?,
                down: lin("mlp.down_proj", h, i, false)?,
            };
            let norm = |name: &str| -> Result<wgpu::Buffer> {
                let n = format!("{p}.{name}.weight");
                upload_f32(gpu, &n, &src.vector(&n, h)?)
            };
            layers.push(Layer {
                attn_norm: norm("input_layernorm")?,
                attn,
                mlp_norm: norm("post_attention_layernorm")?,
                mlp,
            });
        }
        let norm = upload_f32(
            gpu,
            "model.norm.weight",
            &src.vector("model.norm.weight", h)?,
        )?;
        let rope = upload_f32(
            gpu,
            "rope",
            &crate::graph::rope_table(ctx, hd, cfg.rope_theta),
        )?;
        Ok(Qwen2 {
            cfg: cfg.clone(),
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

    /// Lay out one forward pass. `kind` is Vec for single-token decode, Mat for prefill.
    pub fn forward(
        &self,
        g: &mut Graph,
        a: &Activations,
        kv: &KvCache,
        kind: LinearKind,
        logits: Logits,
    ) {
        let c = &self.cfg;
        g.embed(&self.embed, &a.tokens, &a.x);
        for (layer, cache) in self.layers.iter().zip(&kv.layers) {
            layer.forward(g, a, cache, self, kind);
        }
        let head = Linear {
            w: self.lm_head().clone(),
            b: None,
        };
        match logits {
            Logits::All(out) => {
                g.rms_norm(&a.x, &self.norm, &a.xn, c.hidden, c.rms_eps, false);
                g.linear(&head, &a.xn, out, false, LinearKind::Mat);
            }
            Logits::Last { n_valid } => {
                if kind == LinearKind::Mat {
                    g.copy_last_row(&a.x, &a.last, c.hidden);
                    g.rms_norm(&a.last, &self.norm, &a.xn, c.hidden, c.rms_eps, true);
                } else {
                    g.rms_norm(&a.x, &self.norm, &a.xn, c.hidden, c.rms_eps, true);
                }
                g.linear(&head, &a.xn, &a.logits, false, LinearKind::Vec);
                g.argmax(&a.logits, n_valid, &a.next);
            }
        }
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
        let mut n: u64 = self.matrices().iter().map(|m| m.bytes()).sum::<u64>() + self.norm.size();
        for l in &self.layers {
            n += bias(&l.attn.q) + bias(&l.attn.k) + bias(&l.attn.v);
            n += l.attn_norm.size() + l.mlp_norm.size();
        }
        n
    }
}
