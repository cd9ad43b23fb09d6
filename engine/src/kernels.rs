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
use crate::weights::{wfmt, QuantType, FLOATS};
use std::collections::HashMap;

pub const EMBED: &str = include_str!("../../shaders/embed.wgsl");
pub const RMSNORM: &str = include_str!("../../shaders/rmsnorm.wgsl");
pub const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
pub const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
pub const MATVEC_QUANT: &str = include_str!("../../shaders/matvec_quant.wgsl");
pub const DEQUANT: &str = include_str!("../../shaders/dequant.wgsl");
pub const ROPE: &str = include_str!("../../shaders/rope.wgsl");
pub const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
pub const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
pub const ARGMAX: &str = include_str!("../../shaders/argmax.wgsl");
pub const SAMPLE: &str = include_str!("../../shaders/sample.wgsl");
pub const REDUCE_SUBGROUP: &str = include_str!("../../shaders/reduce_subgroup.wgsl");
pub const REDUCE_SHARED: &str = include_str!("../../shaders/reduce_shared.wgsl");

/// Which row reduction a module is composed with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Reduce {
    Subgroup,
    Shared,
}

/// A kernel module's full source: the kernel file, plus the reduction helper for the two that need one.
pub fn compose(kernel: &str, reduce: Option<Reduce>) -> String {
    match reduce {
        None => kernel.to_string(),
        Some(Reduce::Subgroup) => format!("{kernel}\n{REDUCE_SUBGROUP}"),
        Some(Reduce::Shared) => format!("{kernel}\n{REDUCE_SHARED}"),
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
        ("attention".to_string(), compose(ATTENTION, None)),
        ("elementwise".to_string(), compose(ELEMENTWISE, None)),
        ("argmax".to_string(), compose(ARGMAX, None)),
        ("sample".to_string(), compose(SAMPLE, None)),
        (
            "logprobs".to_string(),
            crate::logprobs::LOGPROBS.to_string(),
        ),
    ];
    for (name, src) in [("matvec", MATVEC), ("rmsnorm", RMSNORM)] {
        v.push((
            format!("{name}+subgroup"),
            compose(src, Some(Reduce::Subgroup)),
        ));
        v.push((format!("{name}+shared"), compose(src, Some(Reduce::Shared))));
    }
    for r in [Reduce::Subgroup, Reduce::Shared] {
        let name = if r == Reduce::Subgroup {
            "matvec_quant+subgroup"
        } else {
            "matvec_quant+shared"
        };
        v.push((name.to_string(), compose_dequant(MATVEC_QUANT, Some(r))));
    }
    v
}

/// Kernel shapes for one device. Chosen from its capabilities; every field can be overridden for
/// experiments (benches sweep them).
#[derive(Clone, Debug)]
pub struct Shapes {
    pub reduce: Reduce,
    /// Threads per row in matvec (and per row in rmsnorm): the subgroup size when rows reduce with
    /// subgroup operations.
    pub tpr: u32,
    /// matvec workgroup size.
    pub matvec_wg: u32,
    /// attention workgroup size (keys per tile).
    pub attn_wg: u32,
    /// Prefill linear layers: `Some(n)` runs matvec over blocks of n tokens (no barriers: best where
    /// barriers are costly, e.g. CPU rasterisers); `None` runs the tiled matmul.
    pub prefill_tok: Option<u32>,
    /// Rows per invocation of the quantized matvec (1, 2 or 4; must divide matvec_wg / tpr): each x
    /// load then serves that many rows, and the workgroup has matvec_wg / quant_rows invocations (the
    /// rows per workgroup, matvec_wg / tpr, are unchanged). 4 on CPU devices, where every per-lane load
    /// is costly (lavapipe: decode about 1.5x, 8-token prefill about 2x faster than with 1); 2 elsewhere.
    pub quant_rows: u32,
}

impl Shapes {
    pub fn for_device(caps: &DeviceCaps) -> Self {
        let prefill_tok = caps.cpu_device.then_some(8);
        let quant_rows = if caps.cpu_device { 4 } else { 2 };
        match caps.subgroup_size {
            Some(sg) if sg <= 64 => Shapes {
                reduce: Reduce::Subgroup,
                tpr: sg,
                // Several rows per workgroup; at least 64 invocations.
                matvec_wg: (sg * 8).clamp(64, 256),
                attn_wg: 64,
                prefill_tok,
                quant_rows,
            },
            _ => Shapes {
                reduce: Reduce::Shared,
                tpr: 32,
                matvec_wg: 128,
                attn_wg: 64,
                prefill_tok,
                quant_rows,
            },
        }
    }
}

