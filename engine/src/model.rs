//! The decoder, one for every family of family.rs, as a few plain structs whose `forward` reads like
//! the paper: pre-norm blocks, GQA attention with RoPE (and a per-head q/k norm where the family has
//! one), a SiLU-gated MLP. Each struct builds itself from the weights next to its forward (candle's
//! `new(cfg, vb)`), through [`Weights`]. `forward` does not compute: it lays the steps out on a `Graph`,
//! once at load, and the resulting plan is replayed per call (graph.rs holds the plumbing).

use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::graph::{Activations, Graph, Heads, KvCache, KvLayer, Linear, NormWeight};
use crate::weights::{upload_f32, HostMatrix, Matrix, QuantType};
use std::cell::RefCell;

/// Where the weights come from: safetensors or GGUF, under transformers' tensor names.
pub trait WeightSource {
    fn has(&self, name: &str) -> bool;
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<HostMatrix<'_>>;
    /// The format `matrix` would give the tensor, from its metadata alone (the data is not read).
    fn format(&self, name: &str, rows: usize, cols: usize) -> Result<QuantType> {
        self.matrix(name, rows, cols).map(|m| m.format)
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
}

/// Called with each tensor's name and bytes once uploaded (shared by every `Weights` of a load).
pub type UploadProgress<'a> = RefCell<&'a mut dyn FnMut(&str, u64)>;

/// Whether layers that read the same input are merged into one matrix (one dispatch) at load.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fusion {
    /// q, k, v stacked (their second format, if any, starting on a multiple of `align` rows); gate and
    /// up interleaved.
    On { align: usize },
    /// Every layer its own matrix (tests and the lab compare the two).
    Off,
}

/// Uploads weights by name under a prefix (candle's VarBuilder): `w.pp("model.layers.3")`.
pub struct Weights<'a> {
    gpu: &'a Gpu,
    src: &'a dyn WeightSource,
    prefix: String,
    progress: &'a UploadProgress<'a>,
    pub fusion: Fusion,
    /// Set: read no data, and bind every matrix and vector to this buffer, each laid out as its
    /// upload would be ([`Weights::placeholders`]).
    placeholder: Option<&'a wgpu::Buffer>,
}

/// Several layers that read the same input: merged into one matrix, or each its own.
pub enum Merged {
    One(Linear),
    Each(Vec<Linear>),
}

/// Whether a linear layer has a bias.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bias {
    Yes,
    No,
}

impl<'a> Weights<'a> {
    pub fn new(
        gpu: &'a Gpu,
        src: &'a dyn WeightSource,
        progress: &'a UploadProgress<'a>,
        fusion: Fusion,
    ) -> Self {
        Weights {
            gpu,
            src,
            prefix: String::new(),
            progress,
            fusion,
            placeholder: None,
        }
    }

    /// Weights that read only the tensors' metadata: each matrix and vector is bound to `buffer`,
    /// the matrices chunked, stacked and interleaved as the real upload would. A model built from
    /// them lays out the same forward with no data, so that its pipelines can be listed and compiled
    /// while the real weights upload.
    pub fn placeholders(
        gpu: &'a Gpu,
        src: &'a dyn WeightSource,
        progress: &'a UploadProgress<'a>,
        fusion: Fusion,
        buffer: &'a wgpu::Buffer,
    ) -> Self {
        Weights {
            placeholder: Some(buffer),
            ..Self::new(gpu, src, progress, fusion)
        }
    }

    /// The same weights under `prefix.name`.
    pub fn pp(&self, name: &str) -> Weights<'a> {
        Weights {
            gpu: self.gpu,
            src: self.src,
            prefix: self.name(name),
            progress: self.progress,
            fusion: self.fusion,
            placeholder: self.placeholder,
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
        if let Some(buffer) = self.placeholder {
            let shape = (self.src.format(&full, rows, cols)?, rows, cols);
            return Ok(Matrix::placeholder(self.gpu, &full, shape, false, buffer));
        }
        let host = self.src.matrix(&full, rows, cols)?;
        let m = Matrix::upload(self.gpu, &host)?;
        (self.progress.borrow_mut())(&full, host.data.len() as u64);
        Ok(m)
    }

