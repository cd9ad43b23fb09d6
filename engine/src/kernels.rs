//! The WGSL kernels: their sources (embedded from `shaders/`), the per-device shape choices, and the
//! compute pipelines, built once per model load.
//!
//! Kernel shapes are pipeline-overridable constants (`WG`, `TPR`, `WFMT`), chosen here from the device's
//! capabilities rather than baked into the shaders. Two kernels (matvec, rmsnorm) need a row reduction:
//! their module is the kernel file followed by one of two small helper files, `reduce_subgroup.wgsl`
//! (one subgroup per row, no barrier) or `reduce_shared.wgsl` (workgroup-memory tree, portable).

use crate::error::{Error, Result};
use crate::gpu::{DeviceCaps, Gpu};
use crate::weights::WeightFormat;

pub const EMBED: &str = include_str!("../../shaders/embed.wgsl");
pub const RMSNORM: &str = include_str!("../../shaders/rmsnorm.wgsl");
pub const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
pub const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
pub const ROPE: &str = include_str!("../../shaders/rope.wgsl");
pub const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
pub const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
pub const ARGMAX: &str = include_str!("../../shaders/argmax.wgsl");
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

/// Every module the engine can build, by name, for the naga validation / translation test.
pub fn all_modules() -> Vec<(String, String)> {
    let mut v = vec![
        ("embed".to_string(), compose(EMBED, None)),
        ("matmul".to_string(), compose(MATMUL, None)),
        ("rope".to_string(), compose(ROPE, None)),
        ("attention".to_string(), compose(ATTENTION, None)),
        ("elementwise".to_string(), compose(ELEMENTWISE, None)),
        ("argmax".to_string(), compose(ARGMAX, None)),
    ];
    for (name, src) in [("matvec", MATVEC), ("rmsnorm", RMSNORM)] {
        v.push((
            format!("{name}+subgroup"),
            compose(src, Some(Reduce::Subgroup)),
        ));
        v.push((format!("{name}+shared"), compose(src, Some(Reduce::Shared))));
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
}

impl Shapes {
    pub fn for_device(caps: &DeviceCaps) -> Self {
        match caps.subgroup_size {
            Some(sg) if sg <= 64 => Shapes {
                reduce: Reduce::Subgroup,
                tpr: sg,
                // Several rows per workgroup; at least 64 invocations.
                matvec_wg: (sg * 8).clamp(64, 256),
                attn_wg: 64,
            },
            _ => Shapes {
                reduce: Reduce::Shared,
                tpr: 32,
                matvec_wg: 128,
                attn_wg: 64,
            },
        }
    }
}

/// All compute pipelines of the model graph.
pub struct Kernels {
    pub shapes: Shapes,
    /// Indexed by `WeightFormat::id()`.
    pub embed: Vec<wgpu::ComputePipeline>,
    pub matvec: Vec<wgpu::ComputePipeline>,
    pub matmul: Vec<wgpu::ComputePipeline>,
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

impl Kernels {
    pub fn new(gpu: &Gpu, shapes: Shapes) -> Result<Self> {
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let reduce = Some(shapes.reduce);
        let embed_m = module(gpu, "embed", EMBED);
        let matvec_m = module(gpu, "matvec", &compose(MATVEC, reduce));
        let matmul_m = module(gpu, "matmul", MATMUL);
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
        let formats = WeightFormat::FLOATS;
        let k = Kernels {
            embed: formats
                .iter()
                .map(|f| pipeline(gpu, &embed_m, "embed", &[("WFMT", f.id() as f64)]))
                .collect(),
            matvec: formats
                .iter()
                .map(|f| {
                    pipeline(
                        gpu,
                        &matvec_m,
                        "matvec",
                        &[
                            ("WFMT", f.id() as f64),
                            ("WG", shapes.matvec_wg as f64),
                            ("TPR", tpr),
                        ],
                    )
                })
                .collect(),
            matmul: formats
                .iter()
                .map(|f| pipeline(gpu, &matmul_m, "matmul", &[("WFMT", f.id() as f64)]))
                .collect(),
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
}
