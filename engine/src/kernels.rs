//! The WGSL kernels: their sources (embedded from `shaders/`), the per-device shape choices, and the
//! compute pipelines, built once per model load.
//!
//! Kernel shapes are pipeline-overridable constants (`WG`, `TPR`, `WFMT`), chosen here from the device's
//! capabilities rather than baked into the shaders. Two kernels (matvec, rmsnorm) need a row reduction:
//! their module is the kernel file followed by one of two small helper files, `reduce_subgroup.wgsl`
//! (one subgroup per row, no barrier) or `reduce_shared.wgsl` (workgroup-memory tree, portable).
//!
//! Quantized weights stay in their block layout on the GPU (quant.rs): the kernels that read weights
//! (embed, matmul, and matvec_quant, the quantized matvec) are composed with `dequant.wgsl`, the shared
//! block decoders, and specialised per format with `WFMT` like the float ones.

use crate::error::{Error, Result};
use crate::gpu::{DeviceCaps, Gpu};
use crate::uniforms;
use crate::weights::{wfmt, QuantType, FLOATS};
use std::collections::HashMap;
use std::sync::Mutex;

pub const EMBED: &str = include_str!("../../shaders/embed.wgsl");
pub const RMSNORM: &str = include_str!("../../shaders/rmsnorm.wgsl");
pub const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
pub const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
pub const MATVEC_QUANT: &str = include_str!("../../shaders/matvec_quant.wgsl");
/// The int8 matvec (dot4I8Packed over x quantized by `QUANTIZE`), part of matvec_quant's module.
pub const MATVEC_Q8: &str = include_str!("../../shaders/matvec_q8.wgsl");
/// x quantized to 8 bits per 32-element block, for the int8 matvec.
pub const QUANTIZE: &str = include_str!("../../shaders/quantize.wgsl");
/// The store at the end of both matvec kernels (norm scale, bias, residual add, GLU).
pub const LINEAR_EPILOGUE: &str = include_str!("../../shaders/linear_epilogue.wgsl");
pub const DEQUANT: &str = include_str!("../../shaders/dequant.wgsl");
pub const ROPE: &str = include_str!("../../shaders/rope.wgsl");
pub const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
pub const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
pub const ARGMAX: &str = include_str!("../../shaders/argmax.wgsl");
pub const SAMPLE: &str = include_str!("../../shaders/sample.wgsl");
pub const REDUCE_SUBGROUP: &str = include_str!("../../shaders/reduce_subgroup.wgsl");
pub const REDUCE_SHARED: &str = include_str!("../../shaders/reduce_shared.wgsl");

/// The matvecs' rows per invocation the shaders take ([`Shapes::lane_rows`]).
pub const LANE_ROWS: [u32; 6] = [1, 2, 4, 8, 16, 32];
const MAX_LANE_ROWS: u32 = LANE_ROWS[LANE_ROWS.len() - 1];

/// LANE_ROWS as the error messages say it: "1, 2, 4, 8, 16 or 32".
fn lane_rows_list() -> String {
    let (last, rest) = LANE_ROWS.split_last().expect("not empty");
    let rest: Vec<String> = rest.iter().map(u32::to_string).collect();
    format!("{} or {last}", rest.join(", "))
}

/// Which row reduction a module is composed with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    Subgroup,
    Shared,
}

/// What every module starts with: the structs the host shares with the kernels, the weight-format codes
/// and the flag constants, generated from engine/src/uniforms.rs (the one place they are defined).
pub fn prelude() -> String {
    format!(
        "// ---- prelude: generated from engine/src/uniforms.rs (kernels::prelude) ----\n{}{}\n{}{}\
         // ---- end of prelude ----\n\n",
        uniforms::wgsl_format_consts(),
        uniforms::wgsl_flag_consts(),
        uniforms::wgsl_meta(),
        uniforms::wgsl_decls(),
    )
}

/// A kernel module's full source: the prelude, the kernel file, plus the reduction helper for the two
/// that need one.
pub fn compose(kernel: &str, reduce: Option<Reduce>) -> String {
    let pre = prelude();
    match reduce {
        None => format!("{pre}{kernel}"),
        Some(Reduce::Subgroup) => format!("{pre}{kernel}\n{REDUCE_SUBGROUP}"),
        Some(Reduce::Shared) => format!("{pre}{kernel}\n{REDUCE_SHARED}"),
    }
}

/// The bound on the matvecs' rows per invocation (RPI) that sizes their private arrays (the sums of
/// RPI rows x TOK tokens, and per row its unit's word and scales): the shapes' lane_rows, at least 2
/// (the GLU pairs). A module built for it runs any RPI up to it; sizing by the shapes keeps a GPU's
/// two rows per lane from declaring the 32 x 8 sums a CPU device's shapes need.
fn rpi_bound(shapes: &Shapes) -> u32 {
    shapes.lane_rows.max(2)
}

