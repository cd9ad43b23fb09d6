//! `glint lab --sweep`: for each kernel family, its overridable launch shapes ([`Shapes`]) tried on the
//! lab's own cases ([`super::cases`], built on kernels of each candidate's shapes), each candidate's
//! cases validated against the CPU reference and timed as the lab times them; the fastest valid
//! candidate is kept.
//!
//! Parameters are swept one at a time, in this order, each from the choices made before it (a
//! coordinate descent, not the product of every value: about 25 candidates in all):
//!
//! | parameter | candidates | cases it is timed on |
//! | --- | --- | --- |
//! | reduce, tpr | subgroup (tpr = the fixed subgroup size), shared with tpr 8..64 (rows per workgroup kept) | fused decode linears but the LM head, rmsnorm |
//! | rows per matvec workgroup (matvec_wg / tpr) | 2, 4, 8, 16, 32 | fused decode linears but the LM head |
//! | lane_rows | 1, 2, 4, 8, 16, 32 (those that divide the rows per workgroup) | fused decode linears but the LM head |
//! | block_tokens | 2, 4, 8 | batched decode, prefill matvec over blocks |
//! | tiled_from | none (prefill on the matvec over blocks), from block_tokens + 1 (tiled matmul) | prefill, through the kernel each candidate picks |
//! | attn_wg | 64, 128, 256 (at least head_dim) | decode attention, whole |
//! | attn_split_keys | 128 .. 8192 | decode attention, with the split each candidate picks |
//!
//! Only candidates that [`Shapes::check`] accepts on the device are tried. A candidate is valid when
//! every one of its cases validates; its time is the sum of its cases' times. The current value stays
//! unless a valid candidate is faster by more than [`MARGIN`] (timing noise must not pick a shape);
//! attn_split_keys values that split the cases' contexts as the current value does are not timed.
//! Every candidate's cases are timed as the lab's thorough mode times them (calibrated repetitions,
//! median per call), also with `--quick`, which selects the quick mode's smaller cases (prefill at 32
//! tokens, attention at ctx 64 and 256): a cold single run is too noisy to choose by. The sweep's
//! prefill runs at 64 tokens at most, to bound its time; `--filter` narrows every parameter's cases
//! (a parameter none of whose cases match is not swept).

use super::case::CaseId;
use super::device::DeviceReport;
use super::dims::ModelDims;
use super::report::{CaseReport, LabReport, SCHEMA};
use super::runner::{measure, probe_all, wanted, Event, LabOptions, Mode};
use super::timing::Timer;
use crate::bench::{load_average, Machine};
use crate::error::Result;
use crate::gpu::{DeviceCaps, Gpu};
use crate::kernels::{Reduce, Shapes};
use crate::tune::{ParamChoice, TuneDevice, TuneFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A candidate replaces the current value only when faster by more than this fraction.
/// (Identical kernels timed twice on lavapipe, on a loaded 2-core machine, differed by up to 6%.)
pub const MARGIN: f64 = 0.05;

/// Prefill tokens of the sweep's prefill cases, at most.
const SWEEP_PREFILL: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// The device's defaults ([`Shapes::for_device`], attn_wg raised to the head dim as the engine does).
    pub default: Shapes,
    /// The shapes chosen (what `--tune-out` saves).
    pub chosen: Shapes,
    pub margin: f64,
    pub parameters: Vec<ParamSweep>,
}

/// One parameter: its candidates, the value it had before (`default`) and the one chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSweep {
    pub parameter: String,
    pub default: String,
    pub chosen: String,
    /// Why the parameter was not swept, or why the chosen value is what it is when that is not the
    /// fastest valid candidate.
    pub note: Option<String>,
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub value: String,
    pub launch: BTreeMap<String, u32>,
    pub cases: usize,
    /// Sum of the cases' median times per call.
    pub total_ns: f64,
    /// Every case validated.
    pub ok: bool,
    /// The first failed case and why.
    pub error: Option<String>,
}

