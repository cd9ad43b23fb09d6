//! [`run_lab`]: open the device, measure its ceilings ([`super::probes`]), then for every case that
//! matches the filter: build it, run it once and validate that run against the CPU reference, then time
//! it.
//!
//! - Quick mode: each case runs once and the validated (cold) run is its time; the suite uses smaller
//!   prefill and attention shapes ([`super::cases`]). For CI: it checks that every kernel still
//!   validates on the device, quickly.
//! - Thorough mode: after the validated run, a warm run calibrates N so that a repetition of N calls
//!   recorded back to back lasts about 50 ms (at most 500 calls); one warm-up repetition, then 5 timed
//!   ones, time per call = median of rep time / N. Cases slower than 0.5 s a call (prefill on a software
//!   rasteriser) are timed as single calls, as many repetitions as fit in about 2 s (1 to 5).
//!
//! A case that cannot be built or run (a buffer over the device's limits, a GPU error) is reported as
//! failed with the reason, and the run goes on. The `stop` flag (Ctrl-C) is read between repetitions
//! and between cases: the report then holds what was measured and says it was interrupted.

use super::case::{CaseDef, CaseId, Workload};
use super::device::DeviceReport;
use super::dims::ModelDims;
use super::markdown::fmt_time;
use super::report::{median_sd, CaseReport, CheckReport, LabReport, Probes, SCHEMA};
use super::timing::Timer;
use super::{cases, probes};
use crate::bench::{load_average, Machine};
use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each case once, at reduced prefill and attention shapes; the validated run is the time.
    Quick,
    /// Calibrated repetitions, median per call.
    #[default]
    Thorough,
}

impl Mode {
    /// "quick" or "thorough", as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Thorough => "thorough",
        }
    }

    /// The header's line on how cases are timed.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::Quick => {
                "quick: each case run once (prefill at 32 tokens, attention at ctx 64 and 256), the validated \
                 run timed (cold: includes first-use costs)"
            }
            Mode::Thorough => {
                "thorough: per case N calls back to back (~50 ms a rep), 1 warm-up + 5 timed reps, median \
                 per call (cases over 0.5 s: single calls, reps within ~2 s)"
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    pub gpu: GpuOptions,
    pub mode: Mode,
    /// Only cases whose "kernel variant shape type" contains this text.
    pub filter: Option<String>,
    pub dims: ModelDims,
}

/// What the lab reports while it runs (the CLI prints [`Event::line`] on stderr).
pub enum Event<'a> {
    /// The device is open.
    Device(&'a DeviceReport),
    /// A probe was measured: its summary.
    Probe(String),
    /// Cases that match the filter, known before any is built.
    Cases(usize),
    /// A case is skipped, and why (once per reason).
    Note(&'a str),
    /// Case `index` of `total` (0-based) was measured.
    Case {
        index: usize,
        total: usize,
        case: &'a CaseReport,
    },
    /// A step of a sweep (a candidate started, a parameter chosen).
    Sweep(String),
    /// Stopped by the stop flag after `done` of `total` cases.
    Interrupted { done: usize, total: usize },
}

impl Event<'_> {
    /// One line for stderr, prefixed "glint lab: ".
    pub fn line(&self) -> String {
        let body = match self {
            Event::Device(d) => format!("{} (fingerprint {})", d.describe(), d.fingerprint),
            Event::Probe(s) => s.clone(),
            Event::Cases(n) => format!("{n} cases"),
            Event::Note(s) => format!("note: {s}"),
            Event::Sweep(s) => format!("sweep {s}"),
            Event::Case { index, total, case } => {
                let width = total.to_string().len();
                let timing = if case.rep_ns.is_empty() {
                    "not timed".to_string()
                } else {
                    format!(
                        "{}/call ({}x{}), {:.2} GB/s",
                        fmt_time(case.ns_per_call),
                        case.calls_per_rep,
                        case.rep_ns.len(),
                        case.gb_s()
                    )
                };
                format!(
                    "[{:>width$}/{total}] {}: {timing}, {}",
                    index + 1,
                    case.key(),
                    case.check.describe()
                )
            }
            Event::Interrupted { done, total } => {
                format!("interrupted: {done} of {total} cases measured")
            }
        };
        format!("glint lab: {body}")
    }
}

pub(super) fn wanted(filter: Option<&str>, id: &CaseId) -> bool {
    filter.is_none_or(|f| id.key().contains(f))
}

/// Run the lab. `stop` is polled between repetitions (Ctrl-C); `progress` sees every step.
pub fn run_lab(
    opts: &LabOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<LabReport> {
    let t_start = Instant::now();
    let machine = Machine::capture();
    let gpu = Gpu::new(&opts.gpu)?;
    let device = DeviceReport::of(&gpu, opts.gpu.adapter.unwrap_or(0));
    progress(Event::Device(&device));
    let timer = Timer::new(&gpu);
    let suite = cases::suite(&gpu, &opts.dims)?;

    let probes = probe_all(&gpu, &timer, opts.mode, progress)?;

    let filter = opts.filter.as_deref();
    let (defs, skipped) = suite.cases(opts.mode, &opts.dims);
    let mut notes: Vec<String> = Vec::new();
    for s in skipped.iter().filter(|s| wanted(filter, &s.id)) {
        if !notes.contains(&s.reason) {
            progress(Event::Note(&s.reason));
            notes.push(s.reason.clone());
        }
    }
    let defs: Vec<CaseDef> = defs.into_iter().filter(|d| wanted(filter, &d.id)).collect();
    let total = defs.len();
    progress(Event::Cases(total));
    let mut cases = Vec::with_capacity(total);
    let mut interrupted = false;
    for (index, def) in defs.into_iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let (case, cut) = measure(def, &timer, opts.mode, stop);
        progress(Event::Case {
            index,
            total,
            case: &case,
        });
        cases.push(case);
        if cut {
            interrupted = true;
            break;
        }
    }
    if interrupted {
        progress(Event::Interrupted {
            done: cases.len(),
            total,
        });
    }
    Ok(LabReport {
        schema: SCHEMA.to_string(),
        glint_version: env!("CARGO_PKG_VERSION").to_string(),
        device,
        machine,
        load_avg_end: load_average(),
        mode: opts.mode,
        filter: opts.filter.clone(),
        dims: opts.dims.clone(),
        clock: timer.report(),
        kernel_shapes: suite.kernel_shapes(),
        pipelines_ms: suite.pipelines_ms(),
        probes,
        notes,
        cases,
        interrupted,
        elapsed_s: t_start.elapsed().as_secs_f64(),
        sweep: None,
    })
}