/// The two matvec modules, each composed once per tokens-per-workgroup value ([`matvec_module_source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatvecModule {
    /// matvec.wgsl: float weights.
    Float,
    /// matvec_quant.wgsl and its int8 variant (matvec_q8.wgsl, entry point `matvec_q8`).
    Quant,
}

/// A matvec module's source for `tok` tokens per workgroup and RPI up to `max_rpi`, with its epilogue
/// (linear_epilogue.wgsl) and the row reduction `reduce`. TOK and MAX_RPI are constants rather than
/// overrides because they size the private arrays: a decode (TOK = 1) pipeline holds 1 token's sums,
/// not 8 (on lavapipe a pipeline's compile time grows with them: 3x for 32 rows per lane).
///
/// The quantized module also gets its loop order for `tok`, `accumulate_tok` and `accumulate_q8_tok`:
/// the one-token order (`accumulate`, `accumulate_q8`) or the blocks' (`accumulate_blocks`,
/// `accumulate_q8_blocks`). A branch on TOK would leave both orders reachable from the entry points,
/// and the driver inlines and compiles what is reachable before it drops the dead branch (lavapipe: a
/// third of a warm start's pipeline time).
pub fn matvec_module_source(kind: MatvecModule, max_rpi: u32, tok: u32, reduce: Reduce) -> String {
    let consts = format!("const MAX_RPI: u32 = {max_rpi}u;\nconst TOK: u32 = {tok}u;\n");
    match kind {
        MatvecModule::Float => compose(
            &format!("{consts}{MATVEC}\n{LINEAR_EPILOGUE}"),
            Some(reduce),
        ),
        MatvecModule::Quant => {
            let order = if tok == 1 { "" } else { "_blocks" };
            let args = "f: u32, seg_base: u32, seg_row0: u32, r0: u32, lane: u32";
            let pass = "f, seg_base, seg_row0, r0, lane";
            let orders = format!(
                "// The loop order of TOK = {tok} (engine/src/kernels.rs, matvec_module_source).\n\
                 fn accumulate_tok({args}) {{\n    if r0 < p.rows {{\n        accumulate{order}({pass});\n    }}\n}}\n\
                 fn accumulate_q8_tok({args}) {{\n    if r0 < p.rows {{\n        accumulate_q8{order}({pass});\n    }}\n}}\n"
            );
            compose_dequant(
                &format!("{consts}{MATVEC_QUANT}\n{MATVEC_Q8}\n{orders}\n{LINEAR_EPILOGUE}"),
                Some(reduce),
            )
        }
    }
}

/// A module that reads quantized weights: the kernel file, the block decoders (`dequant.wgsl`), then the
/// reduction helper if any.
pub fn compose_dequant(kernel: &str, reduce: Option<Reduce>) -> String {
    compose(&format!("{kernel}\n{DEQUANT}"), reduce)
}

/// The block-quantized formats (matvec_quant.wgsl; embed and matmul take every format).
pub fn quant_formats() -> Vec<QuantType> {
    QuantType::ALL
        .into_iter()
        .filter(|t| t.is_quantized())
        .collect()
}

/// Every module the engine can build, by name, for the naga validation / translation test.
/// `matvec_quant` modules take WFMT 3..=10 only; embed and matmul take every format.
pub fn all_modules() -> Vec<(String, String)> {
    let mut v = vec![
        ("embed".to_string(), compose_dequant(EMBED, None)),
        ("matmul".to_string(), compose_dequant(MATMUL, None)),
        ("rope".to_string(), compose(ROPE, None)),
        ("quantize".to_string(), compose(QUANTIZE, None)),
        ("attention".to_string(), compose(ATTENTION, None)),
        ("elementwise".to_string(), compose(ELEMENTWISE, None)),
        ("argmax".to_string(), compose(ARGMAX, None)),
        ("sample".to_string(), compose(SAMPLE, None)),
        (
            "logprobs".to_string(),
            crate::logprobs::LOGPROBS.to_string(),
        ),
    ];
    v.push((
        "rmsnorm+subgroup".to_string(),
        compose(RMSNORM, Some(Reduce::Subgroup)),
    ));
    v.push((
        "rmsnorm+shared".to_string(),
        compose(RMSNORM, Some(Reduce::Shared)),
    ));
    // The matvecs at the largest bound the shapes allow, for decode (1 token) and blocks (8).
    for (kind, name) in [
        (MatvecModule::Float, "matvec"),
        (MatvecModule::Quant, "matvec_quant"),
    ] {
        for (r, rname) in [(Reduce::Subgroup, "subgroup"), (Reduce::Shared, "shared")] {
            for tok in [1, 8] {
                v.push((
                    format!("{name}+{rname}+tok{tok}"),
                    matvec_module_source(kind, MAX_LANE_ROWS, tok, r),
                ));
            }
        }
    }
    v
}