impl ParamSweep {
    fn candidate(&self, value: &str) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.value == value)
    }
    /// Time of the default value's cases.
    pub fn default_ns(&self) -> Option<f64> {
        self.candidate(&self.default).map(|c| c.total_ns)
    }
    /// Time of the chosen value's cases.
    pub fn chosen_ns(&self) -> Option<f64> {
        self.candidate(&self.chosen).map(|c| c.total_ns)
    }
    /// default time / chosen time (1 when nothing changed).
    pub fn speedup(&self) -> Option<f64> {
        Some(self.default_ns()? / self.chosen_ns()?)
    }
}

impl SweepReport {
    /// The tuning file of this sweep (`glint lab --sweep --tune-out FILE`).
    pub fn tune_file(&self, report: &LabReport) -> TuneFile {
        let d = &report.device;
        TuneFile {
            schema: crate::tune::SCHEMA.to_string(),
            glint_version: env!("CARGO_PKG_VERSION").to_string(),
            created_utc: report.machine.date_utc.clone(),
            device: TuneDevice {
                fingerprint: d.fingerprint.clone(),
                name: d.adapter.name.clone(),
                backend: d.adapter.backend.clone(),
                driver: d.driver(),
            },
            mode: report.mode.name().to_string(),
            filter: report.filter.clone(),
            dims: report.dims.describe(),
            shapes: self.chosen.clone(),
            sweep: self
                .parameters
                .iter()
                .filter_map(|p| {
                    Some(ParamChoice {
                        parameter: p.parameter.clone(),
                        default: p.default.clone(),
                        chosen: p.chosen.clone(),
                        default_ns: p.default_ns()?,
                        chosen_ns: p.chosen_ns()?,
                        cases: p.candidate(&p.chosen)?.cases,
                    })
                })
                .collect(),
        }
    }
}

/// The swept parameters, in sweep order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Param {
    Reduce,
    RowsPerWg,
    LaneRows,
    BlockTokens,
    TiledFrom,
    AttnWg,
    AttnSplitKeys,
}