    /// A [len] vector, as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<wgpu::Buffer> {
        if let Some(buffer) = self.placeholder {
            return Ok(buffer.clone());
        }
        let full = self.name(name);
        let v = self.src.vector(&full, len)?;
        let b = upload_f32(self.gpu, &full, &v)?;
        (self.progress.borrow_mut())(&full, len as u64 * 4);
        Ok(b)
    }

    /// A table the model computes (not a tensor of the file), as f32 (not computed for placeholders).
    pub fn table(&self, name: &str, v: impl FnOnce() -> Vec<f32>) -> Result<wgpu::Buffer> {
        match self.placeholder {
            Some(buffer) => Ok(buffer.clone()),
            None => upload_f32(self.gpu, name, &v()),
        }
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

    /// Layers `names` ([rows[i], cols] each) that read the same input, stacked into one matrix whose
    /// output is theirs side by side (q, k, v), biases concatenated; each its own when fusion is off
    /// or the matrices cannot be stacked (more than two formats, see `Matrix::upload_stacked`).
    pub fn stacked(
        &self,
        names: &[&str],
        rows: &[usize],
        cols: usize,
        bias: Bias,
    ) -> Result<Merged> {
        let Fusion::On { align } = self.fusion else {
            return self.each(names, rows, cols, bias);
        };
        let full: Vec<String> = names
            .iter()
            .map(|n| self.name(&format!("{n}.weight")))
            .collect();
        if let Some(buffer) = self.placeholder {
            let shapes = full
                .iter()
                .zip(rows)
                .map(|(n, &r)| Ok((self.src.format(n, r, cols)?, r, cols)))
                .collect::<Result<Vec<_>>>()?;
            let name = full.join("+");
            let Some(m) = Matrix::placeholder_stacked(self.gpu, name, &shapes, align, buffer)
            else {
                return self.each(names, rows, cols, bias);
            };
            let b = (bias == Bias::Yes).then(|| buffer.clone());
            return Ok(Merged::One(Linear { w: m, b }));
        }
        let hosts = full
            .iter()
            .zip(rows)
            .map(|(n, &r)| self.src.matrix(n, r, cols))
            .collect::<Result<Vec<_>>>()?;
        let Some(m) = Matrix::upload_stacked(self.gpu, &hosts, align)? else {
            return self.each(names, rows, cols, bias);
        };
        for (n, h) in full.iter().zip(&hosts) {
            (self.progress.borrow_mut())(n, h.data.len() as u64);
        }
        let b = match bias {
            Bias::No => None,
            Bias::Yes => {
                let mut v = Vec::with_capacity(m.rows);
                for (n, &r) in names.iter().zip(rows) {
                    v.extend(self.src.vector(&self.name(&format!("{n}.bias")), r)?);
                }
                Some(upload_f32(self.gpu, &format!("{}.bias", m.name), &v)?)
            }
        };
        Ok(Merged::One(Linear { w: m, b }))
    }

    /// Two layers of one shape that read the same input, their rows interleaved into one matrix (gate
    /// and up, for the SiLU-gated epilogue); each its own when fusion is off or their formats differ.
    pub fn interleaved(&self, a: &str, b: &str, rows: usize, cols: usize) -> Result<Merged> {
        if self.fusion == Fusion::Off {
            return self.each(&[a, b], &[rows, rows], cols, Bias::No);
        }
        let (na, nb) = (
            self.name(&format!("{a}.weight")),
            self.name(&format!("{b}.weight")),
        );
        if let Some(buffer) = self.placeholder {
            let (fa, fb) = (
                self.src.format(&na, rows, cols)?,
                self.src.format(&nb, rows, cols)?,
            );
            if fa != fb {
                return self.each(&[a, b], &[rows, rows], cols, Bias::No);
            }
            let name = format!("{na}|{nb}");
            let m = Matrix::placeholder(self.gpu, &name, (fa, 2 * rows, cols), true, buffer);
            return Ok(Merged::One(Linear { w: m, b: None }));
        }
        let (ha, hb) = (
            self.src.matrix(&na, rows, cols)?,
            self.src.matrix(&nb, rows, cols)?,
        );
        let Some(m) = Matrix::upload_interleaved(self.gpu, &ha, &hb)? else {
            return self.each(&[a, b], &[rows, rows], cols, Bias::No);
        };
        (self.progress.borrow_mut())(&na, ha.data.len() as u64);
        (self.progress.borrow_mut())(&nb, hb.data.len() as u64);
        Ok(Merged::One(Linear { w: m, b: None }))
    }

    fn each(&self, names: &[&str], rows: &[usize], cols: usize, bias: Bias) -> Result<Merged> {
        let v = names
            .iter()
            .zip(rows)
            .map(|(n, &r)| self.linear(n, r, cols, bias))
            .collect::<Result<Vec<_>>>()?;
        Ok(Merged::Each(v))
    }
}

impl Merged {
    /// The layer or layers.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Merged::One(l) => vec![l],
            Merged::Each(v) => v.iter().collect(),
        }
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

    /// The norm's weight, for the layers it is fused into.
    pub fn weight(&self) -> NormWeight<'_> {
        NormWeight {
            w: &self.w,
            eps: self.eps,
        }
    }
}

