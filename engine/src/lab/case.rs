//! The contract between the lab's runner and its kernel cases. The runner knows a case only through
//! these types: an id (what the report keys on), a way to build it (GPU buffers are allocated then, one
//! case at a time), and of the built [`Workload`] its cost, a [`Recording`] of N back-to-back calls, and
//! a validation against the CPU reference. How the calls are recorded (the engine's graph, kernels and
//! shapes) is [`super::cases`]'s business alone.

use super::check::Check;
use super::dims::ModelDims;
use super::runner::Mode;
use crate::error::Result;

/// What a case is: the report's `kernel`, `variant`, `shape` and `type` columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseId {
    pub kernel: String,
    /// "decode", "batch4 (blocks)", "matvec (blocks)", "matmul (tiled)", or "" for kernels with one form.
    pub variant: String,
    /// "896x4864", "ctx=1024 14/2 heads x 64", ...
    pub shape: String,
    /// Weight format or data type: "Q4_K", "F32", ...
    pub ty: String,
}

impl CaseId {
    /// "kernel variant shape type" (an empty variant left out), what `--filter` matches.
    pub fn key(&self) -> String {
        join_key(&[&self.kernel, &self.variant, &self.shape, &self.ty])
    }
}

/// The non-empty parts joined by single spaces.
pub fn join_key(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one call must cost at least: the roofline's coordinates.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Cost {
    /// Bytes read and written at least once (weights, inputs, outputs).
    pub bytes: f64,
    /// FLOPs (a multiply-add counts 2).
    pub flops: f64,
}

/// Commands that run `calls` calls of a case, recorded into an encoder the runner brackets with its
/// timestamps and submits.
pub trait Recording {
    fn record(&self, enc: &mut wgpu::CommandEncoder);
}

/// A built case: its inputs are on the GPU.
pub trait Workload {
    fn cost(&self) -> Cost;
    /// `calls` calls back to back (in one compute pass where the case allows). Also (re)writes any
    /// uniform the case needs, so the recording is ready to submit.
    fn repeated(&self, calls: usize) -> Result<Box<dyn Recording + '_>>;
    /// Read the outputs of the last run back and check them against the CPU reference.
    fn validate(&self) -> Check;
}

/// A case not built yet: listing cases allocates nothing, so filtered-out cases cost nothing.
pub struct CaseDef<'s> {
    pub id: CaseId,
    pub build: Box<dyn FnOnce() -> Result<Box<dyn Workload + 's>> + 's>,
}

/// A case the suite cannot run on this device or at these shapes, and why ("Q4_K: rows of 896
/// elements are not a multiple of its block of 256"); the report's notes.
pub struct Skipped {
    pub id: CaseId,
    pub reason: String,
}

/// A set of cases on one device.
pub trait Suite {
    /// The launch shapes the suite's kernels use, for the report header.
    fn kernel_shapes(&self) -> String;
    /// Milliseconds it took to build the compute pipelines.
    fn pipelines_ms(&self) -> f64;
    /// Every case of `mode` at the shapes `dims`, in table order, and those skipped.
    fn cases(&self, mode: Mode, dims: &ModelDims) -> (Vec<CaseDef<'_>>, Vec<Skipped>);
}