/// Kernel shapes for one device. Chosen from its capabilities; every field can be overridden for
/// experiments (the lab sweeps them: `glint lab --sweep`), and a tuning file ([`crate::tune`]) holds
/// them as JSON, one key per field. [`Shapes::check`] says which values a device can run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shapes {
    pub reduce: Reduce,
    /// Threads per row in matvec (and per row in rmsnorm): the subgroup size when rows reduce with
    /// subgroup operations.
    pub tpr: u32,
    /// matvec workgroup size (its rows per workgroup: matvec_wg / tpr).
    pub matvec_wg: u32,
    /// attention workgroup size (keys per tile).
    pub attn_wg: u32,
    /// Tokens per workgroup of the matvec over blocks of tokens (at most 8): what a call of a few
    /// tokens runs (batched decode of several sequences, short prompts), and every prefill on devices
    /// where barriers are costly (CPU rasterisers), since each weight load then serves that many tokens.
    pub block_tokens: u32,
    /// From how many tokens a linear layer runs the tiled matmul instead (`None`: never, on
    /// barrier-averse devices).
    pub tiled_from: Option<u32>,
    /// Rows per lane (invocation) of the matvecs ([`LANE_ROWS`]: 1 to 32; must divide matvec_wg /
    /// tpr): each x load then serves that many rows, and the workgroup has matvec_wg / lane_rows
    /// invocations (the rows per workgroup are unchanged). 32 on CPU devices with fixed subgroups
    /// (32 rows per workgroup), where every per-lane load is costly (lavapipe: 4 made decode about
    /// 1.5x and 8-token prefill about 2x faster than 1; 32 then made decode 1.7x, 4-sequence decode
    /// 2.4x and 16-token prefill 2.8x faster than 4, docs/PERFORMANCE.md); 2 elsewhere. The
    /// GLU-fused gate/up matvec needs pairs: it uses at least 2.
    pub lane_rows: u32,
    /// Split-K attention: keys per split. A call of at most `attn_split_tokens` tokens whose longest
    /// context has K keys splits each (token, head) into ceil(K / attn_split_keys) workgroups (at most
    /// `attn_max_splits`) and reduces them, so a long context uses the whole device.
    pub attn_split_keys: u32,
    pub attn_max_splits: u32,
    pub attn_split_tokens: u32,
    /// Which matvecs over block-quantized weights take x quantized to 8 bits per 32-element block
    /// (quantize.wgsl, one dispatch per linear layer's input) and sum with `dot4I8Packed`
    /// (matvec_q8.wgsl), as ggml's Q8_0 / Q8_1 activations: a quarter of x's bytes per load, integer
    /// dot products 4 at a time, at the cost of x's 8-bit rounding (at most half a step, 1/254 of each
    /// block's largest value) and one more dispatch per layer input. Off by default on every device,
    /// and not swept: the rounding changes greedy answers (the real GGUF goldens: 4 of 6 Qwen2.5
    /// and 2 of 4 SmolLM2 prompts still match), which is the user's choice to make, in a tuning
    /// file. Files from before it read as off.
    #[serde(default)]
    pub int8: Int8,
}

/// Where the int8 matvec runs ([`Shapes::int8`]).
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Int8 {
    /// Nowhere: every matvec reads x in f32 (the default).
    #[default]
    Off,
    /// The one-token matvec (decode of one sequence) only: on lavapipe a decode step is about 1.2-1.4x
    /// faster (the fused RMSNorm's work on x is done once, in the quantize, rather than per row slot),
    /// while the matvec over blocks of tokens is slower with it (docs/PERFORMANCE.md). A sequence
    /// decoded alone then rounds differently from one decoded in a batch.
    Decode,
    /// Every matvec variant (one token and blocks of tokens); the tiled matmul stays in f32.
    Matvec,
}

impl Int8 {
    /// Whether the linear kernel `k` reads int8 x.
    pub fn covers(self, k: LinearKernel) -> bool {
        match self {
            Int8::Off => false,
            Int8::Decode => k == LinearKernel::Single,
            Int8::Matvec => k != LinearKernel::Tiled,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int8::Off => "off",
            Int8::Decode => "decode",
            Int8::Matvec => "matvec",
        }
    }
}

