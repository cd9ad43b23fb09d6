//! `glint lab`: the kernel lab. Every kernel validated against its CPU reference, then timed; reports
//! compared across devices and drawn as rooflines. The lab lives in `glint::lab`; this file parses
//! flags, prints progress and the report, and turns Ctrl-C into "stop and print what was measured".

use clap::{Args, ValueEnum};
use glint::lab::{self, LabOptions, LabReport, Mode, ModelDims};
use glint::Error;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A header naming the device, clock and measured ceilings, then one table row per case.
    Md,
    /// The whole report as JSON (schema glint-lab/1), every repetition included.
    Json,
}

#[derive(Args)]
pub struct LabArgs {
    /// Only the cases whose "kernel variant shape type" contains TEXT (with --compare: only those rows).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Each case once, at reduced prefill and attention shapes: checks that every kernel validates
    /// (CI), times are of cold runs.
    #[arg(long)]
    quick: bool,
    /// Take the shapes from this model's configuration: a model directory (config.json), a GGUF file
    /// (its metadata) or a Hugging Face repo id. No weights are loaded. Default: Qwen2-0.5B's shapes.
    #[arg(short = 'm', long, value_name = "PATH|REPO")]
    model: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Md)]
    output: Output,
    /// Also write the JSON report to this file (for --compare and --plot later).
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// Compare saved reports (written by -o json or --json-file) instead of running the lab: one table
    /// of their cases, with each report's time and its ratio to the first.
    #[arg(
        long,
        num_args = 1..,
        value_name = "REPORT.json",
        conflicts_with_all = ["quick", "model", "json_file", "backend", "adapter"]
    )]
    compare: Vec<PathBuf>,
    /// Sweep the kernels' launch shapes instead of timing the defaults: per kernel family, each
    /// parameter's values that the device can run, validated and timed on that family's cases; the
    /// fastest valid value is kept (one parameter at a time; --filter and --quick apply).
    #[arg(long, conflicts_with = "compare")]
    sweep: bool,
    /// With --sweep: save the chosen shapes, for this device, as a tuning file (glint-tune/1) that
    /// `glint run/bench/chat --tune FILE` load. Save it as $GLINT_TUNE_DIR or ~/.cache/glint/tune +
    /// /<fingerprint>.json to have it loaded by default on this device.
    #[arg(long, value_name = "FILE", requires = "sweep")]
    tune_out: Option<PathBuf>,
    /// Draw a roofline chart, SVG or PNG by the file's extension: of this run, or of the --compare
    /// reports, one colour per report.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    gpu: crate::GpuArgs,
}

pub fn lab(a: LabArgs) -> glint::Result<()> {
    if let Some(p) = &a.plot {
        check_plot_path(p)?;
    }
    if !a.compare.is_empty() {
        return compare(&a);
    }
    let dims = match &a.model {
        None => ModelDims::qwen2_0_5b(),
        Some(m) => {
            let path = glint::hub::resolve_model(m, true)?;
            ModelDims::from_model_path(&path)?
        }
    };
    let opts = LabOptions {
        gpu: a.gpu.options()?,
        mode: if a.quick { Mode::Quick } else { Mode::Thorough },
        filter: a.filter.clone(),
        dims,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nglint lab: interrupted again, quitting without a report");
            std::process::exit(130);
        }
        eprintln!(
            "\nglint lab: Ctrl-C: stopping after the current measurement and printing what was measured \
             (Ctrl-C again to quit now)"
        );
    })
    .map_err(|e| Error::Input(format!("cannot handle Ctrl-C: {e}")))?;
    eprintln!("glint lab: model shapes {}", opts.dims.describe());
    let mut progress = |e: lab::Event<'_>| eprintln!("{}", e.line());
    let report = if a.sweep {
        lab::run_sweep(&opts, &stop, &mut progress)?
    } else {
        lab::run_lab(&opts, &stop, &mut progress)?
    };
    let json = report.to_json();
    if let Some(path) = &a.json_file {
        std::fs::write(path, format!("{json}\n")).map_err(|e| Error::io(path, e))?;
    }
    match a.output {
        Output::Md => print!("{}", lab::markdown::report(&report)),
        Output::Json => println!("{json}"),
    }
    if let Some(sweep) = &report.sweep {
        if a.output == Output::Md {
            print!("\n{}", lab::sweep::markdown(sweep));
        }
        if let Some(path) = &a.tune_out {
            if report.interrupted {
                eprintln!("glint lab: interrupted: no tuning file written");
            } else {
                sweep.tune_file(&report).write(path)?;
                eprintln!(
                    "glint lab: tuning file written to {} (device fingerprint {}); the engine loads it \
                     with --tune, or by default from {}",
                    path.display(),
                    report.device.fingerprint,
                    glint::tune::cache_path(&report.device.fingerprint)
                        .map_or("the user cache".into(), |p| p.display().to_string())
                );
            }
        }
    }
    if let Some(p) = &a.plot {
        plot(&[("this run".to_string(), report.clone())], p)?;
    }
    if report.interrupted {
        return Err(Error::Input(format!(
            "lab interrupted by Ctrl-C after {} case(s)",
            report.cases.len()
        )));
    }
    match report.failed() {
        0 => Ok(()),
        n => Err(Error::Input(format!(
            "{n} of {} case(s) failed validation (see \"check\")",
            report.cases.len()
        ))),
    }
}

fn compare(a: &LabArgs) -> glint::Result<()> {
    if a.output == Output::Json {
        return Err(Error::Input(
            "-o json: --compare prints a markdown table; the reports themselves are the JSON"
                .into(),
        ));
    }
    let reports = a
        .compare
        .iter()
        .map(|p| Ok((p.display().to_string(), LabReport::from_file(p)?)))
        .collect::<glint::Result<Vec<_>>>()?;
    print!("{}", lab::compare::compare(&reports, a.filter.as_deref()));
    if let Some(p) = &a.plot {
        plot(&reports, p)?;
    }
    Ok(())
}

fn check_plot_path(p: &std::path::Path) -> glint::Result<()> {
    match p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(e) if e == "svg" || e == "png" => Ok(()),
        _ => Err(Error::Input(format!(
            "--plot {}: the file name must end in .svg or .png",
            p.display()
        ))),
    }
}

fn plot(reports: &[(String, LabReport)], path: &std::path::Path) -> glint::Result<()> {
    lab::plot::roofline(reports, path)?;
    eprintln!("glint lab: roofline written to {}", path.display());
    Ok(())
}
