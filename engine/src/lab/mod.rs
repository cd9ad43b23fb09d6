//! The kernel lab (`glint lab`, and `cargo bench --bench kernels`, a thin caller of the same code), in
//! the style of llm.c's dev/cuda: every kernel family at a model's real shapes (Qwen2-0.5B's unless
//! told otherwise) is first VALIDATED against its plain-Rust reference ([`crate::reference`], with the
//! tolerances of tests/kernels.rs), then TIMED with the GPU's timestamps (the wall clock where the device
//! has none). The report keeps every repetition, names the device with a stable fingerprint, and carries
//! the device's measured copy bandwidth and peak FLOP/s, so that reports from different devices,
//! backends or drivers can be compared ([`compare`]) and drawn as rooflines ([`plot`]).
//!
//! ```no_run
//! use glint::lab::{run_lab, LabOptions, Mode};
//! let opts = LabOptions { mode: Mode::Quick, filter: Some("rmsnorm".into()), ..Default::default() };
//! let stop = std::sync::atomic::AtomicBool::new(false);
//! let report = run_lab(&opts, &stop, &mut |e| eprintln!("{}", e.line()))?;
//! print!("{}", glint::lab::markdown::report(&report));
//! # Ok::<(), glint::Error>(())
//! ```
//!
//! Module layout. Only [`cases`] knows the engine's graph and kernels; everything else sees a case
//! through the small contract of [`case`] (an id, a cost, "record N calls", "validate"):
//!
//! | module | what |
//! | --- | --- |
//! | [`case`] | the contract: [`case::Suite`], [`case::CaseDef`], [`case::Workload`], [`case::Recording`] |
//! | [`cases`] | the kernel cases, driven through `graph::Graph` as the model drives them |
//! | [`check`] | the validation tolerances (tests/kernels.rs's) |
//! | [`dims`] | the model shapes the cases run at: Qwen2-0.5B, or a model's config |
//! | [`device`] | the device block of a report and its fingerprint |
//! | [`timing`] | GPU timestamp (or wall-clock) timing of a recorded command buffer |
//! | [`probes`] | copy bandwidth, peak FLOP/s (shaders/peak_flops.wgsl), the empty timing bracket |
//! | [`runner`] | [`run_lab`]: filter, build, validate, time, progress events, Ctrl-C |
//! | [`report`] | [`LabReport`], the JSON schema (`glint-lab/1`), reading reports back |
//! | [`markdown`] | the report as a markdown header and table |
//! | [`compare`] | one table of the same cases across reports, with ratios to the first |
//! | [`plot`] | roofline charts (SVG or PNG), one colour per report (feature `plot`) |
//!
//! Shape sweeps (`--sweep`) are to come: a swept row is the same case with a [`report::CaseReport::launch`]
//! map of the launch shapes it ran with, and the report key includes it, so the JSON, compare and plot
//! need no change for it.

pub mod case;
pub mod cases;
pub mod check;
pub mod compare;
pub mod device;
pub mod dims;
pub mod markdown;
#[cfg(feature = "plot")]
pub mod plot;
pub mod probes;
pub mod report;
pub mod runner;
pub mod sweep;
pub mod timing;

pub use dims::ModelDims;
pub use report::{CaseReport, LabReport};
pub use runner::{run_lab, Event, LabOptions, Mode};
pub use sweep::run_sweep;

/// Every WGSL module the lab builds itself (its probes), by name, for the naga validation test.
pub fn shader_modules() -> Vec<(String, String)> {
    vec![("peak_flops".to_string(), probes::PEAK_FLOPS.to_string())]
}