impl Shapes {
    pub fn for_device(caps: &DeviceCaps) -> Self {
        // GPUs: the tiled matmul once a call has more tokens than one block of the matvec serves.
        let tiled_from = (!caps.cpu_device).then_some(9);
        // Rows per lane: 2 on GPUs; on a CPU device, where a lane's x loads are what a matvec costs
        // (lavapipe), as many as the workgroup's rows allow: 32 rows of one subgroup of lanes
        // (docs/PERFORMANCE.md: decode 1.7x, 4-sequence decode 2.4x, 16-token prefill 2.8x faster
        // than the 4 of before), 4 with the workgroup-memory reduction (4 rows of 32 lanes).
        let cpu_rows = MAX_LANE_ROWS;
        // A GPU has tens of compute units for the handful of (token, head) workgroups of a decode step:
        // split from 512 keys. A CPU device has a few threads, which the heads already fill: split only
        // very long contexts (it costs a reduce dispatch and the partials' traffic).
        let attn_split_keys = if caps.cpu_device { 8192 } else { 512 };
        match caps.subgroup_size {
            Some(sg) if sg <= 64 => Shapes {
                reduce: Reduce::Subgroup,
                tpr: sg,
                // GPUs: several rows per workgroup; at least 64 invocations. CPU devices: one lane
                // per invocation, each on `cpu_rows` rows.
                matvec_wg: if caps.cpu_device {
                    sg * cpu_rows
                } else {
                    (sg * 8).clamp(64, 256)
                },
                attn_wg: 64,
                block_tokens: 8,
                tiled_from,
                lane_rows: if caps.cpu_device { cpu_rows } else { 2 },
                attn_split_keys,
                attn_max_splits: 16,
                attn_split_tokens: 8,
                int8: Int8::Off,
            },
            _ => Shapes {
                reduce: Reduce::Shared,
                tpr: 32,
                matvec_wg: 128,
                attn_wg: 64,
                block_tokens: 8,
                tiled_from,
                lane_rows: if caps.cpu_device { 4 } else { 2 },
                attn_split_keys,
                attn_max_splits: 16,
                attn_split_tokens: 8,
                int8: Int8::Off,
            },
        }
    }

    /// Tokens per workgroup of the half-block matvec (`LinearKernel::HalfBlocks`): half of
    /// `block_tokens` when that is at least 4, else none (calls of 2 or more tokens then take the full
    /// blocks).
    pub fn half_block_tokens(&self) -> Option<u32> {
        (self.block_tokens >= 4).then_some(self.block_tokens / 2)
    }

    /// Whether these shapes can run on a device of `caps`, as the shaders' headers require; the
    /// error names the field and what it must be.
    /// - reduce `subgroup` needs a fixed subgroup size, and then tpr equal to it; `shared` needs tpr a
    ///   power of two (reduce_shared.wgsl's tree) and at most 256 invocations per workgroup;
    /// - matvec_wg a multiple of tpr; lane_rows one of [`LANE_ROWS`], and max(lane_rows, 2) dividing
    ///   the rows per workgroup (matvec_wg / tpr; the GLU pairs); matvec_wg / lane_rows invocations within the
    ///   device's limit;
    /// - block_tokens 1..=8; tiled_from at least 2 when given;
    /// - attn_wg a power of two, 4..=256 and within the device's limit (attention.wgsl; the engine
    ///   raises it to the model's head_dim);
    /// - attn_split_keys, attn_max_splits, attn_split_tokens at least 1.
    pub fn check(&self, caps: &DeviceCaps) -> std::result::Result<(), String> {
        let max_inv = caps.max_workgroup_invocations;
        match (self.reduce, caps.subgroup_size) {
            (Reduce::Subgroup, None) => {
                return Err(
                    "reduce is \"subgroup\" but this device has no fixed subgroup size: \
                            it must be \"shared\""
                        .into(),
                )
            }
            (Reduce::Subgroup, Some(sg)) if self.tpr != sg => {
                return Err(format!(
                    "tpr is {} but the subgroup reduction needs the subgroup size, {sg}",
                    self.tpr
                ))
            }
            _ => {}
        }
        if !self.tpr.is_power_of_two() || self.tpr > 256 {
            return Err(format!(
                "tpr is {}: it must be a power of two up to 256",
                self.tpr
            ));
        }
        if self.matvec_wg == 0 || !self.matvec_wg.is_multiple_of(self.tpr) {
            return Err(format!(
                "matvec_wg is {}: it must be a multiple of tpr ({})",
                self.matvec_wg, self.tpr
            ));
        }
        let rows = self.rows_per_wg();
        if !LANE_ROWS.contains(&self.lane_rows) || !rows.is_multiple_of(self.lane_rows.max(2)) {
            return Err(format!(
                "lane_rows is {}: it must be {}, and max(lane_rows, 2) must divide the {rows} rows of a \
                 matvec workgroup (matvec_wg / tpr)",
                self.lane_rows,
                lane_rows_list()
            ));
        }
        let inv = self.matvec_wg / self.lane_rows;
        let inv_limit = match self.reduce {
            Reduce::Shared => max_inv.min(256),
            Reduce::Subgroup => max_inv,
        };
        if inv > inv_limit {
            return Err(format!(
                "matvec_wg is {}: matvec_wg / lane_rows = {inv} invocations, over the limit of \
                 {inv_limit}",
                self.matvec_wg
            ));
        }
        if !(1..=8).contains(&self.block_tokens) {
            return Err(format!(
                "block_tokens is {}: it must be 1..=8",
                self.block_tokens
            ));
        }
        if let Some(t) = self.tiled_from {
            if t < 2 {
                return Err(format!(
                    "tiled_from is {t}: it must be at least 2 (or null)"
                ));
            }
        }
        if !self.attn_wg.is_power_of_two() || !(4..=256.min(max_inv)).contains(&self.attn_wg) {
            return Err(format!(
                "attn_wg is {}: it must be a power of two from 4 to {}",
                self.attn_wg,
                256.min(max_inv)
            ));
        }
        for (name, v) in [
            ("attn_split_keys", self.attn_split_keys),
            ("attn_max_splits", self.attn_max_splits),
            ("attn_split_tokens", self.attn_split_tokens),
        ] {
            if v == 0 {
                return Err(format!("{name} is 0: it must be at least 1"));
            }
        }
        Ok(())
    }