const PARAMS: [Param; 7] = [
    Param::Reduce,
    Param::RowsPerWg,
    Param::LaneRows,
    Param::BlockTokens,
    Param::TiledFrom,
    Param::AttnWg,
    Param::AttnSplitKeys,
];

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::Reduce => "reduce, tpr",
            Param::RowsPerWg => "matvec rows per workgroup",
            Param::LaneRows => "lane_rows",
            Param::BlockTokens => "block_tokens",
            Param::TiledFrom => "tiled_from",
            Param::AttnWg => "attn_wg",
            Param::AttnSplitKeys => "attn_split_keys",
        }
    }

    /// The parameter's value in `s`, as the report prints it.
    fn value(self, s: &Shapes) -> String {
        match self {
            Param::Reduce => {
                let r = match s.reduce {
                    Reduce::Subgroup => "subgroup",
                    Reduce::Shared => "shared",
                };
                format!("{r} tpr={}", s.tpr)
            }
            Param::RowsPerWg => format!("{} (matvec_wg={})", s.rows_per_wg(), s.matvec_wg),
            Param::LaneRows => s.lane_rows.to_string(),
            Param::BlockTokens => s.block_tokens.to_string(),
            Param::TiledFrom => match s.tiled_from {
                None => "none".into(),
                Some(t) => format!("from {t} tokens"),
            },
            Param::AttnWg => s.attn_wg.to_string(),
            Param::AttnSplitKeys => s.attn_split_keys.to_string(),
        }
    }

    /// The launch shapes a row of this parameter's sweep records (its `launch` map).
    fn launch(self, s: &Shapes) -> BTreeMap<String, u32> {
        let pairs: Vec<(&str, u32)> = match self {
            Param::Reduce => vec![
                ("subgroup", (s.reduce == Reduce::Subgroup) as u32),
                ("tpr", s.tpr),
                ("matvec_wg", s.matvec_wg),
            ],
            Param::RowsPerWg => vec![("matvec_wg", s.matvec_wg), ("tpr", s.tpr)],
            Param::LaneRows => vec![("lane_rows", s.lane_rows)],
            Param::BlockTokens => vec![("block_tokens", s.block_tokens)],
            // 0: no tiled matmul.
            Param::TiledFrom => vec![("tiled_from", s.tiled_from.unwrap_or(0))],
            Param::AttnWg => vec![("attn_wg", s.attn_wg)],
            Param::AttnSplitKeys => vec![("attn_split_keys", s.attn_split_keys)],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// `cur` first, then the other values this device can run.
    fn candidates(self, cur: &Shapes, caps: &DeviceCaps, head_dim: usize) -> Vec<Shapes> {
        let with = |f: &dyn Fn(&mut Shapes)| {
            let mut s = cur.clone();
            f(&mut s);
            s
        };
        let rows = cur.rows_per_wg();
        let mut v: Vec<Shapes> = match self {
            Param::Reduce => {
                let mut v = vec![];
                if let Some(sg) = caps.subgroup_size {
                    v.push(with(&|s| {
                        s.reduce = Reduce::Subgroup;
                        s.tpr = sg;
                        s.matvec_wg = sg * rows;
                    }));
                }
                for tpr in [8, 16, 32, 64] {
                    v.push(with(&|s| {
                        s.reduce = Reduce::Shared;
                        s.tpr = tpr;
                        s.matvec_wg = tpr * rows;
                    }));
                }
                v
            }
            Param::RowsPerWg => [2, 4, 8, 16, 32]
                .iter()
                .map(|&r| with(&|s| s.matvec_wg = s.tpr * r))
                .collect(),
            Param::LaneRows => crate::kernels::LANE_ROWS
                .iter()
                .map(|&l| with(&|s| s.lane_rows = l))
                .collect(),
            Param::BlockTokens => [2, 4, 8]
                .iter()
                .map(|&b| {
                    with(&|s| {
                        s.block_tokens = b;
                        s.tiled_from = s.tiled_from.map(|_| b + 1);
                    })
                })
                .collect(),
            Param::TiledFrom => vec![
                with(&|s| s.tiled_from = None),
                with(&|s| s.tiled_from = Some(s.block_tokens + 1)),
            ],
            Param::AttnWg => [64, 128, 256]
                .iter()
                .map(|&w| with(&|s| s.attn_wg = w))
                .filter(|s| s.attn_wg as usize >= head_dim)
                .collect(),
            Param::AttnSplitKeys => [128, 256, 512, 1024, 2048, 8192]
                .iter()
                .map(|&k| with(&|s| s.attn_split_keys = k))
                .collect(),
        };
        v.retain(|s| s.check(caps).is_ok());
        let mut out = vec![cur.clone()];
        for s in v {
            if !out.iter().any(|o| self.value(o) == self.value(&s)) {
                out.push(s);
            }
        }
        out
    }

    /// Whether a case of the suite built on `cand` times this parameter.
    fn times(self, cand: &Shapes, id: &CaseId) -> bool {
        let (k, v) = (id.kernel.as_str(), id.variant.as_str());
        // The LM head runs the same matvec as the other linears, but its weights take seconds to
        // build for every candidate, and its single slow calls are the noisiest of the sum.
        let decode_linear = k == "fused" && !v.starts_with("lm_head");
        match self {
            Param::Reduce => decode_linear || k == "rmsnorm",
            Param::RowsPerWg | Param::LaneRows => decode_linear,
            Param::BlockTokens => {
                (k == "matvec" && v == "batch4 (blocks)")
                    || (k == "prefill" && v == "matvec (blocks)")
            }
            Param::TiledFrom => {
                k == "prefill"
                    && v == match cand.tiled_from {
                        None => "matvec (blocks)",
                        Some(_) => "matmul (tiled)",
                    }
            }
            Param::AttnWg => k == "attention" && v == "decode",
            Param::AttnSplitKeys => {
                // "ctx=256 14/2 heads x 64": the variant the engine runs there with these shapes.
                let ctx: Option<u32> = id
                    .shape
                    .strip_prefix("ctx=")
                    .and_then(|s| s.split(' ').next())
                    .and_then(|s| s.parse().ok());
                match (k, ctx) {
                    ("attention", Some(ctx)) => {
                        v == match cand.kv_splits(&[[0, ctx - 1]]) {
                            1 => "decode".to_string(),
                            n => format!("decode split-K x{n}"),
                        }
                    }
                    _ => false,
                }
            }
        }
    }
}

/// Run the sweep: the report holds every swept row (with its `launch`) and, in `sweep`, the
/// candidates per parameter and the shapes chosen.
pub fn run_sweep(
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
    let probes = probe_all(&gpu, &timer, opts.mode, progress)?;
    let mut dims = opts.dims.clone();
    dims.prefill = dims.prefill.min(SWEEP_PREFILL);

    let mut default = Shapes::for_device(&gpu.caps);
    default.attn_wg = default
        .attn_wg
        .max(dims.head_dim.next_power_of_two() as u32);
    let mut cur = default.clone();
    let mut rows: Vec<CaseReport> = vec![];
    let mut params: Vec<ParamSweep> = vec![];
    let mut interrupted = false;
    let mut kernel_shapes = String::new();
    let mut pipelines_ms = 0.0;
    'params: for param in PARAMS {
        let cands = param.candidates(&cur, &gpu.caps, dims.head_dim);
        let mut sweep = ParamSweep {
            parameter: param.name().to_string(),
            default: param.value(&cur),
            chosen: param.value(&cur),
            note: None,
            candidates: vec![],
        };
        let mut first_keys: Vec<String> = vec![];
        let mut same: Vec<String> = vec![];
        for (ci, cand) in cands.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let suite = super::cases::suite_with(&gpu, &dims, cand.clone())?;
            if kernel_shapes.is_empty() {
                kernel_shapes = suite.kernel_shapes();
            }
            pipelines_ms += suite.pipelines_ms();
            let (defs, _) = suite.cases(opts.mode, &dims);
            let defs: Vec<_> = defs
                .into_iter()
                .filter(|d| param.times(cand, &d.id) && wanted(opts.filter.as_deref(), &d.id))
                .collect();
            // attn_split_keys values that split the cases' contexts as the current value does run
            // the same kernels: timing them again would only measure noise.
            let keys: Vec<String> = defs.iter().map(|d| d.id.key()).collect();
            if ci == 0 {
                first_keys = keys;
            } else if param == Param::AttnSplitKeys && keys == first_keys {
                same.push(param.value(cand));
                continue;
            }
            if defs.is_empty() {
                if ci == 0 {
                    sweep.note = Some("no case matches: not swept".into());
                    break;
                }
                continue;
            }
            let value = param.value(cand);
            progress(Event::Sweep(format!(
                "{} = {value} (candidate {}/{}): {} cases",
                param.name(),
                ci + 1,
                cands.len(),
                defs.len()
            )));
            let launch = param.launch(cand);
            let total = defs.len();
            let mut c = Candidate {
                value,
                launch: launch.clone(),
                cases: 0,
                total_ns: 0.0,
                ok: true,
                error: None,
            };
            for (index, def) in defs.into_iter().enumerate() {
                // Always calibrated repetitions: a cold single run (quick mode's) is too noisy to
                // choose by.
                let (mut row, cut) = measure(def, &timer, Mode::Thorough, stop);
                row.launch = Some(launch.clone());
                progress(Event::Case {
                    index,
                    total,
                    case: &row,
                });
                c.cases += 1;
                c.total_ns += row.ns_per_call;
                if !row.check.ok && c.ok {
                    c.ok = false;
                    c.error = Some(format!("{}: {}", row.key(), row.check.describe()));
                }
                rows.push(row);
                if cut {
                    interrupted = true;
                }
            }
            if c.cases < total || interrupted {
                // A candidate cut short is not comparable.
                c.ok = false;
                c.error = Some("interrupted".into());
            }
            sweep.candidates.push(c);
            if interrupted {
                break;
            }
        }
        if !same.is_empty() {
            sweep.note = Some(format!(
                "not timed, as they split these contexts as {} does: {}",
                sweep.default,
                same.join(", ")
            ));
        }
        if let Some(i) = choose(&sweep.candidates) {
            let chosen = &cands
                .iter()
                .find(|s| param.value(s) == sweep.candidates[i].value)
                .expect("a candidate's shapes");
            sweep.chosen = sweep.candidates[i].value.clone();
            if sweep.chosen != sweep.default {
                cur = (*chosen).clone();
            }
        } else if !sweep.candidates.is_empty() {
            sweep.note = Some("no candidate validated: the value is kept".into());
        }
        let line = match (sweep.speedup(), &sweep.note) {
            (None, Some(n)) => format!("{}: {n}", param.name()),
            (Some(x), Some(n)) => format!(
                "{}: {} -> {} ({x:.2}x; {n})",
                param.name(),
                sweep.default,
                sweep.chosen
            ),
            (Some(x), None) => format!(
                "{}: {} -> {} ({x:.2}x)",
                param.name(),
                sweep.default,
                sweep.chosen
            ),
            (None, None) => format!("{}: {}", param.name(), sweep.chosen),
        };
        progress(Event::Sweep(line));
        params.push(sweep);
        if interrupted {
            break 'params;
        }
    }
    if interrupted {
        progress(Event::Interrupted {
            done: rows.len(),
            total: rows.len(),
        });
    }
    let mut dims_report: ModelDims = dims;
    dims_report.source = opts.dims.source.clone();
    Ok(LabReport {
        schema: SCHEMA.to_string(),
        glint_version: env!("CARGO_PKG_VERSION").to_string(),
        device,
        machine,
        load_avg_end: load_average(),
        mode: opts.mode,
        filter: opts.filter.clone(),
        dims: dims_report,
        clock: timer.report(),
        kernel_shapes,
        pipelines_ms,
        probes,
        notes: vec![],
        cases: rows,
        interrupted,
        elapsed_s: t_start.elapsed().as_secs_f64(),
        sweep: Some(SweepReport {
            default,
            chosen: cur,
            margin: MARGIN,
            parameters: params,
        }),
    })
}