pub struct Attention {
    /// q [n_heads * head_dim], k, v [n_kv_heads * head_dim] from [hidden]: one stacked matrix writing
    /// the whole qkv row, or three; bias where the family has one.
    pub qkv: Merged,
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
        let names = ["q_proj", "k_proj", "v_proj"];
        Ok(Attention {
            qkv: w.stacked(&names, &[qd, kvd, kvd], h, bias)?,
            o: w.linear("o_proj", h, qd, Bias::No)?,
            qk_norm,
            heads,
        })
    }

    /// x += o(attention(rope(q(norm(x))), rope(k(norm(x))), v(norm(x)))), the keys and values of the
    /// call's tokens appended to the layer's cache; `norm` is fused into the projections.
    fn forward(
        &self,
        g: &mut Graph,
        a: &Activations,
        norm: &RmsNorm,
        kv: &KvLayer,
        rope: &wgpu::Buffer,
    ) {
        let hs = self.heads;
        let width = hs.qkv_dim();
        match &self.qkv {
            Merged::One(qkv) => g.linear_normed(qkv, norm.weight(), &a.x, &a.qkv, 0, width),
            Merged::Each(parts) => {
                let cols = [0, hs.q_dim(), hs.q_dim() + hs.kv_dim()];
                for (l, col) in parts.iter().zip(cols) {
                    g.linear_normed(l, norm.weight(), &a.x, &a.qkv, col, width);
                }
            }
        }
        let norms = self.qk_norm.as_ref().map(|(q, k)| (&q.w, &k.w));
        let eps = self.qk_norm.as_ref().map_or(0.0, |(q, _)| q.eps);
        g.rope_store(&a.qkv, norms, eps, rope, kv, hs);
        g.attention(&a.qkv, width, kv, &a.attn, &a.attn_part, hs);
        g.linear_residual(&self.o, &a.attn, &a.x);
    }
}

pub struct Mlp {
    /// gate and up [intermediate, hidden]: one matrix of interleaved (gate, up) rows whose kernel
    /// applies the SiLU gate, or two.
    pub gate_up: Merged,
    pub down: Linear, // [hidden, intermediate]
    pub intermediate: usize,
}

impl Mlp {
    pub fn new(c: &ModelConfig, w: &Weights) -> Result<Self> {
        let (h, i) = (c.hidden, c.intermediate);
        Ok(Mlp {
            gate_up: w.interleaved("gate_proj", "up_proj", i, h)?,
            down: w.linear("down_proj", h, i, Bias::No)?,
            intermediate: i,
        })
    }

    /// x += down(silu(gate(norm(x))) * up(norm(x))), `norm` fused into gate and up.
    fn forward(&self, g: &mut Graph, a: &Activations, norm: &RmsNorm) {
        match &self.gate_up {
            Merged::One(gu) => g.gate_up_normed(gu, norm.weight(), &a.x, &a.gate),
            Merged::Each(parts) => {
                let (gate, up) = (&parts[0], &parts[1]);
                let i = self.intermediate;
                g.linear_normed(gate, norm.weight(), &a.x, &a.gate, 0, i);
                g.linear_normed(up, norm.weight(), &a.x, &a.up, 0, i);
                g.silu_mul(&a.gate, &a.up, i);
            }
        }
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

    /// x += attention(norm(x)); x += mlp(norm(x)).
    fn forward(&self, g: &mut Graph, a: &Activations, kv: &KvLayer, rope: &wgpu::Buffer) {
        self.attn.forward(g, a, &self.attn_norm, kv, rope);
        self.mlp.forward(g, a, &self.mlp_norm);
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
    pub fn new(c: &ModelConfig, w: &Weights, positions: usize) -> Result<Self> {
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
        let rope = w.table("rope", || c.rope.table(positions, c.head_dim))?;
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
        g.lm_head(&head, self.norm.weight(), &a.x, &a.logits);
        g.argmax(&a.logits, c.vocab, n_valid, &a.next);
    }

    /// Every linear layer of the blocks (merged ones once).
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = vec![];
        for l in &self.layers {
            v.extend(l.attn.qkv.linears());
            v.push(&l.attn.o);
            v.extend(l.mlp.gate_up.linears());
            v.push(&l.mlp.down);
        }
        v
    }

    /// Every weight matrix, embedding first.
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut v = vec![&self.embed];
        v.extend(self.lm_head.as_ref());
        v.extend(self.linears().into_iter().map(|l| &l.w));
        v
    }

    /// Bytes of weights on the GPU (matrices, biases, norms).
    pub fn weight_bytes(&self) -> u64 {
        let mut n: u64 =
            self.matrices().iter().map(|m| m.bytes()).sum::<u64>() + self.norm.w.size();
        n += self
            .linears()
            .iter()
            .map(|l| l.b.as_ref().map_or(0, |b| b.size()))
            .sum::<u64>();
        for l in &self.layers {
            n += l.attn_norm.w.size() + l.mlp_norm.w.size();
            if let Some((q, k)) = &l.attn.qk_norm {
                n += q.w.size() + k.w.size();
            }
        }
        n
    }
}