/// All compute pipelines of the model graph.
pub struct Kernels {
    pub shapes: Shapes,
    /// One pipeline per weight format (`WFMT` specialisation).
    pub embed: HashMap<QuantType, wgpu::ComputePipeline>,
    /// matvec with TOK = 1 (decode).
    pub matvec: HashMap<QuantType, wgpu::ComputePipeline>,
    /// matvec with TOK = shapes.prefill_tok (prefill on barrier-averse devices).
    pub matvec_tok: HashMap<QuantType, wgpu::ComputePipeline>,
    pub matmul: HashMap<QuantType, wgpu::ComputePipeline>,
    pub rmsnorm: wgpu::ComputePipeline,
    pub rope_q: wgpu::ComputePipeline,
    pub store_kv: wgpu::ComputePipeline,
    pub attention: wgpu::ComputePipeline,
    pub silu_mul: wgpu::ComputePipeline,
    pub argmax: wgpu::ComputePipeline,
}

fn module(gpu: &Gpu, label: &str, src: &str) -> wgpu::ShaderModule {
    gpu.device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        })
}

fn pipeline(
    gpu: &Gpu,
    m: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    gpu.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: m,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // Every kernel writes its workgroup memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
}

/// One pipeline per format in `formats`, specialised with WFMT and the shared `constants`.
fn per_format(
    gpu: &Gpu,
    m: &wgpu::ShaderModule,
    entry: &str,
    formats: &[QuantType],
    constants: &[(&str, f64)],
) -> HashMap<QuantType, wgpu::ComputePipeline> {
    formats
        .iter()
        .map(|&f| {
            let mut c = constants.to_vec();
            c.push(("WFMT", wfmt(f) as f64));
            (f, pipeline(gpu, m, entry, &c))
        })
        .collect()
}

impl Kernels {
    pub fn new(gpu: &Gpu, shapes: Shapes) -> Result<Self> {
        let rows_per_wg = shapes.matvec_wg / shapes.tpr;
        if ![1, 2, 4].contains(&shapes.quant_rows) || !rows_per_wg.is_multiple_of(shapes.quant_rows)
        {
            return Err(Error::Gpu(format!(
                "quant_rows {} must be 1, 2 or 4 and divide the {rows_per_wg} rows of a matvec workgroup",
                shapes.quant_rows
            )));
        }
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let reduce = Some(shapes.reduce);
        let embed_m = module(gpu, "embed", &compose_dequant(EMBED, None));
        let matvec_m = module(gpu, "matvec", &compose(MATVEC, reduce));
        let matvec_q_m = module(gpu, "matvec_quant", &compose_dequant(MATVEC_QUANT, reduce));
        let matmul_m = module(gpu, "matmul", &compose_dequant(MATMUL, None));
        let norm_m = module(gpu, "rmsnorm", &compose(RMSNORM, reduce));
        let rope_m = module(gpu, "rope", ROPE);
        let attn_m = module(gpu, "attention", ATTENTION);
        let ew_m = module(gpu, "elementwise", ELEMENTWISE);
        let argmax_m = module(gpu, "argmax", ARGMAX);
        let tpr = shapes.tpr as f64;
        let norm_tpr = match shapes.reduce {
            Reduce::Subgroup => tpr,
            Reduce::Shared => 64.0,
        };
        let mv = [("WG", shapes.matvec_wg as f64), ("TPR", tpr), ("TOK", 1.0)];
        let mv_tok = [
            ("WG", shapes.matvec_wg as f64),
            ("TPR", tpr),
            ("TOK", shapes.prefill_tok.unwrap_or(1) as f64),
        ];
        let quants = quant_formats();
        // Float formats from matvec.wgsl, quantized ones from matvec_quant.wgsl, in one map.
        let matvecs = |c: &[(&str, f64)]| {
            let mut m = per_format(gpu, &matvec_m, "matvec", &FLOATS, c);
            let mut cq = c.to_vec();
            cq.push(("RPI", shapes.quant_rows as f64));
            m.extend(per_format(gpu, &matvec_q_m, "matvec_quant", &quants, &cq));
            m
        };
        let k = Kernels {
            embed: per_format(gpu, &embed_m, "embed", &QuantType::ALL, &[]),
            matvec: matvecs(&mv),
            matvec_tok: match shapes.prefill_tok {
                Some(_) => matvecs(&mv_tok),
                None => HashMap::new(),
            },
            matmul: per_format(gpu, &matmul_m, "matmul", &QuantType::ALL, &[]),
            rmsnorm: pipeline(gpu, &norm_m, "rmsnorm", &[("TPR", norm_tpr)]),
            rope_q: pipeline(gpu, &rope_m, "rope_q", &[]),
            store_kv: pipeline(gpu, &rope_m, "store_kv", &[]),
            attention: pipeline(gpu, &attn_m, "attention", &[("WG", shapes.attn_wg as f64)]),
            silu_mul: pipeline(gpu, &ew_m, "silu_mul", &[]),
            argmax: pipeline(gpu, &argmax_m, "argmax", &[]),
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
        self.matvec.contains_key(&format)
            && self.matmul.contains_key(&format)
            && self.embed.contains_key(&format)
    }
}