    /// Rows per matvec workgroup.
    pub fn rows_per_wg(&self) -> u32 {
        self.matvec_wg / self.tpr
    }

    /// Split-K attention's key ranges for a call of these tokens ((slot, position) each): from the
    /// longest context among them and `attn_split_keys`; 1 (no split) for calls of more than
    /// `attn_split_tokens` tokens, which fill the device already.
    pub fn kv_splits(&self, meta: &[[u32; 2]]) -> u32 {
        if meta.len() > self.attn_split_tokens as usize {
            return 1;
        }
        let keys = meta.iter().map(|m| m[1] + 1).max().unwrap_or(1);
        keys.div_ceil(self.attn_split_keys.max(1))
            .clamp(1, self.attn_max_splits.max(1))
    }

    /// The row multiple on which a stacked matrix's second format must start, so that every workgroup
    /// of every linear kernel sees one format (the tiled matmul covers 32 rows).
    pub fn segment_align(&self) -> usize {
        let r = self.rows_per_wg() as usize;
        match self.tiled_from {
            Some(_) => r * 32 / gcd(r, 32),
            None => r,
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The three kernels of a linear layer; a call picks one from its token count.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LinearKernel {
    /// matvec, one token per workgroup (decode).
    Single,
    /// matvec over blocks of `Shapes::block_tokens` tokens.
    Blocks,
    /// matvec over blocks of half as many ([`Shapes::half_block_tokens`]): a call of a few tokens
    /// (batched decode of 2 to 4 sequences) does not pay for a full block's arithmetic, which every
    /// workgroup does whatever its token count.
    HalfBlocks,
    /// The tiled matmul.
    Tiled,
}

/// What a linear layer's pipeline is specialised for: its weight format(s) and fusions (the kernels'
/// override constants).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinearSpec {
    pub format: QuantType,
    /// The format of the rows from the stacked matrix's split on (`format` when there is one).
    pub format2: QuantType,
    /// RMSNorm of x fused in (NORM).
    pub norm: bool,
    /// x's rows are the call's output rows (GATHER).
    pub gather: bool,
    /// (gate, up) row pairs, SiLU-gated output (GLU).
    pub glu: bool,
    /// x comes quantized to 8 bits ([`Shapes::int8`]; the int8 matvec, matvec_q8.wgsl). Its gather, if
    /// any, is the quantize's: `gather` is then false.
    pub x8: bool,
}

impl LinearSpec {
    /// A plain linear layer over one format.
    pub fn plain(format: QuantType) -> Self {
        LinearSpec {
            format,
            format2: format,
            norm: false,
            gather: false,
            glu: false,
            x8: false,
        }
    }
}

/// Element format of the KV cache.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    F32,
    /// Half the memory; needs no device feature (pack2x16float), but is the default only where the
    /// device has SHADER_F16.
    F16,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            _ => None,
        }
    }
    fn code(self) -> f64 {
        match self {
            KvType::F32 => uniforms::KV_F32 as f64,
            KvType::F16 => uniforms::KV_F16 as f64,
        }
    }
}

