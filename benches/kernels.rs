//! The kernel lab as a `cargo bench` target: a thin caller of `glint::lab`, the code behind `glint lab`
//! (see there, and docs/PERFORMANCE.md, for what is measured and how). Qwen2-0.5B's shapes.
//!
//! ```text
//! cargo bench --bench kernels                    # thorough: calibrated repeats, 5 timed reps per case
//! cargo bench --bench kernels -- --quick         # each case once; or GLINT_BENCH_QUICK=1
//! cargo bench --bench kernels -- --json          # the JSON report (glint-lab/1) instead of markdown
//! cargo bench --bench kernels -- --filter matvec # only cases whose "kernel variant shape type" contains it
//! ```

use glint::lab::{self, LabOptions, Mode};
use std::sync::atomic::AtomicBool;

fn main() {
    let env_quick = std::env::var("GLINT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut opts = LabOptions {
        mode: if env_quick {
            Mode::Quick
        } else {
            Mode::Thorough
        },
        ..Default::default()
    };
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.mode = Mode::Quick,
            "--json" => json = true,
            "--filter" => opts.filter = args.next(),
            "--help" | "-h" => {
                println!("cargo bench --bench kernels [-- [--quick] [--json] [--filter TEXT]]");
                return;
            }
            // `cargo bench` passes --bench; unknown flags are ignored like libtest's.
            _ => {}
        }
    }
    if glint::gpu::list_adapters(&opts.gpu).is_empty() && !in_ci() {
        println!("SKIPPED: no GPU adapter");
        return;
    }
    let stop = AtomicBool::new(false);
    let report = match lab::run_lab(&opts, &stop, &mut |e| eprintln!("{}", e.line())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kernel lab: {e}");
            std::process::exit(1);
        }
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", lab::markdown::report(&report));
    }
    if report.failed() > 0 {
        std::process::exit(1);
    }
}

/// CI=true (or 1): a missing GPU adapter fails instead of skipping.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
