//! The lab's report and its JSON form (schema `glint-lab/1`), written by `glint lab -o json` /
//! `--json-file` and read back by `--compare` and `--plot`.
//!
//! ```text
//! {
//!   "schema": "glint-lab/1", "glint_version": "0.1.0",
//!   "device": { "index", "name", "backend", "device_type", "driver", "driver_info", "vendor", "device",
//!               "subgroup_min_size", "subgroup_max_size", "features": [...], "max_storage_buffer_binding_size",
//!               "max_buffer_size", "max_storage_buffers_per_shader_stage", "max_compute_workgroup_storage_size",
//!               "max_compute_invocations_per_workgroup", "max_compute_workgroups_per_dimension",
//!               "fingerprint": "16 hex digits" },
//!   "machine": { "date_utc", "os", "cpus", "load_avg" }, "load_avg_end": [1, 5, 15 min] | null,
//!   "mode": "quick" | "thorough", "filter": "TEXT" | null,
//!   "dims": { "source", "hidden", "intermediate", "vocab", "n_valid", "n_heads", "n_kv_heads", "head_dim",
//!             "rope_theta", "rms_eps", "prefill" },
//!   "clock": { "kind": "gpu_timestamps" | "wall", "period_ns": f64 | null, "description" },
//!   "kernel_shapes": "the launch shapes in effect, as the engine prints them", "pipelines_ms": f64,
//!   "probes": {
//!     "copy":          { "bytes", "samples_ns": [every rep], "ns": median, "sd_ns" },
//!     "peak_flops":    { "flops", "workgroups", "workgroup_size", "iters", "samples_ns", "ns", "sd_ns" },
//!     "empty_bracket": { "samples_ns", "ns", "sd_ns" } },
//!   "notes": ["why a case was skipped", ...],
//!   "cases": [ { "kernel", "variant", "shape", "type", "launch": {NAME: u32} (absent: the device's defaults),
//!                "bytes", "flops", "first_run_ns", "calls_per_rep", "rep_ns": [every timed rep],
//!                "ns_per_call": median of rep_ns / calls_per_rep, "sd_ns",
//!                "check": { "ok", "worst": fraction of the tolerance | null, "error": text | null } } ],
//!   "interrupted": bool, "elapsed_s": f64,
//!   "sweep": (only with --sweep) { "default": {shapes}, "chosen": {shapes}, "margin": f64,
//!             "parameters": [ { "parameter", "default", "chosen", "note": text | null,
//!                               "candidates": [ { "value", "launch": {NAME: u32}, "cases", "total_ns",
//!                                                 "ok", "error": text | null } ] } ] }
//! }
//! ```
//!
//! Derived figures are not stored (one source of truth): GB/s = bytes / ns_per_call, GFLOP/s =
//! flops / ns_per_call, arithmetic intensity = flops / bytes, copy bandwidth = 2 x bytes / ns (read and
//! write), peak = flops / ns; the methods below compute them.

use super::device::DeviceReport;
use super::dims::ModelDims;
use super::runner::Mode;
use crate::bench::Machine;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The `schema` value of reports this version writes and reads.
pub const SCHEMA: &str = "glint-lab/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabReport {
    pub schema: String,
    pub glint_version: String,
    pub device: DeviceReport,
    /// The machine when the run started (date, CPUs, load).
    pub machine: Machine,
    /// The load average when the run ended.
    #[serde(default)]
    pub load_avg_end: Option<[f64; 3]>,
    pub mode: Mode,
    /// The `--filter` the run was given.
    #[serde(default)]
    pub filter: Option<String>,
    pub dims: ModelDims,
    pub clock: ClockReport,
    /// The launch shapes the kernels ran with, as the engine prints them.
    pub kernel_shapes: String,
    /// Time to build the compute pipelines.
    pub pipelines_ms: f64,
    pub probes: Probes,
    /// Why cases were skipped (a format without kernels, rows not a multiple of a block, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    pub cases: Vec<CaseReport>,
    /// Stopped by Ctrl-C: `cases` holds what was measured before.
    #[serde(default)]
    pub interrupted: bool,
    pub elapsed_s: f64,
    /// `--sweep`: the launch shapes tried per parameter and the ones chosen (the cases are the swept
    /// rows, each with its `launch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<super::sweep::SweepReport>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockKind {
    /// TIMESTAMP_QUERY: the GPU's own clock.
    GpuTimestamps,
    /// Wall clock from submit to the end of a blocking poll.
    Wall,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockReport {
    pub kind: ClockKind,
    /// Nanoseconds per timestamp tick.
    pub period_ns: Option<f64>,
    pub description: String,
}

/// Repeated measurements of one thing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// Every timed repetition, nanoseconds.
    pub samples_ns: Vec<f64>,
    /// Median of the samples.
    pub ns: f64,
    /// Sample standard deviation (0 for one sample).
    pub sd_ns: f64,
}

impl Samples {
    pub fn new(samples_ns: Vec<f64>) -> Self {
        let (ns, sd_ns) = median_sd(&samples_ns);
        Samples {
            samples_ns,
            ns,
            sd_ns,
        }
    }
}