/// One compute pipeline the graph can ask for (what [`Kernels`] caches them by).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PipelineKey {
    Linear(LinearKernel, LinearSpec),
    Embed(QuantType),
    RopeStore {
        qk_norm: bool,
        kv: KvType,
    },
    Attention(KvType),
    AttentionReduce,
    /// x quantized for the int8 matvec, with the norm weight (NORM) and of the output rows (GATHER).
    Quantize {
        norm: bool,
        gather: bool,
    },
}

struct Modules {
    embed: wgpu::ShaderModule,
    /// The matvec modules, one per kind and tokens per workgroup, composed when a pipeline first
    /// needs them.
    matvecs: Mutex<HashMap<(MatvecModule, u32), wgpu::ShaderModule>>,
    matmul: wgpu::ShaderModule,
    rope: wgpu::ShaderModule,
    attention: wgpu::ShaderModule,
    quantize: wgpu::ShaderModule,
    /// The explicit layouts of the quantized matvec and its int8 form.
    matvec_quant_layout: wgpu::PipelineLayout,
    matvec_q8_layout: wgpu::PipelineLayout,
}

/// The bindings of an explicit bind group layout, by how the kernels use them.
struct Bindings {
    uniform: &'static [u32],
    read: &'static [u32],
    read_write: &'static [u32],
}

/// The bindings of the quantized matvec (matvec_quant.wgsl's header: p, step | w, x, bias, g, rows,
/// wu | y) and of its int8 form (matvec_q8.wgsl: p, step | w, bias, xq, xd, wu | y). Their pipelines
/// take these explicit layouts rather than each its own automatic one, which would hold only what its
/// entry point reads (the decode order reads w as vec4s, the blocks' as words).
const MATVEC_QUANT_BINDINGS: Bindings = Bindings {
    uniform: &[0, 1],
    read: &[2, 3, 4, 6, 7, 10],
    read_write: &[5],
};
const MATVEC_Q8_BINDINGS: Bindings = Bindings {
    uniform: &[0, 1],
    read: &[2, 4, 8, 9, 10],
    read_write: &[5],
};

fn pipeline_layout(device: &wgpu::Device, label: &str, b: &Bindings) -> wgpu::PipelineLayout {
    let buffer = |ty| wgpu::BindingType::Buffer {
        ty,
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let kinds = [
        (b.uniform, wgpu::BufferBindingType::Uniform),
        (b.read, wgpu::BufferBindingType::Storage { read_only: true }),
        (
            b.read_write,
            wgpu::BufferBindingType::Storage { read_only: false },
        ),
    ];
    let mut entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
        .iter()
        .flat_map(|&(bindings, ty)| {
            bindings
                .iter()
                .map(move |&binding| wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: buffer(ty),
                    count: None,
                })
        })
        .collect();
    entries.sort_by_key(|e| e.binding);
    let group = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&group)],
        immediate_size: 0,
    })
}

/// The compute pipelines of the model graph. The small fixed kernels are built at once; the linear
/// layers' and the embedding's, one per weight format and fusion, when the graph first asks for them.
pub struct Kernels {
    pub shapes: Shapes,
    gpu_device: wgpu::Device,
    /// The driver's on-disk pipeline cache (`Gpu::pipeline_cache`), when the backend has one.
    pipeline_cache: Option<wgpu::PipelineCache>,
    modules: Modules,
    cache: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    pub rmsnorm: wgpu::ComputePipeline,
    /// rmsnorm of the call's output rows (the final norm where it is not fused), packed by output.
    pub rmsnorm_gather: wgpu::ComputePipeline,
    pub silu_mul: wgpu::ComputePipeline,
    pub argmax: wgpu::ComputePipeline,
}

fn module(device: &wgpu::Device, label: &str, src: &str) -> wgpu::ShaderModule {
    let t = std::time::Instant::now();
    let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    log::debug!(
        "shader module {label} ({} bytes of WGSL): {:.1} ms",
        src.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    m
}

fn pipeline(
    device: &wgpu::Device,
    cache: Option<&wgpu::PipelineCache>,
    m: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    pipeline_in(device, cache, None, m, entry, constants)
}

/// `pipeline` with an explicit layout (None: the layout wgpu derives from what the entry point reads).
fn pipeline_in(
    device: &wgpu::Device,
    cache: Option<&wgpu::PipelineCache>,
    layout: Option<&wgpu::PipelineLayout>,
    m: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let t = std::time::Instant::now();
    let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout,
        module: m,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // Every kernel writes its workgroup memory before reading it.
            zero_initialize_workgroup_memory: false,
        },
        cache,
    });
    log::debug!(
        "pipeline {entry} {constants:?}: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    p
}