/// The candidate to keep: the first (the current value) unless a valid one is faster by more than
/// [`MARGIN`]; the fastest valid one when the first is not valid; `None` when none is.
fn choose(c: &[Candidate]) -> Option<usize> {
    let best = c
        .iter()
        .enumerate()
        .filter(|(_, c)| c.ok)
        .min_by(|a, b| a.1.total_ns.total_cmp(&b.1.total_ns))?
        .0;
    match c.first() {
        Some(first) if first.ok && c[best].total_ns >= first.total_ns * (1.0 - MARGIN) => Some(0),
        _ => Some(best),
    }
}

/// The sweep as a markdown table: per parameter, the default and chosen values with their times.
pub fn markdown(s: &SweepReport) -> String {
    use super::markdown::{fmt_time, table};
    let rows: Vec<Vec<String>> = s
        .parameters
        .iter()
        .map(|p| {
            let t = |ns: Option<f64>| ns.map_or("-".to_string(), fmt_time);
            let tried = p
                .candidates
                .iter()
                .map(|c| {
                    let ok = if c.ok {
                        fmt_time(c.total_ns)
                    } else {
                        "FAIL".into()
                    };
                    format!("{}: {ok}", c.value)
                })
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                p.parameter.clone(),
                p.candidates.first().map_or(0, |c| c.cases).to_string(),
                p.default.clone(),
                p.chosen.clone(),
                t(p.default_ns()),
                t(p.chosen_ns()),
                p.speedup().map_or("-".into(), |x| format!("{x:.2}x")),
                match &p.note {
                    Some(n) => format!("{n}. {tried}"),
                    None => tried,
                },
            ]
        })
        .collect();
    let mut out = format!(
        "Sweep: one parameter at a time, each from the choices before it; a value replaces the \
         current one when its cases are valid and faster by more than {:.0}%.\n\n",
        s.margin * 100.0
    );
    out += &table(
        &[
            "parameter",
            "cases",
            "default",
            "chosen",
            "default time",
            "chosen time",
            "speedup",
            "candidates (sum of case times)",
        ],
        &[false, true, false, false, true, true, true, false],
        &rows,
    );
    out += &format!(
        "\nDefault shapes: {:?}\nChosen shapes:  {:?}\n",
        s.default, s.chosen
    );
    out
}