/// The device's ceilings: copy bandwidth, peak FLOP/s, the empty timing bracket.
pub(super) fn probe_all(
    gpu: &Gpu,
    timer: &Timer,
    mode: Mode,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Probes> {
    let quick = mode == Mode::Quick;
    let reps = if quick { 3 } else { 5 };
    let copy = probes::copy(gpu, timer, reps)?;
    progress(Event::Probe(format!(
        "copy bandwidth {:.2} GB/s",
        copy.gb_s()
    )));
    let peak_flops = probes::peak_flops(gpu, timer, reps, if quick { 20e6 } else { 100e6 })?;
    progress(Event::Probe(format!(
        "peak {:.2} GFLOP/s",
        peak_flops.gflop_s()
    )));
    let empty_bracket = probes::empty_bracket(timer, reps)?;
    Ok(Probes {
        copy,
        peak_flops,
        empty_bracket,
    })
}

/// The measurements of one case, before they become a report row.
struct Timed {
    first: f64,
    calls: usize,
    rep_ns: Vec<f64>,
    cut: bool,
}

/// Build, validate and time one case; a case that cannot be built or run is a failed row. The flag:
/// the stop flag cut its repetitions short.
pub(super) fn measure(
    def: CaseDef<'_>,
    timer: &Timer,
    mode: Mode,
    stop: &AtomicBool,
) -> (CaseReport, bool) {
    let CaseDef { id, build } = def;
    let mut row = CaseReport {
        kernel: id.kernel,
        variant: id.variant,
        shape: id.shape,
        ty: id.ty,
        launch: None,
        bytes: 0.0,
        flops: 0.0,
        first_run_ns: 0.0,
        calls_per_rep: 0,
        rep_ns: vec![],
        ns_per_call: 0.0,
        sd_ns: 0.0,
        check: CheckReport::from_result(&Err("not run".into())),
    };
    let work = match build() {
        Ok(w) => w,
        Err(e) => {
            row.check = CheckReport::from_result(&Err(format!("could not build the case: {e}")));
            return (row, false);
        }
    };
    let cost = work.cost();
    row.bytes = cost.bytes;
    row.flops = cost.flops;
    let mut check = Err("not validated".to_string());
    match time_case(work.as_ref(), timer, mode, stop, &mut check) {
        Ok(t) => {
            let per_call: Vec<f64> = t.rep_ns.iter().map(|r| r / t.calls as f64).collect();
            let (median, sd) = median_sd(&per_call);
            row.first_run_ns = t.first;
            row.calls_per_rep = t.calls;
            row.rep_ns = t.rep_ns;
            row.ns_per_call = median;
            row.sd_ns = sd;
            row.check = CheckReport::from_result(&check);
            (row, t.cut)
        }
        Err(e) => {
            row.check = CheckReport::from_result(&Err(format!("could not run the case: {e}")));
            (row, false)
        }
    }
}

fn time_case(
    work: &dyn Workload,
    timer: &Timer,
    mode: Mode,
    stop: &AtomicBool,
    check: &mut super::check::Check,
) -> Result<Timed> {
    let single = work.repeated(1)?;
    let time = |rec: &dyn super::case::Recording| timer.time(&|enc| rec.record(enc));
    let first = time(single.as_ref())?;
    *check = work.validate();
    let stopped = || stop.load(Ordering::Relaxed);
    // Timed repetitions until `n` are done or the stop flag is set.
    let reps = |n: usize, rec: &dyn super::case::Recording| -> Result<Vec<f64>> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n && !stopped() {
            v.push(time(rec)?);
        }
        Ok(v)
    };
    let (calls, rep_ns) = if mode == Mode::Quick {
        (1, vec![first])
    } else if first > 0.5e9 {
        // A slow case: the validated run was the warm-up; single calls within a ~2 s budget.
        let n = ((2e9 / first) as usize).clamp(1, 5);
        (1, reps(n, single.as_ref())?)
    } else {
        let warm = time(single.as_ref())?;
        let calls = ((50e6 / warm.max(1.0)).ceil() as usize).clamp(1, 500);
        let plan = work.repeated(calls)?;
        time(plan.as_ref())?; // warm-up
        (calls, reps(5, plan.as_ref())?)
    };
    let cut = stopped() && mode != Mode::Quick;
    // Stopped before any timed repetition: the validated run stands in.
    let (calls, rep_ns) = if rep_ns.is_empty() {
        (1, vec![first])
    } else {
        (calls, rep_ns)
    };
    Ok(Timed {
        first,
        calls,
        rep_ns,
        cut,
    })
}