impl Kernels {
    pub fn new(gpu: &Gpu, shapes: Shapes) -> Result<Self> {
        // Whatever set them (the device's defaults, a tuning file, flags, a test), as a tuning
        // file's are checked.
        shapes
            .check(&gpu.caps)
            .map_err(|e| Error::Gpu(format!("kernel shapes: {e}")))?;
        let d = &gpu.device;
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let reduce = Some(shapes.reduce);
        let modules = Modules {
            embed: module(d, "embed", &compose_dequant(EMBED, None)),
            matvecs: Mutex::new(HashMap::new()),
            matmul: module(d, "matmul", &compose_dequant(MATMUL, None)),
            rope: module(d, "rope", &compose(ROPE, None)),
            attention: module(d, "attention", &compose(ATTENTION, None)),
            quantize: module(d, "quantize", &compose(QUANTIZE, None)),
            matvec_quant_layout: pipeline_layout(d, "matvec_quant", &MATVEC_QUANT_BINDINGS),
            matvec_q8_layout: pipeline_layout(d, "matvec_q8", &MATVEC_Q8_BINDINGS),
        };
        let norm_m = module(d, "rmsnorm", &compose(RMSNORM, reduce));
        let ew_m = module(d, "elementwise", &compose(ELEMENTWISE, None));
        let argmax_m = module(d, "argmax", &compose(ARGMAX, None));
        let norm_tpr = match shapes.reduce {
            Reduce::Subgroup => shapes.tpr as f64,
            Reduce::Shared => 64.0,
        };
        let pc = gpu.pipelines();
        let k = Kernels {
            gpu_device: gpu.device.clone(),
            pipeline_cache: gpu.pipelines().cloned(),
            modules,
            cache: Mutex::new(HashMap::new()),
            rmsnorm: pipeline(d, pc, &norm_m, "rmsnorm", &[("TPR", norm_tpr)]),
            rmsnorm_gather: pipeline(d, pc, &norm_m, "rmsnorm_gather", &[("TPR", norm_tpr)]),
            silu_mul: pipeline(d, pc, &ew_m, "silu_mul", &[]),
            argmax: pipeline(d, pc, &argmax_m, "argmax", &[]),
            shapes,
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the compute pipelines failed: {e}"
            )));
        }
        Ok(k)
    }

    /// Whether every kernel a weight matrix needs exists for `format`.
    pub fn supports(&self, format: QuantType) -> bool {
        QuantType::ALL.contains(&format)
    }

    /// The pipeline of one linear kernel for `spec` (built on first use).
    pub fn linear(&self, kernel: LinearKernel, spec: LinearSpec) -> Result<wgpu::ComputePipeline> {
        self.get(PipelineKey::Linear(kernel, spec))
    }

    /// The embedding lookup for a table of `format` (built on first use).
    pub fn embed(&self, format: QuantType) -> Result<wgpu::ComputePipeline> {
        self.get(PipelineKey::Embed(format))
    }

    /// RoPE with the KV-cache write for a cache of `kv` elements (with the per-head q/k norm).
    pub fn rope_store(&self, qk_norm: bool, kv: KvType) -> Result<wgpu::ComputePipeline> {
        self.get(PipelineKey::RopeStore { qk_norm, kv })
    }

    /// Attention over a cache of `kv` elements, and the split-K reduce.
    pub fn attention(&self, kv: KvType) -> Result<wgpu::ComputePipeline> {
        self.get(PipelineKey::Attention(kv))
    }
    pub fn attention_reduce(&self) -> Result<wgpu::ComputePipeline> {
        self.get(PipelineKey::AttentionReduce)
    }

    /// The int8 matvec's quantize of x (with the norm weight, of the output rows).
    pub fn quantize(&self, norm: bool, gather: bool) -> Result<wgpu::ComputePipeline> {
        self.get(PipelineKey::Quantize { norm, gather })
    }

    /// Build every pipeline of `keys` not built yet, on as many threads as the machine has cores
    /// (drivers compile pipelines independently; wgpu's error scopes are per thread), so that a load
    /// waits for the slowest share rather than the sum. The graph then finds them all cached.
    pub fn prebuild(&self, keys: &[PipelineKey]) -> Result<()> {
        let mut todo: Vec<PipelineKey> = Vec::new();
        {
            let cache = self.cache.lock().expect("pipeline cache");
            for k in keys {
                if !cache.contains_key(k) && !todo.contains(k) {
                    todo.push(*k);
                }
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(todo.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_error = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&k) = todo.get(i) else { break };
                    if let Err(e) = self.get(k) {
                        first_error.lock().expect("prebuild error").get_or_insert(e);
                        break;
                    }
                });
            }
        });
        match first_error.into_inner().expect("prebuild error") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// How many pipelines have been built (and cached) so far.
    pub fn built(&self) -> usize {
        self.cache.lock().expect("pipeline cache").len()
    }

    pub(crate) fn get(&self, key: PipelineKey) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.cache.lock().expect("pipeline cache").get(&key) {
            return Ok(p.clone());
        }
        let scope = self
            .gpu_device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let p = self.build(key);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the {key:?} pipeline failed: {e}"
            )));
        }
        self.cache
            .lock()
            .expect("pipeline cache")
            .insert(key, p.clone());
        Ok(p)
    }

    /// The matvec module of `kind` for `tok` tokens per workgroup, composed on first use (the lock is
    /// held while naga parses it, so that two threads never compose the same module).
    fn matvec_module(&self, kind: MatvecModule, tok: u32) -> wgpu::ShaderModule {
        let mut modules = self.modules.matvecs.lock().expect("matvec modules");
        modules
            .entry((kind, tok))
            .or_insert_with(|| {
                let label = format!("{kind:?} matvec, TOK {tok}");
                let src =
                    matvec_module_source(kind, rpi_bound(&self.shapes), tok, self.shapes.reduce);
                module(&self.gpu_device, &label, &src)
            })
            .clone()
    }

    fn build(&self, key: PipelineKey) -> wgpu::ComputePipeline {
        let d = &self.gpu_device;
        let pc = self.pipeline_cache.as_ref();
        let m = &self.modules;
        let sh = &self.shapes;
        match key {
            PipelineKey::Embed(f) => {
                pipeline(d, pc, &m.embed, "embed", &[("WFMT", wfmt(f) as f64)])
            }
            PipelineKey::RopeStore { qk_norm, kv } => {
                let norm = if qk_norm { 1.0 } else { 0.0 };
                pipeline(
                    d,
                    pc,
                    &m.rope,
                    "rope_store",
                    &[("QK_NORM", norm), ("KVF", kv.code())],
                )
            }
            PipelineKey::Attention(kv) => pipeline(
                d,
                pc,
                &m.attention,
                "attention",
                &[("WG", sh.attn_wg as f64), ("KVF", kv.code())],
            ),
            PipelineKey::AttentionReduce => pipeline(
                d,
                pc,
                &m.attention,
                "attention_reduce",
                &[("WG", sh.attn_wg as f64)],
            ),
            PipelineKey::Quantize { norm, gather } => {
                let flag = |b: bool| if b { 1.0 } else { 0.0 };
                pipeline(
                    d,
                    pc,
                    &m.quantize,
                    "quantize_q8",
                    &[("NORM", flag(norm)), ("GATHER", flag(gather))],
                )
            }
            PipelineKey::Linear(kernel, s) => {
                let flag = |b: bool| if b { 1.0 } else { 0.0 };
                let mut c: Vec<(&str, f64)> = vec![
                    ("WFMT", wfmt(s.format) as f64),
                    ("WFMT2", wfmt(s.format2) as f64),
                    ("NORM", flag(s.norm)),
                    ("GATHER", flag(s.gather)),
                    ("GLU", flag(s.glu)),
                ];
                if kernel == LinearKernel::Tiled {
                    return pipeline(d, pc, &m.matmul, "matmul", &c);
                }
                let tok = match kernel {
                    LinearKernel::Single => 1,
                    LinearKernel::HalfBlocks => sh.half_block_tokens().unwrap_or(sh.block_tokens),
                    _ => sh.block_tokens,
                };
                let rpi = if s.glu {
                    sh.lane_rows.max(2)
                } else {
                    sh.lane_rows
                };
                c.extend([
                    ("WG", sh.matvec_wg as f64),
                    ("TPR", sh.tpr as f64),
                    ("RPI", rpi as f64),
                ]);
                // A stacked matrix of two formats takes the entry point with both segments' loops.
                let stacked = s.format2 != s.format;
                let (kind, entry, layout) = if FLOATS.contains(&s.format) {
                    (MatvecModule::Float, "matvec", None)
                } else if s.x8 {
                    let e = if stacked {
                        "matvec_q8_stacked"
                    } else {
                        "matvec_q8"
                    };
                    (MatvecModule::Quant, e, Some(&m.matvec_q8_layout))
                } else {
                    let e = if stacked {
                        "matvec_quant_stacked"
                    } else {
                        "matvec_quant"
                    };
                    (MatvecModule::Quant, e, Some(&m.matvec_quant_layout))
                };
                let module = self.matvec_module(kind, tok);
                pipeline_in(d, pc, layout, &module, entry, &c)
            }
        }
    }
}