/// The device's own ceilings, measured in the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probes {
    pub copy: CopyProbe,
    pub peak_flops: PeakProbe,
    /// The timing bracket alone (two empty passes), not subtracted from the cases.
    pub empty_bracket: Samples,
}

/// A buffer-to-buffer copy of `bytes` bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyProbe {
    pub bytes: u64,
    #[serde(flatten)]
    pub t: Samples,
}

impl CopyProbe {
    /// Read + write bytes per second, in GB/s (10^9).
    pub fn gb_s(&self) -> f64 {
        2.0 * self.bytes as f64 / self.t.ns
    }
}

/// The FMA-bound kernel of shaders/peak_flops.wgsl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakProbe {
    /// FLOPs of one run (an FMA counts 2).
    pub flops: f64,
    pub workgroups: u32,
    pub workgroup_size: u32,
    pub iters: u32,
    #[serde(flatten)]
    pub t: Samples,
}

impl PeakProbe {
    pub fn gflop_s(&self) -> f64 {
        self.flops / self.t.ns
    }
}

/// Outcome of the validation against the CPU reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub ok: bool,
    /// The worst error as a fraction of the tolerance (passed checks).
    pub worst: Option<f64>,
    /// The first output out of tolerance, or why the case could not run (failed checks).
    pub error: Option<String>,
}

impl CheckReport {
    pub fn from_result(r: &std::result::Result<f64, String>) -> Self {
        match r {
            Ok(w) => CheckReport {
                ok: true,
                worst: Some(*w),
                error: None,
            },
            Err(e) => CheckReport {
                ok: false,
                worst: None,
                error: Some(e.clone()),
            },
        }
    }

    /// "ok 0.02" or "FAIL: output 3: gpu ... vs reference ...".
    pub fn describe(&self) -> String {
        match (self.ok, self.worst, &self.error) {
            (true, Some(w), _) => format!("ok {w:.2}"),
            (true, None, _) => "ok".into(),
            (false, _, Some(e)) => format!("FAIL: {e}"),
            (false, _, None) => "FAIL".into(),
        }
    }
}

/// One case: what ran, what it costs, every timed repetition, and its validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    pub kernel: String,
    pub variant: String,
    pub shape: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The launch shapes this row ran with, when not the device's defaults (shape sweeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<BTreeMap<String, u32>>,
    /// Bytes a call must read and write at least once (weights, inputs, outputs).
    pub bytes: f64,
    /// FLOPs of a call (a multiply-add counts 2).
    pub flops: f64,
    /// The validated first run (cold: includes first-use costs), ns.
    pub first_run_ns: f64,
    /// Calls recorded back to back in each timed repetition.
    pub calls_per_rep: usize,
    /// Every timed repetition (each `calls_per_rep` calls), ns.
    pub rep_ns: Vec<f64>,
    /// Median of rep_ns / calls_per_rep.
    pub ns_per_call: f64,
    /// Standard deviation of the per-call time over the repetitions.
    pub sd_ns: f64,
    pub check: CheckReport,
}

impl CaseReport {
    /// "kernel variant shape type" (an empty variant left out; the launch shapes added when given): what `--filter` matches and what
    /// `--compare` lines cases up by.
    pub fn key(&self) -> String {
        let mut k = super::case::join_key(&[&self.kernel, &self.variant, &self.shape, &self.ty]);
        if let Some(l) = &self.launch {
            for (name, v) in l {
                k += &format!(" {name}={v}");
            }
        }
        k
    }

    /// The label of the case's point in a roofline: kernel, variant when it names another kernel
    /// (not "decode"), and weight type: "matvec Q8_0", "prefill matvec (blocks) F16".
    pub fn label(&self) -> String {
        match self.variant.as_str() {
            "" | "decode" => format!("{} {}", self.kernel, self.ty),
            v => format!("{} {v} {}", self.kernel, self.ty),
        }
    }

    pub fn gb_s(&self) -> f64 {
        self.bytes / self.ns_per_call
    }

    pub fn gflop_s(&self) -> f64 {
        self.flops / self.ns_per_call
    }

    /// Arithmetic intensity, FLOP per byte.
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes
    }
}

impl LabReport {
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.check.ok).count()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a lab report serialises")
    }

    /// Read a report written by `glint lab -o json` / `--json-file`; errors name the file and what
    /// is wrong in it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(Error::format(
                    path,
                    format!("field 'schema' is '{other}', expected '{SCHEMA}' (a `glint lab -o json` report)"),
                ))
            }
            None => {
                return Err(Error::format(
                    path,
                    format!("field 'schema' is missing: not a `glint lab -o json` report ('{SCHEMA}')"),
                ))
            }
        }
        serde_json::from_value(v)
            .map_err(|e| Error::format(path, format!("not a valid '{SCHEMA}' lab report: {e}")))
    }
}

/// Median and sample standard deviation (0 for fewer than two values; NaN median for none).
pub fn median_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (median, crate::bench::mean_sd(v).1)
}
